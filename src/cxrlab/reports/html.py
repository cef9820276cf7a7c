"""Self-contained HTML pages (images embedded as base64): a run's report."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from cxrlab.config import RunConfig
from cxrlab.runs import atomic_write

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;
color:#1d2430;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #dde;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccd;padding:.3em .6em;text-align:right}
th{background:#f2f4f8}td:first-child,th:first-child{text-align:left}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.6em 1em;margin:.4em 0}
.muted{color:#667}.grid{display:flex;flex-wrap:wrap;gap:1em}.grid figure{margin:0}
img{max-width:100%;border:1px solid #eee}pre{background:#f6f8fa;padding:1em;overflow:auto;font-size:.85em}
"""


def esc(value: Any) -> str:
    """HTML-escape any value."""
    return html.escape(str(value))


def fmt(value: Any, digits: int = 3) -> str:
    """Numbers to fixed digits; missing values as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return esc(value)


def ci(values: list[float] | None) -> str:
    """A 95% CI as '[lo, hi]'."""
    if not values or values[0] is None:
        return ""
    return f"[{values[0]:.3f}, {values[1]:.3f}]"


def img(path: Path, alt: str) -> str:
    """An <img> with the PNG embedded."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{data}">'
        f'<figcaption class="muted">{esc(alt)}'
        f"</figcaption></figure>"
    )


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A plain HTML table."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, body: str) -> str:
    """A full HTML document."""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>'
        f"<body>{body}</body></html>"
    )


def warnings_block(warnings: list[str]) -> str:
    """Audit warnings, shown first."""
    if not warnings:
        return ""
    items = "".join(f'<div class="warn">⚠ {esc(w)}</div>' for w in warnings)
    return f"<h2>Data warnings</h2>{items}"


def metrics_section(test: dict[str, Any], classes: list[str]) -> str:
    """Headline metrics with CIs, the operating point and the per-class table."""
    rows = [
        ["accuracy", fmt(test["accuracy"]), ci(test.get("accuracy_ci95"))],
        ["balanced accuracy", fmt(test["balanced_accuracy"]), ci(test.get("balanced_accuracy_ci95"))],
        [
            "ROC AUC" + (" (macro, one-vs-rest)" if len(classes) > 2 else ""),
            fmt(test["auc"]),
            ci(test.get("auc_ci95")),
        ],
        ["loss (cross-entropy)", fmt(test["loss"]), ""],
        ["expected calibration error", fmt(test["ece"]), ""],
    ]
    out = f"<h2>Test metrics (n = {test['n']})</h2>"
    out += table(["metric", "value", "95% CI (bootstrap)"], rows)
    op = test.get("operating_point")
    if op:
        out += (
            f"<p>Operating point for <b>{esc(op['positive_class'])}</b>: threshold {fmt(op['threshold'])} "
            f"({esc(op['method'])}) → sensitivity {fmt(op['sensitivity'])} {ci(op['sensitivity_ci95'])}, "
            f"specificity {fmt(op['specificity'])} {ci(op['specificity_ci95'])}, "
            f"accuracy {fmt(op['accuracy'])} {ci(op['accuracy_ci95'])}.</p>"
        )
    per = [
        [
            esc(name),
            fmt(m["precision"]),
            fmt(m["sensitivity"]) + " " + ci(m.get("sensitivity_ci95")),
            fmt(m["specificity"]) + " " + ci(m.get("specificity_ci95")),
            fmt(m["f1"]),
            fmt(m["auc"]),
            m["support"],
        ]
        for name, m in test["per_class"].items()
    ]
    out += table(
        ["class", "precision", "sensitivity (recall)", "specificity", "F1", "AUC (one-vs-rest)", "n"], per
    )
    return out


