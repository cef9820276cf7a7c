"""Use a finished run: load its model safely, evaluate on any data, predict single images."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrlab.config import LabelsConfig, RunConfig, validate_model_meta
from cxrlab.data.images import ImageReadError, load_gray
from cxrlab.data.index import DatasetIndex, discover
from cxrlab.data.memory import ACCEPTED, MemoryImage, from_memory, is_memory_image, kind
from cxrlab.data.prepare import PreparedData, _from_npz, apply_task, from_codes, index_dataset
from cxrlab.errors import CxrError, DataError, ModelError
from cxrlab.evaluation.evaluate import logits_to_probs, thresholded
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

    @property
    def tta_shift(self) -> int:
        """Pixels of the run's test-time shift averaging (0: none; runs before it existed have none)."""
        return int(self.meta.get("tta_shift_px", 0))


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
    max_images: int | None = None,
    labels: LabelsConfig | None = None,
    progress: bool = False,
    allow_changed: bool = False,
) -> PreparedData:
    """The run's own test split, or another dataset's test split (all of it when it has no splits);
    ``max_images`` keeps that many, taken in turn from each class (a quick sample).

    The run's own test split is the one recorded in its splits.csv, each image checked against the SHA-256
    recorded there (:func:`recorded_test_index`): a missing or changed image is one line, unless
    ``allow_changed`` scores the images that remain (and says so in ``data.split_origin`` and a warning).

    ``labels`` reads the other dataset from a label file (``data`` is then its image folder). For a
    multi-label run the other data's findings are renamed by ``label_map`` (data name → model name) and
    matched to the model's: :attr:`PreparedData.findings_match` lists those evaluated and those that exist
    on only one side (:func:`match_findings`)."""
    cfg = loaded.cfg
    size = loaded.meta["image_size"]
    multilabel = loaded.meta.get("task") == "multilabel"
    match: dict[str, Any] | None = None
    if labels is not None and labels.file and data is None:
        raise DataError("--labels reads another dataset's label file: give its image folder with --data")
    if allow_changed and data is not None:
        raise DataError(
            "--allow-changed applies to the run's own test split (its splits.csv); it does not go with --data"
        )
    if data is None and not cfg.data.path:  # a `cxr zoo` run: a pretrained model as it is, no data of its own
        raise DataError(
            f"{loaded.path} has no test split of its own (a pretrained model as it is, made by `cxr zoo`): "
            f"score it on a dataset with `cxr evaluate {loaded.path} --data IMAGES --labels FILE`"
        )
    if data is None:
        index = recorded_test_index(loaded, allow_changed)
    else:
        labelled = labels is not None and bool(labels.file)
        index = discover(
            data, None, None if multilabel else label_map, group_pattern=cfg.data.group_pattern,
            require_test=False, val_fraction=0.5, labels=labels if labelled else None,
        )  # fmt: skip
        _match_task(loaded, index, data, labels.no_finding if labelled else "No Finding")
        if any(s.split == "test" for s in index.samples):
            index.samples = [s for s in index.samples if s.split == "test"]
        else:  # no test/ folder: every image is evaluation data
            for s in index.samples:
                s.split = "test"
        index.split_origin = {"test": "all images of the external dataset" if data else ""}
        if multilabel:
            match = match_findings(index, loaded.classes, label_map or {}, classes)
        else:
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
    if max_images is not None:
        index.samples = _round_robin(index.samples, max_images)
    prepared = PreparedData(index, size, findings_match=match)
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
        _from_files_eval(prepared, size, data_cfg, progress)
    prepared.decode_s = time.perf_counter() - start
    if "test" not in (prepared.images if prepared.codes is None else prepared.codes):
        raise DataError("no readable evaluation images found")
    return prepared


