"""One config trained under several seeds: a *seed group* folder with the spread of every headline metric.

``OUT/seed-S`` is a complete run folder per seed (``cxr train --out OUT/seed-S --seed S`` would write the
same); ``OUT/seeds.json`` holds the per-seed headline test metrics and their mean, sample standard
deviation (ddof = 1), min and max; ``OUT/seeds.csv`` the same as a table and ``OUT/seeds.md`` as text.
`cxr compare` accepts such a folder as a group (:mod:`cxrlab.experiments.compare`).
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

from cxrlab.config import RunConfig, split_list
from cxrlab.errors import ConfigError
from cxrlab.metrics import metrics_for
from cxrlab.runs import atomic_write, check_out_path, claim_folder, write_csv, write_json

#: what a seed group folder holds (``--overwrite`` deletes nothing else)
SEED_ENTRIES: tuple[str, ...] = ("seed-*", "seeds.json", "seeds.csv", "seeds.md")
SEEDS_KIND = "seeds"

def headline_paths(task: str = "single") -> list[tuple[str, tuple[str, ...]]]:
    """The headline numbers of a run as (name, path in metrics.json): every registered metric of its task
    (:data:`cxrlab.metrics.REGISTRY`, at the deployed decision), argmax accuracy beside it, the run time."""
    paths = [(m.name, ("test", *m.where)) for m in metrics_for(task)]
    return [*paths, ("argmax_accuracy", ("test", "argmax", "accuracy")), ("total_s", ("timing", "total_s"))]


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` → ``[0, 1, 2]``; also ``"0-4"`` (a range). One-line :class:`ConfigError` for anything
    else: non-integers, out-of-range seeds, duplicates, fewer than two seeds."""
    seeds: list[int] = []
    for item in split_list(text, "--seeds"):
        lo, dash, hi = item.partition("-")
        try:
            part = list(range(int(lo), int(hi) + 1)) if dash and lo else [int(item)]
        except ValueError:
            raise ConfigError(
                f"--seeds {text!r}: {item!r} is not a whole number; give seeds like 0,1,2,3,4 or 0-4"
            ) from None
        seeds += part
    bad = [s for s in seeds if not 0 <= s < 2**32]
    if bad or not seeds:
        raise ConfigError(f"--seeds {text!r}: seeds must be from 0 to 2**32 - 1, e.g. 0,1,2,3,4")
    dupes = sorted({s for s in seeds if seeds.count(s) > 1})
    if dupes:
        raise ConfigError(f"--seeds {text!r}: seed {dupes[0]} is given twice; give each seed once")
    if len(seeds) < 2:
        raise ConfigError(f"--seeds {text!r}: give at least two seeds (for one, use --seed)")
    return seeds


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of one run's metrics.json (those it has; multi-label: its ``test`` numbers)."""
    out: dict[str, float] = {}
    for name, path in headline_paths("multi" if metrics.get("multilabel") else "single"):
        node: Any = metrics
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, int | float) and not isinstance(node, bool) and math.isfinite(node):
            out[name] = float(node)
    return out


def spread(values: list[float]) -> dict[str, float | int]:
    """mean, sample std (ddof = 1; 0 for one value), min, max and n of ``values``."""
    n = len(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "min": min(values), "max": max(values), "n": n}


def summarize(per_seed: dict[int, dict[str, float]]) -> dict[str, dict[str, float | int]]:
    """Per metric: :func:`spread` over the seeds that report it."""
    names: list[str] = []
    for numbers in per_seed.values():
        names += [k for k in numbers if k not in names]
    return {
        name: spread([numbers[name] for numbers in per_seed.values() if name in numbers]) for name in names
    }


