"""Use a finished run: load its model safely, evaluate on any data, predict single images."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrlab.config import RunConfig, validate_model_meta
from cxrlab.data.images import ImageReadError, load_gray
from cxrlab.data.index import discover
from cxrlab.data.prepare import PreparedData, _from_npz, from_codes
from cxrlab.errors import CxrError, DataError, ModelError
from cxrlab.evaluation.evaluate import logits_to_probs, predict_images, thresholded
from cxrlab.models import build_model
from cxrlab.models.heads import Classifier
from cxrlab.runs import load_state, read_json, require_run
from cxrlab.runtime import resolve_device


@dataclass
class LoadedRun:
    """A trained model with everything needed to use it."""

    path: Path
    cfg: RunConfig
    model: Classifier
    meta: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])


def load_run(run: str | Path) -> LoadedRun:
    """Rebuild the network from config.yaml and load model.safetensors (no pickle is ever read)."""
    path = require_run(run)
    cfg = RunConfig.load(path / "config.yaml")
    meta = read_json(path / "model.json") if (path / "model.json").is_file() else None
    if meta is None:
        raise ModelError(f"{path} has no model.json: the run did not finish; `cxr train --resume {path}`")
    validate_model_meta(meta, path / "model.json")  # before any allocation sized by it
    model_cfg = cfg.model.model_copy(update={"pretrained": False})
    model = build_model(model_cfg, len(meta["classes"]), meta["image_size"])
    state = load_state(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(
            f"{path}/model.safetensors does not match its config.yaml ({str(exc).splitlines()[0]})"
        ) from None
    return LoadedRun(path, cfg, model.eval(), meta)


def prepare_eval_data(
    loaded: LoadedRun,
    data: str | None,
    classes: list[str] | None,
    label_map: dict[str, str] | None,
) -> PreparedData:
    """The run's own test split, or another dataset's test split (all of it when it has no splits)."""
    cfg = loaded.cfg
    size = loaded.meta["image_size"]
    if data is None:
        index = discover(
            cfg.data.path,
            cfg.data.classes,
            cfg.data.label_map,
            cfg.data.val_fraction,
            cfg.data.test_fraction,
            cfg.data.group_pattern,
            cfg.train.seed,
            cfg.data.max_per_class,
            patient_csv=cfg.data.patient_csv,
            patient_column=cfg.data.patient_column,
            file_column=cfg.data.file_column,
            val_split=cfg.data.val_split,
            labels=cfg.data.labels,
            dicom_patient_ids=cfg.data.dicom_patient_ids,
        )
        index.samples = [s for s in index.samples if s.split == "test"]
    else:
        index = discover(
            data, None, label_map, group_pattern=cfg.data.group_pattern, require_test=False, val_fraction=0.5
        )
        if any(s.split == "test" for s in index.samples):
            index.samples = [s for s in index.samples if s.split == "test"]
        else:  # no test/ folder: every image is evaluation data
            for s in index.samples:
                s.split = "test"
        index.split_origin = {"test": "all images of the external dataset" if data else ""}
        wanted = classes or loaded.classes
        missing = [c for c in wanted if c not in index.classes]
        if missing:
            raise DataError(
                f"the model's class(es) {', '.join(map(repr, missing))} are not in {data} "
                f"(it has: {', '.join(index.classes)}); map names with --label-map SRC=DST"
            )
        unknown = [c for c in wanted if c not in loaded.classes]
        if unknown:
            raise DataError(
                f"--classes {', '.join(unknown)}: the model only knows {', '.join(loaded.classes)}"
            )
        old = index.classes
        index.samples = [s for s in index.samples if old[s.label] in wanted]
        for s in index.samples:
            s.label = loaded.classes.index(old[s.label])
        index.classes = loaded.classes
    prepared = PreparedData(index, size)
    start = time.perf_counter()
    if (index.layout == "codes") != (loaded.meta.get("input") == "codes"):
        raise DataError(
            f"{loaded.path} was trained on {loaded.meta.get('input', 'images')} but {index.source} holds "
            f"{'autoencoder codes' if index.layout == 'codes' else 'images'}; encode images with "
            "`cxr autoencoder encode AE --data DATA --out CODES` for a code-trained run"
        )
    if index.layout == "codes":
        from_codes(prepared)
    elif index.npz is not None:
        _from_npz(prepared, size)
    else:
        data_cfg = cfg.data.model_copy(update={"path": data or cfg.data.path})
        _from_files_eval(prepared, size, data_cfg)
    prepared.decode_s = time.perf_counter() - start
    if "test" not in (prepared.images if prepared.codes is None else prepared.codes):
        raise DataError("no readable evaluation images found")
    return prepared


def _from_files_eval(prepared: PreparedData, size: int, data_cfg) -> None:
    # Like training's decoder, but a class may be absent from an external set.
    index = prepared.index
    from cxrlab.data.cache import ImageCache, file_key

    cache = ImageCache(data_cfg.cache_dir)
    paths = [s.path for s in index.samples]
    arrays, failures = cache.load_many(paths, size, data_cfg.resize)
    index.skipped += sorted(failures.items())
    keep = [i for i, a in enumerate(arrays) if a is not None]
    index.samples = [index.samples[i] for i in keep]
    if not keep:
        return
    prepared.images["test"] = np.stack([arrays[i] for i in keep])
    prepared.labels["test"] = np.array([s.label for s in index.samples], dtype=np.int64)
    prepared.paths["test"] = [s.path for s in index.samples]
    prepared.keys["test"] = [file_key(p, size, data_cfg.resize) for p in prepared.paths["test"]]


def _not_a_file(path: str) -> str | None:
    """Why ``path`` cannot be an image file (a FIFO would block on open forever), or None."""
    import stat

    try:
        mode = Path(path).stat().st_mode
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    if stat.S_ISDIR(mode):
        return "a folder, not an image file; give image files"
    if not stat.S_ISREG(mode):
        return "not a regular file (a FIFO, socket or device); give image files"
    return None


def predict(run: str | Path, images: list[str]) -> list[dict[str, Any]]:
    """Class and probabilities for each image file (operating threshold applied for binary runs)."""
    loaded = load_run(run)
    meta = loaded.meta
    if meta.get("input") == "codes":
        raise CxrError(
            f"{run} was trained on autoencoder codes, not images; `cxr predict` needs an image-trained run "
            f"(score codes with `cxr evaluate {run}`)"
        )
    size = meta["image_size"]
    arrays, results, valid = [], [], []
    for path in images:
        why = _not_a_file(path)
        if why:
            results.append({"image": path, "error": why})
            continue
        try:
            arrays.append(load_gray(path, size, meta.get("resize", "squash")))
            valid.append(path)
        except (ImageReadError, OSError) as exc:
            results.append({"image": path, "error": str(exc)})
    if not valid:
        if results:
            raise CxrError(f"no readable image: {results[0]['image']}: {results[0]['error']}")
        raise CxrError("no images given")
    logits, _ = predict_images(
        loaded.model,
        np.stack(arrays),
        meta["channels"],
        tuple(meta["mean"]),
        tuple(meta["std"]),
        resolve_device("auto"),
        loaded.cfg.train.precision,
    )
    probs = logits_to_probs(logits, meta.get("temperature", 1.0))
    preds = thresholded(probs, meta.get("operating_point") or {}, loaded.classes)
    for path, p, k in zip(valid, probs, preds, strict=True):
        results.append(
            {
                "image": path,
                "class": loaded.classes[int(k)],
                "probabilities": {c: round(float(v), 6) for c, v in zip(loaded.classes, p, strict=True)},
            }
        )
    order = {p: i for i, p in enumerate(images)}
    return sorted(results, key=lambda r: order.get(r["image"], 0))
