"""One scoring path: an *input source* predicts a split, a *task* scores it at its decision and writes
predictions.csv; :func:`score_split` is the one function that does both, used by training's evaluation
(:func:`evaluate_trained`), ``cxr evaluate`` and external validation (:mod:`cxrlab.pipeline.evaluate`).

Input sources (what the network reads): :class:`Pixels` (uint8 images, with test-time shifts),
:class:`CachedFeatures` (a frozen backbone's cached features, or a frozen prefix's cached activations
through the trained suffix), :class:`Codes` (autoencoder codes). Tasks: :class:`SingleLabel` (softmax,
temperature, the binary operating threshold; cross-entropy) and :class:`MultiLabel` (sigmoid per finding,
a threshold per finding; binary cross-entropy on known labels).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrlab.config import RunConfig
from cxrlab.evaluation.evaluate import (
    _run_facts,
    _timing,
    data_summary,
    describe_task,
    fit_temperature,
    logits_to_probs,
    make_multilabel_plots,
    make_plots,
    model_meta,
    operating_point,
    patient_groups,
    predict_codes,
    predict_features,
    predict_images,
    score,
    thresholded,
    write_multilabel_predictions,
    write_predictions,
)
from cxrlab.figures import figure_output
from cxrlab.metrics import single_class_warnings
from cxrlab.models.heads import Classifier
from cxrlab.models.tta import shift_pixels
from cxrlab.runs import read_csv, save_model
from cxrlab.stats import to_number

if TYPE_CHECKING:
    from cxrlab.training.train import Trained

Outputs = tuple[np.ndarray, np.ndarray]  # logits, penultimate features


# ---------------------------------------------------------------------------------------------- inputs


@dataclass
class InputSource(ABC):
    """What a model reads, per split; :meth:`predict` gives logits and features (computed once a split)."""

    model: Classifier
    _cache: dict[str, Outputs] = field(default_factory=dict, init=False, repr=False)

    kind = "input"

    def predict(self, split: str) -> Outputs:
        """Logits and penultimate features of ``split``."""
        if split not in self._cache:
            self._cache[split] = self._predict(split)
        return self._cache[split]

    @abstractmethod
    def _predict(self, split: str) -> Outputs: ...


@dataclass
class Pixels(InputSource):
    """uint8 images ``(N, H, W)`` per split, normalised as the model was trained; ``tta_shift`` > 0 averages
    over the image and four shifted copies."""

    images: dict[str, np.ndarray] = field(default_factory=dict)
    channels: int = 1
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    device: str = "cpu"
    precision: str = "32"
    tta_shift: int = 0
    progress: bool = False
    kind = "pixels"

    def _predict(self, split: str) -> Outputs:
        label = (f"predicting ({split})" if split != "test" or len(self.images) > 1 else "predicting")
        return predict_images(
            self.model, self.images[split], self.channels, self.mean, self.std, self.device, self.precision,
            progress=label if self.progress else None, tta_shift=self.tta_shift,
        )  # fmt: skip


@dataclass
class CachedFeatures(InputSource):
    """Cached backbone features (the fast path: only the head runs) or, with ``suffix``, a frozen prefix's
    cached activations run through the trained suffix blocks and head."""

    features: dict[str, np.ndarray] = field(default_factory=dict)
    suffix: Any = None

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "prefix activations" if self.suffix is not None else "cached features"

    def _predict(self, split: str) -> Outputs:
        return predict_features(self.model, self.features[split], self.suffix)


@dataclass
class Codes(InputSource):
    """Autoencoder codes per split (a model trained on ``cxr train --codes``)."""

    codes: dict[str, np.ndarray] = field(default_factory=dict)
    kind = "autoencoder codes"

    def _predict(self, split: str) -> Outputs:
        return predict_codes(self.model, self.codes[split])


def trained_source(cfg: RunConfig, trained: Trained, progress: bool = True) -> InputSource:
    """The input source of a model just trained: cached features (not with test-time shifts, which need the
    images), codes, or pixels."""
    data, model = trained.data, trained.model
    tta = shift_pixels(cfg.eval.tta_shift, cfg.data.image_size)  # 0 for codes: fit() refuses a shift there
    if trained.features is not None and not tta:
        return CachedFeatures(model, features=trained.features, suffix=trained.suffix)
    if data.codes is not None:
        return Codes(model, codes=data.codes)
    return Pixels(
        model, images=data.images, channels=trained.channels, mean=tuple(trained.spec.mean),
        std=tuple(trained.spec.std), device=trained.device, precision=cfg.eval.precision, tta_shift=tta,
        progress=progress,
    )  # fmt: skip


def loaded_source(loaded: Any, prepared: Any, device: str, progress: bool = True) -> InputSource:
    """The input source of a saved run (:class:`cxrlab.evaluation.inference.LoadedRun`) on prepared data."""
    if prepared.codes is not None:
        return Codes(loaded.model, codes=prepared.codes)
    meta = loaded.meta
    return Pixels(
        loaded.model, images=prepared.images, channels=meta["channels"], mean=tuple(meta["mean"]),
        std=tuple(meta["std"]), device=device, precision=loaded.cfg.eval.precision,
        tta_shift=loaded.tta_shift, progress=progress,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- tasks


@dataclass
class Scored:
    """A scored split: its metrics, probabilities and features."""

    metrics: dict[str, Any]
    probs: np.ndarray
    features: np.ndarray
    subgroups: dict[str, Any] | None = None  # metrics.json's "subgroups" (cxrlab.evaluation.subgroups)


class Task(ABC):
    """What is predicted and how it is decided and scored; ``decision`` is a task's own dict (single-label:
    ``op`` and ``temperature``; multi-label: ``thresholds`` and the model ``columns`` scored)."""

    name: str
    loss: str
    report_section: str  # the macro of pages/templates/macros.html that shows its test metrics

    @abstractmethod
    def choose(self, cfg: RunConfig, logits: np.ndarray, targets: np.ndarray, names: list[str]) -> dict: ...

    @abstractmethod
    def saved(self, meta: dict[str, Any], names: list[str], model_names: list[str]) -> dict: ...

    @abstractmethod
    def score(
        self, targets: np.ndarray, logits: np.ndarray, decision: dict, names: list[str], n_boot: int,
        seed: int, groups: list[str] | None,
    ) -> tuple[dict[str, Any], np.ndarray]: ...  # fmt: skip

    @abstractmethod
    def write_predictions(
        self, path: Path, paths: list[str], targets: np.ndarray, probs: np.ndarray, decision: dict,
        names: list[str], groups: list[str] | None,
    ) -> None: ...  # fmt: skip


class SingleLabel(Task):
    """One class per image: softmax (temperature-scaled), argmax or a binary run's operating threshold."""

    name, loss, report_section = "single-label", "cross-entropy", "metrics_section"

    def choose(self, cfg: RunConfig, logits: np.ndarray, targets: np.ndarray, names: list[str]) -> dict:
        """Temperature (when asked) and operating threshold, both fitted on these (validation) outputs."""
        temperature = fit_temperature(logits, targets) if cfg.eval.temperature_scaling else 1.0
        op = operating_point(cfg, names, targets, logits_to_probs(logits, temperature))
        return {"op": op, "temperature": temperature}

    def saved(self, meta: dict[str, Any], names: list[str], model_names: list[str]) -> dict:
        return {"op": meta.get("operating_point") or {}, "temperature": meta.get("temperature", 1.0)}

    def score(self, targets, logits, decision, names, n_boot, seed, groups):  # noqa: ANN001, ANN201
        return score(targets, logits, names, decision["op"], decision["temperature"], n_boot, seed, groups)

    def write_predictions(self, path, paths, targets, probs, decision, names, groups) -> None:  # noqa: ANN001
        pred = thresholded(probs, decision["op"], names)
        write_predictions(path, paths, targets, probs, pred, names, groups)

    def outcome(self, targets, probs, decision, names):  # noqa: ANN001, ANN201
        """Positive / called per image for subgroup metrics, at the decision predictions.csv records."""
        from cxrlab.evaluation import subgroups

        pred, positive = thresholded(probs, decision["op"], names), decision["op"].get("positive_class")
        return subgroups.single_label_outcome(targets, probs, pred, names, positive)


