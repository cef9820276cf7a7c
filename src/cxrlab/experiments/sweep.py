"""Hyperparameter sweeps with Optuna: every trial is an ordinary run folder.

``--param lr=1e-3,5e-4,1e-4`` lists values (a grid when every parameter is a list);
``--param lr=1e-5:1e-2:log`` or ``--param dropout=0.1:0.8`` is a range (Optuna's TPE sampler).
A value that is itself a list is written in YAML flow syntax, brackets included:
``--param 'model.head.hidden=[512,512],[256,256]'`` (once a ``[`` appears, the whole text is read
as one YAML flow sequence of values). The ``dropout`` short name on a base whose
``model.head.dropout`` is a per-layer list sets the rate of the dropout layers present (the
non-zero entries) and leaves the zeros at zero, so the architecture is unchanged.
Trials are selected on the **validation** metric the base config monitors (``train.monitor``),
never on the test split; the test metrics of every trial are reported beside it.

The study lives in an Optuna storage: ``OUT/study.db`` (SQLite) by default, or any
``--storage`` URL such as ``postgresql://user:pass@host/db``. Workers started with the same
``--storage`` and ``--study`` share one study: each asks Optuna for the next grid point or TPE
suggestion, so two processes on one machine (SQLite) or many machines (PostgreSQL) split the work.
``--trials N`` is the total for the study, across workers. Hopeless trials are pruned (Optuna's
median pruner on the per-epoch validation metric) unless ``prune=False``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L

from cxrlab._optional import require
from cxrlab.config import RunConfig, split_list
from cxrlab.errors import ConfigError, CxrError
from cxrlab.runs import check_writable, read_json, write_csv, write_json

ALIASES = {
    "lr": "train.lr",
    "dropout": "model.head.dropout",
    "batch_size": "train.batch_size",
    "weight_decay": "train.weight_decay",
    "epochs": "train.epochs",
    "optimizer": "train.optimizer",
    "model": "model.name",
    "freeze": "model.freeze",
    "image_size": "data.image_size",
    "l2": "model.head.l2",
    "momentum": "train.momentum",
}
DEFAULT_TPE_TRIALS = 20
STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql")
SWEEP_OUTPUTS = (
    "trials",
    "study.db",
    "study.db-journal",
    "study.db-wal",
    "study.db-shm",
    "sweep.csv",
    "sweep.json",
    "sweep.html",
)


#: Floats as YAML 1.2 and Python write them: PyYAML's YAML 1.1 resolver reads ``1e-3`` as a string.
_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)|\.[0-9_]+(?:[eE][-+]?[0-9]+))$")


def _yaml_loader():
    """A SafeLoader that also reads ``1e-3`` and ``.5e-2`` as floats (quoted text stays text)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
    return Loader


class _TrialFailed(Exception):
    """A trial's training raised: recorded as an Optuna FAIL with its reason, the sweep goes on."""


@dataclass
class Param:
    """One searched parameter: a list of values or a numeric range."""

    name: str
    key: str
    values: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    #: the base config's per-layer dropout list the ``dropout`` short name scales (None: set as given)
    layers: list[float] | None = None

    @property
    def encoded(self) -> bool:
        """True when a value is a list: Optuna's choices must be scalars, so such values are stored as
        their JSON text (the same on every worker) and decoded back."""
        return self.values is not None and any(isinstance(v, list | dict) for v in self.values)

    def choices(self) -> list[Any]:
        """The categorical choices as Optuna stores them."""
        return [json.dumps(v) for v in self.values or []] if self.encoded else list(self.values or [])

    def decode(self, stored: Any) -> Any:
        """The value an Optuna trial recorded, as the parameter's own value (a list stays a list)."""
        if self.encoded and isinstance(stored, str):
            try:
                return json.loads(stored)
            except ValueError:
                return stored
        return stored

    def suggest(self, trial) -> Any:
        """Ask an Optuna trial for this parameter's value."""
        if self.values is not None:
            return self.decode(trial.suggest_categorical(self.name, self.choices()))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def applied(self, value: Any) -> Any:
        """The config value one trial uses: a scalar dropout rate on a per-layer list base becomes the
        list with every non-zero entry set to that rate (zeros, i.e. absent layers, stay zero)."""
        if self.layers is None or isinstance(value, list) or value is None:
            return value
        return [value if rate > 0 else 0.0 for rate in self.layers]


