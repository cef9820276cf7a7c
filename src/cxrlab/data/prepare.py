"""From a :class:`DataConfig` to uint8 arrays per split (memory-mapped stores in the cache), and on to torch
datasets."""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cxrlab.config import AugmentConfig, DataConfig
from cxrlab.data.cache import IMAGE_ENTRY_LIMIT, ImageCache
from cxrlab.data.index import SPLITS, DatasetIndex, add_extra_train, discover
from cxrlab.errors import DataError


@dataclass
class PreparedData:
    """Decoded images of every split, ready to become tensors."""

    index: DatasetIndex
    image_size: int
    images: dict[str, np.ndarray] = field(default_factory=dict)  # split -> (N, H, W) uint8
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # split -> (N,) int64 (multi-label: -1)
    # multi-label (index.task == "multilabel"): split -> (N, findings) float32, 1 / 0 / NaN (ignored)
    targets: dict[str, np.ndarray] = field(default_factory=dict)
    paths: dict[str, list[str]] = field(default_factory=dict)
    keys: dict[str, list[str]] = field(default_factory=dict)  # identity of each image (for feature caches)
    decode_s: float = 0.0
    # Autoencoder codes instead of pixels (`cxr autoencoder encode`): split -> (N, C, H, W) float16;
    # ``images`` stays empty then. ``codes_meta``: the codes file's record (encode time, autoencoder…).
    codes: dict[str, np.ndarray] | None = None
    codes_meta: dict | None = None
    # `cxr evaluate --data OTHER` of a multi-label run: the findings evaluated and those on one side only
    # (cxrlab.evaluation.inference.match_findings); None otherwise
    findings_match: dict | None = None

    @property
    def classes(self) -> list[str]:
        return self.index.classes

    @property
    def multilabel(self) -> bool:
        """True for a multi-label task (one sigmoid output per finding)."""
        return self.index.task == "multilabel"

    @property
    def findings(self) -> list[str]:
        return self.index.findings

    def y(self, split: str) -> np.ndarray:
        """What the loss compares with: the targets matrix (multi-label) or the class indices."""
        return self.targets[split] if self.multilabel else self.labels[split]


def prepare_data(
    cfg: DataConfig,
    image_size: int,
    seed: int = 0,
    require_test: bool = True,
    progress: bool = True,
) -> PreparedData:
    """Index the dataset, then decode (or read from cache) every image at ``image_size``."""
    if not cfg.path:
        raise DataError(
            "no data given: pass --data FOLDER (or a .npz file; with --labels FILE.csv, the folder of its "
            "images), or set data.path in the config"
        )
    index = index_dataset(cfg, seed, require_test=require_test)
    if cfg.extra_train:
        if index.task == "multilabel":
            raise DataError(
                "--extra-train adds class-labelled images; it cannot be used on a multi-label task"
            )
        if index.layout == "codes":
            raise DataError("--extra-train adds images; it cannot be combined with autoencoder codes")
        add_extra_train(index, cfg.extra_train)
    start = time.perf_counter()
    out = PreparedData(index, image_size)
    if index.layout == "codes":
        from_codes(out)
    elif index.npz is not None:
        _from_npz(out, image_size)
    else:
        _from_files(out, image_size, cfg, progress)
    out.decode_s = time.perf_counter() - start
    return out


def index_dataset(
    cfg: DataConfig, seed: int = 0, require_test: bool = True, capped: bool = True
) -> DatasetIndex:
    """The index of ``cfg.path`` exactly as ``cxr train`` splits it: :func:`~cxrlab.data.index.discover` with
    every setting of the data section (the one place they are passed on), then ``data.labels.task``.
    ``capped=False`` ignores ``max_per_class`` (recorded images looked up by path must all be there)."""
    index = discover(
        cfg.path,  # type: ignore[arg-type]
        classes=cfg.classes,
        label_map=cfg.label_map,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        group_pattern=cfg.group_pattern,
        seed=seed,
        max_per_class=cfg.max_per_class if capped else None,
        require_test=require_test,
        patient_csv=cfg.patient_csv,
        patient_column=cfg.patient_column,
        file_column=cfg.file_column,
        labels=cfg.labels,
        val_split=cfg.val_split,
        dicom_patient_ids=cfg.dicom_patient_ids,
    )
    apply_task(index, cfg.labels.task if cfg.labels.file else "auto", cfg.labels.no_finding)
    return index


