"""Report-ready plots (PNG at 150 dpi, or ``eval.figure_format``/``figure_dpi`` through
:func:`cxrlab.figures.figure_output`): curves, confusion matrix, ROC, t-SNE, reliability."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from cxrlab.figures import plt, sample_grid, save_figure
from cxrlab.stats import roc_points

__all__ = [
    "calibration_grid", "confusion", "cooccurrence_matrix", "reliability", "reliability_figure", "roc",
    "roc_figure", "roc_grid", "sample_grid", "training_curves", "tsne", "tsne_problem",
]  # fmt: skip


def training_curves(history: list[dict], path: Path, title: str = "") -> Path | None:
    """Loss and accuracy per epoch, train vs validation."""
    if not history:
        return None
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            values = [h.get(f"{split}_{key}") for h in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], style, ms=3, label=split)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def confusion(cm: list[list[int]], classes: list[str], path: Path, title: str = "") -> Path:
    """Confusion matrix with counts and row percentages."""
    cm_arr = np.asarray(cm)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.5, 1.1 * k + 2))
    rows = cm_arr.sum(axis=1, keepdims=True).clip(min=1)
    ax.imshow(cm_arr / rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            share = cm_arr[i, j] / rows[i, 0]
            ax.text(
                j,
                i,
                f"{cm_arr[i, j]}\n{share:.0%}",
                ha="center",
                va="center",
                color="white" if share > 0.5 else "black",
                fontsize=9,
            )
    ax.set_xticks(range(k), classes, rotation=30, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    return save_figure(fig, path)


def roc(
    y: np.ndarray, probs: np.ndarray, classes: list[str], path: Path, auc: float | None = None,
    positive: str | None = None,
) -> Path:  # fmt: skip
    """ROC curves (:func:`roc_figure`) saved to ``path``."""
    return save_figure(roc_figure(y, probs, classes, auc, positive), path)


def roc_figure(
    y: np.ndarray, probs: np.ndarray, classes: list[str], auc: float | None = None,
    positive: str | None = None,
):  # fmt: skip
    """ROC curves, one-vs-rest per class with its AUC; binary: one curve for the positive class (``positive``,
    the operating point's; default the second class), named in the legend: "ROC (positive: covid), AUC 0.970"
    (``auc``: the run's AUC, else computed here). Returns the figure."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.asarray(y)
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    if probs.shape[1] == 2:
        pos = classes.index(positive) if positive in classes else 1
        if 0 < (y == pos).sum() < len(y):  # no curve when the data hold one class only
            fpr, tpr, _ = roc_curve(y == pos, probs[:, pos])
            value = auc if auc is not None and np.isfinite(auc) else roc_auc_score(y == pos, probs[:, pos])
            ax.plot(fpr, tpr, label=f"ROC (positive: {classes[pos]}), AUC {value:.3f}")
    else:
        for c, (fpr, tpr) in roc_points(y, probs).items():
            ax.plot(fpr, tpr, label=f"{classes[c]} vs rest, AUC {roc_auc_score(y == c, probs[:, c]):.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(f"ROC (AUC {auc:.3f})" if auc is not None and np.isfinite(auc) else "ROC")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


#: Fewest points t-SNE is run on (perplexity needs a few neighbours per point).
TSNE_MIN_POINTS = 5
#: About the most points t-SNE embeds: larger test splits are sampled, stratified by class
#: (scikit-learn's t-SNE takes minutes beyond a few thousand points; a plot of more shows no more).
TSNE_MAX_POINTS = 5000


def tsne_sample(y: np.ndarray, max_points: int = TSNE_MAX_POINTS, seed: int = 0) -> np.ndarray:
    """Sorted indices of about ``max_points`` rows (each class's share rounded, at least one row of every
    class present); all rows when there are no more than ``max_points``."""
    y = np.asarray(y)
    n = len(y)
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        take = max(1, int(round(len(rows) * max_points / n)))
        keep.append(rng.choice(rows, size=min(take, len(rows)), replace=False))
    return np.sort(np.concatenate(keep))


def tsne_problem(features: np.ndarray) -> str | None:
    """Why t-SNE cannot be run on ``features`` (``(N, D)``), or None when it can.

    scikit-learn's Barnes-Hut t-SNE crashes the interpreter (segmentation fault, no message) when
    all points coincide: its PCA initialisation divides by a zero standard deviation and the quad
    tree is then built on NaN coordinates. Non-finite features (a diverged model) and too few points
    are refused too."""
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    n = len(x)
    if n < TSNE_MIN_POINTS:
        return f"only {n} test image(s); t-SNE needs at least {TSNE_MIN_POINTS}"
    bad = int((~np.isfinite(x)).any(axis=1).sum())
    if bad:
        return f"{bad} of {n} test feature vectors contain NaN or infinite values (did training diverge?)"
    spread = float(np.abs(x - x.mean(axis=0)).max()) if x.size else 0.0
    if spread <= max(1e-5 * float(np.abs(x).max(initial=0.0)), 1e-12):
        return (
            f"all {n} test feature vectors are identical (the model maps every test image to the same "
            "point: constant images, or a collapsed model)"
        )
    return None


def _tsne_input(features: np.ndarray) -> np.ndarray:
    """Centred and scaled to unit overall spread (t-SNE's result does not depend on either), float32."""
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    x = x - x.mean(axis=0)
    return (x / x.std()).astype(np.float32)


def tsne(
    features: np.ndarray,
    y: np.ndarray,
    classes: list[str],
    path: Path,
    seed: int = 0,
    total: int | None = None,
) -> Path | None:
    """2-D t-SNE of penultimate-layer features, coloured by true class; None (no plot) when
    :func:`tsne_problem` finds the features unusable. ``total``: the size of the split these rows were
    sampled from (:func:`tsne_sample`), said in the title when larger."""
    from sklearn.manifold import TSNE

    features, y = np.asarray(features), np.asarray(y)
    if tsne_problem(features) is not None:
        return None
    n = len(features)
    perplexity = float(min(30, max(2, (n - 1) / 4)))
    emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        _tsne_input(features)
    )
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    for c, name in enumerate(classes):
        m = y == c
        ax.scatter(emb[m, 0], emb[m, 1], s=10, alpha=0.75, label=f"{name} ({m.sum()})")
    sampled = f", a stratified sample of {n:,} of {total:,}" if total and n < total else ""
    ax.set_title(f"t-SNE of penultimate features (test{sampled})", **({"fontsize": 9} if sampled else {}))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8, markerscale=1.5)
    return save_figure(fig, path)


def reliability(y: np.ndarray, probs: np.ndarray, path: Path, ece: float, bins: int = 10) -> Path:
    """Reliability diagram (:func:`reliability_figure`) saved to ``path``."""
    return save_figure(reliability_figure(y, probs, ece, bins), path)


def reliability_figure(y: np.ndarray, probs: np.ndarray, ece: float, bins: int = 10):
    """Reliability diagram of top-class confidence with the expected calibration error: accuracy per
    confidence bin, the bin's number of test images written above its bar. Returns the figure."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0, 1, bins + 1)
    centers, accs, counts = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            centers.append(conf[m].mean())
            accs.append(correct[m].mean())
            counts.append(int(m.sum()))
    fig, ax = plt.subplots(figsize=(4.6, 4.8))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    label = "accuracy per bin (n images above)"
    ax.bar(centers, accs, width=1 / bins * 0.9, alpha=0.7, edgecolor="k", label=label)
    for x, acc, n in zip(centers, accs, counts, strict=True):
        ax.annotate(f"{n}", (x, acc), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                    fontsize=7)  # fmt: skip
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {ece:.3f}, n = {len(conf)})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.08)  # room for the count above a bar of accuracy 1
    ax.set_yticks(np.linspace(0, 1, 6))
    # below the axes: a bar of any height, and its count, may stand anywhere inside them
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=8, frameon=False)
    return fig


# --------------------------------------------------------------------------- multi-label findings


def _grid(k: int, size: float = 2.6) -> tuple[object, np.ndarray]:
    cols = min(4, max(k, 1))
    rows = int(np.ceil(k / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.flat[k:]:
        ax.axis("off")
    return fig, axes.flat


def roc_grid(targets: np.ndarray, probs: np.ndarray, findings: list[str], path: Path,
             per_finding: dict[str, dict]) -> Path:  # fmt: skip
    """One ROC curve per finding (test), AUC and its 95% CI in each title; '(undefined)' where the
    finding has no positive or no negative."""
    from sklearn.metrics import roc_curve

    fig, axes = _grid(len(findings))
    for j, (ax, name) in enumerate(zip(axes, findings, strict=False)):
        known = ~np.isnan(targets[:, j])
        y, p = targets[known, j], probs[known, j]
        entry = per_finding.get(name, {})
        if entry.get("auc") is not None:
            fpr, tpr, _ = roc_curve(y, p)
            ax.plot(fpr, tpr, lw=1.4)
            ci = entry.get("auc_ci95")
            extra = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and np.all(np.isfinite(ci)) else ""
            ax.set_title(f"{name}\nAUC {entry['auc']:.3f}{extra} (n+ {int(y.sum())})", fontsize=8)
        else:
            ax.set_title(f"{name}\nAUC undefined (n+ {int(np.nansum(y))})", fontsize=8)
        ax.plot([0, 1], [0, 1], "k--", lw=0.6)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.supxlabel("false positive rate (1 - specificity)", fontsize=9)
    fig.supylabel("true positive rate (sensitivity)", fontsize=9)
    return save_figure(fig, path)


def cooccurrence_matrix(counts: np.ndarray, findings: list[str], path: Path, n_images: int) -> Path:
    """Images positive for both findings (diagonal: for each), all splits."""
    k = len(findings)
    fig, ax = plt.subplots(figsize=(0.55 * k + 3, 0.5 * k + 2.5))
    ax.imshow(np.log1p(counts), cmap="Blues")
    top = counts.max() if counts.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=7,
                    color="white" if counts[i, j] > top / 2 and top else "black")  # fmt: skip
    ax.set_xticks(range(k), findings, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), findings, fontsize=8)
    ax.set_title(f"finding co-occurrence ({n_images} images)")
    return save_figure(fig, path)


def calibration_grid(targets: np.ndarray, probs: np.ndarray, findings: list[str], path: Path,
                     per_finding: dict[str, dict], bins: int = 10) -> Path:  # fmt: skip
    """Per finding: observed frequency against mean predicted probability per bin (test)."""
    fig, axes = _grid(len(findings))
    edges = np.linspace(0, 1, bins + 1)
    for j, (ax, name) in enumerate(zip(axes, findings, strict=False)):
        known = ~np.isnan(targets[:, j])
        y, p = targets[known, j], probs[known, j]
        which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
        xs = [p[which == b].mean() for b in range(bins) if (which == b).any()]
        ys = [y[which == b].mean() for b in range(bins) if (which == b).any()]
        ax.plot([0, 1], [0, 1], "k--", lw=0.6)
        ax.plot(xs, ys, "-o", ms=3)
        ece = per_finding.get(name, {}).get("ece")
        ax.set_title(f"{name}" + (f"\nECE {ece:.3f}" if ece is not None else ""), fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.supxlabel("mean predicted probability", fontsize=9)
    fig.supylabel("observed frequency", fontsize=9)
    return save_figure(fig, path)


SUBGROUP_PANELS = (("auc", "AUC"), ("sensitivity", "sensitivity"), ("specificity", "specificity"),
                   ("underdiagnosis_rate", "underdiagnosis rate"))  # fmt: skip


def subgroup_forest(subgroups: dict, path: Path) -> Path | None:
    """Forest plot of subgroup metrics (cxrlab.evaluation.subgroups): one panel per metric, each group's
    value with its 95% CI, the overall value as a dashed line; None when no group was computed."""
    rows = subgroups.get("groups") or []
    if not rows:
        return None
    overall = subgroups.get("overall") or {}
    labels = [f"{r['attribute']}: {r['group']} (n={r['n_images']})" for r in rows]
    size = (3.0 * len(SUBGROUP_PANELS) + 2.5, 0.32 * len(rows) + 1.4)
    fig, axes = plt.subplots(1, len(SUBGROUP_PANELS), figsize=size, sharey=True)
    y = np.arange(len(rows))[::-1]
    for ax, (key, label) in zip(axes, SUBGROUP_PANELS, strict=True):
        for yi, r in zip(y, rows, strict=True):
            v, ci = r.get(key), r.get(f"{key}_ci95")
            if v is None:
                continue
            if ci:
                ax.plot(ci, [yi, yi], "-", color="tab:blue", lw=1.4)
            ax.plot([v], [yi], "o", color="tab:blue", ms=4)
        if overall.get(key) is not None:
            ax.axvline(overall[key], color="0.3", ls="--", lw=1, label="overall")
        ax.set_title(label, fontsize=10)
        ax.set_xlim(-0.02, 1.02)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, labels, fontsize=8)
    axes[0].set_ylim(-0.7, len(rows) - 0.3)
    return save_figure(fig, path)
