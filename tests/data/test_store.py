"""The decoded-image store: one read-only memory-mapped uint8 file per split, built once, resumed after an
interruption, identical to a fresh build, its rows the decoded images, unreadable files still reported (real
covid-challenge images). Its memory (anonymous memory flat in the number of images) is measured in
docs/benchmarks.md §11.6, not here."""

from __future__ import annotations

import multiprocessing
import shutil
import threading

import numpy as np
import pytest
import torch

from cxrlab.config import DataConfig
from cxrlab.data.cache import ImageCache
from cxrlab.data.images import load_gray
from cxrlab.data.prepare import ImageArrayDataset, normalize, prepare_data

SIZE = 64


@pytest.fixture()
def files(tmp_path, covid_dir) -> list[str]:
    """An unreadable file first, then 11 real radiographs."""
    folder = tmp_path / "images"
    folder.mkdir()
    bad = folder / "000-broken.png"
    bad.write_bytes(b"not a png")
    out = [str(bad)]
    for f in sorted((covid_dir / "train" / "covid").iterdir())[:11]:
        shutil.copy(f, folder / f.name)
        out.append(str(folder / f.name))
    return out


def _store_files(cache: ImageCache) -> list[str]:
    return sorted(p.name for p in (cache.root / "store").iterdir() if not p.name.endswith(".lock"))


def test_store_is_built_once_then_read_through_memory_mapping(tmp_path, files):
    cache = ImageCache(tmp_path / "cache")
    array, rows, keys, failures = cache.store(files, SIZE, entries=False)
    assert isinstance(array, np.memmap) and array.shape == (11, SIZE, SIZE) and array.dtype == np.uint8
    assert cache.decoded == 11
    assert rows == list(range(1, 12)) and len(set(keys)) == 11
    assert list(failures) == [files[0]]
    built = {p: (cache.root / "store" / p).stat().st_mtime_ns for p in _store_files(cache)}
    assert sorted(p.rsplit(".", 1)[1] for p in built) == ["json", "npy"]  # no .partial / .done left

    again = ImageCache(tmp_path / "cache")
    array2, rows2, keys2, failures2 = again.store(files, SIZE, entries=False)
    assert again.decoded == 0  # nothing decoded: the store was read as it is
    assert {p: (cache.root / "store" / p).stat().st_mtime_ns for p in _store_files(cache)} == built
    assert isinstance(array2, np.memmap) and np.array_equal(array, array2)
    assert (rows2, keys2, failures2) == (rows, keys, failures)
    # a Dataset over the store keeps the map (nothing copied into RAM up front) and copies a row per item
    ds = ImageArrayDataset(array2, np.zeros(11, np.int64), 3, (0.5,) * 3, (0.25,) * 3)
    assert ds.images is array2


def test_an_interrupted_build_resumes_and_equals_a_fresh_build(tmp_path, files):
    cache = ImageCache(tmp_path / "cache")
    seen = []

    def stop_after_five(n: int) -> None:
        seen.append(n)
        if len(seen) == 5:  # row 0 (unreadable) and rows 1-4 are done
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.store(files, SIZE, progress=stop_after_five, entries=False)
    left = _store_files(cache)
    assert not [p for p in left if p.endswith(".npy") and "." not in p[:-4]]  # no complete store
    assert any(p.endswith(".partial.npy") for p in left) and any(p.endswith(".done.npy") for p in left)

    resumed = ImageCache(tmp_path / "cache")
    array, rows, _, failures = resumed.store(files, SIZE, entries=False)
    assert resumed.decoded == 11 - 4  # the four finished rows were not decoded again
    assert list(failures) == [files[0]] and rows == list(range(1, 12))

    fresh = ImageCache(tmp_path / "fresh")
    expected, *_ = fresh.store(files, SIZE, entries=False)
    assert fresh.decoded == 11
    assert isinstance(array, np.memmap) and np.array_equal(array, expected)


def test_prepare_reads_memory_mapped_splits_and_reports_unreadable_files(tmp_path, small_covid):
    (small_covid / "train" / "covid" / "zz-broken.png").write_bytes(b"\x89PNG truncated")
    cfg = DataConfig(path=str(small_covid), cache_dir=str(tmp_path / "cache"))
    data = prepare_data(cfg, SIZE, progress=False)
    assert set(data.images) == {"train", "val", "test"}
    for split, images in data.images.items():
        assert isinstance(images, np.memmap), split  # read from disk page by page, not held in RAM
        assert len(images) == len(data.labels[split]) == len(data.paths[split]) == len(data.keys[split])
    assert [p for p, _ in data.index.skipped] == [str(small_covid / "train" / "covid" / "zz-broken.png")]
    assert sum(len(a) for a in data.images.values()) == 36
    again = prepare_data(cfg, SIZE, progress=False)
    assert again.index.skipped == data.index.skipped
    for split in data.images:
        assert np.array_equal(again.images[split], data.images[split])
        assert again.paths[split] == data.paths[split]


def test_without_a_usable_cache_the_images_are_decoded_into_ram(tmp_path, files):
    # a read-only or full cache turns the cache off (tests/trust covers a full filesystem end to end)
    cache = ImageCache(tmp_path / "off", enabled=False)
    array, rows, _, failures = cache.store(files, SIZE)
    fresh, *_ = ImageCache(tmp_path / "rw").store(files, SIZE)
    assert not isinstance(array, np.memmap) and np.array_equal(array, fresh)
    assert rows == list(range(1, 12)) and list(failures) == [files[0]]
    assert not (tmp_path / "off" / "store").exists()


def test_store_rows_are_the_decoded_images_read_only_and_no_release_thread(tmp_path, files):
    built, rows, _, _ = ImageCache(tmp_path / "cache").store(files, SIZE, entries=False)
    reopened, rows2, _, _ = ImageCache(tmp_path / "cache").store(files, SIZE, entries=False)
    assert rows2 == rows
    for array in (built, reopened):  # the fresh build's map and a later run's
        assert isinstance(array, np.memmap) and array.mode == "r" and not array.flags.writeable
        for row, i in enumerate(rows):
            assert np.array_equal(array[row], load_gray(files[i], SIZE)), files[i]
    with pytest.raises(ValueError, match="read-only"):
        reopened[0, 0, 0] = 1  # nothing can write into a store (a write would not reach the file)

    # the training Dataset's item is its row's own copy, normalised
    ds = ImageArrayDataset(reopened, np.arange(len(rows)), 1, (0.5,), (0.25,))
    x, y = ds[3]
    want = normalize(torch.from_numpy(load_gray(files[rows[3]], SIZE).astype(np.float32) / 255)[None, None],
                     1, (0.5,), (0.25,))[0]  # fmt: skip
    assert int(y) == 3 and torch.allclose(x, want)
    x.add_(1.0)
    assert np.array_equal(reopened[3], load_gray(files[rows[3]], SIZE))  # the map is untouched

    # no background thread releases pages, in this process or in a forked child (a DataLoader worker)
    assert not [t.name for t in threading.enumerate() if "release" in t.name or "store" in t.name]
    ctx = multiprocessing.get_context("fork")
    result = ctx.Queue()
    child = ctx.Process(target=_threads_after_reading, args=(reopened, result))
    child.start()
    child.join(60)
    assert result.get(timeout=5) == (int(reopened.sum(dtype=np.int64)), ["MainThread"])


def _threads_after_reading(array: np.ndarray, result) -> None:
    total = int(array.sum(dtype=np.int64))
    result.put((total, [t.name for t in threading.enumerate()]))
