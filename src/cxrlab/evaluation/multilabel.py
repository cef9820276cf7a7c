"""Multi-label findings: per-finding ROC AUC with patient-level bootstrap CIs, macro and micro AUC,
average precision, prevalence, per-finding operating thresholds chosen on validation data.

Targets are float matrices ``(N, F)``: 1, 0, or NaN (ignored: an uncertain or unknown label), left out
of every metric of that finding. Point estimates are scikit-learn's; the bootstrap is written here because
it resamples *patients* (all images of a drawn patient come along, so a patient is never split) and must be
fast: each resample is a weight per image (how often its patient was drawn) and the weighted
Mann–Whitney AUC of every resample is computed at once (:func:`weighted_auc`).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

import cxrlab.stats
from cxrlab.stats import operating_threshold, percentile_ci


def sigmoid(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Per-finding probabilities from logits ``(N, F)``."""
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64) / temperature))


def bootstrap_weights(groups: list[str] | None, n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """``(n_boot, n)`` resampling weights: patients drawn with replacement (as many draws as patients),
    each image weighted by how often its patient was drawn; without groups each image is its own.

    Every image of a patient has the same weight in every resample: a patient is never split."""
    keys = list(groups) if groups is not None else [str(i) for i in range(n)]
    _, patient = np.unique(np.asarray(keys, dtype=object).astype(str), return_inverse=True)
    p = int(patient.max()) + 1 if n else 0
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(p, np.full(p, 1.0 / p), size=n_boot) if p else np.zeros((n_boot, 0))
    return counts[:, patient].astype(np.float64)


def weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of ``scores`` for each row of ``weights`` ``(B, n)`` (ties count one half): the weighted
    Mann–Whitney statistic. NaN where a row has no positive or no negative weight."""
    order = np.argsort(scores, kind="mergesort")
    s, pos = scores[order], positive[order].astype(bool)
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


def _by_replicate_blocks(weights: np.ndarray, columns: int, per_block: Any) -> np.ndarray:
    """``per_block(weights[i:j])`` over row blocks of the ``(n_boot, n)`` weights, concatenated: each block's
    temporaries span at most :data:`cxrlab.stats.BOOTSTRAP_CELLS` cells of ``columns`` (an AUC over all
    known cells of NIH's 25,596-image test split has 358k columns: GBs per temporary in one piece)."""
    rows = max(1, cxrlab.stats.BOOTSTRAP_CELLS // max(columns, 1))
    return np.concatenate([per_block(weights[i : i + rows]) for i in range(0, len(weights), rows)])


def _auc_of(scores: np.ndarray, positive: np.ndarray, known: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """:func:`weighted_auc` over the ``known`` images (1-D mask) or known image × finding cells (2-D)."""
    if known.ndim == 2:
        weights = np.broadcast_to(weights[:, :, None], (len(weights), *known.shape))
    return weighted_auc(scores, positive, weights[:, known])


def _rate_of(hit: np.ndarray, among: np.ndarray, known: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return _rate(hit[None, :], among[None, :], weights[:, known])


def _rate(hit: np.ndarray, among: np.ndarray, weights: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights * (hit & among)).sum(1) / (weights * among).sum(1)


def _ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of one finding's probabilities (equal-width bins)."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    return float(sum(abs(y[which == b].mean() - p[which == b].mean()) * (which == b).mean()
                     for b in range(bins) if (which == b).any()))  # fmt: skip


def choose_thresholds(
    targets: np.ndarray, probs: np.ndarray, findings: list[str], policy: str, target_sensitivity: float | None
) -> dict[str, dict[str, Any]]:
    """An operating threshold per finding, chosen on these (validation) targets with the binary policy:
    Youden's J, a target sensitivity, or 0.5 (``policy == "argmax"``); a finding without positives or
    negatives on validation falls back to 0.5 and says so."""
    out = {}
    for j, name in enumerate(findings):
        known = ~np.isnan(targets[:, j])
        if policy == "argmax" and target_sensitivity is None:
            out[name] = {"threshold": 0.5, "method": "fixed 0.5"}
            continue
        thr, method = operating_threshold(
            targets[known, j].astype(int), probs[known, j], target_sensitivity, name
        )
        out[name] = {"threshold": float(thr), "method": method}
    return out


def prevalence(targets: dict[str, np.ndarray], findings: list[str]) -> dict[str, dict[str, Any]]:
    """Per split and finding: positives, known labels (not NaN) and their ratio."""
    out: dict[str, dict[str, Any]] = {}
    for split, t in targets.items():
        known = ~np.isnan(t)
        pos = np.nan_to_num(t) > 0
        out[split] = {
            name: {
                "positives": int(pos[:, j].sum()),
                "known": int(known[:, j].sum()),
                "prevalence": float(pos[:, j].sum() / known[:, j].sum()) if known[:, j].any() else None,
            }
            for j, name in enumerate(findings)
        }
    return out


def multilabel_metrics(
    targets: np.ndarray,
    probs: np.ndarray,
    findings: list[str],
    thresholds: dict[str, dict[str, Any]] | None = None,
    groups: list[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Everything metrics.json reports for one split of a multi-label task.

    Per finding: n (known labels), positives, prevalence, ROC AUC with its 95% CI, average precision,
    Brier score and ECE, and sensitivity/specificity (with CIs) at its threshold. Over findings: macro AUC
    (mean of the defined per-finding AUCs) and micro AUC (all known cells pooled), with CIs; ``auc`` is the
    macro AUC (the headline number sweeps and comparisons read). A finding whose AUC is undefined (no
    positive or no negative here) is reported as None with a note, never a crash."""
    n, k = targets.shape
    weights = bootstrap_weights(groups, n, n_boot, seed) if n_boot > 0 and n else None
    per: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    boot_aucs = []
    for j, name in enumerate(findings):
        known = ~np.isnan(targets[:, j])
        y, p = targets[known, j].astype(int), probs[known, j]
        n_pos = int(y.sum())
        entry: dict[str, Any] = {
            "n": int(known.sum()),
            "positives": n_pos,
            "prevalence": float(n_pos / len(y)) if len(y) else None,
            "auc": None,
            "auc_ci95": None,
            "average_precision": None,
            "brier": float(brier_score_loss(y, p)) if len(y) else None,
            "ece": _ece(y, p) if len(y) else None,
        }
        defined = 0 < n_pos < len(y)
        if defined:
            entry["auc"] = float(roc_auc_score(y, p))
            entry["average_precision"] = float(average_precision_score(y, p))
            if weights is not None:
                b = _by_replicate_blocks(weights, len(y), partial(_auc_of, p, y == 1, known))
                boot_aucs.append(b)
                entry["auc_ci95"] = percentile_ci(b)
        else:
            why = "no positive" if n_pos == 0 else "no negative"
            entry["note"] = f"AUC undefined: {why} image among the {len(y)} with a known label"
            notes.append(f"{name}: {entry['note']}")
        if thresholds and name in thresholds:
            thr = thresholds[name]["threshold"]
            pred = p >= thr
            pos, neg = y == 1, y == 0
            entry["threshold"] = thr
            entry["sensitivity"] = float(pred[pos].mean()) if pos.any() else None
            entry["specificity"] = float((~pred[neg]).mean()) if neg.any() else None
            if weights is not None and len(y):
                for key, hit, among in (("sensitivity", pred, pos), ("specificity", ~pred, neg)):
                    rates = partial(_rate_of, hit, among, known)
                    entry[f"{key}_ci95"] = (
                        percentile_ci(_by_replicate_blocks(weights, len(y), rates)) if among.any() else None
                    )
        per[name] = entry
    aucs = [e["auc"] for e in per.values() if e["auc"] is not None]
    macro = float(np.mean(aucs)) if aucs else None
    known_all = ~np.isnan(targets)
    flat_y = targets[known_all].astype(int)
    flat_p = probs[known_all]
    micro = float(roc_auc_score(flat_y, flat_p)) if 0 < flat_y.sum() < len(flat_y) else None
    macro_ci = micro_ci = None
    if weights is not None:
        if boot_aucs:
            macro_ci = percentile_ci(np.nanmean(np.stack(boot_aucs), axis=0))
        if micro is not None:
            aucs_micro = partial(_auc_of, flat_p, flat_y == 1, known_all)
            micro_ci = percentile_ci(_by_replicate_blocks(weights, len(flat_y), aucs_micro))
    aps = [e["average_precision"] for e in per.values() if e["average_precision"] is not None]
    eps = 1e-12
    with np.errstate(invalid="ignore"):
        cells = -(
            flat_y * np.log(np.clip(flat_p, eps, 1)) + (1 - flat_y) * np.log(np.clip(1 - flat_p, eps, 1))
        )
    n_groups = len(set(groups)) if groups is not None else n
    return {
        "n": int(n),
        "findings": list(findings),
        "auc": macro,
        "auc_ci95": macro_ci,
        "macro_auc": macro,
        "macro_auc_ci95": macro_ci,
        "micro_auc": micro,
        "micro_auc_ci95": micro_ci,
        "mean_average_precision": float(np.mean(aps)) if aps else None,
        "loss": float(cells.mean()) if len(cells) else None,
        "per_finding": per,
        "findings_with_auc": len(aucs),
        "notes": notes,
        "bootstrap_resamples": int(n_boot),
        "bootstrap_unit": f"patient ({n_groups} patients)" if groups is not None else "image",
    }


def cooccurrence(targets: np.ndarray) -> np.ndarray:
    """``(F, F)`` counts of images positive for both findings (diagonal: positives of each)."""
    pos = (np.nan_to_num(targets) > 0).astype(np.int64)
    return pos.T @ pos


def summary_line(test: dict[str, Any]) -> str:
    """One line for the terminal: macro AUC with its CI, micro AUC, findings with an undefined AUC."""

    def with_ci(value: float | None, ci: list[float] | None) -> str:
        if value is None:
            return "undefined"
        inside = f" [95% CI {ci[0]:.3f}–{ci[1]:.3f}]" if ci and all(np.isfinite(ci)) else ""
        return f"{value:.3f}{inside}"

    k = len(test["findings"])
    defined = test["findings_with_auc"]
    undefined = k - defined
    return (
        f"macro AUC {with_ci(test['macro_auc'], test.get('macro_auc_ci95'))} over {defined} "
        f"of {k} findings{f' ({undefined} undefined: no positive or no negative)' if undefined else ''}, "
        f"micro AUC {with_ci(test['micro_auc'], test.get('micro_auc_ci95'))}, n={test['n']}"
    )


def match_notes(match: dict[str, Any]) -> list[str]:
    """What external validation of a multi-label run left out (``findings_match`` of `cxr evaluate
    --data OTHER`): one line per side, and the renames."""
    notes = []
    if match.get("only_in_model"):
        notes.append(
            f"only in the model, not in the data (not evaluated): {', '.join(match['only_in_model'])}"
        )
    if match.get("only_in_data"):
        notes.append(
            "only in the data, not predicted by the model (not evaluated): "
            f"{', '.join(match['only_in_data'])}; map names with --label-map DATA=MODEL if one is a model "
            "finding under another name"
        )
    if match.get("renamed"):
        notes.append(
            "renamed by --label-map: " + ", ".join(f"{a} → {b}" for a, b in match["renamed"].items())
        )
    return notes


UNCERTAINTY_TEXT = {
    "ignore": "ignored: masked out of the loss and the metrics",
    "zeros": "counted as negative (zeros)",
    "ones": "counted as positive (ones)",
}


def label_policy(labels: Any) -> dict[str, Any]:
    """How a multi-label run's label file was read (``data.labels``): the CheXpert uncertainty policy for
    -1 cells and what blank cells mean, named in metrics.json and the report."""
    text = (
        f"uncertain (-1) labels {UNCERTAINTY_TEXT[labels.uncertainty]}; blank cells "
        f"{'negative' if labels.blank == 'zeros' else 'ignored'}"
    )
    return {
        "file": labels.file,
        "format": labels.format,
        "uncertainty": labels.uncertainty,
        "blank": labels.blank,
        "text": text,
    }
