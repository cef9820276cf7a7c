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

from cxrlab.stats import bootstrap_index_blocks, percentile_ci

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


def mean_ci(values: list[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, list[float]]:
    """Mean and its 95% percentile-bootstrap interval (images resampled)."""
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return float("nan"), [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    if n_boot <= 0:
        return float(v.mean()), percentile_ci(v[:0])
    # in blocks: n_boot x n indices at once is GBs for a large gallery; the generator's stream is the same
    boots = np.concatenate([v[idx].mean(axis=1) for idx in bootstrap_index_blocks(rng, len(v), n_boot)])
    return float(v.mean()), percentile_ci(boots)


def summarise(
    rows: list[dict[str, Any]], key: str, min_share: float = MIN_LUNG_SHARE, n_boot: int = 2000
) -> dict[str, dict[str, Any]]:
    """Per value of ``rows[i][key]``: images scored (``n``) and with an all-zero heatmap (``empty``: Grad-CAM
    finds no positive evidence for the class), mean lung share with 95% CI, mean lung area (the share a
    uniform heatmap would get), ``lift`` (share / area) and ``low`` (mean share below ``min_share``)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(str(r[key]), []).append(r)
    out = {}
    for name in sorted(groups):
        scored = [r for r in groups[name] if r.get("lung_share") is not None]
        mean, ci = mean_ci([r["lung_share"] for r in scored], n_boot)
        area = float(np.mean([r["lung_area"] for r in groups[name]]))
        out[name] = {
            "n": len(scored),
            "empty": len(groups[name]) - len(scored),  # all-zero heatmaps: no share to measure
            "lung_share": round(mean, 4) if scored else None,
            "ci95": [round(c, 4) for c in ci] if scored else None,
            "lung_area": round(area, 4),
            # share over area: 1 = no more on the lungs than an evenly spread heatmap
            "lift": round(mean / area, 3) if scored and area > 0 else None,
            "low": bool(scored) and bool(mean < min_share),
        }
    return out


def warnings_for(
    summary: dict[str, dict[str, Any]], what: str, min_share: float = MIN_LUNG_SHARE
) -> list[str]:
    """One sentence per group whose mean share is below ``min_share``."""
    return [
        f"{what} {name!r}: only {s['lung_share']:.0%} of the heatmaps' mass is on the lungs "
        f"(95% CI {s['ci95'][0]:.0%}-{s['ci95'][1]:.0%}, n={s['n']}; threshold {min_share:.0%}): its "
        "model reads something other than the lungs (text markers, borders, devices)"
        for name, s in summary.items()
        if s["low"]
    ]
