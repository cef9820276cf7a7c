"""Bad options and damaged run files through the real CLI (issue 10, cases 6, 8, 11, 12): one clear line,
never a traceback, a hang or a write into someone else's folder. Data: 2 classes x 12 generated 32x32 PNGs."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli
from tests.trust.conftest import one_line_error
from tests.trust.test_resume import start_cxr

B = [
    "train", "--model", "small_cnn", "-q", "--epochs", "1", "--image-size", "32", "--no-tensorboard",
    "--set", "eval.tsne=false", "--set", "eval.bootstrap=50",
]  # fmt: skip


def make_images(root: Path, layout: dict[str, dict[str, int]], seed: int = 0) -> Path:
    """Class folders of 32x32 grey PNGs; class 'b' is brighter than 'a'. ``layout``: split → class → n
    ('' as split: no split folders)."""
    rng = np.random.default_rng(seed)
    for split, counts in layout.items():
        for cls, n in counts.items():
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.random((32, 32)) * 100 + (100 if cls == "b" else 0)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{split}{cls}{i}.png")
    return root


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the hash of its bytes (the run lock's holder record aside)."""
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".cxrlab-lock"
    }


@pytest.fixture(scope="module")
def d_base(tmp_path_factory) -> Path:
    """d_base of the issue: 2 classes x 12 PNGs of 32x32, no split folders."""
    return make_images(tmp_path_factory.mktemp("data") / "d_base", {"": {"a": 12, "b": 12}})


@pytest.fixture(scope="module")
def run(tmp_path_factory, d_base) -> Path:
    """A finished small-CNN run on d_base."""
    out = tmp_path_factory.mktemp("runs") / "run"
    run_cli(*B, "--data", str(d_base), "--out", str(out), check=True)
    return out


@pytest.fixture(scope="module")
def base_yaml(tmp_path_factory, d_base) -> Path:
    """A sweep base config: B on d_base."""
    path = tmp_path_factory.mktemp("sweep") / "base.yaml"
    path.write_text(
        f"data:\n  path: {d_base}\n  image_size: 32\nmodel:\n  name: small_cnn\n"
        "train:\n  epochs: 1\n  tensorboard: false\neval:\n  tsne: false\n  bootstrap: 50\n"
    )
    return path


# ------------------------------------------------------------------------------------- case 11: options


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--dropout", "2"], "'model.head.dropout': Value error, dropout must be in [0, 1), got 2.0"),
        (["--set", "model.head.dropout=[0.2,1.5]"], "dropout must be in [0, 1), got 1.5"),
        (["--seed", "-1"], "'train.seed': Input should be greater than or equal to 0"),
        (["--seed", str(2**32)], "'train.seed': Input should be less than 4294967296"),
        (["--lr", "inf"], "'train.lr': Input should be a finite number"),
        (["--lr", "nan"], "'train.lr': Input should be a finite number"),
        (["--lr", "0"], "'train.lr': Input should be greater than 0"),
    ],
)
def test_impossible_train_option_is_one_line(d_base, tmp_path, option, message):
    out = tmp_path / "run"
    line = one_line_error(run_cli(*B, "--data", str(d_base), *option, "--out", str(out)))
    assert message in line
    assert not out.exists()


def test_yaml_python_tag_is_named_not_called_indentation(d_base, tmp_path):
    config = tmp_path / "evil.yaml"
    config.write_text('train:\n  epochs: !!python/object/apply:os.system ["touch pwned"]\n')
    for command in (
        ["train", "--config", str(config), "--data", str(d_base), "--out", str(tmp_path / "run")],
        ["sweep", "--config", str(config), "--param", "lr=1e-3", "--out", str(tmp_path / "sweep")],
    ):
        line = one_line_error(run_cli(*command))
        assert (
            f"{config}: unsafe or unsupported YAML tag '!!python/object/apply:os.system' at line 2: "
            "cxrlab configs are plain YAML"
        ) in line
        assert "indentation" not in line
    line = one_line_error(
        run_cli(*B, "--data", str(d_base), "--set", "train.epochs=!!python/name:os.system", "--out",
                str(tmp_path / "run"))
    )  # fmt: skip
    assert "not a plain YAML value" in line
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("image_size", 100000, "'image_size': Input should be less than or equal to 4096 (got 100000)"),
        ("threshold", "abc", "'operating_point.threshold': Input should be a valid number"),
        ("threshold", 1.5, "'operating_point.threshold': Input should be less than or equal to 1"),
        ("channels", 2, "'channels' must be 1 or 3 (got 2)"),
        ("classes", [], "'classes': List should have at least 1 item"),
        ("classes", ["a", "a"], "class names must be distinct"),
    ],
)
def test_damaged_model_json_is_one_line_before_any_allocation(run, d_base, tmp_path, field, value, message):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    meta = json.loads((copy / "model.json").read_text())
    if field == "threshold":
        meta["operating_point"]["threshold"] = value
    else:
        meta[field] = value
    (copy / "model.json").write_text(json.dumps(meta))
    for command in (["predict", str(copy), str(d_base / "a" / "a0.png")], ["evaluate", str(copy)]):
        line = one_line_error(run_cli(*command))
        assert f"{copy / 'model.json'}: " in line and message in line
    assert not (copy / "evaluation").exists()


