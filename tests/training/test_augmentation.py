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


def test_brightness_and_contrast_jitter_change_intensities_only(covid_dir):
    """`data.augmentation.brightness/contrast` (off by default): the same anatomy, other grey levels."""
    from cxrlab.config import AugmentConfig
    from cxrlab.data.prepare import keras_augmentation

    image = torch.from_numpy(load_gray(sorted((covid_dir / "train" / "normal").iterdir())[0], 64))[None]
    geometry_off = dict(rotation=0, width_shift=0, height_shift=0, shear=0, zoom=0, horizontal_flip=False)
    assert torch.equal(keras_augmentation(AugmentConfig(**geometry_off), 64)(image), image)  # default: off
    jitter = keras_augmentation(AugmentConfig(**geometry_off, brightness=0.3, contrast=0.3), 64)
    torch.manual_seed(0)
    draws = [jitter(image) for _ in range(8)]
    means = [float(d.float().mean()) for d in draws]
    assert max(means) - min(means) > 5  # grey levels move (0-255 scale) ...
    for d in draws:
        assert d.dtype == torch.uint8 and d.shape == image.shape
        r = np.corrcoef(d.float().flatten().numpy(), image.float().flatten().numpy())[0, 1]
        assert r > 0.95  # ... the pixels stay where they were


def test_stretch_changes_the_aspect_ratio_in_both_directions():
    """`data.augmentation.stretch` (off by default) widens or narrows a shape; the image keeps its size."""
    from cxrlab.config import AugmentConfig
    from cxrlab.data.prepare import keras_augmentation

    geometry_off = dict(rotation=0, width_shift=0, height_shift=0, shear=0, zoom=0, horizontal_flip=False)
    square = torch.zeros(1, 64, 64, dtype=torch.uint8)
    square[:, 16:48, 16:48] = 255  # a 32 x 32 square in the middle
    stretch = keras_augmentation(AugmentConfig(**geometry_off, stretch=0.5), 64)
    torch.manual_seed(0)
    ratios = []
    for _ in range(40):
        out = stretch(square)
        assert out.shape == square.shape and out.dtype == torch.uint8
        rows, cols = (out[0] > 127).any(1).sum().item(), (out[0] > 127).any(0).sum().item()
        ratios.append(rows / cols)
    assert min(ratios) < 0.8 and max(ratios) > 1.25  # taller and wider shapes both occur ...
    assert all(1 / 1.6 < r < 1.6 for r in ratios)  # ... within the configured 1 + 0.5 per axis pair
