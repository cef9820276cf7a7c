"""Compare finished runs: one table, overlaid validation curves, accuracy against time, paired tests.

Runs are only compared on the *same* test images. Each run's ``predictions.csv`` names its test
images; runs whose test sets differ are put in separate groups (column ``test_set``: A, B, …) and
never tested against each other. Within a group every pair gets an exact McNemar test on the
discordant test images (Holm-corrected over the pairs) and a paired-bootstrap 95% CI of the
accuracy difference, so "0.75 vs 0.58 on 36 images" is only called a win when it is not noise.
Correctness is taken at argmax of the saved probabilities, the same rule as ``test.accuracy``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrlab import pages
from cxrlab.errors import CxrError
from cxrlab.runs import (
    atomic_write,
    check_out_folder,
    check_writable,
    read_csv,
    read_json,
    read_status,
    require_run,
    write_csv,
)
from cxrlab.stats import holm, mcnemar_exact, paired_bootstrap_difference, to_number

COMPARE_FIELDS = [
    "run",
    "model",
    "task",
    "classes",
    "params_total",
    "params_trainable",
    "s_per_epoch",
    "s_per_step",
    "total_s",
    "test_loss",
    "test_accuracy",
    "test_accuracy_ci95_lo",
    "test_accuracy_ci95_hi",
    "test_auc",
    "device",
    "test_set",
    "test_n",
    "epochs",
    "fast_path",
    "epoch_timing",
    "features_s",
    "params_keras_total",
    "params_keras_trainable",
    "params_aux_excluded",
    "params_source",
    "test_precision_macro",
    "test_recall_macro",
    "test_f1_macro",
    "test_precision_weighted",
    "test_recall_weighted",
    "test_f1_weighted",
    "path",
]
PAIR_FIELDS = [
    "test_set",
    "run_a",
    "run_b",
    "n",
    "accuracy_a",
    "accuracy_b",
    "difference",
    "difference_ci95_lo",
    "difference_ci95_hi",
    "a_only_correct",
    "b_only_correct",
    "p_mcnemar",
    "p_holm",
    "verdict",
]
ALPHA = 0.05


@dataclass
class RunSummary:
    """What a comparison needs from one finished run folder."""

    name: str
    path: Path
    metrics: dict[str, Any]
    history: list[dict[str, float | None]]
    predictions: list[dict[str, str]]
    test_set: str = ""
    key: str = field(default="", repr=False)
    params: dict[str, Any] = field(default_factory=dict)
    params_source: str = ""

    @property
    def classes(self) -> list[str]:
        return list(self.metrics.get("classes", []))

    def correct(self) -> dict[str, bool]:
        """Per test image (path key): argmax of saved probabilities == true class."""
        out = {}
        for row in self.predictions:
            probs = [float(row.get(f"p_{c}") or 0.0) for c in self.classes]
            out[image_key(row["path"])] = self.classes[int(np.argmax(probs))] == row["true"]
        return out

    def row(self) -> dict[str, Any]:
        """The run's line in compare.csv."""
        m = self.metrics
        test, timing, params = m.get("test", {}), m.get("timing", {}), self.params
        ci95 = test.get("accuracy_ci95") or [None, None]
        keras = params.get("keras") or {}
        macro, weighted = test.get("macro") or {}, test.get("weighted") or {}
        fast = bool(m.get("fast_path"))
        return {
            "run": self.name,
            "model": m.get("model"),
            "task": m.get("task"),
            "classes": ",".join(self.classes),
            "params_total": params.get("total"),
            "params_trainable": params.get("trainable"),
            "s_per_epoch": timing.get("s_per_epoch"),
            "s_per_step": timing.get("s_per_step"),
            "total_s": timing.get("total_s"),
            "test_loss": _round(test.get("loss")),
            "test_accuracy": _round(test.get("accuracy")),
            "test_accuracy_ci95_lo": _round(ci95[0]),
            "test_accuracy_ci95_hi": _round(ci95[1]),
            "test_auc": _round(test.get("auc")),
            "device": m.get("device"),
            "test_set": self.test_set,
            "test_n": test.get("n"),
            "epochs": timing.get("epochs"),
            "fast_path": m.get("fast_path"),
            "epoch_timing": "head_only" if fast else "full_network",
            "features_s": timing.get("features_s") if fast else None,
            "params_keras_total": keras.get("total"),
            "params_keras_trainable": keras.get("trainable"),
            "params_aux_excluded": params.get("aux_excluded"),
            "params_source": self.params_source,
            "test_precision_macro": _round(macro.get("precision")),
            "test_recall_macro": _round(macro.get("recall")),
            "test_f1_macro": _round(macro.get("f1")),
            "test_precision_weighted": _round(weighted.get("precision")),
            "test_recall_weighted": _round(weighted.get("recall")),
            "test_f1_weighted": _round(weighted.get("f1")),
            "path": str(self.path),
        }


