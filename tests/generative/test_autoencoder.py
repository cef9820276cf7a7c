"""Autoencoder: the report's architecture, real training, codes of every split, code_cnn runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cxrlab.config import ModelConfig
from cxrlab.data.index import discover
from cxrlab.errors import ConfigError, CxrError, ModelError
from cxrlab.generative.autoencoder import ConvAutoencoder, encode_dataset, load_autoencoder, train_autoencoder
from cxrlab.models import build_model, model_names
from tests.conftest import run_cli
from tests.generative.conftest import train_small_cnn
from tests.trust.conftest import one_line_error


def _one_line_error(proc) -> str:
    """One error line on stderr (the audit's ``warning:`` lines may precede it): tests.trust's check."""
    return one_line_error(proc)


def test_architecture_is_the_reports():
    ae = ConvAutoencoder()
    convs = [m for m in ae.encoder if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 32), (32, 64), (64, 128), (128, 256)]
    assert all(c.kernel_size == (3, 3) and c.stride == (2, 2) and c.padding == (1, 1) for c in convs)
    kinds = [type(m) for m in ae.encoder]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 4
    deconvs = [m for m in ae.decoder if isinstance(m, nn.ConvTranspose2d)]
    assert [(d.in_channels, d.out_channels) for d in deconvs] == [(256, 128), (128, 64), (64, 32), (32, 1)]
    x = torch.rand(2, 1, 224, 224)
    with torch.no_grad():
        code = ae.encoder(x)
        y = ae.decoder(code)
    assert code.shape == (2, 256, 14, 14)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    small = ConvAutoencoder(latent_channels=64, depth=3)
    with torch.no_grad():
        assert small.encoder(x).shape == (2, 64, 28, 28)


def test_training_writes_folder_and_learns(trained_ae, tiny_kermany):
    for name in (
        "autoencoder.json",
        "autoencoder.safetensors",
        "history.csv",
        "loss.png",
        "reconstructions.png",
        "checkpoints/best.ckpt",
    ):
        assert (trained_ae / name).is_file(), name
    rows = list(csv.DictReader((trained_ae / "history.csv").open()))
    assert len(rows) == 6 and all(r["val_loss"] for r in rows)
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    meta = json.loads((trained_ae / "autoencoder.json").read_text())
    assert meta["status"] == "finished" and meta["code_shape"] == [256, 8, 8]
    # better than the best constant image: the MSE of predicting every pixel as the mean pixel
    net, _ = load_autoencoder(trained_ae)
    index = discover(tiny_kermany)
    from cxrlab.data.images import load_gray

    test = np.stack([load_gray(s.path, 64) for s in index.split("test")]).astype(np.float32) / 255
    assert meta["test_mse"] < float(test.var())


def test_weights_are_safetensors_and_damage_is_one_line(trained_ae, tmp_path):
    import shutil

    net, meta = load_autoencoder(trained_ae)
    assert meta["depth"] == 3
    bad = tmp_path / "ae"
    shutil.copytree(trained_ae, bad)
    (bad / "autoencoder.safetensors").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(ModelError, match="corrupted"):
        load_autoencoder(bad)
    msg = _one_line_error(run_cli("autoencoder", "encode", str(bad), "--out", str(tmp_path / "c")))
    assert "corrupted" in msg
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_codes_file_holds_every_split(codes_dir, tiny_kermany):
    with np.load(codes_dir / "codes.npz", allow_pickle=False) as npz:
        keys = set(npz.files)
        for split, n in (("train", 48), ("val", 16), ("test", 24)):
            assert {f"{split}_codes", f"{split}_labels", f"{split}_paths", f"{split}_groups"} <= keys
            assert npz[f"{split}_codes"].shape == (n, 256, 8, 8)
            assert npz[f"{split}_codes"].dtype == np.float16
        test_paths = set(map(str, npz["test_paths"]))
        assert list(npz["classes"]) == ["NORMAL", "PNEUMONIA"]
    assert test_paths == {s.path for s in discover(tiny_kermany).split("test")}
    meta = json.loads((codes_dir / "codes.json").read_text())
    assert meta["shape"] == [256, 8, 8] and meta["encode_s"] > 0 and meta["autoencoder_train_s"] > 0


def test_code_cnn_run_records_encode_and_train_time(codes_dir, tiny_kermany, tmp_path):
    out = tmp_path / "code-run"
    proc = run_cli(
        "train",
        "--data",
        str(codes_dir),
        "--model",
        "code_cnn",
        "--epochs",
        "2",
        "--out",
        str(out),
        "-q",
        "--set",
        "eval.bootstrap=100",
    )
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "metrics.json").read_text())
    codes_meta = json.loads((codes_dir / "codes.json").read_text())
    assert m["timing"]["encode_s"] == codes_meta["encode_s"]
    assert m["timing"]["train_s"] > 0 and m["data"]["codes"]["shape"] == [256, 8, 8]
    assert m["test"]["n"] == 24 and m["test"]["accuracy_ci95"][0] <= m["test"]["accuracy"]
    assert json.loads((out / "model.json").read_text())["input"] == "codes"
    card = json.loads((out / "model_card.json").read_text())  # a codes run has its model card too
    assert card["input"]["kind"] == "codes" and "autoencoder codes" in card["intended_use"]["summary"]
    assert card["metrics"]["accuracy"]["value"] == pytest.approx(m["test"]["accuracy"])
    assert card["ood"]["status"] == ("assessed" if (out / "ood.json").is_file() else "not assessed")
    # same test images as a raw-image run on the same data: paired comparison through `cxr compare`
    raw = tmp_path / "raw-run"
    proc = train_small_cnn(tiny_kermany, raw)
    assert proc.returncode == 0, proc.stderr
    paths = {r["path"] for r in csv.DictReader((out / "predictions.csv").open())}
    assert paths == {r["path"] for r in csv.DictReader((raw / "predictions.csv").open())}
    cmp = run_cli("compare", str(raw), str(out), "--out", str(tmp_path / "cmp"))
    assert cmp.returncode == 0, cmp.stderr
    rows = list(csv.DictReader((tmp_path / "cmp" / "compare.csv").open()))
    assert len(rows) == 2 and rows[0]["test_set"] == rows[1]["test_set"]
    # the run can be re-scored from its codes; single-image prediction needs an image model
    assert run_cli("evaluate", str(out)).returncode == 0
    assert "autoencoder codes" in _one_line_error(run_cli("predict", str(out), paths.pop()))


def test_code_cnn_model():
    assert "code_cnn" in model_names()
    model = build_model(ModelConfig(name="code_cnn"), 2).eval()
    with torch.no_grad():
        assert model(torch.randn(3, 256, 14, 14).half()).shape == (3, 2)
    narrow = build_model(ModelConfig(name="code_cnn", in_channels=64), 3, 28).eval()
    with torch.no_grad():
        assert narrow(torch.randn(2, 64, 28, 28)).shape == (2, 3)


def test_bad_input_is_one_line(codes_dir, tiny_kermany, synth_dir, tmp_path):
    def code_cnn_error(data: Path, out: str, *extra: str) -> str:
        args = ("train", "--data", str(data), "--model", "code_cnn", *extra, "--out", str(tmp_path / out))
        return _one_line_error(run_cli(*args))

    assert "autoencoder encode" in code_cnn_error(tiny_kermany, "r1")
    assert not (tmp_path / "r1").exists()
    assert "--extra-train" in code_cnn_error(codes_dir, "r2", "--extra-train", str(synth_dir))
    assert "codes are 256x8x8" in code_cnn_error(codes_dir, "r3", "--image-size", "16")
    assert "eval.tta_shift=0" in code_cnn_error(codes_dir, "r5", "--set", "eval.tta_shift=0.1")
    assert not (tmp_path / "r5").exists()
    msg = _one_line_error(run_cli("autoencoder", "encode", str(tiny_kermany), "--out", str(tmp_path / "c")))
    assert "not an autoencoder folder" in msg
    with pytest.raises(ConfigError, match="divisible"):
        train_autoencoder(str(tiny_kermany), tmp_path / "ae", image_size=100, depth=4)
    with pytest.raises(CxrError, match="not empty"):
        encode_dataset(_ae_of(codes_dir), codes_dir)
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "codes.npz").write_bytes(b"PK\x03\x04 broken")
    assert "damaged" in code_cnn_error(tmp_path / "damaged", "r4")


def _ae_of(codes_dir):
    return Path(json.loads((codes_dir / "codes.json").read_text())["autoencoder"])
