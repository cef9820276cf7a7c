"""metrics.json: its versioned schema, the one reader and writer, and the metric registry.

Every number a run reports is a :class:`Metric` in :data:`REGISTRY` (name, how it is computed, its CI
method, display format, whether higher is better). The report, ``cxr compare``, seed groups, external
validation, ``cxr serve``'s model card and the CLI iterate the registry instead of naming keys, so a new
metric is one entry here (and, if it needs new arithmetic, a function in :mod:`cxrlab.stats`).

``metrics.json`` carries ``schema_version``. Version 1 (no version key, cxrlab before issue 27) led a
binary run with its argmax metrics; :func:`read_metrics` migrates it on read so that the headline is the
deployed decision (the saved operating threshold) and argmax sits under ``argmax``, as version 2 writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from cxrlab.errors import CxrError
from cxrlab.runs import read_json, write_json
from cxrlab.stats import bootstrap_intervals, to_number

#: the version this cxrlab writes; :data:`MIGRATIONS` brings every older one up to it
SCHEMA_VERSION = 2

#: (y, probs, pred) -> value, for metrics not produced by :func:`cxrlab.stats.classification_metrics`
MetricFn = Callable[[np.ndarray, np.ndarray, np.ndarray], float]


@dataclass(frozen=True)
class Metric:
    """One reported number of a split's metrics.

    ``path``: where it sits inside a split's metrics (default ``(name,)``); ``fn``: how to compute it when
    the scorer does not already (then it is filled in by :func:`fill`); ``ci``: ``"bootstrap"`` (a 95%
    interval under ``<name>_ci95``) or ``"none"``; ``decision``: it depends on the predicted class (the
    operating threshold), not on probabilities alone; ``binary``: only for a binary task (of its positive
    class); ``task``: ``"single"`` or ``"multi"`` (multi-label)."""

    name: str
    label: str
    fmt: str = ".3f"
    higher_is_better: bool = True
    ci: str = "none"
    decision: bool = False
    binary: bool = False
    task: str = "single"
    path: tuple[str, ...] | None = None
    fn: MetricFn | None = None
    abbrev: str | None = None

    @property
    def where(self) -> tuple[str, ...]:
        return self.path or (self.name,)

    @property
    def short(self) -> str:
        """The column heading of wide tables (``cxr compare``)."""
        return self.abbrev or self.label

    def value(self, split: dict[str, Any]) -> float | None:
        """The metric's number in a split's metrics, None when absent or undefined (NaN)."""
        node: Any = split
        for key in self.where:
            node = node.get(key) if isinstance(node, dict) else None
        return to_number(node) if not isinstance(node, bool) else None

    def interval(self, split: dict[str, Any]) -> list[float] | None:
        """Its 95% CI ``[lo, hi]`` in a split's metrics, None without one."""
        if self.ci == "none":
            return None
        node: Any = split
        for key in (*self.where[:-1], f"{self.where[-1]}_ci95"):
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, list | tuple) or len(node) != 2:
            return None
        lo, hi = to_number(node[0]), to_number(node[1])
        return [lo, hi] if lo is not None and hi is not None else None

    def format(self, value: Any) -> str:
        """The value as the tables show it ("—" when undefined)."""
        number = to_number(value)
        return "—" if number is None else format(number, self.fmt)


REGISTRY: list[Metric] = [
    Metric("accuracy", "accuracy", ci="bootstrap", decision=True, abbrev="test accuracy"),
    Metric("balanced_accuracy", "balanced accuracy", ci="bootstrap", decision=True, abbrev="bal. acc."),
    Metric("sensitivity", "sensitivity", ci="bootstrap", decision=True, binary=True, abbrev="sens."),
    Metric("specificity", "specificity", ci="bootstrap", decision=True, binary=True, abbrev="spec."),
    Metric("auc", "ROC AUC", ci="bootstrap", abbrev="AUC"),
    Metric("precision_macro", "macro precision", decision=True, path=("macro", "precision"),
           abbrev="macro P"),
    Metric("recall_macro", "macro recall", decision=True, path=("macro", "recall"), abbrev="macro R"),
    Metric("f1_macro", "macro F1", decision=True, path=("macro", "f1")),
    Metric("precision_weighted", "weighted precision", decision=True, path=("weighted", "precision"),
           abbrev="weighted P"),
    Metric("recall_weighted", "weighted recall", decision=True, path=("weighted", "recall"),
           abbrev="weighted R"),
    Metric("f1_weighted", "weighted F1", decision=True, path=("weighted", "f1")),
    Metric("loss", "loss (cross-entropy)", higher_is_better=False, abbrev="test loss"),
    Metric("ece", "expected calibration error", higher_is_better=False, abbrev="ECE"),
    Metric("macro_auc", "macro ROC AUC", ci="bootstrap", task="multi"),
    Metric("micro_auc", "micro ROC AUC (all known cells pooled)", ci="bootstrap", task="multi"),
    Metric("mean_average_precision", "mean average precision", task="multi"),
    Metric("loss", "loss (binary cross-entropy, known labels)", higher_is_better=False, task="multi"),
]  # fmt: skip


