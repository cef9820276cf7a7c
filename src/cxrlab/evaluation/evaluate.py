"""Score a trained model: metrics with CIs, operating point, calibration, plots, report."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cxrlab.config import RunConfig
from cxrlab.data.prepare import PreparedData, to_tensor
from cxrlab.evaluation import plots
from cxrlab.figures import sample_grid
from cxrlab.metrics import DECISION_KEYS, fill, single_class
from cxrlab.models.heads import Classifier
from cxrlab.models.tta import shift_pixels, with_tta
from cxrlab.runtime import batched, inference_dtype, prepare_for_inference
from cxrlab.stats import classification_metrics, operating_threshold

if TYPE_CHECKING:
    from cxrlab.training.train import Trained

NEGATIVE_NAMES = re.compile(r"normal|healthy|negative|benign|no[_ -]?finding|control", re.I)


def positive_index(classes: list[str]) -> int:
    """For a binary task, the 'disease' class: the one not named like normal/healthy, else the second."""
    if len(classes) != 2:
        return -1
    neg = [bool(NEGATIVE_NAMES.search(c)) for c in classes]
    if neg[0] != neg[1]:
        return 0 if neg[1] else 1
    return 1


def predict_images(
    model: Classifier,
    images: np.ndarray,
    channels: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: str = "cpu",
    precision: str = "32",
    progress: str | None = None,
    tta_shift: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and penultimate features for uint8 images ``(N, H, W)``; ``tta_shift`` > 0 averages both
    over the image and four copies shifted by that many pixels (:mod:`cxrlab.models.tta`)."""
    net = with_tta(prepare_for_inference(model, device), tta_shift)

    def run(x: torch.Tensor):
        feats = net.features(x)
        return net.head.out(feats), feats

    logits, feats = batched(
        run,
        lambda s: to_tensor(images[s], channels, mean, std),
        len(images),
        64,
        device,
        inference_dtype(precision, device),
        progress=progress,
    )
    model.to(memory_format=torch.contiguous_format)
    return logits, feats


@torch.inference_mode()
def predict_features(
    model: Classifier, features: np.ndarray, suffix: torch.nn.Module | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and penultimate features from cached backbone features (fast path), or from a frozen
    prefix's cached activations through ``suffix`` (suffix blocks + head; partial fine-tuning)."""
    if suffix is not None:
        net = suffix.eval()

        def run(x: torch.Tensor):
            feats = net.features(x)
            return net.head.out(feats), feats

        logits, feats = batched(run, lambda s: torch.from_numpy(features[s]), len(features), 128)
        return logits, feats
    head = model.head.eval()
    x = torch.from_numpy(features)
    feats = head.features(x)
    return head.out(feats).float().numpy(), feats.float().numpy()


def predict_codes(model: Classifier, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits and penultimate features of a whole model trained on autoencoder codes."""
    model.eval()

    def run(x: torch.Tensor):
        feats = model.features(x)
        return model.head.out(feats), feats

    logits, feats = batched(run, lambda s: torch.from_numpy(codes[s]), len(codes), 256, channels_last=False)
    return logits, feats


def logits_to_probs(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax probabilities, or [1-p, p] for a single sigmoid logit."""
    z = logits.astype(np.float64) / temperature
    if z.shape[1] == 1:
        p = 1 / (1 + np.exp(-z[:, 0]))
        return np.stack([1 - p, p], axis=1)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature minimising validation NLL (Guo et al. 2017)."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        p = logits_to_probs(logits, float(np.exp(log_t)))
        return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1))))

    res = minimize_scalar(nll, bounds=(-3, 3), method="bounded")
    return float(np.exp(res.x))


def operating_point(
    cfg: RunConfig, classes: list[str], y_val: np.ndarray, p_val: np.ndarray
) -> dict[str, Any]:
    """Binary threshold on P(positive) chosen on validation data (Youden's J or a target sensitivity)."""
    pos = positive_index(classes)
    if pos < 0 or cfg.eval.threshold == "argmax" and cfg.eval.target_sensitivity is None:
        return {
            "positive_class": classes[pos] if pos >= 0 else None,
            "threshold": 0.5 if pos >= 0 else None,
            "method": "argmax",
        }
    thr, method = operating_threshold(
        (y_val == pos).astype(int), p_val[:, pos], cfg.eval.target_sensitivity, classes[pos]
    )
    return {"positive_class": classes[pos], "threshold": thr, "method": method}


def thresholded(probs: np.ndarray, op: dict[str, Any], classes: list[str]) -> np.ndarray:
    """Predictions at the operating threshold (binary) or argmax."""
    if op.get("threshold") is None or op.get("positive_class") is None:
        return probs.argmax(axis=1)
    pos = classes.index(op["positive_class"])
    return np.where(probs[:, pos] >= op["threshold"], pos, 1 - pos)