def _scalar(text: str) -> Any:
    import yaml

    for kind in (int, float):  # YAML would read 1e-3 as a string
        try:
            return kind(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _flow_values(name: str, spec: str) -> list[Any]:
    """``[512,512],[256,256]`` → ``[[512, 512], [256, 256]]``: the text read as one YAML flow sequence."""
    import yaml

    example = "e.g. model.head.hidden=[512,512],[256,256]"
    try:
        values = yaml.load(f"[{spec}]", Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError:
        raise ConfigError(
            f"--param {name}={spec}: not a list of values; write a list value in YAML flow syntax with "
            f"balanced brackets, values separated by commas, {example}"
        ) from None

    def plain(v: Any) -> bool:
        if isinstance(v, list):
            return all(plain(x) for x in v)
        return v is None or isinstance(v, bool | int | float | str)

    if not isinstance(values, list) or not values or not all(plain(v) for v in values):
        raise ConfigError(
            f"--param {name}={spec}: values must be numbers, text, true/false, null or [lists] of them, "
            f"{example}"
        )
    return values


def parse_param(text: str) -> Param:
    """``lr=1e-3,1e-4`` (values), ``lr=1e-5:1e-2:log`` (range) or ``hidden=[512],[256,128]`` (list
    values, YAML flow syntax) → :class:`Param`."""
    if "=" not in text:
        raise ConfigError(
            f"--param {text!r}: expected NAME=V1,V2,… or NAME=LOW:HIGH[:log], e.g. lr=1e-3,1e-4 "
            "(list values in brackets: model.head.hidden=[512,512],[256,256])"
        )
    name, spec = (part.strip() for part in text.split("=", 1))
    key = ALIASES.get(name, name)
    if not spec:
        raise ConfigError(f"--param {name}: no values given")
    if "[" in spec or "]" in spec:
        values = _flow_values(name, spec)
        if len(set(map(json.dumps, values))) != len(values):
            raise ConfigError(f"--param {name}: repeated values in {spec!r}")
        return Param(name, key, values=values)
    if ":" in spec and "," not in spec:
        parts = spec.split(":")
        log = parts[-1] == "log"
        if log:
            parts = parts[:-1]
        if len(parts) != 2:
            raise ConfigError(f"--param {text!r}: a range is LOW:HIGH or LOW:HIGH:log")
        low, high = (_scalar(p) for p in parts)
        if (
            not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high))
            or low >= high
        ):
            raise ConfigError(f"--param {text!r}: LOW and HIGH must be numbers with LOW < HIGH")
        if log and low <= 0:
            raise ConfigError(f"--param {text!r}: a log range needs LOW > 0")
        integer = isinstance(low, int) and isinstance(high, int)
        return Param(name, key, low=low, high=high, log=log, integer=integer)
    values = [_scalar(v) for v in split_list(spec, f"--param {name}=")]
    if len(set(map(str, values))) != len(values):
        raise ConfigError(f"--param {name}: repeated values in {spec!r}")
    return Param(name, key, values=values)


def trial_config(base: RunConfig, params: list[Param], values: dict[str, Any]) -> RunConfig:
    """The base config with one trial's values applied (unknown keys fail with one line)."""
    return base.override([f"{p.key}={json.dumps(p.applied(values[p.name]))}" for p in params])


def bind_params(base: RunConfig, params: list[Param]) -> None:
    """Tie the ``dropout`` short name to the base's per-layer dropout list, when it has one."""
    dropout = base.model.head.dropout
    for p in params:
        if p.name != "dropout" or p.key != ALIASES["dropout"] or not isinstance(dropout, list):
            continue
        if not any(rate > 0 for rate in dropout):
            raise ConfigError(
                f"--param dropout: the base config's model.head.dropout {dropout} has no dropout layer "
                "(every rate is 0) whose rate could be swept; sweep lists instead, e.g. "
                "--param 'model.head.dropout=[0.0,0.3],[0.0,0.5]'"
            )
        p.layers = [float(rate) for rate in dropout]


def check_params(base: RunConfig, params: list[Param]) -> None:
    """Validate every value against the config before any training starts."""
    if not params:
        raise ConfigError("give at least one --param NAME=VALUES (e.g. --param lr=1e-3,1e-4)")
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise ConfigError(f"--param given twice for {', '.join(n for n in names if names.count(n) > 1)}")
    for p in params:
        probes = p.values if p.values is not None else [p.low, p.high]
        for v in probes:
            try:
                base.override([f"{p.key}={json.dumps(p.applied(v))}"])
            except ConfigError as exc:
                raise ConfigError(f"--param {p.name}={v}: {exc}") from None
    if base.data.path is None:
        raise ConfigError("the base config has no data.path; set it in the YAML or with --set data.path=…")


