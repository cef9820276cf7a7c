"""Command-line flags that set run-config keys, defined once.

Each :class:`ConfigFlag` names a config key; its help text ends with the default read from the
config model (:class:`cxrlab.config.RunConfig`), and its typer default is ``None`` ("not given") so
that the config file, or else the model's default, applies. :func:`with_config_flags` adds the flags
of a table to a command's signature; the command receives them as keyword arguments and turns them
into config overrides with :func:`overrides`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from cxrlab.config import RunConfig, split_list
from cxrlab.errors import ConfigError

__all__ = [
    "AUDIT",
    "EVALUATE",
    "LABEL_FILE",
    "SUMMARY",
    "TRAIN",
    "ConfigFlag",
    "config_default",
    "default_text",
    "labels_config",
    "overrides",
    "parse_label_map",
    "resolved",
    "split_list",
    "with_config_flags",
]


def labels_config(values: dict[str, Any]) -> Any:
    """The ``data.labels`` section from :data:`LABEL_FILE` flag values (as :func:`resolved` gives them),
    or None without ``--labels``: for commands that call the data layer without a run config."""
    from pydantic import ValidationError

    from cxrlab.config import LabelsConfig, _describe

    try:  # checked even without --labels: a mistyped --labels-format is named, not ignored
        cfg = LabelsConfig(**{f.key.rsplit(".", 1)[1]: values[f.name] for f in LABEL_FILE})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, "label-file flags")) from None
    return cfg if values.get("labels") else None


def parse_label_map(text: str, option: str = "--label-map") -> dict[str, str]:
    """``"COVID=covid, Normal=normal"`` → ``{"COVID": "covid", "Normal": "normal"}`` (via split_list)."""
    out = {}
    for item in split_list(text, option):
        src, sep, dst = item.partition("=")
        if not sep or not src.strip() or not dst.strip():
            raise ConfigError(
                f"{option} {text!r}: expected SRC=DST pairs separated by commas, e.g. COVID=covid"
            )
        out[src.strip()] = dst.strip()
    return out


@dataclass(frozen=True)
class ConfigFlag:
    """One flag that sets one config key."""

    name: str  # the command's parameter name; the flag is --name with _ as -
    key: str  # the config key it sets, e.g. "train.lr"
    type: type  # what the flag takes on the command line
    help: str  # what it does; "[default: …]" is appended from the config model
    decls: tuple[str, ...] = ()  # flag spelling when not --name, e.g. ("--pretrained/--random-init",)
    unset: str | None = None  # what an empty default (None, {}) means, e.g. "the model's"
    parse: Callable[[Any, str], Any] | None = None  # command-line text → config value

    @property
    def flag(self) -> str:
        """The flag as the user types it (the first spelling)."""
        return (self.decls[0].split("/")[0]) if self.decls else "--" + self.name.replace("_", "-")

    def value(self, given: Any) -> Any:
        """The config value of a given flag value."""
        return self.parse(given, self.flag) if self.parse is not None else given


def config_default(key: str) -> Any:
    """The default of a config key in the config model, e.g. ``config_default("train.lr") == 1e-3``."""
    node: Any = RunConfig()
    for part in key.split("."):
        if not isinstance(node, BaseModel) or part not in type(node).model_fields:
            raise KeyError(f"{key!r} is not a run-config key")
        node = getattr(node, part)
    return node


def default_text(flag: ConfigFlag) -> str:
    """How the help shows the flag's config default: the spelling in effect for on/off flags."""
    value = config_default(flag.key)
    if value is None or value == {} or value == []:
        if flag.unset is None:
            raise ValueError(f"{flag.name}: {flag.key} defaults to {value!r}; say what that means (unset=)")
        return flag.unset
    if isinstance(value, bool):
        on, _, off = (flag.decls[0] if flag.decls else flag.flag).partition("/")
        return on if value else (off or f"--no-{on[2:]}")
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _parameter(flag: ConfigFlag) -> inspect.Parameter:
    option = typer.Option(*flag.decls, help=f"{flag.help} [default: {default_text(flag)}]")
    annotation = Annotated[flag.type, option]  # type: ignore[valid-type]
    return inspect.Parameter(flag.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def with_config_flags(table: tuple[ConfigFlag, ...], before: str | None = None) -> Callable:
    """Decorator: add the table's flags (typer default None) to a command's signature, before the
    parameter ``before`` (else last); the command takes them through ``**flags``."""

    def decorate(func: Callable) -> Callable:
        sig = inspect.signature(func, eval_str=True)
        own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        added = [_parameter(f) for f in table]
        at = next((i for i, p in enumerate(own) if p.name == before), len(own))
        params = own[:at] + added + own[at:]
        # keyword-only parameters may follow ones with defaults in any order; typer reads names only
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params]
        func.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        return func

    return decorate


