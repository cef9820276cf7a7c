"""Partial fine-tuning on cached activations (issue 16): the frozen prefix runs once, its fp16 output is
cached, the suffix + head train on it; the saved model is the full model and gives the same outputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from cxrlab.config import RunConfig
from cxrlab.data.cache import ImageCache
from cxrlab.data.images import load_gray
from cxrlab.data.prepare import to_tensor
from cxrlab.errors import ConfigError
from cxrlab.models import build_model, get_spec
from cxrlab.models.split import backbone_blocks, frozen_prefix, split_model
from cxrlab.training.features import prefix_activations
from tests.conftest import ROOT, run_cli
from tests.trust.conftest import one_line_error

SIZE = 96  # small images keep the tests fast; the split is the same at 224 px


@pytest.mark.parametrize(
    ("name", "freeze", "k"),
    [
        ("mobilenet_v2", "blocks:14", 14),
        ("resnet18", "blocks:6", 6),
        ("densenet121", "blocks:8", 8),
        ("efficientnet_b0", "blocks:5", 5),
        ("mobilenet_v2", "40", 5),  # Keras-style layer count: the whole blocks it covers form the prefix
    ],
)
def test_the_blocks_of_each_family_chain_to_the_backbone(name, freeze, k):
    torch.manual_seed(0)
    model = build_model(RunConfig().model.model_copy(update={"name": name, "freeze": freeze}), 3, 64, False)
    model.eval()
    assert frozen_prefix(model) == k
    prefix, suffix = split_model(model, k)
    assert not any(p.requires_grad for p in prefix.parameters())
    assert any(p.requires_grad for p in suffix.suffix.parameters())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        full, split = model(x), suffix.eval()(prefix(x))
    torch.testing.assert_close(split, full, rtol=1e-4, atol=1e-4)


def test_cached_activations_give_the_full_models_logits(tmp_path, covid_dir, torch_home):
    """Real images, ImageNet weights: logits through the cached fp16 activations equal the full model's,
    before and after a training step on the suffix (its modules are the model's own)."""
    cfg = RunConfig.model_validate(
        {
            "data": {"image_size": SIZE},
            "model": {"name": "mobilenet_v2", "pretrained": True, "freeze": "blocks:14"},
            "train": {"precision": "32"},  # auto = bf16 compute on a CPU with native bf16 (docs/models.md)
        }
    )
    model = build_model(cfg.model, 4, SIZE)
    spec = get_spec("mobilenet_v2")
    paths = [sorted((covid_dir / "test" / c).iterdir())[0] for c in ("covid", "normal", "pneumonia_bac")]
    images = np.stack([load_gray(str(p), SIZE, "squash") for p in paths])
    prefix, suffix = split_model(model, 14)
    cache = ImageCache(tmp_path / "cache")
    acts = prefix_activations(prefix, 14, images, [str(p) for p in paths], cfg, spec, 3, "cpu", cache, None)
    assert acts.dtype == np.float16 and acts.shape == (3, 96, 6, 6)
    again = prefix_activations(prefix, 14, images, [str(p) for p in paths], cfg, spec, 3, "cpu", cache, None)
    assert np.array_equal(acts, again) and list((tmp_path / "cache" / "features").glob("*.npy"))
    x = to_tensor(images, 3, spec.mean, spec.std)

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        model.eval()
        with torch.no_grad():
            return suffix.eval()(torch.from_numpy(acts)), model(x)

    cached, full = both()
    torch.testing.assert_close(cached, full, rtol=0, atol=2e-2 * float(full.abs().max()))
    suffix.train()  # one optimisation step on the cached activations (batch norm of the suffix in train mode)
    opt = torch.optim.AdamW([p for p in suffix.parameters() if p.requires_grad], lr=1e-2)
    torch.nn.functional.cross_entropy(suffix(torch.from_numpy(acts)), torch.tensor([0, 1, 2])).backward()
    opt.step()
    cached2, full2 = both()
    assert not torch.allclose(full2, full)  # the full model changed with the suffix
    torch.testing.assert_close(cached2, full2, rtol=0, atol=2e-2 * float(full2.abs().max()))


def test_partial_freeze_recipe_run_is_complete_and_the_saved_model_predicts_the_same(
    tmp_path, covid_dir, torch_home
):
    out = tmp_path / "run"
    proc = run_cli(
        "train", "--config", str(ROOT / "configs" / "fast_covid4.yaml"), "--data", str(covid_dir),
        "--max-per-class", "6", "--image-size", str(SIZE), "--epochs", "2", "--out", str(out),
        "-q", "--no-tensorboard",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for name in ("config.yaml", "metrics.json", "history.csv", "predictions.csv", "report.html"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["training_path"].startswith("partial fine-tuning on cached activations (prefix: 14")
    assert metrics["fast_path"] is False
    assert metrics["params"]["trainable"] < metrics["params"]["total"]
    assert "partial fine-tuning on cached activations" in (out / "report.html").read_text()
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    classes = metrics["classes"]
    images = [r["path"] for r in rows[:4]]
    pred = run_cli("predict", str(out), *images, "--json")
    assert pred.returncode == 0, pred.stderr
    # the saved full model (prefix + suffix + head) reloads and reproduces the cached-path probabilities
    for row, got in zip(rows[:4], json.loads(pred.stdout), strict=True):
        for c in classes:
            assert abs(got["probabilities"][c] - float(row[f"p_{c}"])) < 0.02, (row, got)


def test_partial_freeze_with_augmentation_falls_back_to_the_full_path_and_says_so(
    tmp_path, covid_dir, torch_home
):
    out = tmp_path / "aug"
    proc = run_cli(
        "train", "--data", str(covid_dir), "--classes", "covid,normal", "--max-per-class", "4",
        "--model", "mobilenet_v2", "--pretrained", "--freeze", "blocks:14", "--image-size", "64",
        "--epochs", "1", "--set", "data.augment=true", "--out", str(out),
        "-q", "--no-tensorboard",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "note: freeze blocks:14 with augmentation" in proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["training_path"].startswith("full training (freeze blocks:14 with augmentation")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--model", "mobilenet_v2", "--freeze", "blocks:40"], "has 19 blocks"),
        (["--model", "alexnet", "--freeze", "blocks:2"], "has no block split"),
    ],
)
def test_a_bad_split_option_is_one_line(tmp_path, covid_dir, args, says):
    proc = run_cli(
        "train", "--data", str(covid_dir), "--classes", "covid,normal", "--max-per-class", "2",
        "--image-size", "64", "--epochs", "1", *args, "--out", str(tmp_path / "bad"), "-q",
    )  # fmt: skip
    assert says in one_line_error(proc)


def test_a_malformed_block_count_is_refused_by_the_config():
    with pytest.raises(ConfigError, match="blocks:K"):
        RunConfig.from_dict({"model": {"freeze": "blocks:x"}})


def test_split_functions_cover_the_issues_families():
    for name in ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "resnet50", "densenet121",
                 "efficientnet_b0"):  # fmt: skip
        assert get_spec(name).blocks is not None, name
    model = build_model(RunConfig().model.model_copy(update={"name": "alexnet"}), 2, 64, False)
    assert backbone_blocks(model) is None and frozen_prefix(model) == 0