def _round(value: Any, digits: int = 4) -> Any:
    return round(float(value), digits) if isinstance(value, int | float) else value


def run_params(path: Path, metrics: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The run's parameter counts (PyTorch and Keras conventions, auxiliary classifier excluded) and
    where they came from: ``metrics.json``, or, for a run trained before metrics.json stored Keras
    counts, the model rebuilt from the run's ``config.yaml`` (random weights, meta device: nothing is
    loaded). Without a usable config the Keras counts are missing (shown as "—")."""
    params = dict(metrics.get("params") or {})
    if "keras" in params:
        return params, "metrics.json"
    try:
        from cxrlab.config import RunConfig
        from cxrlab.evaluation.evaluate import param_counts
        from cxrlab.models.summary import build_on_meta

        cfg = RunConfig.load(path / "config.yaml")
        classes = len(metrics.get("classes") or cfg.data.classes or [])
        model, _, _ = build_on_meta(cfg.model, classes, cfg.data.image_size)
        counts = param_counts(model)
    except Exception:  # noqa: BLE001 - an old or edited config: the PyTorch counts still show
        return params, "metrics.json (no Keras counts)"
    return counts, "rebuilt from config.yaml"


def averages_from_predictions(predictions: list[dict[str, str]], classes: list[str]) -> dict[str, Any]:
    """Macro/weighted precision, recall and F1 from predictions.csv (argmax of the saved
    probabilities, as ``test.accuracy``), for runs whose metrics.json predates them."""
    from cxrlab.stats import averaged_prf

    try:
        y = np.array([classes.index(r["true"]) for r in predictions])
        pred = np.array([int(np.argmax([float(r[f"p_{c}"]) for c in classes])) for r in predictions])
    except (KeyError, ValueError):  # a hand-edited file: leave the columns empty
        return {}
    return averaged_prf(y, pred, len(classes))


def image_key(path: str) -> str:
    """A test image's identity: its last three path parts (split/class/file), so the same data
    reached through a relative or an absolute path (or a moved copy) still matches."""
    return "/".join(Path(path.replace("\\", "/")).parts[-3:])


COMPARE_OUTPUTS = (
    "compare.csv", "compare.md", "compare.html", "pairwise.csv", "pairwise_auc.csv", "groups.csv",
    "group_tests.csv", "plots",
)  # fmt: skip
#: per seed group (`cxr train --seeds`): the spread of its headline metrics over seeds
GROUP_METRICS = ("accuracy", "auc", "f1_macro", "balanced_accuracy", "accuracy_at_threshold")
GROUP_FIELDS = ["group", "seeds", *(f"{m}_{s}" for m in GROUP_METRICS for s in ("mean", "std", "min", "max"))]
GROUP_TEST_FIELDS = [
    "group_a", "group_b", "metric", "mean_a", "mean_b", "difference", "n_a", "n_b", "p_welch",
    "shared_seeds", "p_paired", "verdict",
]  # fmt: skip
AUC_PAIR_FIELDS = [
    "test_set",
    "run_a",
    "run_b",
    "n",
    "patients",
    "finding",
    "auc_a",
    "auc_b",
    "difference",
    "difference_ci95_lo",
    "difference_ci95_hi",
    "p_bootstrap",
    "p_holm",
    "verdict",
]


def _unfinished(path: Path) -> str:
    """Why a run folder without metrics.json cannot be compared, from its status.json."""
    status = read_status(path)  # a "running" run whose process is gone reads as interrupted
    state = status.get("status")
    if state == "failed":
        error = str(status.get("error") or "no error recorded").splitlines()[0]
        return f"{path}: the run failed and cannot be compared; its recorded error: {error}"
    if state == "pruned":
        return f"{path}: the trial was pruned by its sweep (stopped early); it has no test metrics to compare"
    if state == "interrupted":
        why = f" ({status['reason']})" if status.get("reason") else ""
        return (
            f"{path}: the run was interrupted{why}; finish it with `cxr train --resume {path}`, then compare"
        )
    if state == "running":
        return (
            f"{path}: the run has not finished (status 'running'); wait for it, or if its process is gone "
            f"finish it with `cxr train --resume {path}`"
        )
    return (
        f"{path} has no metrics.json: the run did not finish; train it again or `cxr train --resume {path}`"
    )


def load_summary(run: str | Path) -> RunSummary:
    """Read a finished run folder (metrics.json, history.csv, predictions.csv)."""
    path = require_run(run)
    if not (path / "metrics.json").is_file():
        raise CxrError(_unfinished(path))
    metrics = read_json(path / "metrics.json")
    if "test" not in metrics or "classes" not in metrics:
        raise CxrError(f"{path}/metrics.json has no test metrics; is it a `cxr train` run folder?")
    history = [{k: to_number(v) for k, v in r.items()} for r in read_csv(path / "history.csv")]
    predictions = read_csv(path / "predictions.csv")
    summary = RunSummary(path.name, path, metrics, history, predictions)
    summary.params, summary.params_source = run_params(path, metrics)
    if predictions and "macro" not in metrics["test"]:  # evaluated before metrics.json had them
        metrics["test"].update(averages_from_predictions(predictions, summary.classes))
    if predictions and metrics.get("multilabel"):  # same images with the same finding labels
        trues = [f"true_{f}" for f in summary.classes]
        lines = sorted(
            image_key(r["path"]) + "\t" + ",".join(r.get(t, "") for t in trues) for r in predictions
        )
        summary.key = "multilabel:" + hashlib.sha1("\n".join(lines).encode()).hexdigest()
    elif predictions:
        lines = sorted(f"{image_key(r['path'])}\t{r['true']}" for r in predictions)
        summary.key = hashlib.sha1("\n".join(lines).encode()).hexdigest()
    else:  # older run: only the dataset and counts can be checked, never paired
        summary.key = "unverified:" + "|".join(
            [
                str(metrics.get("data", {}).get("source")),
                ",".join(summary.classes),
                str(metrics["test"].get("n")),
            ]
        )
    return summary


def load_summaries(runs: list[str | Path]) -> list[RunSummary]:
    """Load runs, give each a unique display name and a test-set label (A, B, …)."""
    if not runs:
        raise CxrError("give at least one run folder to compare")
    summaries = [load_summary(r) for r in runs]
    seen_paths = set()
    for s in summaries:
        real = s.path.resolve()
        if real in seen_paths:
            raise CxrError(f"{s.path} is given twice; compare each run once")
        seen_paths.add(real)
    names = [s.path.name for s in summaries]
    for s in summaries:
        if names.count(s.path.name) > 1:
            s.name = f"{s.path.parent.name}/{s.path.name}"
    labels: dict[str, str] = {}
    for s in summaries:
        labels.setdefault(s.key, chr(ord("A") + len(labels)) if len(labels) < 26 else f"T{len(labels)}")
        s.test_set = labels[s.key]
    return summaries


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
            lo, hi = paired_bootstrap_difference(xa, xb, n_boot, seed)
            pairs.append(
                {
                    "test_set": a.test_set,
                    "run_a": a.name,
                    "run_b": b.name,
                    "n": len(keys),
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
    from cxrlab.evaluation.multilabel import bootstrap_weights, weighted_auc

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


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""

    def cell(v: Any) -> str:
        if v is None or v == "":
            return "—"
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _fmt_ci(row: dict[str, Any]) -> str:
    lo, hi = row["test_accuracy_ci95_lo"], row["test_accuracy_ci95_hi"]
    return f"[{lo:.3f}, {hi:.3f}]" if isinstance(lo, float) and isinstance(hi, float) else "—"


FAST_MARK = "†"


def _count(total: Any, trainable: Any) -> str:
    """``total (trainable)`` with thousands separators, or "—" when unknown."""
    if not isinstance(total, int):
        return "—"
    return f"{total:,} ({trainable:,})" if isinstance(trainable, int) else f"{total:,}"


def _timed(row: dict[str, Any], key: str) -> Any:
    """A seconds-per-epoch/step cell, marked † when only the head trained (fast path)."""
    value = row[key]
    if row["epoch_timing"] != "head_only" or not isinstance(value, int | float):
        return value
    return f"{value:.3f} {FAST_MARK}"


def main_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Header and cells of the human-readable comparison table."""
    header = [
        "test set",
        "run",
        "model",
        "params PyTorch (trainable)",
        "params Keras (trainable)",
        "s/epoch",
        "s/step",
        "total s",
        "test loss",
        "test accuracy [95% CI]",
        "AUC",
        "macro P",
        "macro R",
        "macro F1",
        "weighted P",
        "weighted R",
        "weighted F1",
        "device",
    ]
    cells = [
        [
            r["test_set"],
            r["run"],
            r["model"],
            _count(r["params_total"], r["params_trainable"]),
            _count(r["params_keras_total"], r["params_keras_trainable"]),
            _timed(r, "s_per_epoch"),
            _timed(r, "s_per_step"),
            r["total_s"],
            r["test_loss"],
            (f"{r['test_accuracy']:.3f} " if isinstance(r["test_accuracy"], float) else "") + _fmt_ci(r),
            r["test_auc"],
            r["test_precision_macro"],
            r["test_recall_macro"],
            r["test_f1_macro"],
            r["test_precision_weighted"],
            r["test_recall_weighted"],
            r["test_f1_weighted"],
            r["device"],
        ]
        for r in rows
    ]
    return header, cells


