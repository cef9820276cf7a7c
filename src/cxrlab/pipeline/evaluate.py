"""`cxr evaluate`: score a finished run on its test split or on another dataset, with plots, a report,
and for another dataset the internal-vs-external comparison (:mod:`cxrlab.pipeline.external`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxrlab.config import LabelsConfig
from cxrlab.evaluation import plots
from cxrlab.evaluation.evaluate import (
    data_summary,
    patient_groups,
    tsne_plot,
)
from cxrlab.evaluation.inference import load_run, prepare_eval_data
from cxrlab.evaluation.scoring import InputSource, MultiLabel, SingleLabel, loaded_source, score_split
from cxrlab.explain.report import for_run as attention_for_run
from cxrlab.figures import figure_output
from cxrlab.metrics import read_metrics, single_class_warnings, write_metrics
from cxrlab.pipeline.external import write_external
from cxrlab.pipeline.train import Stages
from cxrlab.reports.html import write_eval_report
from cxrlab.runs import (
    check_out_folder,
    check_outside_inputs,
    check_writable,
    require_run,
    run_lock,
    settle_stale,
)
from cxrlab.runtime import resolve_device

EVAL_OUTPUTS = ("metrics.json", "predictions.csv", "plots", "report.html", "external.json", "external.html")


def evaluate_run(
    run: str | Path,
    data: str | None = None,
    classes: list[str] | None = None,
    label_map: dict[str, str] | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    labels: LabelsConfig | None = None,
    progress: bool = True,
    allow_changed: bool = False,
    started: float | None = None,
) -> dict[str, Any]:
    """Score a run on its test split or on another dataset; writes metrics, plots and a report.
    ``progress``: progress bars (decoding, predicting, explaining; drawn on a terminal only).
    The run's test split is the one in its splits.csv; ``allow_changed`` scores what remains of it when
    recorded images are missing or changed (:func:`~cxrlab.evaluation.inference.recorded_test_index`).

    ``labels`` (``data.labels``: a label file, its preset and findings) reads the other dataset ``data``
    from a label file. A multi-label run is scored per finding on the findings both sides share (renamed by
    ``label_map``, data name → model name); ``findings_match`` in the result lists the findings that exist
    on only one side.

    ``started``: the command's ``time.perf_counter()`` at its start (the CLI's imports become the stage
    ``startup``); metrics.json's ``timing``: the command's wall time to the report written, by stage.
    """
    clock = Stages(started)
    _lock = run_lock(require_run(run), "wait for it to finish, then evaluate")  # held until we return
    settle_stale(run)  # a "running" status whose process is gone is recorded as interrupted
    loaded = load_run(run)
    prepared = prepare_eval_data(
        loaded, data, classes, label_map, labels=labels, progress=progress, allow_changed=allow_changed
    )
    target = Path(out) if out else loaded.path / ("evaluation" if data is None else "external")
    check_outside_inputs(target, (data,))
    check_out_folder(target, EVAL_OUTPUTS)  # never into a run folder or a folder of other files
    check_writable(target)
    meta = loaded.meta
    source = loaded_source(loaded, prepared, resolve_device(device), progress)  # pixels or codes
    clock.lap("load and decode")
    if meta.get("task") == "multilabel":
        result = _multilabel_result(loaded, prepared, source, target, clock, labels)
        _write_results(target, result, clock)
        if data is not None:
            _refresh_card(loaded.path, target / "metrics.json")
        return result
    y = prepared.labels["test"]
    task = SingleLabel()
    scored = score_split(  # the one scoring path (cxrlab.evaluation.scoring), as training's evaluation
        task, source, "test", y, task.saved(meta, loaded.classes, loaded.classes), loaded.classes,
        loaded.cfg.eval.bootstrap, loaded.cfg.train.seed,
        patient_groups(prepared, "test"),  # patient-level bootstrap where the data has patient ids
        target / "predictions.csv", prepared.paths["test"], _subgroup_data(loaded, prepared, data),
    )  # fmt: skip
    metrics, probs, feats = scored.metrics, scored.probs, scored.features
    clock.lap("score")
    positive = (metrics.get("operating_point") or {}).get("positive_class")
    folder = target / "plots"
    with figure_output(loaded.cfg.eval.figure_format, loaded.cfg.eval.figure_dpi):  # the run's own settings
        plot_paths = {
            "confusion": plots.confusion(
                metrics["confusion_matrix"], loaded.classes, folder / "confusion.png"
            ),
            "roc": plots.roc(y, probs, loaded.classes, folder / "roc.png", metrics["auc"], positive),
            "reliability": plots.reliability(y, probs, folder / "reliability.png", metrics["ece"]),
        }
        plot_notes: dict[str, str] = {}
        if loaded.cfg.eval.tsne:
            t = tsne_plot(feats, y, loaded.classes, folder / "tsne.png", loaded.cfg.train.seed, plot_notes)
            if t:
                plot_paths["tsne"] = t
    clock.lap("plots")
    result = {
        "run": str(loaded.path),
        "model": loaded.cfg.model.name,
        "classes": loaded.classes,
        "data": data_summary(prepared),
        "test": metrics,
        "plots": {k: str(v.relative_to(target)) for k, v in plot_paths.items()},
        "plot_notes": plot_notes,
        **({"subgroups": scored.subgroups} if scored.subgroups else {}),
    }
    # the Grad-CAM gallery and lung-attention score on these images (cxrlab.explain.report)
    result.update(
        attention_for_run(loaded, prepared.images.get("test"), target, warn=_warn, progress=progress)
    )
    result["warnings"] = single_class_warnings(result)
    clock.lap("explain")
    _write_results(target, result, clock)
    own = loaded.path / "metrics.json"
    internal = read_metrics(own) if own.is_file() else None
    if data is not None and internal is not None:
        write_external(target, loaded, internal, result)
        _refresh_card(loaded.path, target / "external.json")
    return result


def _write_results(target: Path, result: dict[str, Any], clock: Stages) -> None:
    """metrics.json and report.html with the command's wall time in ``timing`` (:meth:`Stages.write_timed`,
    as training's)."""

    def write(m: dict[str, Any]) -> None:
        write_metrics(target / "metrics.json", m)
        write_eval_report(target, m)

    clock.write_timed(result, write)


