"""Patients in the audit: the ids the indexer found (file-name pattern or CSV column, see
:mod:`cxrlab.data.patients`) and the patients whose images sit in more than one split."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

#: Groups made up by the indexer for files without a patient id (one group per file or array row).
_NO_ID = ("file:", "npz:", "synthetic:")


def patient_ids(groups: list[str]) -> list[str | None]:
    """One patient id per image from the indexer's groups (pattern or CSV); ``None`` when unknown."""
    return [None if g.startswith(_NO_ID) else g for g in groups]


def patient_overlap(ids: list[str | None], splits: list[str], source: str) -> dict[str, Any]:
    """Patients per split and the patients found in more than one split."""
    where: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for pid, split in zip(ids, splits, strict=True):
        if pid is not None:
            where[pid][split] += 1
    cross = [
        {
            "patient": pid,
            "images": dict(sorted(per.items(), key=lambda kv: ("train", "val", "test").index(kv[0]))),
        }
        for pid, per in sorted(where.items(), key=lambda kv: _natural(kv[0]))
        if len(per) > 1
    ]
    per_split: dict[str, int] = defaultdict(int)
    for per in where.values():
        for split in per:
            per_split[split] += 1
    pairs: dict[str, int] = defaultdict(int)
    for item in cross:
        names = list(item["images"])
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                pairs[f"{a}/{b}"] += 1
    return {
        "source": source,
        "images_with_id": sum(pid is not None for pid in ids),
        "images_without_id": sum(pid is None for pid in ids),
        "patients": len(where),
        "patients_per_split": dict(per_split),
        "cross_split_count": len(cross),
        "cross_split_by_pair": dict(pairs),
        "cross_split": cross,
    }


def _natural(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]
