"""`cxr evaluate`: score a finished run on its test split or on another dataset, with plots, a report,
and for another dataset the internal-vs-external comparison (:mod:`cxrlab.pipeline.external`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxrlab.evaluation import plots
from cxrlab.evaluation.evaluate import (
    data_summary,
    predict_codes,
    predict_images,
    score,
    thresholded,
    tsne_plot,
    write_predictions,
)
from cxrlab.evaluation.inference import load_run, prepare_eval_data
from cxrlab.explain.report import for_run as attention_for_run
from cxrlab.pipeline.external import write_external
from cxrlab.reports.html import write_eval_report
from cxrlab.runs import (
    check_out_folder,
    check_outside_inputs,
    check_writable,
    read_json,
    require_run,
    run_lock,
    settle_stale,
    write_json,
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
) -> dict[str, Any]:
    """Score a run on its test split or on another dataset; writes metrics, plots and a report."""
    _lock = run_lock(require_run(run), "wait for it to finish, then evaluate")  # held until we return
    settle_stale(run)  # a "running" status whose process is gone is recorded as interrupted
    loaded = load_run(run)
    prepared = prepare_eval_data(loaded, data, classes, label_map)
    target = Path(out) if out else loaded.path / ("evaluation" if data is None else "external")
    check_outside_inputs(target, (data,))
    check_out_folder(target, EVAL_OUTPUTS)  # never into a run folder or a folder of other files
    check_writable(target)
    dev = resolve_device(device)
    meta = loaded.meta
    if prepared.codes is not None:  # a run trained on autoencoder codes
        logits, feats = predict_codes(loaded.model, prepared.codes["test"])
    else:
        logits, feats = predict_images(
            loaded.model,
            prepared.images["test"],
            meta["channels"],
            tuple(meta["mean"]),
            tuple(meta["std"]),
            dev,
            loaded.cfg.train.precision,
            progress="predicting",
        )
    if meta.get("task") == "multilabel":
        result = _multilabel_result(loaded, prepared, logits, target)
        write_eval_report(target, result)
        return result
    y = prepared.labels["test"]
    metrics, probs = score(
        y,
        logits,
        loaded.classes,
        meta.get("operating_point") or {},
        meta.get("temperature", 1.0),
        loaded.cfg.eval.bootstrap,
        loaded.cfg.train.seed,
    )
    plot_paths = {
        "confusion": plots.confusion(
            metrics["confusion_matrix"], loaded.classes, target / "plots" / "confusion.png"
        ),
        "roc": plots.roc(y, probs, loaded.classes, target / "plots" / "roc.png", metrics["auc"]),
        "reliability": plots.reliability(y, probs, target / "plots" / "reliability.png", metrics["ece"]),
    }
    plot_notes: dict[str, str] = {}
    if loaded.cfg.eval.tsne:
        tsne_png = target / "plots" / "tsne.png"
        t = tsne_plot(feats, y, loaded.classes, tsne_png, loaded.cfg.train.seed, plot_notes)
        if t:
            plot_paths["tsne"] = t
    result = {
        "run": str(loaded.path),
        "model": loaded.cfg.model.name,
        "classes": loaded.classes,
        "data": data_summary(prepared),
        "test": metrics,
        "plots": {k: str(v.relative_to(target)) for k, v in plot_paths.items()},
        "plot_notes": plot_notes,
    }
    write_predictions(
        target / "predictions.csv",
        prepared.paths["test"],
        y,
        probs,
        thresholded(probs, meta.get("operating_point") or {}, loaded.classes),
        loaded.classes,
    )
    # the Grad-CAM gallery and lung-attention score on these images (cxrlab.explain.report)
    result.update(attention_for_run(loaded, prepared.images.get("test"), target, warn=_warn))
    write_json(target / "metrics.json", result)
    internal = read_json(loaded.path / "metrics.json") if (loaded.path / "metrics.json").is_file() else None
    write_eval_report(target, result)
    if data is not None and internal is not None:
        write_external(target, loaded, internal, result)
    return result


def _warn(line: str) -> None:
    import sys

    print(line, file=sys.stderr)


def _multilabel_result(loaded: Any, prepared: Any, logits: Any, target: Path) -> dict[str, Any]:
    """`cxr evaluate` of a multi-label run on its test split: per-finding metrics at the saved thresholds
    (chosen on validation when it was trained), plots and predictions.csv; writes metrics.json."""
    import numpy as np

    from cxrlab.errors import DataError
    from cxrlab.evaluation import multilabel as ml
    from cxrlab.evaluation.evaluate import patient_groups, write_multilabel_predictions

    index = prepared.index
    if index.task != "multilabel" or index.findings != loaded.classes:
        raise DataError(
            f"{loaded.path} predicts the findings {', '.join(loaded.classes)}; the data gives "
            f"{', '.join(index.findings) or 'single-label classes'}: evaluate with the run's label settings"
        )
    by_path = {s.path: s for s in index.samples}
    targets = np.stack([by_path[p].targets for p in prepared.paths["test"]]).astype(np.float32)
    prepared.targets = {"test": targets}
    probs = ml.sigmoid(logits)
    saved = loaded.meta.get("thresholds", {})
    thresholds = {
        f: {"threshold": float(saved.get(f, 0.5)), "method": "saved with the run"} for f in loaded.classes
    }
    groups = patient_groups(prepared, "test")
    cfg = loaded.cfg
    metrics = ml.multilabel_metrics(targets, probs, loaded.classes, thresholds, groups, cfg.eval.bootstrap,
                                    cfg.train.seed)  # fmt: skip
    folder = target / "plots"
    per = metrics["per_finding"]
    names = loaded.classes
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
        "classes": loaded.classes,
        "findings": loaded.classes,
        "data": data_summary(prepared),
        "test": metrics,
        "thresholds": thresholds,
        "plots": {k: str(v.relative_to(target)) for k, v in plot_paths.items()},
        "plot_notes": {},
    }
    write_json(target / "metrics.json", result)
    write_multilabel_predictions(target / "predictions.csv", prepared.paths["test"], groups, targets, probs,
                                 loaded.classes, thresholds)  # fmt: skip
    return result
