"""The subgroup mix per split (sex, age band, view… from :mod:`cxrlab.data.subgroups`): images per level
in train, val and test, and a warning when a split has none of a subgroup the other splits have (a test
split without any 80+ patient cannot tell how the model does for them; a train split without them never
showed the model one)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from cxrlab.data.subgroups import collect

SPLITS = ("train", "val", "test")
#: a level needs this many images in the other splits together before its absence from one is warned
MIN_ELSEWHERE = 5


def subgroup_mix(
    index: Any, paths: list[str], splits: list[str], names: list[str] | None = None
) -> dict[str, Any]:
    """``{"attributes": [{name, source, levels, counts: {split: {level: n}}}], "notes", "warnings"}`` for
    the images ``paths`` in ``splits``; ``names``: ``eval.subgroups`` (None: the preset's)."""
    data = collect(index, paths, names)
    present = [sp for sp in SPLITS if sp in splits]
    out: dict[str, Any] = {"attributes": [], "notes": data.notes + data.missing, "warnings": []}
    for a in data.attributes:
        counts = {sp: Counter() for sp in present}
        for level, sp in zip(a.values, splits, strict=True):
            if level is not None and sp in counts:
                counts[sp][level] += 1
        levels = sorted({lv for c in counts.values() for lv in c})
        table = {sp: {lv: counts[sp].get(lv, 0) for lv in levels} for sp in present}
        out["attributes"].append({"name": a.name, "source": a.source, "levels": levels, "counts": table})
        for sp in present:
            for lv in levels:
                elsewhere = {o: counts[o][lv] for o in present if o != sp and counts[o][lv]}
                if counts[sp][lv] == 0 and sum(elsewhere.values()) >= MIN_ELSEWHERE:
                    where = ", ".join(f"{o} {n}" for o, n in elsewhere.items())
                    why = (
                        "the model never saw one in training"
                        if sp == "train"
                        else "its performance there cannot be measured"
                        if sp == "test"
                        else "thresholds are chosen without them"
                    )
                    out["warnings"].append(f"the {sp} split has no image of {a.name} {lv} ({where}): {why}")
    return out
