"""`cxr compare` per subgroup: for runs scored on the same test images, each subgroup's metrics
(metrics.json's ``subgroups``, :mod:`cxrlab.evaluation.subgroups`) side by side, one column per run;
``subgroups.csv`` holds every run's rows with their 95% CIs."""

from __future__ import annotations

from typing import Any

from cxrlab.experiments.compare.loading import RunSummary
from cxrlab.pages import ci

METRICS = (("auc", "AUC"), ("sensitivity", "sens."), ("specificity", "spec."),
           ("underdiagnosis_rate", "underdiagnosis"))  # fmt: skip
FIELDS = [
    "test_set", "run", "attribute", "group", "n_images", "n_patients",
    *[f"{k}{s}" for k, _ in METRICS for s in ("", "_ci95_lo", "_ci95_hi")],
]  # fmt: skip


def _groups(s: RunSummary) -> list[dict[str, Any]]:
    sub = s.metrics.get("subgroups") or {}
    overall = [sub["overall"]] if sub.get("overall") else []
    return overall + list(sub.get("groups") or [])


def subgroup_rows(summaries: list[RunSummary]) -> list[dict[str, Any]]:
    """subgroups.csv: one row per run and subgroup (the overall row included)."""
    rows = []
    for s in summaries:
        for g in _groups(s):
            row = {"test_set": s.test_set, "run": s.name, **{k: g.get(k) for k in FIELDS[2:6]}}
            for key, _ in METRICS:
                lo, hi = (g.get(f"{key}_ci95") or [None, None])[:2]
                row.update({key: g.get(key), f"{key}_ci95_lo": lo, f"{key}_ci95_hi": hi})
            rows.append(row)
    return rows


def subgroup_tables(summaries: list[RunSummary]) -> list[dict[str, Any]]:
    """Per test set with two or more runs that report subgroups: header (attribute, group, n, then one
    column per run and metric) and cells (value [95% CI]); a subgroup one run lacks shows —."""
    tables = []
    for test_set in sorted({s.test_set for s in summaries}):
        runs = [s for s in summaries if s.test_set == test_set and _groups(s)]
        if len(runs) < 2:
            continue
        order: dict[tuple[str, str], int] = {}
        for s in runs:
            for g in _groups(s):
                order.setdefault((g["attribute"], g["group"]), g["n_images"])
        by_run = [{(g["attribute"], g["group"]): g for g in _groups(s)} for s in runs]
        header = ["attribute", "group", "images"] + [
            f"{s.name}: {label}" for s in runs for _, label in METRICS
        ]
        cells = []
        for key, n in order.items():
            row: list[Any] = [key[0], key[1], n]
            for groups in by_run:
                g = groups.get(key) or {}
                for metric, _ in METRICS:
                    v = g.get(metric)
                    row.append("—" if v is None else f"{v:.3f} {ci(g.get(f'{metric}_ci95'))}".strip())
            cells.append(row)
        tables.append({"test_set": test_set, "header": header, "cells": cells})
    return tables
