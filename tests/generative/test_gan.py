"""DCGAN: the report's architecture, per-class training on real images, samples as PNGs."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cxrlab.errors import ConfigError, DataError, ModelError
from cxrlab.generative.gan import Discriminator, Generator, load_generator, train_gan
from tests.conftest import run_cli
from tests.generative.test_autoencoder import _one_line_error


def test_architecture_is_dcgan():
    gen, disc = Generator(), Discriminator()
    kinds = [type(m) for m in gen.net]
    assert kinds[:3] == [nn.ConvTranspose2d, nn.BatchNorm2d, nn.ReLU]
    assert kinds[-2:] == [nn.ConvTranspose2d, nn.Tanh]
    assert all(k in (nn.ConvTranspose2d, nn.BatchNorm2d, nn.ReLU, nn.Tanh) for k in kinds)
    assert gen.net[0].in_channels == 100
    with torch.no_grad():
        img = gen(torch.randn(4, 100))
        p = disc(img)
    assert img.shape == (4, 1, 64, 64) and float(img.abs().max()) <= 1
    assert p.shape == (4,) and bool(((p > 0) & (p < 1)).all())
    dk = [type(m) for m in disc.net]
    assert dk[:2] == [nn.Conv2d, nn.LeakyReLU]  # no batch norm on the first layer
    assert dk[2:5] == [nn.Conv2d, nn.BatchNorm2d, nn.LeakyReLU] and dk[-1] is nn.Sigmoid
    assert disc.net[1].negative_slope == 0.2


def test_training_folder(gan_dir):
    for name in (
        "gan.json",
        "generator.safetensors",
        "discriminator.safetensors",
        "losses.csv",
        "losses.png",
        "real.png",
        "samples/epoch_001.png",
        "samples/epoch_002.png",
        "checkpoints/epoch_002_generator.safetensors",
    ):
        assert (gan_dir / name).is_file(), name
    meta = json.loads((gan_dir / "gan.json").read_text())
    assert meta["status"] == "finished" and meta["class"] == "NORMAL" and meta["epochs_done"] == 2
    # the GAN saw the 24 NORMAL *training* images only, never the 8 val or 12 test images
    assert meta["n_train_images"] == 24
    rows = list(csv.DictReader((gan_dir / "losses.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(np.isfinite(float(r["loss_d"])) and np.isfinite(float(r["loss_g"])) for r in rows)
    grid = Image.open(gan_dir / "samples" / "epoch_002.png")
    assert grid.size == (8 * 66 + 2, 8 * 66 + 2)  # the same 64 fixed noise vectors every epoch


def test_sample_writes_pngs_reproducibly(gan_dir, tmp_path):
    out = tmp_path / "synth" / "NORMAL"
    proc = run_cli("gan", "sample", str(gan_dir), "--n", "10", "--out", str(out), "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    files = sorted(out.glob("*.png"))
    assert len(files) == 10
    first = [f.read_bytes() for f in files]
    im = Image.open(files[0])
    assert im.size == (64, 64) and im.mode == "L"
    assert "not empty" in _one_line_error(
        run_cli("gan", "sample", str(gan_dir), "--n", "10", "--out", str(out))
    )
    proc = run_cli(
        "gan", "sample", str(gan_dir), "--n", "10", "--out", str(out), "--seed", "3", "--overwrite"
    )
    assert proc.returncode == 0 and [f.read_bytes() for f in sorted(out.glob("*.png"))] == first
    other = tmp_path / "other" / "NORMAL"
    assert (
        run_cli("gan", "sample", str(gan_dir), "--n", "10", "--out", str(other), "--seed", "4").returncode
        == 0
    )
    assert [f.read_bytes() for f in sorted(other.glob("*.png"))] != first


def test_bad_input_is_one_line(gan_dir, tiny_kermany, tmp_path):
    with pytest.raises(DataError, match="class 'lungs' not in .*NORMAL, PNEUMONIA"):
        train_gan(str(tiny_kermany), "lungs", tmp_path / "g1", epochs=1, progress=False)
    assert not (tmp_path / "g1").exists()
    with pytest.raises(ConfigError, match="power of two"):
        train_gan(str(tiny_kermany), "NORMAL", tmp_path / "g2", image_size=48, progress=False)
    msg = _one_line_error(
        run_cli("gan", "sample", str(tiny_kermany), "--n", "3", "--out", str(tmp_path / "s"))
    )
    assert "not a GAN folder" in msg
    bad = tmp_path / "bad-gan"
    shutil.copytree(gan_dir, bad)
    (bad / "generator.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="corrupted"):
        load_generator(bad)
    msg = _one_line_error(
        run_cli(
            "gan",
            "train",
            "--data",
            str(tiny_kermany),
            "--class",
            "NORMAL",
            "--out",
            str(gan_dir),
            "--epochs",
            "1",
        )
    )
    assert "not empty" in msg
