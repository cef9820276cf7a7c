"""Training-step time of the small CNN at 28 px, NCHW against channels_last (docs/benchmarks.md §12.3).

Usage: python scripts/channels_last_steps.py [WIDTH ...]   (default: 1.0 1.5)
Prints seconds per PneumoniaMNIST epoch of optimiser steps (37 batches of 128, random inputs: the step
time does not depend on the pixel values) and the augmentation time of configs/fast_pneumoniamnist.yaml.
"""

from __future__ import annotations

import sys
import time

import torch

from cxrlab.config import RunConfig
from cxrlab.data.prepare import keras_augmentation
from cxrlab.models import build_model

STEPS_PER_EPOCH = 37  # 4,708 training images / 128
RECIPE = "src/cxrlab/recipes/fast_pneumoniamnist.yaml"


def epoch_of_steps(width: float, channels_last: bool, repeats: int = 10) -> float:
    """Seconds for one epoch of forward + backward + AdamW steps."""
    cfg = RunConfig.load(RECIPE)
    model = build_model(cfg.model.model_copy(update={"width": width}), 2, 28).train()
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 2, (128,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats * STEPS_PER_EPOCH


def main() -> None:
    widths = [float(w) for w in sys.argv[1:]] or [1.0, 1.5]
    for width in widths:
        nchw, last = epoch_of_steps(width, False), epoch_of_steps(width, True)
        ratio = last / nchw
        print(f"width {width}: NCHW {nchw:.2f} s, channels_last {last:.2f} s per epoch ({ratio:.2f}x)")
    augment = keras_augmentation(RunConfig.load(RECIPE).data.augmentation, 28)
    images = torch.randint(0, 255, (4708, 1, 28, 28), dtype=torch.uint8)
    start = time.perf_counter()
    for image in images:
        augment(image)
    seconds = time.perf_counter() - start
    print(f"augmentation: {seconds:.2f} s per epoch (one image at a time, in the main process)")


if __name__ == "__main__":
    main()