def recorded_test_index(loaded: LoadedRun, allow_changed: bool = False) -> DatasetIndex:
    """The run's data indexed as it is now, its samples the test images recorded in the run's splits.csv
    (in that order), each found by path with its class and content hash unchanged (:mod:`cxrlab.data.splits`).

    A run without splits.csv (trained before cxrlab wrote it) re-derives its test split from the saved seed,
    and ``data.split_origin`` says so."""
    import sys

    from cxrlab.data.splits import SPLITS_FILE, changed_error, check_recorded_test, read_recorded_test

    cfg = loaded.cfg
    recorded = read_recorded_test(loaded.path)
    # the recorded images are looked up by path: no cap (it would drop some of them at random) and no test
    # split carved (what is carved now is not what was tested)
    index = index_dataset(cfg.data, cfg.train.seed, require_test=recorded is None, capped=recorded is None)
    if recorded is None:
        index.samples = [s for s in index.samples if s.split == "test"]
        index.split_origin["test"] = (
            f"re-derived by discovery with seed {cfg.train.seed}: the run has no {SPLITS_FILE} (trained "
            "before cxrlab recorded its splits): images added to or removed from the data since can move it"
        )
        return index
    rows, hashed = recorded
    if not rows:
        raise DataError(f"{loaded.path / SPLITS_FILE} records no test images; the run cannot be re-scored")
    check = check_recorded_test(index, rows, hashed)
    if check.problems and not allow_changed:
        raise changed_error(loaded.path, check)
    if check.problems:
        first, why = check.problems[0]
        print(
            f"warning: --allow-changed: scoring {len(check.samples)} of the {check.recorded} test images "
            f"recorded in {loaded.path / SPLITS_FILE}; {len(check.problems)} left out "
            f"(first: {first}: {why})",
            file=sys.stderr,
        )
        left_out = "recorded test image left out (--allow-changed)"
        index.skipped += [(p, f"{left_out}: {w}") for p, w in check.problems]
    if not check.samples:
        raise DataError(f"none of the {check.recorded} recorded test images of {loaded.path} is usable")
    index.samples = check.samples
    index.split_origin["test"] = check.origin(allow_changed)
    return index


def _match_task(loaded: LoadedRun, index: DatasetIndex, data: str, no_finding: str) -> None:
    """Bring another dataset's index to the run's task: class folders or a class column become findings
    for a multi-label run; a multi-label file of one finding becomes a binary task for a single-label run."""
    run_multi = loaded.meta.get("task") == "multilabel"
    if run_multi and index.task != "multilabel":
        if index.layout in ("npz", "codes"):
            raise DataError(
                f"{loaded.path} is a multi-label run; {data} holds single-label "
                f"{'codes' if index.layout == 'codes' else 'MedMNIST arrays'}: give image files with a label "
                "file (--labels FILE --labels-format …)"
            )
        apply_task(index, "multilabel", no_finding)  # each class a finding, a normal class none
    elif not run_multi and index.task == "multilabel":
        if len(index.findings) != 1:
            raise DataError(
                f"{loaded.path} is a single-label run ({', '.join(loaded.classes)}) but {data} has "
                f"{len(index.findings)} findings per image; choose one with --findings NAME (it becomes "
                f"'no NAME' vs 'NAME'; rename with --label-map)"
            )
        apply_task(index, "single", no_finding)