def footnotes(rows: list[dict[str, Any]]) -> list[str]:
    """What the table's marks and columns mean: fast-path timings, the two parameter conventions."""
    out = []
    fast = [r for r in rows if r["epoch_timing"] == "head_only"]
    if fast:
        seconds = [r["features_s"] if isinstance(r["features_s"], int | float) else None for r in fast]
        when, each = "", ""
        if len(fast) == 1 and seconds[0] is not None:
            when = f" in {seconds[0]:.1f} s"
        elif len(fast) > 1:
            each = "; " + ", ".join(
                f"{r['run']} in {t:.1f} s" if t is not None else f"{r['run']}: time not recorded"
                for r, t in zip(fast, seconds, strict=True)
            )
        out.append(
            f"{FAST_MARK} head only: features computed once{when} (fast path: frozen backbone, features "
            f"cached, only the head trains{each}); not comparable with full-network epochs."
        )
    out.append(
        "Parameters: PyTorch counts parameters only; Keras also counts batch norm's moving mean/variance "
        "as non-trainable weights, and Keras' InceptionV3 has no batch-norm γ. An auxiliary classifier "
        "(InceptionV3, training only) is in neither total."
    )
    rebuilt = [r["run"] for r in rows if r["params_source"] == "rebuilt from config.yaml"]
    if rebuilt:
        out.append(
            f"Parameter counts of {', '.join(rebuilt)} were rebuilt from the run's config.yaml (its "
            "metrics.json predates Keras-convention counts)."
        )
    missing = [r["run"] for r in rows if r["params_keras_total"] is None]
    if missing:
        out.append(
            f"No Keras-convention count for {', '.join(missing)}: its config.yaml could not be rebuilt."
        )
    out.append(
        "Macro P/R/F1: unweighted mean over the classes; weighted: mean weighted by each class's test "
        "images (test split, argmax predictions)."
    )
    # multi-label runs have no accuracy or P/R/F1 (their AUCs are in pairwise_auc.csv)
    missing = [r["run"] for r in rows if r["test_f1_macro"] is None and r["test_accuracy"] is not None]
    if missing:
        out.append(
            f"No macro/weighted precision, recall or F1 for {', '.join(missing)}: an older run without "
            "predictions.csv; re-run `cxr evaluate` on it."
        )
    return out


