"""How much each data-audit warning threatens the validity of a model's numbers: a severity per sentence.

The audit's warnings are plain sentences (:func:`cxrlab.audit.core.make_warnings`,
:func:`cxrlab.audit.multilabel.findings_warnings`, the label file's notes). :data:`RULES` maps each kind of
sentence (by how it begins) to a severity, so the model card and the service page can rank them and show
the worst first. The levels:

- ``critical``: the test numbers are not to be believed as they stand (test images that are copies of
  training images, patients in two splits, an "external" set that shares training images);
- ``high``: the numbers may hold but may not mean what they seem (a shortcut the labels can be read from,
  leaked validation data, contradicting labels, heatmaps off the lungs, a large drop outside);
- ``medium``: the numbers are less certain than they look (no patient ids to check, a tiny validation split,
  duplicates inside a split, an audit that could not run);
- ``low``: bookkeeping a user should know about (files skipped, label-file rows left out).

A sentence no rule knows is ``medium``; ``tests/audit/test_severity.py`` makes every warning the audit can
write and checks that each has a rule of its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

#: From most to least severe.
LEVELS = ("critical", "high", "medium", "low")
#: A sentence no rule matches.
DEFAULT = "medium"

#: (pattern searched at the sentence's start, severity, topic): the first match wins.
RULES: tuple[tuple[re.Pattern[str], str, str], ...] = tuple(
    (re.compile(p, re.IGNORECASE), level, topic)
    for p, level, topic in (
        (r"\d+ image\(s\) of the test split are exact copies", "critical", "test leakage"),
        (r"\d+ patient\(s\) have images in more than one split", "critical", "patient leakage"),
        (r"\d+ of \d+ external images duplicate images the model was trained", "critical", "test leakage"),
        (r"labels can be predicted from acquisition properties alone", "high", "shortcut"),
        (r"\S.* can be predicted from metadata alone", "high", "shortcut"),
        (r"a linear model on 8x8 thumbnails", "high", "shortcut"),
        (r"\d+ image\(s\) of the test split are near duplicates", "high", "test leakage"),
        (r"\d+ validation image\(s\) duplicate training images", "high", "validation leakage"),
        (r"\d+ duplicate pair\(s\) carry different labels", "high", "label noise"),
        (r"\d+ duplicate pair\(s\) inside a split", "medium", "duplicates"),
        (r"\d+ of \d+ images \(\d+%\) have no patient id", "medium", "patient ids"),
        (r"the given validation split is tiny", "medium", "validation size"),
        (r"the data audit could not run", "medium", "audit"),
        (r"the (train|val|test) split has no image of ", "medium", "subgroups"),
        (r"[\d,]+ unreadable file\(s\) skipped", "low", "unreadable files"),
        (r"[\d,]+ label-file row\(s\) have no image", "low", "label file"),
        (r"[\d,]+ rows (with an empty|repeat an image|in no split)", "low", "label file"),
        (r"split column .* is empty", "low", "label file"),
    )
)


def rank(level: str) -> int:
    """0 for ``critical`` … 3 for ``low`` (an unknown level sorts with :data:`DEFAULT`)."""
    return LEVELS.index(level) if level in LEVELS else LEVELS.index(DEFAULT)


def rule_for(text: str) -> tuple[str, str] | None:
    """``(severity, topic)`` of the first rule matching ``text``'s start; None when none does."""
    for pattern, level, topic in RULES:
        if pattern.match(text.strip()):
            return level, topic
    return None


def classify(text: str) -> dict[str, str]:
    """``{"severity", "topic", "text"}`` of one audit warning."""
    found = rule_for(text) or (DEFAULT, "data")
    return {"severity": found[0], "topic": found[1], "text": " ".join(text.split())}


def ranked(warnings: Iterable[str]) -> list[dict[str, Any]]:
    """The warnings classified, each sentence once (whitespace and case ignored), most severe first (the
    audit's own order within a level)."""
    seen: set[str] = set()
    out = []
    for text in warnings:
        key = " ".join(str(text).split()).lower()
        if not key or key in seen:
            continue
        seen.add(key)
        out.append(classify(str(text)))
    return sorted(out, key=lambda w: rank(w["severity"]))
