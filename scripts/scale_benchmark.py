"""Scale benchmark (docs/benchmarks.md, "Scale"): N-image datasets from the real radiographs in
../shared/data, then index time, decode img/s and peak RSS of `cxr prepare` and `cxr train` (frozen
fast path).

    # 1. build (every file differs: random crop, rotation, gamma/contrast, re-encoded PNG)
    nice -n 10 python scripts/scale_benchmark.py build --n 10000 --out /tmp/scale/10k
    # 2. measure (a fresh cache per size; --baseline-src runs the same `cxr train` from another checkout,
    #    e.g. `git worktree add /tmp/cxr-base <commit before the store>` → --baseline-src /tmp/cxr-base/src)
    nice -n 10 python scripts/scale_benchmark.py measure --data /tmp/scale/10k --work /tmp/scale/work-10k \\
        --baseline-src /tmp/cxr-base/src --json /tmp/scale/10k.json

Sources: kermany-224 (NORMAL / PNEUMONIA) and covid-challenge (normal → NORMAL, pneumonia_* → PNEUMONIA),
cycled; image i uses a generator seeded with i. Output: OUT/NORMAL/*.png, OUT/PNEUMONIA/*.png (cxr carves
val/test by its defaults). Peak RSS comes from /usr/bin/time -v (maximum resident set size).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SIDE = 256


def sources() -> list[tuple[Path, str]]:
    """(file, class) of every usable real radiograph, in a fixed order."""
    out: list[tuple[Path, str]] = []
    for f in sorted((DATA / "kermany-224").rglob("*")):
        if f.suffix.lower() in (".png", ".jpeg", ".jpg") and f.parent.name in ("NORMAL", "PNEUMONIA"):
            out.append((f, f.parent.name))
    for f in sorted((DATA / "covid-challenge").rglob("*")):
        cls = f.parent.name
        if f.suffix.lower() in (".png", ".jpeg", ".jpg") and (cls == "normal" or cls.startswith("pneumonia")):
            out.append((f, "NORMAL" if cls == "normal" else "PNEUMONIA"))
    return out


def variant(job: tuple[int, str, str, str]) -> None:
    """Write image ``i``: a random crop (70-100 % of each side), rotation (±10°), gamma (0.7-1.4) and
    contrast/brightness change of its source, resized to 256×256, PNG."""
    i, src, cls, out = job
    rng = np.random.default_rng(i)
    im = Image.open(src).convert("L")
    w, h = im.size
    cw, ch = int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    im = im.crop((x, y, x + cw, y + ch)).rotate(
        float(rng.uniform(-10, 10)), resample=Image.Resampling.BILINEAR
    )
    a = np.asarray(im.resize((SIDE, SIDE), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    a = a ** rng.uniform(0.7, 1.4) * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05)
    a = np.clip(a * 255.0 + rng.normal(0, 1.0, a.shape), 0, 255).astype(np.uint8)  # noise: every file differs
    Image.fromarray(a).save(Path(out) / cls / f"img{i:06d}.png", compress_level=1)


def build(n: int, out: Path, workers: int) -> None:
    src = sources()
    for cls in ("NORMAL", "PNEUMONIA"):
        (out / cls).mkdir(parents=True, exist_ok=True)
    jobs = [(i, str(src[i % len(src)][0]), src[i % len(src)][1], str(out)) for i in range(n)]
    start = time.perf_counter()
    with Pool(workers) as pool:
        for k, _ in enumerate(pool.imap_unordered(variant, jobs, chunksize=64), 1):
            if k % 2000 == 0:
                print(f"{k}/{n} images, {time.perf_counter() - start:.0f} s", file=sys.stderr)
    print(f"built {n} images from {len(src)} sources in {time.perf_counter() - start:.0f} s → {out}")


def timed(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    """Run under /usr/bin/time -v: wall seconds, peak RSS (MB), return code."""
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})  # fmt: skip
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    wall = re.search(
        r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", proc.stderr
    )
    secs = (int(wall[1] or 0) * 3600 + int(wall[2]) * 60 + float(wall[3])) if wall else float("nan")
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
    return {
        "rc": proc.returncode,
        "wall_s": round(secs, 1),
        "peak_rss_mb": int(rss[1]) // 1024 if rss else None,
    }


def measure(data: Path, work: Path, size: int, epochs: int, baseline_src: str | None) -> dict:
    n = sum(1 for _ in data.rglob("*.png"))
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    res: dict = {"n": n, "image_size": size}
    code = ("import time,sys; from cxrlab.data.index import discover; t=time.perf_counter(); "
            f"ix=discover({str(data)!r}); print(len(ix.samples), time.perf_counter()-t)")  # fmt: skip
    out = subprocess.run([py, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    res["index_s"] = round(float(out[1]), 2)
    cache = work / "cache"
    prep = timed([py, "-m", "cxrlab", "prepare", "--data", str(data), "--image-size", str(size),
                  "--cache-dir", str(cache), "-q"])  # fmt: skip
    res["prepare"] = {**prep, "decode_img_s": round(n / prep["wall_s"], 1) if prep["wall_s"] else None}
    train = [py, "-m", "cxrlab", "train", "--data", str(data), "--image-size", str(size),
             "--model", "mobilenet_v2", "--pretrained", "--freeze", "backbone", "--epochs", str(epochs),
             "-q", "--set", "eval.tsne=false", "--set", "eval.bootstrap=200"]  # fmt: skip
    res["train_store"] = timed([*train, "--cache-dir", str(cache), "--out", str(work / "run-store")])
    if baseline_src:  # the in-RAM path: its own cache, so it decodes (all images in a list, then np.stack)
        res["train_baseline_cold"] = timed(
            [*train, "--cache-dir", str(work / "cache-base"), "--out", str(work / "run-base")],
            env={"PYTHONPATH": baseline_src},
        )
    for key in ("run-store", "run-base"):
        m = work / key / "metrics.json"
        if m.exists():
            res[f"{key}_timing"] = json.loads(m.read_text()).get("timing")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--n", type=int, required=True)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--workers", type=int, default=2)
    m = sub.add_parser("measure")
    m.add_argument("--data", type=Path, required=True)
    m.add_argument("--work", type=Path, required=True)
    m.add_argument("--image-size", type=int, default=224)
    m.add_argument("--epochs", type=int, default=2)
    m.add_argument("--baseline-src")
    m.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.cmd == "build":
        build(a.n, a.out, a.workers)
        return
    res = measure(a.data, a.work, a.image_size, a.epochs, a.baseline_src)
    text = json.dumps(res, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text)


if __name__ == "__main__":
    main()
