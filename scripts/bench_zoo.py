"""Model-zoo benchmarks (docs/benchmarks.md, section 2). Run through scripts/bench_zoo.sh.

python scripts/bench_zoo.py table --out DIR [--models a,b] [--steps 3]
    timm-style table: parameters, GMACs (torch.utils.flop_counter, eval forward of one image at the
    model's input size, MACs = FLOPs / 2), training images/s (forward + backward + Adam step,
    batch 16) and inference images/s in fp32 and (models up to --bf16-max-gmacs) bf16 autocast,
    measured by `cxr bench`'s isolated-process harness (cxrlab.experiments.bench.run_bench).
    Writes DIR/zoo_table.md/.json after each model; a rerun measures only what is missing (e.g. bf16
    for the large models, with a higher --bf16-max-gmacs and fewer --steps).
python scripts/bench_zoo.py runs RUN [RUN ...]
    Markdown table of finished run folders: test accuracy with its 95% CI, AUC, epochs, wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cxrlab.config import ModelConfig, RunConfig
from cxrlab.models.registry import get_spec, model_names
from cxrlab.models.summary import summarize


def static_columns(name: str) -> dict:
    """Parameters (4-class default head) and GMACs at the model's input size, on the meta device."""
    s = summarize(ModelConfig(name=name), 4)
    return {
        "model": name,
        "params": s.total,
        "gmacs": float(f"{(s.macs or 0) / 1e9:.3g}"),
        "size": s.input_shape[-1],
    }


def table(out: Path, models: list[str], steps: int, warmup: int, batch: int, bf16_max_gmacs: float) -> str:
    """Measure model by model, rewriting DIR/zoo_table.md/.json after each one; models already in
    zoo_table.json are kept (so an interrupted table resumes). bf16 is measured only for models of at
    most ``bf16_max_gmacs``: emulated bf16 on a CPU without native support takes 2-3x the fp32 time,
    which for VGG means more than 10 minutes per case."""
    from cxrlab.experiments.bench import run_bench

    out.mkdir(parents=True, exist_ok=True)
    done = out / "zoo_table.json"
    rows = {r["model"]: r for r in json.loads(done.read_text())} if done.is_file() else {}
    skipped: list[str] = []
    for m in models:
        row = rows.get(m) or static_columns(m)
        wanted = ["fp32"] + (["bf16"] if row["gmacs"] <= bf16_max_gmacs else [])
        precisions = [p for p in wanted if f"train_{p}" not in row]  # resume: only what is missing
        if not precisions:
            continue
        report = run_bench(
            models=[m],
            devices=["cpu"],
            precisions=precisions,
            batch_size=batch,
            steps=steps,
            warmup=warmup,
            out=out / "cases" / m.replace("/", "_"),
            progress=True,
        )
        for r in report["rows"]:
            row[f"train_{r['precision']}"] = r["train_img_s"]
            row[f"infer_{r['precision']}"] = r["infer_img_s"]
            row[f"steps_{r['precision']}"] = f"{warmup}+{steps}"  # warm-up + timed steps
        skipped += report["skipped"]
        rows[m] = row
        done.write_text(json.dumps(list(rows.values()), indent=2), encoding="utf-8")
    lines = [
        "| model | input | params (4 classes) | GMACs | train img/s fp32 | train img/s bf16 "
        "| infer img/s fp32 | infer img/s bf16 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows.values():
        cells = [r.get(k, "–") for k in ("train_fp32", "train_bf16", "infer_fp32", "infer_bf16")]
        lines.append(
            f"| {r['model']} | {r['size']} | {r['params']:,} | {r['gmacs']} | "
            + " | ".join(map(str, cells))
            + " |"
        )
    text = "\n".join(lines) + "\n"
    if skipped:
        text += "\nSkipped: " + "; ".join(skipped) + "\n"
    (out / "zoo_table.md").write_text(text, encoding="utf-8")
    return text


def runs(paths: list[Path]) -> str:
    lines = [
        "| run | model | pretrained | freeze | test accuracy [95% CI] | AUC | epochs | wall time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in paths:
        m = json.loads((p / "metrics.json").read_text())
        t = m["test"]
        lo, hi = t["accuracy_ci95"]
        c = RunConfig.load(p / "config.yaml").model
        auc = f"{t['auc']:.3f}" if t.get("auc") is not None else "–"
        epochs = len((p / "history.csv").read_text().strip().splitlines()) - 1
        lines.append(
            f"| {p.name} | {c.name} | {c.pretrained} | {c.freeze} | "
            f"{t['accuracy']:.3f} [{lo:.3f}–{hi:.3f}] (n={t['n']}) | {auc} | {epochs} | "
            f"{m['timing']['total_s']:.0f} s |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table")
    t.add_argument("--out", type=Path, default=Path("runs/bench_zoo/table"))
    zoo = [n for n in model_names() if get_spec(n).family in ("torchvision", "small")] + [
        "timm/mobilenetv1_100"
    ]
    t.add_argument("--models", default=",".join(zoo))
    t.add_argument("--steps", type=int, default=3)
    t.add_argument("--warmup", type=int, default=1)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--bf16-max-gmacs", type=float, default=2.0, help="measure bf16 only up to this size")
    r = sub.add_parser("runs")
    r.add_argument("paths", type=Path, nargs="+")
    args = ap.parse_args()
    if args.cmd == "table":
        sys.stdout.write(
            table(args.out, args.models.split(","), args.steps, args.warmup, args.batch, args.bf16_max_gmacs)
        )
    else:
        sys.stdout.write(runs(args.paths))


if __name__ == "__main__":
    main()