class MultiLabel(Task):
    """Several findings per image: a sigmoid and a threshold per finding; unknown labels (NaN) left out."""

    name, loss, report_section = "multi-label", "binary cross-entropy", "multilabel_section"

    def choose(self, cfg: RunConfig, logits: np.ndarray, targets: np.ndarray, names: list[str]) -> dict:
        from cxrlab.evaluation import multilabel as ml

        thresholds = ml.choose_thresholds(
            targets, ml.sigmoid(logits), names, cfg.eval.threshold, cfg.eval.target_sensitivity
        )
        return {"thresholds": thresholds, "columns": list(range(len(names)))}

    def saved(self, meta: dict[str, Any], names: list[str], model_names: list[str]) -> dict:
        saved = meta.get("thresholds", {})
        return {
            "thresholds": {
                f: {"threshold": float(saved.get(f, 0.5)), "method": "saved with the run"} for f in names
            },
            "columns": [model_names.index(f) for f in names],
        }

    def score(self, targets, logits, decision, names, n_boot, seed, groups):  # noqa: ANN001, ANN201
        from cxrlab.evaluation import multilabel as ml

        probs = ml.sigmoid(logits)[:, decision["columns"]]
        metrics = ml.multilabel_metrics(targets, probs, names, decision["thresholds"], groups, n_boot, seed)
        return metrics, probs

    def write_predictions(self, path, paths, targets, probs, decision, names, groups) -> None:  # noqa: ANN001
        write_multilabel_predictions(path, paths, groups, targets, probs, names, decision["thresholds"])

    def outcome(self, targets, probs, decision, names):  # noqa: ANN001, ANN201
        """Any finding present / any finding at or above its threshold, per image (subgroup metrics)."""
        from cxrlab.evaluation import subgroups

        return subgroups.multilabel_outcome(targets, probs, names, decision["thresholds"])


