"""How good are synthetic images? Measured without a pretrained network.

* **Two-sample test** (classifier two-sample test, Lopez-Paz & Oquab 2017): a classifier learns
  to tell real from synthetic images under stratified k-fold cross-validation on balanced sets.
  Out-of-fold accuracy near 0.5 means the classifier cannot tell them apart; the 95% Wilson CI
  and an exact binomial p-value against 0.5 say how sure that is. Two detectors: logistic
  regression on PCA-reduced pixels (linear) and a small CNN (catches texture artefacts such as
  checkerboards). Each is a *lower bound* on distinguishability: a stronger detector may do better.
* **Memorisation**: each synthetic image's distance to its nearest real training image, set
  against the real training images' own nearest-neighbour distances (leave-one-out). A GAN
  that copies training images has synthetic distances far below the real ones.
* **Sample grids** per class (real row vs synthetic rows) and the closest synthetic/real pairs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cxrlab.config import check_range, check_seed_and_lr
from cxrlab.data.images import ImageReadError, is_image_file, load_gray
from cxrlab.errors import DataError
from cxrlab.figures import image_grid
from cxrlab.generative.common import check_out, load_data, prepare_folder
from cxrlab.runs import write_json


def _shrink(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``(N, H, W)`` → float32 ``(N, size·size)`` in [0, 1] (area resampling)."""
    if images.shape[1:] != (size, size):
        images = np.stack(
            [np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BOX)) for im in images]
        )
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def _balanced(real: np.ndarray, fake: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    n = min(len(real), len(fake))
    rng = np.random.default_rng(seed)
    r = real[np.sort(rng.choice(len(real), n, replace=False))]
    f = fake[np.sort(rng.choice(len(fake), n, replace=False))]
    return np.concatenate([r, f]), np.r_[np.zeros(n, int), np.ones(n, int)]


def _verdict(correct: np.ndarray, scores: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    from scipy.stats import binomtest
    from sklearn.metrics import roc_auc_score

    k, n = int(correct.sum()), len(correct)
    test = binomtest(k, n, 0.5)
    ci = test.proportion_ci(0.95, method="wilson")
    return {
        "accuracy": round(k / n, 4),
        "accuracy_ci95": [round(ci.low, 4), round(ci.high, 4)],
        "auc": round(float(roc_auc_score(y, scores)), 4),
        "p_value_vs_chance": float(f"{test.pvalue:.3g}"),
        "n": n,
    }


def two_sample_logreg(real: np.ndarray, fake: np.ndarray, seed: int = 0, folds: int = 5, size: int = 32):
    """Out-of-fold real-vs-synthetic accuracy of PCA(50) + logistic regression on pixels."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _balanced(_shrink(real, size), _shrink(fake, size), seed)
    folds = min(folds, int(np.bincount(y).min()))
    comps = min(50, len(x) - len(x) // folds - 1, x.shape[1])
    model = make_pipeline(StandardScaler(), PCA(comps, random_state=seed), LogisticRegression(max_iter=2000))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    p = cross_val_predict(model, x, y, cv=cv, method="predict_proba")[:, 1]
    return {
        "detector": f"logistic regression on {comps} PCA components of {size}×{size} pixels",
        "folds": folds,
        **_verdict((p >= 0.5) == y, p, y),
    }


def _small_cnn() -> torch.nn.Module:
    """Three conv-ReLU layers (no batch norm: its running statistics lag behind in short training)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 1),
    )