def metrics_for(task: str = "single", binary: bool = True) -> list[Metric]:
    """The registry's metrics of a task (``"single"`` / ``"multi"``); without binary-only ones when
    ``binary`` is false."""
    return [m for m in REGISTRY if m.task == task and (binary or not m.binary)]


def get_metric(name: str, task: str = "single") -> Metric:
    """The registered metric ``name`` of ``task``."""
    for m in REGISTRY:
        if m.name == name and m.task == task:
            return m
    raise KeyError(name)


@contextmanager
def registered(metric: Metric) -> Iterator[Metric]:
    """``metric`` added to the registry inside the block (a plug-in metric, or a test of one)."""
    REGISTRY.append(metric)
    try:
        yield metric
    finally:
        REGISTRY.remove(metric)


def fill(
    split: dict[str, Any],
    y: np.ndarray,
    probs: np.ndarray,
    pred: np.ndarray,
    n_boot: int,
    seed: int,
    groups: list[str] | None = None,
) -> dict[str, Any]:
    """Compute every single-label registry metric with a ``fn`` that ``split`` lacks (and its bootstrap
    CI when asked for, by the same patient-level bootstrap as the built-in metrics:
    :func:`cxrlab.stats.bootstrap_intervals`), in place; returns ``split``."""
    n = len(y)
    for m in metrics_for("single"):
        if m.fn is None or m.value(split) is not None:
            continue
        split[m.name] = float(m.fn(y, probs, pred))
        if m.ci == "bootstrap" and n_boot > 0 and n:
            iv = bootstrap_intervals(_plug_in(m.name, m.fn, y, probs, pred), n, groups, n_boot, seed)
            split[f"{m.name}_ci95"] = iv.ci.get(m.name)
            if m.name in iv.notes:
                split.setdefault("ci_notes", {})[m.name] = iv.notes[m.name]
    return split


def _plug_in(
    name: str, fn: Callable[..., float], y: np.ndarray, probs: np.ndarray, pred: np.ndarray
) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """A registry metric as a bootstrap statistic: each row of resampling weights (how often each image
    was drawn) becomes that resample's images; NaN where the metric is undefined on it."""
    index = np.arange(len(y))

    def statistic(weights: np.ndarray) -> dict[str, np.ndarray]:
        out = np.empty(len(weights))
        for b, row in enumerate(weights):
            i = np.repeat(index, row.astype(np.int64))
            try:
                out[b] = float(fn(y[i], probs[i], pred[i]))
            except ValueError:  # e.g. one class only in this resample
                out[b] = np.nan
        return {name: out}

    return statistic


