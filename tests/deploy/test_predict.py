"""`cxr predict` for real workloads: folders, globs, --out CSV, unreadable files named and counted."""

from __future__ import annotations

import json
import shutil

from cxrlab.runs import read_csv
from tests.conftest import DATA, run_cli
from tests.trust.conftest import one_line_error


def test_predict_a_folder_with_an_unreadable_file(small_run, test_images, tmp_path):
    folder = tmp_path / "scans"
    (folder / "nested" / "deeper").mkdir(parents=True)
    for i, img in enumerate(test_images[:6]):
        shutil.copy(
            img, folder / ("nested/deeper" if i % 3 == 0 else "nested" if i % 3 == 1 else ".") / img.name
        )
    (folder / "nested" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (folder / "notes.txt").write_text("not an image: ignored")
    (folder / ".hidden.png").write_bytes(b"hidden files are skipped")
    dicom = sorted((DATA / "dicom").glob("*.dcm"))[:1]
    for d in dicom:  # DICOM goes through the same decoder
        shutil.copy(d, folder / d.name)
    out = tmp_path / "predictions.csv"
    proc = run_cli("predict", str(small_run), str(folder), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    n = 6 + len(dicom)
    why = "not a readable image (empty, corrupt or not an image format)"
    assert [line for line in err if line.startswith("unreadable: ")] == [
        f"unreadable: {folder / 'nested' / 'broken.png'}: {why}"
    ]
    assert err[-1] == f"predicted {n} image(s), 1 unreadable (named above); wrote {out}"
    rows = read_csv(out)
    assert len(rows) == n + 1 and {r["image"] for r in rows} >= {str(folder / "nested" / "broken.png")}
    good = [r for r in rows if not r["error"]]
    assert len(good) == n and all(r["class"] in ("covid", "normal") for r in good)
    assert all(abs(float(r["p_covid"]) + float(r["p_normal"]) - 1) < 1e-5 for r in good)
    assert "not a readable image" in next(r["error"] for r in rows if r["image"].endswith("broken.png"))
    # --out never replaces a file unless asked
    line = one_line_error(run_cli("predict", str(small_run), str(folder), "--out", str(out)))
    assert "already exists" in line and "--overwrite" in line


def test_predict_names_patterns_and_folders_without_images(small_run, test_images, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "g" / "sub").mkdir(parents=True)
    shutil.copy(test_images[1], tmp_path / "g" / "a.jpeg")
    shutil.copy(test_images[3], tmp_path / "g" / "sub" / "b.jpeg")
    glob = f"{tmp_path}/g/**/*.jpeg"  # recursive; b.jpeg also given by name: predicted once
    args = (
        str(empty),
        f"{tmp_path}/*.png",
        str(test_images[0]),
        glob,
        str(tmp_path / "g" / "sub" / "b.jpeg"),
    )
    proc = run_cli("predict", str(small_run), *args, "--json")
    assert proc.returncode == 0, proc.stderr
    assert f"unreadable: {empty}: a folder with no image files (searched recursively)" in proc.stderr
    assert f"unreadable: {tmp_path}/*.png: no image file matches this pattern" in proc.stderr
    results = json.loads(proc.stdout)
    assert [r["image"] for r in results] == [
        str(empty),
        f"{tmp_path}/*.png",
        str(test_images[0]),
        f"{tmp_path}/g/a.jpeg",
        f"{tmp_path}/g/sub/b.jpeg",
    ]
    assert [("class" in r) for r in results] == [False, False, True, True, True]
    assert proc.stderr.strip().splitlines()[-1] == "predicted 3 image(s), 2 unreadable (named above)"
    line = one_line_error(run_cli("predict", str(small_run), str(empty)))
    assert "no readable image" in line and "a folder with no image files" in line


def test_predict_explain_writes_overlays_and_the_lung_share(small_run, test_images, tmp_path):
    """--explain: the lung share column and an overlay per image, equal to `cxr explain`'s for the same
    images (same model, layer, segmenter and masks); an unreadable file gets a row with its error."""
    from PIL import Image

    images = [str(p) for p in test_images[:4]]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "explained"
    proc = run_cli("predict", str(small_run), *images, str(bad), "--explain", "--out", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"predicted 4 image(s), 1 unreadable (named above); wrote {out}/predictions.csv and 4 overlay "
        "PNG(s) (gradcam at backbone)"
    )
    rows = read_csv(out / "predictions.csv")
    assert list(rows[0]) == ["image", "class", "p_covid", "p_normal",
                             "in_distribution", "ood_score", "ood_threshold", "ood_reasons",  # the OOD guard
                             "lung_share", "lung_area", "heatmap_class", "overlay", "error"]  # fmt: skip
    assert [r["image"] for r in rows] == [*images, str(bad)]
    assert rows[-1]["overlay"] == "" and "not a readable image" in rows[-1]["error"]
    ref = run_cli("explain", str(small_run), *images, "--out", str(tmp_path / "ref"), check=True)
    assert ref.returncode == 0
    expected = {r["image"]: r for r in read_csv(tmp_path / "ref" / "explain.csv")}
    for r in rows[:-1]:
        e = expected[r["image"]]
        assert r["heatmap_class"] == r["class"] == e["class"] == e["predicted"]
        assert (r["lung_share"], r["lung_area"]) == (e["lung_share"], e["lung_area"])
        with Image.open(out / r["overlay"]) as img, Image.open(tmp_path / "ref" / e["overlay"]) as want:
            assert img.size == (256, 256) and img.mode == "RGB" and img.tobytes() == want.tobytes()
    # plain predictions are unchanged by --explain
    plain = json.loads(run_cli("predict", str(small_run), *images, "--json", check=True).stdout)
    assert [(p["class"], p["probabilities"]["covid"]) for p in plain] == [
        (r["class"], float(r["p_covid"])) for r in rows[:-1]
    ]


def test_predict_explain_refusals(small_run, test_images, tmp_path):
    image = str(test_images[0])
    line = one_line_error(run_cli("predict", str(small_run), image, "--explain"))
    assert "--explain writes an overlay per image: give --out DIR" in line
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("keep me")
    line = one_line_error(run_cli("predict", str(small_run), image, "--explain", "--out", str(busy)))
    assert "is not empty; choose a new --out or add --overwrite" in line
    line = one_line_error(
        run_cli("predict", str(small_run), image, "--explain", "--out", str(busy), "--overwrite")
    )
    assert "refusing to delete" in line and (busy / "mine.txt").read_text() == "keep me"
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    new = tmp_path / "new"
    line = one_line_error(run_cli("predict", str(small_run), str(bad), "--explain", "--out", str(new)))
    assert "no readable image" in line and not new.exists()  # nothing left behind
