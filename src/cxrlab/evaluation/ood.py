"""The out-of-distribution guard: is an image like the ones this model was trained and validated on?

At the end of training (:func:`fit_run`) a Gaussian is fitted to the *OOD features* of the training images,
with the covariance shrunk by Ledoit and Wolf's rule (:class:`sklearn.covariance.LedoitWolf`); an image's
score is its Mahalanobis distance to that Gaussian, and the threshold is the 95th percentile of the
validation images' scores (held-out images, so about 95 % of images like them are kept). An image is in
distribution when its score is at or under the threshold and no acquisition check objects: a lateral view
(DICOM ViewPosition LL/RL, or a label file's view column), a body part other than the chest
(BodyPartExamined) or a modality other than a radiograph (Modality not CR/DX/DR). Each objection is one
reason string.

The OOD features are the model's penultimate activations, the input of its output layer, exactly as
:func:`cxrlab.evaluation.evaluate.predict_images` returns them beside the logits (one pass; averaged over
the shifted copies when the run uses test-time shift averaging; at ``eval.precision``, fp32 unless a run
asks otherwise). For a head without hidden layers (the default) that is the pooled backbone output. An
ONNX export gives the same vector as its second output ``features`` (``Exported(loaded, features=True)``),
so the guard runs after either backend. Fitting reuses the inputs training cached (the fast path's backbone
features, a partial freeze's prefix activations) through the trained head instead of recomputing them.

The fitted guard lives in the run folder without pickle: ``ood.json`` (method, features, threshold,
percentile, the validation and test shares kept, the acquisition checks) and ``ood.npz`` (``mean``,
``precision``; read with ``allow_pickle=False``). A run without them (trained before the guard existed,
a `cxr zoo` run, a run on autoencoder codes) has no guard: :meth:`OodGuard.load` returns None and every
result says "not assessed" (:func:`not_assessed`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrlab.errors import ModelError

if TYPE_CHECKING:
    from cxrlab.training.train import Trained

#: a :class:`cxrlab.evaluation.inference.LoadedRun` (not imported: inference imports this module)
LoadedRun = Any

GUARD_JSON = "ood.json"
GUARD_NPZ = "ood.npz"
GUARD_VERSION = 1
PERCENTILE = 95.0
#: at most this many training images fit the Gaussian (a seeded sample beyond it: 2,000 images pin down a
#: shrunk covariance; more only costs time on a run that did not cache its features)
MAX_FIT_IMAGES = 2000
METHOD = "mahalanobis-ledoit-wolf"
FEATURES = (
    "the model's penultimate activations (the input of its output layer; for a head without hidden layers "
    "the pooled backbone output), as cxr predict computes them, at eval.precision"
)
#: the words shown instead of a bare probability when an image is out of distribution
OUTSIDE = "outside what this model was validated on"
RADIOGRAPH_MODALITIES = ("CR", "DX", "DR")
CHEST_PARTS = ("CHEST", "THORAX", "LUNG", "LUNGS", "RIB", "RIBS", "HEART")
ACQUISITION_CHECKS = [
    "lateral view: DICOM ViewPosition LL/RL/LATERAL, or a label file's view column (view, View Position, "
    "Frontal/Lateral) saying L/LL/RL/LAT/LATERAL",
    f"body part: DICOM BodyPartExamined present and not one of {', '.join(CHEST_PARTS)}",
    f"modality: DICOM Modality present and not a radiograph ({'/'.join(RADIOGRAPH_MODALITIES)})",
]
_LATERAL = {"L", "LL", "RL", "LAT", "LATERAL", "XTABLELATERAL"}
#: header keys read, normalised (lower case, letters and digits only) → what they are
_VIEW_KEYS = ("viewposition", "view", "frontallateral", "projection")
_PART_KEYS = ("bodypartexamined", "bodypart")
_MODALITY_KEYS = ("modality",)


# --------------------------------------------------------------------------- features


def logits_and_features(
    loaded: LoadedRun, images: np.ndarray, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``(N, K)`` and OOD features ``(N, D)`` of uint8 images ``(N, H, W)`` in one pass of the run's
    model at its ``eval.precision``: :func:`cxrlab.evaluation.evaluate.predict_images`, whose features are
    the penultimate activations (the input of the output layer; averaged over the shifted copies when the
    run uses test-time shift averaging)."""
    from cxrlab.evaluation.evaluate import predict_images

    meta = loaded.meta
    return predict_images(
        loaded.model,
        images,
        meta["channels"],
        tuple(meta["mean"]),
        tuple(meta["std"]),
        device,
        loaded.cfg.eval.precision,
        tta_shift=loaded.tta_shift,
    )


