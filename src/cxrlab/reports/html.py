"""The run report and the evaluation report: context for the ``run_report``/``eval_report`` pages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxrlab import pages
from cxrlab.config import RunConfig
from cxrlab.metrics import table_rows
from cxrlab.pages import ci

RUN_FIGURES = (
    ("curves", "training curves (loss and accuracy, train vs validation)"),
    ("confusion", "confusion matrix (test)"),
    ("roc", "ROC curves (test; multi-label: one per finding, AUC and 95% CI in each title)"),
    ("cooccurrence", "finding co-occurrence: images positive for both (all splits)"),
    ("tsne", "t-SNE of penultimate-layer features (test)"),
    ("reliability", "reliability diagram (test; multi-label: calibration per finding)"),
    ("samples", "training images as the model sees them"),
    ("synthetic", "synthetic (--extra-train) training images per class, as the model sees them"),
)


def metric_table(test: dict[str, Any], classes: list[str]) -> tuple[list[str], list[list[Any]]]:
    """Header and cells of the report's metric table: one row per registered metric (registry order);
    a binary run at its threshold gets the argmax value beside each decision metric, labelled."""
    rows = table_rows(test, "single", binary=len(classes) == 2)
    if test.get("argmax"):
        header = ["metric", "value (at the threshold)", "95% CI (bootstrap)", "at argmax (not deployed)"]
        return header, [[r["label"], r["value"], ci_cell(r), r["argmax"]] for r in rows]
    return ["metric", "value", "95% CI (bootstrap)"], [[r["label"], r["value"], ci_cell(r)] for r in rows]


def ci_cell(row: dict[str, Any]) -> str:
    """A metric table's CI cell: '[lo, hi]'; 'not estimable' where the bootstrap ran and gave no interval
    (its reason is in the notes below the table); blank where no interval was asked for."""
    return ci(row["ci95"]) or ("not estimable" if row.get("bootstrapped") else "")


def run_report_context(run: Path, cfg: RunConfig, metrics: dict[str, Any]) -> dict[str, Any]:
    """What the run report shows: headline, warnings, metrics, plots, data, timing, config, environment."""
    plots = {k: run / v for k, v in metrics.get("plots", {}).items()}
    return {
        "task": metrics["task"],
        "model": metrics["model"],
        "run": str(run),
        "params": metrics["params"],
        "timing": metrics["timing"],
        **timing_context(metrics["timing"]),
        "restore": cfg.train.restore,
        "monitor": cfg.train.monitor,
        "fast_path": bool(metrics.get("fast_path")),
        "training_path": metrics.get("training_path", ""),
        "device": metrics["device"],
        "tta_shift_px": metrics.get("test_time_shift_px", 0),
        "warnings": metrics.get("audit", {}).get("warnings", []),
        "test": metrics["test"],
        "classes": metrics["classes"],
        "metric_table": metric_table(metrics["test"], metrics["classes"]),
        "headline_warnings": metrics.get("warnings") or [],
        "figures": [{"path": plots[k], "caption": cap} for k, cap in RUN_FIGURES if k in plots],
        "plot_notes": list(metrics.get("plot_notes", {}).values()),
        "data": metrics["data"],
        "multilabel": bool(metrics.get("multilabel")),
        "thresholds": metrics.get("thresholds"),
        "pos_weight": metrics.get("pos_weight"),
        "config_yaml": cfg.to_yaml(),
        "environment": metrics.get("environment", {}),
        "subgroups": subgroup_context(run, metrics),
        **attention_context(run, metrics),
    }


def timing_context(timing: dict[str, Any]) -> dict[str, Any]:
    """``command_s`` (the whole command; ``total_s`` for a run written before it was recorded), one row per
    stage of ``timing.stages`` with its seconds and share, and the other timing values as rows."""
    stages = timing.get("stages") or {}
    total = timing.get("command_s") or sum(stages.values())
    return {
        "command_s": timing.get("command_s", timing.get("total_s")),
        "stage_rows": [[k, v, f"{100 * v / total:.0f} %" if total else "—"] for k, v in stages.items()],
        "timing_rows": [[k, v] for k, v in timing.items() if k not in ("stages", "command_s")],
    }


def attention_context(folder: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """``gallery`` and ``lung_attention`` of metrics.json for the "Where the model looks" section (None
    when absent, e.g. an older run), each gallery thumbnail with its file as ``path``."""
    gallery = metrics.get("gallery")
    if gallery and gallery.get("status") == "done":
        gallery = {
            **gallery,
            "classes": [
                {
                    k: ({**v, "path": folder / v["thumbnail"]} if isinstance(v, dict) else v)
                    for k, v in r.items()
                }
                for r in gallery["classes"]
            ],
        }
    return {"gallery": gallery, "lung_attention": metrics.get("lung_attention")}


SUBGROUP_COLUMNS = (("prevalence", "prevalence"), ("auc", "AUC"), ("sensitivity", "sensitivity"),
                    ("specificity", "specificity"), ("underdiagnosis_rate", "underdiagnosis"))  # fmt: skip


def subgroup_context(folder: Path, metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The subgroup section's table rows (value [CI] per metric), gap rows, too-small cells and forest plot
    path from metrics.json's ``subgroups`` (None when absent, e.g. an older run)."""
    s = metrics.get("subgroups")
    if not s:
        return None

    def cell(row: dict[str, Any], key: str) -> str:
        value = row.get(key)
        if value is None:
            return "—"
        interval = ci(row.get(f"{key}_ci95"))
        return f"{value:.3f} {interval}" if interval else f"{value:.3f}"

    rows = [r for r in [s.get("overall")] if r] + list(s.get("groups", []))
    return {
        **s,
        "figure": folder / s["figure"] if s.get("figure") else None,
        "header": ["attribute", "group", "images", "patients", *[label for _, label in SUBGROUP_COLUMNS]],
        "rows": [[r["attribute"], r["group"], r["n_images"], r["n_patients"],
                  *[cell(r, k) for k, _ in SUBGROUP_COLUMNS]] for r in rows],  # fmt: skip
        "gap_rows": [
            [g["attribute"], g["metric"].replace("_", " "), f"{g['high']} → {g['low']}",
             f"{g['high_value']:.3f} vs {g['low_value']:.3f}",
             f"{g['difference']:.3f} {ci(g.get('difference_ci95')) or '(CI not estimable)'}",
             "yes" if g.get("excludes_zero") else "no"]
            for g in s.get("gaps", [])
        ],  # fmt: skip
        "too_small": [f"{c['attribute']} {c['group']} ({c['n_images']} images, {c['n_patients']} patients)"
                      for c in s.get("too_small", [])],  # fmt: skip
    }


