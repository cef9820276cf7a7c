"""Statistics, written once for every user: classification metrics with bootstrap 95% confidence intervals,
paired comparisons (exact McNemar, Holm, paired bootstrap) and reading numbers from CSV/JSON cells.

Test sets in this field are small (62–624 images), so every headline number comes with a 95% bootstrap
interval (:func:`bootstrap_intervals`): scipy.stats.bootstrap, BCa (bias-corrected and accelerated),
resampling *patients* with replacement wherever patient ids exist (all images of a drawn patient come
along: a cluster bootstrap) and images otherwise, with a fixed seed. An interval the bootstrap cannot
estimate (one class on the test set, every resample giving the same value, too many resamples with one
class) is ``None`` with a note, never a zero-width "[1.000, 1.000]".
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import bootstrap, rankdata
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score, roc_curve


def _auc_rows(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Vectorised ROC AUC (Mann–Whitney) for each row; NaN where a row has one class only."""
    ranks = rankdata(scores, axis=1)
    n_pos = positive.sum(axis=1)
    n_neg = positive.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * positive).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auc_score(y: np.ndarray, probs: np.ndarray) -> float:
    """Binary AUC of class 1, or one-vs-rest macro AUC for more classes (NaN if undefined)."""
    if len(np.unique(y)) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return float(roc_auc_score(y, probs[:, 1]))
    present = np.unique(y)
    if len(present) < probs.shape[1]:
        return float(np.mean([roc_auc_score(y == c, probs[:, c]) for c in present]))
    return float(roc_auc_score(y, probs, multi_class="ovr", average="macro"))


