"""The lung-attention score: the share of a heatmap's mass that falls inside the lung mask.

A heatmap spread evenly over the image scores the lungs' share of the image area (about 0.25–0.35 on
a frontal radiograph squashed to a square); a model reading the lungs scores well above it. A group
(class or folder) whose mean share is below :data:`MIN_LUNG_SHARE` gets a warning: less than half of
its heatmaps' mass is on the lungs, so its model reads something else (text markers, borders, devices,
the body outline).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cxrlab.stats import bootstrap_intervals

#: Warn when a group's mean lung share is below this (documented in docs/explain.md).
MIN_LUNG_SHARE = 0.5


def lung_share(cam: np.ndarray, mask: np.ndarray) -> float | None:
    """``sum(cam · mask) / sum(cam)`` for a non-negative heatmap and a boolean mask of the same shape;
    None for an all-zero heatmap."""
    cam = np.asarray(cam, dtype=np.float64)
    if cam.shape != mask.shape:
        raise ValueError(f"heatmap {cam.shape} and mask {mask.shape} differ in shape")
    total = float(cam.sum())
    return None if total <= 0 else float((cam * mask).sum() / total)


def mean_ci(
    values: list[float], n_boot: int = 2000, seed: int = 0, groups: list[str] | None = None
) -> tuple[float, list[float] | None]:
    """Mean and its 95% bootstrap interval (:func:`cxrlab.stats.bootstrap_intervals`: scipy's BCa), the
    patients ``groups`` names resampled (a patient never split), else the images; None when not estimable
    (no resamples, one patient, no spread)."""
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return float("nan"), None
    intervals = bootstrap_intervals(lambda w: {"mean": (w @ v) / w.sum(1)}, len(v), groups, n_boot, seed)
    return float(v.mean()), intervals.ci.get("mean")


def summarise(
    rows: list[dict[str, Any]], key: str, min_share: float = MIN_LUNG_SHARE, n_boot: int = 2000
) -> dict[str, dict[str, Any]]:
    """Per value of ``rows[i][key]``: images scored (``n``) and with an all-zero heatmap (``empty``: Grad-CAM
    finds no positive evidence for the class), mean lung share with 95% CI (patients resampled when every
    row names its ``patient``), mean lung area (the share a uniform heatmap would get), ``lift`` (share /
    area) and ``low`` (mean share below ``min_share``)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(str(r[key]), []).append(r)
    out = {}
    for name in sorted(groups):
        scored = [r for r in groups[name] if r.get("lung_share") is not None]
        mean, ci = mean_ci([r["lung_share"] for r in scored], n_boot, groups=_patients(scored))
        area = float(np.mean([r["lung_area"] for r in groups[name]]))
        out[name] = {
            "n": len(scored),
            "empty": len(groups[name]) - len(scored),  # all-zero heatmaps: no share to measure
            "lung_share": round(mean, 4) if scored else None,
            "ci95": [round(c, 4) for c in ci] if scored and ci else None,
            "lung_area": round(area, 4),
            # share over area: 1 = no more on the lungs than an evenly spread heatmap
            "lift": round(mean / area, 3) if scored and area > 0 else None,
            "low": bool(scored) and bool(mean < min_share),
        }
    return out


def _patients(rows: list[dict[str, Any]]) -> list[str] | None:
    """Each row's ``patient``, or None unless every row names one (then images are the unit)."""
    groups = [str(r.get("patient") or "") for r in rows]
    return groups if groups and all(groups) else None


def warnings_for(
    summary: dict[str, dict[str, Any]], what: str, min_share: float = MIN_LUNG_SHARE
) -> list[str]:
    """One sentence per group whose mean share is below ``min_share``."""
    def interval(s: dict[str, Any]) -> str:
        return f"95% CI {s['ci95'][0]:.0%}-{s['ci95'][1]:.0%}" if s.get("ci95") else "CI not estimable"

    return [
        f"{what} {name!r}: only {s['lung_share']:.0%} of the heatmaps' mass is on the lungs "
        f"({interval(s)}, n={s['n']}; threshold {min_share:.0%}): its "
        "model reads something other than the lungs (text markers, borders, devices)"
        for name, s in summary.items()
        if s["low"]
    ]
