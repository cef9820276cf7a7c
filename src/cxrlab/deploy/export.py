"""`cxr export`: a run's model as ONNX or TorchScript, with its preprocessing contract as metadata.

The exported graph takes what a deployment can produce without cxrlab: a batch of grey images
``float32 (N, 1, H, W)`` scaled to [0, 1] (8-bit grey / 255, after the run's resize rule). Inside the graph
the grey channel is replicated to the network's channels, normalised with the run's mean/std, run through
the network and turned into calibrated probabilities ``(N, K)`` (the saved temperature, softmax or sigmoid;
a multi-label run: one sigmoid per finding, with its threshold per finding). The contract — input size,
channels, mean/std, resize rule, class names, operating threshold, temperature, cxrlab version, run id —
travels inside the file: ONNX ``metadata_props`` (one ``cxrlab`` JSON entry plus flat keys) or a TorchScript
extra file ``cxrlab.json``; so does the run's model card (:mod:`cxrlab.reports.model_card`: ONNX key
``model_card``, TorchScript extra file ``model_card.json``; :func:`read_model_card` reads it back).
Before the file is written, a parity check runs the export on 32 real test images of the run and compares
its probabilities with cxrlab's own inference.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrlab._optional import require
from cxrlab._version import __version__
from cxrlab.errors import CxrError
from cxrlab.evaluation.evaluate import logits_to_probs, predict_images
from cxrlab.evaluation.inference import LoadedRun, image_run, sample_test_images
from cxrlab.models.tta import with_tta
from cxrlab.reports.model_card import card_for
from cxrlab.runs import atomic_write

FORMATS = ("onnx", "torchscript")
#: Largest allowed max |Δp| between the export and cxrlab's own inference on the parity images.
PARITY_TOLERANCE = 1e-4
PARITY_IMAGES = 32
EXTRA_FILE = "cxrlab.json"
#: The run's model card (:mod:`cxrlab.reports.model_card`): ONNX metadata key / TorchScript extra file.
CARD_KEY, CARD_FILE = "model_card", "model_card.json"
CONTRACT_VERSION = "cxrlab-export/1"


class Exported(nn.Module):
    """Grey [0, 1] images ``(N, 1, H, W)`` → calibrated class probabilities ``(N, K)``; with
    ``features=True`` also the penultimate features ``(N, D)`` (the input of the output layer, as
    :func:`cxrlab.evaluation.evaluate.predict_images` returns them), a second output named ``features``."""

    def __init__(self, loaded: LoadedRun, features: bool = False):
        super().__init__()
        self.with_features = features
        self.output_names = ["probabilities", "features"] if features else ["probabilities"]
        meta = loaded.meta
        channels = int(meta["channels"])
        mean, std = list(meta["mean"]), list(meta["std"])
        # the same rule as cxrlab.data.prepare.normalize
        mean = mean[:channels] if len(mean) >= channels else mean * channels
        std = std[:channels] if len(std) >= channels else std * channels
        self.model = with_tta(loaded.model.eval(), loaded.tta_shift)
        self.channels = channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.temperature = float(meta.get("temperature", 1.0))
        self.multilabel = meta.get("task") == "multilabel"  # one sigmoid per finding, not a softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.channels != 1:
            x = x.expand(-1, self.channels, -1, -1)
        x = (x - self.mean) / self.std
        if self.with_features:
            feats = self.model.features(x)
            return self._probs(self.model.head.out(feats) / self.temperature), feats
        return self._probs(self.model(x) / self.temperature)

    def _probs(self, z: torch.Tensor) -> torch.Tensor:
        if self.multilabel:
            return torch.sigmoid(z)
        if z.shape[1] == 1:
            p = torch.sigmoid(z)
            return torch.cat([1 - p, p], dim=1)
        return torch.softmax(z, dim=1)


def run_id(loaded: LoadedRun) -> str:
    """The run folder's name and the first 12 hex digits of its weights' SHA-256 (names the exact model)."""
    digest = hashlib.sha256()
    with open(loaded.path / "model.safetensors", "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return f"{loaded.path.resolve().name}@{digest.hexdigest()[:12]}"


def contract(loaded: LoadedRun, rid: str | None = None) -> dict[str, Any]:
    """The preprocessing and decision contract of a run's model (what a caller must know to use it)."""
    meta = loaded.meta
    op = meta.get("operating_point") or {}
    size = int(meta["image_size"])
    multilabel = meta.get("task") == "multilabel"
    extra: dict[str, Any] = {}
    if multilabel:  # one probability per finding, each with its own threshold
        extra["thresholds"] = dict(meta.get("thresholds") or {})
    if meta.get("pretrained"):  # e.g. torchxrayvision's weights and their input contract
        extra["pretrained"] = meta["pretrained"]
    return {
        "format": CONTRACT_VERSION,
        "cxrlab_version": __version__,
        "run_id": rid or run_id(loaded),
        "model": meta.get("model", loaded.cfg.model.name),
        "classes": list(meta["classes"]),
        "input": {
            "name": "image",
            "shape": ["N", 1, size, size],
            "dtype": "float32",
            "image_size": size,
            "resize": meta.get("resize", "squash"),
            "grayscale": "8-bit grey (colour converted with ITU-R 601 luma), divided by 255",
            "channels": int(meta["channels"]),
            "mean": list(meta["mean"]),
            "std": list(meta["std"]),
            "normalisation": _normalisation(meta),
            "test_time_shift_px": loaded.tta_shift,
            "test_time_augmentation": (
                f"inside the graph: the mean over the image and four copies shifted by {loaded.tta_shift} px"
                if loaded.tta_shift
                else "none"
            ),
        },
        "task": "multilabel" if multilabel else "single-label",
        "output": {
            "name": "probabilities",
            "shape": ["N", len(meta["classes"])],
            "calibrated": not multilabel,
            "activation": "sigmoid per finding" if multilabel else "softmax",
        },
        "temperature": float(meta.get("temperature", 1.0)),
        "operating_point": {
            "positive_class": op.get("positive_class"),
            "threshold": op.get("threshold"),
            "method": op.get("method", "argmax"),
        },
        **extra,
    }