def match_findings(
    index: DatasetIndex,
    model_findings: list[str],
    label_map: dict[str, str],
    chosen: list[str] | None = None,
) -> dict[str, Any]:
    """Rename the data's findings by ``label_map`` (data name → model name; findings renamed to one name
    are merged: positive if any is, unknown only if all are) and keep the ones the model predicts, in its
    order (``chosen``: only these). Returns ``{"evaluated", "only_in_model", "only_in_data", "renamed"}``;
    one line (:class:`DataError`) when a map key is not a finding of the data or nothing is shared."""
    have = list(index.findings)
    unknown = [k for k in label_map if k not in have]
    if unknown:
        raise DataError(
            f"--label-map names {', '.join(map(repr, unknown))}, not findings of {index.source} "
            f"(it has: {', '.join(have)})"
        )
    if chosen:
        bad = [c for c in chosen if c not in model_findings]
        if bad:
            raise DataError(f"--classes {', '.join(bad)}: the model only knows {', '.join(model_findings)}")
    renamed = [label_map.get(f, f) for f in have]
    names = list(dict.fromkeys(renamed))
    only_in_data = [f for f in names if f not in model_findings]
    wanted = [f for f in (chosen or model_findings) if f in names]
    only_in_model = [f for f in model_findings if f not in names]
    if not wanted:
        raise DataError(
            f"none of the model's findings ({', '.join(chosen or model_findings)}) is a finding of "
            f"{index.source} (it has: {', '.join(have)}); map names with --label-map SRC=DST"
        )
    sources = [[j for j, r in enumerate(renamed) if r == f] for f in wanted]
    for s in index.samples:
        t = s.targets
        if t is None:
            continue
        cols = []
        for js in sources:
            known = t[js][~np.isnan(t[js])]
            cols.append(float(known.max()) if known.size else float("nan"))
        s.targets = np.array(cols, dtype=np.float32)
    index.findings, index.classes = wanted, list(wanted)
    return {
        "evaluated": wanted,
        "only_in_model": only_in_model,
        "only_in_data": only_in_data,
        "renamed": {k: v for k, v in label_map.items() if k != v},
    }


def _round_robin(samples: list, n: int) -> list:
    by_class: dict[int, list] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    queues = [by_class[k] for k in sorted(by_class)]
    out: list = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


def _from_files_eval(prepared: PreparedData, size: int, data_cfg, progress: bool = False) -> None:
    # Like training's decoder, but a class may be absent from an external set.
    index = prepared.index
    from cxrlab.data.cache import IMAGE_ENTRY_LIMIT, ImageCache
    from cxrlab.runtime import progress as progress_bar

    cache = ImageCache(data_cfg.cache_dir)
    paths = [s.path for s in index.samples]
    # one memory-mapped store (as training's splits), not a list of arrays stacked into a second copy
    bar = progress_bar(desc="decoding images", total=len(paths), quiet=not progress)
    try:
        images, keep, keys, failures = cache.store(
            paths, size, data_cfg.resize, progress=bar.update, entries=len(paths) <= IMAGE_ENTRY_LIMIT
        )
    finally:
        bar.close()
    index.skipped += sorted(failures.items())
    index.samples = [index.samples[i] for i in keep]
    if not keep:
        return
    prepared.images["test"] = images
    prepared.labels["test"] = np.array([s.label for s in index.samples], dtype=np.int64)
    prepared.paths["test"] = [s.path for s in index.samples]
    prepared.keys["test"] = keys


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


#: Characters that make an argument of `cxr predict` a glob pattern (when no file has that exact name).
GLOB_CHARS = frozenset("*?[")


def expand_inputs(items: list[Any]) -> list[Any]:
    """Files as given; folders walked recursively and globs expanded (``**`` included) to their image files.

    Returns the paths in input order (each once), with an ``{"image", "error"}`` entry in place of an
    argument that names nothing usable (a folder or a glob without image files). Hidden files and folders
    are skipped; symlinked folders are followed once (loops are broken). In-memory images
    (:class:`~cxrlab.data.memory.MemoryImage`) pass through in their place."""
    import glob
    import os

    from cxrlab.data.images import is_image_file

    paths: list[str | dict[str, Any]] = []
    seen: set[str] = set()

    def add(path: str) -> None:
        if path not in seen:
            seen.add(path)
            paths.append(path)

    for item in items:
        if isinstance(item, MemoryImage):
            paths.append(item)
        elif os.path.isdir(item):
            found = _walk_images(item)
            if not found:
                paths.append({"image": item, "error": "a folder with no image files (searched recursively)"})
            for f in found:
                add(f)
        elif not os.path.lexists(item) and GLOB_CHARS & set(item):
            found = sorted(
                f
                for f in glob.glob(item, recursive=True)
                if is_image_file(f) and os.path.isfile(f) and not Path(f).name.startswith(".")
            )
            if not found:
                paths.append({"image": item, "error": "no image file matches this pattern"})
            for f in found:
                add(f)
        else:
            add(item)
    return paths