# ---------------------------------------------------------------------------------- case 8: hangs


def test_predict_refuses_a_fifo_before_opening_it(run, d_base, tmp_path):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    line = one_line_error(run_cli("predict", str(run), str(fifo), timeout=300))
    assert "fifo.png: not a regular file (a FIFO, socket or device)" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli("predict", str(run), str(fifo), str(empty), str(d_base / "b" / "b0.png"), "--json",
                   timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert "not a regular file" in results[0]["error"]
    assert "a folder with no image files" in results[1]["error"]
    assert results[2]["class"] in ("a", "b")


@pytest.fixture(scope="module")
def gan(tmp_path_factory, d_base) -> Path:
    """A tiny DCGAN (16 px, 1 epoch) on class a."""
    out = tmp_path_factory.mktemp("gan") / "gan"
    tiny = ["--epochs", "1", "--image-size", "16", "--ngf", "8", "--ndf", "8", "--batch-size", "8", "-q"]
    run_cli("gan", "train", "--data", str(d_base), "--class", "a", "--out", str(out), *tiny, check=True)
    return out


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            ["--n", "99999999999999999999"],
            "--n 99999999999999999999: give a number of images from 1 to 1,000,000",
        ),
        (["--n", "0"], "--n 0: give a number of images from 1 to 1,000,000"),
        (["--seed", "-1"], "--seed -1: give a seed from 0 to 2**32 - 1"),
    ],
)
def test_gan_sample_bad_count_or_seed_is_one_line(gan, tmp_path, option, message):
    out = tmp_path / "synth" / "a"
    assert message in one_line_error(run_cli("gan", "sample", str(gan), "--out", str(out), *option))
    assert not out.exists()


def test_gan_sample_writes_in_batches_and_ctrl_c_keeps_the_files(gan, tmp_path):
    out = tmp_path / "synth" / "a"
    proc = start_cxr(["gan", "sample", str(gan), "--n", "1000000", "--out", str(out)])
    try:
        while proc.poll() is None and len(list(out.glob("gan_*.png"))) < 300:  # files appear batch by batch
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    files = sorted(out.glob("gan_*.png"))
    assert 300 <= len(files) < 1_000_000
    assert not list(out.glob(".*.tmp"))  # no half-written file left behind
    for f in files[-3:]:
        assert Image.open(f).size == (16, 16)


# ------------------------------------------------------------------------------ case 6: sweeps


def _rows(sweep: Path) -> list[dict[str, str]]:
    with (sweep / "sweep.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_diverging_trial_fails_and_the_sweep_goes_on(base_yaml, tmp_path):
    out = tmp_path / "sweep"
    proc = run_cli("sweep", "--config", str(base_yaml), "--param", "lr=1e20,1e-3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    rows = {float(r["lr"]): r for r in _rows(out)}
    assert rows[1e-3]["state"] == "complete" and rows[1e-3]["error"] == ""
    assert rows[1e20]["state"] == "fail" and "NaN" in rows[1e20]["error"]
    assert "failed ({'lr': 1e+20}): " in proc.stdout and "best trial" in proc.stdout
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["trials"] == {"complete": 1, "fail": 1}
    assert summary["failed"][0]["error"] == rows[1e20]["error"]


def test_a_sweep_whose_trials_all_fail_says_so_in_one_line(base_yaml, tmp_path):
    out = tmp_path / "sweep"
    line = one_line_error(
        run_cli("sweep", "--config", str(base_yaml), "--param", "lr=1e20,1e21", "--out", str(out))
    )
    assert "all 2 trial(s) failed" in line and "NaN" in line and "sweep.csv" in line
    assert [r["state"] for r in _rows(out)] == ["fail", "fail"]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--trials", "0"], "--trials 0: give at least 1 trial"),
        (["--storage", "bogus://x"], "--storage 'bogus://x': unsupported storage URL; use sqlite:///"),
    ],
)
def test_sweep_bad_option_is_one_line(base_yaml, tmp_path, option, message):
    out = tmp_path / "sweep"
    line = one_line_error(
        run_cli("sweep", "--config", str(base_yaml), "--param", "lr=1e-3", *option, "--out", str(out))
    )
    assert message in line and "postgresql://" in (line if "storage" in message else "postgresql://")
    assert not out.exists()


# ------------------------------------------------------------------- case 12: --out, compare, options


