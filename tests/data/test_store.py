"""The decoded-image store: one memory-mapped uint8 file per split, built once, resumed after an
interruption, identical to a fresh build, unreadable files still reported (real covid-challenge images)."""

from __future__ import annotations

import multiprocessing
import re
import shutil
import time

import numpy as np
import pytest

from cxrlab.config import DataConfig
from cxrlab.data.cache import STORE_RELEASE_S, ImageCache, release_pages
from cxrlab.data.prepare import ImageArrayDataset, prepare_data

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
    # a Dataset over the store shares its memory (nothing copied into RAM)
    ds = ImageArrayDataset(array2, np.zeros(11, np.int64), 3, (0.5,) * 3, (0.25,) * 3)
    assert ds.images.data_ptr() == array2.ctypes.data


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


def _resident_kb(array: np.ndarray) -> int:
    """Resident kB of the mapping that holds ``array``'s first byte (/proc/self/smaps)."""
    address, inside, total = array.ctypes.data, False, 0
    with open("/proc/self/smaps", encoding="utf-8") as fh:
        for line in fh:
            span = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
            if span:
                inside = int(span[1], 16) <= address < int(span[2], 16)
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


def test_rows_read_from_a_store_do_not_stay_in_resident_memory(tmp_path, files):
    # a mapped page that was read counts in the process's RSS until it is released: without release a
    # pass over a 100,000-image store would hold all of it (docs/benchmarks.md §11.4)
    array, *_ = ImageCache(tmp_path / "cache").store(files, 256, entries=False)
    checksum = int(array.sum(dtype=np.int64))
    unwatched = np.load(array.filename, mmap_mode="c")  # the same file, mapped outside the releaser
    assert int(unwatched.sum(dtype=np.int64)) == checksum
    assert _resident_kb(unwatched) >= unwatched.nbytes // 1024 - 4
    assert release_pages(unwatched) and _resident_kb(unwatched) == 0
    assert np.array_equal(unwatched, array)  # the rows come back from the page cache, unchanged
    assert _resident_kb(unwatched) >= unwatched.nbytes // 1024 - 4
    # the store opened by the cache is released by the background thread, with no call from the reader
    assert _resident_after_release(array) == 0
    assert int(array.sum(dtype=np.int64)) == checksum
    assert not release_pages(np.zeros(3, np.uint8))  # not a mapping: nothing to release

    # a forked child (a DataLoader worker with num_workers > 0) gets its own releasing thread
    ctx = multiprocessing.get_context("fork")
    result = ctx.Queue()
    child = ctx.Process(target=_read_and_wait, args=(array, checksum, result))
    child.start()
    child.join(60)
    assert result.get(timeout=5) == (True, 0)


def _resident_after_release(array: np.ndarray) -> int:
    """``array``'s resident kB once the releasing thread has run (waits up to 20 of its intervals)."""
    deadline = time.monotonic() + 20 * STORE_RELEASE_S
    while _resident_kb(array) and time.monotonic() < deadline:
        time.sleep(STORE_RELEASE_S / 4)
    return _resident_kb(array)


def _read_and_wait(array: np.ndarray, checksum: int, result) -> None:
    same = int(array.sum(dtype=np.int64)) == checksum
    result.put((same, _resident_after_release(array)))