def summary_lines(result: dict[str, Any]) -> list[str]:
    """``accuracy 0.871 ± 0.012 (min 0.852, max 0.885)`` per metric: what `cxr train --seeds` prints."""
    lines = []
    for name, s in result["summary"].items():
        digits = 1 if name.endswith("_s") else 3
        lines.append(
            f"{name:<26} {s['mean']:.{digits}f} ± {s['std']:.{digits}f} "
            f"(min {s['min']:.{digits}f}, max {s['max']:.{digits}f}, n={s['n']})"
        )
    return lines


def write_group(out: Path, result: dict[str, Any]) -> None:
    """seeds.json, seeds.csv (one row per seed, then mean/std/min/max rows) and seeds.md."""
    write_json(out / "seeds.json", result)
    names = list(result["summary"])
    rows: list[dict[str, Any]] = [
        {"seed": s, **{k: round(v, 6) for k, v in result["per_seed"][str(s)].items()}}
        for s in result["seeds"]
    ]
    for stat in ("mean", "std", "min", "max"):
        rows.append({"seed": stat, **{k: round(float(result["summary"][k][stat]), 6) for k in names}})
    write_csv(out / "seeds.csv", rows, ["seed", *names])
    md = [f"# Seed group: {len(result['seeds'])} seeds ({', '.join(map(str, result['seeds']))})", ""]
    md += [f"Config: {result['config']}; one run folder per seed (seed-S/).", ""]
    md += ["std: sample standard deviation over the seeds (ddof 1).", ""]
    md += ["| metric | mean | std | min | max |", "|---|---|---|---|---|"]
    for name, s in result["summary"].items():
        md.append(f"| {name} | {s['mean']:.4f} | {s['std']:.4f} | {s['min']:.4f} | {s['max']:.4f} |")
    atomic_write(out / "seeds.md", "\n".join(md) + "\n")


def train_seeds(
    cfg: RunConfig,
    out: str | Path,
    seeds: list[int],
    overwrite: bool = False,
    progress: bool = True,
    protect: tuple[str | Path, ...] = (),
    echo: Any = None,
) -> dict[str, Any]:
    """Train ``cfg`` once per seed into ``out/seed-S`` and write the group's spread; return seeds.json.

    ``echo`` (a callable taking a line) hears one line per finished seed."""
    from cxrlab.pipeline.train import train

    out = check_out_path(out)
    if len(set(seeds)) != len(seeds) or len(seeds) < 2:
        raise ConfigError("train_seeds: give at least two distinct seeds")
    busy = f"{out} already exists and is not empty; choose another --out, or add --overwrite"
    inputs = tuple(protect) + tuple(p for p in (cfg.data.path, cfg.data.extra_train) if p)
    lock = claim_folder(out, SEEDS_KIND, SEED_ENTRIES, "a seed group folder", overwrite, busy, inputs)
    try:
        t0 = time.perf_counter()
        per_seed: dict[int, dict[str, float]] = {}
        for seed in seeds:
            run_cfg = cfg.model_copy(deep=True)
            run_cfg.train.seed = seed
            metrics = train(run_cfg, out / f"seed-{seed}", progress=progress, protect=protect)
            per_seed[seed] = headline(metrics)
            if echo is not None:
                acc = per_seed[seed].get("accuracy")
                shown = f"test accuracy {acc:.3f}" if acc is not None else "done"
                echo(f"seed {seed}: {shown} ({out / f'seed-{seed}'})")
        result = {
            "seeds": seeds,
            "config": str(out / f"seed-{seeds[0]}" / "config.yaml"),
            "runs": {str(s): f"seed-{s}" for s in seeds},
            "per_seed": {str(s): v for s, v in per_seed.items()},
            "summary": summarize(per_seed),
            "std": "sample standard deviation (ddof 1)",
            "total_s": round(time.perf_counter() - t0, 3),
        }
        write_group(out, result)
        return result
    finally:
        lock.release()


def is_seed_group(path: str | Path) -> bool:
    """True for a folder written by :func:`train_seeds` (it has seeds.json and no config.yaml)."""
    path = Path(path)
    return (path / "seeds.json").is_file() and not (path / "config.yaml").is_file()