def table_rows(split: dict[str, Any], task: str = "single", binary: bool = True) -> list[dict[str, Any]]:
    """One row per registered metric that ``split`` has: name, label, value, its CI and display text."""
    rows = []
    for m in metrics_for(task, binary):
        value = m.value(split)
        if value is None and m.name not in split and m.path is None:
            continue
        rows.append(
            {
                "name": m.name,
                "label": m.label,
                "value": value,
                "ci95": m.interval(split),
                "bootstrapped": m.ci == "bootstrap" and bool(split.get("bootstrap_resamples")),
                "text": m.format(value),
                "higher_is_better": m.higher_is_better,
                "decision": m.decision,
                "argmax": m.value(split["argmax"]) if m.decision and split.get("argmax") else None,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------- schema


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class OperatingPoint(_Open):
    """The decision rule: a threshold on P(positive class), or argmax."""

    positive_class: str | None = None
    threshold: float | None = None
    method: str = "argmax"


class SplitMetrics(_Open):
    """One split's metrics (single- or multi-label); every registry metric is optional (NaN → null)."""

    n: int
    accuracy: float | None = None
    balanced_accuracy: float | None = None
    auc: float | None = None
    loss: float | None = None
    ece: float | None = None
    decision: str | None = None
    single_class: str | None = None
    operating_point: OperatingPoint | None = None
    argmax: dict[str, Any] | None = None
    per_class: dict[str, dict[str, Any]] | None = None
    per_finding: dict[str, dict[str, Any]] | None = None
    confusion_matrix: list[list[int]] | None = None


class Subgroups(_Open):
    """``subgroups``: performance per subgroup (:mod:`cxrlab.evaluation.subgroups`); absent in older files."""

    attributes: list[dict[str, Any]] = []
    min_n: int = 20
    groups: list[dict[str, Any]] = []
    gaps: list[dict[str, Any]] = []
    too_small: list[dict[str, Any]] = []
    summary: list[str] = []
    warnings: list[str] = []


class MetricsFile(_Open):
    """``metrics.json`` of a run (``cxr train``) or of an evaluation (``cxr evaluate``)."""

    schema_version: int = SCHEMA_VERSION
    run: str
    model: str
    classes: list[str]
    task: str | None = None
    multilabel: bool = False
    test: SplitMetrics
    val: SplitMetrics | None = None
    warnings: list[str] = []
    subgroups: Subgroups | None = None


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """Validate ``metrics`` against the schema and write it with its ``schema_version``; returns it."""
    metrics["schema_version"] = SCHEMA_VERSION
    try:
        MetricsFile.model_validate(_nulls(metrics))
    except ValidationError as exc:  # a programming error, named in one line
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        msg = first["msg"]
        raise CxrError(f"{path}: metrics do not fit schema {SCHEMA_VERSION} ({where}: {msg})") from None
    write_json(path, metrics)
    return metrics


def read_metrics(path: str | Path) -> dict[str, Any]:
    """``metrics.json`` at ``path``, migrated to :data:`SCHEMA_VERSION` and checked against the schema;
    one line naming the schema version when it cannot be read."""
    return migrate(read_json(path), path)


def parse_metrics(path: str | Path) -> MetricsFile:
    """:func:`read_metrics` as the typed model."""
    return MetricsFile.model_validate(_nulls(read_metrics(path)))


def migrate(data: dict[str, Any], path: str | Path = "metrics.json") -> dict[str, Any]:
    """Bring a metrics.json dict of any known schema version up to :data:`SCHEMA_VERSION`."""
    if not isinstance(data, dict):
        raise CxrError(f"{path}: not a metrics.json (a JSON {type(data).__name__}, not an object)")
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CxrError(f"{path}: metrics.json schema version {version!r} is not one cxrlab knows")
    if version > SCHEMA_VERSION:
        raise CxrError(
            f"{path}: metrics.json schema version {version} is newer than this cxrlab reads "
            f"(up to {SCHEMA_VERSION}); upgrade cxrlab"
        )
    while version < SCHEMA_VERSION:
        data = MIGRATIONS[version](data)
        version += 1
        data["schema_version"] = version
    try:
        MetricsFile.model_validate(_nulls(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CxrError(
            f"{path}: not a metrics.json of schema version {data.get('schema_version')} ({where}: "
            f"{first['msg']})"
        ) from None
    return data


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 led a binary run with argmax metrics and kept the threshold's under ``operating_point``:
    the headline becomes the threshold's (from its confusion matrix), argmax moves under ``argmax``."""
    classes = list(data.get("classes") or [])
    for key in ("test", "val"):
        split = data.get(key)
        if isinstance(split, dict) and not data.get("multilabel"):
            data[key] = at_threshold_v1(split, classes)
    data.setdefault("warnings", single_class_warnings(data))
    return data


MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}

#: the decision-dependent keys of a split's single-label metrics (argmax copies live under ``argmax``)
DECISION_KEYS = (
    "accuracy", "accuracy_ci95", "balanced_accuracy", "balanced_accuracy_ci95", "per_class", "macro",
    "weighted", "confusion_matrix", "sensitivity", "sensitivity_ci95", "specificity", "specificity_ci95",
)  # fmt: skip


def at_threshold_v1(split: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    """A version-1 split with the threshold's numbers as its headline (argmax kept under ``argmax``)."""
    op = split.get("operating_point") or {}
    cm = op.get("confusion_matrix")
    if "accuracy" not in op or cm is None or len(classes) != 2:
        split.setdefault("decision", "argmax")
        return split
    split["argmax"] = {k: split[k] for k in DECISION_KEYS if k in split}
    split["argmax"]["single_class"] = single_class(split["argmax"].get("confusion_matrix"), classes)
    prf = from_confusion(np.asarray(cm, dtype=np.int64), classes)
    pos = op["positive_class"]
    for key in ("sensitivity", "specificity"):
        old_pos = (split["argmax"].get("per_class") or {}).get(pos, {})
        split["argmax"][key], split["argmax"][f"{key}_ci95"] = old_pos.get(key), old_pos.get(f"{key}_ci95")
    for name, row in prf["per_class"].items():  # AUCs are the probabilities', kept; CIs only where known
        old = (split.get("per_class") or {}).get(name, {})
        row["auc"] = old.get("auc")
        row["sensitivity_ci95"] = op.get("sensitivity_ci95") if name == pos else None
        row["specificity_ci95"] = op.get("specificity_ci95") if name == pos else None
    split.update(prf)
    split["accuracy"], split["accuracy_ci95"] = op["accuracy"], op.get("accuracy_ci95")
    split["balanced_accuracy_ci95"] = None
    split["sensitivity"], split["sensitivity_ci95"] = op.get("sensitivity"), op.get("sensitivity_ci95")
    split["specificity"], split["specificity_ci95"] = op.get("specificity"), op.get("specificity_ci95")
    split["decision"] = "threshold"
    split["single_class"] = single_class(prf["confusion_matrix"], classes)
    return split


PRF = ("precision", "recall", "f1")


def from_confusion(cm: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Per-class precision/sensitivity/specificity/F1/support, macro and weighted averages and the
    balanced accuracy of a confusion matrix (rows true, columns predicted)."""
    total = int(cm.sum())
    per_class: dict[str, dict[str, Any]] = {}
    support = cm.sum(axis=1)
    for c, name in enumerate(classes):
        tp, fn, fp = int(cm[c, c]), int(support[c] - cm[c, c]), int(cm[:, c].sum() - cm[c, c])
        tn = total - tp - fn - fp
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {
            "precision": precision,
            "recall": recall,
            "sensitivity": recall,
            "specificity": tn / (tn + fp) if tn + fp else float("nan"),
            "f1": f1,
            "support": int(support[c]),
        }
    rows = list(per_class.values())
    w = support / total if total else np.zeros(len(classes))
    present = [r["recall"] for r, s in zip(rows, support, strict=True) if s]
    return {
        "per_class": per_class,
        "macro": {k: float(np.mean([r[k] for r in rows])) for k in PRF},
        "weighted": {k: float(sum(r[k] * x for r, x in zip(rows, w, strict=True))) for k in PRF},
        "balanced_accuracy": float(np.mean(present)) if present else float("nan"),
        "confusion_matrix": cm.tolist(),
    }


def single_class(confusion: list[list[int]] | None, classes: list[str]) -> str | None:
    """The one class every image of a split was predicted as (None when two or more were)."""
    if not confusion or len(classes) < 2:
        return None
    predicted = np.asarray(confusion).sum(axis=0)
    used = np.flatnonzero(predicted)
    return classes[int(used[0])] if len(used) == 1 and predicted.sum() > 1 else None


def single_class_warnings(metrics: dict[str, Any]) -> list[str]:
    """'the model predicts only covid on validation (32 images) and test (62 images) …': for the top of the
    report and the CLI's last line; at the deployed decision, and at argmax when that differs."""
    out = []
    for rule, pick in (("decision", lambda s: s), ("argmax", lambda s: s.get("argmax") or {})):
        found = [
            (name, pick(metrics[key]).get("single_class"), metrics[key].get("n"))
            for key, name in (("val", "validation"), ("test", "test"))
            if isinstance(metrics.get(key), dict) and pick(metrics[key]).get("single_class")
        ]
        for cls in dict.fromkeys(c for _, c, _ in found):
            where = " and ".join(f"{name} ({n} images)" for name, c, n in found if c == cls)
            if rule == "decision":
                out.append(
                    f"the model predicts only '{cls}' on {where} at its decision rule: it does not tell "
                    "the classes apart"
                )
            else:
                out.append(
                    f"at argmax the model predicts only '{cls}' on {where}; only the threshold chosen on "
                    "validation separates the classes (its probabilities sit on one side of 0.5)"
                )
    return out


def _nulls(value: Any) -> Any:
    """NaN/inf as None, as metrics.json stores them (for validation before writing)."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nulls(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nulls(v) for v in value]
    if isinstance(value, np.floating | np.integer):
        return _nulls(value.item())
    return value
