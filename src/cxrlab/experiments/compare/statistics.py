"""The statistics of `cxr compare`: paired tests of runs on the same test images (exact McNemar on the runs'
decisions with a paired-bootstrap CI of the accuracy difference, Holm-corrected; paired bootstrap of
multi-label AUC differences) and seed groups against each other (Welch's and paired t-tests)."""

from __future__ import annotations

from typing import Any

import numpy as np

from cxrlab.experiments.compare.loading import RunSummary, _round, image_key
from cxrlab.metrics import metrics_for
from cxrlab.stats import holm, mcnemar_exact, paired_bootstrap_difference, resampling_units, weighted_auc

ALPHA = 0.05
PAIR_FIELDS = [
    "test_set", "run_a", "run_b", "n", "patients", "accuracy_a", "accuracy_b", "difference",
    "difference_ci95_lo", "difference_ci95_hi", "a_only_correct", "b_only_correct", "p_mcnemar", "p_holm",
    "verdict",
]  # fmt: skip
AUC_PAIR_FIELDS = [
    "test_set", "run_a", "run_b", "n", "patients", "finding", "auc_a", "auc_b", "difference",
    "difference_ci95_lo", "difference_ci95_hi", "p_bootstrap", "p_holm", "verdict",
]  # fmt: skip
GROUP_TEST_FIELDS = [
    "group_a", "group_b", "metric", "mean_a", "mean_b", "difference", "n_a", "n_b", "p_welch",
    "shared_seeds", "p_paired", "verdict",
]  # fmt: skip