def _normalisation(meta: dict[str, Any]) -> str:
    """How the graph scales its [0, 1] input, in words (torchxrayvision's models: their [-1024, 1024])."""
    text = "inside the graph: grey replicated to `channels`, then (x - mean) / std"
    if list(meta["mean"]) == [0.5] and list(meta["std"]) == [1 / 2048]:
        text += " = (2x - 1) * 1024, torchxrayvision's [-1024, 1024] scaling (xrv.utils.normalize(img, 255))"
    return text


def _flat(info: dict[str, Any]) -> dict[str, str]:
    """Flat string keys for tools that read ONNX metadata one key at a time."""
    inp, op = info["input"], info["operating_point"]
    return {
        "cxrlab": json.dumps(info, sort_keys=True),
        "cxrlab_version": info["cxrlab_version"],
        "run_id": info["run_id"],
        "classes": json.dumps(info["classes"]),
        "input_size": str(inp["image_size"]),
        "channels": str(inp["channels"]),
        "mean": json.dumps(inp["mean"]),
        "std": json.dumps(inp["std"]),
        "resize": inp["resize"],
        "temperature": repr(info["temperature"]),
        "positive_class": str(op["positive_class"] or ""),
        "threshold": "" if op["threshold"] is None else repr(op["threshold"]),
        "task": info["task"],
        "normalisation": inp["normalisation"],
    }


@contextlib.contextmanager
def _quiet():
    """Exporters print progress and deprecation warnings; the user sees cxrlab's lines only."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def require_onnx() -> None:
    """ONNX export, its parity check and reading an .onnx file need the ``[export]`` extra."""
    for module in ("onnx", "onnxscript", "onnxruntime"):
        require(module, "export", "ONNX export (--format onnx)")


def _onnx_bytes(
    module: Exported, size: int, info: dict[str, Any], card: dict[str, Any] | None = None
) -> bytes:
    onnx = require("onnx", "export", "ONNX export (--format onnx)")

    dummy = torch.rand(2, 1, size, size)
    path = None
    with _quiet():
        try:
            program = torch.onnx.export(
                module,
                (dummy,),
                dynamo=True,
                input_names=["image"],
                output_names=module.output_names,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                verbose=False,
            )
            proto = program.model_proto
        except Exception:  # noqa: BLE001 - a graph torch.export cannot capture: the TorchScript exporter
            import tempfile

            fd, path = tempfile.mkstemp(suffix=".onnx")
            os.close(fd)
            torch.onnx.export(
                module,
                (dummy,),
                path,
                dynamo=False,
                input_names=["image"],
                output_names=module.output_names,
                dynamic_axes={name: {0: "N"} for name in ["image", *module.output_names]},
                opset_version=17,
            )
            proto = onnx.load(path)
            os.unlink(path)
    del proto.metadata_props[:]
    for key, value in _flat(info).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    if card:  # the model card travels with the model (one JSON entry)
        entry = proto.metadata_props.add()
        entry.key, entry.value = CARD_KEY, json.dumps(card, sort_keys=True)
    proto.producer_name = "cxrlab"
    proto.producer_version = __version__
    proto.doc_string = f"cxrlab {info['model']} from run {info['run_id']}: grey [0,1] images -> probabilities"
    return proto.SerializeToString()


def _torchscript_bytes(
    module: Exported, size: int, info: dict[str, Any], card: dict[str, Any] | None = None
) -> bytes:
    buf = io.BytesIO()
    extra = {EXTRA_FILE: json.dumps(info, sort_keys=True)}
    if card:
        extra[CARD_FILE] = json.dumps(card, sort_keys=True)
    with _quiet(), torch.inference_mode(False), torch.no_grad():
        traced = torch.jit.trace(module, torch.rand(2, 1, size, size))
        torch.jit.save(traced, buf, _extra_files=extra)
    return buf.getvalue()


def run_exported(data: bytes, fmt: str, x: np.ndarray) -> np.ndarray:
    """Probabilities of an exported model (bytes) for grey [0, 1] images ``(N, 1, H, W)`` float32."""
    if fmt == "onnx":
        ort = require("onnxruntime", "export", "running an ONNX export")

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 3
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, {"image": x})[0])
    with _quiet():
        # TorchScript archives are read by TorchScript's own restricted loader, not Python's pickle
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def parity(loaded: LoadedRun, data: bytes, fmt: str, n: int = PARITY_IMAGES) -> dict[str, Any]:
    """Max |Δp| between the exported model and cxrlab's own fp32 inference on ``n`` test images of the run."""
    images, paths = sample_test_images(loaded, n)
    meta = loaded.meta
    logits, _ = predict_images(
        loaded.model, images, meta["channels"], tuple(meta["mean"]), tuple(meta["std"]), "cpu", "32",
        tta_shift=loaded.tta_shift,
    )  # fmt: skip
    if meta.get("task") == "multilabel":
        reference = 1 / (1 + np.exp(-logits.astype(np.float64)))
    else:
        reference = logits_to_probs(logits, meta.get("temperature", 1.0))
    x = (images.astype(np.float32) / 255.0)[:, None]
    got = run_exported(data, fmt, x)
    diff = float(np.abs(got.astype(np.float64) - reference).max())
    return {"n": len(images), "max_abs_diff": diff, "tolerance": PARITY_TOLERANCE, "images": paths}


