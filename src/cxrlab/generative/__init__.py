"""Autoencoder compression and GAN augmentation, measured against plain training (issue 6).

* :mod:`cxrlab.generative.autoencoder` — train a convolutional autoencoder, encode every split
  to codes (``cxr autoencoder train|encode``); ``cxr train --data CODES --model code_cnn``.
* :mod:`cxrlab.generative.gan` — a DCGAN per class and its samples (``cxr gan train|sample``);
  ``cxr train --extra-train SYNTH`` adds them to the training split only.
* :mod:`cxrlab.generative.quality` — real-vs-synthetic two-sample test, memorisation check,
  sample grids (``cxr gan quality``).
"""

from __future__ import annotations

from cxrlab.generative.autoencoder import encode_dataset, load_autoencoder, train_autoencoder
from cxrlab.generative.gan import generate, load_generator, sample_gan, train_gan
from cxrlab.generative.quality import quality_report

__all__ = [
    "encode_dataset",
    "generate",
    "load_autoencoder",
    "load_generator",
    "quality_report",
    "sample_gan",
    "train_autoencoder",
    "train_gan",
]