def bootstrap_weights(groups: list[str] | None, n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """``(n_boot, n)`` paired-resampling weights: patients drawn with replacement (as many draws as
    patients), each image weighted by how often its patient was drawn; without groups each image is its own.
    Both runs of a pair get the same weights, and a patient is never split."""
    units, p = resampling_units(groups, n)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(p, np.full(p, 1.0 / p), size=n_boot) if p else np.zeros((n_boot, 0))
    return counts[:, units].astype(np.float64)


def group_metrics() -> list[str]:
    """The metrics a seed group is summarised and tested on: every registered single-label metric with a
    CI (the headline numbers), and argmax accuracy."""
    return [m.name for m in metrics_for("single") if m.ci != "none"] + ["argmax_accuracy"]


def group_fields() -> list[str]:
    """groups.csv's columns."""
    return ["group", "seeds", *(f"{m}_{s}" for m in group_metrics() for s in ("mean", "std", "min", "max"))]


def paired_tests(summaries: list[RunSummary], n_boot: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """McNemar + paired-bootstrap accuracy difference for every pair sharing a test set."""
    pairs: list[dict[str, Any]] = []
    for i, a in enumerate(summaries):
        for b in summaries[i + 1 :]:
            if a.key != b.key or not a.predictions or not b.predictions or a.key.startswith("multilabel:"):
                continue
            ca, cb = a.correct(), b.correct()
            keys = sorted(ca)
            xa = np.array([ca[k] for k in keys])
            xb = np.array([cb[k] for k in keys])
            a_only, b_only = int((xa & ~xb).sum()), int((~xa & xb).sum())
            groups = a.patients(keys)  # patient-level when predictions.csv names the patients
            lo, hi = paired_bootstrap_difference(xa, xb, n_boot, seed, groups)
            pairs.append(
                {
                    "test_set": a.test_set,
                    "run_a": a.name,
                    "run_b": b.name,
                    "n": len(keys),
                    "patients": len(set(groups)) if groups else None,
                    "accuracy_a": round(float(xa.mean()), 4),
                    "accuracy_b": round(float(xb.mean()), 4),
                    "difference": round(float(xa.mean() - xb.mean()), 4),
                    "difference_ci95_lo": round(lo, 4),
                    "difference_ci95_hi": round(hi, 4),
                    "a_only_correct": a_only,
                    "b_only_correct": b_only,
                    "p_mcnemar": mcnemar_exact(a_only, b_only),
                }
            )
    for p, adj in zip(pairs, holm([p["p_mcnemar"] for p in pairs]), strict=True):
        p["p_mcnemar"] = round(p["p_mcnemar"], 4)
        p["p_holm"] = round(adj, 4)
        if adj < ALPHA:
            better = p["run_a"] if p["difference"] > 0 else p["run_b"]
            p["verdict"] = f"{better} better (p={adj:.3g})"
        else:
            p["verdict"] = f"no significant difference (p={adj:.3g})"
    return pairs


def multilabel_paired_tests(
    summaries: list[RunSummary], n_boot: int = 2000, seed: int = 0
) -> list[dict[str, Any]]:
    """Multi-label runs on the same test images: paired bootstrap (resampling patients when the
    predictions name them) of the AUC difference, for the macro AUC and each finding; two-sided bootstrap
    p-values Holm-corrected over every test of every pair."""
    rows: list[dict[str, Any]] = []
    for i, a in enumerate(summaries):
        for b in summaries[i + 1 :]:
            if a.key != b.key or not a.key.startswith("multilabel:") or a.classes != b.classes:
                continue
            pa = {image_key(r["path"]): r for r in a.predictions}
            pb = {image_key(r["path"]): r for r in b.predictions}
            keys = sorted(pa)
            groups = [pa[k].get("patient") or k for k in keys]
            w = bootstrap_weights(groups, len(keys), n_boot, seed)
            ones = np.ones((1, len(keys)))
            diffs, points = [], []
            for f in a.classes:
                known = np.array([pa[k][f"true_{f}"] != "" for k in keys])
                y = np.array([pa[k][f"true_{f}"] == "1" for k in keys])[known]
                sa = np.array([float(pa[k][f"p_{f}"]) for k in keys])[known]
                sb = np.array([float(pb[k][f"p_{f}"]) for k in keys])[known]
                if not 0 < y.sum() < len(y):
                    rows.append(
                        {
                            "test_set": a.test_set,
                            "run_a": a.name,
                            "run_b": b.name,
                            "n": int(known.sum()),
                            "finding": f,
                            "verdict": "AUC undefined (no positive or no negative)",
                        }
                    )
                    continue
                auc_a, auc_b = weighted_auc(sa, y, ones)[0], weighted_auc(sb, y, ones)[0]
                d = weighted_auc(sa, y, w[:, known]) - weighted_auc(sb, y, w[:, known])
                diffs.append(d)
                points.append((auc_a, auc_b))
                rows.append(_auc_pair_row(a, b, f, int(known.sum()), len(set(groups)), auc_a, auc_b, d))
            if diffs:
                ma, mb = (float(np.mean([p[i] for p in points])) for i in (0, 1))
                rows.append(
                    _auc_pair_row(
                        a,
                        b,
                        "macro AUC",
                        len(keys),
                        len(set(groups)),
                        ma,
                        mb,
                        np.nanmean(np.stack(diffs), axis=0),
                    )
                )
    tested = [r for r in rows if "p_bootstrap" in r]
    for r, adj in zip(tested, holm([r["p_bootstrap"] for r in tested]), strict=True):
        r["p_holm"] = round(adj, 4)
        better = r["run_a"] if r["difference"] > 0 else r["run_b"]
        r["verdict"] = (
            f"{better} better (p={adj:.3g})" if adj < ALPHA else f"no significant difference (p={adj:.3g})"
        )
    return rows


def _auc_pair_row(
    a: RunSummary,
    b: RunSummary,
    finding: str,
    n: int,
    patients: int,
    auc_a: float,
    auc_b: float,
    boot: np.ndarray,
) -> dict[str, Any]:
    from cxrlab.stats import percentile_ci

    boot = boot[np.isfinite(boot)]
    lo, hi = percentile_ci(boot)
    # two-sided bootstrap p, never below 1 / resamples (no resample on the other side is not p = 0)
    p = min(1.0, 2 * min(float((boot <= 0).mean()), float((boot >= 0).mean()))) if len(boot) else 1.0
    p = max(p, 1.0 / len(boot)) if len(boot) else p
    return {
        "test_set": a.test_set,
        "run_a": a.name,
        "run_b": b.name,
        "n": n,
        "patients": patients,
        "finding": finding,
        "auc_a": round(auc_a, 4),
        "auc_b": round(auc_b, 4),
        "difference": round(auc_a - auc_b, 4),
        "difference_ci95_lo": round(lo, 4),
        "difference_ci95_hi": round(hi, 4),
        "p_bootstrap": round(p, 4),
    }


def _group_numbers(summary: RunSummary) -> dict[str, float]:
    from cxrlab.pipeline.seeds import headline

    return headline(summary.metrics)


def group_tables(
    groups: dict[str, dict[int, RunSummary]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per group: mean, std (ddof 1), min, max over seeds of group_metrics(); per pair of groups and metric:
    Welch's t-test over the seeds (unequal variances) and, when the groups share at least two seeds,
    a paired t-test over the shared seeds (the same seed = the same split and initial draw).
    Two-sided p-values, not corrected for the number of metrics or pairs."""
    from scipy import stats as st

    from cxrlab.pipeline.seeds import spread

    values = {g: {seed: _group_numbers(s) for seed, s in members.items()} for g, members in groups.items()}
    rows = []
    for g, per_seed in values.items():
        row: dict[str, Any] = {"group": g, "seeds": " ".join(map(str, sorted(per_seed)))}
        for m in group_metrics():
            nums = [v[m] for v in per_seed.values() if m in v]
            if nums:
                sp = spread(nums)
                row.update({f"{m}_{k}": round(float(sp[k]), 4) for k in ("mean", "std", "min", "max")})
        rows.append(row)
    tests = []
    names = list(values)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for m in group_metrics():
                xa = {k: v[m] for k, v in values[a].items() if m in v}
                xb = {k: v[m] for k, v in values[b].items() if m in v}
                if len(xa) < 2 or len(xb) < 2:
                    continue
                va, vb = np.array(list(xa.values())), np.array(list(xb.values()))
                welch = st.ttest_ind(va, vb, equal_var=False).pvalue
                shared = sorted(set(xa) & set(xb))
                paired = (
                    st.ttest_rel([xa[k] for k in shared], [xb[k] for k in shared]).pvalue
                    if len(shared) >= 2
                    else float("nan")
                )
                p = paired if np.isfinite(paired) else welch
                diff = float(va.mean() - vb.mean())
                better = a if diff > 0 else b
                verdict = (
                    f"{better} higher (p={p:.3g})" if np.isfinite(p) and p < ALPHA
                    else f"no significant difference (p={p:.3g})"
                )  # fmt: skip
                tests.append(
                    {
                        "group_a": a, "group_b": b, "metric": m,
                        "mean_a": round(float(va.mean()), 4), "mean_b": round(float(vb.mean()), 4),
                        "difference": round(diff, 4), "n_a": len(va), "n_b": len(vb),
                        "p_welch": _round(float(welch)), "shared_seeds": len(shared),
                        "p_paired": _round(float(paired)) if np.isfinite(paired) else None,
                        "verdict": verdict,
                    }
                )  # fmt: skip
    return rows, tests