class OptunaPruning(L.Callback):
    """Reports the monitored validation metric to Optuna each epoch and stops hopeless trials."""

    def __init__(self, trial, monitor: str):
        self.trial = trial
        self.monitor = monitor
        self.pruned_at: int | None = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: D102
        import optuna

        value = trainer.callback_metrics.get(self.monitor)
        if value is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch + 1
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: {self.monitor}={float(value):.4f}")


def check_storage(url: str) -> None:
    """Refuse a storage URL Optuna cannot open, before anything is created."""
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in url else ""
    if scheme not in STORAGE_SCHEMES:
        raise ConfigError(
            f"--storage {url!r}: unsupported storage URL; use sqlite:///PATH/study.db or "
            "postgresql://USER:PASSWORD@HOST/DB (mysql://… also works)"
        )
    if scheme == "postgresql" and "+" not in url.split("://", 1)[0]:  # SQLAlchemy's default driver
        require("psycopg2", "postgres", "a PostgreSQL --storage")


def default_storage(out: Path) -> str:
    """SQLite file inside the sweep folder."""
    return f"sqlite:///{(out / 'study.db').resolve()}"


def _storage(url: str):
    import optuna

    if url.startswith("sqlite"):
        # Several processes on one SQLite file: wait for the lock instead of failing at once.
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    if url.startswith(("postgresql", "mysql")):
        return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
    return url


