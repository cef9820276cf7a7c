"""Shortcut baselines: how well can the labels be predicted *without* looking at the anatomy?

* metadata-only: a random forest that sees only acquisition properties (size, aspect ratio,
  format, colour mode, bit depth, bytes per pixel), never a pixel;
* image statistics: a linear (ridge) classifier on 8×8 thumbnails and a 16-bin intensity histogram.

Both are scored by patient-grouped, stratified 5-fold cross-validation over all images (and, when
the data has train and test splits, trained on train+val and scored on test, like the CNN), next
to chance: the majority-class share for accuracy, 1/k for balanced accuracy.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from cxrlab.audit.properties import CATEGORICAL, DICOM_CATEGORICAL, NUMERIC, PROPERTIES, property_keys
from cxrlab.stats import balanced_accuracy, bootstrap_ci

FOLDS = 5
BOOTSTRAP = 500


Folds = list[tuple[np.ndarray, np.ndarray]]


def make_folds(y: np.ndarray, groups: np.ndarray, seed: int = 0) -> Folds | None:
    """Patient-grouped, stratified k-fold splits (k ≤ 5), shared by every baseline; None if too few images."""
    from sklearn.model_selection import StratifiedGroupKFold

    counts = np.bincount(y)
    k = int(min(FOLDS, counts[counts > 0].min(), len(np.unique(groups)))) if len(y) else 0
    if k < 2 or len(np.unique(y)) < 2:
        return None
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(splitter.split(np.zeros(len(y)), y, groups))


def cross_validated(make: Callable[[], Any], X: np.ndarray, y: np.ndarray, folds: Folds) -> np.ndarray:
    """Out-of-fold predictions over the given folds."""
    from sklearn.model_selection import cross_val_predict

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cross_val_predict(make(), X, y, cv=folds)


def _scores(
    y: np.ndarray, pred: np.ndarray, k: int, seed: int, groups: list[str] | None = None
) -> dict[str, Any]:
    """Accuracy and balanced accuracy with 95% CIs, patients resampled when ``groups`` names them."""
    one_hot = np.eye(k)[pred]
    ci = bootstrap_ci(y, one_hot, pred, BOOTSTRAP, seed, groups)
    return {
        "n": int(len(y)),
        "ci_unit": "patient" if groups is not None else "image",
        "accuracy": float(np.mean(pred == y)),
        "accuracy_ci95": ci.get("accuracy"),
        "balanced_accuracy": balanced_accuracy(y, pred, k),
        "balanced_accuracy_ci95": ci.get("balanced_accuracy"),
    }


def _chance(y: np.ndarray, k: int) -> dict[str, float]:
    return {"chance": float(np.bincount(y, minlength=k).max() / len(y)), "chance_balanced": 1.0 / k}


def _p_value(y: np.ndarray, pred: np.ndarray, chance: float) -> float:
    """One-sided binomial test: more correct than always guessing the majority class would give?"""
    from scipy.stats import binomtest

    return float(binomtest(int(np.sum(pred == y)), len(y), chance, alternative="greater").pvalue)


def _evaluate(
    make: Callable[[], Any],
    X: np.ndarray,
    y: np.ndarray,
    folds: Folds | None,
    splits: np.ndarray,
    k: int,
    seed: int,
    groups: list[str] | None = None,
) -> dict[str, Any]:
    """Cross-validated scores, chance, p-value, and train(+val) → test scores when there is a test split;
    CIs resample the patients ``groups`` names (None: images)."""
    if folds is None:
        return {"skipped": "too few images per class (or patients) for cross-validation"}
    pred = cross_validated(make, X, y, folds)
    out: dict[str, Any] = {**_scores(y, pred, k, seed, groups), **_chance(y, k), "folds": len(folds)}
    out["p_value"] = _p_value(y, pred, out["chance"])
    test = splits == "test"
    if test.any() and (~test).any() and len(np.unique(y[~test])) == k:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = make().fit(X[~test], y[~test])
        test_groups = None if groups is None else [g for g, t in zip(groups, test, strict=True) if t]
        out["train_to_test"] = {
            **_scores(y[test], model.predict(X[test]), k, seed, test_groups),
            **_chance(y[test], k),
        }
    return out


# --------------------------------------------------------------------------- metadata


def metadata_matrix(
    props: list[dict[str, Any]], only: tuple[str, ...] = PROPERTIES
) -> tuple[np.ndarray, list[str]]:
    """Numeric properties as they are, categorical ones (format, colour mode) one-hot."""
    columns: list[np.ndarray] = []
    names: list[str] = []
    for key in only:
        if key in NUMERIC or key == "bit_depth":
            columns.append(np.array([float(p[key]) for p in props]))
            names.append(key)
        elif key in CATEGORICAL or key in DICOM_CATEGORICAL:
            values = [str(p[key]) for p in props]
            for level in sorted(set(values)):
                columns.append(np.array([v == level for v in values], dtype=np.float64))
                names.append(f"{key}={level}")
    return np.stack(columns, axis=1), names


def _forest(seed: int) -> Callable[[], Any]:
    from sklearn.ensemble import RandomForestClassifier

    return lambda: RandomForestClassifier(
        n_estimators=50, min_samples_leaf=3, max_depth=12, random_state=seed, n_jobs=1
    )


def _tree(seed: int) -> Callable[[], Any]:
    from sklearn.tree import DecisionTreeClassifier

    return lambda: DecisionTreeClassifier(min_samples_leaf=3, random_state=seed)


def metadata_baseline(
    props: list[dict[str, Any]],
    y: np.ndarray,
    folds: Folds | None,
    splits: np.ndarray,
    k: int,
    seed: int = 0,
    groups: list[str] | None = None,
) -> dict[str, Any]:
    """A classifier that sees only acquisition properties, never pixels; and which properties
    carry the signal. ``groups``: each image's patient (CIs resample patients)."""
    keys = property_keys(props)  # type: ignore[arg-type]
    X, names = metadata_matrix(props, keys)
    out = {
        "model": "random forest (50 trees) on acquisition properties only",
        "features": list(keys),
        **_evaluate(_forest(seed), X, y, folds, splits, k, seed, groups),
    }
    if "skipped" in out:
        return out
    signal = []
    for key in keys:
        Xk, _ = metadata_matrix(props, (key,))
        if len(np.unique(Xk, axis=0)) < 2:
            signal.append({"property": key, "balanced_accuracy": None, "note": "the same for every image"})
            continue
        pred = cross_validated(_tree(seed), Xk, y, folds)  # type: ignore[arg-type]
        signal.append({"property": key, "balanced_accuracy": balanced_accuracy(y, pred, k)})
    out["signal"] = sorted(signal, key=lambda s: -(s["balanced_accuracy"] or 0.0))
    return out