def balanced_accuracy(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present in ``y``."""
    recalls = [np.mean(pred[y == c] == c) for c in range(n_classes) if np.any(y == c)]
    return float(np.mean(recalls))


def expected_calibration_error(y: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """ECE of the top-class confidence, equal-width bins."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


#: Resampled entries per block of bootstrap replicates (≈ 32 MB per int64 array): memory stays bounded at
#: any n. The generator's stream does not depend on the blocks, so the intervals are those of one draw.
BOOTSTRAP_CELLS = 1 << 22


def bootstrap_index_blocks(rng: np.random.Generator, n: int, n_boot: int):
    """Row blocks of the ``(n_boot, n)`` bootstrap index matrix, at most :data:`BOOTSTRAP_CELLS` each."""
    rows = max(1, BOOTSTRAP_CELLS // max(n, 1))
    for start in range(0, n_boot, rows) or [0]:  # n_boot = 0: one empty block, as one draw would give
        yield rng.integers(0, n, size=(min(rows, n_boot - start), n))


#: BCa needs a jackknife (every statistic once per resampling unit left out): above this many patients (or
#: images) the percentile interval is used, which BCa approaches at such sizes anyway.
BCA_MAX_UNITS = 3000
#: Resamples in which a metric is undefined (one class drawn): up to this share they are left out of a
#: percentile interval (and said so); above it the interval is not estimable.
MAX_UNDEFINED_SHARE = 0.05


@dataclass
class Intervals:
    """95% bootstrap intervals by metric (``None``: not estimable, its reason in ``notes``), a note for
    every interval that needs one, and the method in words (for metrics.json and the report)."""

    ci: dict[str, list[float] | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    method: str = ""
    unit: str = "image"


def resampling_units(groups: list[str] | None, n: int) -> tuple[np.ndarray, int]:
    """The resampling unit of each of ``n`` images (its patient's number; each image its own without
    groups) and the number of units."""
    if groups is None:
        return np.arange(n), n
    _, units = np.unique(np.asarray(list(groups), dtype=object).astype(str), return_inverse=True)
    return units.reshape(-1), int(units.max()) + 1 if n else 0


def bootstrap_intervals(
    statistic: Callable[[np.ndarray], dict[str, np.ndarray]],
    n: int,
    groups: list[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    columns: int | None = None,
) -> Intervals:
    """95% intervals of every metric ``statistic`` computes, by scipy.stats.bootstrap (BCa).

    ``statistic(weights)`` takes ``(B, n)`` image weights (how often each image's unit was drawn in each
    of B resamples; all ones is the test set itself) and returns ``{name: (B,) values}``, NaN where the
    metric is undefined. Units (patients from ``groups``, else images) are resampled with replacement, so a
    patient is never split. ``columns``: the most weights per resample a statistic expands to (default
    ``n``), which bounds each vectorised call to :data:`BOOTSTRAP_CELLS` cells.

    An interval is ``None`` (not estimable) when the metric is undefined on the test set, when every
    resample gives the same value, or when more than :data:`MAX_UNDEFINED_SHARE` of resamples leave it
    undefined; with fewer undefined resamples (or where BCa cannot be computed) it is the percentile
    interval of the defined ones, and ``notes`` says so. An estimate on the edge of (or outside) its
    interval is noted too."""
    out = Intervals(unit="patient" if groups is not None else "image")
    if n_boot <= 0 or n == 0:
        return out
    units, n_units = resampling_units(groups, n)
    point = {k: float(v[0]) for k, v in statistic(np.ones((1, n))).items()}
    names = list(point)
    if not names:  # a statistic with nothing to estimate (e.g. a subgroup with no computable metric)
        return out
    if n_units < 2:  # every resample is the test set itself: nothing to resample
        word = "patient" if groups is not None else "image"
        for name in names:
            out.ci[name] = None
            out.notes[name] = f"not estimable: the test images come from a single {word}"
        return out

    def stat(ids: np.ndarray, axis: int = -1) -> np.ndarray:
        ids = np.moveaxis(np.asarray(ids), axis, -1)
        flat = ids.reshape(-1, ids.shape[-1])
        rows = len(flat)
        offsets = (flat + n_units * np.arange(rows)[:, None]).ravel()
        counts = np.bincount(offsets, minlength=rows * n_units).reshape(rows, n_units)
        values = statistic(counts[:, units].astype(np.float64))
        return np.stack([values[k] for k in names]).reshape(len(names), *ids.shape[:-1])

    method = "BCa" if n_units <= BCA_MAX_UNITS else "percentile"
    batch = max(1, BOOTSTRAP_CELLS // max(columns or n, 1))
    with warnings.catch_warnings():  # degenerate and undefined resamples are handled below, per metric
        warnings.simplefilter("ignore")
        res = bootstrap(
            (np.arange(n_units),), stat, n_resamples=n_boot, batch=batch, vectorized=True, method=method,
            rng=np.random.default_rng(seed),
        )  # fmt: skip
    lows = np.atleast_1d(res.confidence_interval.low)
    highs = np.atleast_1d(res.confidence_interval.high)
    dist = np.asarray(res.bootstrap_distribution).reshape(len(names), -1)
    unit_word = "patients" if groups is not None else "images"
    out.method = (
        f"{'BCa' if method == 'BCa' else 'percentile'} bootstrap, {n_boot} resamples of the {n_units} "
        f"{unit_word} (scipy.stats.bootstrap, seed {seed})"
    )
    for j, name in enumerate(names):
        out.ci[name], note = _interval(point[name], lows[j], highs[j], dist[j], method)
        if note:
            out.notes[name] = note
    return out


def _interval(
    estimate: float, low: float, high: float, values: np.ndarray, method: str
) -> tuple[list[float] | None, str | None]:
    """One metric's interval and its note (see :func:`bootstrap_intervals`)."""
    if not np.isfinite(estimate):
        return None, "not estimable: undefined on these images (one class only)"
    finite = values[np.isfinite(values)]
    undefined = len(values) - len(finite)
    if not len(finite) or undefined > MAX_UNDEFINED_SHARE * len(values):
        return None, (
            f"not estimable: {undefined} of {len(values)} resamples drew one class only (too few positives "
            "or negatives to bootstrap)"
        )
    if np.ptp(finite) <= 1e-12:
        return None, (
            f"not estimable: every resample gives {finite[0]:.3f} (no spread to estimate, e.g. perfect "
            "separation on a small test set)"
        )
    note = None
    if undefined or not (np.isfinite(low) and np.isfinite(high)):
        low, high = np.percentile(finite, [2.5, 97.5])
        note = (
            f"percentile interval of the {len(finite)} resamples where it is defined ({undefined} drew one "
            "class only)"
            if undefined
            else f"percentile interval ({method} not computable here)"
        )
    ci = [float(low), float(high)]
    if not ci[0] < estimate < ci[1]:
        edge = (
            f"the estimate {estimate:.3f} lies on the edge of its interval or outside it: the resamples "
            "are skewed (few positives, or a metric at its bound); read the interval as a rough range"
        )
        note = f"{note}; {edge}" if note else edge
    return ci, note


def bootstrap_ci(
    y: np.ndarray,
    probs: np.ndarray,
    pred: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    groups: list[str] | None = None,
) -> dict[str, list[float] | None]:
    """95% intervals of accuracy, balanced accuracy, AUC, per-class sens/spec (:func:`classification_cis`)."""
    return classification_cis(y, probs, pred, n_boot, seed, groups).ci


def classification_cis(
    y: np.ndarray,
    probs: np.ndarray,
    pred: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    groups: list[str] | None = None,
) -> Intervals:
    """:func:`bootstrap_intervals` of accuracy, balanced accuracy, AUC (binary: of class 1; else the
    one-vs-rest macro over the classes present) and each class's sensitivity and specificity, resampling
    patients (``groups``) or images."""
    y, pred = np.asarray(y), np.asarray(pred)
    k = probs.shape[1]
    correct = (y == pred).astype(np.float64)
    present = [c for c in range(k) if np.any(y == c)]

    def statistic(w: np.ndarray) -> dict[str, np.ndarray]:
        with np.errstate(invalid="ignore", divide="ignore"):
            out = {"accuracy": w @ correct / w.sum(1)}
            sens = {}
            for c in range(k):
                pos = (y == c).astype(np.float64)
                sens[c] = w @ (correct * pos) / (w @ pos)
                out[f"sensitivity_{c}"] = sens[c]
                out[f"specificity_{c}"] = w @ ((pred != c) & (y != c)) / (w @ (1 - pos))
        # every class of the test set must be drawn for the resample's mean recall or AUC to be the metric
        out["balanced_accuracy"] = np.mean([sens[c] for c in present], axis=0)
        if k == 2:
            out["auc"] = weighted_auc(probs[:, 1], y == 1, w)
        else:
            out["auc"] = np.mean([weighted_auc(probs[:, c], y == c, w) for c in present], axis=0)
        return out

    return bootstrap_intervals(statistic, len(y), groups, n_boot, seed)


def weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of ``scores`` for each row of ``weights`` ``(B, n)`` (ties count one half): the weighted
    Mann–Whitney statistic. NaN where a row has no positive or no negative weight."""
    order = np.argsort(scores, kind="mergesort")
    s, pos = scores[order], np.asarray(positive)[order].astype(bool)
    w = weights[:, order]
    neg_w = np.where(pos, 0.0, w)
    cum = np.cumsum(neg_w, axis=1)
    # tie groups: first and last position of each element's score
    first = np.searchsorted(s, s, side="left")
    last = np.searchsorted(s, s, side="right") - 1
    below = np.where(first > 0, cum[:, np.maximum(first - 1, 0)], 0.0)
    tied = cum[:, last] - below
    num = (np.where(pos, w, 0.0) * (below + 0.5 * tied)).sum(axis=1)
    w_pos, w_neg = np.where(pos, w, 0.0).sum(axis=1), neg_w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((w_pos > 0) & (w_neg > 0), num / (w_pos * w_neg), np.nan)


def ci_text(ci: list[float] | None, fmt: str = ".3f") -> str:
    """``[95% CI 0.806–0.952]``, or ``[95% CI not estimable]`` for a ``None`` interval."""
    if not ci or not all(np.isfinite(ci)):
        return "[95% CI not estimable]"
    return f"[95% CI {ci[0]:{fmt}}–{ci[1]:{fmt}}]"


def percentile_ci(values: np.ndarray) -> list[float]:
    """The 95% percentile interval of bootstrap replicates (non-finite replicates dropped; NaNs if none)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return [float("nan"), float("nan")]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def paired_bootstrap_difference(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    groups: list[str] | None = None,
) -> list[float]:
    """95% CI of accuracy(a) - accuracy(b) on the same images, pairs kept together: patients resampled with
    replacement when ``groups`` names them (a patient is never split), else images."""
    rng = np.random.default_rng(seed)
    if groups is None:
        blocks = bootstrap_index_blocks(rng, len(correct_a), n_boot)
        diffs = [correct_a[idx].mean(1) - correct_b[idx].mean(1) for idx in blocks]
        return percentile_ci(np.concatenate(diffs))
    units, p = resampling_units(groups, len(correct_a))
    diff = np.asarray(correct_a, dtype=np.float64) - np.asarray(correct_b, dtype=np.float64)
    out = []
    for idx in bootstrap_index_blocks(rng, p, n_boot):  # patients drawn; each image weighted by its draws
        w = np.stack([np.bincount(row, minlength=p) for row in idx])[:, units].astype(np.float64)
        out.append((w @ diff) / w.sum(1))
    return percentile_ci(np.concatenate(out))


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar p-value: a binomial test on the discordant pairs."""
    from scipy.stats import binomtest

    n = a_only + b_only
    return 1.0 if n == 0 else float(binomtest(a_only, n, 0.5).pvalue)


def holm(pvalues: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (family-wise error over all pairs)."""
    m = len(pvalues)
    order = np.argsort(pvalues)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted.tolist()


def to_number(value: Any) -> float | int | None:
    """A CSV/JSON cell as a number: ints stay ints ("3"), floats floats ("0.5", "1e-3"); empty, missing,
    non-numeric and non-finite values are None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value if math.isfinite(value) else None
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    return int(number) if number.is_integer() and text.lstrip("+-").isdigit() else number


def averaged_prf(y: np.ndarray, pred: np.ndarray, n_classes: int) -> dict[str, dict[str, float]]:
    """Macro and weighted (by support) precision, recall and F1 over all ``n_classes`` classes
    (sklearn's ``precision_recall_fscore_support``; a class never predicted has precision 0)."""
    out = {}
    for average in ("macro", "weighted"):
        if not len(y):
            out[average] = {"precision": float("nan"), "recall": float("nan"), "f1": float("nan")}
            continue
        p, r, f, _ = precision_recall_fscore_support(
            y, pred, labels=list(range(n_classes)), average=average, zero_division=0
        )
        out[average] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    return out


def classification_metrics(
    y: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    n_boot: int = 1000,
    seed: int = 0,
    pred: np.ndarray | None = None,
    groups: list[str] | None = None,
) -> dict[str, Any]:
    """Everything metrics.json reports for one split (``pred`` defaults to argmax); ``groups``: each
    image's patient, so that the bootstrap resamples patients (:func:`classification_cis`)."""
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    pred = probs.argmax(axis=1) if pred is None else np.asarray(pred)
    eps = 1e-12
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], eps, 1.0)))) if len(y) else float("nan")
    cm = confusion_matrix(y, pred, labels=list(range(k)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, labels=list(range(k)), zero_division=0
    )
    intervals = classification_cis(y, probs, pred, n_boot, seed, groups)
    ci = intervals.ci
    averages = averaged_prf(y, pred, k)
    per_class = {}
    for c, name in enumerate(classes):
        tn = cm.sum() - cm[c, :].sum() - cm[:, c].sum() + cm[c, c]
        fp = cm[:, c].sum() - cm[c, c]
        specificity = float(tn / (tn + fp)) if tn + fp else float("nan")
        auc_c = float(roc_auc_score(y == c, probs[:, c])) if 0 < (y == c).sum() < len(y) else float("nan")
        per_class[name] = {
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "sensitivity": float(recall[c]),
            "specificity": specificity,
            "f1": float(f1[c]),
            "support": int(support[c]),
            "auc": auc_c,
            "sensitivity_ci95": ci.get(f"sensitivity_{c}"),
            "specificity_ci95": ci.get(f"specificity_{c}"),
        }
    return {
        "n": int(len(y)),
        "accuracy": float(np.mean(pred == y)) if len(y) else float("nan"),
        "accuracy_ci95": ci.get("accuracy"),
        "balanced_accuracy": balanced_accuracy(y, pred, k) if len(y) else float("nan"),
        "balanced_accuracy_ci95": ci.get("balanced_accuracy"),
        "auc": auc_score(y, probs),
        "auc_ci95": ci.get("auc"),
        "loss": loss,
        "ece": expected_calibration_error(y, probs),
        "per_class": per_class,
        **averages,
        "confusion_matrix": cm.tolist(),
        "bootstrap_resamples": int(n_boot),
        "ci_method": intervals.method,
        "bootstrap_unit": intervals.unit,
        "ci_notes": intervals.notes,
    }


def roc_points(y: np.ndarray, probs: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """ROC curve (fpr, tpr) per class, one-vs-rest (binary: class 1 only)."""
    classes = [1] if probs.shape[1] == 2 else list(range(probs.shape[1]))
    out = {}
    for c in classes:
        if 0 < (y == c).sum() < len(y):
            fpr, tpr, _ = roc_curve(y == c, probs[:, c])
            out[c] = (fpr, tpr)
    return out


def operating_threshold(
    y: np.ndarray, p_positive: np.ndarray, target_sensitivity: float | None = None, positive: str = "positive"
) -> tuple[float, str]:
    """:func:`youden_threshold` and how it was chosen, in words for metrics.json and the report.

    A validation split without positives (or without negatives) has no ROC curve: the threshold falls
    back to 0.5 and the method says so, instead of claiming Youden's J or a sensitivity target."""
    y = np.asarray(y)
    n_pos = int((y == 1).sum())
    if n_pos == 0 or n_pos == len(y):
        missing = f"no {positive} images" if n_pos == 0 else f"only {positive} images"
        return 0.5, (
            f"fallback 0.5: the validation split has {missing} ({len(y)} in all), so no threshold "
            "could be chosen on it"
        )
    method = (
        f"sensitivity >= {target_sensitivity} on validation"
        if target_sensitivity
        else "Youden's J on validation"
    )
    return youden_threshold(y, p_positive, target_sensitivity), method


def youden_threshold(y: np.ndarray, p_positive: np.ndarray, target_sensitivity: float | None = None) -> float:
    """Operating threshold on P(positive): Youden's J, or the highest meeting a target sensitivity.

    The cut is placed halfway between the chosen validation score and the next lower one: the
    validation confusion matrix is the same, but the threshold no longer sits exactly on one
    validation positive (with well separated validation data that edge would be extreme, and test
    positives just below it would be missed)."""
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y, p_positive, drop_intermediate=False)
    thr = np.clip(thr, 0.0, 1.0)
    if target_sensitivity is not None:
        ok = np.flatnonzero(tpr >= target_sensitivity)
        i = int(ok[0]) if len(ok) else len(thr) - 1
    else:
        i = int(np.argmax(tpr - fpr))
    return float((thr[i] + thr[i + 1]) / 2) if i + 1 < len(thr) else float(thr[i])