def task_for(multilabel: bool) -> Task:
    """The task object of a run."""
    return MultiLabel() if multilabel else SingleLabel()


def score_split(
    task: Task,
    source: InputSource,
    split: str,
    targets: np.ndarray,
    decision: dict,
    names: list[str],
    n_boot: int,
    seed: int,
    groups: list[str] | None = None,
    predictions: Path | None = None,
    paths: list[str] | None = None,
    subgroups: Any = None,
) -> Scored:
    """The one scoring function: predict ``split`` from ``source``, score it at ``decision`` (bootstrap
    CIs by patient when ``groups`` are given) and, with ``predictions``, write that predictions.csv.
    ``subgroups`` (:func:`subgroup_data`): also score each subgroup at the same decision
    (:mod:`cxrlab.evaluation.subgroups`), into ``Scored.subgroups``."""
    logits, feats = source.predict(split)
    metrics, probs = task.score(targets, logits, decision, names, n_boot, seed, groups)
    if predictions is not None:
        task.write_predictions(predictions, list(paths or []), targets, probs, decision, names, groups)
    sub = None
    if subgroups is not None:
        from cxrlab.evaluation import subgroups as sg

        sub = sg.evaluate(subgroups, task.outcome(targets, probs, decision, names), groups, n_boot, seed)
        if sub.get("skipped"):
            import sys

            print(f"note: {sub['skipped']}", file=sys.stderr)
        elif predictions is not None and sub.get("groups"):
            from cxrlab.evaluation.plots import subgroup_forest

            figure = subgroup_forest(sub, predictions.parent / "plots" / "subgroups.png")
            if figure is not None:
                sub["figure"] = str(figure.relative_to(predictions.parent))
    return Scored(metrics, probs, feats, sub)


def subgroup_data(
    eval_cfg: Any, index: Any, paths: list[str], patient_csv: str | None = None, file_column: str = "filename"
) -> Any:
    """The subgroup attributes of ``paths`` (``eval.subgroups``; None when it is ``[]``)."""
    if eval_cfg.subgroups is not None and not eval_cfg.subgroups:
        return None
    from cxrlab.evaluation import subgroups as sg

    return sg.collect(index, paths, eval_cfg.subgroups, eval_cfg.subgroup_min_n, patient_csv, file_column)


# ---------------------------------------------------------------------------------------------- training


