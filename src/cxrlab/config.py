"""One typed config object that describes a run completely and round-trips to YAML.

Sections mirror the pipeline: ``data`` → ``model`` → ``train`` → ``eval``. Every value is a
plain value (nanoGPT style) and can be overridden from the command line with
``--set section.key=value``.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cxrlab.errors import ConfigError


def split_list(text: str, option: str = "list") -> list[str]:
    """``"covid, normal,"`` → ``["covid", "normal"]``: split on commas, strip spaces, drop empties.

    The one parser of comma-separated options (every CLI list option, sweep values, ``data.classes``);
    ``option`` names the flag in the one-line error raised when nothing is left."""
    items = [item.strip() for item in str(text).split(",")]
    items = [item for item in items if item]
    if not items:
        raise ConfigError(f"{option} {text!r}: give at least one name or value, comma-separated, e.g. a,b")
    return items


#: The largest value a float32 holds (3.4e38, rounded down): a learning rate or weight decay above it cannot
#: even reach the optimiser, so it is refused as a config value rather than failing inside torch.
FLOAT32_MAX = 3.4e38
#: Upper bounds of counts on the command line and in configs: far above any real use, small enough that a
#: mistyped 99999999999999999999 is refused in one line instead of overflowing or running for ever.
MAX_EPOCHS = 100_000
MAX_BATCH = 100_000


def check_range(option: str, value: float | None, low: float, high: float, what: str) -> None:
    """One line when a command-line number is not finite or outside ``[low, high]`` (None: not given):
    ``--steps 0: give a number of timed steps from 1 to 100,000``."""
    if value is None:
        return
    finite = isinstance(value, int) or math.isfinite(value)
    if not (finite and low <= value <= high):
        shown = value if isinstance(value, int) else f"{value:g}"
        raise ConfigError(f"{option} {shown}: give {what} from {low:,} to {high:,}")


class _Section(BaseModel):
    # inf/nan are never meaningful config values (a learning rate of inf diverges at once)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class AugmentConfig(_Section):
    """Keras ImageDataGenerator-style augmentation (applied to the training split only)."""

    rotation: float = Field(10.0, description="max rotation in degrees (Keras rotation_range)")
    width_shift: float = Field(0.1, description="max horizontal shift, fraction of width")
    height_shift: float = Field(0.1, description="max vertical shift, fraction of height")
    shear: float = Field(5.0, description="max shear angle in degrees")
    zoom: float = Field(0.1, description="zoom range: scale drawn from [1-zoom, 1+zoom]")
    horizontal_flip: bool = Field(True, description="flip left-right with probability 0.5")
    stretch: float = Field(
        0.0,
        ge=0,
        le=1,
        description="aspect-ratio jitter: one axis scaled by up to 1+s against the other (0: off); "
        "for images squashed to a square from various aspect ratios",
    )
    brightness: float = Field(
        0.0, ge=0, lt=1, description="brightness factor drawn from [1-b, 1+b] (0: off; not in Keras)"
    )
    contrast: float = Field(
        0.0, ge=0, lt=1, description="contrast factor drawn from [1-c, 1+c] (0: off; not in Keras)"
    )


class LabelsConfig(_Section):
    """A label file: one row per image under ``data.path`` (see docs/datasets.md, cxrlab.data.labels).

    Empty fields take the ``format`` preset's value. One ``label_column`` makes a single-label task
    (its values are the classes); a ``findings_column`` split on ``separator``, or several
    ``finding_columns`` coded 1 / 0 / -1 (uncertain) / blank, make a multi-label task."""

    file: str | None = Field(None, description="CSV/TSV label file (optionally .gz); null: folders as usual")
    format: str = Field("generic", description="preset: generic | nih | chexpert | mimic | covid-ieee")
    image_column: str | None = Field(None, description="column with the image path relative to data.path")
    label_column: str | None = Field(None, description="single-label: the column holding the class")
    findings_column: str | None = Field(None, description="multi-label: findings joined by separator")
    separator: str | None = Field(None, description="separator of findings_column, e.g. '|'")
    finding_columns: list[str] | None = Field(None, description="multi-label: one 1/0/-1/blank column each")
    findings: list[str] | None = Field(None, description="subset and order of findings; default: all")
    no_finding: str = Field("No Finding", description="the value/column meaning no finding (not a class)")
    uncertainty: Literal["ignore", "zeros", "ones"] = Field(
        "ignore", description="uncertain (-1) labels: ignore (NaN, masked), zeros or ones"
    )
    blank: Literal["zeros", "ignore"] = Field("zeros", description="blank finding cells: negative, or NaN")
    patient_column: str | None = Field(None, description="column with the patient id (splits group by it)")
    patient_pattern: str | None = Field(None, description="regex on the image path: group 1 = patient")
    split_column: str | None = Field(None, description="column with train/val(id)/test per row")
    view_column: str | None = Field(None, description="column with the view position (PA, AP, lateral…)")
    where: list[str] = Field(default_factory=list, description="row filters COL=VALUE / COL!=VALUE (AND)")
    official_split: bool = Field(True, description="use the release's split lists found beside the file")
    task: Literal["auto", "single", "multilabel"] = Field(
        "auto", description="auto: from the columns; multilabel: classes as findings; single: one finding"
    )

    @field_validator("findings", "finding_columns", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        return split_list(value, "findings") if isinstance(value, str) else value

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        known = ("generic", "nih", "chexpert", "mimic", "covid-ieee")
        if value not in known:
            raise ValueError(f"unknown label-file format {value!r}; known: {', '.join(known)}")
        return value


class DataConfig(_Section):
    """Where the images come from and how they become tensors."""

    path: str | None = Field(None, description="folder (split or class subfolders) or MedMNIST .npz")
    classes: list[str] | None = Field(None, description="subset and order of classes; default: all")
    label_map: dict[str, str] = Field(default_factory=dict, description="rename classes: source → name")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="validation share carved from train")
    val_split: Literal["given", "carve", "auto"] = Field(
        "given",
        description="given: use a given val/ (else carve val_fraction); carve: merge a given val/ into "
        "train and carve val_fraction, stratified and patient-grouped; auto: carve when the given val/ "
        "has fewer than 30 images of some class",
    )
    test_fraction: float = Field(0.2, gt=0, lt=1, description="test share when the data has no test/")
    group_pattern: str | None = Field(
        r"(person\d+)[_-]", description="regex on file names whose first group is a patient id"
    )
    patient_csv: str | None = Field(None, description="CSV of patient ids per file; overrides group_pattern")
    patient_column: str = Field("patientid", description="patient_csv column holding the patient id")
    file_column: str = Field("filename", description="patient_csv column: file name or path under data.path")
    dicom_patient_ids: Literal["hashed", "raw"] = Field(
        "hashed", description="DICOM Patient IDs as groups: salted hashes (default) or raw ids in outputs"
    )
    image_size: int | None = Field(None, ge=8, le=1024, description="input size; default: the model's")
    resize: Literal["squash", "pad", "crop"] = Field(
        "squash", description="squash (like Keras), pad to square, or centre-crop to square"
    )
    augment: bool = Field(False, description="random affine + flip on the training split")
    augmentation: AugmentConfig = Field(default_factory=AugmentConfig)
    cache_dir: str | None = Field(None, description="decoded-image cache; default $CXRLAB_CACHE_DIR")
    extra_train: str | None = Field(None, description="folder of extra (e.g. synthetic) training images")
    max_per_class: int | None = Field(None, ge=1, description="cap images per class and split (quick runs)")
    labels: LabelsConfig = Field(default_factory=LabelsConfig, description="label file (CSV/TSV) settings")

    @field_validator("classes", mode="before")
    @classmethod
    def _split_classes(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [c.strip() for c in value.split(",") if c.strip()]
        return value


class HeadConfig(_Section):
    """The classification head put on top of a backbone's feature map."""

    pooling: Literal["avg", "max", "flatten"] = "avg"
    batch_norm: bool = Field(False, description="batch norm on the feature map before pooling")
    hidden: list[int] | None = Field(None, description="widths of dense layers before output; null: model's")
    activation: Literal["relu", "leaky_relu"] = "relu"
    leaky_slope: float = 0.01
    dropout: float | list[float] = Field(0.2, description="dropout before each dense layer, in [0, 1)")
    l2: float = Field(0.0, ge=0, description="L2 penalty (sum of squares × l2) on the head's weights")
    l2_layers: list[Literal["hidden", "output", "conv"]] = Field(
        ["hidden", "output"],
        description="where l2 applies: hidden dense layers, the output layer, the backbone's convolutions",
    )
    dense_batch_norm: bool = Field(False, description="batch norm after each hidden dense layer")
    output: Literal["softmax", "sigmoid"] = Field(
        "softmax", description="softmax over classes, or one sigmoid logit (binary tasks only)"
    )

    @field_validator("hidden")
    @classmethod
    def _hidden_widths(cls, value: list[int] | None) -> list[int] | None:
        for width in value or []:
            if width < 1:
                raise ValueError(f"hidden layer widths must be at least 1, got {width}")
        return value

    @field_validator("dropout")
    @classmethod
    def _dropout_range(cls, value: float | list[float]) -> float | list[float]:
        for v in value if isinstance(value, list) else [value]:
            if not 0 <= v < 1:
                raise ValueError(f"dropout must be in [0, 1), got {v}")
        return value


