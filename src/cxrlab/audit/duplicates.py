"""Exact duplicates (identical bytes) and near duplicates (perceptual hash), within and across splits.

Near duplicates use a 256-bit perceptual hash (``imagehash.phash`` with ``hash_size=16``: the
16×16 lowest DCT frequencies of a 64×64 grayscale thumbnail, thresholded at their median). Two
images are near duplicates when their hashes differ in at most :data:`NEAR_DISTANCE` of the 256
bits. The threshold was set on real data (docs/trust.md): among the 17 million pairs of
kermany-224's 5,856 images, the only pairs within 37 bits are 34 byte-identical files (distance
0), and the closest two different files are 38 bits apart; the same radiograph re-encoded at JPEG
quality 40 and resized stays within 10 bits, brightened by 15% within 4. Crops and shifts of more
than a few pixels are *not* reliably caught (a 4-pixel crop of a 224-pixel image moved 22–62 bits).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
from PIL import Image

HASH_SIZE = 16
THUMBNAIL = 64  # phash input size (hash_size × imagehash's highfreq_factor 4)
NEAR_DISTANCE = 24
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


def thumbnails(images: np.ndarray | list[np.ndarray], size: int = THUMBNAIL) -> np.ndarray:
    """uint8 grayscale images (any square size) → ``(N, size, size)`` uint8 thumbnails."""
    out = np.empty((len(images), size, size), dtype=np.uint8)
    for i, img in enumerate(images):
        if img.shape == (size, size):
            out[i] = img
        else:
            out[i] = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))
    return out


def perceptual_hashes(thumbs: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """256-bit pHash of each 64×64 thumbnail as ``(N, 256)`` booleans: bit for bit what
    ``imagehash.phash(image, hash_size=16)`` computes, vectorised over ``chunk`` images at a time (memory
    bounded at any N; tests check both)."""
    from scipy.fftpack import dct

    out = np.zeros((len(thumbs), HASH_SIZE * HASH_SIZE), dtype=bool)
    for start in range(0, len(thumbs), chunk):  # float64 DCTs of a chunk only: 32 KB per image each
        coeffs = dct(dct(thumbs[start : start + chunk].astype(np.float64), axis=1), axis=2)
        coeffs = coeffs[:, :HASH_SIZE, :HASH_SIZE].reshape(len(coeffs), -1)
        out[start : start + chunk] = coeffs > np.median(coeffs, axis=1, keepdims=True)
    return out


def close_pairs(
    a: np.ndarray, b: np.ndarray | None = None, max_distance: int = NEAR_DISTANCE, chunk_cells: int = 1 << 24
) -> list[tuple[int, int, int]]:
    """``(i, j, distance)`` for hash pairs (boolean rows) within ``max_distance`` differing bits: all
    pairs ``i < j`` of ``a``, or every pair between ``a`` and ``b``.

    Exhaustive and exact: for ±1 codes the dot product is ``bits − 2·distance`` (exact in float32),
    so one matrix product per row chunk finds every pair; within ``a`` only the columns right of the
    chunk are multiplied. A chunk holds at most ``chunk_cells`` products (64 MB), so memory stays
    bounded whatever the size; time grows as n² at BLAS speed (docs/benchmarks.md: the audit at scale)."""
    bits = a.shape[1]
    found: list[tuple[int, int, int]] = []
    if max_distance < 0 or not len(a):
        return found
    sa = np.where(a, 1.0, -1.0).astype(np.float32)
    sb = sa if b is None else np.where(b, 1.0, -1.0).astype(np.float32)
    rows = max(1, min(len(sa), chunk_cells // max(1, len(sb))))
    least_dot = bits - 2 * max_distance - 0.5
    for start in range(0, len(sa), rows):
        stop = min(len(sa), start + rows)
        first = start + 1 if b is None else 0  # within a: only pairs i < j
        dots = sa[start:stop] @ sb[first:].T
        for i, j in zip(*np.nonzero(dots >= least_dot), strict=True):
            if b is None and first + j <= start + i:
                continue
            found.append((start + int(i), first + int(j), int(round((bits - float(dots[i, j])) / 2))))
    return found


def find_duplicates(
    paths: list[str],
    splits: list[str],
    labels: list[int],
    classes: list[str],
    content: list[str | None],
    phashes: np.ndarray,
    max_distance: int = NEAR_DISTANCE,
) -> dict[str, Any]:
    """Exact and near-duplicate pairs, split into within-split and cross-split (leakage) lists.

    ``phashes``: boolean rows from :func:`perceptual_hashes`; ``max_distance`` < 0 skips near duplicates."""
    exact: set[tuple[int, int]] = set()
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(content):
        if h is not None:
            by_hash[h].append(i)
    for members in by_hash.values():
        exact.update((i, j) for k, i in enumerate(members) for j in members[k + 1 :])
    near = {(i, j): d for i, j, d in close_pairs(phashes, max_distance=max_distance) if (i, j) not in exact}

    def record(i: int, j: int, kind: str, distance: int) -> dict[str, Any]:
        if SPLIT_ORDER.get(splits[j], 3) < SPLIT_ORDER.get(splits[i], 3):
            i, j = j, i
        return {
            "a": paths[i],
            "a_split": splits[i],
            "a_class": classes[labels[i]],
            "b": paths[j],
            "b_split": splits[j],
            "b_class": classes[labels[j]],
            "kind": kind,
            "distance": distance,
        }

    pairs = [record(i, j, "exact", 0) for i, j in sorted(exact)]
    pairs += [record(i, j, "near", d) for (i, j), d in sorted(near.items())]
    cross = [p for p in pairs if p["a_split"] != p["b_split"]]
    within = [p for p in pairs if p["a_split"] == p["b_split"]]

    def leaked(split: str, kinds: tuple[str, ...]) -> int:
        """Images of ``split`` with a duplicate in an earlier split (train, or train/val)."""
        return len({p["b"] for p in cross if p["b_split"] == split and p["kind"] in kinds})

    return {
        "method": {
            "exact": "SHA-256 of the file bytes (of the pixel array for .npz data)",
            "near": f"{HASH_SIZE * HASH_SIZE}-bit pHash (imagehash.phash, hash_size={HASH_SIZE}) of a "
            f"{THUMBNAIL}x{THUMBNAIL} grayscale thumbnail, Hamming distance <= {max_distance}",
            "max_distance": max_distance,
        },
        "summary": {
            "exact_cross_split": sum(p["kind"] == "exact" for p in cross),
            "near_cross_split": sum(p["kind"] == "near" for p in cross),
            "exact_within_split": sum(p["kind"] == "exact" for p in within),
            "near_within_split": sum(p["kind"] == "near" for p in within),
            "test_images_duplicating_train_or_val": leaked("test", ("exact", "near")),
            "test_images_exactly_duplicating_train_or_val": leaked("test", ("exact",)),
            "val_images_duplicating_train": leaked("val", ("exact", "near")),
            "pairs_with_different_labels": sum(p["a_class"] != p["b_class"] for p in pairs),
        },
        "cross_split": cross,
        "within_split": within,
    }