def evaluate_trained(
    cfg: RunConfig, out: Path, trained: Trained, t0: float, progress: bool = True
) -> dict[str, Any]:
    """After training: choose the decision on validation, score val and test through :func:`score_split`;
    save the model with its decision, predictions.csv and the plots; return the metrics (the pipeline adds
    the audit and the environment, writes metrics.json and the report)."""
    t_eval = time.perf_counter()
    data = trained.data
    task, source = task_for(data.multilabel), trained_source(cfg, trained, progress)
    names = data.findings if data.multilabel else data.classes
    targets = data.targets if data.multilabel else data.labels
    decision = task.choose(cfg, source.predict("val")[0], targets["val"], names)
    groups = patient_groups(data, "test")  # the bootstrap resamples patients where the data has patient ids
    val = score_split(task, source, "val", targets["val"], decision, names, 0, cfg.train.seed)
    sub = subgroup_data(cfg.eval, data.index, data.paths["test"], cfg.data.patient_csv, cfg.data.file_column)
    test = score_split(
        task, source, "test", targets["test"], decision, names, cfg.eval.bootstrap, cfg.train.seed, groups,
        out / "predictions.csv", data.paths["test"], sub,
    )  # fmt: skip
    if data.multilabel:
        metrics = _multilabel_metrics(cfg, out, trained, decision, val, test, t0, t_eval)
        return {**metrics, **({"subgroups": test.subgroups} if test.subgroups else {})}
    op, temperature = decision["op"], decision["temperature"]
    meta = model_meta(cfg, trained, op, temperature)
    save_model(out, trained.model, meta)
    history = _history(out)
    plot_notes: dict[str, str] = {}
    with figure_output(cfg.eval.figure_format, cfg.eval.figure_dpi):
        plot_paths = make_plots(
            out / "plots", history, data.labels["test"], test.probs, test.features, test.metrics, data,
            cfg.eval.tsne, cfg.train.seed, cfg.model.name, plot_notes,
        )  # fmt: skip
    timing = _timing(cfg, trained, history, t0, t_eval)
    metrics: dict[str, Any] = {
        "run": str(out),
        "task": cfg.task or describe_task(data.classes),
        "model": cfg.model.name,
        "classes": data.classes,
        "data": data_summary(data),
        "test": test.metrics,
        "val": {
            k: val.metrics[k]
            for k in ("n", "accuracy", "balanced_accuracy", "auc", "loss", "ece", "operating_point",
                      "decision", "single_class", "sensitivity", "specificity", "argmax")
            if k in val.metrics
        },  # fmt: skip
        "calibration": {"temperature": temperature, "ece": test.metrics["ece"]},
        "test_time_shift_px": meta["tta_shift_px"],
        **_run_facts(out, trained.model, trained, timing, plot_paths, plot_notes),
        **({"subgroups": test.subgroups} if test.subgroups else {}),
    }
    metrics["warnings"] = single_class_warnings(metrics)  # at the top of the report, the CLI's last line
    return metrics


def _history(out: Path) -> list[dict[str, Any]]:
    return [{k: to_number(v) for k, v in row.items()} for row in read_csv(out / "history.csv")]


def _multilabel_metrics(
    cfg: RunConfig, out: Path, trained: Trained, decision: dict, val: Scored, test: Scored, t0: float,
    t_eval: float,
) -> dict[str, Any]:  # fmt: skip
    """A multi-label run's model.json, plots and metrics.json content (thresholds per finding chosen on
    validation, per-finding metrics with patient-level bootstrap CIs on test)."""
    from cxrlab.evaluation import multilabel as ml

    data, model = trained.data, trained.model
    findings, thresholds = data.findings, decision["thresholds"]
    test.metrics["label_policy"] = ml.label_policy(cfg.data.labels)  # named in metrics.json and the report
    op = {"positive_class": None, "threshold": None, "method": "per finding, chosen on validation"}
    meta = model_meta(cfg, trained, op, 1.0)
    meta.update(task="multilabel", findings=findings,
                thresholds={f: round(t["threshold"], 6) for f, t in thresholds.items()})  # fmt: skip
    save_model(out, model, meta)
    history = _history(out)
    plot_notes: dict[str, str] = {}
    if cfg.eval.tsne:
        plot_notes["tsne"] = "t-SNE is drawn for single-label runs only (a point has several findings)"
    if cfg.eval.temperature_scaling:
        plot_notes["temperature"] = (
            "temperature scaling is single-label only; multi-label probabilities unscaled"
        )
    with figure_output(cfg.eval.figure_format, cfg.eval.figure_dpi):
        plot_paths = make_multilabel_plots(
            out / "plots", history, data, test.probs, test.metrics, cfg.model.name
        )
    timing = _timing(cfg, trained, history, t0, t_eval)
    return {
        "run": str(out),
        "task": cfg.task or f"multi-label ({len(findings)} findings)",
        "multilabel": True,
        "model": cfg.model.name,
        "classes": findings,
        "findings": findings,
        "data": data_summary(data),
        "test": test.metrics,
        "val": {
            k: val.metrics[k]
            for k in ("n", "auc", "macro_auc", "micro_auc", "loss", "mean_average_precision")
        },
        "thresholds": thresholds,
        "pos_weight": trained.pos_weight,
        "label_policy": test.metrics["label_policy"],
        "calibration": {"temperature": 1.0},
        "test_time_shift_px": meta["tta_shift_px"],
        **_run_facts(out, model, trained, timing, plot_paths, plot_notes),
    }