def apply_task(index: DatasetIndex, task: str, no_finding: str = "No Finding") -> None:
    """``data.labels.task`` over the detected task: ``multilabel`` turns a single-label index into one
    finding per class (a class named like ``no_finding`` or normal is the absence of all); ``single`` turns
    a multi-label index of exactly one finding into a binary task (images with that finding ignored are
    left out)."""
    if task == "auto" or task == index.task:
        return
    if task == "multilabel":
        nil = re.compile(r"normal|healthy|negative|no[_ -]?finding", re.I)
        keep = [
            i for i, c in enumerate(index.classes) if c.lower() != no_finding.lower() and not nil.fullmatch(c)
        ]
        if not keep:
            raise DataError(
                f"data.labels.task=multilabel: every class ({', '.join(index.classes)}) means no finding"
            )
        findings = [index.classes[i] for i in keep]
        for s in index.samples:
            s.targets = np.array([1.0 if s.label == i else 0.0 for i in keep], dtype=np.float32)
            s.label = -1
        index.task, index.findings, index.classes = "multilabel", findings, list(findings)
        return
    if len(index.findings) != 1:
        raise DataError(
            f"data.labels.task=single needs exactly one finding (the data has {len(index.findings)}: "
            f"{', '.join(index.findings[:4])}{', …' if len(index.findings) > 4 else ''}); choose one with "
            "--findings NAME, or name one class column with --label-column COLUMN"
        )
    name = index.findings[0]
    index.samples = [s for s in index.samples if s.targets is not None and not np.isnan(s.targets[0])]
    for s in index.samples:
        s.label = int(s.targets[0] > 0)  # type: ignore[index]
        s.targets = None
    index.task, index.findings, index.classes = "single", [], [f"no {name}", name]


def _from_npz(out: PreparedData, size: int) -> None:
    npz = out.index.npz or {}
    for split in SPLITS:
        samples = out.index.split(split)
        if not samples:
            continue
        rows = []
        for s in samples:
            _, src_split, i = s.path.split(":")
            rows.append((src_split, int(i)))
        images = np.stack([_npz_gray(npz[f"{sp}_images"][i]) for sp, i in rows])
        if images.shape[1:] != (size, size):
            images = np.stack(
                [
                    np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BILINEAR))
                    for im in images
                ]
            )
        out.images[split] = images.astype(np.uint8)
        out.labels[split] = np.array([s.label for s in samples], dtype=np.int64)
        out.paths[split] = [s.path for s in samples]
        out.keys[split] = [f"{out.index.source}:{s.path}:{size}" for s in samples]


def from_codes(out: PreparedData) -> None:
    """Fill ``out.codes`` (not ``images``) from a codes file, following the index's samples and splits."""
    from cxrlab.data.index import code_rows, codes_meta

    out.codes, out.codes_meta = {}, codes_meta(out.index.source)
    where, arrays = code_rows(out.index.source)
    for split in SPLITS:
        samples = out.index.split(split)
        if not samples:
            continue
        rows = [where[s.path] for s in samples]
        sources = {sp for sp, _ in rows}
        if len(sources) == 1:
            out.codes[split] = arrays[sources.pop()][np.array([i for _, i in rows])]
        else:
            out.codes[split] = np.stack([arrays[sp][i] for sp, i in rows])
        out.labels[split] = np.array([s.label for s in samples], dtype=np.int64)
        out.paths[split] = [s.path for s in samples]
        out.keys[split] = list(out.paths[split])


def _npz_gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3:
        return np.asarray(Image.fromarray(image.astype(np.uint8)).convert("L"))
    return image


def _from_files(out: PreparedData, size: int, cfg: DataConfig, progress: bool) -> None:
    """Each split becomes one store in the cache, read through memory mapping (see
    :meth:`ImageCache.store`); unreadable files are left out and listed in ``index.skipped``."""
    index = out.index
    cache = ImageCache(cfg.cache_dir)
    by_split: dict[str, list] = {s: [] for s in SPLITS}
    for sample in index.samples:
        by_split[sample.split].append(sample)
    bar = _progress_bar(len(index.samples), "decoding images") if progress else None
    entries = len(index.samples) <= IMAGE_ENTRY_LIMIT
    failures: dict[str, str] = {}
    kept: dict[str, tuple[np.ndarray, list, list[str]]] = {}
    try:
        for split, samples in by_split.items():
            if not samples:
                continue
            paths = [s.path for s in samples]
            array, rows, keys, bad = cache.store(
                paths, size, cfg.resize, progress=bar.update if bar is not None else None, entries=entries
            )
            failures.update(bad)
            kept[split] = (array, [samples[i] for i in rows], keys)
    finally:
        if bar is not None:
            bar.close()
    if failures:
        index.skipped += sorted(failures.items())
        ok = {id(s) for _, samples, _ in kept.values() for s in samples}
        index.samples = [s for s in index.samples if id(s) in ok]
    if index.task == "multilabel":
        if not any(s.split == "train" for s in index.samples):
            raise DataError(f"no readable training images ({len(failures)} files unreadable)")
    else:
        counts = index.counts()
        for name in index.classes:
            if counts["train"][name] == 0:
                raise DataError(
                    f"class {name!r} has no readable training images ({len(failures)} files unreadable)"
                )
    for split, (array, samples, keys) in kept.items():
        if not samples:
            continue
        out.images[split] = array
        out.labels[split] = np.array([s.label for s in samples], dtype=np.int64)
        out.paths[split] = [s.path for s in samples]
        out.keys[split] = keys
        if index.task == "multilabel":
            out.targets[split] = np.stack([s.targets for s in samples]).astype(np.float32)  # type: ignore[misc]


