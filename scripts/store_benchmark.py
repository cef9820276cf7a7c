"""Store benchmark (docs/benchmarks.md §11.6): anonymous memory against the number of images, and training
images/s, of this checkout's store against another checkout's (a baseline ``src`` folder), interleaved.

    # memory: hard links of kermany-224's train images (N of them, both classes in proportion), a fresh
    # cache per run (every image decoded afresh), then one read of every split as training reads them
    nice -n 10 python scripts/store_benchmark.py memory --work /tmp/sb --n 1500,5216 \
        --baseline-src /tmp/base-d/src
    # throughput: `cxr train` (alexnet_improved from scratch, pixels every epoch), one warm cache
    nice -n 10 python scripts/store_benchmark.py speed --data ../shared/data/covid-challenge --epochs 3 \\
        --work /tmp/sb/covid --baseline-src /tmp/base-d/src --pairs 2

Memory is read from ``/proc/PID/smaps_rollup`` (``Anonymous``, ``Pss_Anon``, ``Rss``), sampled every 0.2 s by
this process, never from total RSS alone: a read page of a file map is page cache (file-backed, reclaimable),
not memory the process holds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERMANY = ROOT.parent / "shared" / "data" / "kermany-224" / "train"

# The child: decode into a fresh store (prepare_data), then read every row once through the training
# Dataset and DataLoader (train split) and to_tensor batches (val/test), as training and evaluation do.
CHILD = r"""
import json, re, sys, time
import torch
from torch.utils.data import DataLoader
from cxrlab.config import DataConfig
from cxrlab.data.prepare import ImageArrayDataset, prepare_data, to_tensor

def rollup():
    text = open("/proc/self/smaps_rollup").read()
    return {k: int(v) // 1024 for k, v in re.findall(r"^(Rss|Pss_Anon|Anonymous):\s+(\d+) kB", text, re.M)}

data_dir, cache, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = {"start": rollup()}
t = time.perf_counter()
d = prepare_data(DataConfig(path=data_dir, cache_dir=cache), size, progress=False)
out["prepare_s"] = round(time.perf_counter() - t, 1)
out["after_prepare"] = rollup()
ds = ImageArrayDataset(d.images["train"], d.labels["train"], 1, (0.5,), (0.25,))
t, seen, check = time.perf_counter(), 0, 0.0
for x, _ in DataLoader(ds, batch_size=32, shuffle=True):
    seen += len(x); check += float(x[:, 0, 0, 0].sum())
for split in ("val", "test"):
    images = d.images[split]
    for s in range(0, len(images), 64):
        x = to_tensor(images[s : s + 64], 1, (0.5,), (0.25,)); seen += len(x)
out["read_s"] = round(time.perf_counter() - t, 1)
out["rows_read"] = seen
out["images"] = sum(len(a) for a in d.images.values())
out["after_read"] = rollup()
print(json.dumps(out))
"""


# The child of `loop`: the training data path of `cxr train` (prepare_data on a warm cache, the training
# Dataset with the config's augmentation, train._loader) feeding alexnet_improved's Adam steps; images/s
# over batches after the first few (warm-up), and a pass of the loader alone (the store's read cost).
LOOP = r"""
import json, sys, time
import torch
from cxrlab.config import RunConfig
from cxrlab.data.prepare import ImageArrayDataset, prepare_data
from cxrlab.models.registry import get_spec, resolve_channels
from cxrlab.training.train import _loader, build_model

data_dir, cache = sys.argv[1:3]
size, steps, load_n = map(int, sys.argv[3:6])
cfg = RunConfig.from_dict({"data": {"path": data_dir, "cache_dir": cache, "image_size": size},
                           "model": {"name": "alexnet_improved"}})
d = prepare_data(cfg.data, size, progress=False)
spec = get_spec(cfg.model.name)
model = build_model(cfg.model, len(d.classes), size)
ch = resolve_channels(spec, cfg.model)
ds = ImageArrayDataset(d.images["train"], d.labels["train"], ch, spec.mean, spec.std, cfg.data.augmentation)
loader = _loader(ds, cfg, shuffle=True)
t, n = time.perf_counter(), 0
for x, _ in loader:
    n += len(x)
    if n >= load_n:
        break
load_img_s = n / (time.perf_counter() - t)
opt = torch.optim.Adam(model.parameters(), 1e-3)
model.train()
warm, seen, t = 3, 0, None
for b, (x, y) in enumerate(loader):
    if b == warm:
        t = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    if b >= warm:
        seen += len(x)
    if b + 1 >= warm + steps:
        break
print(json.dumps({"train_rows": len(ds), "load_img_s": round(load_img_s, 1), "load_rows": n,
                  "step_img_s": round(seen / (time.perf_counter() - t), 1), "step_rows": seen}))
"""


def _rollup(pid: int) -> dict[str, int]:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return {}
    return {k: int(v) // 1024 for k, v in re.findall(r"^(Rss|Pss_Anon|Anonymous):\s+(\d+) kB", text, re.M)}


def sampled(cmd: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, dict[str, int]]:
    """Run ``cmd``; its stdout and the peaks (MB) of Anonymous, Pss_Anon and Rss sampled every 0.2 s."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env={**os.environ, **env})
        peak: dict[str, int] = {}
        while proc.poll() is None:
            for k, v in _rollup(proc.pid).items():
                peak[k] = max(peak.get(k, 0), v)
            time.sleep(0.2)
        out.seek(0)
        err.seek(0)
        done = subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())
    if done.returncode:
        print(done.stderr[-3000:], file=sys.stderr)
    return done, peak


