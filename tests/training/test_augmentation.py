"""`--augment` changes what the network sees: the training batches of two epochs differ from the
unaugmented ones (same images, same order), and the same seed gives the same augmented batches."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from cxrlab.config import RunConfig
from cxrlab.data.images import load_gray
from cxrlab.data.prepare import ImageArrayDataset
from cxrlab.training.train import EpochSeed, _loader


def _batches(images: np.ndarray, labels: np.ndarray, augment: bool, seed: int) -> list[list[tuple]]:
    """Two epochs of training batches, built and seeded as `cxr train` does (loader, sampler, epoch seed)."""
    cfg = RunConfig()
    cfg.data.augment, cfg.train.seed, cfg.train.batch_size = augment, seed, 4
    ds = ImageArrayDataset(images, labels, 1, (0.5,), (0.25,), cfg.data.augmentation if augment else None)
    loader = _loader(ds, cfg, shuffle=True)
    epochs = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        EpochSeed(seed).on_train_epoch_start(SimpleNamespace(current_epoch=epoch), None)
        epochs.append(list(loader))
    return epochs


def test_augment_changes_the_batches_and_the_seed_fixes_them(covid_dir):
    files = [f for c in ("covid", "normal") for f in sorted((covid_dir / "train" / c).iterdir())[:6]]
    images = np.stack([load_gray(f, 32) for f in files])
    labels = np.array([0] * 6 + [1] * 6)
    plain = _batches(images, labels, augment=False, seed=3)
    aug = _batches(images, labels, augment=True, seed=3)
    again = _batches(images, labels, augment=True, seed=3)
    for epoch in range(2):
        assert len(aug[epoch]) == len(plain[epoch]) == 3
        for (xa, ya), (xp, yp), (xb, yb) in zip(aug[epoch], plain[epoch], again[epoch], strict=True):
            assert torch.equal(ya, yp)  # the same images in the same order ...
            assert not torch.equal(xa, xp)  # ... with other pixels: augmentation happened
            assert (xa - xp).abs().mean() > 0.05  # not rounding noise
            assert torch.equal(xa, xb) and torch.equal(ya, yb)  # same seed, same augmented batches
