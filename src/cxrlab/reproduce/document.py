"""The reproduction document: each report's numbers beside cxrlab's, as Markdown and self-contained HTML."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cxrlab import pages
from cxrlab.reproduce.catalog import METRICS, Experiment, Report, Reported
from cxrlab.runs import atomic_write
from cxrlab.stats import to_number

SUMMARY_HEADER = [
    "experiment",
    "report: test accuracy",
    "cxrlab: test accuracy [95% CI]",
    "report: time (s)",
    "cxrlab: wall time (s)",
    "status",
]
ROW_HEADER = ["", "report", "where in the report", "cxrlab [95% CI]", "verdict"]


def _fmt(metric: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, tuple | list):
        return f"{_fmt(metric, value[0])}–{_fmt(metric, value[1])}"
    kind = METRICS[metric][2]
    if kind == "int":
        return f"{int(value):,}"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "sec":
        return f"{value:.3g}" if value < 10 else f"{value:,.0f}"
    return f"{value:.4g}"


def _ci(metric: str, ci: Any) -> str:
    if not ci or ci[0] is None or any(isinstance(c, float) and math.isnan(c) for c in ci):
        return ""
    return f" [{_fmt(metric, ci[0])}, {_fmt(metric, ci[1])}]"


def verdict(rep: Reported | None, value: Any, ci: Any, comparable: bool) -> str:
    """How cxrlab's value stands against the report's (inside the 95% CI, exact count, time ratio)."""
    if rep is None or value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    kind = METRICS[rep.metric][2]
    low, high = rep.value if isinstance(rep.value, tuple) else (rep.value, rep.value)
    if kind == "int":
        diff = int(value) - int(low)
        return "exact" if diff == 0 else f"differs by {diff:+,}"
    if kind == "sec":
        mid = (low + high) / 2
        if not value or not mid:
            return ""
        ratio = mid / value
        factor = ratio if ratio >= 1 else 1 / ratio
        shown = f"{factor:,.0f}" if factor >= 10 else f"{factor:.2g}"
        return f"{shown}× faster here" if ratio >= 1 else f"{shown}× slower here"
    if not comparable:
        return "not comparable (random weights)"
    if ci and ci[0] is not None and not any(isinstance(c, float) and math.isnan(c) for c in ci):
        if ci[0] <= high and low <= ci[1]:
            return "report's value inside cxrlab's 95% CI"
        return "cxrlab higher" if ci[0] > high else "cxrlab lower"
    diff = value - (low + high) / 2
    better = METRICS[rep.metric][1]
    if abs(diff) < 1e-9:
        return "same"
    if better is None:
        return "cxrlab higher" if diff > 0 else "cxrlab lower"
    return "cxrlab better" if (diff > 0) == better else "cxrlab worse"


def metric_rows(
    reported: dict[str, Reported],
    values: dict[str, Any],
    comparable: bool,
    always: tuple[str, ...] = ("test_accuracy",),
    time_caveats: dict[str, str] | None = None,
) -> list[list[str]]:
    """One row per number the report prints (plus ``always``), in METRICS order; ``time_caveats`` replaces
    the verdict of times the budget made incomparable."""
    time_caveats = time_caveats or {}
    rows = []
    for metric in METRICS:
        rep = reported.get(metric)
        if rep is None and metric not in always:
            continue
        value, ci = values.get(metric, (None, None))
        rows.append(
            [
                METRICS[metric][0],
                _fmt(metric, rep.value) if rep else "not printed",
                rep.where if rep else "",
                _fmt(metric, value) + _ci(metric, ci),
                time_caveats.get(metric)
                if rep and metric in time_caveats
                else verdict(rep, value, ci, comparable),
            ]
        )
    return rows


def time_caveats(exp: Experiment, budget: str) -> dict[str, str]:
    """Which stated times a quick run cannot be compared with (fewer epochs, fewer images)."""
    if budget != "quick":
        return {}
    keys = {k.rsplit(".", 1)[-1] for k in exp.quick_set}
    out = {}
    if keys & {"epochs", "max_per_class", "samples_per_class"}:
        out.update(
            train_time_s="not comparable: quick budget (fewer epochs or images)",
            gpu_train_time_s="not comparable: quick budget (fewer epochs or images)",
        )
    if keys & {"max_per_class", "samples_per_class"}:
        out["s_per_epoch"] = "not comparable: quick budget (fewer images per epoch)"
    return out


def experiment_tables(exp: Experiment, result: dict[str, Any], budget: str = "full") -> list[dict[str, Any]]:
    """Per run of the experiment: a title and its rows."""
    comparable = not result.get("random_weights")
    tables = []
    for name, run in (result.get("runs") or {}).items():
        reported = exp.reported.get(name if exp.kind == "gan" else "", {})
        rows = metric_rows(reported, run["values"], comparable, time_caveats=time_caveats(exp, budget))
        rows.append(
            ["wall time of this experiment step (s)", "", "", _fmt("train_time_s", run.get("total_s")), ""]
        )
        tables.append({"title": name, "rows": rows, "plots": run.get("plots", {})})
    return tables


def summary_rows(report: Report, results: dict[str, dict[str, Any]]) -> list[list[str]]:
    """The report at a glance: one row per experiment (per run for the GAN comparison)."""
    rows = []
    for exp in report.experiments:
        result = results.get(exp.key)
        if result is None:
            rows.append([exp.title, "", "", "", "", "not run"])
            continue
        status = result.get("status", "")
        if result.get("random_weights"):
            status += " · random weights"
        runs = result.get("runs") or {}
        if not runs:
            rows.append([exp.title, "", "", "", _fmt("train_time_s", result.get("wall_s")), status])
        for name, run in runs.items():
            rep = exp.reported.get(name if exp.kind == "gan" else "", {})
            acc = rep.get("test_accuracy")
            t = rep.get("train_time_s")
            value, ci = run["values"].get("test_accuracy", (None, None))
            title = exp.title if len(runs) == 1 else f"{exp.title} — {name}"
            rows.append(
                [
                    title,
                    _fmt("test_accuracy", acc.value) if acc else "—",
                    _fmt("test_accuracy", value) + _ci("test_accuracy", ci),
                    _fmt("train_time_s", t.value) if t else "—",
                    _fmt("train_time_s", result.get("wall_s")),
                    status,
                ]
            )
    return rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def build_context(
    reports: list[Report], results: dict[str, dict[str, Any]], meta: dict[str, Any]
) -> dict[str, Any]:
    """Everything the Markdown and HTML documents show, as plain values."""
    sections = []
    for report in reports:
        experiments = []
        for exp in report.experiments:
            result = results.get(exp.key)
            if result is None:
                continue
            plots = dict(result.get("plots") or {})
            experiments.append(
                {
                    "id": exp.id,
                    "title": exp.title,
                    "kind": exp.kind,
                    "recipe": result.get("recipe"),
                    "status": result.get("status"),
                    "error": result.get("error"),
                    "notes": result.get("notes", []),
                    "folder": result.get("folder"),
                    "wall_s": result.get("wall_s"),
                    "tables": experiment_tables(exp, result, meta["budget"])
                    if result.get("status") == "finished"
                    else [],
                    **sweep_table(result.get("sweep") or []),
                    "plots": plots,
                    "random_weights": bool(result.get("random_weights")),
                }
            )
        sections.append(
            {
                "id": report.id,
                "file": report.file,
                "title": report.title,
                "framework": report.framework,
                "summary": summary_rows(report, results),
                "experiments": experiments,
            }
        )
    return {"meta": meta, "reports": sections, "summary_header": SUMMARY_HEADER, "row_header": ROW_HEADER}


SWEEP_SKIP = ("run", "error", "duration_s")


def sweep_table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """sweep.csv as a header and rows (run paths left out: the folder is named above)."""
    if not rows:
        return {"sweep_header": [], "sweep_rows": []}
    header = [k for k in rows[0] if k not in SWEEP_SKIP]
    return {"sweep_header": header, "sweep_rows": [[_cell(r.get(k, "")) for k in header] for r in rows]}


def _cell(text: str) -> str:
    """A sweep.csv cell: long floats to 4 significant digits, everything else as written."""
    number = to_number(text)
    return f"{number:.4g}" if isinstance(number, float) else str(text)


PLOT_CAPTIONS = {
    "curves": "training curves",
    "confusion": "confusion matrix (test)",
    "roc": "ROC (test)",
    "tsne": "t-SNE of the penultimate features (test)",
    "reliability": "reliability (test)",
}
SHOWN_PLOTS = ("curves", "confusion", "roc", "tsne")


def run_figures(plots: dict[str, str]) -> list[dict[str, str]]:
    return [{"path": plots[k], "caption": PLOT_CAPTIONS[k]} for k in SHOWN_PLOTS if k in plots]


def write_markdown(path: Path, ctx: dict[str, Any]) -> None:
    """reproduce.md: the same tables as the HTML, plots as relative links."""
    meta = ctx["meta"]
    out = path.parent
    md = [
        "# The reports, reproduced with cxrlab\n",
        f"Budget **{meta['budget']}** · data root `{meta['data_root']}` · {meta['machine']} · "
        f"cxrlab {meta['version']} · {meta['date']} · total wall time {meta['wall_s']:,.0f} s\n",
        meta["budget_text"] + "\n",
    ]
    for rep in ctx["reports"]:
        md.append(f"\n## Report {rep['id']} — {rep['title']}\n")
        convention = "Keras'" if rep["framework"] == "keras" else "PyTorch's"
        md.append(
            f"Source: `{rep['file']}` ({rep['framework']}: parameter counts in {convention} convention).\n"
        )
        md.append(_md_table(ctx["summary_header"], rep["summary"]))
        for exp in rep["experiments"]:
            md.append(f"\n### {exp['title']}\n")
            md.append(
                f"`{exp['folder']}` · {exp['kind']}"
                + (f" · recipe `{exp['recipe']}`" if exp["recipe"] else "")
                + f" · {exp['wall_s']:,.0f} s · {exp['status']}\n"
            )
            if exp["error"]:
                md.append(f"\n**Failed:** {exp['error']}\n")
            for note in exp["notes"]:
                md.append(f"- {note}")
            md.append("")
            for table in exp["tables"]:
                md.append(f"\n**{table['title']}**\n")
                md.append(_md_table(ctx["row_header"], table["rows"]))
                links = [f"[{f['caption']}]({_rel(f['path'], out)})" for f in run_figures(table["plots"])]
                if links:
                    md.append("Plots: " + " · ".join(links) + "\n")
            if exp["sweep_rows"]:
                md.append(_md_table(exp["sweep_header"], exp["sweep_rows"]))
            if exp["plots"]:
                md.append(
                    "Figures: " + " · ".join(f"[{k}]({_rel(v, out)})" for k, v in exp["plots"].items()) + "\n"
                )
    atomic_write(path, "\n".join(md) + "\n")


def _rel(path: str, base: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


def write_html(path: Path, ctx: dict[str, Any]) -> None:
    """reproduce.html: self-contained (plots embedded)."""
    for rep in ctx["reports"]:
        for exp in rep["experiments"]:
            for table in exp["tables"]:
                table["figures"] = run_figures(table["plots"])
            exp["figures"] = [{"path": v, "caption": k.replace("_", " ")} for k, v in exp["plots"].items()]
    pages.write_page(path, "reproduce.html", **ctx)