def kermany_subset(n: int, out: Path) -> Path:
    """``n`` of kermany-224's train images as hard links, both classes in their proportion (5,216 = all)."""
    files = sorted(f for f in KERMANY.rglob("*") if f.suffix.lower() in (".jpeg", ".jpg", ".png"))
    picked = [files[round(i * len(files) / n)] for i in range(n)] if n < len(files) else files
    if out.exists():
        shutil.rmtree(out)
    for f in picked:
        (out / f.parent.name).mkdir(parents=True, exist_ok=True)
        os.link(f, out / f.parent.name / f.name)
    return out


def memory(work: Path, sizes: list[int], baseline_src: str | None, image_size: int, store_src: str) -> dict:
    sides = {"store": store_src} | ({"baseline": baseline_src} if baseline_src else {})
    res: dict = {}
    for n in sizes:
        data = kermany_subset(n, work / f"kermany-{n}")
        for side, src in sides.items():
            cache = work / f"cache-{side}-{n}"
            shutil.rmtree(cache, ignore_errors=True)  # decoded afresh
            done, peak = sampled([sys.executable, "-c", CHILD, str(data), str(cache), str(image_size)],
                                 {"PYTHONPATH": src})  # fmt: skip
            row = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {}
            res.setdefault(side, {})[n] = {**row, "peak": peak, "rc": done.returncode}
            print(side, n, json.dumps(res[side][n]), flush=True)
            shutil.rmtree(cache, ignore_errors=True)
    for side, rows in res.items():
        a, b = rows[sizes[0]], rows[sizes[-1]]
        span = (sizes[-1] - sizes[0]) / 1000
        rows["growth_mb_per_1000"] = {
            f"{where}_{key}": round((b[where][key] - a[where][key]) / span, 1)
            for where, key in (
                ("peak", "Anonymous"),
                ("peak", "Pss_Anon"),
                ("peak", "Rss"),
                ("after_read", "Anonymous"),
            )  # fmt: skip
        }
        print(side, "growth MB per 1,000 images", rows["growth_mb_per_1000"], flush=True)
    return res


