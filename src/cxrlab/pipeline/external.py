"""External validation: the run's internal test metrics next to the same metrics on another dataset.

Written by ``cxr evaluate RUN --data OTHER``: ``external.json`` and ``external.html`` with every
metric side by side (95% bootstrap CIs), the drop (internal − external; positive = worse outside),
per-class sensitivity and specificity, and whether the external images overlap the run's
training images (exact or perceptual-hash near duplicates) — an "external" set that shares images
with training is not external.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrlab import pages
from cxrlab.metrics import metrics_for
from cxrlab.pages import ci
from cxrlab.runs import read_csv, write_json
from cxrlab.stats import to_number

if TYPE_CHECKING:
    from cxrlab.evaluation.inference import LoadedRun



def _interval(values: Any) -> list[float] | None:
    if not values or any(to_number(v) is None for v in values):
        return None
    return [float(v) for v in values]


def _row(name: str, label: str, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """One metric side by side; undefined values (NaN, e.g. an AUC with one class) become None."""
    ia, eb = to_number(a.get(name)), to_number(b.get(name))
    return {
        "metric": label,
        "internal": ia,
        "internal_ci95": _interval(a.get(f"{name}_ci95")),
        "external": eb,
        "external_ci95": _interval(b.get(f"{name}_ci95")),
        "drop": ia - eb if ia is not None and eb is not None else None,
    }


def compare(internal: dict[str, Any], external: dict[str, Any]) -> dict[str, Any]:
    """Side-by-side metrics of two evaluations of one model (``metrics.json``-style dicts)."""
    it, et = internal["test"], external["test"]
    binary = len(internal.get("classes") or []) == 2
    rows = [  # every registered metric either side reports (cxrlab.metrics.REGISTRY)
        _row(m.name, m.label, {m.name: m.value(it), f"{m.name}_ci95": m.interval(it)},
             {m.name: m.value(et), f"{m.name}_ci95": m.interval(et)})
        for m in metrics_for("single", binary)
        if m.value(it) is not None or m.value(et) is not None
    ]  # fmt: skip
    positive = (it.get("operating_point") or {}).get("positive_class")
    n_pos = et.get("per_class", {}).get(positive, {}).get("support", 0) if positive else None
    for row in rows:  # no external positives (negatives): its sensitivity (specificity) is undefined
        if (row["metric"], n_pos) in (("sensitivity", 0), ("specificity", et.get("n"))):
            row.update(external=None, external_ci95=None, drop=None)
    per_class: dict[str, dict[str, Any]] = {}
    for cls, e in et["per_class"].items():
        i = it["per_class"].get(cls, {})
        per_class[cls] = {
            "n_internal": i.get("support"),
            "n_external": e.get("support"),
            **{m: _row(m, m, i, e) for m in ("sensitivity", "specificity", "auc")},
        }
        if not e.get("support"):  # class absent from the external set: its sensitivity is undefined
            per_class[cls]["sensitivity"]["external"] = None
            per_class[cls]["sensitivity"]["drop"] = None
    op = None
    if it.get("operating_point") and et.get("operating_point"):
        io, eo = it["operating_point"], et["operating_point"]
        op_rows = [
            _row(m, f"{m} at the threshold", io, eo) for m in ("accuracy", "sensitivity", "specificity")
        ]
        n_pos = et["per_class"].get(io["positive_class"], {}).get("support", 0)
        for row, undefined in ((op_rows[1], n_pos == 0), (op_rows[2], n_pos == et["n"])):
            if undefined:  # no external positives (negatives): sensitivity (specificity) is undefined
                row.update(external=None, external_ci95=None, drop=None)
        op = {
            "positive_class": io["positive_class"],
            "threshold": io["threshold"],
            "method": io["method"],
            "rows": op_rows,
        }
    return {"metrics": rows, "per_class": per_class, "operating_point": op}


def summary_sentences(cmp: dict[str, Any], classes: list[str]) -> list[str]:
    """The drops in plain words."""
    out = []
    for row in cmp["metrics"]:
        if row["metric"] in ("ROC AUC", "accuracy") and row["drop"] is not None:
            out.append(_sentence(row["metric"], row))
    for cls, m in cmp["per_class"].items():
        for key in ("sensitivity", "specificity"):
            row = m[key]
            if row["drop"] is not None:
                out.append(_sentence(f"{cls} {key}", row))
    if cmp["operating_point"]:
        for row in cmp["operating_point"]["rows"][1:]:
            if row["drop"] is not None:
                out.append(_sentence(f"{cmp['operating_point']['positive_class']} {row['metric']}", row))
    return out


def _sentence(name: str, row: dict[str, Any]) -> str:
    change = "drops" if row["drop"] > 0 else "rises" if row["drop"] < 0 else "stays"
    return (
        f"{name} {change} from {row['internal']:.3f} {ci(row['internal_ci95'])} internally to "
        f"{row['external']:.3f} {ci(row['external_ci95'])} externally ({-row['drop']:+.3f})."
    ).replace("  ", " ")


def training_overlap(loaded: LoadedRun, external: dict[str, Any], target: Path) -> dict[str, Any]:
    """External images that are exact or near duplicates of the run's training/validation images."""
    from cxrlab.audit.duplicates import NEAR_DISTANCE, THUMBNAIL, close_pairs, perceptual_hashes
    from cxrlab.data.cache import ImageCache
    from cxrlab.data.splits import file_sha256

    train = [r["path"] for r in read_csv(loaded.path / "splits.csv") if r.get("split") in ("train", "val")]
    train = [p for p in train if os.path.isfile(p)]
    ext_rows = read_csv(target / "predictions.csv")
    ext = [r["path"] for r in ext_rows if os.path.isfile(r["path"])]
    if not train or not ext:
        return {"checked": False, "reason": "training or external images are not available as files"}
    cache = ImageCache(loaded.cfg.data.cache_dir)
    a, _ = cache.load_many(ext, THUMBNAIL)
    b, _ = cache.load_many(train, THUMBNAIL)
    ext_ok = [i for i, x in enumerate(a) if x is not None]
    train_ok = [i for i, x in enumerate(b) if x is not None]
    ha = perceptual_hashes(np.stack([a[i] for i in ext_ok]))
    hb = perceptual_hashes(np.stack([b[i] for i in train_ok]))
    train_hash = {file_sha256(train[i]): train[i] for i in train_ok}
    pairs = []
    for i in ext_ok:
        h = file_sha256(ext[i])
        if h in train_hash:
            pairs.append({"external": ext[i], "training": train_hash[h], "kind": "exact", "distance": 0})
    exact = {p["external"] for p in pairs}
    for i, j, d in close_pairs(ha, hb, NEAR_DISTANCE):
        if ext[ext_ok[i]] not in exact:
            pairs.append(
                {"external": ext[ext_ok[i]], "training": train[train_ok[j]], "kind": "near", "distance": d}
            )
    return {
        "checked": True,
        "external_images": len(ext_ok),
        "training_images": len(train_ok),
        "external_images_in_training": len({p["external"] for p in pairs}),
        "max_distance": NEAR_DISTANCE,
        "pairs": pairs,
    }