def pair_table(pairs: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Header and cells of the pairwise-significance table."""
    header = [
        "test set",
        "A",
        "B",
        "n",
        "acc A − acc B [95% CI]",
        "only A right",
        "only B right",
        "McNemar p",
        "Holm p",
        "verdict",
    ]
    cells = [
        [
            p["test_set"],
            p["run_a"],
            p["run_b"],
            p["n"],
            f"{p['difference']:+.3f} [{p['difference_ci95_lo']:+.3f}, {p['difference_ci95_hi']:+.3f}]",
            p["a_only_correct"],
            p["b_only_correct"],
            p["p_mcnemar"],
            p["p_holm"],
            p["verdict"],
        ]
        for p in pairs
    ]
    return header, cells


def notes(summaries: list[RunSummary]) -> list[str]:
    """Plain-language caveats: separate test sets, runs that cannot be paired."""
    out = []
    sets = sorted({s.test_set for s in summaries})
    if len(sets) > 1:
        desc = "; ".join(f"{t}: " + ", ".join(s.name for s in summaries if s.test_set == t) for t in sets)
        out.append(
            f"These runs were evaluated on {len(sets)} different test sets ({desc}). Numbers from "
            "different test sets are not comparable; significance tests are only run within a set."
        )
    for s in summaries:
        if not s.predictions:
            out.append(
                f"{s.name} has no predictions.csv (trained by an older cxrlab): its test set is matched by "
                "dataset and size only and it takes part in no paired test; re-run `cxr evaluate` on it."
            )
    return out


# ---------------------------------------------------------------------------------------------- plots


def plot_val_curves(summaries: list[RunSummary], path: Path) -> Path | None:
    """Validation loss and accuracy per epoch, one line per run."""
    import matplotlib.ticker

    from cxrlab.figures import plt, save_figure

    if not any(s.history for s in summaries):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for s in summaries:
        epochs = [h.get("epoch") for h in s.history]
        for ax, key in zip(axes, ("val_loss", "val_acc"), strict=True):
            values = [np.nan if h.get(key) is None else h[key] for h in s.history]
            if not all(np.isnan(values)):
                ax.plot(epochs, values, "-o", ms=3, label=f"{s.name} ({s.test_set})")
    for ax, label in zip(axes, ("validation loss", "validation accuracy"), strict=True):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="best")
    fig.suptitle("validation curves")
    return save_figure(fig, path)


def plot_accuracy_vs_time(rows: list[dict[str, Any]], path: Path) -> Path:
    """Test accuracy with its 95% CI against total run time (log scale)."""
    import matplotlib.ticker

    from cxrlab.figures import plt, save_figure

    fig, ax = plt.subplots(figsize=(7, 4.6))
    for r in rows:
        acc, t = r["test_accuracy"], r["total_s"]
        if not isinstance(acc, float) or not t:
            continue
        lo, hi = r["test_accuracy_ci95_lo"], r["test_accuracy_ci95_hi"]
        yerr = [[acc - lo], [hi - acc]] if isinstance(lo, float) and isinstance(hi, float) else None
        marker = "osD^v<>p*h"[(ord(r["test_set"][-1]) - ord("A")) % 10]
        ax.errorbar([t], [acc], yerr=yerr, fmt=marker, capsize=4, label=f"{r['run']} ({r['test_set']})")
    ax.set_xscale("log")
    seconds = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(seconds)
    ax.xaxis.set_minor_formatter(seconds)
    ax.set_xlabel("total run time (s, log scale)")
    ax.set_ylabel("test accuracy (95% CI)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    ax.set_title("accuracy against time")
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------- output


def expand_groups(runs: list[str | Path]) -> tuple[list[Path], dict[str, dict[int, Path]]]:
    """Run folders with every seed group (`cxr train --seeds` folder, seeds.json) replaced by its seed runs;
    and the groups as {group name: {seed: run folder}}."""
    from cxrlab.pipeline.seeds import is_seed_group

    paths: list[Path] = []
    groups: dict[str, dict[int, Path]] = {}
    for run in runs:
        path = Path(run)
        if not is_seed_group(path):
            paths.append(path)
            continue
        info = read_json(path / "seeds.json")
        members = info.get("runs") if isinstance(info, dict) else None
        if not isinstance(members, dict) or not members:
            raise CxrError(f"{path}/seeds.json lists no runs; is it a `cxr train --seeds` folder?")
        name = path.name if path.name not in groups else str(path)
        groups[name] = {}
        for seed, sub in members.items():
            member = path / str(sub)
            if not str(seed).isdigit() or Path(str(sub)).name != str(sub):
                raise CxrError(
                    f"{path}/seeds.json is damaged (run {sub!r} of seed {seed!r}); rerun the group"
                )
            groups[name][int(seed)] = member
            paths.append(member)
    return paths, groups


def _group_numbers(summary: RunSummary) -> dict[str, float]:
    from cxrlab.pipeline.seeds import headline

    return headline(summary.metrics)


def group_tables(
    groups: dict[str, dict[int, RunSummary]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per group: mean, std (ddof 1), min, max over seeds of GROUP_METRICS; per pair of groups and metric:
    Welch's t-test over the seeds (unequal variances) and, when the groups share at least two seeds,
    a paired t-test over the shared seeds (the same seed = the same split and initial draw).
    Two-sided p-values, not corrected for the number of metrics or pairs."""
    from scipy import stats as st

    from cxrlab.pipeline.seeds import spread

    values = {g: {seed: _group_numbers(s) for seed, s in members.items()} for g, members in groups.items()}
    rows = []
    for g, per_seed in values.items():
        row: dict[str, Any] = {"group": g, "seeds": " ".join(map(str, sorted(per_seed)))}
        for m in GROUP_METRICS:
            nums = [v[m] for v in per_seed.values() if m in v]
            if nums:
                sp = spread(nums)
                row.update({f"{m}_{k}": round(float(sp[k]), 4) for k in ("mean", "std", "min", "max")})
        rows.append(row)
    tests = []
    names = list(values)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for m in GROUP_METRICS:
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


def group_markdown(rows: list[dict[str, Any]], tests: list[dict[str, Any]]) -> str:
    """The seed-group section of compare.md (mean ± std per group, tests between groups)."""
    header = ["group", "seeds", *(f"{m} mean ± std [min–max]" for m in GROUP_METRICS)]
    cells = []
    for r in rows:
        cells.append(
            [r["group"], r["seeds"]]
            + [
                f"{r[f'{m}_mean']:.3f} ± {r[f'{m}_std']:.3f} [{r[f'{m}_min']:.3f}–{r[f'{m}_max']:.3f}]"
                if f"{m}_mean" in r
                else "—"
                for m in GROUP_METRICS
            ]
        )
    md = "\n## Seed groups (`cxr train --seeds`)\n\n" + md_table(header, cells)
    md += "\nstd: sample standard deviation over the group's seeds (ddof 1).\n"
    if tests:
        theader = ["groups", "metric", "mean A", "mean B", "difference", "p Welch", "shared seeds",
                   "p paired", "verdict"]  # fmt: skip
        tcells = [
            [f"{t['group_a']} vs {t['group_b']}", t["metric"], t["mean_a"], t["mean_b"],
             f"{t['difference']:+.4f}", t["p_welch"], t["shared_seeds"], t["p_paired"], t["verdict"]]
            for t in tests
        ]  # fmt: skip
        md += "\n" + md_table(theader, tcells)
        md += (
            "\nWelch's t-test (unequal variances) over the seeds of each group; paired t-test over the seeds "
            "both groups ran (same seed: same initial draw and data order). The verdict uses the paired "
            f"p-value when there is one, else Welch's; two-sided, α = {ALPHA}, not corrected for the "
            "number of metrics and pairs. The seed runs' images are not McNemar-tested against each other.\n"
        )
    return md


def compare_summaries(
    summaries: list[RunSummary],
    out: Path,
    extra_outputs: tuple[str, ...] = (),
    groups: dict[str, dict[int, Path]] | None = None,
) -> dict[str, Any]:
    """Write compare.csv/.md/.html, pairwise.csv and plots for loaded runs; return what was written.

    ``out`` must be new, empty or hold only these outputs (plus ``extra_outputs``, e.g. a sweep's).
    ``groups`` (seed groups, :func:`expand_groups`): their runs are summarised per group and tested
    group against group (groups.csv, group_tests.csv), not McNemar-tested run against run."""
    check_out_folder(out, COMPARE_OUTPUTS + extra_outputs)
    check_writable(out)
    rows = [s.row() for s in summaries]
    by_path = {s.path: s for s in summaries}
    members = {p for g in (groups or {}).values() for p in g.values()}
    group_summaries = {g: {seed: by_path[p] for seed, p in m.items()} for g, m in (groups or {}).items()}
    group_rows, group_tests = group_tables(group_summaries) if groups else ([], [])
    if groups:
        write_csv(out / "groups.csv", group_rows, GROUP_FIELDS)
        write_csv(out / "group_tests.csv", group_tests, GROUP_TEST_FIELDS)
    pairs = paired_tests([s for s in summaries if s.path not in members])
    auc_pairs = multilabel_paired_tests(summaries)
    caveats = notes(summaries)
    write_csv(out / "compare.csv", rows, COMPARE_FIELDS)
    write_csv(out / "pairwise.csv", pairs, PAIR_FIELDS)
    if auc_pairs:
        write_csv(out / "pairwise_auc.csv", auc_pairs, AUC_PAIR_FIELDS)
    plots = {}
    curves = plot_val_curves(summaries, out / "plots" / "val_curves.png")
    if curves:
        plots["val_curves"] = curves
    plots["accuracy_vs_time"] = plot_accuracy_vs_time(rows, out / "plots" / "accuracy_vs_time.png")

    header, cells = main_table(rows)
    marks = footnotes(rows)
    pheader, pcells = pair_table(pairs)
    md = "# Comparison\n\n" + "".join(f"> {c}\n\n" for c in caveats) + md_table(header, cells)
    md += "\n" + "".join(f"{n}\n\n" for n in marks)
    md += "\n## Paired tests (same test images)\n\n"
    md += (
        md_table(pheader, pcells)
        + f"\nExact McNemar test on the images only one run classified correctly; p-values Holm-corrected "
        f"over {len(pairs)} pair(s); α = {ALPHA}. Difference CI: paired bootstrap over test images.\n"
        if pairs
        else "No pair of runs shares a test set with predictions; nothing to test.\n"
    )
    if groups:
        md += group_markdown(group_rows, group_tests)
    aheader: list[str] = []
    acells: list[list[Any]] = []
    tested = 0
    if auc_pairs:
        aheader = ["runs", "finding", "n", "AUC A", "AUC B", "difference (95% CI)", "p (Holm)", "verdict"]
        acells = [
            [
                f"{r['run_a']} vs {r['run_b']}",
                r["finding"],
                r["n"],
                r.get("auc_a"),
                r.get("auc_b"),
                f"{r['difference']:+.3f} [{r['difference_ci95_lo']:+.3f}, {r['difference_ci95_hi']:+.3f}]"
                if "difference" in r
                else "—",
                r.get("p_holm"),
                r["verdict"],
            ]
            for r in auc_pairs
        ]
        tested = sum("p_bootstrap" in r for r in auc_pairs)
        md += "\n## Multi-label: paired AUC differences (same test images)\n\n" + md_table(aheader, acells)
        md += (
            "\nPaired bootstrap (2000 resamples of patients, or images when the predictions name no "
            "patient) of the AUC difference per finding and of the macro AUC; two-sided p-values "
            f"Holm-corrected over "
            f"{tested} test(s); α = {ALPHA}.\n"
        )
    md += "\n" + "".join(f"![{k}](plots/{p.name})\n" for k, p in plots.items())
    atomic_write(out / "compare.md", md)

    pages.write_page(
        out / "compare.html",
        "compare.html",
        notes=caveats,
        header=header,
        cells=cells,
        footnotes=marks,
        pair_header=pheader,
        pair_cells=pcells,
        alpha=ALPHA,
        auc_header=aheader,  # multi-label: per-finding and macro AUC, paired bootstrap, Holm
        auc_cells=acells,
        auc_tested=tested,
        figures=[{"path": p, "caption": k.replace("_", " ")} for k, p in plots.items()],
    )
    return {
        "rows": rows,
        "pairs": pairs,
        "auc_pairs": auc_pairs,
        "notes": caveats,
        "footnotes": marks,
        "plots": plots,
        "files": [out / "compare.csv", out / "compare.md", out / "compare.html", out / "pairwise.csv"],
        "markdown": md,
        "groups": group_rows,
        "group_tests": group_tests,
    }


def compare_runs(
    runs: list[str | Path], out: str | Path, extra_outputs: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Compare finished run folders; writes ``out/compare.{csv,md,html}``, ``pairwise.csv``, plots."""
    check_out_folder(Path(out), COMPARE_OUTPUTS + extra_outputs)  # before reading any run
    paths, groups = expand_groups(runs)
    return compare_summaries(load_summaries(list(paths)), Path(out), extra_outputs, groups)