def write_run_report(run: Path, cfg: RunConfig, metrics: dict[str, Any]) -> Path:
    """RUN/report.html: config, data, metrics with CIs and every plot, in one file."""
    return pages.write_page(run / "report.html", "run_report.html", **run_report_context(run, cfg, metrics))


def eval_report_context(folder: Path, result: dict[str, Any]) -> dict[str, Any]:
    """What ``cxr evaluate``'s report shows: metrics with CIs, plots and the data evaluated."""
    return {
        "model": result["model"],
        "run": str(result["run"]),
        "test": result["test"],
        "classes": result["classes"],
        "metric_table": metric_table(result["test"], result["classes"]),
        "headline_warnings": result.get("warnings") or [],
        "figures": [{"path": folder / v, "caption": k} for k, v in result.get("plots", {}).items()],
        "data": result["data"],
        "multilabel": bool(result.get("multilabel")),
        "thresholds": result.get("thresholds"),
        "subgroups": subgroup_context(folder, result),
        **attention_context(folder, result),
        **timing_context(result.get("timing") or {}),  # absent in older evaluations
    }


def write_eval_report(folder: Path, result: dict[str, Any]) -> Path:
    """FOLDER/report.html for `cxr evaluate`: metrics with CIs, plots and the data evaluated."""
    return pages.write_page(folder / "report.html", "eval_report.html", **eval_report_context(folder, result))
