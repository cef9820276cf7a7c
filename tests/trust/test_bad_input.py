"""Bad input through the real CLI: each case gives one clear line, or a named skip — never a traceback,
a hang or a half-made run folder. Odd files are made from a real radiograph; the rest are real."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import run_cli
from tests.trust.conftest import one_line_error

TRAIN = [
    "--model", "small_cnn", "--image-size", "32", "--epochs", "1", "--batch-size", "8",
    "--no-tensorboard", "-q", "--set", "eval.tsne=false", "--set", "eval.bootstrap=50",
]  # fmt: skip

# file name → what must happen to it ("used", or the words of the reason it was skipped)
ODD_FILES = {
    "truncated.jpg": "truncated",
    "empty.jpg": "not a readable image",
    "bomb.png": "pixel limit",
    "really_png.jpg": "used",
    "sixteen_bit.png": "used",
    "cmyk.jpg": "used",
    "palette_transparent.png": "used",
    "exif_rotated.jpg": "used",
    "ünïcode name with spaces.png": "used",
}


def make_odd_files(folder: Path, radiograph: Path) -> None:
    """Every awkward kind of file the issue lists, derived from one real radiograph."""
    base = Image.open(radiograph).convert("L").resize((96, 80))
    base.save(folder / "truncated.jpg", quality=95)
    data = (folder / "truncated.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "empty.jpg").write_bytes(b"")
    Image.new("1", (20_000, 20_000)).save(folder / "bomb.png", optimize=True)  # small file, 400 MP
    base.save(folder / "really_png.jpg", format="PNG")
    Image.fromarray(np.asarray(base, dtype=np.uint16) * 16).save(folder / "sixteen_bit.png")
    base.convert("CMYK").save(folder / "cmyk.jpg")
    pal = base.convert("P")
    pal.save(folder / "palette_transparent.png", transparency=0)
    exif = base.getexif()
    exif[0x0112] = 6  # displayed rotated by 90°
    base.save(folder / "exif_rotated.jpg", exif=exif.tobytes())
    base.save(folder / "ünïcode name with spaces.png")
    (folder / "notes.txt").write_text("not an image")
    os.symlink("self_loop.jpg", folder / "self_loop.jpg")  # a file symlink pointing at itself
    os.symlink("..", folder / "loop")  # a folder symlink loop: normal/loop -> train/


@pytest.fixture(scope="module")
def messy(tmp_path_factory, covid_small) -> Path:
    """covid_small copied under a path with unicode and spaces, plus every odd file in train/normal."""
    root = tmp_path_factory.mktemp("bad") / "données radio x" / "set 1"
    shutil.copytree(covid_small, root)
    make_odd_files(root / "train" / "normal", sorted((covid_small / "train" / "normal").iterdir())[0])
    return root


def test_train_on_messy_folder_names_every_skipped_file(messy, tmp_path):
    out = tmp_path / "run ü 1"
    proc = run_cli("train", "--data", str(messy), *TRAIN, "--out", str(out), timeout=400)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    m = json.loads((out / "metrics.json").read_text())
    skipped = {Path(s["path"]).name: s["reason"] for s in m["data"]["skipped"]}
    expected = {name: why for name, why in ODD_FILES.items() if why != "used"}
    assert set(skipped) == set(expected)
    for name, why in expected.items():
        assert why in skipped[name], (name, skipped[name])
    splits = (out / "splits.csv").read_text(encoding="utf-8")
    for name, why in ODD_FILES.items():
        assert (name in splits) == (why == "used"), name
    # the symlink loop neither hangs nor counts an image twice: 16 real + 6 odd-but-valid normals
    counts = m["data"]["counts"]
    assert counts["train"]["normal"] + counts["val"]["normal"] == 16 + 6
    assert m["data"]["ignored_files"] >= 2  # notes.txt and the self-referencing link
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "truncated.jpg" in html and "pixel limit" in html


def test_audit_lists_unreadable_and_non_image_files(messy, tmp_path):
    out = tmp_path / "audit ü"
    proc = run_cli("audit", str(messy), "--out", str(out), timeout=400)
    assert proc.returncode == 0, proc.stderr
    a = json.loads((out / "audit.json").read_text())
    bad = {Path(u["path"]).name: u["reason"] for u in a["unreadable"]}
    assert set(bad) == {"truncated.jpg", "empty.jpg", "bomb.png"}
    assert "pixel limit" in bad["bomb.png"] and "truncated" in bad["truncated.jpg"]
    other = {Path(u["path"]).name: u["reason"] for u in a["non_images"]}
    assert "not an image file name" in other["notes.txt"]
    assert "symlink" in other["self_loop.jpg"]
    assert any("3 unreadable file(s)" in w for w in a["warnings"])


def _class_folders(root: Path, layout: dict[str, int], source: Path) -> Path:
    """``{"train/normal": 6, ...}``: that many real images copied into each folder."""
    images = sorted(source.iterdir())
    for folder, count in layout.items():
        (root / folder).mkdir(parents=True)
        for f in images[:count]:
            shutil.copy(f, root / folder / f.name)
    return root


@pytest.mark.parametrize("command", ["train", "audit"])
@pytest.mark.parametrize(
    "case,message",
    [
        ("one_class", "only one class"),
        ("only_in_test", "has no training images (only in test)"),
    ],
)
def test_unusable_class_layouts_give_one_line(tmp_path, covid_small, command, case, message):
    src = covid_small / "train" / "normal"
    layout = {"train/normal": 6, "test/normal": 3}
    if case == "only_in_test":
        layout["test/covid"] = 3
    data = _class_folders(tmp_path / "data", layout, src)
    args = ["train", "--data", str(data), *TRAIN, "--out", str(tmp_path / "run")] if command == "train" else [
        "audit", str(data), "--out", str(tmp_path / "audit")]  # fmt: skip
    line = one_line_error(run_cli(*args))
    assert message in line
    assert not (tmp_path / "run").exists()  # nothing half-made is left behind


@pytest.mark.parametrize("command", ["train", "audit", "evaluate"])
def test_output_folder_that_cannot_be_written(tmp_path, covid_small, binary_run, command):
    blocker = tmp_path / "a_file"
    blocker.write_text("a regular file where a folder is needed")  # fails for root too, unlike chmod
    out = blocker / "sub"
    args = {
        "train": ["train", "--data", str(covid_small), *TRAIN, "--out", str(out)],
        "audit": ["audit", str(covid_small), "--out", str(out)],
        "evaluate": ["evaluate", str(binary_run), "--out", str(out)],
    }[command]
    line = one_line_error(run_cli(*args))
    assert "cannot write to" in line and str(out) in line


@pytest.fixture()
def read_only_folder(tmp_path):
    """A folder nobody may write into: chmod for ordinary users; for root (whom chmod does not stop) a
    read-only tmpfs mounted there."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs as root: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_read_only_output_folder(read_only_folder, covid_small):
    line = one_line_error(run_cli("audit", str(covid_small), "--out", str(read_only_folder / "audit")))
    assert "cannot write to" in line and str(read_only_folder / "audit") in line


@pytest.mark.parametrize(
    "config,message",
    [
        ({"train": {"lrr": 0.1}}, "unknown key 'train.lrr'"),
        ({"train": {"epochs": "many"}}, "'train.epochs'"),
        ({"data": {"image_size": [32]}}, "'data.image_size'"),
        ({"modle": {"name": "small_cnn"}}, "unknown key 'modle'"),
    ],
)
def test_config_file_with_unknown_key_or_wrong_type(tmp_path, covid_small, config, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    line = one_line_error(run_cli("train", "--config", str(path), "--data", str(covid_small), "--out",
                                  str(tmp_path / "run")))  # fmt: skip
    assert message in line and str(path) in line


def test_predict_names_a_bad_image_and_still_predicts_the_good_one(binary_run, messy):
    folder = messy / "train" / "normal"
    good = sorted(folder.glob("*.jpeg"))[0]
    proc = run_cli("predict", str(binary_run), str(folder / "truncated.jpg"), str(good), "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert "truncated" in res[0]["error"] and res[1]["class"] in ("covid", "normal")
    line = one_line_error(run_cli("predict", str(binary_run), str(folder / "empty.jpg")))
    assert "empty.jpg" in line and "not a readable image" in line
