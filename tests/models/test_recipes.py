"""Every recipe in configs/ loads and summarises; recipes train end to end on tiny real subsets."""

from __future__ import annotations

import json
import re

import pytest

from cxrlab.config import RunConfig
from cxrlab.models.summary import summarize
from tests.conftest import ROOT, run_cli

RECIPES = sorted((ROOT / "configs").glob("*.yaml"))


def test_the_recipes_of_the_issue_exist():
    names = {p.stem for p in RECIPES}
    assert len(names) >= 25
    for stem in (
        "covid_vgg16_binary",
        "covid4_inception_v3_freeze300",
        "covid4_vgg16_freeze300",
        "covid4_resnet50_adam1e-4",
        "covid_inception_v3_binary_gap",
        "covid4_mobilenet_v1_freeze20",
        "covid_vgg16_binary_r001",
        "x32_mlp_more_epochs",
        "x32_mlp_half_batch",
        "x32_cnn_half",
        "kermany_alexnet_improved",
    ):
        assert stem in names


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_loads_and_summarises(path):
    cfg = RunConfig.load(path)
    assert cfg.task and cfg.data.classes, "every recipe says what it reproduces and on which classes"
    assert cfg.data.path is None, "recipes are data-agnostic: --data DATA at the command line"
    s = summarize(cfg.model, len(cfg.data.classes), cfg.data.image_size, macs=False)
    assert s.total > 0 and s.rows[0].kind == "input"
    if cfg.model.freeze == "backbone":
        assert all(r.trainable in ("no", "") for r in s.rows if r.part == "backbone")
    text = s.to_text()
    assert "Total params" in text and f"{s.keras_total:,}" in text
    comments = path.read_text()
    assert "assumed" not in comments, "a setting is the report's (named) or cxrlab's choice, never 'assumed'"
    assert re.search(r"[Rr]eport 00[0-4]", comments), "every recipe names the report it reproduces"
    if cfg.model.name == "inception_v3":
        assert s.keras_absent == 17_216 and "17,216" in comments and "17,216" in text


def test_x32_cnn_recipe_trains_end_to_end_and_the_run_matches_its_summary(tmp_path, covid_dir):
    recipe = ROOT / "configs" / "x32_cnn.yaml"
    out = tmp_path / "x32"
    proc = run_cli(
        "train", "--config", str(recipe), "--data", str(covid_dir), "--max-per-class", "8",
        "--epochs", "1", "--out", str(out), "-q", "--no-tensorboard",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == ["covid", "normal", "pneumonia_bac", "pneumonia_vir"]
    cfg = RunConfig.load(out / "config.yaml")
    assert cfg.model.name == "cnn5" and cfg.model.head.l2_layers == ["conv"] and cfg.data.image_size == 32
    s = summarize(cfg.model, 4, 32, macs=False)
    assert metrics["params"]["total"] == s.total
    assert metrics["params"]["trainable"] == s.trainable
    pred = run_cli("predict", str(out), str(sorted((covid_dir / "test" / "covid").iterdir())[0]), "--json")
    assert pred.returncode == 0, pred.stderr
    assert json.loads(pred.stdout)[0]["class"] in metrics["classes"]


@pytest.mark.slow
def test_inception_recipe_trains_with_aux_logits_and_reloads(tmp_path, small_covid):
    """Slow path at 299 px (the recipe's 224 px has no aux classifier) with 100 layers frozen: aux
    logits in training, reload for prediction."""
    recipe = ROOT / "configs" / "covid_inception_v3_binary_gap.yaml"
    out = tmp_path / "inc"
    proc = run_cli(
        "train", "--config", str(recipe), "--data", str(small_covid), "--random-init", "--image-size", "299",
        "--max-per-class", "8", "--epochs", "1", "--out", str(out), "-q", "--no-tensorboard",
        "--set", "eval.tsne=false",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fast_path"] is False
    s = summarize(RunConfig.load(out / "config.yaml").model, 2, 299, macs=False)
    # the auxiliary classifier (training only) is out of metrics.json's totals, counted apart
    assert metrics["params"]["aux_excluded"] == s.aux_params > 0
    assert metrics["params"]["total"] == s.total  # both leave the training-only aux head out
    image = sorted((small_covid / "test" / "normal").iterdir())[0]
    pred = run_cli("predict", str(out), str(image), "--json")
    assert pred.returncode == 0, pred.stderr
    assert set(json.loads(pred.stdout)[0]["probabilities"]) == {"covid", "normal"}


@pytest.mark.slow
def test_inception_fast_path_with_a_frozen_backbone(tmp_path, small_covid):
    out = tmp_path / "inc-fast"
    proc = run_cli(
        "train", "--data", str(small_covid), "--model", "inception_v3", "--random-init",
        "--freeze", "backbone", "--max-per-class", "8", "--epochs", "2", "--out", str(out), "-q",
        "--no-tensorboard", "--set", "eval.tsne=false",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "metrics.json").read_text())["fast_path"] is True