class ModelConfig(_Section):
    """Which network, with which weights, and what is trained."""

    name: str = Field("mobilenet_v2", description="a name from `cxr models`")
    pretrained: bool = Field(False, description="start from torchvision ImageNet weights")
    freeze: str = Field(
        "none", description="none | backbone | N (first N layers) | blocks:K (first K backbone blocks)"
    )
    in_channels: int | None = Field(None, ge=1, le=4096, description="1 or 3; default: the model's")
    width: float = Field(1.0, gt=0, description="width multiplier for the small CNNs")
    conv_dropout: float = Field(0.0, ge=0, lt=1, description="dropout after each conv block (small CNNs)")
    conv_batch_norm: bool = Field(True, description="batch norm in each conv block (small CNNs)")
    conv_batch_norm_axis: Literal["channels", "rows"] = Field(
        "channels", description="cnn5: batch norm per channel, or per image row (report 003, Keras axis=1)"
    )
    head: HeadConfig = Field(default_factory=HeadConfig)

    @field_validator("freeze", mode="before")
    @classmethod
    def _freeze_text(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return "backbone" if value else "none"
        if isinstance(value, int):
            return str(value)
        if (
            isinstance(value, str)
            and value not in ("none", "backbone")
            and not value.isdigit()
            and not re.fullmatch(r"blocks:\d+", value)
        ):
            raise ValueError("must be 'none', 'backbone', a number of layers N or blocks:K (first K blocks)")
        return value


class TrainConfig(_Section):
    """The optimisation loop."""

    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, description="SGD only")
    epochs: int = Field(20, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(32, ge=1, le=MAX_BATCH)
    early_stopping: int | None = Field(5, ge=1, description="patience in epochs; null turns it off")
    monitor: Literal["val_loss", "val_acc", "val_auc"] = Field(
        "val_loss", description="early stopping / best epoch: val_loss, val_acc or val_auc (macro)"
    )
    class_weights: bool = Field(False, description="weight the loss by inverse class frequency")
    scheduler: Literal["none", "cosine"] = Field(
        "none", description="learning-rate schedule per step: none (constant) or cosine decay to 0"
    )
    warmup_epochs: float = Field(0.0, ge=0, description="linear learning-rate warm-up from 0, in epochs")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of single-label targets")
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="EMA of the weights (per step) used for validation and the saved "
        "model, e.g. 0.99; null: off",
    )
    pos_weight: str | list[float] = Field(
        "none", description="multi-label BCE pos_weight per finding: none | balanced (neg/pos) | [list]"
    )
    seed: int = Field(0, ge=0, lt=2**32, description="random seed, 0 ≤ seed < 2**32")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    devices: str = Field("auto", description="number of devices (Lightning --devices)")
    num_nodes: int = Field(1, ge=1, le=10_000)
    strategy: str = Field("auto", description="Lightning strategy, e.g. ddp")
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = Field(
        "auto",
        description="training precision: auto = bf16-mixed on a CPU with native bf16 or a GPU (16-mixed "
        "without bf16), else 32; inference follows eval.precision, not this",
    )
    restore: Literal["best", "last"] = Field(
        "best",
        description="the weights evaluated and saved after training: best = the epoch best by train.monitor "
        "on validation (checkpoints/best.ckpt); last = the final epoch's (what Keras keeps without a "
        "checkpoint callback)",
    )
    fast_path: bool = Field(True, description="frozen backbone + no augmentation → cache features")
    num_workers: int = Field(0, ge=0)
    tensorboard: bool = True

    @field_validator("precision", mode="before")
    @classmethod
    def _yaml_number_is_text(cls, value: object) -> object:
        # `precision: 32` in YAML (or --set train.precision=32) reads as the number 32
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("lr", "weight_decay", "momentum")
    @classmethod
    def _float32(cls, value: float) -> float:
        if value > FLOAT32_MAX:
            raise ValueError(f"must be at most {FLOAT32_MAX:g} (the largest float32)")
        return value

    @field_validator("devices", mode="before")
    @classmethod
    def _devices(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # `devices: 2` in YAML
        if isinstance(value, str) and value != "auto":
            if not (value.strip().isdigit() and 1 <= int(value) <= 1024):
                raise ValueError("must be 'auto' or a number of devices from 1 to 1024")
            value = value.strip()
        return value

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, value: str) -> str:
        if value.lower() == "auto":
            return value
        from lightning.pytorch.strategies import StrategyRegistry  # only for a named strategy

        known = StrategyRegistry.available_strategies()
        if value.lower() not in known:
            raise ValueError(f"unknown Lightning strategy; choose auto, {', '.join(known)}")
        return value

    @field_validator("pos_weight")
    @classmethod
    def _pos_weight(cls, value: str | list[float]) -> str | list[float]:
        if isinstance(value, str) and value not in ("none", "balanced"):
            raise ValueError("must be 'none', 'balanced' or a list of numbers (one per finding)")
        if isinstance(value, list) and not all(math.isfinite(v) and v > 0 for v in value):
            raise ValueError("pos_weight values must be finite numbers > 0")
        return value