def two_sample_cnn(
    real: np.ndarray, fake: np.ndarray, seed: int = 0, folds: int = 5, size: int = 32, steps: int = 150
) -> dict[str, Any]:
    """Out-of-fold real-vs-synthetic accuracy of a small CNN trained from scratch in each fold.

    A fixed number of Adam steps (batch 32) per fold, so small sets are not under-trained.
    """
    from sklearn.model_selection import StratifiedKFold

    x, y = _balanced(_shrink(real, size), _shrink(fake, size), seed)
    folds = min(folds, int(np.bincount(y).min()))
    xt = (torch.from_numpy(x).view(-1, 1, size, size) - 0.5) / 0.25
    yt = torch.from_numpy(y).float()
    scores = np.zeros(len(y))
    for fold, (tr, te) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y)):
        torch.manual_seed(seed + fold)
        net = _small_cnn()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        order = torch.Generator().manual_seed(seed + fold)
        net.train()
        for _ in range(steps):
            idx = torch.from_numpy(tr)[torch.randint(len(tr), (32,), generator=order)]
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xt[idx])[:, 0], yt[idx])
            loss.backward()
            opt.step()
        net.eval()
        with torch.inference_mode():
            scores[te] = torch.sigmoid(net(xt[torch.from_numpy(te)])[:, 0]).numpy()
    return {
        "detector": f"small CNN (3 conv layers, {steps} Adam steps per fold) on {size}×{size} pixels",
        "folds": folds,
        **_verdict((scores >= 0.5) == y, scores, y),
    }


