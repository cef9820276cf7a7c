"""The audit of a multi-label task (a label file of findings): duplicates and patients across splits as
for single-label data, and the metadata-only shortcut baseline **per finding**.

The baseline asks, for each finding, whether the label file's metadata (view position, age, sex) and the
file headers (size, format, bit depth…) predict it without a pixel: a random forest scored by
patient-grouped, stratified cross-validation (:func:`cxrlab.audit.baselines.make_folds`), as a ROC AUC with
a bootstrap 95% CI, plus each metadata column alone. AP films are taken of sicker patients, so "view
position predicts effusion" is a known shortcut in NIH ChestX-ray14.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from cxrlab.audit.baselines import _forest, make_folds, metadata_matrix
from cxrlab.stats import percentile_ci

#: a finding's metadata-only AUC whose CI lower bound reaches this gets a data warning
SHORTCUT_AUC = 0.60
BOOTSTRAP = 200


def label_metadata(index: Any, samples: list[Any]) -> tuple[np.ndarray, list[str]]:
    """Columns from the label file's metadata: view (one-hot), age (number), sex (one-hot)."""
    table = getattr(index, "table", None)
    columns: list[np.ndarray] = []
    names: list[str] = []
    if table is None:
        return np.zeros((len(samples), 0)), names
    for role in ("view", "age", "sex"):
        column = table.roles.get(role)
        if not column or column not in table.columns:
            continue
        values = table.column(column, samples)
        if role == "age":
            numbers = np.array([_number(v) for v in values])
            if np.isfinite(numbers).sum() > 1:
                columns.append(np.where(np.isfinite(numbers), numbers, np.nanmedian(numbers)))
                names.append(column)
            continue
        levels = sorted(v for v in set(values) if v)
        for level in levels[:1] if len(levels) == 2 else levels:  # two levels: one column says it all
            if level:
                columns.append(np.array([v == level for v in values], dtype=np.float64))
                names.append(f"{column}={level}")
    if not columns:
        return np.zeros((len(samples), 0)), names
    return np.stack(columns, axis=1), names


def _number(text: str) -> float:
    digits = "".join(ch for ch in str(text) if ch.isdigit() or ch == ".")
    try:
        return float(digits)
    except ValueError:
        return float("nan")


def _auc_ci(y: np.ndarray, score: np.ndarray, seed: int) -> list[float]:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    values = []
    for _ in range(BOOTSTRAP):
        i = rng.integers(0, len(y), len(y))
        if 0 < y[i].sum() < len(i):
            values.append(roc_auc_score(y[i], score[i]))
    return percentile_ci(np.array(values))


def findings_baseline(
    index: Any,
    samples: list[Any],
    props: list[dict[str, Any]] | None,
    groups: np.ndarray,
    seed: int = 0,
) -> dict[str, Any]:
    """Per finding: can metadata alone (label-file columns + file headers) predict it? Cross-validated
    ROC AUC with a 95% CI, and each column's own AUC (the strongest first)."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_predict

    X_label, names = label_metadata(index, samples)
    if props:
        X_head, head_names = metadata_matrix(props)
        X = np.concatenate([X_label, X_head], axis=1)
        names = names + head_names
    else:
        X = X_label
    if X.shape[1] == 0:
        return {"skipped": "no metadata: the label file names no view/age/sex column and no file headers"}
    keep = [j for j in range(X.shape[1]) if len(np.unique(X[:, j])) > 1]
    X, names = X[:, keep], [names[j] for j in keep]
    if not names:
        return {"skipped": "every metadata column has the same value for every image"}
    targets = np.stack([s.targets for s in samples])
    per: dict[str, Any] = {}
    for j, finding in enumerate(index.findings):
        known = ~np.isnan(targets[:, j])
        y = targets[known, j].astype(int)
        folds = make_folds(y, groups[known], seed)
        if folds is None:
            per[finding] = {
                "positives": int(y.sum()),
                "skipped": "too few positives (or patients) to cross-validate",
            }
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            proba = cross_val_predict(_forest(seed)(), X[known], y, cv=folds, method="predict_proba")[:, 1]
        signal = []
        for c, name in enumerate(names):
            a = float(roc_auc_score(y, X[known, c]))
            signal.append({"column": name, "auc": round(max(a, 1 - a), 4),
                           "direction": "higher" if a >= 0.5 else "lower"})  # fmt: skip
        signal.sort(key=lambda s: -s["auc"])
        per[finding] = {
            "n": int(known.sum()),
            "positives": int(y.sum()),
            "auc": float(roc_auc_score(y, proba)),
            "auc_ci95": _auc_ci(y, proba, seed),
            "folds": len(folds),
            "signal": signal[:4],
        }
    return {
        "model": "random forest (50 trees) on metadata only (label-file view/age/sex + file headers)",
        "features": names,
        "per_finding": per,
    }


def findings_warnings(baseline: dict[str, Any]) -> list[str]:
    """One sentence per finding that metadata alone predicts (CI lower bound ≥ :data:`SHORTCUT_AUC`)."""
    out = []
    for finding, entry in baseline.get("per_finding", {}).items():
        ci = entry.get("auc_ci95")
        if ci and np.isfinite(ci[0]) and ci[0] >= SHORTCUT_AUC:
            top = ", ".join(f"{s['column']} ({s['auc']:.2f})" for s in entry["signal"][:2])
            out.append(
                f"{finding} can be predicted from metadata alone, without any pixel: AUC {entry['auc']:.2f} "
                f"[95% CI {ci[0]:.2f}–{ci[1]:.2f}]; strongest: {top}. A CNN may learn the same shortcut "
                "(e.g. AP films are taken of sicker patients); compare its AUC with this baseline."
            )
    return out


def finding_counts(samples: list[Any], findings: list[str]) -> dict[str, dict[str, int]]:
    """Positives per split and finding."""
    out: dict[str, dict[str, int]] = {}
    for split in ("train", "val", "test"):
        rows = [s.targets for s in samples if s.split == split]
        t = np.stack(rows) if rows else np.zeros((0, len(findings)))
        out[split] = {f: int((np.nan_to_num(t[:, j]) > 0).sum()) for j, f in enumerate(findings)}
    return out


def combination_labels(samples: list[Any], findings: list[str]) -> tuple[list[int], list[str]]:
    """Each image's set of findings as one label (for the duplicate check's 'different labels')."""
    names: dict[str, int] = {}
    labels = []
    for s in samples:
        key = "|".join(f for f, v in zip(findings, s.targets, strict=True) if v > 0) or "no finding"
        labels.append(names.setdefault(key, len(names)))
    return labels, list(names)