def overrides(table: tuple[ConfigFlag, ...], given: dict[str, Any]) -> dict[str, Any]:
    """The flags that were given (not None), as ``{config key: config value}``."""
    by_name = {f.name: f for f in table}
    return {by_name[n].key: by_name[n].value(v) for n, v in given.items() if n in by_name and v is not None}


def resolved(table: tuple[ConfigFlag, ...], given: dict[str, Any]) -> dict[str, Any]:
    """Every flag's value by name: the given one (parsed), else the config model's default."""
    return {
        f.name: f.value(given[f.name]) if given.get(f.name) is not None else config_default(f.key)
        for f in table
    }


_F = ConfigFlag
_CACHE = "$CXRLAB_CACHE_DIR or ~/.cache/cxrlab"
_CLASSES = _F(
    "classes", "data.classes", str, "comma-separated subset and order of classes, e.g. covid,normal",
    unset="all", parse=split_list,
)  # fmt: skip
_LABEL_MAP = _F(
    "label_map", "data.label_map", str, "rename classes: SRC=DST,… (e.g. COVID=covid)", unset="none",
    parse=parse_label_map,
)  # fmt: skip
_IMAGE_SIZE = _F("image_size", "data.image_size", int, "input size in pixels", unset="the model's")
_FREEZE = _F(
    "freeze", "model.freeze", str, "none | backbone | N (first N layers) | blocks:K (first K backbone blocks)"
)
_SEED = _F("seed", "train.seed", int, "random seed: same seed + data + machine = same metrics")
_CACHE_DIR = _F("cache_dir", "data.cache_dir", str, "decoded-image cache", unset=_CACHE)
LABEL_FILE: tuple[ConfigFlag, ...] = (
    _F("labels", "data.labels.file", str,
       "label file (CSV/TSV, optionally .gz): one row per image, paths relative to --data (docs/datasets.md)",
       unset="none: class folders"),
    _F("labels_format", "data.labels.format", str, "label-file preset: generic | nih | chexpert | mimic | "
       "covid-ieee (columns, separator, uncertainty codes, official splits)"),
    _F("label_column", "data.labels.label_column", str,
       "single-label: the label-file column whose values are the classes, e.g. finding",
       unset="the preset's"),
    _F("findings", "data.labels.findings", str, "multi-label: comma-separated findings to keep, e.g. "
       "Effusion,Cardiomegaly", unset="all", parse=split_list),
    _F("where", "data.labels.where", list[str],
       "keep label-file rows where COLUMN=VALUE (also !=, A|B), e.g. "
       "\"View Position=PA\"; repeatable, all must hold", unset="all rows"),
)  # fmt: skip
"""The label-file flags `cxr train` and `cxr audit` share (config section ``data.labels``)."""