def speed(data: Path, work: Path, epochs: int, baseline_src: str | None, pairs: int, image_size: int,
          store_src: str) -> dict:  # fmt: skip
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"  # one warm cache: the store files are the same format on both sides
    py = sys.executable
    prep = subprocess.run([py, "-m", "cxrlab", "prepare", "--data", str(data), "--image-size",
                           str(image_size), "--cache-dir", str(cache), "-q"],
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": store_src})  # fmt: skip
    assert prep.returncode == 0, prep.stderr[-2000:]
    train = [py, "-m", "cxrlab", "train", "--data", str(data), "--image-size", str(image_size), "-q",
             "--model", "alexnet_improved", "--epochs", str(epochs), "--cache-dir", str(cache),
             "--set", "eval.tsne=false", "--set", "eval.bootstrap=200", "--set", "eval.explain=off",
             "--set", "train.fast_path=false"]  # fmt: skip
    sides = {"store": store_src} | ({"baseline": baseline_src} if baseline_src else {})
    res: dict = {side: [] for side in sides}
    for p in range(pairs):
        order = list(sides) if p % 2 == 0 else list(reversed(sides))  # alternate who goes first
        for side in order:
            run = work / f"{side}-{p}"
            shutil.rmtree(run, ignore_errors=True)
            t = time.perf_counter()
            done, peak = sampled([*train, "--out", str(run)], {"PYTHONPATH": sides[side]})
            m = json.loads((run / "metrics.json").read_text()) if done.returncode == 0 else {}
            timing = m.get("timing") or {}
            n_train = sum(m["data"]["counts"]["train"].values()) if m else 0
            row = {"pair": p, "rc": done.returncode, "wall_s": round(time.perf_counter() - t, 1),
                   "train_s": timing.get("train_s"), "n_train": n_train, "epochs": timing.get("epochs"),
                   "train_img_s": round(n_train * (timing.get("epochs") or epochs) / timing["train_s"], 1)
                   if timing.get("train_s") else None,
                   "test_accuracy": (m.get("test") or {}).get("accuracy"), "peak": peak,
                   "load": os.getloadavg()[0]}  # fmt: skip
            res[side].append(row)
            print(side, json.dumps(row), flush=True)
            shutil.rmtree(run, ignore_errors=True)
    if baseline_src:
        res["ratio_store_over_baseline"] = [
            round(s["train_img_s"] / b["train_img_s"], 3) if s["train_img_s"] and b["train_img_s"] else None
            for s, b in zip(res["store"], res["baseline"], strict=True)
        ]
        print("ratio store / baseline per pair", res["ratio_store_over_baseline"], flush=True)
    return res


def loop(data: Path, work: Path, baseline_src: str | None, pairs: int, image_size: int, store_src: str,
         steps: int, load_n: int) -> dict:  # fmt: skip
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    prep = subprocess.run([sys.executable, "-m", "cxrlab", "prepare", "--data", str(data), "--image-size",
                           str(image_size), "--cache-dir", str(cache), "-q"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": store_src})  # fmt: skip
    assert prep.returncode == 0, prep.stderr[-2000:]
    sides = {"store": store_src} | ({"baseline": baseline_src} if baseline_src else {})
    res: dict = {side: [] for side in sides}
    for p in range(pairs):
        for side in list(sides) if p % 2 == 0 else list(reversed(sides)):
            cmd = [
                sys.executable,
                "-c",
                LOOP,
                str(data),
                str(cache),
                str(image_size),
                str(steps),
                str(load_n),
            ]
            done, peak = sampled(cmd, {"PYTHONPATH": sides[side]})
            row = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {}
            res[side].append(
                {**row, "pair": p, "rc": done.returncode, "peak": peak, "load": os.getloadavg()[0]}
            )
            print(side, json.dumps(res[side][-1]), flush=True)
    if baseline_src:
        for key in ("load_img_s", "step_img_s"):
            res[f"ratio_{key}"] = [round(s[key] / b[key], 3) for s, b in zip(res["store"], res["baseline"],
                                                                           strict=True)]  # fmt: skip
            print(f"ratio store / baseline {key}", res[f"ratio_{key}"], flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--work", type=Path, required=True)
    m.add_argument("--n", default="1500,5216")
    s = sub.add_parser("speed")
    s.add_argument("--data", type=Path, required=True)
    s.add_argument("--work", type=Path, required=True)
    s.add_argument("--epochs", type=int, default=1)
    s.add_argument("--pairs", type=int, default=2)
    lp = sub.add_parser("loop")
    lp.add_argument("--data", type=Path, required=True)
    lp.add_argument("--work", type=Path, required=True)
    lp.add_argument("--pairs", type=int, default=2)
    lp.add_argument("--steps", type=int, default=30, help="timed training steps (batches) per run")
    lp.add_argument("--load", type=int, default=3000, help="rows read by the loader-alone pass")
    for p in (m, s, lp):
        p.add_argument("--baseline-src")
        p.add_argument(
            "--store-src", default=str(ROOT / "src"), help="the side measured (default: this checkout)"
        )
        p.add_argument("--image-size", type=int, default=224)
        p.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.cmd == "memory":
        res = memory(a.work, [int(x) for x in a.n.split(",")], a.baseline_src, a.image_size, a.store_src)
    elif a.cmd == "loop":
        res = loop(a.data, a.work, a.baseline_src, a.pairs, a.image_size, a.store_src, a.steps, a.load)
    else:
        res = speed(a.data, a.work, a.epochs, a.baseline_src, a.pairs, a.image_size, a.store_src)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