def _subgroup_data(loaded: Any, prepared: Any, data: str | None) -> Any:
    """The subgroup attributes of the evaluated images (``eval.subgroups`` of the run; its patient CSV
    when it scores its own test split)."""
    from cxrlab.evaluation.scoring import subgroup_data

    cfg = loaded.cfg
    csv = cfg.data.patient_csv if data is None else None
    return subgroup_data(cfg.eval, prepared.index, prepared.paths["test"], csv, cfg.data.file_column)


def _refresh_card(run: Path, external: Path) -> None:
    """The run's model card rewritten with the external validation just written (also when ``--out`` put
    it outside the run folder: the card records where). A run folder that cannot be written keeps its old
    card, with a warning line."""
    from cxrlab.reports.model_card import write_card

    try:
        write_card(run, [external])
    except OSError as exc:
        _warn(f"warning: {run}/model_card.json not updated with this external validation ({exc})")


def _warn(line: str) -> None:
    import sys

    print(line, file=sys.stderr)


def _multilabel_result(
    loaded: Any,
    prepared: Any,
    source: InputSource,
    target: Path,
    clock: Stages,
    labels: LabelsConfig | None = None,
) -> dict[str, Any]:
    """`cxr evaluate` of a multi-label run on its test split or another dataset: per-finding metrics at the
    saved thresholds (chosen on validation when it was trained) on the findings both sides share, plots
    and predictions.csv; writes metrics.json (with ``findings_match`` and the run's own test AUC per
    finding for another dataset); metrics.json is written by the caller."""
    import numpy as np

    from cxrlab.errors import DataError
    from cxrlab.evaluation import multilabel as ml

    index = prepared.index
    match = prepared.findings_match
    if index.task != "multilabel" or (match is None and index.findings != loaded.classes):
        raise DataError(
            f"{loaded.path} predicts the findings {', '.join(loaded.classes)}; the data gives "
            f"{', '.join(index.findings) or 'single-label classes'}: evaluate with the run's label settings"
        )
    by_path = {s.path: s for s in index.samples}
    targets = np.stack([by_path[p].targets for p in prepared.paths["test"]]).astype(np.float32)
    prepared.targets = {"test": targets}
    names = list(index.findings)  # the run's findings, or those another dataset shares with it
    task = MultiLabel()
    decision = task.saved(loaded.meta, names, loaded.classes)  # the saved thresholds of these findings
    thresholds = decision["thresholds"]
    groups = patient_groups(prepared, "test")
    cfg = loaded.cfg
    scored = score_split(task, source, "test", targets, decision, names, cfg.eval.bootstrap, cfg.train.seed,
                         groups, target / "predictions.csv", prepared.paths["test"],
                         _subgroup_data(loaded, prepared, None))  # fmt: skip
    metrics, probs = scored.metrics, scored.probs
    clock.lap("score")
    if match is not None:
        overlap = _name_overlap(loaded, prepared.paths["test"])
        metrics.setdefault("notes", [])[:0] = ml.match_notes(match) + overlap
    metrics["label_policy"] = ml.label_policy(labels if labels and labels.file else cfg.data.labels)
    folder = target / "plots"
    per = metrics["per_finding"]
    with figure_output(cfg.eval.figure_format, cfg.eval.figure_dpi):
        plot_paths = {
            "roc": plots.roc_grid(targets, probs, names, folder / "roc.png", per),
            "cooccurrence": plots.cooccurrence_matrix(
                ml.cooccurrence(targets), names, folder / "cooccurrence.png", len(targets)
            ),
            "reliability": plots.calibration_grid(targets, probs, names, folder / "reliability.png", per),
        }
    result = {
        "run": str(loaded.path),
        "model": loaded.cfg.model.name,
        "multilabel": True,
        "classes": names,
        "findings": names,
        **({"findings_match": match} if match is not None else {}),
        **({"internal_auc": _internal_auc(loaded, names)} if match is not None else {}),
        "data": data_summary(prepared),
        "test": metrics,
        "thresholds": thresholds,
        "plots": {k: str(v.relative_to(target)) for k, v in plot_paths.items()},
        "plot_notes": {},
        **({"subgroups": scored.subgroups} if scored.subgroups else {}),
    }
    clock.lap("plots")
    return result


def _name_overlap(loaded: Any, paths: list[str]) -> list[str]:
    """A note when external images share file names with the run's training or validation images (label
    files name images by unique ids, e.g. NIH's 00000001_000.png: the same radiograph, maybe resized)."""
    import csv

    splits = loaded.path / "splits.csv"
    if not splits.is_file():
        return []
    with splits.open(newline="") as fh:
        seen = {Path(r["path"]).name for r in csv.DictReader(fh) if r.get("split") in ("train", "val")}
    shared = [Path(p).name for p in paths if Path(p).name in seen]
    if not shared:
        return []
    return [
        f"{len(shared)} of {len(paths)} evaluated images share a file name with the run's training or "
        f"validation images (first: {', '.join(shared[:3])}): if they are the same radiographs this is not "
        "an external test"
    ]


def _internal_auc(loaded: Any, names: list[str]) -> dict[str, Any]:
    """The run's own test AUC (with CI) of each finding, next to the external one; {} without metrics."""
    path = loaded.path / "metrics.json"
    per = read_metrics(path).get("test", {}).get("per_finding", {}) if path.is_file() else {}
    return {f: {"auc": per[f].get("auc"), "auc_ci95": per[f].get("auc_ci95")} for f in names if f in per}