def features(loaded: LoadedRun, images: np.ndarray, device: str = "cpu") -> np.ndarray:
    """OOD features ``(N, D)`` of uint8 images ``(N, H, W)`` (:func:`logits_and_features`). An exported
    model gives the same vector as its second output (``Exported(loaded, features=True)``)."""
    return logits_and_features(loaded, images, device)[1]


# --------------------------------------------------------------------------- acquisition checks


def _norm_key(key: str) -> str:
    return re.sub(r"[^a-z0-9]", "", key.lower())


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        value = "\\".join(str(v) for v in value)
    return str(value).strip().upper()


def _lookup(header: Any, keys: tuple[str, ...]) -> tuple[str, str] | None:
    """``(the key as given, its value)`` of the first of ``keys`` (normalised) that ``header`` holds with a
    non-empty value; ``header``: a mapping (DICOM keywords, cxrlab's attribute names, label-file columns) or
    a pydicom Dataset."""
    items: list[tuple[str, Any]]
    if isinstance(header, Mapping):
        items = list(header.items())
    else:  # a pydicom Dataset: its keywords
        items = [(k, header.get(k)) for k in ("ViewPosition", "BodyPartExamined", "Modality")]
    found = {_norm_key(str(k)): (str(k), v) for k, v in items}
    for key in keys:
        if key in found and _text(found[key][1]):
            given, value = found[key]
            return given, _text(value)
    return None


def acquisition_reasons(header: Any) -> list[str]:
    """Why an image's acquisition is outside what a frontal chest radiograph model was validated on (empty:
    nothing objects, or no header). Reads only ViewPosition, BodyPartExamined and Modality (or a label
    file's view column), never a patient attribute."""
    if header is None:
        return []
    reasons = []
    view = _lookup(header, _VIEW_KEYS)
    if view is not None:
        key, value = view
        words = re.sub(r"[^A-Z]", "", value)
        if words in _LATERAL or "LATERAL" in value:
            reasons.append(f"a lateral view ({key} {value!r}); the guard accepts frontal (PA/AP) views")
    part = _lookup(header, _PART_KEYS)
    if part is not None and not any(p in part[1] for p in CHEST_PARTS):
        reasons.append(f"body part {part[1]!r} ({part[0]}), not the chest")
    modality = _lookup(header, _MODALITY_KEYS)
    if modality is not None and modality[1] not in RADIOGRAPH_MODALITIES:
        reasons.append(
            f"modality {modality[1]!r} ({modality[0]}), not a radiograph ({'/'.join(RADIOGRAPH_MODALITIES)})"
        )
    return reasons


def dicom_header(path: Any) -> dict[str, Any] | None:
    """The acquisition attributes of a DICOM file (view_position, modality, body_part; header only), or
    None for another kind of file, an unreadable header or an in-memory image."""
    import os

    from cxrlab.data.dicom import DicomError, is_dicom, read_header

    if not isinstance(path, str | os.PathLike):
        return None
    try:
        if not is_dicom(path):
            return None
        return dict(read_header(path).attributes)
    except (DicomError, ImportError, OSError):
        return None


def upload_header(data: bytes) -> dict[str, Any] | None:
    """The acquisition attributes (ViewPosition, BodyPartExamined, Modality) of DICOM bytes held in memory
    (a service's upload; header only), or None when pydicom is missing or the header cannot be parsed."""
    import io
    import warnings

    try:
        import pydicom

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
            return {k: _text(ds.get(k)) or None for k in ("ViewPosition", "BodyPartExamined", "Modality")}
    except Exception:  # noqa: BLE001 - no header to check: the image itself was decoded (or refused) apart
        return None


def not_assessed(header: Any = None) -> dict[str, Any]:
    """The ``ood`` entry of a run without a guard: ``in_distribution`` None (not assessed), unless an
    acquisition check objects (then False, with its reasons)."""
    reasons = acquisition_reasons(header)
    return {
        "in_distribution": False if reasons else None,
        "score": None,
        "threshold": None,
        "reasons": reasons
        or ["not assessed: this run has no out-of-distribution guard (trained before cxrlab fitted one)"],
    }


