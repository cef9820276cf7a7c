"""`cxr summary` / `cxr models`: Keras-style tables and parameter totals in both conventions."""

from __future__ import annotations

import json
import re

import pytest

from cxrlab.config import HeadConfig, ModelConfig
from cxrlab.models import build_model, model_names
from cxrlab.models.summary import summarize, summarize_model
from tests.conftest import ROOT, run_cli

VGG16_BINARY = ModelConfig(
    name="vgg16",
    freeze="backbone",
    head=HeadConfig(pooling="flatten", batch_norm=True, hidden=[256], dropout=[0.0, 0.3], output="sigmoid"),
)


def test_vgg16_binary_model_of_the_reports_has_keras_parameter_counts():
    s = summarize(VGG16_BINARY, 2)
    assert (s.keras_total, s.trainable, s.keras_non_trainable) == (21_139_777, 6_424_065, 14_715_712)
    # PyTorch convention: batch norm's running mean/variance (2 × 512) are buffers, not parameters
    assert (s.total, s.non_trainable, s.bn_stats) == (21_138_753, 14_714_688, 1_024)
    assert s.backbone_layers == 32
    rows = {r.name: r for r in s.rows}
    assert rows["head.norm"].params == 1_024 and rows["head.norm"].keras_params == 2_048
    assert rows["head.body.0"].params == 25_088 * 256 + 256 and rows["head.body.0"].output_shape == (256,)
    assert rows["backbone.0"].trainable == "no" and rows["head.out"].trainable == "yes"
    assert rows["head.pool"].output_shape == (25_088,)
    assert s.macs is not None and 15.3e9 < s.macs < 15.4e9  # VGG-16's well-known 15.4 GMACs


def test_summary_of_a_real_model_agrees_with_the_meta_summary():
    model = build_model(ModelConfig(name="cnn5", freeze="6"), 4)
    real = summarize_model(model, 32, 1, "6")
    meta = summarize(ModelConfig(name="cnn5", freeze="6"), 4)
    assert [(r.name, r.output_shape, r.params, r.trainable) for r in real.rows] == [
        (r.name, r.output_shape, r.params, r.trainable) for r in meta.rows
    ]
    assert real.total == sum(p.numel() for p in model.parameters())
    assert real.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = [r.index for r in real.rows if r.trainable == "no"]
    assert frozen and max(frozen) <= 6 < min(r.index for r in real.rows if r.trainable == "yes")


def test_inception_summary_lists_the_auxiliary_classifier_and_frozen_layers():
    s = summarize(ModelConfig(name="inception_v3", freeze="300"), 4, macs=False)
    assert s.backbone_layers == 311
    aux = [r for r in s.rows if r.part == "aux"]
    assert len(aux) == 1 and aux[0].params == s.aux_params > 0
    numbered = [r for r in s.rows if r.index and r.part == "backbone" and r.trainable]
    assert all(r.trainable == "no" for r in numbered if r.index <= 300)
    assert all(r.trainable == "yes" for r in numbered if r.index > 300)
    assert "Auxiliary classifier" in s.to_text("none") and "left out of the totals" in s.to_text("none")
    model = build_model(ModelConfig(name="inception_v3"), 4, None)
    assert s.total == sum(p.numel() for p in model.parameters()) - s.aux_params


def test_freeze_beyond_the_backbone_is_explained():
    s = summarize(ModelConfig(name="vgg16", freeze="300"), 4, macs=False)
    assert any("whole backbone is frozen" in n for n in s.notes)


def test_cli_summary_of_the_vgg16_recipe_and_a_model_name():
    proc = run_cli("summary", "--config", str(ROOT / "configs" / "covid_vgg16_binary.yaml"), check=True)
    out = proc.stdout
    assert re.search(r"Total params\s+21,138,753\s+21,139,777", out)
    assert re.search(r"Trainable params\s+6,424,065\s+6,424,065", out)
    assert re.search(r"Non-trainable params\s+14,714,688\s+14,715,712", out)
    assert "backbone.30" in out and "head.body.0" in out
    proc = run_cli("summary", "mlp", "--num-classes", "4", "--layers", "none", "--json", check=True)
    data = json.loads(proc.stdout)
    assert data["pytorch"]["total"] == 1024 * 300 + 300 + 300 * 150 + 150 + 150 * 4 + 4
    assert data["rows"][0]["kind"] == "input"


def test_cli_summary_bad_input_is_one_line():
    for args, message in (
        ((), "give a MODEL name or --config FILE"),
        (("nosuchnet",), "unknown model 'nosuchnet'"),
        (("vgg16", "--layers", "some"), "--layers 'some'"),
        (("vgg16", "--freeze", "first"), "freeze"),
        (("--config", "/nonexistent.yaml"), "config file not found"),
    ):
        proc = run_cli("summary", *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_cli_models_lists_every_model_and_offline_weights(torch_home):
    proc = run_cli("models", "--json", check=True)
    rows = {r["model"]: r for r in json.loads(proc.stdout)["models"]}
    assert set(rows) == set(model_names())
    assert rows["mobilenet_v2"]["weights offline"] is True  # the one checkpoint in shared/weights
    assert rows["mobilenet_v2"]["backbone params"] == 2_223_872
    assert rows["inception_v3"]["input"] == "3×299×299" and rows["vgg16"]["features"] == "512×7×7"
    assert rows["mlp"]["weights offline"] is None
    table = run_cli("models", "--timm", "mobilenetv1_1*", check=True).stdout
    assert "timm/mobilenetv1_100" in table and "weights offline" in table


def test_meta_device_summary_reads_no_weights(tmp_path, monkeypatch):
    # pretrained: true in a config must not make a summary look for (or download) checkpoints
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("CXRLAB_OFFLINE", "1")
    s = summarize(ModelConfig(name="resnet50", pretrained=True, freeze="backbone"), 2, macs=False)
    assert s.total == 23_508_032 + 2 * 2048 + 2
    assert not any(tmp_path.rglob("*.pth"))


def test_summary_of_a_multilabel_config_has_one_output_per_finding(tmp_path):
    """`cxr summary --config` on a label-file config: the findings (read from the file, no image needed)
    set the outputs, one sigmoid each; --findings in the config (or --set) narrows them."""
    from tests.conftest import DATA

    nih = DATA / "nih-1000"
    if not (nih / "labels.csv").is_file():
        pytest.skip("nih-1000 not available")
    cfg = tmp_path / "nih.yaml"
    cfg.write_text(
        f"model: {{name: small_cnn}}\ndata:\n  path: {nih / 'images'}\n  image_size: 32\n"
        f"  labels: {{file: {nih / 'labels.csv'}, format: nih}}\n"
    )
    proc = run_cli("summary", "--config", str(cfg), "--layers", "none")
    assert proc.returncode == 0, proc.stderr
    assert "· 14 outputs ·" in proc.stdout
    assert "Multi-label: 14 outputs, one sigmoid per finding: Atelectasis, Cardiomegaly" in proc.stdout
    proc = run_cli("summary", "--config", str(cfg), "--json", "--set", "data.labels.findings=Effusion,Mass")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["outputs"] == 2 and got["task"] == "multilabel" and got["findings"] == ["Effusion", "Mass"]
    assert got["rows"][-1]["output_shape"][-1] == 2
