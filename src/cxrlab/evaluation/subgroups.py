"""For whom the model fails: performance per subgroup (sex, age band, view, manufacturer, any named column),
with patient-level bootstrap CIs, the largest gap per metric with a test of difference, and intersections.

Grouping and disaggregation are fairlearn's :class:`~fairlearn.metrics.MetricFrame` (scikit-learn metrics
per group); intervals and the gap tests are :func:`cxrlab.stats.bootstrap_intervals` resampling patients.

Every task is reduced to *positive* (the case needs a finding) and *called* (the model says so, at the
saved operating point: ``predictions.csv``'s ``pred`` / thresholds):

* binary single-label: positive = the operating point's positive class (``test.operating_point``);
  called = predicted that class at the saved threshold; AUC of P(positive class);
* multi-class single-label with a normal class (``normal``, ``No Finding``, …): positive = any other class;
  called = not predicted normal; AUC of 1 − P(normal);
* multi-label: positive = any finding present (a known 1), called = any finding at or above its saved
  threshold (all below = "No Finding"); AUC = the mean of the per-finding AUCs defined in the group, and
  per finding its AUC, sensitivity and specificity.

The **underdiagnosis rate** (Seyyed-Kalantari et al., Nature Medicine 2021) is the share of positive cases
called normal: ``P(not called | positive)`` (= 1 − sensitivity of that abnormal-vs-normal decision).
A group with fewer than ``min_n`` images (``eval.subgroup_min_n``) is named in ``too_small``, not computed;
an intersection (sex × age band) is computed only when every one of its cells has ``min_n`` images.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxrlab._optional import available, message, require
from cxrlab.data.subgroups import (  # noqa: F401 - re-exported: the parsing half of subgroup metrics
    AGE_BANDS,
    DEFAULT_MIN_N,
    Attribute,
    SubgroupData,
    age_band,
    collect,
    normalise,
    parse_age,
)
from cxrlab.stats import bootstrap_intervals, ci_text, weighted_auc

NORMAL_NAMES = {"normal", "no finding", "no_finding", "nofinding", "healthy", "negative"}
METRICS = ("prevalence", "auc", "sensitivity", "specificity", "underdiagnosis_rate")
GAP_METRICS = ("auc", "sensitivity", "specificity", "underdiagnosis_rate")
LABELS = {
    "prevalence": "prevalence", "auc": "AUC", "sensitivity": "sensitivity", "specificity": "specificity",
    "underdiagnosis_rate": "underdiagnosis rate",
}  # fmt: skip
#: higher is better (for the words of a warning)
BETTER = {"auc": True, "sensitivity": True, "specificity": True, "underdiagnosis_rate": False}
INTERSECTIONS = (("sex", "age band"),)
FEATURE = "subgroup metrics"


# ---------------------------------------------------------------------------------------------- the task


@dataclass
class Outcome:
    """Per image: ``positive`` (needs a finding), ``called`` (the model says so at the operating point),
    ``score`` (for the AUC; None for multi-label), and multi-label targets/probabilities/decisions."""

    description: str
    positive: np.ndarray
    called: np.ndarray
    score: np.ndarray | None = None
    known: np.ndarray | None = None  # images whose positive/negative is known (multi-label NaNs)
    findings: list[str] = field(default_factory=list)
    targets: np.ndarray | None = None
    probs: np.ndarray | None = None
    decided: np.ndarray | None = None


def single_label_outcome(
    y: np.ndarray, probs: np.ndarray, pred: np.ndarray, classes: list[str], positive: str | None
) -> Outcome | None:
    """Binary: the positive class; multi-class: abnormal (any class but the normal one) vs normal; None
    for a multi-class task without a normal class."""
    y, pred = np.asarray(y), np.asarray(pred)
    if len(classes) == 2:
        k = classes.index(positive) if positive in classes else 1
        return Outcome(
            f"positive = {classes[k]!r} (the operating point's positive class); called = predicted "
            f"{classes[k]!r} at the saved threshold; underdiagnosis = a {classes[k]!r} case predicted "
            f"{classes[1 - k]!r}",
            y == k, pred == k, probs[:, k],
        )  # fmt: skip
    normal = next((i for i, c in enumerate(classes) if c.strip().lower() in NORMAL_NAMES), None)
    if normal is None:
        return None
    name = classes[normal]
    return Outcome(
        f"positive = any class but {name!r}; called = predicted any class but {name!r}; AUC of "
        f"1 − P({name}); underdiagnosis = an abnormal case predicted {name!r}",
        y != normal, pred != normal, 1.0 - probs[:, normal],
    )  # fmt: skip


def multilabel_outcome(
    targets: np.ndarray, probs: np.ndarray, findings: list[str], thresholds: dict[str, Any]
) -> Outcome:
    """Positive = any finding present; called = any finding at or above its saved threshold."""
    t = np.asarray(targets, dtype=np.float64)
    cut = np.array([float((thresholds.get(f) or {}).get("threshold", 0.5)) for f in findings])
    decided = probs >= cut[None, :]
    positive = np.nan_to_num(t) > 0
    # "No Finding" is known only where every finding is known, or some finding is a known positive
    known = positive.any(1) | ~np.isnan(t).any(1)
    return Outcome(
        "positive = any finding present; called = any finding at or above its saved threshold (all "
        "below = 'No Finding'); underdiagnosis = an image with a finding called 'No Finding'; AUC = the "
        "mean of the per-finding AUCs defined in the group",
        positive.any(1), decided.any(1), None, known, list(findings), t, np.asarray(probs, float), decided,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- metrics


def _nan_if_one_class(fn):  # noqa: ANN001, ANN202
    """A scikit-learn AUC that is NaN (not a warning or an error) where ``y_true`` has one class."""

    def wrapped(y_true: np.ndarray, y_pred: np.ndarray, **kw: Any) -> float:
        if len(np.unique(y_true)) < 2:
            return float("nan")
        return float(fn(y_true, y_pred, **kw))

    return wrapped


def _frame_metrics(o: Outcome) -> dict[str, Any]:
    """The scikit-learn metrics MetricFrame applies per group. y_true columns: positive, known, then the
    multi-label targets; y_pred columns: score (or 0), called, then probabilities and decisions."""
    from sklearn.metrics import recall_score, roc_auc_score

    f = len(o.findings)

    def rows(y_true: np.ndarray) -> np.ndarray:
        return y_true[:, 1] > 0

    def prevalence(y_true: np.ndarray, y_pred: np.ndarray) -> float:
        k = rows(y_true)
        return float(np.mean(y_true[k, 0])) if k.any() else float("nan")

    def sens(y_true: np.ndarray, y_pred: np.ndarray) -> float:
        k = rows(y_true) & (y_true[:, 0] > 0)
        return float(recall_score(y_true[k, 0], y_pred[k, 1], zero_division=np.nan)) if k.any() else np.nan

    def spec(y_true: np.ndarray, y_pred: np.ndarray) -> float:
        k = rows(y_true) & (y_true[:, 0] == 0)
        if not k.any():
            return float("nan")
        return float(recall_score(1 - y_true[k, 0], 1 - y_pred[k, 1], zero_division=np.nan))

    def underdiagnosis(y_true: np.ndarray, y_pred: np.ndarray) -> float:
        s = sens(y_true, y_pred)
        return 1.0 - s if np.isfinite(s) else float("nan")

    def finding_auc(j: int):  # noqa: ANN202
        def auc(y_true: np.ndarray, y_pred: np.ndarray) -> float:
            t = y_true[:, 2 + j]
            k = ~np.isnan(t)
            return _nan_if_one_class(roc_auc_score)(t[k], y_pred[k, 2 + j])

        return auc

    def finding_rate(j: int, positive: bool):  # noqa: ANN202
        def rate(y_true: np.ndarray, y_pred: np.ndarray) -> float:
            t = y_true[:, 2 + j]
            k = ~np.isnan(t) & ((t > 0) if positive else (t == 0))
            if not k.any():
                return float("nan")
            d = y_pred[k, 2 + f + j]
            return float(recall_score(t[k] if positive else 1 - t[k], d if positive else 1 - d))

        return rate

    metrics: dict[str, Any] = {"prevalence": prevalence, "sensitivity": sens, "specificity": spec,
                               "underdiagnosis_rate": underdiagnosis}  # fmt: skip
    if o.score is not None:
        metrics["auc"] = lambda yt, yp: _nan_if_one_class(roc_auc_score)(yt[rows(yt), 0], yp[rows(yt), 0])
    for j, name in enumerate(o.findings):
        metrics[f"{name}/auc"] = finding_auc(j)
        metrics[f"{name}/sensitivity"] = finding_rate(j, True)
        metrics[f"{name}/specificity"] = finding_rate(j, False)
        metrics[f"{name}/prevalence"] = lambda yt, yp, j=j: (
            float(np.nanmean(yt[:, 2 + j])) if (~np.isnan(yt[:, 2 + j])).any() else np.nan
        )
    return metrics


def _matrices(o: Outcome) -> tuple[np.ndarray, np.ndarray]:
    n = len(o.positive)
    known = np.ones(n, bool) if o.known is None else o.known
    y_true = [o.positive.astype(float), known.astype(float)]
    y_pred = [np.zeros(n) if o.score is None else o.score.astype(float), o.called.astype(float)]
    if o.findings:
        y_true += list(o.targets.T)  # type: ignore[union-attr]
        y_pred += list(o.probs.T) + list(o.decided.astype(float).T)  # type: ignore[union-attr]
    return np.column_stack(y_true), np.column_stack(y_pred)


def metric_frame(o: Outcome, features: Any) -> Any:
    """fairlearn's MetricFrame of every subgroup metric of ``o`` by ``features`` (a column or a frame),
    plus n images and n patients per group (``count`` and a patient-count via sample params)."""
    fl = require("fairlearn.metrics", "fairness", FEATURE)
    y_true, y_pred = _matrices(o)
    return fl.MetricFrame(metrics=_frame_metrics(o), y_true=y_true, y_pred=y_pred,
                          sensitive_features=features)  # fmt: skip


def _weighted(o: Outcome, w: np.ndarray, auc_findings: list[int] | None) -> dict[str, np.ndarray]:
    """Every subgroup metric for each row of image weights ``w`` (B, n) (zero outside the group): the
    bootstrap statistic of :func:`cxrlab.stats.bootstrap_intervals`."""
    known = np.ones(len(o.positive), bool) if o.known is None else o.known
    pos = (o.positive & known).astype(float)
    neg = (~o.positive & known).astype(float)
    called = o.called.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        n_known = w @ known.astype(float)
        out = {
            "prevalence": (w @ pos) / n_known,
            "sensitivity": (w @ (pos * called)) / (w @ pos),
            "specificity": (w @ (neg * (1 - called))) / (w @ neg),
            "underdiagnosis_rate": (w @ (pos * (1 - called))) / (w @ pos),
        }
        if o.score is not None:
            out["auc"] = weighted_auc(o.score, o.positive, w * known[None, :])
        aucs = []
        for j, name in enumerate(o.findings):
            t = o.targets[:, j]  # type: ignore[index]
            k = ~np.isnan(t)
            tp, tn = ((t > 0) & k).astype(float), ((t == 0) & k).astype(float)
            d = o.decided[:, j].astype(float)  # type: ignore[index]
            wk = w * k[None, :]
            a = weighted_auc(np.where(k, o.probs[:, j], 0.0), (t > 0) & k, wk)  # type: ignore[index]
            out[f"{name}/auc"] = a
            out[f"{name}/sensitivity"] = (w @ (tp * d)) / (w @ tp)
            out[f"{name}/specificity"] = (w @ (tn * (1 - d))) / (w @ tn)
            out[f"{name}/prevalence"] = (w @ tp) / (w @ k.astype(float))
            if auc_findings is None or j in auc_findings:
                aucs.append(a)
        if o.findings:
            out["auc"] = np.nanmean(np.stack(aucs), axis=0) if aucs else np.full(len(w), np.nan)
    return out


def _clean(value: Any) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None


def evaluate(
    data: SubgroupData, outcome: Outcome | None, patients: list[str] | None, n_boot: int, seed: int,
    skip_reason: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The ``subgroups`` section of metrics.json (module docstring): attributes, groups with CIs, gaps with
    their bootstrap test, intersections, too-small cells, summary and warnings."""
    result: dict[str, Any] = {
        "attributes": [
            {"name": a.name, "source": a.source, "levels": a.levels(), "blank": a.blank,
             "unparsed": dict(a.unparsed.most_common())}
            for a in data.attributes
        ],  # fmt: skip
        "min_n": data.min_n,
        "groups": [], "gaps": [], "too_small": [], "intersections": [],
        "summary": [], "warnings": list(data.missing), "notes": list(data.notes),
    }  # fmt: skip
    if outcome is None or skip_reason:
        result["skipped"] = skip_reason or (
            "a multi-class run without a normal class has no positive/negative to compare per subgroup"
        )
        result["summary"].append(f"subgroup metrics not computed: {result['skipped']}")
        return result
    if not available("fairlearn"):
        result["skipped"] = message(FEATURE, "fairlearn", "fairness")
        result["summary"].append(result["skipped"])
        return result
    if not data.attributes:
        result["summary"].append("no subgroup attribute with two or more values on these images")
        return result
    result["definition"] = outcome.description
    n = len(outcome.positive)
    pats = np.asarray(patients if patients is not None else [f"image:{i}" for i in range(n)], dtype=object)
    groupings = _groupings(data)
    cells: list[tuple[str, str, np.ndarray]] = []  # (attribute, level, mask) computed
    for name, values in groupings:
        vals = np.array([v if v is not None else "" for v in values], dtype=object)
        present = vals != ""
        counts = Counter(vals[present])
        small = {lv: c for lv, c in counts.items() if c < data.min_n}
        is_cross = " × " in name
        if is_cross:
            full = _all_cells(data, name)
            present &= np.isin(vals, full)  # cells of a level too small on its own are named there
            vals = np.where(present, vals, "")
            counts = Counter(vals[present])
            small = {lv: c for lv, c in counts.items() if c < data.min_n}
            small.update({lv: 0 for lv in full if lv not in counts})
            if small:
                for lv, c in sorted(small.items()):
                    result["too_small"].append(_small(name, lv, c, pats[vals == lv]))
                result["intersections"].append(
                    {"attributes": name.split(" × "), "computed": False,
                     "reason": f"{len(small)} of {len(full)} cells have fewer than {data.min_n} images"}
                )  # fmt: skip
                continue
            result["intersections"].append({"attributes": name.split(" × "), "computed": True})
        for lv in sorted(small):
            result["too_small"].append(_small(name, lv, small[lv], pats[vals == lv]))
        keep = [lv for lv in sorted(counts) if lv not in small]
        if not keep:
            continue
        mask = np.isin(vals, keep)
        frame = metric_frame(_subset(outcome, mask), vals[mask])
        by_group = frame.by_group
        for lv in keep:
            m = vals == lv
            row: dict[str, Any] = {"attribute": name, "group": lv, "n_images": int(m.sum()),
                                   "n_patients": int(len(set(pats[m])))}  # fmt: skip
            for key in by_group.columns:
                row[key] = _clean(by_group.loc[lv, key])
            _macro_auc(row, outcome)
            result["groups"].append(row)
            cells.append((name, lv, m))
    overall = {"attribute": "overall", "group": "all", "n_images": n, "n_patients": int(len(set(pats)))}
    overall.update({k: _clean(v) for k, v in metric_frame(outcome, np.array(["all"] * n)).overall.items()})
    _macro_auc(overall, outcome)
    result["overall"] = overall
    _gaps(result)
    _intervals(result, outcome, cells, pats if patients is not None else None, n_boot, seed)
    _words(result)
    return result


