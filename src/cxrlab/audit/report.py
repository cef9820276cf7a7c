"""``audit.json`` and a self-contained ``audit.html`` (tables and plots) for an audit result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxrlab.audit.properties import CATEGORICAL, NUMERIC
from cxrlab.reports.html import ci, esc, fmt, img, page, table, warnings_block
from cxrlab.runs import atomic_write, check_writable, write_json

MAX_ROWS = 200


def write_audit(result: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """Write ``out/audit.json``, ``out/audit.html`` and ``out/plots/*.png``; return the two paths."""
    out = Path(out)
    check_writable(out)
    plots = property_plot(result, out / "plots" / "properties.png")
    write_json(out / "audit.json", result)
    html = out / "audit.html"
    atomic_write(html, page(f"cxrlab audit — {result['source']}", _body(result, plots)))
    return out / "audit.json", html


def property_plot(result: dict[str, Any], path: Path) -> Path | None:
    """Per-class box plots of numeric properties, stacked bars of categorical ones, baselines vs chance."""
    props = result.get("properties") or {}
    if not props:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from cxrlab.evaluation.plots import _save

    classes = list(props)
    fig, axes = plt.subplots(2, 4, figsize=(15, 7))
    for ax, key in zip(axes[0], NUMERIC, strict=True):
        stats = [
            {
                "med": s["median"],
                "q1": s["p25"],
                "q3": s["p75"],
                "whislo": s["p5"],
                "whishi": s["p95"],
                "label": c,
                "fliers": [],
            }
            for c in classes
            if (s := props[c].get(key))
        ]
        if stats:
            ax.bxp(stats, showfliers=False)
            lo, hi = min(s["whislo"] for s in stats), max(s["whishi"] for s in stats)
            if lo > 0 and hi / lo > 20:
                ax.set_yscale("log")
        ax.set_title(f"{key.replace('_', ' ')} (box 25–75%, whiskers 5–95%)", fontsize=9)
        ax.tick_params(axis="x", rotation=30, labelsize=8)
    for ax, key in zip(axes[1][:3], CATEGORICAL, strict=True):
        levels = sorted({lvl for c in classes for lvl in props[c].get(key, {})})
        bottom = np.zeros(len(classes))
        for level in levels:
            share = np.array([props[c][key].get(level, 0) / max(props[c]["n"], 1) for c in classes])
            ax.bar(classes, share, bottom=bottom, label=str(level))
            bottom += share
        ax.set_title(f"{key.replace('_', ' ')} (share of each class)", fontsize=9)
        ax.legend(fontsize=7)
        ax.tick_params(axis="x", rotation=30, labelsize=8)
    ax = axes[1][3]
    rows = [(n, result[k]) for n, k in (("metadata", "metadata_baseline"), ("image stats", "image_baseline"))]
    rows = [(n, r) for n, r in rows if "balanced_accuracy" in r]
    if rows:
        names = [n for n, _ in rows]
        ax.bar(names, [r["balanced_accuracy"] for _, r in rows], color="#d9822b")
        ax.axhline(rows[0][1]["chance_balanced"], color="k", ls="--", lw=1, label="chance")
        ax.set_ylim(0, 1)
        ax.set_title("baselines: balanced accuracy (cross-validated)", fontsize=9)
        ax.legend(fontsize=7)
    else:
        ax.axis("off")
    return _save(fig, path)


def _body(r: dict[str, Any], plot: Path | None) -> str:
    classes = r["classes"]
    body = f"<h1>Data audit — {esc(r['source'])}</h1>"
    body += (
        f"<p class='muted'>{esc(r['layout'])} layout · classes {esc(', '.join(classes))} · "
        f"{fmt(r.get('seconds'), 1)} s</p>"
    )
    body += warnings_block(r["warnings"]) or "<h2>Data warnings</h2><p>None.</p>"
    counts = r["counts"]
    rows = [[esc(c)] + [counts[s][c] for s in ("train", "val", "test")] for c in classes]
    body += "<h2>Images per split and class</h2>" + table(["class", "train", "val", "test"], rows)
    for split, how in r.get("split_origin", {}).items():
        body += f"<p class='muted'>{esc(split)} split: {esc(how)}</p>"
    body += _baselines(r)
    body += _properties(r, plot)
    body += _duplicates(r["duplicates"])
    body += _patients(r["patients"])
    bad = r["unreadable"] + r.get("non_images", [])
    body += f"<h2>Unreadable and non-image files ({len(bad)})</h2>"
    body += table(
        ["file", "reason"], [[f"<code>{esc(b['path'])}</code>", esc(b["reason"])] for b in bad[:MAX_ROWS]]
    )
    return body


def _baselines(r: dict[str, Any]) -> str:
    out = "<h2>Shortcut baselines (no CNN)</h2>"
    rows = []
    for name, key in (
        ("metadata only (never sees pixels)", "metadata_baseline"),
        ("image statistics (8x8 thumbnail + histogram)", "image_baseline"),
    ):
        b = r[key]
        if "accuracy" not in b:
            rows.append([esc(name), esc(b.get("skipped", "")), "", "", "", ""])
            continue
        tt = b.get("train_to_test", {})
        rows.append(
            [
                esc(name),
                f"{fmt(b['accuracy'])} {ci(b.get('accuracy_ci95'))}",
                f"{fmt(b['balanced_accuracy'])} {ci(b.get('balanced_accuracy_ci95'))}",
                f"{fmt(b['chance'])} / {fmt(b['chance_balanced'])}",
                f"{b['p_value']:.1e}",
                f"{fmt(tt.get('accuracy'))} (n={tt.get('n', '—')})" if tt else "—",
            ]
        )
    out += table(
        [
            "baseline",
            "accuracy (CV)",
            "balanced accuracy (CV)",
            "chance (acc. / bal.)",
            "p vs chance",
            "train→test accuracy",
        ],
        rows,
    )
    out += (
        "<p class='muted'>Patient-grouped, stratified k-fold cross-validation over all images; chance is the "
        "majority-class share (accuracy) and 1/k (balanced accuracy); 95% bootstrap intervals.</p>"
    )
    signal = r["metadata_baseline"].get("signal")
    if signal:
        out += "<h3>Which properties carry the signal (one property at a time, balanced accuracy)</h3>"
        out += table(
            ["property", "balanced accuracy"],
            [
                [
                    esc(s["property"]),
                    fmt(s["balanced_accuracy"])
                    if s["balanced_accuracy"] is not None
                    else esc(s.get("note", "")),
                ]
                for s in signal
            ],
        )
    return out


def _properties(r: dict[str, Any], plot: Path | None) -> str:
    props = r.get("properties") or {}
    if not props:
        return ""
    out = "<h2>Acquisition properties per class (file headers only)</h2>"
    header = (
        ["class", "n"]
        + [f"{k.replace('_', ' ')} median [5–95%]" for k in NUMERIC]
        + [k.replace("_", " ") for k in CATEGORICAL]
    )
    rows = []
    for c, p in props.items():
        row: list[Any] = [esc(c), p["n"]]
        for k in NUMERIC:
            s = p.get(k)
            row.append(f"{s['median']:.4g} [{s['p5']:.4g}–{s['p95']:.4g}]" if s else "—")
        for k in CATEGORICAL:
            row.append(esc(", ".join(f"{lvl}: {n}" for lvl, n in p.get(k, {}).items())))
        rows.append(row)
    out += table(header, rows)
    if plot is not None and plot.is_file():
        out += img(plot, "acquisition properties by class, and the shortcut baselines")
    return out


def _pairs(pairs: list[dict[str, Any]]) -> str:
    rows = [
        [
            esc(p["kind"]),
            p["distance"],
            f"<code>{esc(p['a'])}</code>",
            esc(f"{p['a_split']}/{p['a_class']}"),
            f"<code>{esc(p['b'])}</code>",
            esc(f"{p['b_split']}/{p['b_class']}"),
        ]
        for p in pairs[:MAX_ROWS]
    ]
    more = (
        f"<p class='muted'>… and {len(pairs) - MAX_ROWS} more in audit.json.</p>"
        if len(pairs) > MAX_ROWS
        else ""
    )
    return table(["kind", "distance", "image A", "split/class", "image B", "split/class"], rows) + more


def _duplicates(d: dict[str, Any]) -> str:
    out = "<h2>Duplicates</h2>"
    out += f"<p class='muted'>Exact: {esc(d['method']['exact'])}. Near: {esc(d['method']['near'])}.</p>"
    out += table(["", "count"], [[esc(k.replace("_", " ")), v] for k, v in d["summary"].items()])
    out += f"<h3>Across splits — leakage ({len(d['cross_split'])} pairs)</h3>" + _pairs(d["cross_split"])
    out += f"<h3>Within a split ({len(d['within_split'])} pairs)</h3>" + _pairs(d["within_split"])
    return out


def _patients(p: dict[str, Any]) -> str:
    out = "<h2>Patients</h2>"
    out += (
        f"<p>Patient ids from {esc(p['source'])}: {p['images_with_id']} images with an id, "
        f"{p['images_without_id']} without; {p['patients']} patients "
        f"({esc(', '.join(f'{k} {v}' for k, v in p['patients_per_split'].items()))}).</p>"
    )
    rows = [
        [esc(x["patient"]), esc(", ".join(f"{k}: {v}" for k, v in x["images"].items()))]
        for x in p["cross_split"][:MAX_ROWS]
    ]
    out += f"<h3>Patients in more than one split ({p['cross_split_count']})</h3>"
    out += table(["patient", "images per split"], rows)
    return out
