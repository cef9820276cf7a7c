"""Frozen-feature throughput of a backbone: plain fp32 (NCHW) vs cxrlab's fast path settings.

Usage: python scripts/feature_throughput.py [--model mobilenet_v2] [--size 224] [--n 256] [--batch 64]
Random pixels: throughput does not depend on content. Prints one Markdown table row per setting.
"""

from __future__ import annotations

import argparse
import time

import torch
from cxrlab.training.runtime import cpu_has_native_bf16

from cxrlab.config import ModelConfig
from cxrlab.models.registry import build_model


def measure(model, x: torch.Tensor, batch: int, channels_last: bool, dtype) -> float:
    net = model.backbone.eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    with (
        torch.inference_mode(),
        torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None),
    ):
        warm = x[:batch].contiguous(memory_format=torch.channels_last) if channels_last else x[:batch]
        net(warm)
        start = time.perf_counter()
        for i in range(0, len(x), batch):
            xb = x[i : i + batch]
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            net(xb)
        elapsed = time.perf_counter() - start
    net.to(memory_format=torch.contiguous_format)
    return len(x) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=args.model, freeze="backbone"), 2, args.size, pretrained=False)
    x = torch.randn(args.n, 3, args.size, args.size)
    print(f"threads={torch.get_num_threads()} native_bf16={cpu_has_native_bf16()}")
    print("| setting | images/s |\n|---|---|")
    for name, cl, dtype in (
        ("fp32, NCHW (plain)", False, None),
        ("fp32, channels_last (fast path here)", True, None),
        ("bf16 autocast, channels_last", True, torch.bfloat16),
    ):
        print(f"| {args.model} {args.size}px {name} | {measure(model, x, args.batch, cl, dtype):.1f} |")


if __name__ == "__main__":
    main()