class EvalConfig(_Section):
    """How the test split is scored."""

    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples for 95% CIs")
    tsne: bool = True
    threshold: Literal["youden", "argmax"] = Field(
        "youden", description="binary operating point chosen on validation data"
    )
    target_sensitivity: float | None = Field(None, gt=0, le=1)
    temperature_scaling: bool = False
    tta_shift: float = Field(
        0.0,
        ge=0,
        le=0.25,
        description="test-time augmentation: average the model over the image and four copies shifted by "
        "this fraction of its side (up, down, left, right; edges repeated), in evaluation, predict, serve "
        "and export alike; 0 = off",
    )
    subgroups: list[str] | None = Field(
        None,
        description="subgroup metrics (cxrlab.evaluation.subgroups): roles (sex, age, view, manufacturer) or "
        "column names of the label file, --patient-csv or DICOM keywords; null: the preset's (sex, age band, "
        "view; DICOM: sex, age band, view, manufacturer); []: none",
    )
    subgroup_min_n: int = Field(
        20,
        ge=1,
        description="a subgroup (or an intersection's cell) with fewer test images is named, not computed",
    )
    explain: Literal["auto", "off"] = Field(
        "auto",
        description="report's Grad-CAM gallery and lung-attention score (auto: when the model has a CAM "
        "layer); off: neither",
    )
    explain_images: int = Field(
        100, ge=1, le=10000, description="lung-attention score: at most this many test images (seeded sample)"
    )
    explain_method: str = Field(
        "gradcam",
        description="CAM method of the report's gallery and lung-attention score: a name of "
        "cxrlab.explain.methods.METHODS, as `cxr explain --method` takes it (gradcam, gradcam++, ...)",
    )
    figure_format: Literal["png", "svg", "pdf"] = Field(
        "png",
        description="file format of the run's plots in plots/ (curves, confusion, ROC, t-SNE, reliability): "
        "png; svg (report.html embeds the SVG); pdf (plus a PNG of each for report.html)",
    )
    figure_dpi: int = Field(
        150, ge=50, le=1200, description="resolution of PNG plots (and of raster parts of svg/pdf), in dpi"
    )
    precision: Literal["32", "bf16-mixed", "16-mixed", "auto"] = Field(
        "32",
        description="inference precision of evaluation, predict, serve, explain, external validation and "
        "reproduce: 32 (fp32 on every machine, the default: the same probabilities as the ONNX export); "
        "bf16-mixed / 16-mixed autocast; auto as train.precision resolves it",
    )

    @field_validator("precision", mode="before")
    @classmethod
    def _yaml_number_is_text(cls, value: object) -> object:
        # `precision: 32` in YAML (or --set eval.precision=32) reads as the number 32
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("explain", mode="before")
    @classmethod
    def _yaml_off_is_off(cls, value: object) -> object:
        # YAML reads a bare `off` / `on` (in a file or in --set) as a boolean
        return {False: "off", True: "auto"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("figure_format", mode="before")
    @classmethod
    def _format_lower(cls, value: object) -> object:
        return value.strip().lower().lstrip(".") if isinstance(value, str) else value


class RunConfig(_Section):
    """A run, completely: ``cxr train --config RUN/config.yaml`` repeats it."""

    task: str | None = Field(None, description="free text shown in reports")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    def to_yaml(self) -> str:
        """Serialise to YAML text (every field, defaults included)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def save(self, path: str | Path) -> None:
        """Write the config as YAML."""
        Path(path).write_text(self.to_yaml(), encoding="utf-8")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> RunConfig:
        """Validate a nested dict; errors name the offending key."""
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, source)) from None

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """Read a YAML config file."""
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.constructor.ConstructorError as exc:
            raise ConfigError(_tag_message(path, exc)) from None
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            where = f" (line {line + 1})" if line is not None else ""
            raise ConfigError(f"{path}: not valid YAML{where}; check indentation and colons") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (data, model, train, eval)")
        return cls.from_dict(raw, source=str(path))

    def override(self, assignments: list[str]) -> RunConfig:
        """Apply ``section.key=value`` strings (values parsed as YAML scalars)."""
        raw = self.model_dump(mode="json")
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
            key, text = item.split("=", 1)
            node = raw
            parts = key.strip().split(".")
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"--set {key}: unknown key {part!r}{_suggest(part, node)}")
                node = node[part]
            if parts[-1] not in node:
                raise ConfigError(f"--set {key}: unknown key {parts[-1]!r}{_suggest(parts[-1], node)}")
            try:
                node[parts[-1]] = yaml.safe_load(text) if text.strip() else None
            except yaml.YAMLError:
                raise ConfigError(
                    f"--set {item!r}: not a plain YAML value (no tags, balanced brackets and quotes)"
                ) from None
        return RunConfig.from_dict(raw, source="--set")


class OperatingPoint(BaseModel):
    """model.json's binary operating point."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    positive_class: str | None = None
    threshold: float | None = Field(None, ge=0, le=1)
    method: str | None = None


class ModelMeta(BaseModel):
    """What ``model.json`` of a run must hold before a network is built from it."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    classes: list[str] = Field(min_length=1)
    image_size: int = Field(ge=8, le=4096)
    channels: int = Field(1, ge=1, le=4096)
    mean: list[float] | None = None
    std: list[float] | None = None
    resize: Literal["squash", "pad", "crop"] = "squash"
    operating_point: OperatingPoint | None = None
    temperature: float = Field(1.0, gt=0)
    input: Literal["images", "codes"] = "images"
    tta_shift_px: int = Field(0, ge=0, le=1024)

    @field_validator("classes")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value) or not all(v.strip() for v in value):
            raise ValueError("class names must be distinct and non-empty")
        return value

    @field_validator("std")
    @classmethod
    def _positive(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and any(v <= 0 for v in value):
            raise ValueError("std must be positive")
        return value


def check_seed_and_lr(seed: int | None = None, lr: float | None = None) -> None:
    """The same bounds as the run config (train.seed, train.lr) for commands outside it
    (`cxr gan`, `cxr autoencoder`): a seed in [0, 2**32) and a finite learning rate > 0."""
    if seed is not None and not 0 <= seed < 2**32:
        raise ConfigError(f"--seed {seed}: give a seed from 0 to 2**32 - 1")
    if lr is not None and not (math.isfinite(lr) and 0 < lr <= FLOAT32_MAX):
        raise ConfigError(
            f"--lr {lr:g}: give a finite learning rate > 0 (at most {FLOAT32_MAX:g}), e.g. 1e-3"
        )


def validate_model_meta(raw: Any, path: str | Path) -> dict[str, Any]:
    """Check a run's ``model.json`` (sizes, channels, classes, threshold) before anything is built
    or allocated from it; returns it unchanged. A damaged or edited file gives one line."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object; the file is damaged, retrain or restore it")
    try:
        meta = ModelMeta.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            _describe(exc, str(path)) + "; the file is damaged or was edited: retrain the run or restore it"
        ) from None
    positive = meta.operating_point.positive_class if meta.operating_point is not None else None
    if positive is not None and positive not in meta.classes:
        raise ConfigError(
            f"{path}: 'operating_point.positive_class' {positive!r} is not a class of the model (its "
            f"classes: {', '.join(meta.classes)}); the file is damaged or was edited: retrain the run or "
            "restore it"
        )
    if meta.input == "codes":
        return raw
    if meta.channels not in (1, 3):
        raise ConfigError(f"{path}: 'channels' must be 1 or 3 (got {meta.channels}); retrain or restore it")
    for key in ("mean", "std"):
        values = getattr(meta, key)
        if values is not None and len(values) != meta.channels:
            raise ConfigError(f"{path}: '{key}' has {len(values)} values for {meta.channels} channel(s)")
    if meta.tta_shift_px > meta.image_size // 4:
        raise ConfigError(
            f"{path}: 'tta_shift_px' {meta.tta_shift_px} is over a quarter of the {meta.image_size}-pixel "
            "image; retrain or restore it"
        )
    return raw