TRAIN: tuple[ConfigFlag, ...] = (
    _F("data", "data.path", str, "folder (train/val/test or class subfolders), MedMNIST .npz, or the image "
       "folder of --labels", unset="the --config file's"),
    *LABEL_FILE,
    _F("model", "model.name", str, "model name from `cxr models`"),
    _CLASSES,
    _LABEL_MAP,
    _IMAGE_SIZE,
    _F("pretrained", "model.pretrained", bool, "start from torchvision ImageNet weights",
       decls=("--pretrained/--random-init",)),
    _FREEZE,
    _F("epochs", "train.epochs", int, "maximum epochs"),
    _F("batch_size", "train.batch_size", int, "batch size"),
    _F("lr", "train.lr", float, "learning rate"),
    _F("optimizer", "train.optimizer", str, "adam | adamw | sgd"),
    _F("weight_decay", "train.weight_decay", float, "weight decay"),
    _F("dropout", "model.head.dropout", float, "dropout in the head"),
    _F("early_stopping", "train.early_stopping", int, "patience in epochs on the monitored metric"),
    _F("class_weights", "train.class_weights", bool, "weight the loss by inverse class frequency",
       decls=("--class-weights/--no-class-weights",)),
    _F("augment", "data.augment", bool, "Keras-style rotation/shift/shear/zoom/flip",
       decls=("--augment/--no-augment",)),
    _SEED,
    _F("device", "train.device", str, "auto | cpu | cuda"),
    _F("devices", "train.devices", str, "number of devices for multi-device training"),
    _F("num_nodes", "train.num_nodes", int, "number of nodes (clusters)"),
    _F("strategy", "train.strategy", str, "Lightning strategy, e.g. ddp"),
    _F("precision", "train.precision", str,
       "training: auto | 32 | bf16-mixed | 16-mixed (auto: bf16 where the CPU or GPU has it); evaluation, "
       "predict, serve and explain run fp32 unless --set eval.precision=bf16-mixed"),
    _F("restore", "train.restore", str,
       "the weights evaluated and saved: best (the best validation epoch by train.monitor, checkpoints/"
       "best.ckpt) or last (the final epoch's, as Keras keeps them)"),
    _CACHE_DIR,
    _F("extra_train", "data.extra_train", str,
       "folder of extra (synthetic) training images, class subfolders", unset="none"),
    _F("max_per_class", "data.max_per_class", int, "use at most N images per class and split (quick trials)",
       unset="all"),
    _F("val_split", "data.val_split", str,
       "given: use the data's val/ (else carve --set data.val_fraction=0.2 from train); carve: merge a given "
       "val/ into train and carve a stratified, patient-grouped val from it; auto: carve when the given "
       "val/ has fewer than 30 images of some class"),
    _F("tensorboard", "train.tensorboard", bool,
       "write TensorBoard logs to RUN/tensorboard; view with `tensorboard --logdir RUN/tensorboard`",
       decls=("--tensorboard/--no-tensorboard",)),
    _F("target_sensitivity", "eval.target_sensitivity", float,
       "binary runs: operating threshold = the highest reaching this sensitivity on validation data, "
       "e.g. 0.95",
       unset="Youden's J"),
    _F("temperature_scaling", "eval.temperature_scaling", bool,
       "fit a softmax temperature on validation data (calibration)",
       decls=("--temperature-scaling/--no-temperature-scaling",)),
    _F("tta_shift", "eval.tta_shift", float,
       "test-time augmentation: average the model over the image and 4 copies shifted by this fraction of "
       "its side (0.07 = 2 px at 28 px); kept in the run and applied by predict, serve and export; 0 = off"),
)  # fmt: skip
"""`cxr train`: every flag that sets a run-config key."""

AUDIT: tuple[ConfigFlag, ...] = (
    _CLASSES,
    _LABEL_MAP,
    _F("group_pattern", "data.group_pattern", str,
       "regex on file names whose first group is a patient id (the default reads Kermany's personN_); "
       "an empty string: no patient ids"),
    _F("patient_csv", "data.patient_csv", Path,
       "CSV mapping files to patients (e.g. ieee8023 metadata.csv); overrides --group-pattern", unset="none"),
    _F("file_column", "data.file_column", str, "CSV column with the file name or path relative to DATA"),
    _F("patient_column", "data.patient_column", str, "CSV column with the patient id"),
    _F("seed", "train.seed", int, "seed of the splits carved when DATA lacks val/ or test/ (as `cxr train`)"),
    _CACHE_DIR,
    *LABEL_FILE,
)  # fmt: skip
"""`cxr audit`: the data settings it shares with `cxr train`."""

EVALUATE: tuple[ConfigFlag, ...] = (_F("device", "train.device", str, "auto | cpu | cuda"), *LABEL_FILE)
"""`cxr evaluate`: the device setting it shares with `cxr train`, and the label-file flags for --data."""

SUMMARY: tuple[ConfigFlag, ...] = (
    _IMAGE_SIZE,
    _F("in_channels", "model.in_channels", int, "input channels, 1 or 3", unset="the model's"),
    _FREEZE,
)
"""`cxr summary`: the model settings it reads from a config (flags override the --config file)."""