def export_run(
    run: str | Path, fmt: str, out: str | Path, overwrite: bool = False, tolerance: float = PARITY_TOLERANCE
) -> dict[str, Any]:
    """Export ``run`` to ``out`` (ONNX or TorchScript) after a parity check; returns the contract with the
    parity result. Nothing is written when the check fails."""
    if fmt not in FORMATS:
        raise CxrError(f"--format {fmt!r}: choose onnx or torchscript")
    if fmt == "onnx":  # no [export] extra: one line before the run loads
        require_onnx()
    if not (math.isfinite(tolerance) and 0 <= tolerance < 1):
        raise CxrError(
            f"--tolerance {tolerance:g}: give the largest difference in probability allowed, from 0 up to "
            f"(not including) 1, e.g. {PARITY_TOLERANCE:g}"
        )
    out = Path(out)
    if out.is_dir():
        raise CxrError(
            f"--out {out} is a folder; give a file name such as model.{'onnx' if fmt == 'onnx' else 'pt'}"
        )
    if out.exists() and not overwrite:
        raise CxrError(f"--out {out} already exists; choose another file or pass --overwrite")
    loaded = image_run(run)
    if loaded.path.resolve() in out.resolve().parents:
        raise CxrError(f"--out {out} is inside the run folder {run}; write the export outside it")
    info = contract(loaded)
    module = Exported(loaded).eval()
    size = int(loaded.meta["image_size"])
    start = time.perf_counter()
    card = card_for(loaded.path)  # the run folder's model card (built now for a run older than cards)
    data = (_onnx_bytes if fmt == "onnx" else _torchscript_bytes)(module, size, info, card)
    export_s = time.perf_counter() - start
    check = parity(loaded, data, fmt)
    if not check["max_abs_diff"] <= tolerance:  # NaN fails too
        raise CxrError(
            f"parity check failed: the {fmt} export differs from cxrlab's own inference by "
            f"{check['max_abs_diff']:.3g} in probability on {check['n']} test images (limit {tolerance:g}); "
            "nothing was written"
        )
    atomic_write(out, data)
    return {**info, "parity": {k: v for k, v in check.items() if k != "images"}, "export_s": export_s,
            "bytes": len(data)}  # fmt: skip


def _stored(path: str | Path) -> dict[str, str]:
    """The JSON entries cxrlab stored in an exported file: ONNX ``metadata_props``, or a TorchScript
    archive's extra files (by name without ``.json``); one line when it is neither."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):  # a TorchScript archive
            with zipfile.ZipFile(path) as archive:
                out = {}
                for n in archive.namelist():
                    for key, name in (("cxrlab", EXTRA_FILE), (CARD_KEY, CARD_FILE)):
                        if n.endswith(f"/extra/{name}"):
                            out[key] = archive.read(n).decode("utf-8")
                if "cxrlab" not in out:
                    raise CxrError(f"{path} is a TorchScript file without cxrlab metadata")
                return out
        onnx = require("onnx", "export", "reading an ONNX file")
        proto = onnx.load(str(path), load_external_data=False)
    except CxrError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file: one line
        raise CxrError(f"{path} is not an ONNX or TorchScript file written by `cxr export` ({exc})") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if "cxrlab" not in props:
        raise CxrError(f"{path} is an ONNX file without cxrlab metadata")
    return props


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The cxrlab contract stored in an exported file (ONNX or TorchScript), without running the model."""
    return json.loads(_stored(path)["cxrlab"])


def read_model_card(path: str | Path) -> dict[str, Any]:
    """The run's model card stored in an exported file (``model_card.json`` of the run at export time)."""
    stored = _stored(path)
    if CARD_KEY not in stored:
        raise CxrError(f"{path} carries no model card (exported before cxrlab wrote cards): export it again")
    return json.loads(stored[CARD_KEY])
