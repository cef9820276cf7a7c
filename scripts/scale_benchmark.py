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
val/test by its defaults). Peak RSS: the process's ru_maxrss, with its anonymous and file-backed peaks
sampled from /proc.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
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


def subset(n: int, source: Path, out: Path) -> None:
    """Hard-link the first ``n`` images of a larger build (image i is the same file in every build, its
    generator being seeded with i), so 10k ⊂ 30k ⊂ 100k without writing the images again."""
    made = 0
    for cls in ("NORMAL", "PNEUMONIA"):
        (out / cls).mkdir(parents=True, exist_ok=True)
        for f in sorted((source / cls).glob("img*.png")):
            if int(f.stem[3:]) < n and not (out / cls / f.name).exists():
                os.link(f, out / cls / f.name)
                made += 1
    print(f"linked {made} images of {source} → {out}")


def _status_kb(pid: int) -> dict[str, int]:
    """RssAnon / RssFile / VmHWM of a live process, in kB (empty once it has gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {k: int(v) for k, v in re.findall(r"^(RssAnon|RssFile|RssShmem|VmHWM):\s+(\d+) kB", text, re.M)}


def timed(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    """Run ``cmd``: wall seconds, return code, peak RSS (the kernel's ru_maxrss of the process: anonymous
    and file-backed pages, e.g. the mapped store's rows it has read) and, sampled every 0.5 s from
    /proc/PID/status, the peaks of its anonymous (RssAnon) and file-backed (RssFile) parts."""
    start = time.perf_counter()
    with open(os.devnull, "w") as null, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=null, stderr=err, text=True, env={**os.environ, **(env or {})})
        peak: dict[str, int] = {}
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            for k, v in _status_kb(proc.pid).items():
                peak[k] = max(peak.get(k, 0), v)
            time.sleep(0.5)
        rc = os.waitstatus_to_exitcode(status)
        proc.returncode = rc
        if rc:
            err.seek(0)
            print(err.read()[-3000:], file=sys.stderr)
    return {
        "rc": rc,
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_rss_mb": usage.ru_maxrss // 1024,
        "peak_anon_mb": peak.get("RssAnon", 0) // 1024,
        "peak_file_mb": peak.get("RssFile", 0) // 1024,
    }


STEPS = ("index", "prepare", "finetune", "frozen", "audit")


def _run_summary(run: Path) -> dict:
    """Timing from a run's metrics.json, with training images/s (train_s covers the epochs' training
    steps and their validation passes, the same on either side of a comparison)."""
    m = run / "metrics.json"
    if not m.exists():
        return {}
    metrics = json.loads(m.read_text())
    timing = metrics.get("timing") or {}
    n_train = sum(metrics["data"]["counts"]["train"].values())
    epochs = timing.get("epochs") or 1
    out = {"timing": timing, "n_train": n_train, "test_accuracy": metrics.get("test", {}).get("accuracy")}
    if timing.get("train_s"):
        out["train_img_s"] = round(n_train * epochs / timing["train_s"], 1)
    return out


def measure(data: Path, work: Path, size: int, epochs: int, baseline_src: str | None,
            steps: tuple[str, ...]) -> dict:  # fmt: skip
    n = sum(1 for _ in data.rglob("*.png"))
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    res: dict = {"n": n, "image_size": size}
    cache = work / "cache"
    if "index" in steps:
        code = ("import time,sys; from cxrlab.data.index import discover; t=time.perf_counter(); "
                f"ix=discover({str(data)!r}); print(len(ix.samples), time.perf_counter()-t)")  # fmt: skip
        out = subprocess.run([py, "-c", code], capture_output=True, text=True, check=True).stdout.split()
        res["index_s"] = round(float(out[1]), 2)
    if "prepare" in steps:
        prep = timed([py, "-m", "cxrlab", "prepare", "--data", str(data), "--image-size", str(size),
                      "--cache-dir", str(cache), "-q"])  # fmt: skip
        res["prepare"] = {**prep, "decode_img_s": round(n / prep["wall_s"], 1) if prep["wall_s"] else None}
    common = ["--data", str(data), "--image-size", str(size), "-q", "--set", "eval.tsne=false",
              "--set", "eval.bootstrap=200"]  # fmt: skip
    quiet_eval = ["--set", "eval.explain=off"]  # the store side only: the baseline commit has no explain step
    if "finetune" in steps:  # a small model trained end to end: every epoch reads every training image
        finetune = [py, "-m", "cxrlab", "train", *common, "--model", "alexnet_improved", "--epochs", "1"]
        res["finetune_store"] = timed(
            [*finetune, *quiet_eval, "--cache-dir", str(cache), "--out", str(work / "ft-store")]
        )
        res["finetune_store"].update(_run_summary(work / "ft-store"))
        if baseline_src:  # the in-RAM path: its own cache, so it decodes (all images in a list, np.stack)
            res["finetune_inram"] = timed(
                [*finetune, "--cache-dir", str(work / "cache-base"), "--out", str(work / "ft-inram")],
                env={"PYTHONPATH": baseline_src},
            )
            res["finetune_inram"].update(_run_summary(work / "ft-inram"))
    if "frozen" in steps:
        frozen = [py, "-m", "cxrlab", "train", *common, "--model", "mobilenet_v2", "--pretrained",
                  "--freeze", "backbone", "--epochs", str(epochs)]  # fmt: skip
        res["frozen_store"] = timed(
            [*frozen, *quiet_eval, "--cache-dir", str(cache), "--out", str(work / "frozen-store")]
        )
        res["frozen_store"].update(_run_summary(work / "frozen-store"))
    if "audit" in steps:
        res["audit"] = timed([py, "-m", "cxrlab", "audit", str(data), "--cache-dir", str(cache),
                              "--out", str(work / "audit")])  # fmt: skip
        report = work / "audit" / "audit.json"
        if report.exists():
            res["audit"]["seconds_inside"] = json.loads(report.read_text()).get("seconds")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--n", type=int, required=True)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--workers", type=int, default=2)
    k = sub.add_parser("subset")
    k.add_argument("--n", type=int, required=True)
    k.add_argument("--source", type=Path, required=True)
    k.add_argument("--out", type=Path, required=True)
    m = sub.add_parser("measure")
    m.add_argument("--data", type=Path, required=True)
    m.add_argument("--work", type=Path, required=True)
    m.add_argument("--image-size", type=int, default=224)
    m.add_argument("--epochs", type=int, default=2)
    m.add_argument("--baseline-src")
    m.add_argument("--json", type=Path)
    m.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    a = ap.parse_args()
    if a.cmd == "build":
        build(a.n, a.out, a.workers)
        return
    if a.cmd == "subset":
        subset(a.n, a.source, a.out)
        return
    res = measure(a.data, a.work, a.image_size, a.epochs, a.baseline_src, tuple(a.steps.split(",")))
    text = json.dumps(res, indent=2)
    print(text)
    if a.json:  # one file per size: the steps of several invocations merge into it
        old = json.loads(a.json.read_text()) if a.json.exists() else {}
        a.json.write_text(json.dumps({**old, **res}, indent=2))


if __name__ == "__main__":
    main()
