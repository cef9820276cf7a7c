"""``audit.json`` and a self-contained ``audit.html`` (tables and plots) for an audit result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxrlab import pages
from cxrlab.audit.properties import CATEGORICAL, DICOM_CATEGORICAL, NUMERIC
from cxrlab.runs import check_writable, write_json

MAX_ROWS = 200


def write_audit(result: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """Write ``out/audit.json``, ``out/audit.html`` and ``out/plots/*.png``; return the two paths."""
    out = Path(out)
    check_writable(out)
    plots = property_plot(result, out / "plots" / "properties.png")
    write_json(out / "audit.json", result)
    html = pages.write_page(out / "audit.html", "audit.html", **audit_context(result, plots))
    return out / "audit.json", html


def audit_context(r: dict[str, Any], plot: Path | None) -> dict[str, Any]:
    """What audit.html shows: the audit result plus the rows the template lays out."""
    counts = r["counts"]
    return {
        "r": r,
        "plot": plot,
        "max_rows": MAX_ROWS,
        "numeric": list(NUMERIC),
        "categorical": list(CATEGORICAL)
        + [k for k in DICOM_CATEGORICAL if any(k in v for v in (r.get("properties") or {}).values())],
        "rows_per_class": [[c] + [counts[s][c] for s in ("train", "val", "test")] for c in r["classes"]],
        "baselines": [
            ("metadata only (never sees pixels)", r["metadata_baseline"]),
            ("image statistics (8x8 thumbnail + histogram)", r["image_baseline"]),
        ],
        "duplicate_summary": [[k.replace("_", " "), v] for k, v in r["duplicates"]["summary"].items()],
        "bad": r["unreadable"] + r.get("non_images", []),
        "subgroup_tables": [  # the subgroup mix per split (cxrlab.audit.subgroups); absent in older audits
            {"name": a["name"], "source": a["source"], "header": [a["name"], *a["counts"]],
             "rows": [[lv, *[c.get(lv, 0) for c in a["counts"].values()]] for lv in a["levels"]]}
            for a in (r.get("subgroups") or {}).get("attributes", [])
        ],  # fmt: skip
    }


def property_plot(result: dict[str, Any], path: Path) -> Path | None:
    """Per-class box plots of numeric properties, stacked bars of categorical ones, baselines vs chance."""
    props = result.get("properties") or {}
    if not props:
        return None
    import numpy as np

    from cxrlab.figures import plt, save_figure

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
    return save_figure(fig, path)