def _tag_message(path: Path, exc: yaml.constructor.ConstructorError) -> str:
    """A YAML tag safe_load refuses (e.g. ``!!python/object/apply``): say so, not "indentation"."""
    problem = str(exc.problem or "")
    match = re.search(r"tag '([^']*)'", problem)
    tag = match.group(1) if match else "?"
    tag = tag.replace("tag:yaml.org,2002:", "!!")
    mark = exc.problem_mark
    where = f" at line {mark.line + 1}" if mark is not None else ""
    return f"{path}: unsafe or unsupported YAML tag '{tag}'{where}: cxrlab configs are plain YAML"


def _suggest(key: str, node: dict[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(node), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(node)})"


def _describe(exc: ValidationError, source: str) -> str:
    """Turn pydantic's report into one line naming the key."""
    err = exc.errors()[0]
    key = ".".join(_printable(str(p)) for p in err["loc"])
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    if err["type"] == "extra_forbidden":
        parent = RunConfig
        for part in err["loc"][:-1]:
            field = parent.model_fields.get(str(part)) if hasattr(parent, "model_fields") else None
            parent = field.annotation if field is not None else None
        known = list(parent.model_fields) if parent is not None and hasattr(parent, "model_fields") else []
        close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
        hint = (
            f"; did you mean {close[0]!r}?"
            if close
            else (f"; known keys: {', '.join(known)}" if known else "")
        )
        return f"{source}: unknown key '{key}'{hint}{more}"
    value = err.get("input")
    shown = f" (got {value!r})" if not isinstance(value, dict | list) else ""
    return f"{source}: '{key}': {_printable(err['msg'])}{shown}{more}"


def _printable(text: str) -> str:
    """Text as it can stand in a one-line message: control characters (a key holding a newline) escaped."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