# --------------------------------------------------------------------------- image statistics


def image_matrix(thumbs: np.ndarray) -> np.ndarray:
    """8×8 block means of 64×64 thumbnails plus a 16-bin intensity histogram (fractions)."""
    n, size, _ = thumbs.shape
    block = size // 8
    means = thumbs[:, : block * 8, : block * 8].reshape(n, 8, block, 8, block).mean(axis=(2, 4)) / 255.0
    hist = np.stack([np.bincount(t.reshape(-1) // 16, minlength=16) / t.size for t in thumbs])
    return np.concatenate([means.reshape(n, 64), hist], axis=1)


def image_baseline(
    thumbs: np.ndarray,
    y: np.ndarray,
    folds: Folds | None,
    splits: np.ndarray,
    k: int,
    seed: int = 0,
    groups: list[str] | None = None,
) -> dict[str, Any]:
    """A linear model on 8×8 thumbnails and intensity histograms (ridge: closed form, fast); ``groups``:
    each image's patient (CIs resample patients)."""
    from sklearn.linear_model import RidgeClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def make() -> Any:
        return make_pipeline(StandardScaler(), RidgeClassifier(alpha=1.0))

    return {
        "model": "linear (ridge) classifier on 8x8 thumbnails + 16-bin intensity histogram",
        **_evaluate(make, image_matrix(thumbs), y, folds, splits, k, seed, groups),
    }