def test_out_never_writes_into_a_run_folder_a_file_or_a_foreign_folder(run, base_yaml, d_base, tmp_path):
    before = tree_digest(run)
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    foreign = tmp_path / "project"
    (foreign / "data").mkdir(parents=True)
    for command in (["compare", str(run)], ["report", str(run)], ["evaluate", str(run)],
                    ["sweep", "--config", str(base_yaml), "--param", "lr=1e-3"]):  # fmt: skip
        line = one_line_error(run_cli(*command, "--out", str(run)))
        assert f"--out {run} is a run folder (it has config.yaml" in line
        assert f"--out {afile} is an existing file" in one_line_error(run_cli(*command, "--out", str(afile)))
        line = one_line_error(run_cli(*command, "--out", str(foreign)))
        assert f"--out {foreign} already holds files not written by this command (data)" in line
    line = one_line_error(run_cli("bench", "--models", "small_cnn", "--out", str(afile)))
    assert "is an existing file" in line
    assert tree_digest(run) == before and afile.read_text() == "mine" and os.listdir(foreign) == ["data"]
    # the command's own earlier output may be replaced
    again = tmp_path / "cmp"
    for _ in range(2):
        assert run_cli("compare", str(run), "--out", str(again)).returncode == 0


def test_compare_shows_a_failed_runs_error_and_resume_only_when_interrupted(run, d_base, tmp_path):
    failed = tmp_path / "failed"
    proc = run_cli(*B, "--data", str(d_base), "--lr", "1e20", "--out", str(failed))
    assert proc.returncode != 0
    error = json.loads((failed / "status.json").read_text())["error"]
    line = one_line_error(run_cli("compare", str(run), str(failed), "--out", str(tmp_path / "c")))
    assert f"{failed}: the run failed and cannot be compared; its recorded error: {error}" in line
    assert "--resume" not in line
    # the state Ctrl-C leaves (tests/trust/test_resume.py makes it for real): status interrupted, no metrics
    interrupted = tmp_path / "interrupted"
    shutil.copytree(run, interrupted)
    (interrupted / "metrics.json").unlink()
    (interrupted / "status.json").write_text(json.dumps({"status": "interrupted", "epochs_done": 1}))
    line = one_line_error(run_cli("compare", str(run), str(interrupted), "--out", str(tmp_path / "c")))
    assert f"the run was interrupted; finish it with `cxr train --resume {interrupted}`" in line


def test_audit_max_distance_and_bench_list_options(d_base, tmp_path):
    line = one_line_error(run_cli("audit", str(d_base), "--max-distance", "-5", "--out", str(tmp_path / "a")))
    assert "--max-distance -5: give a number of differing hash bits from 0 to 256" in line
    assert not (tmp_path / "a").exists()
    for models in ("", " , "):
        line = one_line_error(run_cli("bench", "--models", models, "--out", str(tmp_path / "b")))
        assert f"--models {models!r}: give at least one name" in line
    # spaces around names are stripped: the unknown name is reported as 'nope', not ' nope'
    line = one_line_error(run_cli("bench", "--models", " small_cnn, nope", "--out", str(tmp_path / "b")))
    assert "'nope'" in line and "' nope'" not in line
    assert not (tmp_path / "b").exists()


def test_validation_split_without_positives_says_the_threshold_fell_back(tmp_path):
    data = make_images(
        tmp_path / "d_val", {"train": {"a": 12, "b": 12}, "val": {"a": 4}, "test": {"a": 5, "b": 5}}
    )
    out = tmp_path / "run"
    run_cli(*B, "--data", str(data), "--out", str(out), check=True)
    op = json.loads((out / "model.json").read_text())["operating_point"]
    assert op["threshold"] == 0.5
    assert op["method"] == (
        "fallback 0.5: the validation split has no b images (4 in all), so no threshold could be chosen on it"
    )
    metrics = (out / "metrics.json").read_text()
    assert "Youden" not in metrics and "fallback 0.5" in metrics
    assert "fallback 0.5" in (out / "report.html").read_text()


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["gan", "train", "--class", "a", "--seed", "-1"], "--seed -1: give a seed from 0 to 2**32 - 1"),
        (["gan", "train", "--class", "a", "--lr", "inf"], "--lr inf: give a finite learning rate > 0"),
        (
            ["autoencoder", "train", "--image-size", "32", "--lr", "nan"],
            "--lr nan: give a finite learning rate",
        ),
        (["autoencoder", "train", "--image-size", "32", "--seed", "-1"], "--seed -1: give a seed from 0"),
    ],
)
def test_generative_seed_and_lr_have_the_run_configs_bounds(d_base, tmp_path, command, message):
    out = tmp_path / "out"
    line = one_line_error(run_cli(*command, "--data", str(d_base), "--out", str(out), "--epochs", "1", "-q"))
    assert message in line
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["train", "--batch-size", "x"], "Invalid value for '--batch-size'"),
        (["train", "--nope"], "No such option: --nope"),
        (["gan", "sample"], "Missing argument"),
    ],
)
def test_usage_errors_are_one_line_pointing_at_help(args, words):
    """Flags typer itself rejects (a wrong type, an unknown flag, a missing argument) were click's 4-line
    usage block; they are one line naming the command's --help, like every other error."""
    line = one_line_error(run_cli(*args))
    assert words in line and "--help`" in line


def test_a_bare_command_group_prints_its_help():
    proc = run_cli("gan")
    assert proc.returncode == 0 and "cxr gan train" in proc.stdout and proc.stderr == ""
