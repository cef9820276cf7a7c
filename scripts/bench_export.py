"""onnxruntime against PyTorch inference on this CPU, for one run's exported model (docs/benchmarks.md).

Exports RUN to ONNX in memory (the same code as `cxr export`), then times both engines on the same
real test images, fp32, batch 1 and batch 32, in the same process and run: PyTorch as cxrlab runs it
(channels_last, inference_mode, the run's precision) and onnxruntime (CPU provider, as many threads as torch).

    .venv/bin/python scripts/bench_export.py RUN [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import onnxruntime as ort

    from cxrlab.deploy.export import Exported, _onnx_bytes, contract
    from cxrlab.evaluation.inference import image_run, sample_test_images
    from cxrlab.runtime import environment, prepare_for_inference

    loaded = image_run(args.run)
    size = int(loaded.meta["image_size"])
    images, _ = sample_test_images(loaded, 32)
    x = (images.astype(np.float32) / 255.0)[:, None]
    module = Exported(loaded).eval()
    data = _onnx_bytes(module, size, contract(loaded))
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    prepare_for_inference(module, "cpu")

    def torch_run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            t = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
            return module(t).numpy()

    def ort_run(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {"image": batch})[0]

    rows = []
    for batch in (1, 32):
        timings = {}
        for name, fn in (("pytorch", torch_run), ("onnxruntime", ort_run)):
            fn(x[:batch])  # warm-up
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                for i in range(0, 32, batch):
                    fn(x[i : i + batch])
                best = min(best, time.perf_counter() - start)
            timings[name] = 32 / best
        rows.append({"batch": batch, **{k: round(v, 1) for k, v in timings.items()},
                     "ratio": round(timings["onnxruntime"] / timings["pytorch"], 2)})  # fmt: skip
    diff = float(np.abs(torch_run(x) - ort_run(x)).max())
    env = environment()
    print(json.dumps({"run": args.run, "model": loaded.meta["model"], "image_size": size,
                      "threads": torch.get_num_threads(), "cpu": env.get("cpu") or env.get("processor"),
                      "torch": torch.__version__, "onnxruntime": ort.__version__,
                      "max_abs_diff": diff, "img_per_s": rows}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
