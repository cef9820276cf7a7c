"""Statistics, written once for every user: classification metrics with bootstrap 95% confidence intervals,
paired comparisons (exact McNemar, Holm, paired bootstrap) and reading numbers from CSV/JSON cells.

Test sets in this field are small (62–624 images), so every headline number comes with a
percentile bootstrap interval (resampling test images with replacement, fixed seed).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import rankdata
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


def bootstrap_ci(
    y: np.ndarray, probs: np.ndarray, pred: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> dict[str, list[float]]:
    """95% percentile intervals for accuracy, balanced accuracy, AUC and per-class sens/spec."""
    n, k = probs.shape
    if n_boot <= 0 or n == 0:
        return {}
    rng = np.random.default_rng(seed)
    blocks = [_bootstrap_replicates(y, probs, pred, idx, k) for idx in bootstrap_index_blocks(rng, n, n_boot)]
    return {key: percentile_ci(np.concatenate([b[key] for b in blocks])) for key in blocks[0]}


def _bootstrap_replicates(
    y: np.ndarray, probs: np.ndarray, pred: np.ndarray, idx: np.ndarray, k: int
) -> dict[str, np.ndarray]:
    yb, pb = y[idx], pred[idx]
    correct = yb == pb
    out: dict[str, np.ndarray] = {"accuracy": correct.mean(axis=1)}
    recalls = []
    for c in range(k):
        pos = yb == c
        with np.errstate(invalid="ignore", divide="ignore"):
            sens = (correct & pos).sum(1) / pos.sum(1)
            neg = ~pos
            spec = ((pb != c) & neg).sum(1) / neg.sum(1)
        recalls.append(sens)
        out[f"sensitivity_{c}"] = sens
        out[f"specificity_{c}"] = spec
    out["balanced_accuracy"] = np.nanmean(np.stack(recalls), axis=0)
    if k == 2:
        out["auc"] = _auc_rows(probs[idx, 1], yb == 1)
    else:
        out["auc"] = np.nanmean(np.stack([_auc_rows(probs[idx, c], yb == c) for c in range(k)]), axis=0)
    return out


def percentile_ci(values: np.ndarray) -> list[float]:
    """The 95% percentile interval of bootstrap replicates (non-finite replicates dropped; NaNs if none)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return [float("nan"), float("nan")]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def paired_bootstrap_difference(
    correct_a: np.ndarray, correct_b: np.ndarray, n_boot: int = 2000, seed: int = 0
) -> list[float]:
    """95% CI of accuracy(a) - accuracy(b) on the same images, resampling images (pairs kept together)."""
    rng = np.random.default_rng(seed)
    blocks = bootstrap_index_blocks(rng, len(correct_a), n_boot)
    return percentile_ci(np.concatenate([correct_a[idx].mean(1) - correct_b[idx].mean(1) for idx in blocks]))


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
) -> dict[str, Any]:
    """Everything metrics.json reports for one split (``pred`` defaults to argmax)."""
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
    ci = bootstrap_ci(y, probs, pred, n_boot, seed)
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
