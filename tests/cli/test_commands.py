"""Every command end to end through the real `cxr` (issue 11, item 7), on real radiographs, kept small.

Already covered elsewhere: `--overwrite` (tests/trust/test_run_folder.py), `cxr report` in a browser
(tests/experiments/test_report.py), `cxr gan sample/quality` and training on codes (tests/generative)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from cxrlab.runs import read_csv
from tests.conftest import run_cli
from tests.trust.conftest import copy_subset

FAST = ["--model", "small_cnn", "--image-size", "32", "--epochs", "1", "--batch-size", "4", "-q",
        "--no-tensorboard", "--set", "eval.tsne=false", "--set", "eval.bootstrap=50"]  # fmt: skip


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory, covid_dir) -> Path:
    """covid 16 / normal 6 training images, 4 + 4 test images (real covid-challenge files)."""
    root = tmp_path_factory.mktemp("data") / "imbalanced"
    copy_subset(covid_dir, root, {"train": 16, "test": 4}, ("covid",))
    return copy_subset(covid_dir, root, {"train": 6, "test": 4}, ("normal",))


def _train(data: Path, out: Path, *extra: str) -> tuple[dict, list[dict]]:
    run_cli("train", "--data", str(data), *FAST, *extra, "--out", str(out), check=True)
    return json.loads((out / "metrics.json").read_text()), read_csv(out / "history.csv")


def _losses(history: list[dict]) -> list[tuple[str, str]]:
    return [(r["train_loss"], r["val_loss"]) for r in history]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, imbalanced) -> tuple[Path, dict, list[dict]]:
    out = tmp_path_factory.mktemp("runs") / "adam"
    return (out, *_train(imbalanced, out))


def test_optimizers_weight_decay_and_class_weights_change_training(baseline, imbalanced, tmp_path):
    _, _, base = baseline
    runs = {
        "sgd": (("--optimizer", "sgd"), {"optimizer": "sgd"}),
        "adam_wd": (("--weight-decay", "0.5"), {"optimizer": "adam", "weight_decay": 0.5}),
        "adamw_wd": (
            ("--optimizer", "adamw", "--weight-decay", "0.5"),
            {"optimizer": "adamw", "weight_decay": 0.5},
        ),
        "weighted": (("--class-weights",), {"class_weights": True}),
    }
    hist = {}
    for name, (args, recorded) in runs.items():
        metrics, hist[name] = _train(imbalanced, tmp_path / name, *args)
        cfg = yaml.safe_load((tmp_path / name / "config.yaml").read_text())["train"]
        assert metrics["test"]["n"] == 8 and {k: cfg[k] for k in recorded} == recorded
    # same seed and data: each setting alone changes the losses, so each reached the optimisation
    assert _losses(hist["sgd"]) != _losses(base)
    assert _losses(hist["adam_wd"]) != _losses(base)  # weight decay is applied
    assert _losses(hist["adamw_wd"]) != _losses(hist["adam_wd"])  # adamw decouples it: not adam
    assert _losses(hist["weighted"]) != _losses(base)  # 16:6 classes: the loss is re-weighted


def test_label_map_renames_the_classes(imbalanced, tmp_path):
    out = tmp_path / "mapped"
    metrics, _ = _train(imbalanced, out, "--label-map", "covid=COVID-19, normal = Normal")
    assert metrics["classes"] == ["COVID-19", "Normal"]
    assert json.loads((out / "model.json").read_text())["classes"] == ["COVID-19", "Normal"]
    assert {r["true"] for r in read_csv(out / "predictions.csv")} == {"COVID-19", "Normal"}


def test_predict_prints_a_table(baseline, imbalanced):
    run, _, _ = baseline
    images = [sorted((imbalanced / "test" / c).iterdir())[0] for c in ("covid", "normal")]
    table = run_cli("predict", str(run), *map(str, images))
    as_json = json.loads(run_cli("predict", str(run), *map(str, images), "--json", check=True).stdout)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.strip().splitlines()
    assert len(lines) == 2
    for line, r in zip(lines, as_json, strict=True):
        path, cls, probs = line.split("\t")
        assert path == r["image"] and cls == r["class"] and cls in ("covid", "normal")
        assert probs == "  ".join(f"{c}={p:.3f}" for c, p in r["probabilities"].items())


def test_report_without_a_browser(baseline, imbalanced, tmp_path):
    run, _, _ = baseline
    other = tmp_path / "sgd"
    _train(imbalanced, other, "--optimizer", "sgd")
    out = tmp_path / "report"
    proc = run_cli("report", str(run), str(other), "--out", str(out), "--title", "Two optimisers")
    assert proc.returncode == 0, proc.stderr
    assert f"report: {out / 'report.html'}" in proc.stdout
    html = (out / "report.html").read_text()
    assert "<title>Two optimisers" in html and "adam" in html and "sgd" in html
    assert html.count("data:image/png;base64,") >= 4 and "McNemar" in html
    assert "http://" not in html.replace("http://www.w3.org", "") and 'src="http' not in html


def test_autoencoder_train_and_encode(imbalanced, tmp_path):
    ae, codes = tmp_path / "ae", tmp_path / "codes"
    proc = run_cli("autoencoder", "train", "--data", str(imbalanced), "--out", str(ae), "--image-size", "32",
                   "--depth", "2", "--latent", "8", "--epochs", "1", "--batch-size", "8", "-q")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "autoencoder 32px → 8×8×8" in proc.stdout
    assert (ae / "autoencoder.safetensors").is_file() and len(read_csv(ae / "history.csv")) == 1
    proc = run_cli("autoencoder", "encode", str(ae), "--out", str(codes), "-q")
    assert proc.returncode == 0, proc.stderr
    with np.load(codes / "codes.npz") as npz:
        shapes = {k: npz[k].shape for k in npz.files if k.endswith("_images") or k.endswith("_codes")}
    assert shapes and all(s[1:] == (8, 8, 8) for s in shapes.values()), shapes
    assert sum(s[0] for s in shapes.values()) == 30  # every image of every split encoded
    assert f"next: cxr train --data {codes} --model code_cnn" in proc.stdout


def test_gan_train(imbalanced, tmp_path):
    out = tmp_path / "gan"
    proc = run_cli("gan", "train", "--data", str(imbalanced), "--class", "normal", "--out", str(out),
                   "--epochs", "2", "--batch-size", "4", "--image-size", "16", "--ngf", "8", "--ndf", "8",
                   "-q")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "gan.json").read_text())
    assert meta["class"] == "normal" and meta["epochs_done"] == 2
    assert meta["n_train_images"] < 6  # the training split of normal only (validation carved from it)
    assert (out / "samples" / "epoch_002.png").is_file() and len(read_csv(out / "losses.csv")) >= 2
    assert f"next: cxr gan sample {out}" in proc.stdout


@pytest.mark.slow
def test_demo_on_the_bundled_asset(tmp_path):
    out = tmp_path / "demo"
    proc = run_cli("demo", "--epochs", "1", "--out", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == ["normal", "pneumonia"] and metrics["test"]["n"] == 624
    assert metrics["test"]["accuracy"] > 0.625  # better than always answering "pneumonia" (390/624)
    assert "test accuracy" in proc.stdout and (out / "report.html").is_file()
