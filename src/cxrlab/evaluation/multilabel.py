"""Multi-label findings: per-finding ROC AUC with patient-level bootstrap CIs, macro and micro AUC,
average precision, prevalence, per-finding operating thresholds chosen on validation data.

Targets are float matrices ``(N, F)``: 1, 0, or NaN (ignored: an uncertain or unknown label), left out
of every metric of that finding. Point estimates are scikit-learn's; the intervals are
:func:`cxrlab.stats.bootstrap_intervals` (scipy.stats.bootstrap, BCa), resampling *patients* (all images of
a drawn patient come along, so a patient is never split): each resample is a weight per image (how often its
patient was drawn) and the weighted Mann–Whitney AUC of every resample is computed at once
(:func:`cxrlab.stats.weighted_auc`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from cxrlab.stats import bootstrap_intervals, ci_text, operating_threshold, weighted_auc

__all__ = ["multilabel_metrics", "weighted_auc"]  # weighted_auc: from cxrlab.stats


def sigmoid(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Per-finding probabilities from logits ``(N, F)``."""
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64) / temperature))


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
    per: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
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
        if 0 < n_pos < len(y):
            entry["auc"] = float(roc_auc_score(y, p))
            entry["average_precision"] = float(average_precision_score(y, p))
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
        per[name] = entry
    aucs = [e["auc"] for e in per.values() if e["auc"] is not None]
    macro = float(np.mean(aucs)) if aucs else None
    known_all = ~np.isnan(targets)
    flat_y = targets[known_all].astype(int)
    flat_p = probs[known_all]
    micro = float(roc_auc_score(flat_y, flat_p)) if 0 < flat_y.sum() < len(flat_y) else None
    intervals = _intervals(targets, probs, findings, per, groups, n_boot, seed)
    for name, entry in per.items():
        for key in ("auc", "sensitivity", "specificity"):
            if entry.get(key) is not None and n_boot > 0 and n:
                entry[f"{key}_ci95"] = intervals.ci.get(f"{key}:{name}")
                if f"{key}:{name}" in intervals.notes:
                    entry.setdefault("ci_notes", {})[key] = intervals.notes[f"{key}:{name}"]
    macro_ci = intervals.ci.get("macro_auc") if macro is not None else None
    micro_ci = intervals.ci.get("micro_auc") if micro is not None else None
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
        "ci_method": intervals.method,
        "ci_notes": dict(intervals.notes),  # "auc:NAME", "sensitivity:NAME", …, "macro_auc", "micro_auc"
    }


def _intervals(
    targets: np.ndarray,
    probs: np.ndarray,
    findings: list[str],
    per: dict[str, dict[str, Any]],
    groups: list[str] | None,
    n_boot: int,
    seed: int,
) -> Any:
    """Patient-level bootstrap intervals (:func:`cxrlab.stats.bootstrap_intervals`) of each finding's AUC and
    sensitivity/specificity at its threshold (``auc:NAME`` …), the macro AUC (the mean over the findings
    whose AUC is defined in that resample) and the micro AUC (all known cells pooled)."""
    known_all = ~np.isnan(targets)
    columns = []
    for j, name in enumerate(findings):
        known = known_all[:, j]
        y = targets[known, j].astype(int)
        thr = per[name].get("threshold")
        called = probs[known, j] >= thr if thr is not None else None
        columns.append((name, known, y, probs[known, j], called, per[name]["auc"] is not None))
    flat_y, flat_p = targets[known_all].astype(int), probs[known_all]

    def statistic(w: np.ndarray) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        aucs = []
        with np.errstate(invalid="ignore", divide="ignore"):
            for name, known, y, p, called, defined in columns:
                wk = w[:, known]
                if defined:
                    out[f"auc:{name}"] = weighted_auc(p, y == 1, wk)
                    aucs.append(out[f"auc:{name}"])
                if called is not None:
                    out[f"sensitivity:{name}"] = wk @ (called & (y == 1)) / (wk @ (y == 1))
                    out[f"specificity:{name}"] = wk @ (~called & (y == 0)) / (wk @ (y == 0))
            if aucs:
                stacked = np.stack(aucs)
                some = np.isfinite(stacked).any(axis=0)
                out["macro_auc"] = np.where(some, np.nanmean(np.where(some, stacked, 0.0), axis=0), np.nan)
            if 0 < flat_y.sum() < len(flat_y):
                cells = np.broadcast_to(w[:, :, None], (len(w), *known_all.shape))[:, known_all]
                out["micro_auc"] = weighted_auc(flat_p, flat_y == 1, cells)
        return out

    return bootstrap_intervals(statistic, len(targets), groups, n_boot, seed, columns=int(known_all.sum()))


def cooccurrence(targets: np.ndarray) -> np.ndarray:
    """``(F, F)`` counts of images positive for both findings (diagonal: positives of each)."""
    pos = (np.nan_to_num(targets) > 0).astype(np.int64)
    return pos.T @ pos


def summary_line(test: dict[str, Any]) -> str:
    """One line for the terminal: macro AUC with its CI, micro AUC, findings with an undefined AUC."""

    def with_ci(value: float | None, ci: list[float] | None) -> str:
        if value is None:
            return "undefined"
        return f"{value:.3f} {ci_text(ci)}"

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