def _macro_auc(row: dict[str, Any], o: Outcome) -> None:
    """Multi-label: a group's AUC is the mean of its per-finding AUCs that are defined there."""
    if o.findings:
        aucs = [row[f"{f}/auc"] for f in o.findings if row.get(f"{f}/auc") is not None]
        row["auc"] = float(np.mean(aucs)) if aucs else None


def _groupings(data: SubgroupData) -> list[tuple[str, list[str | None]]]:
    out: list[tuple[str, list[str | None]]] = [(a.name, a.values) for a in data.attributes]
    by = {a.name: a for a in data.attributes}
    for left, right in INTERSECTIONS:
        if left in by and right in by:
            values = [f"{a} · {b}" if a is not None and b is not None else None
                      for a, b in zip(by[left].values, by[right].values, strict=True)]  # fmt: skip
            out.append((f"{left} × {right}", values))
    return out


def _all_cells(data: SubgroupData, name: str) -> list[str]:
    """The cells of an intersection: the levels of each side large enough on their own."""
    by = {a.name: a for a in data.attributes}
    left, right = name.split(" × ")
    keep = [[lv for lv, c in by[side].levels().items() if c >= data.min_n] for side in (left, right)]
    return [f"{a} · {b}" for a in keep[0] for b in keep[1]]