def compare_lung_attention(internal: dict[str, Any], external: dict[str, Any]) -> dict[str, Any]:
    """The lung-attention score (:mod:`cxrlab.explain.report`) internal vs external, per predicted class
    and overall, as side-by-side rows (``drop`` = internal − external share), with the external warnings."""
    li, le = internal.get("lung_attention") or {}, external.get("lung_attention") or {}
    if le.get("status") != "done":
        return {"status": le.get("status", "absent"), "note": le.get("note", "not computed here")}
    done = li.get("status") == "done"
    note = "" if done else f"internal: {li.get('note', 'not in the run (trained before the score existed)')}"
    rows, sentences = [], []
    names = sorted(set(le["by_class"]) | set(li.get("by_class", {}) if done else ()))
    for name in [*names, None]:
        a = ((li.get("by_class", {}).get(name) if name else li.get("overall")) or {}) if done else {}
        b = (le["by_class"].get(name) if name else le["overall"]) or {}
        ia, eb = a.get("lung_share"), b.get("lung_share")
        rows.append({
            "metric": f"{name}: lung share" if name else "all images: lung share",
            "internal": ia, "internal_ci95": a.get("ci95"), "n_internal": a.get("n"),
            "external": eb, "external_ci95": b.get("ci95"), "n_external": b.get("n"),
            "drop": round(ia - eb, 4) if ia is not None and eb is not None else None,
        })  # fmt: skip
        if name and ia is not None and eb is not None:
            sentences.append(
                f"Heatmaps for {name}: {eb:.0%}{_pct(b.get('ci95'))} of their mass on the lungs externally "
                f"against {ia:.0%}{_pct(a.get('ci95'))} internally."
            )
    return {
        "status": "done",
        "note": note,
        "internal_sample": li.get("sample") if done else None,
        "external_sample": le.get("sample"),
        "rows": rows,
        "sentences": sentences,
        "warnings": [f"external images, {w}" for w in le.get("warnings", [])],
    }


