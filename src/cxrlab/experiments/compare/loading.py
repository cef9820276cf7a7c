"""Loading runs for `cxr compare`: run folders and seed groups → :class:`RunSummary` (metrics.json through
:func:`cxrlab.metrics.read_metrics`, history.csv, predictions.csv), their test-set keys and table rows."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrlab.errors import CxrError
from cxrlab.metrics import metrics_for
from cxrlab.runs import read_csv, read_json, read_status, require_run
from cxrlab.stats import to_number

#: compare.csv's columns: the run's facts, then every registered single-label metric (test_<name>, with
#: its CI as _ci95_lo/_hi where it has one), argmax accuracy (not the deployed rule) and the path
FACT_FIELDS = [
    "run", "model", "task", "classes", "params_total", "params_trainable", "s_per_epoch", "s_per_step",
    "total_s", "test_loss", "test_accuracy", "test_accuracy_ci95_lo", "test_accuracy_ci95_hi", "test_auc",
    "device", "test_set", "test_n", "epochs", "fast_path", "epoch_timing", "features_s",
    "params_keras_total", "params_keras_trainable", "params_aux_excluded", "params_source",
]  # fmt: skip


def metric_fields() -> list[str]:
    """The registry's columns of compare.csv not among :data:`FACT_FIELDS`."""
    out = []
    for m in metrics_for("single"):
        for name in [f"test_{m.name}"] + (
            [f"test_{m.name}_ci95_lo", f"test_{m.name}_ci95_hi"] if m.ci != "none" else []
        ):
            if name not in FACT_FIELDS and name not in out:
                out.append(name)
    return out


def compare_fields() -> list[str]:
    """Every column of compare.csv, in order."""
    return [*FACT_FIELDS, *metric_fields(), "test_argmax_accuracy", "path"]


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
        """Per test image (path key): the run's decision (predictions.csv's ``pred``, the saved operating
        threshold of a binary run) == true class; argmax of the probabilities for a file without ``pred``."""
        out = {}
        for row in self.predictions:
            pred = row.get("pred")
            if not pred:
                probs = [float(row.get(f"p_{c}") or 0.0) for c in self.classes]
                pred = self.classes[int(np.argmax(probs))]
            out[image_key(row["path"])] = pred == row["true"]
        return out

    def patients(self, keys: list[str]) -> list[str] | None:
        """The patient of each test image ``keys`` names (predictions.csv's ``patient``), or None when the
        file names none (an older run, or data without patient ids): then images are the resampling unit."""
        by_key = {image_key(row["path"]): row.get("patient") or "" for row in self.predictions}
        groups = [by_key.get(k, "") for k in keys]
        return groups if all(groups) else None

    def row(self) -> dict[str, Any]:
        """The run's line in compare.csv."""
        m = self.metrics
        test, timing, params = m.get("test", {}), m.get("timing", {}), self.params
        keras = params.get("keras") or {}
        fast = bool(m.get("fast_path"))
        row: dict[str, Any] = {
            "run": self.name,
            "model": m.get("model"),
            "task": m.get("task"),
            "classes": ",".join(self.classes),
            "params_total": params.get("total"),
            "params_trainable": params.get("trainable"),
            "s_per_epoch": timing.get("s_per_epoch"),
            "s_per_step": timing.get("s_per_step"),
            "total_s": timing.get("total_s"),
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
            "test_argmax_accuracy": _round((test.get("argmax") or {}).get("accuracy")),
            "path": str(self.path),
        }
        for metric in metrics_for("single"):
            row[f"test_{metric.name}"] = _round(metric.value(test))
            if metric.ci != "none":
                lo, hi = metric.interval(test) or (None, None)
                row[f"test_{metric.name}_ci95_lo"], row[f"test_{metric.name}_ci95_hi"] = (
                    _round(lo),
                    _round(hi),
                )
        return row


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
    """Macro/weighted precision, recall and F1 from predictions.csv (its ``pred`` column, the run's
    decision, as ``test.accuracy``), for runs whose metrics.json predates them."""
    from cxrlab.stats import averaged_prf

    try:
        y = np.array([classes.index(r["true"]) for r in predictions])
        pred = np.array(
            [
                classes.index(r["pred"])
                if r.get("pred")
                else int(np.argmax([float(r[f"p_{c}"]) for c in classes]))
                for r in predictions
            ]
        )
    except (KeyError, ValueError):  # a hand-edited file: leave the columns empty
        return {}
    return averaged_prf(y, pred, len(classes))


def image_key(path: str) -> str:
    """A test image's identity: its last three path parts (split/class/file), so the same data
    reached through a relative or an absolute path (or a moved copy) still matches."""
    return "/".join(Path(path.replace("\\", "/")).parts[-3:])


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
    from cxrlab.metrics import read_metrics

    path = require_run(run)
    if not (path / "metrics.json").is_file():
        raise CxrError(_unfinished(path))
    raw = read_json(path / "metrics.json")
    if not isinstance(raw, dict) or "test" not in raw or "classes" not in raw:
        raise CxrError(f"{path}/metrics.json has no test metrics; is it a `cxr train` run folder?")
    metrics = read_metrics(path / "metrics.json")
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