# --------------------------------------------------------------------------- the guard

#: the guard :meth:`OodGuard.load` read last, by its files' paths, modification times and sizes
_LOADED: dict[tuple, OodGuard] = {}


@dataclass
class OodGuard:
    """A fitted guard: Gaussian ``mean`` and ``precision`` (inverse shrunk covariance) of the training
    images' OOD features, and the score ``threshold``; ``info`` is ood.json."""

    mean: np.ndarray
    precision: np.ndarray
    threshold: float
    info: dict[str, Any] = field(default_factory=dict)

    def score(self, feats: np.ndarray) -> np.ndarray:
        """Mahalanobis distance (not squared) of each row of ``feats`` ``(N, C)``."""
        x = np.asarray(feats, dtype=np.float64).reshape(len(feats), -1)
        if x.shape[1] != self.mean.shape[0]:
            raise ModelError(
                f"the OOD guard expects {self.mean.shape[0]} features per image, got {x.shape[1]}: "
                "the features come from another model than the run's"
            )
        d = x - self.mean
        sq = np.einsum("ij,jk,ik->i", d, self.precision.astype(np.float64), d)
        return np.sqrt(np.maximum(sq, 0.0))

    def assess(self, feats: np.ndarray, headers: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """One ``{"in_distribution", "score", "threshold", "reasons"}`` per row of ``feats``; ``headers``
        (one per image, or None) adds the acquisition checks (:func:`acquisition_reasons`)."""
        scores = self.score(feats)
        if headers is not None and len(headers) != len(scores):
            raise ValueError(f"{len(headers)} headers for {len(scores)} images")
        out = []
        for i, s in enumerate(scores):
            reasons = acquisition_reasons(headers[i]) if headers is not None else []
            if not s <= self.threshold:  # NaN features are out too
                pct = self.info.get("percentile", PERCENTILE)
                reasons.insert(
                    0,
                    f"image features far from the training images (Mahalanobis distance {s:.1f} > "
                    f"{self.threshold:.1f}, the validation images' {pct:g}th percentile)",
                )
            out.append({
                "in_distribution": not reasons,
                "score": round(float(s), 4),
                "threshold": round(float(self.threshold), 4),
                "reasons": reasons,
            })  # fmt: skip
        return out

    def save(self, run_dir: str | Path) -> None:
        """Write ood.npz and ood.json into ``run_dir`` (atomically, the JSON last)."""
        import io

        from cxrlab.runs import atomic_write, write_json

        buf = io.BytesIO()
        np.savez(buf, mean=self.mean.astype(np.float64), precision=self.precision.astype(np.float32))
        atomic_write(Path(run_dir) / GUARD_NPZ, buf.getvalue())
        write_json(Path(run_dir) / GUARD_JSON, {**self.info, "threshold": float(self.threshold)})

    @classmethod
    def load(cls, run_dir: str | Path) -> OodGuard | None:
        """The run's guard, or None when it has none (ood.json absent); a damaged guard is one line."""
        from cxrlab.runs import read_json

        run_dir = Path(run_dir)
        if not (run_dir / GUARD_JSON).is_file():
            return None
        try:  # the same files as last time (the DICOM node predicts image by image): the guard read then
            key = tuple((str(f.resolve()), f.stat().st_mtime_ns, f.stat().st_size)
                        for f in (run_dir / GUARD_JSON, run_dir / GUARD_NPZ))  # fmt: skip
        except OSError:
            key = None
        if key is not None and key in _LOADED:
            return _LOADED[key]
        info = read_json(run_dir / GUARD_JSON)
        try:
            with np.load(run_dir / GUARD_NPZ, allow_pickle=False) as z:
                mean, precision = np.asarray(z["mean"], np.float64), np.asarray(z["precision"], np.float64)
            threshold = float(info["threshold"])
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise ModelError(
                f"{run_dir}: the OOD guard ({GUARD_JSON}, {GUARD_NPZ}) is damaged "
                f"({exc.__class__.__name__}); delete both files to run without it, or retrain"
            ) from None
        d = mean.shape[0] if mean.ndim == 1 else -1
        if d < 1 or precision.shape != (d, d) or not np.isfinite(threshold):
            raise ModelError(f"{run_dir}: the OOD guard's arrays do not fit together ({GUARD_NPZ}); retrain")
        guard = cls(mean, precision, threshold, info)
        if key is not None:
            _LOADED.clear()  # one guard kept: a process serves one run
            _LOADED[key] = guard
        return guard


def fit(
    train_feats: np.ndarray, val_feats: np.ndarray, percentile: float = PERCENTILE
) -> tuple[OodGuard, np.ndarray]:
    """Fit the Gaussian on ``train_feats`` (Ledoit-Wolf shrinkage), threshold at ``percentile`` of the
    ``val_feats`` scores; returns the guard and those validation scores."""
    from sklearn.covariance import LedoitWolf

    train = np.asarray(train_feats, dtype=np.float64).reshape(len(train_feats), -1)
    val = np.asarray(val_feats, dtype=np.float64).reshape(len(val_feats), -1)
    if len(train) < 2 or len(val) < 1:
        raise ValueError("the OOD guard needs at least 2 training and 1 validation image")
    lw = LedoitWolf().fit(train)
    guard = OodGuard(lw.location_, lw.precision_.astype(np.float32), float("inf"))
    scores = guard.score(val)  # with the float32 precision that is saved, so the threshold is exact
    guard.threshold = float(np.percentile(scores, percentile))
    guard.info = {
        "version": GUARD_VERSION,
        "method": METHOD,
        "method_text": (
            "Mahalanobis distance to a Gaussian fitted to the training images' features, covariance shrunk "
            "by Ledoit-Wolf (sklearn.covariance.LedoitWolf); threshold: the validation images' "
            f"{percentile:g}th percentile"
        ),
        "features": FEATURES,
        "feature_dim": int(train.shape[1]),
        "shrinkage": round(float(lw.shrinkage_), 6),
        "percentile": percentile,
        "fit_images": len(train),
        "val_images": len(val),
        "val_kept_share": round(float(np.mean(scores <= guard.threshold)), 4),
        "acquisition_checks": ACQUISITION_CHECKS,
        "arrays": GUARD_NPZ,
    }
    return guard, scores


def _from_cache(trained: Trained, split: str) -> np.ndarray | None:
    """OOD features of ``split`` from the inputs training cached (the fast path's backbone features, a
    partial freeze's prefix activations) through the trained head or suffix; None without a cache."""
    from cxrlab.evaluation.evaluate import predict_features

    cached = (trained.features or {}).get(split)
    if cached is None:
        return None
    return predict_features(trained.model, cached, trained.suffix)[1]


def fit_run(run_dir: str | Path, trained: Trained, loaded: LoadedRun, seed: int = 0) -> dict[str, Any] | None:
    """Fit the run's guard after training and write it into ``run_dir``; returns ood.json's content, or
    None when the run has no images to guard (autoencoder codes) or too few training/validation images.

    The fast path's cached features are reused (training features at the training precision, validation
    and test features at ``eval.precision``); other runs compute them with the saved model (``loaded``: the
    run folder just written, loaded by :func:`cxrlab.evaluation.inference.load_run`)."""
    data = trained.data
    if data.codes is not None or "train" not in data.images or "val" not in data.images:
        return None
    if len(data.images["train"]) < 2 or len(data.images["val"]) < 1:
        return None
    # the cached inputs are the unshifted images: a run with test-time shift averaging computes them again
    loaded_tta = loaded.tta_shift > 0
    recomputed = False
    feats: dict[str, np.ndarray] = {}
    for split in ("train", "val", "test"):
        if split not in data.images:
            continue
        images = data.images[split]
        pick = None
        if split == "train" and len(images) > MAX_FIT_IMAGES:
            pick = np.sort(np.random.default_rng(seed).choice(len(images), MAX_FIT_IMAGES, replace=False))
        got = _from_cache(trained, split) if not loaded_tta else None
        if got is None:
            recomputed = True
            got = features(loaded, images if pick is None else images[pick])
        elif pick is not None:
            got = got[pick]
        feats[split] = got
    guard, _ = fit(feats["train"], feats["val"])
    if "test" in feats:
        guard.info["test_images"] = len(feats["test"])
        guard.info["test_kept_share"] = round(
            float(np.mean(guard.score(feats["test"]) <= guard.threshold)), 4
        )
    guard.info["reused_cached_features"] = not recomputed
    guard.save(run_dir)
    return guard.info
