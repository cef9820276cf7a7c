"""Rendering `cxr compare`: one template context (tables as header + cells, notes, footnotes, figures) from
which both compare.html (``pages/templates/compare.html``) and compare.md (``experiments/templates/
compare.md``, Jinja without HTML escaping) are rendered; and the comparison's plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from cxrlab import pages
from cxrlab.experiments.compare.loading import RunSummary
from cxrlab.experiments.compare.statistics import ALPHA, group_metrics
from cxrlab.metrics import Metric, metrics_for

MD_TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


def md_cell(v: Any) -> str:
    """A Markdown table cell: "—" for nothing, floats to 3 decimals (whole from 1000), pipes escaped."""
    if v is None or v == "":
        return "—"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v).replace("|", "\\|")


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    return str(_MD.get_template("table.md").module.table(header, rows))


def _md_environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(MD_TEMPLATES),
        autoescape=False,  # Markdown, not HTML  # noqa: S701
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["md"] = md_cell
    return env


_MD = _md_environment()


def _with_ci(value: Any, lo: Any, hi: Any) -> Any:
    """``0.887 [0.806, 0.952]``; the value alone without a CI; None (shown "—") without a value."""
    if not isinstance(value, int | float):
        return None
    if isinstance(lo, int | float) and isinstance(hi, int | float):
        return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"
    return float(value)


def table_metrics(rows: list[dict[str, Any]]) -> list[Metric]:
    """The registered single-label metrics that at least one run reports (the main table's columns)."""
    return [m for m in metrics_for("single") if any(r.get(f"test_{m.name}") is not None for r in rows)]


def _metric_cell(r: dict[str, Any], m: Metric, with_ci: bool = True) -> Any:
    value = r.get(f"test_{m.name}")
    if m.ci == "none" or not with_ci:
        return value
    return _with_ci(value, r.get(f"test_{m.name}_ci95_lo"), r.get(f"test_{m.name}_ci95_hi"))


def main_table(rows: list[dict[str, Any]], all_intervals: bool = True) -> tuple[list[str], list[list[Any]]]:
    """Header and cells of the human-readable comparison table: the runs' facts, then one column per
    registered metric (:data:`cxrlab.metrics.REGISTRY`, at each run's decision), then the device.

    ``all_intervals=False`` (the HTML pages, which must fit a 1280-px window): only the headline metric
    (the registry's first) carries its 95% CI; compare.md and compare.csv carry every one."""
    shown = table_metrics(rows)
    with_ci = [m.ci != "none" and (all_intervals or i == 0) for i, m in enumerate(shown)]
    header = [
        "test set", "run", "model", "params PyTorch (trainable)", "params Keras (trainable)", "s/epoch",
        "s/step", "total s",
        *(m.short + (" [95% CI]" if ci else "") for m, ci in zip(shown, with_ci, strict=True)),
        "device",
    ]  # fmt: skip
    cells = [
        [
            r["test_set"],
            r["run"],
            r["model"],
            _count(r["params_total"], r["params_trainable"]),
            _count(r["params_keras_total"], r["params_keras_trainable"]),
            _timed(r, "s_per_epoch"),
            _timed(r, "s_per_step"),
            r["total_s"],
            *(_metric_cell(r, m, ci) for m, ci in zip(shown, with_ci, strict=True)),
            r["device"],
        ]  # fmt: skip
        for r in rows
    ]
    return header, cells


#: Under the HTML comparison tables, which show the headline metric's interval only.
OTHER_INTERVALS = "95% CIs of the other metrics: compare.md and compare.csv (columns *_ci95_lo / *_ci95_hi)."


def column_legend(rows: list[dict[str, Any]]) -> str:
    """What the comparison table's abbreviated metric columns stand for (from the registry)."""
    short = [f"{m.short} = {m.label}" for m in table_metrics(rows) if m.short != m.label]
    return f"Columns: {'; '.join(short)}. {OTHER_INTERVALS}" if short else OTHER_INTERVALS


def group_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Header and cells of the seed groups' spread (mean ± std [min–max] per metric)."""
    names = [m for m in group_metrics() if any(f"{m}_mean" in r for r in rows)]
    header = ["group", "seeds", *(f"{m} mean ± std [min–max]" for m in names)]
    cells = [
        [r["group"], r["seeds"]]
        + [
            f"{r[f'{m}_mean']:.3f} ± {r[f'{m}_std']:.3f} [{r[f'{m}_min']:.3f}–{r[f'{m}_max']:.3f}]"
            if f"{m}_mean" in r
            else None
            for m in names
        ]
        for r in rows
    ]
    return header, cells


def group_test_table(tests: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Header and cells of the tests between seed groups."""
    header = ["groups", "metric", "mean A", "mean B", "difference", "p Welch", "shared seeds", "p paired",
              "verdict"]  # fmt: skip
    cells = [
        [f"{t['group_a']} vs {t['group_b']}", t["metric"], t["mean_a"], t["mean_b"],
         f"{t['difference']:+.4f}", t["p_welch"], t["shared_seeds"], t["p_paired"], t["verdict"]]
        for t in tests
    ]  # fmt: skip
    return header, cells


def auc_table(auc_pairs: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Header and cells of the multi-label paired AUC differences."""
    if not auc_pairs:
        return [], []
    header = ["runs", "finding", "n", "AUC A", "AUC B", "difference (95% CI)", "p (Holm)", "verdict"]
    cells = [
        [
            f"{r['run_a']} vs {r['run_b']}",
            r["finding"],
            r["n"],
            r.get("auc_a"),
            r.get("auc_b"),
            f"{r['difference']:+.3f} [{r['difference_ci95_lo']:+.3f}, {r['difference_ci95_hi']:+.3f}]"
            if "difference" in r
            else None,
            r.get("p_holm"),
            r["verdict"],
        ]
        for r in auc_pairs
    ]
    return header, cells


def context(
    summaries: list[RunSummary],
    rows: list[dict[str, Any]],
    pairs: list[dict[str, Any]],
    auc_pairs: list[dict[str, Any]],
    group_rows: list[dict[str, Any]],
    group_tests: list[dict[str, Any]],
    plots: dict[str, Path],
) -> dict[str, Any]:
    """The one template context of compare.html and compare.md."""
    header, cells = main_table(rows)
    html_header, html_cells = main_table(rows, all_intervals=False)
    pair_header, pair_cells = pair_table(pairs)
    group_header, group_cells = group_table(group_rows)
    group_test_header, group_test_cells = group_test_table(group_tests)
    auc_header, auc_cells = auc_table(auc_pairs)
    return {
        "notes": notes(summaries),
        "header": header,
        "cells": cells,
        "html_header": html_header,  # the same table, only the headline's CI (fits a 1280-px page)
        "html_cells": html_cells,
        "other_intervals": column_legend(rows),
        "footnotes": footnotes(rows),
        "pair_header": pair_header,
        "pair_cells": pair_cells,
        "alpha": ALPHA,
        "groups": bool(group_rows),
        "group_header": group_header,
        "group_cells": group_cells,
        "group_test_header": group_test_header,
        "group_test_cells": group_test_cells,
        "auc_header": auc_header,  # multi-label: per-finding and macro AUC, paired bootstrap, Holm
        "auc_cells": auc_cells,
        "auc_tested": sum("p_bootstrap" in r for r in auc_pairs),
        "figures": [{"path": p, "caption": k.replace("_", " ")} for k, p in plots.items()],
        "plot_files": {k: p.name for k, p in plots.items()},
    }


def render_markdown(ctx: dict[str, Any]) -> str:
    """compare.md from the template context."""
    return _MD.get_template("compare.md").render(**ctx)


def write_html(path: Path, ctx: dict[str, Any]) -> Path:
    """compare.html from the template context."""
    return pages.write_page(path, "compare.html", **ctx)


FAST_MARK = "†"


def _count(total: Any, trainable: Any) -> str:
    """``total (trainable)`` with thousands separators, or "—" when unknown."""
    if not isinstance(total, int):
        return "—"
    return f"{total:,} ({trainable:,})" if isinstance(trainable, int) else f"{total:,}"


def _timed(row: dict[str, Any], key: str) -> Any:
    """A seconds-per-epoch/step cell, marked † when only the head trained (fast path)."""
    value = row[key]
    if row["epoch_timing"] != "head_only" or not isinstance(value, int | float):
        return value
    return f"{value:.3f} {FAST_MARK}"


def footnotes(rows: list[dict[str, Any]]) -> list[str]:
    """What the table's marks and columns mean: fast-path timings, the two parameter conventions."""
    out = []
    fast = [r for r in rows if r["epoch_timing"] == "head_only"]
    if fast:
        seconds = [r["features_s"] if isinstance(r["features_s"], int | float) else None for r in fast]
        when, each = "", ""
        if len(fast) == 1 and seconds[0] is not None:
            when = f" in {seconds[0]:.1f} s"
        elif len(fast) > 1:
            each = "; " + ", ".join(
                f"{r['run']} in {t:.1f} s" if t is not None else f"{r['run']}: time not recorded"
                for r, t in zip(fast, seconds, strict=True)
            )
        out.append(
            f"{FAST_MARK} head only: features computed once{when} (fast path: frozen backbone, features "
            f"cached, only the head trains{each}); not comparable with full-network epochs."
        )
    out.append(
        "Parameters: PyTorch counts parameters only; Keras also counts batch norm's moving mean/variance "
        "as non-trainable weights, and Keras' InceptionV3 has no batch-norm γ. An auxiliary classifier "
        "(InceptionV3, training only) is in neither total."
    )
    rebuilt = [r["run"] for r in rows if r["params_source"] == "rebuilt from config.yaml"]
    if rebuilt:
        out.append(
            f"Parameter counts of {', '.join(rebuilt)} were rebuilt from the run's config.yaml (its "
            "metrics.json predates Keras-convention counts)."
        )
    missing = [r["run"] for r in rows if r["params_keras_total"] is None]
    if missing:
        out.append(
            f"No Keras-convention count for {', '.join(missing)}: its config.yaml could not be rebuilt."
        )
    out.append(
        "Macro P/R/F1: unweighted mean over the classes; weighted: mean weighted by each class's test "
        "images (test split, at each run's decision: a binary run's saved operating threshold)."
    )
    # multi-label runs have no accuracy or P/R/F1 (their AUCs are in pairwise_auc.csv)
    missing = [r["run"] for r in rows if r["test_f1_macro"] is None and r["test_accuracy"] is not None]
    if missing:
        out.append(
            f"No macro/weighted precision, recall or F1 for {', '.join(missing)}: an older run without "
            "predictions.csv; re-run `cxr evaluate` on it."
        )
    return out


def pair_table(pairs: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Header and cells of the pairwise-significance table."""
    header = [
        "test set",
        "A",
        "B",
        "n",
        "acc A − acc B [95% CI]",
        "only A right",
        "only B right",
        "McNemar p",
        "Holm p",
        "verdict",
    ]
    cells = [
        [
            p["test_set"],
            p["run_a"],
            p["run_b"],
            p["n"] if not p.get("patients") else f"{p['n']} ({p['patients']} patients)",
            f"{p['difference']:+.3f} [{p['difference_ci95_lo']:+.3f}, {p['difference_ci95_hi']:+.3f}]",
            p["a_only_correct"],
            p["b_only_correct"],
            p["p_mcnemar"],
            p["p_holm"],
            p["verdict"],
        ]
        for p in pairs
    ]
    return header, cells


def notes(summaries: list[RunSummary]) -> list[str]:
    """Plain-language caveats: separate test sets, runs that cannot be paired."""
    out = []
    sets = sorted({s.test_set for s in summaries})
    if len(sets) > 1:
        desc = "; ".join(f"{t}: " + ", ".join(s.name for s in summaries if s.test_set == t) for t in sets)
        out.append(
            f"These runs were evaluated on {len(sets)} different test sets ({desc}). Numbers from "
            "different test sets are not comparable; significance tests are only run within a set."
        )
    for s in summaries:
        if not s.predictions:
            out.append(
                f"{s.name} has no predictions.csv (trained by an older cxrlab): its test set is matched by "
                "dataset and size only and it takes part in no paired test; re-run `cxr evaluate` on it."
            )
    return out


# ---------------------------------------------------------------------------------------------- plots


def plot_val_curves(summaries: list[RunSummary], path: Path) -> Path | None:
    """Validation loss and accuracy per epoch, one line per run."""
    import matplotlib.ticker

    from cxrlab.figures import plt, save_figure

    if not any(s.history for s in summaries):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for s in summaries:
        epochs = [h.get("epoch") for h in s.history]
        for ax, key in zip(axes, ("val_loss", "val_acc"), strict=True):
            values = [np.nan if h.get(key) is None else h[key] for h in s.history]
            if not all(np.isnan(values)):
                ax.plot(epochs, values, "-o", ms=3, label=f"{s.name} ({s.test_set})")
    for ax, label in zip(axes, ("validation loss", "validation accuracy"), strict=True):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="best")
    fig.suptitle("validation curves")
    return save_figure(fig, path)


def plot_accuracy_vs_time(rows: list[dict[str, Any]], path: Path) -> Path:
    """Test accuracy with its 95% CI against total run time (log scale)."""
    import matplotlib.ticker

    from cxrlab.figures import plt, save_figure

    fig, ax = plt.subplots(figsize=(7, 4.6))
    for r in rows:
        acc, t = r["test_accuracy"], r["total_s"]
        if not isinstance(acc, float) or not t:
            continue
        lo, hi = r["test_accuracy_ci95_lo"], r["test_accuracy_ci95_hi"]
        yerr = [[acc - lo], [hi - acc]] if isinstance(lo, float) and isinstance(hi, float) else None
        marker = "osD^v<>p*h"[(ord(r["test_set"][-1]) - ord("A")) % 10]
        ax.errorbar([t], [acc], yerr=yerr, fmt=marker, capsize=4, label=f"{r['run']} ({r['test_set']})")
    ax.set_xscale("log")
    seconds = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(seconds)
    ax.xaxis.set_minor_formatter(seconds)
    ax.set_xlabel("total run time (s, log scale)")
    ax.set_ylabel("test accuracy (95% CI)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    ax.set_title("accuracy against time")
    return save_figure(fig, path)
