"""A torch Dataset over anything cxrlab reads, for notebooks: ``cxrlab.datasets.open(path, …)``.

::

    import cxrlab
    ds = cxrlab.datasets.open("../shared/data/nih-1000/images",
                              labels="../shared/data/nih-1000/labels.csv", preset="nih", size=224)
    ds.metadata      # a pandas DataFrame: path, patient, split, one column per finding, view, sex, age
    x, y = ds[0]     # (1, 224, 224) float tensor in [0, 1]; y: 14 floats, NaN = unknown
    test = ds.subset(ds.metadata.split == "test")

``path`` is what ``cxr train --data`` takes — a folder of class subfolders (with or without ``train/``,
``val/``, ``test/``), a MedMNIST ``.npz``, the image folder of a label file (``labels=FILE.csv`` with a
``preset``: ``nih``, ``chexpert``, ``mimic``, ``covid-ieee`` or ``generic``) — or a folder of images with
no class subfolders (a DICOM export, say), which gives an unlabelled dataset. The readers are cxrlab's own
(:func:`cxrlab.data.index.discover`, :mod:`cxrlab.data.labels`, :mod:`cxrlab.data.dicom`), so the splits
are the ones ``cxr train`` makes from the same data with the same ``seed`` and fractions (stratified and
patient-grouped where they are carved), and every image is decoded as training decodes it
(:func:`cxrlab.data.images.load_gray`, the shared cache, or the ``.npz`` arrays).

``metadata`` is a pandas DataFrame (pandas is the optional dependency of ``cxrlab[datasets]``, the table
torchxrayvision's ``.csv`` also is); :meth:`ChestXrayDataset.records` gives the same rows as a list of dicts
without pandas. Its columns: ``path``, ``patient`` (None where unknown: no patient id in a file name, label
file or DICOM header; DICOM ids are salted hashes), ``split`` (train / val / test; None when unlabelled),
``label`` (the class name; single-label) or one float column per finding (1, 0, NaN = unknown or
uncertain-ignored; multi-label), ``view``, ``sex`` (M / F / O), ``age`` (years, float), ``source`` (the
data it came from), then the label file's other columns (a name taken already gets `` (label file)``).
Sex and age come from label files only: cxrlab never reads them from DICOM headers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cxrlab.config import DataConfig, LabelsConfig, RunConfig
from cxrlab.data.index import SPLITS, DatasetIndex, Sample
from cxrlab.errors import ConfigError, DataError

__all__ = ["ChestXrayDataset", "open"]

#: Image side for files when ``size`` is not given (a ``.npz`` keeps its own).
DEFAULT_SIZE = 224
#: The standard columns of :attr:`ChestXrayDataset.metadata`, before the labels and the file's own.
COLUMNS = ("path", "patient", "split")
AFTER = ("view", "sex", "age", "source")


@dataclass
class _Source:
    """One dataset as indexed (its npz arrays, label table and DICOM attributes) and how it was opened."""

    index: DatasetIndex
    data: DataConfig
    seed: int


@dataclass
class _Item:
    sample: Sample
    source: _Source
    record: dict[str, Any] = field(default_factory=dict)


def open(  # noqa: A001 - cxrlab.datasets.open, as the issue and torchxrayvision users expect
    path: str | Path,
    labels: str | Path | None = None,
    preset: str | None = None,
    size: int | None = None,
    split: str | None = None,
    *,
    classes: Sequence[str] | None = None,
    findings: Sequence[str] | None = None,
    where: Sequence[str] | None = None,
    resize: str = "squash",
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    val_split: str = "given",
    group_pattern: str | None = r"(person\d+)[_-]",
    transform: Callable[[torch.Tensor], Any] | None = None,
    target_transform: Callable[[Any], Any] | None = None,
    cache_dir: str | Path | None = None,
    **label_options: Any,
) -> ChestXrayDataset:
    """Open ``path`` as a :class:`ChestXrayDataset` (module docstring for what it takes and gives).

    ``labels``/``preset``: a label file and its format; ``label_options`` are the other
    :class:`~cxrlab.config.LabelsConfig` fields (``label_column``, ``split_column``, ``uncertainty``,
    ``task`` …). ``size``: the square side images are resized to (``resize``: squash, pad or crop; default
    224 for files, an ``.npz``'s own size). ``split``: ``train``, ``val`` or ``test`` only (default: all).
    ``classes``/``findings``/``where``: keep only these classes, findings, rows. ``seed``,
    ``val_fraction``, ``test_fraction``, ``val_split``, ``group_pattern``: how missing splits are carved,
    as in ``cxr train``. ``transform`` is applied to each image tensor, ``target_transform`` to each
    target."""
    if split is not None and split not in SPLITS:
        raise DataError(f"split {split!r}: choose train, val or test (or None for all images)")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise ConfigError(f"size {size!r}: give a positive number of pixels, e.g. size=224")
    if preset is not None and labels is None:
        raise ConfigError(f"preset {preset!r} describes a label file: give it with labels=FILE.csv")
    if labels is None and (findings or where or label_options):
        given = ", ".join(k for k, v in {"findings": findings, "where": where, **label_options}.items() if v)
        raise ConfigError(f"{given} apply to a label file: give it with labels=FILE.csv")
    label_cfg = _labels_config(labels, preset, findings, where, label_options)
    data = _data_config(path, classes, label_cfg, resize, val_fraction, test_fraction, val_split,
                        group_pattern, cache_dir)  # fmt: skip
    index = _index(data, seed)
    if classes and index.task == "multilabel":
        raise ConfigError(
            f"classes= picks single-label classes; {data.labels.file} is multi-label: pick with findings="
        )
    npz_size = _npz_size(index)
    side = size if size is not None else npz_size or DEFAULT_SIZE
    source = _Source(index, data, seed)
    ds = ChestXrayDataset._from_source(source, side, resize, transform, target_transform)
    return ds.subset(np.flatnonzero(ds._column("split") == split)) if split else ds


class ChestXrayDataset(Dataset):
    """Chest radiographs with their labels and metadata: ``ds[i]`` is ``(image, target)``.

    ``image``: a float32 tensor ``(1, size, size)`` in [0, 1] (grey, as cxrlab trains on it), passed through
    ``transform`` when one was given. ``target``: the class index (an ``int``; -1 unlabelled), or for a
    multi-label dataset a float32 tensor of one value per finding (1, 0, NaN unknown), through
    ``target_transform``. Made by :func:`open`; :meth:`subset` and :meth:`merge` make new ones."""

    def __init__(
        self,
        items: list[_Item],
        task: str,
        classes: list[str],
        targets: np.ndarray,
        size: int,
        resize: str = "squash",
        transform: Callable[[torch.Tensor], Any] | None = None,
        target_transform: Callable[[Any], Any] | None = None,
    ):
        self._items = items
        self.task = task  # "single" | "multilabel" | "unlabelled"
        self.classes = list(classes)
        self.targets = targets
        self.size, self.resize = size, resize
        self.transform, self.target_transform = transform, target_transform
        self._frame: Any = None
        self._caches: dict[str, Any] = {}

    # ------------------------------------------------------------------ construction

    @classmethod
    def _from_source(
        cls, source: _Source, size: int, resize: str, transform: Any, target_transform: Any
    ) -> ChestXrayDataset:
        index = source.index
        task = index.task if index.layout != "images" else "unlabelled"
        items = [_Item(s, source, _record(index, s, task)) for s in index.samples]
        if task == "multilabel":
            targets = np.stack([s.targets for s in index.samples]).astype(np.float32)  # type: ignore[misc]
        else:
            targets = np.array([s.label for s in index.samples], dtype=np.int64)
        classes = index.findings if task == "multilabel" else index.classes
        return cls(items, task, classes, targets, size, resize, transform, target_transform)

    def _like(
        self, items: list[_Item], targets: np.ndarray, classes: list[str] | None = None, task: str = ""
    ) -> ChestXrayDataset:
        names = self.classes if classes is None else classes
        out = ChestXrayDataset(items, task or self.task, names, targets, self.size, self.resize)
        out.transform, out.target_transform = self.transform, self.target_transform
        return out

    # ------------------------------------------------------------------ what it holds

    @property
    def findings(self) -> list[str]:
        """The findings of a multi-label dataset (the columns of a target); ``[]`` otherwise."""
        return list(self.classes) if self.task == "multilabel" else []

    @property
    def pathologies(self) -> list[str]:
        """torchxrayvision's name for :attr:`classes`."""
        return list(self.classes)

    @property
    def labels(self) -> np.ndarray:
        """``(N, K)`` float32, one column per class or finding: 1, 0, NaN unknown (torchxrayvision's
        ``.labels``); a single-label dataset's rows are one-hot."""
        if self.task == "multilabel":
            return self.targets.copy()
        out = np.full((len(self), len(self.classes)), np.nan, np.float32)
        known = self.targets >= 0
        out[known] = 0.0
        out[np.flatnonzero(known), self.targets[known]] = 1.0
        return out

    @property
    def paths(self) -> list[str]:
        """Each image's path (``npz:SPLIT:ROW`` for an ``.npz`` row, as in splits.csv)."""
        return [it.sample.path for it in self._items]

    def records(self) -> list[dict[str, Any]]:
        """The metadata rows as a list of dicts (no pandas needed)."""
        names = self._names()
        rows = []
        for it, target in zip(self._items, self.targets, strict=True):
            row = {k: it.record.get(k) for k in COLUMNS}
            if self.task == "multilabel":
                row.update({f: float(v) for f, v in zip(self.classes, target, strict=True)})
            else:
                row["label"] = self.classes[int(target)] if target >= 0 else None
            row.update({k: it.record.get(k) for k in AFTER})
            row.update({names[k]: v for k, v in it.record.get("extra", {}).items()})
            rows.append(row)
        return rows

    @property
    def metadata(self) -> Any:
        """The metadata table, a pandas DataFrame in dataset order (module docstring for its columns); a
        fresh copy each time, so editing it changes neither the dataset nor the next call's table."""
        if self._frame is None:
            from cxrlab._optional import require

            pd = require("pandas", "datasets", "cxrlab.datasets metadata (or use .records())")
            frame = pd.DataFrame.from_records(self.records())
            if frame.empty:
                frame = pd.DataFrame(columns=[*COLUMNS, *self._label_columns(), *AFTER])
            for c in ("age", *(self.classes if self.task == "multilabel" else [])):
                frame[c] = frame[c].astype("float64")
            self._frame = frame
        return self._frame.copy()

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """Files passed over while indexing, with why (unreadable folders, names that are not UTF-8)."""
        seen: dict[int, DatasetIndex] = {id(it.source.index): it.source.index for it in self._items}
        return [s for index in seen.values() for s in index.skipped]

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        splits = {s: n for s in (*SPLITS, None) if (n := int((self._column("split") == s).sum()))}
        where = ", ".join(f"{s or 'no split'} {n:,}" for s, n in splits.items())
        what = {"single": f"classes {', '.join(self.classes)}", "unlabelled": "unlabelled",
                "multilabel": f"{len(self.classes)} findings"}[self.task]  # fmt: skip
        sources = sorted({it.source.index.source for it in self._items})
        return (f"ChestXrayDataset({len(self):,} images from {', '.join(sources) or 'nothing'}; {what}; "
                f"{self.size}x{self.size} px; {where})")  # fmt: skip

    # ------------------------------------------------------------------ images

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        i = self._position(i)
        x = torch.from_numpy(self.image(i)).unsqueeze(0).float().div_(255.0)
        if self.transform is not None:
            x = self.transform(x)
        if self.task == "multilabel":
            y: Any = torch.from_numpy(self.targets[i].copy())
        else:
            y = int(self.targets[i])
        if self.target_transform is not None:
            y = self.target_transform(y)
        return x, y

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` as cxrlab decodes it: ``(size, size)`` uint8 grey (through the shared cache)."""
        item = self._items[self._position(i)]
        npz = item.source.index.npz
        if npz is not None:
            return _npz_image(npz, item.sample.path, self.size)
        got, failures = self._cache(item).load_many([item.sample.path], self.size, self.resize)
        if got[0] is None:
            why = failures.get(item.sample.path, "unreadable")
            raise DataError(f"{item.sample.path}: {why} (leave unreadable images out with ds.readable())")
        return got[0]

    def images(self) -> np.ndarray:
        """Every image, ``(N, size, size)`` uint8, decoded in parallel into the cache's memory-mapped
        store (read-only; the second call reads it back). One line when some file is unreadable."""
        out, bad = self._decode_all()
        if bad:
            first = next(iter(bad.items()))
            raise DataError(
                f"{len(bad):,} of {len(self):,} images are unreadable (first: {first[0]}: {first[1]}); "
                "leave them out with ds = ds.readable()"
            )
        return out

    def readable(self) -> ChestXrayDataset:
        """The images that decode (all of them are decoded once, into the cache)."""
        _, bad = self._decode_all()
        return self.subset([i for i, it in enumerate(self._items) if it.sample.path not in bad])

    def _decode_all(self) -> tuple[np.ndarray, dict[str, str]]:
        from cxrlab.data.cache import IMAGE_ENTRY_LIMIT

        bad: dict[str, str] = {}
        files: dict[int, list[int]] = {}
        for i, it in enumerate(self._items):
            if it.source.index.npz is None:
                files.setdefault(id(it.source), []).append(i)
        stores = []
        for rows in files.values():
            paths = [self._items[i].sample.path for i in rows]
            array, kept, _, failures = self._cache(self._items[rows[0]]).store(
                paths, self.size, self.resize, entries=len(paths) <= IMAGE_ENTRY_LIMIT
            )
            bad.update(failures)
            stores.append((rows, array, kept))
        if len(stores) == 1 and len(stores[0][0]) == len(self) and not bad:
            return stores[0][1], bad  # the store itself (read-only memory map): no second copy
        out = np.zeros((len(self), self.size, self.size), np.uint8)
        for i, it in enumerate(self._items):
            if it.source.index.npz is not None:
                out[i] = _npz_image(it.source.index.npz, it.sample.path, self.size)
        for rows, array, kept in stores:
            for r, k in enumerate(kept):
                out[rows[k]] = array[r]
        return out, bad

    def _cache(self, item: _Item) -> Any:
        from cxrlab.data.cache import ImageCache

        key = str(item.source.data.cache_dir or "")
        if key not in self._caches:
            self._caches[key] = ImageCache(item.source.data.cache_dir)
        return self._caches[key]

    # ------------------------------------------------------------------ subsets and merging

    def subset(self, which: Any) -> ChestXrayDataset:
        """The images at ``which``: positions (ints, negative from the end) or a boolean mask of length
        ``len(ds)`` (a numpy array, a list, a pandas Series such as ``ds.metadata.sex == "F"``)."""
        at = np.asarray(which)
        if at.dtype == bool:
            if at.shape != (len(self),):
                raise DataError(f"a mask of {at.size:,} values for a dataset of {len(self):,} images; they "
                                "must match (build it from ds.metadata)")  # fmt: skip
            at = np.flatnonzero(at)
        elif at.size == 0:
            at = np.zeros(0, np.int64)
        elif at.ndim != 1 or not np.issubdtype(at.dtype, np.integer):
            raise DataError(
                f"subset takes positions (ints) or a boolean mask; got {at.dtype} of shape {at.shape}"
            )
        out_of_range = at[(at >= len(self)) | (at < -len(self))]
        if out_of_range.size:
            raise DataError(f"position {int(out_of_range[0])} is out of range for {len(self):,} images")
        at = at % max(len(self), 1)
        return self._like([self._items[i] for i in at], self.targets[at])

    def split(self, name: str) -> ChestXrayDataset:
        """The images of split ``name`` (train, val or test)."""
        if name not in SPLITS:
            raise DataError(f"split {name!r}: choose train, val or test")
        return self.subset(self._column("split") == name)

    def merge(self, other: ChestXrayDataset) -> ChestXrayDataset:
        """This dataset's images followed by ``other``'s, at this one's size. Classes (single-label) or
        findings (multi-label) are united, in this dataset's order first; a finding one side lacks is NaN
        (unknown) there. An unlabelled dataset merges with either kind (its targets unknown)."""
        if not isinstance(other, ChestXrayDataset):
            raise DataError(
                f"merge takes another cxrlab dataset (cxrlab.datasets.open), not a {type(other).__name__}"
            )
        if (other.size, other.resize) != (self.size, self.resize):
            raise DataError(
                f"cannot merge images of {other.size} px ({other.resize}) into {self.size} px "
                f"({self.resize}); open both with the same size= and resize="
            )
        tasks = {self.task, other.task} - {"unlabelled"}
        if len(tasks) > 1:
            raise DataError(
                "cannot merge a single-label dataset with a multi-label one; open the single-label one with "
                "task='multilabel' (each class a finding) or the other with one finding and task='single'"
            )
        task = tasks.pop() if tasks else "unlabelled"
        parts = [d for d in (self, other) if d.task != "unlabelled"]
        names = list(dict.fromkeys(n for d in parts for n in d.classes))
        targets = np.concatenate([d._targets_in(task, names) for d in (self, other)])
        return self._like(self._items + other._items, targets, names, task)

    def __add__(self, other: ChestXrayDataset) -> ChestXrayDataset:  # type: ignore[override]
        return self.merge(other)

    def _targets_in(self, task: str, names: list[str]) -> np.ndarray:
        if task == "multilabel":
            out = np.full((len(self), len(names)), np.nan, np.float32)
            if self.task == "multilabel":
                out[:, [names.index(c) for c in self.classes]] = self.targets
            return out
        if self.task == "unlabelled":
            return np.full(len(self), -1, np.int64)
        remap = np.array([names.index(c) for c in self.classes], np.int64)
        return np.where(self.targets >= 0, remap[np.clip(self.targets, 0, None)], -1)

    # ------------------------------------------------------------------ training on it

    def run_config(self, cfg: RunConfig | None = None) -> RunConfig:
        """``cfg`` (default: a new :class:`~cxrlab.config.RunConfig`) with this dataset's data section, seed
        and image size, so ``cxrlab.train`` makes the same splits as :attr:`metadata` shows. Only for a
        dataset as :func:`open` made it (not a subset or a merge)."""
        sources = {id(it.source): it.source for it in self._items}
        whole = len(sources) == 1 and len(self) == len(next(iter(sources.values())).index.samples)
        if not whole or self.task == "unlabelled":
            raise DataError(
                "run_config needs a labelled dataset as cxrlab.datasets.open made it (a subset or merge "
                "has no data folder cxr train could read)"
            )
        source = next(iter(sources.values()))
        out = (cfg or RunConfig()).model_copy(deep=True)
        out.data = source.data.model_copy(deep=True)
        out.data.resize = self.resize
        out.train.seed = source.seed
        out.data.image_size = self.size
        return out

    # ------------------------------------------------------------------ helpers

    def _position(self, i: Any) -> int:
        if isinstance(i, bool) or not isinstance(i, int | np.integer):
            raise DataError(f"index {i!r}: give an int position (ds.subset(...) takes many)")
        if not -len(self) <= i < len(self):
            raise IndexError(f"position {i} is out of range for {len(self):,} images")
        return int(i) % len(self)

    def _column(self, name: str) -> np.ndarray:
        return np.array([it.record.get(name) for it in self._items], dtype=object)

    def _label_columns(self) -> list[str]:
        return list(self.classes) if self.task == "multilabel" else ["label"]

    def _names(self) -> dict[str, str]:
        """The label files' own columns, renamed where a standard or label column has the name."""
        taken = {*COLUMNS, *AFTER, *self._label_columns()}
        extra = dict.fromkeys(k for it in self._items for k in it.record.get("extra", {}))
        return {k: f"{k} (label file)" if k in taken else k for k in extra}


# ---------------------------------------------------------------------- opening


def _labels_config(labels: Any, preset: str | None, findings: Any, where: Any, options: dict[str, Any]
                   ) -> LabelsConfig | None:  # fmt: skip
    if labels is None:
        return None
    fields = {"file": str(labels), "format": preset or "generic", **options}
    if findings:
        fields["findings"] = [findings] if isinstance(findings, str) else list(findings)
    if where:
        fields["where"] = [where] if isinstance(where, str) else list(where)
    return _validated(LabelsConfig, fields, "label file option")


def _data_config(path: Any, classes: Any, labels: LabelsConfig | None, resize: str, val_fraction: float,
                 test_fraction: float, val_split: str, group_pattern: str | None, cache_dir: Any
                 ) -> DataConfig:  # fmt: skip
    if not isinstance(path, str | Path):
        raise DataError(
            f"path is a {type(path).__name__}; give a folder, a .npz file or a label file's image folder"
        )
    fields: dict[str, Any] = {
        "path": str(path), "classes": [classes] if isinstance(classes, str) else classes, "resize": resize,
        "val_fraction": val_fraction, "test_fraction": test_fraction, "val_split": val_split,
        "group_pattern": group_pattern, "cache_dir": str(cache_dir) if cache_dir else None,
    }  # fmt: skip
    if labels is not None:
        fields["labels"] = labels
    return _validated(DataConfig, fields, "option")


def _validated(model: Any, fields: dict[str, Any], what: str) -> Any:
    from pydantic import ValidationError

    try:
        return model(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"]) or "?"
        if err["type"] == "extra_forbidden":
            known = ", ".join(k for k in model.model_fields if k not in ("file", "format", "path", "labels"))
            raise ConfigError(f"unknown {what} {name!r}; known: {known}") from None
        raise ConfigError(f"{what} {name}: {err['msg']} (got {err.get('input')!r})") from None


def _index(data: DataConfig, seed: int) -> DatasetIndex:
    """:func:`~cxrlab.data.index.discover` as ``cxr train`` calls it; a folder of images without class
    subfolders becomes an unlabelled index (layout ``images``)."""
    from cxrlab.data.prepare import index_dataset

    root = Path(data.path).expanduser()  # type: ignore[arg-type]
    labelled = bool(data.labels.file)
    if not labelled and root.is_dir() and not _has_subfolders(root):
        return _unlabelled(root, data)
    index = index_dataset(data, seed)
    if index.layout == "codes":
        raise DataError(
            f"{data.path} holds autoencoder codes, not images; open the images they were encoded from"
        )
    return index


def _has_subfolders(root: Path) -> bool:
    from cxrlab.data.index import _subdirs

    return bool(_subdirs(root))


def _unlabelled(root: Path, data: DataConfig) -> DatasetIndex:
    from cxrlab.data.index import _dicom_headers, _image_files, hidden_note

    index = DatasetIndex(str(root), "images", [], [])
    index.samples = [Sample(str(f), -1, "", f"file:{f}") for f in _image_files(root, index)]
    if not index.samples:
        raise DataError(
            f"{root} has no images and no class subfolders (give a folder of images, of class subfolders, "
            "a .npz file, or a label file's image folder with labels=FILE.csv)" + hidden_note(index)
        )
    _dicom_headers(index, data.dicom_patient_ids)
    return index


def _npz_size(index: DatasetIndex) -> int | None:
    if index.npz is None or not index.samples:
        return None
    _, split, _ = index.samples[0].path.split(":")
    return int(index.npz[f"{split}_images"].shape[-2 if index.npz[f"{split}_images"].ndim == 3 else -3])


def _npz_image(npz: dict[str, np.ndarray], path: str, size: int) -> np.ndarray:
    """One ``.npz`` row as :func:`cxrlab.data.prepare` makes it (grey, bilinear to ``size``)."""
    from cxrlab.data.prepare import _npz_gray

    _, split, row = path.split(":")
    image = _npz_gray(npz[f"{split}_images"][int(row)])
    if image.shape != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    return image.astype(np.uint8)


# ---------------------------------------------------------------------- metadata


def _record(index: DatasetIndex, s: Sample, task: str) -> dict[str, Any]:
    group = s.group
    patient = None if group.startswith(("file:", "npz:", "synthetic:")) else group
    rec: dict[str, Any] = {"path": s.path, "patient": patient, "split": s.split or None,
                           "source": index.source, "view": None, "sex": None, "age": np.nan}  # fmt: skip
    table = index.table
    if table is not None and s.row >= 0:
        row = table.rows[s.row]
        roles = table.roles
        cell: dict[str, str] = {}
        for c, v in zip(table.columns, row, strict=False):
            cell.setdefault(c, v)  # the first of columns named alike, as the label reader takes it
        if roles.get("view"):
            rec["view"] = cell.get(roles["view"], "").strip() or None
        if roles.get("sex"):
            rec["sex"] = _sex(cell.get(roles["sex"], ""))
        if roles.get("age"):
            rec["age"] = _age(cell.get(roles["age"], ""))
        used = set(roles.values())
        rec["extra"] = {c: v for c, v in cell.items() if c not in used}
    elif s.path in index.dicom:
        rec["view"] = (str(index.dicom[s.path].get("view_position") or "").strip()) or None
    return rec


def _sex(value: str) -> str | None:
    from cxrlab.data.subgroups import normalise

    return normalise("sex", value)  # M / F / O as the subgroup metrics read it; None when missing


def _age(value: str) -> float:
    """``57``, ``058Y`` (DICOM-style), ``6M`` → years; NaN when blank or not an age."""
    from cxrlab.data.subgroups import parse_age

    years = parse_age(value)
    return float("nan") if years is None else years
