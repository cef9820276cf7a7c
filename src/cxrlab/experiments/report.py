"""`cxr report`: several runs in one self-contained HTML document for a paper (tables, curves, paired tests).

Laid out like the reports it replaces: task, data and audit warnings, architectures with layer
summaries, hyperparameters, the comparison table with CIs and paired significance tests,
accuracy against time, curves, confusion matrices, ROC, t-SNE, timing and environment.
Every image is embedded (base64), so the file can be mailed or attached to a paper.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxrlab import pages
from cxrlab.config import RunConfig
from cxrlab.experiments.compare import (
    COMPARE_OUTPUTS,
    RunSummary,
    compare_summaries,
    load_summaries,
    main_table,
    pair_table,
)
from cxrlab.experiments.compare.rendering import column_legend
from cxrlab.runs import check_out_folder

TIMING_KEYS = [
    "decode_s",
    "features_s",
    "train_s",
    "eval_s",
    "total_s",
    "epochs",
    "s_per_epoch",
    "s_per_step",
]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def layer_summary(cfg: RunConfig, num_classes: int, image_size: int | None) -> list[list[Any]]:
    """Top-level blocks of the backbone and the head with parameter counts (rebuilt from config,
    random weights: nothing is loaded)."""
    from cxrlab.models import build_model

    model = build_model(cfg.model.model_copy(update={"pretrained": False}), num_classes, image_size)
    rows = []
    for part in ("backbone", "head"):
        module = getattr(model, part)
        children = list(module.named_children()) or [(part, module)]
        for name, child in children:
            total = sum(p.numel() for p in child.parameters())
            trainable = sum(p.numel() for p in child.parameters() if p.requires_grad)
            rows.append([f"{part}.{name}", child.__class__.__name__, f"{total:,}", f"{trainable:,}"])
    return rows


def architectures(summaries: list[RunSummary], cfgs: list[RunConfig]) -> dict[str, Any]:
    """One row per run (model, weights, what trains, head) and a layer summary per architecture."""
    from cxrlab.models import get_spec

    rows, details, seen = [], [], set()
    for s, cfg in zip(summaries, cfgs, strict=True):
        m = s.metrics
        try:
            description = get_spec(cfg.model.name).description
        except Exception:  # noqa: BLE001 - a model no longer registered still gets its row
            description = ""
        head = cfg.model.head
        rows.append(
            [
                s.name,
                cfg.model.name,
                description,
                "ImageNet" if cfg.model.pretrained else "random init",
                str(cfg.model.freeze),
                f"{head.pooling} pool, hidden {head.hidden}, dropout {head.dropout}",
                f"{cfg.data.image_size}",
                f"{m['params']['total']:,}",
                f"{m['params']['trainable']:,}",
            ]
        )
        ident = (cfg.model.name, cfg.model.freeze, str(head), cfg.data.image_size, len(s.classes))
        if ident in seen:
            continue
        seen.add(ident)
        detail: dict[str, Any] = {
            "model": cfg.model.name,
            "freeze": str(cfg.model.freeze),
            "image_size": cfg.data.image_size,
            "layers": None,
            "error": None,
        }
        try:
            detail["layers"] = layer_summary(cfg, len(s.classes), cfg.data.image_size)
        except Exception as exc:  # noqa: BLE001 - the report must still render
            detail["error"] = str(exc)
        details.append(detail)
    return {"architectures": rows, "layer_details": details}


def hyperparameters(summaries: list[RunSummary], cfgs: list[RunConfig]) -> dict[str, Any]:
    """Config keys that differ between runs first, then the shared ones (values as text)."""
    flats = [_flatten(c.model_dump(mode="json")) for c in cfgs]
    keys = [k for k in flats[0] if not k.startswith(("data.augmentation.", "data.label_map"))]
    differ = [k for k in keys if len({repr(f.get(k)) for f in flats}) > 1]
    same = [k for k in keys if k not in differ]
    return {
        "run_names": [s.name for s in summaries],
        "differ": [[k, *[str(f.get(k)) for f in flats]] for k in differ],
        "same": [[k, str(flats[0].get(k))] for k in same],
    }


def datasets(summaries: list[RunSummary]) -> list[dict[str, Any]]:
    """Each distinct dataset once, with the audit warnings of the runs trained on it."""
    shown: dict[str, list[str]] = {}
    for s in summaries:
        key = f"{s.metrics.get('data', {}).get('source')}|{','.join(s.classes)}|{s.test_set}"
        shown.setdefault(key, []).append(s.name)
    groups = []
    for names in shown.values():
        s = next(x for x in summaries if x.name == names[0])
        m = s.metrics
        warnings: list[str] = []
        for name in names:
            run = next(x for x in summaries if x.name == name)
            for w in run.metrics.get("audit", {}).get("warnings", []):
                if w not in warnings:
                    warnings.append(w)
        has_data = "data" in m and "counts" in m["data"]
        groups.append(
            {
                "task": str(m.get("task")),
                "test_set": s.test_set,
                "names": names,
                "warnings": warnings,
                "data": m["data"] if has_data else None,
                "classes": s.classes,
            }
        )
    return groups


def figures(summaries: list[RunSummary], key: str, caption: str) -> dict[str, Any]:
    """One figure per run that has ``plots/<key>.png``."""
    items = []
    for s in summaries:
        rel = s.metrics.get("plots", {}).get(key)
        path = s.path / rel if rel else s.path / "plots" / f"{key}.png"
        if path.is_file():
            items.append({"path": path, "caption": f"{s.name}: {caption}"})
    return {"figures": items, "caption": caption}


def timing(summaries: list[RunSummary]) -> list[list[Any]]:
    """Timing of every stage per run."""
    return [
        [s.name, *[s.metrics.get("timing", {}).get(k) for k in TIMING_KEYS], str(s.metrics.get("device"))]
        for s in summaries
    ]


REPORT_OUTPUTS = ("report.html",)


def write_comparison_report(runs: list[str | Path], out: str | Path, title: str | None = None) -> Path:
    """Write ``out/report.html`` (plus compare.csv/.md/.html and plots); return the report's path."""
    out = Path(out)
    check_out_folder(out, COMPARE_OUTPUTS + REPORT_OUTPUTS)  # never into a run or a foreign folder
    summaries = load_summaries(runs)
    cfgs = [RunConfig.load(s.path / "config.yaml") for s in summaries]
    compared = compare_summaries(summaries, out, REPORT_OUTPUTS)
    tasks = sorted({str(s.metrics.get("task")) for s in summaries})
    heading = title or f"{' / '.join(tasks)}: {len(summaries)} runs compared"
    models = ", ".join(f"{s.name} ({s.metrics.get('model')})" for s in summaries)
    header, cells = main_table(compared["rows"], all_intervals=False)
    pheader, pcells = pair_table(compared["pairs"]) if compared["pairs"] else ([], [])
    plots = compared["plots"]
    path = out / "report.html"
    pages.write_page(
        path,
        "comparison.html",
        heading=heading,
        runs_line=models,
        notes=compared["notes"],
        datasets=datasets(summaries),
        **architectures(summaries, cfgs),
        **hyperparameters(summaries, cfgs),
        header=header,
        cells=cells,
        other_intervals=column_legend(compared["rows"]),
        footnotes=compared["footnotes"],
        pair_header=pheader,
        pair_cells=pcells,
        accuracy_vs_time=plots["accuracy_vs_time"],
        val_curves=plots.get("val_curves"),
        plots={
            "curves": figures(summaries, "curves", "training curves"),
            "confusion": figures(summaries, "confusion", "confusion matrix"),
            "roc": figures(summaries, "roc", "ROC"),
            "tsne": figures(summaries, "tsne", "t-SNE"),
        },
        timing_keys=TIMING_KEYS,
        timing=timing(summaries),
        environment=summaries[0].metrics.get("environment", {}),
        run_paths=[str(s.path) for s in summaries],
        out=str(out),
    )
    return path