def _progress_bar(total: int, desc: str) -> Any:
    """:func:`cxrlab.runtime.progress` (drawn on a terminal only), or None when there is nothing to count."""
    from cxrlab.runtime import progress

    return progress(desc=desc, total=total) if total else None


# --------------------------------------------------------------------------- tensors


def to_tensor(
    images: np.ndarray, channels: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """uint8 ``(N, H, W)`` → normalised float ``(N, C, H, W)`` (grey replicated to C channels); the rows
    are copied (a read-only store's rows too) in the conversion to float."""
    x = torch.from_numpy(np.asarray(images, dtype=np.float32)).unsqueeze(1).div_(255.0)
    return normalize(x, channels, mean, std)


def normalize(
    x: torch.Tensor, channels: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """Replicate a 1-channel batch to ``channels`` and apply per-channel mean/std."""
    if channels != x.shape[1]:
        x = x.expand(-1, channels, -1, -1)
    m = torch.tensor(mean[:channels] if len(mean) >= channels else mean * channels).view(1, -1, 1, 1)
    s = torch.tensor(std[:channels] if len(std) >= channels else std * channels).view(1, -1, 1, 1)
    return (x - m) / s


class RandomStretch(torch.nn.Module):
    """Scale height and width by ``sqrt(r)`` and ``1/sqrt(r)``, ``log r`` uniform in ``±log(1+stretch)``,
    then centre-crop / zero-pad back to the input size: the aspect-ratio change a source's squash to a
    square made, in either direction."""

    def __init__(self, stretch: float):
        super().__init__()
        self.log_max = math.log1p(stretch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        from torchvision.transforms.v2 import functional as F

        h, w = x.shape[-2:]
        r = math.exp((torch.rand(()).item() * 2 - 1) * self.log_max)
        size = [max(1, round(h * math.sqrt(r))), max(1, round(w / math.sqrt(r)))]
        return F.center_crop(F.resize(x, size, antialias=True), [h, w])


def keras_augmentation(cfg: AugmentConfig, size: int):
    """torchvision v2 transform equivalent to Keras ImageDataGenerator's affine options, plus optional
    aspect-ratio jitter (:class:`RandomStretch`) and brightness/contrast jitter (exposure differs between
    sites)."""
    from torchvision.transforms import v2

    steps = [
        v2.RandomAffine(
            degrees=cfg.rotation,
            translate=(cfg.width_shift, cfg.height_shift),
            scale=(1 - cfg.zoom, 1 + cfg.zoom),
            shear=cfg.shear,
        )
    ]
    if cfg.stretch:
        steps.append(RandomStretch(cfg.stretch))
    if cfg.horizontal_flip:
        steps.append(v2.RandomHorizontalFlip())
    if cfg.brightness or cfg.contrast:
        steps.append(v2.ColorJitter(brightness=cfg.brightness or None, contrast=cfg.contrast or None))
    return v2.Compose(steps)


class ImageArrayDataset(Dataset):
    """uint8 images (in RAM or a read-only store) → normalised tensors, optionally augmented."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        channels: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: AugmentConfig | None = None,
    ):
        # a read-only memory-mapped store stays in the page cache: each item copies its row (no copy here)
        self.images = images  # (N, H, W) uint8
        # CXRLAB_TRACE_ROWS=FOLDER (debugging, tests): each process appends the rows it reads, by store
        self._trace = None
        folder = os.environ.get("CXRLAB_TRACE_ROWS")
        if folder and isinstance(images, np.memmap) and images.filename:
            rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))
            self._trace = (Path(folder) / f"rows-rank{rank}-{os.getpid()}.txt", Path(images.filename).stem)
        # class indices (int64), or a float targets matrix (multi-label, NaN = ignored)
        self.labels = torch.from_numpy(labels.astype(np.float32 if labels.ndim == 2 else np.int64))
        self.channels, self.mean, self.std = channels, mean, std
        self.augment = keras_augmentation(augment, images.shape[-1]) if augment else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._trace is not None:
            with open(self._trace[0], "a", encoding="utf-8") as fh:
                fh.write(f"{self._trace[1]} {int(i)}\n")
        x = torch.from_numpy(np.array(self.images[i])).unsqueeze(0)  # (1, H, W) uint8, this row's copy
        if self.augment is not None:
            x = self.augment(x)
        x = x.float().div_(255.0).unsqueeze(0)
        return normalize(x, self.channels, self.mean, self.std)[0], self.labels[i]