def _walk_images(folder: str) -> list[str]:
    import os

    from cxrlab.data.images import is_image_file

    found: list[str] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            file = os.path.join(dirpath, name)
            if not name.startswith(".") and is_image_file(file) and os.path.isfile(file):
                found.append(file)
    return found


def _decode(path: str | MemoryImage, size: int, resize: str) -> np.ndarray | str:
    """The decoded image, or why it cannot be used (one short reason)."""
    if isinstance(path, MemoryImage):
        return path.gray(size, resize)
    why = _not_a_file(path)
    if why:
        return why
    try:
        return load_gray(path, size, resize)
    except (ImageReadError, OSError) as exc:
        return str(exc)


def image_run(run: str | Path) -> LoadedRun:
    """Load a run that predicts from images (a run trained on autoencoder codes is refused in one line)."""
    loaded = load_run(run)
    if loaded.meta.get("input") == "codes":
        raise CxrError(
            f"{run} was trained on autoencoder codes, not images; `cxr predict` needs an image-trained run "
            f"(score codes with `cxr evaluate {run}`)"
        )
    return loaded


def predict_arrays(
    loaded: LoadedRun, arrays: np.ndarray, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probabilities ``(N, K)`` and predicted class indices (saved threshold) for uint8 images."""
    probs, preds, _ = predict_with_features(loaded, arrays, device)
    return probs, preds


def predict_with_features(
    loaded: LoadedRun, arrays: np.ndarray, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`predict_arrays` and the OOD guard's features ``(N, C)`` (:mod:`cxrlab.evaluation.ood`), from
    one pass of the model (:func:`cxrlab.evaluation.ood.logits_and_features`)."""
    from cxrlab.evaluation.ood import logits_and_features

    logits, feats = logits_and_features(loaded, arrays, device)
    return (*_decide(loaded, logits), feats)


def _decide(loaded: LoadedRun, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and decisions from logits (calibration, saved thresholds)."""
    meta = loaded.meta
    if meta.get("task") == "multilabel":  # one sigmoid per finding; above[i, j]: at or over its threshold
        from cxrlab.evaluation.multilabel import sigmoid

        probs = sigmoid(logits)
        cut = np.array([meta.get("thresholds", {}).get(f, 0.5) for f in loaded.classes])
        return probs, probs >= cut[None, :]
    probs = logits_to_probs(logits, meta.get("temperature", 1.0))
    return probs, thresholded(probs, meta.get("operating_point") or {}, loaded.classes)


def iter_predictions(
    loaded: LoadedRun, paths: list[str | dict[str, Any]], chunk: int = 256, workers: int = 2
) -> Iterator[list[dict[str, Any]]]:
    """Predict ``paths`` in chunks (decoded by ``workers`` threads, batched inference); yields each chunk's
    results in input order: ``{"image", "class", "probabilities"}`` or ``{"image", "error"}`` (an error
    entry of :func:`expand_inputs` passes through)."""
    from concurrent.futures import ThreadPoolExecutor

    from cxrlab.evaluation.ood import OodGuard, dicom_header, not_assessed

    meta = loaded.meta
    size, resize = meta["image_size"], meta.get("resize", "squash")
    device = resolve_device("auto")
    guard = OodGuard.load(loaded.path)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(paths), chunk):
            part = paths[start : start + chunk]
            decoded = list(pool.map(lambda p: p if isinstance(p, dict) else _decode(p, size, resize), part))
            good = [i for i, d in enumerate(decoded) if isinstance(d, np.ndarray)]
            results: list[dict[str, Any]] = [
                d if isinstance(d, dict) else {"image": p, "error": d}
                for p, d in zip(part, decoded, strict=True)
            ]
            if good:
                batch = np.stack([decoded[i] for i in good])
                probs, preds, feats = predict_with_features(loaded, batch, device)
                headers = [dicom_header(part[i]) for i in good]  # DICOM: view, body part, modality
                ood = guard.assess(feats, headers) if guard else [not_assessed(h) for h in headers]
                for i, p, k, o in zip(good, probs, preds, ood, strict=True):
                    above = [c for c, hit in zip(loaded.classes, k, strict=True) if hit] if k.ndim else None
                    results[i] = {
                        "image": str(part[i]),
                        # multi-label: the findings above their thresholds, joined by '|'
                        "class": loaded.classes[int(k)] if above is None else "|".join(above) or "(none)",
                        **({"findings": above} if above is not None else {}),
                        "probabilities": {
                            c: round(float(v), 6) for c, v in zip(loaded.classes, p, strict=True)
                        },
                        "ood": o,  # in_distribution, score, threshold, reasons (cxrlab.evaluation.ood)
                    }
            yield results


def predict(run: str | Path, images: Any) -> list[dict[str, Any]]:
    """Class and probabilities for each image; the operating threshold is applied for binary runs.

    ``images``: a list (or one) of file paths (folders searched recursively, globs), numpy arrays
    (``H×W`` grey or ``H×W×3``; uint8, or float in [0, 1]), torch tensors (``H×W`` or ``C×H×W``) and PIL
    images, mixed as you like (:mod:`cxrlab.data.memory`: the pixels are decoded as the file's are, so an
    image gives the same probabilities as its path); a 4-D array or tensor is a batch. An in-memory image
    is named ``"<KIND #i>"`` (its position in the list) in the results. Unusable files come back as
    ``{"image", "error"}`` entries; an object that cannot be an image is one line (:class:`CxrError`)."""
    loaded = image_run(run)
    results = [r for part in iter_predictions(loaded, expand_inputs(as_inputs(images))) for r in part]
    if not results:
        raise CxrError("no images given")
    if not any("class" in r for r in results):
        raise CxrError(f"no readable image: {results[0]['image']}: {results[0]['error']}")
    return results


def as_inputs(images: Any) -> list[str | MemoryImage]:
    """:func:`predict`'s ``images`` as a list of paths and in-memory images (:class:`MemoryImage`): one
    image becomes a list of one, a 4-D array or tensor a list of its images; anything else is one line."""
    import os

    if isinstance(images, str | os.PathLike) or is_memory_image(images):
        batch = getattr(images, "ndim", 0) == 4
        items = list(images) if batch else [images]
    else:
        try:
            items = list(images)
        except TypeError:
            raise CxrError(f"images is a {kind(images)}; give a list of {ACCEPTED}") from None
    out: list[str | MemoryImage] = []
    for i, item in enumerate(items):
        if isinstance(item, str | os.PathLike):
            out.append(os.fspath(item))
        elif is_memory_image(item):
            out.append(from_memory(item, f"<{kind(item)} #{i}>"))
        else:
            raise CxrError(f"image #{i} is a {kind(item)}; give {ACCEPTED}")
    return out


def sample_test_images(loaded: LoadedRun, n: int = 32) -> tuple[np.ndarray, list[str]]:
    """Up to ``n`` decoded images of the run's own test split, taken in turn from each class."""
    prepared = prepare_eval_data(loaded, None, None, None, max_images=n)
    if prepared.codes is not None:
        raise CxrError(f"{loaded.path} was trained on autoencoder codes, not images")
    return prepared.images["test"][:n], list(prepared.paths.get("test", []))[:n]