def _small(name: str, level: str, n: int, pats: np.ndarray) -> dict[str, Any]:
    return {"attribute": name, "group": level, "n_images": int(n), "n_patients": int(len(set(pats)))}


def _subset(o: Outcome, mask: np.ndarray) -> Outcome:
    def cut(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[mask]

    return Outcome(o.description, o.positive[mask], o.called[mask], cut(o.score), cut(o.known), o.findings,
                   cut(o.targets), cut(o.probs), cut(o.decided))  # fmt: skip


def _gaps(result: dict[str, Any]) -> None:
    """The largest gap per attribute and metric: the best and the worst group by point estimate."""
    by_attr: dict[str, list[dict[str, Any]]] = {}
    for row in result["groups"]:
        by_attr.setdefault(row["attribute"], []).append(row)
    for attribute, rows in by_attr.items():
        for metric in GAP_METRICS:
            valued = [r for r in rows if r.get(metric) is not None]
            if len(valued) < 2:
                continue
            hi = max(valued, key=lambda r: r[metric])
            lo = min(valued, key=lambda r: r[metric])
            if hi is lo:
                continue
            result["gaps"].append({
                "attribute": attribute, "metric": metric, "high": hi["group"], "low": lo["group"],
                "high_value": hi[metric], "low_value": lo[metric], "difference": hi[metric] - lo[metric],
            })  # fmt: skip


def _intervals(
    result: dict[str, Any], o: Outcome, cells: list[tuple[str, str, np.ndarray]], patients: Any,
    n_boot: int, seed: int,
) -> None:  # fmt: skip
    """Patient-level bootstrap CIs of every group's metrics and of every gap (one resampling of patients
    over the whole split, so a gap's two groups are resampled together), by bootstrap_intervals."""
    if n_boot <= 0:
        result["ci_method"] = "no bootstrap (eval.bootstrap = 0)"
        return
    n = len(o.positive)
    masks = {(a, g): m.astype(float) for a, g, m in cells}
    auc_sets: dict[tuple[str, str], list[int] | None] = {}
    for row in result["groups"]:
        key = (row["attribute"], row["group"])
        auc_sets[key] = [j for j, f in enumerate(o.findings) if row.get(f"{f}/auc") is not None]
    gap_keys = [(g["attribute"], g["metric"], g["high"], g["low"]) for g in result["gaps"]]

    def statistic(w: np.ndarray) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        values: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        for key, m in masks.items():
            values[key] = _weighted(o, w * m[None, :], auc_sets.get(key))
            for k, v in values[key].items():
                out[f"{key[0]}|{key[1]}|{k}"] = v
        for attribute, metric, hi, lo in gap_keys:
            out[f"gap|{attribute}|{metric}"] = (
                values[(attribute, hi)][metric] - values[(attribute, lo)][metric]
            )
        return out

    iv = bootstrap_intervals(statistic, n, list(patients) if patients is not None else None, n_boot, seed,
                             columns=n * max(1, len(masks)) * 4)  # fmt: skip
    result["ci_method"] = iv.method
    result["bootstrap_unit"] = iv.unit
    notes: dict[str, str] = {}
    for row in result["groups"]:
        for key in [k for k in list(row) if k in METRICS or "/" in k]:
            name = f"{row['attribute']}|{row['group']}|{key}"
            row[f"{key}_ci95"] = iv.ci.get(name)
            if name in iv.notes and row.get(key) is not None and "/" not in key:
                notes[f"{row['attribute']} {row['group']} {key}"] = iv.notes[name]
    for gap in result["gaps"]:
        ci = iv.ci.get(f"gap|{gap['attribute']}|{gap['metric']}")
        gap["difference_ci95"] = ci
        gap["excludes_zero"] = bool(ci is not None and (ci[0] > 0 or ci[1] < 0))
        gap["test"] = "patient-level bootstrap CI of the difference (95%); excludes zero = significant at 5%"
    result["ci_notes"] = notes
    # the overall row's intervals (the forest plot's line): one more bootstrap over every image
    ov = bootstrap_intervals(lambda w: _weighted(o, w, None), n,
                             list(patients) if patients is not None else None, n_boot, seed)  # fmt: skip
    for key in list(result["overall"]):
        if key in METRICS or "/" in key:
            result["overall"][f"{key}_ci95"] = ov.ci.get(key)


def _words(result: dict[str, Any]) -> None:
    """``summary`` (one line per gap) and ``warnings`` (gaps whose CI excludes zero; too-small cells)."""
    for gap in result["gaps"]:
        label = LABELS[gap["metric"]]
        line = (
            f"{label} by {gap['attribute']}: {gap['high']} {gap['high_value']:.3f} vs {gap['low']} "
            f"{gap['low_value']:.3f}, gap {gap['difference']:.3f} {ci_text(gap.get('difference_ci95'))}"
        )
        result["summary"].append(line)
        if gap.get("excludes_zero"):
            worse = gap["low"] if BETTER[gap["metric"]] else gap["high"]
            result["warnings"].append(
                f"{label} differs by {gap['attribute']}: {gap['high']} {gap['high_value']:.3f} vs "
                f"{gap['low']} {gap['low_value']:.3f} (gap {gap['difference']:.3f} "
                f"{ci_text(gap['difference_ci95'])} excludes zero; worse for {worse})"
            )
    if result["too_small"]:
        names = ", ".join(f"{c['attribute']} {c['group']} ({c['n_images']})" for c in result["too_small"][:6])
        more = f" and {len(result['too_small']) - 6} more" if len(result["too_small"]) > 6 else ""
        result["summary"].append(f"not computed (fewer than {result['min_n']} images): {names}{more}")