def nearest_distances(
    queries: np.ndarray, reference: np.ndarray, exclude_self: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Distance (RMS per pixel) from each query row to its nearest reference row, and that row's index."""
    q, r = torch.from_numpy(queries), torch.from_numpy(reference)
    best = np.empty(len(q), np.float32)
    where = np.empty(len(q), np.int64)
    for start in range(0, len(q), 256):
        d = torch.cdist(q[start : start + 256], r)
        if exclude_self:
            rows = torch.arange(d.shape[0])
            d[rows, rows + start] = float("inf")
        v, i = d.min(dim=1)
        best[start : start + len(v)] = v.numpy()
        where[start : start + len(v)] = i.numpy()
    return best / np.sqrt(queries.shape[1]), where


def memorization(real: np.ndarray, fake: np.ndarray, size: int = 64) -> dict[str, Any]:
    """Nearest-real-neighbour distances of synthetic images vs real images' own (leave-one-out)."""
    r, f = _shrink(real, size), _shrink(fake, size)
    d_fake, nn_idx = nearest_distances(f, r)
    d_real, _ = nearest_distances(r, r, exclude_self=True)
    d_self, _ = nearest_distances(f, f, exclude_self=True)
    p5 = float(np.percentile(d_real, 5))
    return {
        "pixels": f"{size}×{size}, RMS distance per pixel (0–1 scale)",
        "synthetic_nn_median": round(float(np.median(d_fake)), 4),
        "synthetic_nn_min": round(float(d_fake.min()), 4),
        "real_nn_median": round(float(np.median(d_real)), 4),
        "real_nn_p5": round(p5, 4),
        "ratio_of_medians": round(float(np.median(d_fake) / max(np.median(d_real), 1e-9)), 4),
        "share_closer_than_real_p5": round(float((d_fake < p5).mean()), 4),
        # diversity: synthetic images' distance to their nearest *other* synthetic image (≈ 0: mode collapse)
        "synthetic_self_nn_median": round(float(np.median(d_self)), 4),
        "_d_fake": d_fake,
        "_d_real": d_real,
        "_nn_index": nn_idx,
    }


def read_folder(folder: Path, size: int) -> np.ndarray:
    """All images of a folder (not recursive) as uint8 ``(N, size, size)``."""
    arrays = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and is_image_file(p):
            try:
                arrays.append(load_gray(p, size))
            except ImageReadError:
                continue
    return np.stack(arrays) if arrays else np.zeros((0, size, size), np.uint8)


def quality_report(
    synthetic: str | Path,
    data: str,
    out: str | Path,
    *,
    size: int = 64,
    seed: int = 0,
    folds: int = 5,
    cnn_steps: int = 150,
    cache_dir: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``synthetic/<class>/*.png`` against the real training images of each class of ``data``.

    Writes ``out/quality.json``, ``out/plots/*.png`` and ``out/report.html``.
    """
    check_seed_and_lr(seed)
    check_range("--size", size, 8, 1024, "an image size in pixels")
    check_range("--folds", folds, 2, 100, "a number of cross-validation folds")
    check_range("--cnn-steps", cnn_steps, 0, 100_000, "a number of steps (0 skips the CNN detector)")
    folder = Path(synthetic)
    if not folder.is_dir():
        raise DataError(f"synthetic folder not found: {folder} (give DIR with DIR/<class>/*.png)")
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{folder} has no class subfolders (expected {folder}/<class>/*.png)")
    check_out(out, "quality.json", overwrite, "a quality report folder")
    _, prepared = load_data(data, size, seed, cache_dir=cache_dir, progress=progress)
    unknown = [d.name for d in class_dirs if d.name not in prepared.classes]
    if unknown:
        raise DataError(f"{', '.join(unknown)}: not classes of {data} ({', '.join(prepared.classes)})")
    out = prepare_folder(out, "quality.json", overwrite, "a quality report folder")
    is_real = np.array([not s.synthetic for s in prepared.index.split("train")])
    result: dict[str, Any] = {"synthetic": str(folder), "data": str(data), "size": size, "classes": {}}
    for d in class_dirs:
        fake = read_folder(d, size)
        label = prepared.classes.index(d.name)
        real = prepared.images["train"][(prepared.labels["train"] == label) & is_real]
        if len(fake) < folds or len(real) < folds:
            raise DataError(
                f"class {d.name}: {len(fake)} synthetic and {len(real)} real images; need ≥ {folds}"
            )
        entry: dict[str, Any] = {"n_synthetic": len(fake), "n_real_train": len(real)}
        entry["two_sample"] = [two_sample_logreg(real, fake, seed, folds)]
        if cnn_steps:
            entry["two_sample"].append(two_sample_cnn(real, fake, seed, folds, steps=cnn_steps))
        mem = memorization(real, fake, size)
        entry["memorization"] = {k: v for k, v in mem.items() if not k.startswith("_")}
        entry["plots"] = _class_plots(out / "plots", d.name, real, fake, mem, seed)
        result["classes"][d.name] = entry
    write_json(out / "quality.json", result)
    _write_report(out, result)
    return result


def _class_plots(folder: Path, name: str, real, fake, mem, seed: int) -> dict[str, str]:
    from cxrlab.figures import plt, save_figure

    rng = np.random.default_rng(seed)
    pick_r = real[rng.choice(len(real), min(10, len(real)), replace=False)]
    pick_f = fake[rng.choice(len(fake), min(30, len(fake)), replace=False)]
    grid = image_grid(
        [pick_r, pick_f[:10], pick_f[10:20], pick_f[20:30]],
        folder / f"grid_{name}.png",
        ["real (training split)", "synthetic", "synthetic", "synthetic"],
        f"{name}: real vs synthetic",
    )
    closest = np.argsort(mem["_d_fake"])[:8]
    pairs = image_grid(
        [fake[closest], real[mem["_nn_index"][closest]]],
        folder / f"nearest_{name}.png",
        ["the 8 synthetic images closest to a training image", "their nearest training images"],
        f"{name}: memorisation check",
    )
    fig, ax = plt.subplots(figsize=(6, 3.4))
    bins = np.linspace(0, max(mem["_d_fake"].max(), mem["_d_real"].max()), 40)
    ax.hist(mem["_d_real"], bins, alpha=0.6, density=True, label="real → nearest other real")
    ax.hist(mem["_d_fake"], bins, alpha=0.6, density=True, label="synthetic → nearest real")
    ax.set_xlabel("RMS pixel distance to the nearest training image")
    ax.legend(fontsize=8)
    ax.set_title(f"{name}: nearest-neighbour distances", fontsize=9)
    hist = save_figure(fig, folder / f"distances_{name}.png")
    return {
        k: str(p.relative_to(folder.parent))
        for k, p in (("grid", grid), ("nearest", pairs), ("distances", hist))
    }


def _write_report(out: Path, result: dict[str, Any]) -> None:
    from cxrlab import pages

    class_figures = {
        name: [{"path": out / p, "caption": f"{name}: {k}"} for k, p in e["plots"].items()]
        for name, e in result["classes"].items()
    }
    pages.write_page(out / "report.html", "quality.html", r=result, class_figures=class_figures)