def open_study(
    out: Path,
    params: list[Param],
    storage: str | None,
    study_name: str,
    direction: str,
    sampler: str,
    prune: bool,
    seed: int,
):
    """Create or join the study (several workers join the same one)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if sampler == "auto":
        sampler = "grid" if all(p.values is not None for p in params) else "tpe"
    if sampler == "grid":
        ranged = [p.name for p in params if p.values is None]
        if ranged:
            raise ConfigError(f"--sampler grid needs lists of values; {', '.join(ranged)} is a range")
        smp = optuna.samplers.GridSampler({p.name: p.choices() for p in params}, seed=seed)
    elif sampler == "tpe":
        smp = optuna.samplers.TPESampler(seed=seed)
    else:
        raise ConfigError(f"--sampler {sampler!r}: choose auto, grid or tpe")
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1) if prune else None
    url = storage or default_storage(out)
    try:
        for attempt in range(6):
            try:
                study = optuna.create_study(
                    storage=_storage(url),
                    study_name=study_name,
                    direction=direction,
                    sampler=smp,
                    pruner=pruner or optuna.pruners.NopPruner(),
                    load_if_exists=True,
                )
                break
            except Exception as exc:  # noqa: BLE001
                # Workers starting together race to create the schema: the loser retries and joins.
                if attempt == 5 or not any(s in str(exc) for s in ("already exists", "locked", "UNIQUE")):
                    raise
                time.sleep(0.5 + attempt)
    except ImportError as exc:
        raise CxrError(
            f"--storage {url}: a database driver is missing ({exc}); pip install cxrlab[postgres]"
        ) from None
    except Exception as exc:  # noqa: BLE001 - connection errors come in many classes
        if "OperationalError" in type(exc).__name__ or "Argument" in type(exc).__name__:
            raise CxrError(f"cannot open the study storage {url}: {str(exc).splitlines()[0]}") from None
        raise
    if study.direction.name.lower() != direction:
        raise CxrError(
            f"study {study_name!r} in {url} optimises {study.direction.name.lower()}, this sweep "
            f"{direction}; use another --study name or the same train.monitor"
        )
    return study, sampler, url


def run_sweep(
    base: RunConfig,
    params: list[str | Param],
    out: str | Path,
    trials: int | None = None,
    sampler: str = "auto",
    storage: str | None = None,
    study_name: str = "cxr-sweep",
    prune: bool = True,
    pruner=None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run (or join) a sweep; returns the summary written to ``out/sweep.json``.

    ``pruner`` replaces the default median pruner (an ``optuna.pruners`` object).
    """
    optuna = require("optuna", "sweep", "cxr sweep")
    from optuna.trial import TrialState

    from cxrlab.experiments.compare import COMPARE_OUTPUTS
    from cxrlab.pipeline.train import train
    from cxrlab.runs import check_out_folder
    from cxrlab.training.train import TrainingInterrupted

    out = Path(out)
    if trials is not None and (isinstance(trials, bool) or not 1 <= trials <= 100_000):
        raise ConfigError(
            f"--trials {trials}: give at least 1 trial and at most 100,000 (or leave it out for the default)"
        )
    if sampler not in ("auto", "grid", "tpe"):  # before --out is made (open_study comes after it)
        raise ConfigError(f"--sampler {sampler!r}: choose auto, grid or tpe")
    if storage is not None:
        check_storage(storage)
    plist = [p if isinstance(p, Param) else parse_param(p) for p in params]
    bind_params(base, plist)
    check_params(base, plist)
    check_out_folder(out, SWEEP_OUTPUTS + COMPARE_OUTPUTS)
    check_writable(out)
    monitor = base.train.monitor
    direction = "minimize" if monitor == "val_loss" else "maximize"
    study, kind, url = open_study(out, plist, storage, study_name, direction, sampler, prune, base.train.seed)
    if pruner is not None:
        study.pruner = pruner
    grid_size = math.prod(len(p.values or []) for p in plist) if kind == "grid" else None
    total = trials or grid_size or DEFAULT_TPE_TRIALS

    def objective(trial: optuna.Trial) -> float:
        values = {p.name: p.suggest(trial) for p in plist}
        cfg = trial_config(base, plist, values)
        run = out / "trials" / f"trial-{trial.number:03d}"
        trial.set_user_attr("run", str(run))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        pruning = OptunaPruning(trial, monitor)
        try:
            metrics = train(cfg, run, progress=progress, callbacks=[pruning])
        except optuna.TrialPruned:
            write_json(run / "status.json", {"status": "pruned", "epochs_done": pruning.pruned_at})
            raise
        except TrainingInterrupted:
            raise  # Ctrl-C stops the whole sweep (the trial stays resumable)
        except Exception as exc:  # noqa: BLE001 - any failing trial is recorded, the sweep goes on
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            if not isinstance(exc, CxrError):
                reason = f"{exc.__class__.__name__}: {reason}" if reason else exc.__class__.__name__
            trial.set_user_attr("error", reason)
            raise _TrialFailed(reason) from None
        test = metrics["test"]
        trial.set_user_attr("test_accuracy", test.get("accuracy"))  # None for a multi-label run
        trial.set_user_attr("test_accuracy_ci95", test.get("accuracy_ci95"))
        trial.set_user_attr("test_auc", test.get("auc"))  # multi-label: the macro AUC
        trial.set_user_attr("total_s", metrics["timing"]["total_s"])
        val = metrics["val"]
        if monitor == "val_auc":  # validation (macro) AUC; undefined counts as 0
            auc = val.get("auc")
            return float(auc) if auc is not None and auc == auc else 0.0
        return float(val["loss"] if monitor == "val_loss" else val["accuracy"])

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)

    def counted() -> int:
        # A trial that failed in training (its reason recorded) counts towards --trials, so the sweep
        # moves on; one Optuna marked failed because it was interrupted does not, so it is run again.
        return sum(
            t.state in states or (t.state == TrialState.FAIL and "error" in t.user_attrs)
            for t in study.get_trials(deepcopy=False)
        )

    def enough(study_: optuna.Study, _trial) -> None:
        if counted() >= total:
            study_.stop()

    t0 = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures go to sweep.csv, not as tracebacks
    try:
        if counted() < total:
            study.optimize(
                objective, n_trials=total, callbacks=[enough], gc_after_trial=True, catch=(_TrialFailed,)
            )
    except BaseException:
        with contextlib.suppress(Exception):  # sweep.csv even when stopped: what ran so far
            summarize_sweep(out, study, plist, kind, url, worker_wall_s=time.perf_counter() - t0)
        raise
    summary = summarize_sweep(out, study, plist, kind, url, worker_wall_s=time.perf_counter() - t0)
    if summary["failed"] and not summary["best"] and not summary["trials"].get("pruned"):
        first = summary["failed"][0]
        raise CxrError(
            f"all {len(summary['failed'])} trial(s) failed; trial {first['trial']} ({first['params']}): "
            f"{first['error']} — see {out / 'sweep.csv'}"
        )
    return summary