def data_section(data: dict[str, Any], classes: list[str]) -> str:
    """Counts per split and class, split provenance, skipped files."""
    counts = data["counts"]
    rows = [[esc(c)] + [counts[s].get(c, 0) for s in ("train", "val", "test")] for c in classes]
    rows.append(["<b>total</b>"] + [sum(counts[s].values()) for s in ("train", "val", "test")])
    out = (
        f"<h2>Data</h2><p>Source <code>{esc(data['source'])}</code> ({esc(data['layout'])} layout), "
        f"images resized to {data['image_size']}×{data['image_size']}.</p>"
    )
    out += table(["class", "train", "val", "test"], rows)
    synth = {k: v for k, v in data.get("synthetic_train", {}).items() if v}
    if synth:
        real = data.get("real_train", {})
        out += (
            "<p>Training images per class, real + synthetic (train above counts both; synthetic images "
            "are never in val or test): "
            + ", ".join(f"{esc(k)} {real.get(k, '?')} + {synth.get(k, 0)}" for k in classes)
            + "</p>"
        )
    for split, how in data.get("split_origin", {}).items():
        out += f"<p class='muted'>{esc(split)} split: {esc(how)}</p>"
    skipped = data.get("skipped", [])
    if skipped:
        out += (
            f"<p><b>{len(skipped)} unreadable file(s) skipped:</b></p><ul>"
            + "".join(f"<li><code>{esc(s['path'])}</code>: {esc(s['reason'])}</li>" for s in skipped[:50])
            + "</ul>"
        )
    if data.get("ignored_files"):
        out += f"<p class='muted'>{data['ignored_files']} non-image file(s) ignored.</p>"
    return out


def write_run_report(run: Path, cfg: RunConfig, metrics: dict[str, Any]) -> Path:
    """RUN/report.html: config, data, metrics with CIs and every plot, in one file."""
    classes = metrics["classes"]
    timing = metrics["timing"]
    params = metrics["params"]
    plots = {k: run / v for k, v in metrics.get("plots", {}).items()}
    body = f"<h1>{esc(metrics['task'])} — {esc(metrics['model'])}</h1>"
    body += (
        f"<p class='muted'>Run <code>{esc(run)}</code> · {params['total']:,} parameters "
        f"({params['trainable']:,} trainable) · {fmt(timing['total_s'], 1)} s in all "
        f"({'frozen-feature fast path' if metrics.get('fast_path') else 'full training'}, "
        f"device {esc(metrics['device'])})</p>"
    )
    body += warnings_block(metrics.get("audit", {}).get("warnings", []))
    body += metrics_section(metrics["test"], classes)
    figures = [
        ("curves", "training curves (loss and accuracy, train vs validation)"),
        ("confusion", "confusion matrix (test)"),
        ("roc", "ROC curves (test)"),
        ("tsne", "t-SNE of penultimate-layer features (test)"),
        ("reliability", "reliability diagram (test)"),
        ("samples", "training images as the model sees them"),
        ("synthetic", "synthetic (--extra-train) training images per class, as the model sees them"),
    ]
    body += (
        "<h2>Plots</h2><div class='grid'>"
        + "".join(img(plots[k], alt) for k, alt in figures if k in plots and plots[k].is_file())
        + "</div>"
        + "".join(f"<p class='muted'>{esc(note)}</p>" for note in metrics.get("plot_notes", {}).values())
    )
    body += data_section(metrics["data"], classes)
    trows = [[esc(k), fmt(v, 3)] for k, v in timing.items()]
    body += "<h2>Timing</h2>" + table(["step", "value"], trows)
    body += (
        "<h2>Configuration</h2><p>Repeat with <code>cxr train --config config.yaml --out OTHER</code>.</p>"
    )
    body += f"<pre>{esc(cfg.to_yaml())}</pre>"
    env = metrics.get("environment", {})
    body += "<h2>Environment</h2>" + table(["", ""], [[esc(k), esc(v)] for k, v in env.items()])
    path = run / "report.html"
    atomic_write(path, page(f"cxrlab report — {metrics['task']}", body))
    return path


def write_eval_report(folder: Path, result: dict[str, Any]) -> Path:
    """FOLDER/report.html for `cxr evaluate`: metrics with CIs, plots and the data evaluated."""
    classes = result["classes"]
    plots = {k: folder / v for k, v in result.get("plots", {}).items()}
    body = f"<h1>Evaluation — {esc(result['model'])}</h1>"
    source = esc(result["data"]["source"])
    body += f"<p class='muted'>Run <code>{esc(result['run'])}</code> on <code>{source}</code></p>"
    body += metrics_section(result["test"], classes)
    body += (
        "<h2>Plots</h2><div class='grid'>"
        + "".join(img(p, k) for k, p in plots.items() if p.is_file())
        + "</div>"
    )
    body += data_section(result["data"], classes)
    path = folder / "report.html"
    atomic_write(path, page(f"cxrlab evaluation — {result['model']}", body))
    return path