SUBGROUP_METRICS = ("auc", "sensitivity", "specificity", "underdiagnosis_rate")


def compare_subgroups(internal: dict[str, Any], external: dict[str, Any]) -> dict[str, Any]:
    """Per subgroup (``subgroups`` of both metrics.json, cxrlab.evaluation.subgroups): each metric inside
    and outside with its CI and the drop (internal − external); groups computed on one side only named."""
    a, b = internal.get("subgroups") or {}, external.get("subgroups") or {}
    if not a.get("groups") and not b.get("groups"):
        why = a.get("skipped") or b.get("skipped") or "no subgroup was computed on either side"
        return {"rows": [], "note": why}
    inside = {(g["attribute"], g["group"]): g for g in a.get("groups", [])}
    outside = {(g["attribute"], g["group"]): g for g in b.get("groups", [])}
    rows = []
    for key in [k for k in inside if k in outside]:
        i, e = inside[key], outside[key]
        for metric in SUBGROUP_METRICS:
            row = _row(metric, metric.replace("_", " "), i, e)
            if row["internal"] is None and row["external"] is None:
                continue
            label = f"{key[0]} {key[1]}: {row['metric']}"
            n = {"n_internal": i["n_images"], "n_external": e["n_images"]}
            rows.append({**row, "label": label, "attribute": key[0], "group": key[1], **n})
    one_side = [f"{k[0]} {k[1]}" for k in inside if k not in outside] + [
        f"{k[0]} {k[1]}" for k in outside if k not in inside
    ]
    note = f"computed on one side only: {', '.join(one_side)}" if one_side else ""
    return {"rows": rows, "note": note}


def _pct(interval: Any) -> str:
    return f" (95% CI {interval[0]:.0%}-{interval[1]:.0%})" if interval else ""


def write_external(
    target: Path, loaded: LoadedRun, internal: dict[str, Any], external: dict[str, Any]
) -> None:
    """``target/external.json`` and ``target/external.html``: internal vs external, side by side."""
    cmp = compare(internal, external)
    overlap = training_overlap(loaded, external, target)
    sentences = summary_sentences(cmp, loaded.classes)
    if overlap.get("external_images_in_training"):
        sentences.insert(
            0,
            f"{overlap['external_images_in_training']} of {overlap['external_images']} external images "
            "duplicate images the model was trained or validated on: this external set is not independent.",
        )
    lungs = compare_lung_attention(internal, external)
    sentences += lungs.get("sentences", []) + lungs.get("warnings", [])
    result = {
        "run": str(loaded.path),
        "model": loaded.cfg.model.name,
        "classes": loaded.classes,
        "internal": {
            "source": internal["data"]["source"],
            "n": internal["test"]["n"],
            "counts": internal["data"]["counts"]["test"],
        },
        "external": {
            "source": external["data"]["source"],
            "n": external["test"]["n"],
            "counts": external["data"]["counts"]["test"],
            "skipped": len(external["data"].get("skipped", [])),
        },
        **cmp,
        "overlap_with_training": overlap,
        "lung_attention": lungs,
        "subgroups": compare_subgroups(internal, external),
        "summary": sentences,
    }
    write_json(target / "external.json", result)
    pages.write_page(target / "external.html", "external.html", **external_context(result))


def external_context(r: dict[str, Any]) -> dict[str, Any]:
    """What external.html shows: the external.json result and its per-class rows."""
    per_class_rows = [
        {**m[key], "label": f"{cls}: {key}"}
        for cls, m in r["per_class"].items()
        for key in ("sensitivity", "specificity", "auc")
    ]
    return {"r": r, "per_class_rows": per_class_rows}