def summarize_sweep(
    out: Path, study, params: list[Param], sampler: str, storage: str, worker_wall_s: float | None = None
) -> dict[str, Any]:
    """Write sweep.csv, sweep.json, Optuna's history/importance plots and the compare table."""
    from optuna.trial import TrialState

    from cxrlab.experiments.compare import compare_runs

    all_trials = study.get_trials(deepcopy=False)
    bound = [p for p in params if p.layers is not None]  # their column: the full list each trial used
    rows = []
    for t in all_trials:
        values = {p.name: p.decode(t.params.get(p.name)) for p in params}
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "value": t.value,
                **values,
                **{p.key: p.applied(values[p.name]) if p.name in t.params else None for p in bound},
                "epochs": len(t.intermediate_values) or None,
                "duration_s": round(t.duration.total_seconds(), 2) if t.duration else None,
                "test_accuracy": t.user_attrs.get("test_accuracy"),
                "error": t.user_attrs.get("error") if t.state == TrialState.FAIL else None,
                "worker": t.user_attrs.get("worker"),
                "run": t.user_attrs.get("run"),
            }
        )
    names = [*[p.name for p in params], *[p.key for p in bound]]
    fields = ["trial", "state", "value", *names, "epochs", "duration_s", "test_accuracy"]
    cells = [{k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in r.items()} for r in rows]
    write_csv(out / "sweep.csv", cells, [*fields, "error", "worker", "run"])
    complete = [t for t in all_trials if t.state == TrialState.COMPLETE]
    best = None
    if complete:
        b = study.best_trial
        chosen = {p.name: p.decode(b.params.get(p.name)) for p in params if p.name in b.params}
        best = {
            "trial": b.number,
            "value": b.value,
            "params": chosen,
            "config": {p.key: p.applied(v) for p in params if (v := chosen.get(p.name)) is not None},
            **b.user_attrs,
        }
    starts = [t.datetime_start for t in all_trials if t.datetime_start]
    ends = [t.datetime_complete for t in all_trials if t.datetime_complete]
    plots = sweep_plots(study, out / "plots")
    runs = [Path(t.user_attrs["run"]) for t in complete if Path(t.user_attrs.get("run", "")).is_dir()]
    compared = compare_runs(runs, out, SWEEP_OUTPUTS) if runs else None
    summary = {
        "study": study.study_name,
        "storage": storage,
        "sampler": sampler,
        "direction": study.direction.name.lower(),
        "objective": "validation metric of the best checkpoint (train.monitor)",
        "params": [{k: v for k, v in vars(p).items() if v is not None} for p in params],
        "trials": {s: sum(r["state"] == s for r in rows) for s in sorted({r["state"] for r in rows})},
        "best": best,
        "failed": [
            {
                "trial": r["trial"],
                "params": {p.name: r[p.name] for p in params},
                **({"config": {p.key: r[p.key] for p in bound}} if bound else {}),
                "error": r["error"] or "unknown",
            }
            for r in rows
            if r["state"] == "fail"
        ],
        "study_wall_s": round((max(ends) - min(starts)).total_seconds(), 2) if starts and ends else None,
        "worker_wall_s": round(worker_wall_s, 2) if worker_wall_s is not None else None,
        "plots": {k: str(v.relative_to(out)) for k, v in plots.items()},
        "compared_runs": len(runs),
        "pairs_tested": len(compared["pairs"]) if compared else 0,
    }
    write_json(out / "sweep.json", summary)
    write_sweep_page(out, summary, rows, all_trials, params, plots)
    return summary


def _hide_password(url: str) -> str:
    """A storage URL without its password (postgresql://user:secret@host → user:***@host)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def write_sweep_page(
    out: Path, summary: dict[str, Any], rows: list[dict[str, Any]], trials, params: list[Param], plots
) -> Path:
    """``out/sweep.html``: the trials (state, value, parameters, error), the best trial, Optuna's plots."""
    from cxrlab import pages

    names = [p.name for p in params] + [p.key for p in params if p.layers is not None]
    captions = {
        "history": "optimisation history (objective per trial, best so far)",
        "intermediate": "intermediate values per epoch (what the pruner saw)",
        "importance": "parameter importances (fANOVA)",
    }
    return pages.write_page(
        out / "sweep.html",
        "sweep.html",
        s=summary,
        storage=_hide_password(summary["storage"]),
        param_names=names,
        trials=[{**r, "params": {n: r.get(n) for n in names}} for r in rows],
        figures=[{"path": path, "caption": captions.get(k, k)} for k, path in plots.items()],
    )


def sweep_plots(study, folder: Path) -> dict[str, Path]:
    """Optuna's optimisation history, intermediate values (pruning) and parameter importances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, Path] = {}
    jobs = {
        "history": ovm.plot_optimization_history,
        "intermediate": ovm.plot_intermediate_values,
        "importance": ovm.plot_param_importances,
    }
    for name, fn in jobs.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", UserWarning)  # "no artists with labels" on tiny studies
            try:
                ax = fn(study)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue  # e.g. importance needs two finished trials with different values
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(7, 4.2)
        fig.tight_layout()
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=150, bbox_inches="tight")  # keeps Optuna's legend beside the axes
        plt.close(fig)
        made[name] = path
    return made


def load_sweep_summary(out: str | Path) -> dict[str, Any]:
    """Read ``out/sweep.json`` written by a sweep."""
    return read_json(Path(out) / "sweep.json")
