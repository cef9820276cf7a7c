"""``cxr report RUN... --out DIR``: one self-contained HTML document comparing runs.

Laid out like the reports it replaces: task, data and audit warnings, architectures with layer
summaries, hyperparameters, the comparison table with CIs and paired significance tests,
accuracy against time, curves, confusion matrices, ROC, t-SNE, timing and environment.
Every image is embedded (base64), so the file can be mailed or attached to a paper.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxrlab.config import RunConfig
from cxrlab.experiments.compare import (
    COMPARE_OUTPUTS,
    RunSummary,
    check_out_folder,
    compare_summaries,
    load_summaries,
    main_table,
    pair_table,
)
from cxrlab.reports.html import data_section, esc, fmt, img, page, table, warnings_block
from cxrlab.runs import atomic_write

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
            rows.append([f"{part}.{name}", esc(child.__class__.__name__), f"{total:,}", f"{trainable:,}"])
    return rows


def architectures_section(summaries: list[RunSummary], cfgs: list[RunConfig]) -> str:
    """One row per run (model, weights, what trains, head) and a layer summary per architecture."""
    from cxrlab.models import get_spec

    rows, details, seen = [], "", set()
    for s, cfg in zip(summaries, cfgs, strict=True):
        m = s.metrics
        try:
            description = get_spec(cfg.model.name).description
        except Exception:  # noqa: BLE001 - a model no longer registered still gets its row
            description = ""
        head = cfg.model.head
        rows.append(
            [
                esc(s.name),
                esc(cfg.model.name),
                esc(description),
                "ImageNet" if cfg.model.pretrained else "random init",
                esc(cfg.model.freeze),
                esc(f"{head.pooling} pool, hidden {head.hidden}, dropout {head.dropout}"),
                f"{cfg.data.image_size}",
                f"{m['params']['total']:,}",
                f"{m['params']['trainable']:,}",
            ]
        )
        ident = (cfg.model.name, cfg.model.freeze, str(head), cfg.data.image_size, len(s.classes))
        if ident in seen:
            continue
        seen.add(ident)
        try:
            layers = layer_summary(cfg, len(s.classes), cfg.data.image_size)
        except Exception as exc:  # noqa: BLE001 - the report must still render
            details += f"<p class='muted'>{esc(cfg.model.name)}: no layer summary ({esc(exc)})</p>"
            continue
        details += (
            f"<details><summary>{esc(cfg.model.name)} (freeze {esc(cfg.model.freeze)}, "
            f"{cfg.data.image_size}px): {len(layers)} blocks</summary>"
            + table(["block", "type", "parameters", "trainable"], layers)
            + "</details>"
        )
    header = ["run", "model", "description", "weights", "frozen", "head", "input", "params", "trainable"]
    return "<h2>2. Architectures</h2>" + table(header, rows) + details


def hyperparameters_section(summaries: list[RunSummary], cfgs: list[RunConfig]) -> str:
    """Config keys that differ between runs first, then the shared ones."""
    flats = [_flatten(c.model_dump(mode="json")) for c in cfgs]
    keys = [k for k in flats[0] if not k.startswith(("data.augmentation.", "data.label_map"))]
    differ = [k for k in keys if len({repr(f.get(k)) for f in flats}) > 1]
    same = [k for k in keys if k not in differ]
    names = [esc(s.name) for s in summaries]
    out = "<h2>3. Hyperparameters</h2>"
    if differ:
        out += "<p>Settings that differ between the runs:</p>" + table(
            ["key", *names], [[esc(k), *[esc(f.get(k)) for f in flats]] for k in differ]
        )
    out += (
        "<details><summary>Settings shared by all runs</summary>"
        + table(["key", "value"], [[esc(k), esc(flats[0].get(k))] for k in same])
        + "</details>"
    )
    return out


def data_and_task_section(summaries: list[RunSummary]) -> str:
    """Each distinct dataset once, with the audit warnings of the runs trained on it."""
    out = "<h2>1. Task and data</h2>"
    shown: dict[str, list[str]] = {}
    for s in summaries:
        key = f"{s.metrics.get('data', {}).get('source')}|{','.join(s.classes)}|{s.test_set}"
        shown.setdefault(key, []).append(s.name)
    for names in shown.values():
        s = next(x for x in summaries if x.name == names[0])
        m = s.metrics
        out += f"<h3>{esc(m.get('task'))} — test set {esc(s.test_set)} (runs: {esc(', '.join(names))})</h3>"
        warnings = []
        for name in names:
            run = next(x for x in summaries if x.name == name)
            for w in run.metrics.get("audit", {}).get("warnings", []):
                if w not in warnings:
                    warnings.append(w)
        out += warnings_block(warnings).replace("<h2>Data warnings</h2>", "<h4>Data warnings</h4>")
        if "data" in m and "counts" in m["data"]:
            out += data_section(m["data"], s.classes).replace("<h2>Data</h2>", "")
    return out


def figures(summaries: list[RunSummary], key: str, caption: str) -> str:
    """One figure per run that has ``plots/<key>.png``."""
    items = []
    for s in summaries:
        rel = s.metrics.get("plots", {}).get(key)
        path = s.path / rel if rel else s.path / "plots" / f"{key}.png"
        if path.is_file():
            items.append(img(path, f"{s.name}: {caption}"))
    if not items:
        return f"<p class='muted'>No run has a {esc(caption)} plot.</p>"
    return "<div class='grid'>" + "".join(items) + "</div>"


def timing_section(summaries: list[RunSummary]) -> str:
    """Timing of every stage per run."""
    rows = []
    for s in summaries:
        t = s.metrics.get("timing", {})
        rows.append([esc(s.name), *[fmt(t.get(k), 3) for k in TIMING_KEYS], esc(s.metrics.get("device"))])
    return (
        "<h2>8. Timing</h2>"
        + table(["run", *TIMING_KEYS, "device"], rows)
        + (
            "<p class='muted'>Seconds on the machine each run was trained on; decode_s is image decoding "
            "(0 when cached), features_s the frozen-backbone pass of the fast path.</p>"
        )
    )


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
    body = f"<h1>{esc(heading)}</h1><p class='muted'>Runs: {esc(models)}.</p>"
    body += "".join(f'<div class="warn">{esc(n)}</div>' for n in compared["notes"])
    body += data_and_task_section(summaries)
    body += architectures_section(summaries, cfgs)
    body += hyperparameters_section(summaries, cfgs)

    header, cells = main_table(compared["rows"])
    body += "<h2>4. Results on the test set</h2>" + table(
        header, [[esc(c) if not isinstance(c, float) else f"{c:.3f}" for c in r] for r in cells]
    )
    pairs = compared["pairs"]
    if pairs:
        pheader, pcells = pair_table(pairs)
        body += "<h3>Is the difference real? Paired tests on the same test images</h3>" + table(
            pheader, [[esc(c) for c in r] for r in pcells]
        )
        body += (
            "<p class='muted'>Exact McNemar test on the images exactly one of the two runs classified "
            f"correctly; p-values Holm-corrected over {len(pairs)} pair(s), α = 0.05. The CI of the "
            "accuracy difference is a paired bootstrap over test images.</p>"
        )
    else:
        body += "<p>No two runs share a test set with saved predictions, so no paired test is possible.</p>"
    plots = compared["plots"]
    body += "<div class='grid'>" + img(plots["accuracy_vs_time"], "test accuracy (95% CI) against run time")
    body += "</div>"
    body += "<h2>5. Training curves</h2>"
    if "val_curves" in plots:
        body += img(plots["val_curves"], "validation loss and accuracy, all runs")
    body += figures(summaries, "curves", "training curves")
    body += "<h2>6. Confusion matrices and ROC (test)</h2>"
    body += figures(summaries, "confusion", "confusion matrix")
    body += figures(summaries, "roc", "ROC")
    body += "<h2>7. t-SNE of penultimate features (test)</h2>" + figures(summaries, "tsne", "t-SNE")
    body += timing_section(summaries)
    env = summaries[0].metrics.get("environment", {})
    if env:
        body += "<h2>9. Environment</h2>" + table(["", ""], [[esc(k), esc(v)] for k, v in env.items()])
    body += (
        "<p class='muted'>Reproduce a run with <code>cxr train --config RUN/config.yaml --out OTHER</code>; "
        "this report with <code>cxr report "
        + esc(" ".join(str(s.path) for s in summaries))
        + f" --out {esc(out)}</code>.</p>"
    )
    path = out / "report.html"
    atomic_write(path, page(heading, body))
    return path
