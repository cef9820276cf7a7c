"""Tiny real Kermany copies and small trained autoencoder/GAN shared by the generative tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli

CLASSES = ("NORMAL", "PNEUMONIA")


def train_small_cnn(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """`cxr train` of the quick raw-image run the tests compare against: small_cnn at 32 px, 1 epoch."""
    return run_cli(
        "train", "--data", str(data), "--model", "small_cnn", "--image-size", "32", "--epochs", "1",
        *extra, "--out", str(out), "-q", "--set", "eval.bootstrap=100",
    )  # fmt: skip


def _link(src: Path, dst: Path, n: int | None) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir())[:n]:
        os.symlink(f, dst / f.name)


@pytest.fixture(scope="session")
def tiny_kermany(tmp_path_factory, kermany_dir) -> Path:
    """Official layout, real images: train 24/class, val 8/class (all), test 12/class."""
    root = tmp_path_factory.mktemp("kermany-tiny")
    for split, n in (("train", 24), ("val", None), ("test", 12)):
        for cls in CLASSES:
            _link(kermany_dir / split / cls, root / split / cls, n)
    return root


@pytest.fixture(scope="session")
def flat_kermany(tmp_path_factory, kermany_dir) -> Path:
    """Class folders only (no splits): val and test are carved from it. 40 images per class."""
    root = tmp_path_factory.mktemp("kermany-flat")
    for cls in CLASSES:
        _link(kermany_dir / "train" / cls, root / cls, 40)
    return root


@pytest.fixture(scope="session")
def trained_ae(tmp_path_factory, tiny_kermany) -> Path:
    """A small autoencoder (64 px, depth 3 → 256×8×8) trained a few epochs on the tiny training split."""
    from cxrlab.generative.autoencoder import train_autoencoder

    out = tmp_path_factory.mktemp("ae") / "ae"
    train_autoencoder(
        str(tiny_kermany), out, image_size=64, depth=3, epochs=6, batch_size=8, lr=3e-3, progress=False
    )
    return out


@pytest.fixture(scope="session")
def codes_dir(tmp_path_factory, trained_ae) -> Path:
    """Codes of every split of the tiny dataset."""
    from cxrlab.generative.autoencoder import encode_dataset

    out = tmp_path_factory.mktemp("codes") / "codes"
    encode_dataset(trained_ae, out, progress=False)
    return out


@pytest.fixture(scope="session")
def gan_dir(tmp_path_factory, tiny_kermany) -> Path:
    """A narrow DCGAN trained 2 epochs on the 24 NORMAL training images."""
    from cxrlab.generative.gan import train_gan

    out = tmp_path_factory.mktemp("gan") / "gan"
    train_gan(
        str(tiny_kermany),
        "normal",
        out,
        epochs=2,
        batch_size=8,
        ngf=8,
        ndf=8,
        checkpoint_every=1,
        progress=False,
    )
    return out


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory, gan_dir) -> Path:
    """SYNTH/NORMAL/*.png: 30 samples of the tiny GAN."""
    from cxrlab.generative.gan import sample_gan

    root = tmp_path_factory.mktemp("synth")
    sample_gan(gan_dir, 30, root / "NORMAL")
    return root