def score(
    y: np.ndarray,
    logits: np.ndarray,
    classes: list[str],
    op: dict[str, Any],
    temperature: float,
    n_boot: int,
    seed: int,
    groups: list[str] | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """A split's metrics at the deployed decision: the saved operating threshold of a binary run (what
    ``predictions.csv``'s ``pred``, ``predict`` and ``serve`` use), else argmax. A binary run's argmax
    metrics sit beside them under ``argmax``; ``single_class`` names the one class every image got."""
    probs = logits_to_probs(logits, temperature)
    pred = thresholded(probs, op, classes)
    metrics = classification_metrics(y, probs, classes, n_boot, seed, pred=pred, groups=groups)
    at_threshold = op.get("threshold") is not None and op.get("positive_class") is not None
    metrics["decision"] = "threshold" if at_threshold else "argmax"
    if at_threshold:
        argmax = classification_metrics(y, probs, classes, n_boot, seed, groups=groups)
        metrics["argmax"] = {k: argmax[k] for k in DECISION_KEYS if k in argmax}
        pos = op["positive_class"]
        for key in ("sensitivity", "specificity"):
            for block, source in ((metrics, metrics), (metrics["argmax"], argmax)):
                block[key] = source["per_class"][pos][key]
                block[f"{key}_ci95"] = source["per_class"][pos][f"{key}_ci95"]
        metrics["operating_point"] = {  # the rule, and (as schema 1 had them) its numbers
            **op,
            **{k: metrics[k] for k in ("accuracy", "accuracy_ci95", "sensitivity", "sensitivity_ci95",
                                        "specificity", "specificity_ci95", "confusion_matrix")},
        }  # fmt: skip
    metrics["single_class"] = single_class(metrics["confusion_matrix"], classes)
    if at_threshold:
        metrics["argmax"]["single_class"] = single_class(metrics["argmax"]["confusion_matrix"], classes)
    fill(metrics, np.asarray(y), probs, pred, n_boot, seed, groups)
    return metrics, probs


def _timing(
    cfg: RunConfig, trained: Trained, history: list[dict], t0: float, t_eval: float
) -> dict[str, Any]:
    timing = dict(trained.timing)
    timing["eval_s"] = round(time.perf_counter() - t_eval, 3)
    epochs = len(history)
    timing["epochs"] = epochs
    timing["s_per_epoch"] = round(timing.get("train_s", 0) / epochs, 4) if epochs else None
    steps = int(np.ceil(len(trained.data.labels["train"]) / cfg.train.batch_size)) * max(epochs, 1)
    timing["s_per_step"] = round(timing.get("train_s", 0) / steps, 5) if steps else None
    timing["total_s"] = round(time.perf_counter() - t0, 3)
    return timing


def patient_groups(data: PreparedData, split: str) -> list[str] | None:
    """The patient of each image of ``split`` (for patient-level bootstrap), or None when the data has
    no patient ids (every image its own group)."""
    by_path = {s.path: s.group for s in data.index.samples}
    groups = [by_path.get(p, p) for p in data.paths.get(split, [])]
    if all(g.startswith(NO_PATIENT) for g in groups):
        return None
    return groups


#: Groups the indexer makes up for images without a patient id (see cxrlab.audit.patients).
NO_PATIENT = ("file:", "npz:", "synthetic:")


def make_multilabel_plots(
    folder: Path, history: list[dict], data: PreparedData, p_test: np.ndarray, metrics: dict[str, Any],
    title: str = "",
) -> dict[str, Path]:  # fmt: skip
    """A multi-label run's plots: curves, per-finding ROC grid, co-occurrence (all splits), calibration."""
    from cxrlab.evaluation.multilabel import cooccurrence

    out: dict[str, Path] = {}
    curves = plots.training_curves(history, folder / "curves.png", title)
    if curves:
        out["curves"] = curves
    t = data.targets["test"]
    out["roc"] = plots.roc_grid(t, p_test, data.findings, folder / "roc.png", metrics["per_finding"])
    every = np.concatenate([data.targets[s] for s in data.targets])
    out["cooccurrence"] = plots.cooccurrence_matrix(
        cooccurrence(every), data.findings, folder / "cooccurrence.png", len(every)
    )
    out["reliability"] = plots.calibration_grid(
        t, p_test, data.findings, folder / "reliability.png", metrics["per_finding"]
    )
    return out


def write_multilabel_predictions(
    path: Path,
    paths: list[str],
    groups: list[str] | None,
    targets: np.ndarray | None,
    probs: np.ndarray,
    findings: list[str],
    thresholds: dict[str, dict[str, Any]],
) -> None:
    """One row per image: path, patient, ``p_<finding>`` probabilities, ``true_<finding>`` (1 / 0 / blank
    when ignored), ``pred_<finding>`` at its threshold, and the findings above threshold joined by '|'."""
    from cxrlab.runs import write_csv

    fields = ["path", "patient", "findings"]
    fields += [f"p_{f}" for f in findings] + [f"true_{f}" for f in findings] + [f"pred_{f}" for f in findings]
    rows = []
    for i, p in enumerate(paths):
        above = [f for j, f in enumerate(findings) if probs[i, j] >= thresholds[f]["threshold"]]
        row: dict[str, Any] = {"path": p, "patient": groups[i] if groups else "", "findings": "|".join(above)}
        for j, f in enumerate(findings):
            row[f"p_{f}"] = round(float(probs[i, j]), 6)
            if targets is not None:
                row[f"true_{f}"] = "" if np.isnan(targets[i, j]) else int(targets[i, j])
            row[f"pred_{f}"] = int(f in above)
        rows.append(row)
    write_csv(path, rows, fields)


def _run_facts(
    out: Path,
    model: Classifier,
    trained: Trained,
    timing: dict[str, Any],
    plot_paths: dict[str, Path],
    plot_notes: dict[str, str],
) -> dict[str, Any]:
    """What metrics.json says about the trained network and the run, single- and multi-label alike."""
    return {
        "params": param_counts(model),
        "timing": timing,
        "fast_path": trained.features is not None and trained.suffix is None,
        "training_path": trained.training_path,
        "device": trained.device,
        "plots": {k: str(v.relative_to(out)) for k, v in plot_paths.items()},
        "plot_notes": plot_notes,
    }


def param_counts(model: Classifier) -> dict[str, Any]:
    """Parameter totals of the model used at inference, in PyTorch's and Keras' conventions.

    An auxiliary classifier (InceptionV3's, training only) is left out of every total and reported
    on its own (``aux_excluded``). Keras also counts batch norm's moving mean/variance as
    non-trainable weights and has no γ where its twin builds batch norms with ``scale=False``
    (InceptionV3): the same rules as :mod:`cxrlab.models.summary`."""
    from cxrlab.models.summary import _keras_unscaled, bn_statistics

    aux = getattr(model, "aux_head", None)
    aux_ids = {id(m) for m in aux.modules()} if aux is not None else set()
    aux_params = {id(p) for p in aux.parameters()} if aux is not None else set()
    params = [p for p in model.parameters() if id(p) not in aux_params]
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    stats = sum(bn_statistics(m) for m in model.modules() if id(m) not in aux_ids)
    absent = _keras_unscaled(model).values()
    keras_total = total + stats - sum(a for a, _ in absent)
    keras_trainable = trainable - sum(t for _, t in absent)
    return {
        "total": total,
        "trainable": trainable,
        "non_trainable": total - trainable,
        "aux_excluded": sum(p.numel() for p in aux.parameters()) if aux is not None else 0,
        "keras": {
            "total": keras_total,
            "trainable": keras_trainable,
            "non_trainable": keras_total - keras_trainable,
        },
    }


def write_predictions(
    path: Path,
    paths: list[str],
    y: np.ndarray,
    probs: np.ndarray,
    pred: np.ndarray,
    classes: list[str],
    groups: list[str] | None = None,
) -> None:
    """One row per test image: path, its patient (empty without patient ids), true and predicted class,
    class probabilities (for paired tests, which resample patients)."""
    from cxrlab.runs import write_csv

    fields = ["path", "patient", "true", "pred"] + [f"p_{c}" for c in classes]
    rows = [
        {
            "path": p,
            "patient": groups[i] if groups else "",
            "true": classes[int(t)],
            "pred": classes[int(k)],
            **{f"p_{c}": round(float(v), 6) for c, v in zip(classes, pr, strict=True)},
        }
        for i, (p, t, k, pr) in enumerate(zip(paths, y, pred, probs, strict=True))
    ]
    write_csv(path, rows, fields)


def model_meta(cfg: RunConfig, trained: Trained, op: dict[str, Any], temperature: float) -> dict[str, Any]:
    """What `predict` needs besides the weights."""
    return {
        "model": cfg.model.name,
        "classes": trained.data.classes,
        "image_size": cfg.data.image_size,
        "resize": cfg.data.resize,
        "channels": trained.channels,
        "mean": list(trained.spec.mean),
        "std": list(trained.spec.std),
        "operating_point": op,
        "temperature": temperature,
        "input": "codes" if trained.data.codes is not None else "images",
        # test-time augmentation in pixels (cxrlab.models.tta): every use of the model applies it
        "tta_shift_px": shift_pixels(cfg.eval.tta_shift, cfg.data.image_size),
    }


def make_plots(
    folder: Path,
    history: list[dict],
    y: np.ndarray,
    probs: np.ndarray,
    feats: np.ndarray,
    metrics: dict[str, Any],
    data: PreparedData,
    tsne: bool,
    seed: int,
    title: str = "",
    notes: dict[str, str] | None = None,
) -> dict[str, Path]:
    """All plots of a run's report; why a plot was left out goes into ``notes`` (plot name -> reason). In the
    format of the :func:`cxrlab.figures.figure_output` block around the call (PNG outside one)."""
    classes = data.classes
    out: dict[str, Path] = {}
    curves = plots.training_curves(history, folder / "curves.png", title)
    if curves:
        out["curves"] = curves
    out["confusion"] = plots.confusion(metrics["confusion_matrix"], classes, folder / "confusion.png")
    positive = (metrics.get("operating_point") or {}).get("positive_class")
    out["roc"] = plots.roc(y, probs, classes, folder / "roc.png", metrics["auc"], positive)
    out["reliability"] = plots.reliability(y, probs, folder / "reliability.png", metrics["ece"])
    if tsne:
        t = tsne_plot(feats, y, classes, folder / "tsne.png", seed, notes)
        if t:
            out["tsne"] = t
    if "train" in data.images:
        out["samples"] = sample_grid(
            data.images["train"], data.labels["train"], classes, folder / "samples.png"
        )
        synthetic = np.array([s.synthetic for s in data.index.split("train")], dtype=bool)
        if synthetic.any():  # --extra-train: the synthetic images per class, as the model sees them
            out["synthetic"] = sample_grid(
                data.images["train"][synthetic],
                data.labels["train"][synthetic],
                classes,
                folder / "synthetic.png",
                per_class=8,
            )
    return out


def tsne_plot(
    feats: np.ndarray,
    y: np.ndarray,
    classes: list[str],
    path: Path,
    seed: int,
    notes: dict[str, str] | None = None,
    max_points: int | None = None,
) -> Path | None:
    """The t-SNE plot of about ``max_points`` at most (default :data:`plots.TSNE_MAX_POINTS`) test images, a
    stratified sample of larger splits (said in ``notes["tsne"]``); None with the reason in
    ``notes["tsne"]`` when the features cannot be embedded (identical, non-finite or too few: see
    :func:`plots.tsne_problem`)."""
    limit = plots.TSNE_MAX_POINTS if max_points is None else max_points
    rows = plots.tsne_sample(y, limit, seed)
    sample, sample_y = np.asarray(feats)[rows], np.asarray(y)[rows]
    problem = plots.tsne_problem(sample)
    if problem is not None:
        if notes is not None:
            notes["tsne"] = f"t-SNE skipped: {problem}"
        return None
    if len(rows) < len(feats) and notes is not None:
        notes["tsne"] = (
            f"t-SNE of a stratified sample of {len(rows):,} of the {len(feats):,} test images "
            "(its time grows faster than the number of points)"
        )
    return plots.tsne(sample, sample_y, classes, path, seed, total=len(feats))


def describe_task(classes: list[str]) -> str:
    """A short task name such as 'covid vs normal'."""
    return " vs ".join(classes) if len(classes) <= 4 else f"{len(classes)}-class"


def data_summary(data: PreparedData) -> dict[str, Any]:
    """Counts per split and class (train: real and synthetic apart), where splits came from, skipped files."""
    synthetic = data.index.synthetic_counts()
    if data.multilabel:
        from cxrlab.evaluation.multilabel import prevalence

        counts = {split: {f: v["positives"] for f, v in per.items()}
                  for split, per in prevalence(data.targets, data.findings).items()}  # fmt: skip
        return {
            "source": data.index.source,
            "layout": data.index.layout,
            "task": "multilabel",
            "image_size": data.image_size,
            "images": {split: int(len(t)) for split, t in data.targets.items()},
            "counts": counts,  # positives per split and finding
            "prevalence": prevalence(data.targets, data.findings),
            "split_origin": data.index.split_origin,
            "skipped": [{"path": p, "reason": r} for p, r in data.index.skipped],
            "missing_images": data.index.missing,
            "label_notes": list(data.index.notes),
            "ignored_files": data.index.ignored_files,
            "decode_s": round(data.decode_s, 3),
        }
    return {
        "source": data.index.source,
        "layout": data.index.layout,
        "image_size": data.image_size,
        "counts": data.index.counts(),
        "synthetic_train": synthetic,
        "real_train": {c: n - synthetic[c] for c, n in data.index.counts()["train"].items()},
        **({"codes": data.codes_meta} if data.codes_meta else {}),
        "split_origin": data.index.split_origin,
        "skipped": [{"path": p, "reason": r} for p, r in data.index.skipped],
        "ignored_files": data.index.ignored_files,
        "decode_s": round(data.decode_s, 3),
    }
