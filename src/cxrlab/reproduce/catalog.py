"""The five reports as data: their experiments, the numbers they print, and what `--budget quick` changes.

Read from ``reports.yaml`` beside this module (package data); see its header for the fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import yaml

from cxrlab.config import RunConfig
from cxrlab.errors import ConfigError

KINDS = ("train", "sweep", "autoencoder", "gan")
METRICS = {
    # metric → (label in the document, higher is better, format)
    "test_accuracy": ("test accuracy", True, "pct"),
    "test_loss": ("test loss", False, "num"),
    "val_accuracy": ("validation accuracy (saved model)", True, "pct"),
    "train_accuracy": ("training accuracy (last epoch)", None, "pct"),  # higher is not better (overfitting)
    "precision": ("precision (weighted)", True, "num"),
    "recall": ("recall (weighted)", True, "num"),
    "f1": ("F1 (weighted)", True, "num"),
    "params_total": ("parameters, total", None, "int"),
    "params_trainable": ("parameters, trainable", None, "int"),
    "params_non_trainable": ("parameters, non-trainable", None, "int"),
    "train_time_s": ("training time, CPU (s)", False, "sec"),
    "s_per_epoch": ("seconds per epoch, CPU", False, "sec"),
    "s_per_step": ("seconds per step, CPU", False, "sec"),
    "gpu_train_time_s": ("training time, GPU (s)", False, "sec"),
}


@dataclass(frozen=True)
class Reported:
    """One number a report prints, and where."""

    metric: str
    value: float | tuple[float, float]
    where: str


@dataclass
class Experiment:
    """One experiment of a report, as cxrlab runs it."""

    report: str
    id: str
    kind: str
    title: str
    data: str
    recipe: str | None = None
    recipes: list[str] = field(default_factory=list)  # gan: the classifiers trained with and without
    params: list[str] = field(default_factory=list)  # sweep: --param values
    reported: dict[str, dict[str, Reported]] = field(default_factory=dict)  # recipe (or "") → metric → value
    quick_set: dict[str, Any] = field(default_factory=dict)
    quick_note: str = ""
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # autoencoder / classifier / gan

    @property
    def key(self) -> str:
        return f"{self.report}/{self.id}"


@dataclass
class Report:
    """A report: its file, title, framework (keras: counts in Keras' convention) and experiments."""

    id: str
    file: str
    title: str
    framework: str
    experiments: list[Experiment]

    @property
    def datasets(self) -> list[str]:
        return sorted({e.data for e in self.experiments})


def recipe_path(name: str):
    """The packaged recipe file ``cxrlab/recipes/NAME.yaml`` (a Traversable)."""
    return resources.files("cxrlab") / "recipes" / f"{name}.yaml"


def load_recipe(name: str) -> RunConfig:
    """A packaged recipe as a RunConfig."""
    path = recipe_path(name)
    if not path.is_file():
        raise ConfigError(f"recipe {name!r} is not in cxrlab/recipes/")
    return RunConfig.from_dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, source=f"{name}.yaml")


def _reported(raw: dict[str, Any], where: str) -> dict[str, Reported]:
    out = {}
    for metric, entry in (raw or {}).items():
        if metric not in METRICS:
            raise ConfigError(f"reports.yaml {where}: unknown metric {metric!r}")
        value = entry["value"]
        value = (float(value[0]), float(value[1])) if isinstance(value, list) else float(value)
        out[metric] = Reported(metric, value, str(entry["where"]))
    return out


@cache
def load_catalog() -> dict[str, Report]:
    """Every report, by number (``"000"`` … ``"004"``), in order."""
    text = (resources.files("cxrlab") / "reproduce" / "reports.yaml").read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    reports = {}
    for rid, entry in raw.items():
        experiments = []
        for e in entry["experiments"]:
            kind = e["kind"]
            if kind not in KINDS:
                raise ConfigError(f"reports.yaml {rid}/{e['id']}: unknown kind {kind!r}")
            if kind == "gan":
                reported = {
                    r: _reported(v, f"{rid}/{e['id']}/{r}") for r, v in (e.get("reported") or {}).items()
                }
            else:
                reported = {"": _reported(e.get("reported"), f"{rid}/{e['id']}")}
            quick = e.get("quick") or {}
            experiments.append(
                Experiment(
                    report=str(rid),
                    id=e["id"],
                    kind=kind,
                    title=e["title"],
                    data=e["data"],
                    recipe=e.get("recipe"),
                    recipes=list(e.get("recipes") or []),
                    params=list(e.get("params") or []),
                    reported=reported,
                    quick_set=dict(quick.get("set") or {}),
                    quick_note=quick.get("note", ""),
                    settings={k: dict(e[k]) for k in ("autoencoder", "classifier", "gan") if k in e},
                )
            )
        reports[str(rid)] = Report(str(rid), entry["file"], entry["title"], entry["framework"], experiments)
    return reports


def select_reports(which: str | list[str]) -> list[Report]:
    """``"all"``, ``"000"``, ``"3"`` or a list of them → the reports, in order; one line if unknown."""
    catalog = load_catalog()
    items = [which] if isinstance(which, str) else list(which)
    if any(str(i).strip().lower() == "all" for i in items):
        return list(catalog.values())
    chosen = []
    for item in items:
        text = str(item).strip()
        rid = text.zfill(3) if text.isdigit() else text
        if rid not in catalog:
            raise ConfigError(
                f"report {text!r} is not one of cxrlab's reports; give {', '.join(catalog)} or all"
            )
        if rid not in [r.id for r in chosen]:
            chosen.append(catalog[rid])
    return sorted(chosen, key=lambda r: r.id)
