"""Fitting: model, loaders and the Lightning loop (checkpoints, history, exact resume) for prepared data.

The run as a whole (run folder, data, fit, evaluation, report, audit) is :mod:`cxrlab.pipeline.train`.
"""

from __future__ import annotations

import io
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from cxrlab.config import RunConfig
from cxrlab.data.cache import ImageCache
from cxrlab.data.prepare import ImageArrayDataset, PreparedData
from cxrlab.errors import CxrError, ModelError
from cxrlab.models import (
    ModelSpec,
    build_model,
    resolve_channels,
)
from cxrlab.models.heads import Classifier
from cxrlab.models.split import frozen_prefix, split_model
from cxrlab.runs import (
    atomic_write,
    read_csv,
    write_csv,
    write_status,
)
from cxrlab.runtime import inference_dtype, resolve_precision
from cxrlab.training.features import (
    activation_path_note,
    backbone_features,
    fast_path_applies,
    partial_freeze,
    prefix_activations,
)
from cxrlab.training.module import ClassifierModule
from cxrlab.training.progress import progress_bar

HISTORY_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
#: with val_auc (multi-label runs, or train.monitor: val_auc)
HISTORY_FIELDS_AUC = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "lr", "seconds"]


class TrainingInterrupted(CxrError):
    """Ctrl-C during training: the run folder is kept and can be resumed."""

    exit_code = 130


@dataclass
class Trained:
    """What training hands to evaluation."""

    model: Classifier
    data: PreparedData
    spec: ModelSpec
    channels: int
    device: str
    features: dict[str, np.ndarray] | None  # fast path: backbone features per split
    timing: dict[str, float]
    epochs_done: int = 0
    pos_weight: list[float] | None = None  # multi-label: the BCE pos_weight used, per finding
    #: partial freeze on cached activations: the trained suffix + head (``features`` are then the prefix's
    #: cached activations per split)
    suffix: torch.nn.Module | None = None
    training_path: str = ""  # what ran, in words (metrics.json, report)


class HistoryCallback(L.Callback):
    """Appends one row per epoch to history.csv (rewritten atomically each epoch)."""

    def __init__(self, path: Path, rows: list[dict[str, Any]] | None = None, auc: bool = False):
        self.path = path
        self.rows = rows or []
        self.fields = HISTORY_FIELDS_AUC if auc else HISTORY_FIELDS
        self._start = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # noqa: D102
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: D102
        if not trainer.is_global_zero:  # DDP: one writer
            return
        m = trainer.callback_metrics
        row: dict[str, Any] = {
            "epoch": trainer.current_epoch + 1,
            "seconds": round(time.perf_counter() - self._start, 4),
        }
        for key in self.fields[1:-1]:
            if key in m:
                row[key] = round(float(m[key]), 6)
        self.rows = [r for r in self.rows if int(r["epoch"]) < row["epoch"]] + [row]
        write_csv(self.path, self.rows, self.fields)


def fit(
    cfg: RunConfig,
    out: Path,
    data: PreparedData,
    spec: ModelSpec,
    device: str,
    resume: bool,
    progress: bool,
    state: dict[str, Any],
    callbacks: list[L.Callback],
) -> Trained | None:
    """Build the model and fit it with Lightning into ``out`` (checkpoints, history.csv, logs); return the
    model ``train.restore`` names (the best epoch's or the last) for evaluation, or ``None`` in a DDP worker
    (rank 0 evaluates).

    ``state["fitting"]`` turns true when the first epoch starts (a failure after that keeps the folder)."""
    if data.multilabel and cfg.model.head.output == "sigmoid":
        raise CxrError(
            "model.head.output=sigmoid is for binary tasks; a multi-label run has one sigmoid "
            "output per finding already: leave model.head.output at softmax"
        )
    if data.codes is not None and cfg.eval.tta_shift:
        raise CxrError(
            "eval.tta_shift shifts images; a run on autoencoder codes has none: set eval.tta_shift=0"
        )
    model = build_model(cfg.model, len(data.classes), cfg.data.image_size)
    channels = resolve_channels(spec, cfg.model)
    timing = {"decode_s": round(data.decode_s, 3)}

    features = None
    suffix: torch.nn.Module | None = None
    t_feat = time.perf_counter()
    k = frozen_prefix(model) if partial_freeze(cfg) and data.codes is None else 0
    note = activation_path_note(cfg, k) if data.codes is None else None
    path_text = "full training"
    if note:
        print(f"note: {note}", file=sys.stderr)
        path_text = f"full training ({note})"
    if data.codes is not None:  # autoencoder codes: the whole model trains on them, no pixels involved
        net: torch.nn.Module = model
        loaders = _code_loaders(cfg, data, channels, timing)
    elif fast_path_applies(cfg):
        cache = ImageCache(cfg.data.cache_dir)

        def compute(images, keys, label, precision=None):
            return backbone_features(
                model, images, keys, cfg, spec, channels, device, cache, label=label, precision=precision
            )

        features = _per_split(compute, data, "features" if progress else None)
        net = model.head
        path_text = "frozen-feature fast path"
        loaders = _tensor_loaders(features, data, cfg)
    elif k and note is None:  # partial freeze: the frozen prefix runs once, the suffix trains on its output
        prefix, suffix = split_model(model, k)
        cache = ImageCache(cfg.data.cache_dir)

        def compute(images, keys, label, precision=None):
            return prefix_activations(
                prefix, k, images, keys, cfg, spec, channels, device, cache, label=label, precision=precision
            )

        features = _per_split(compute, data, "prefix activations" if progress else None)
        net = suffix
        path_text = f"partial fine-tuning on cached activations (prefix: {k} frozen blocks, run once)"
        loaders = _tensor_loaders(features, data, cfg)
    else:
        net = model
        loaders = {}
        for split in ("train", "val"):
            ds = ImageArrayDataset(
                data.images[split],
                data.y(split),
                channels,
                spec.mean,
                spec.std,
                cfg.data.augmentation if cfg.data.augment and split == "train" else None,
            )
            loaders[split] = _loader(ds, cfg, shuffle=split == "train")
    timing["features_s"] = round(time.perf_counter() - t_feat, 3)

    weights = (
        _class_weights(data.labels["train"], len(data.classes))
        if cfg.train.class_weights and not data.multilabel
        else None
    )
    pos_weight = positive_weights(cfg.train.pos_weight, data) if data.multilabel else None
    l2_modules = model.l2_modules(cfg.model.head.l2_layers)
    module = ClassifierModule(
        net, cfg.train, len(data.classes), weights, cfg.model.head.l2, l2_modules,
        multilabel=data.multilabel, pos_weight=pos_weight,
    )  # fmt: skip

    t_train = time.perf_counter()
    history_rows = read_csv(out / "history.csv") if resume else []
    if cfg.train.tensorboard and "train" in data.images:
        from cxrlab.training.tensorboard import TensorBoardExtras

        labels = data.targets["train"] if data.multilabel else data.labels["train"]
        extras = TensorBoardExtras(data.images["train"], labels, data.classes, multilabel=data.multilabel)
        callbacks.append(extras)
    history = HistoryCallback(out / "history.csv", history_rows, auc=module.track_auc)
    trainer = _trainer(cfg, out, device, progress, history, callbacks)
    ckpt = out / "checkpoints" / "last.ckpt"
    if resume:
        load_checkpoint(ckpt)  # a damaged or tampered checkpoint is refused in one line, never executed
    state["fitting"], state["stage"] = True, "training"
    try:
        trainer.fit(
            module,
            loaders["train"],
            loaders["val"],
            ckpt_path=str(ckpt) if resume else None,
            weights_only=True,
        )
    except SystemExit:
        if trainer.interrupted:
            write_status(out, "interrupted", epochs_done=trainer.current_epoch)
            raise TrainingInterrupted(
                f"interrupted after {trainer.current_epoch} epoch(s); the run folder {out} is kept: "
                f"continue with `cxr train --resume {out}`"
            ) from None
        raise
    timing["train_s"] = round(time.perf_counter() - t_train, 3)
    if not trainer.is_global_zero:  # DDP worker: rank 0 evaluates and writes the run folder
        return None

    # train.restore: best → the best epoch's weights, from this run folder (a path stored in the checkpoint
    # could point to where the folder was before it was moved), loaded without unpickling code
    # (load_checkpoint); last → the weights as training left them (the final epoch's, EMA-averaged when
    # train.ema_decay is set), as Keras keeps them without a checkpoint callback.
    best = out / "checkpoints" / "best.ckpt"
    if cfg.train.restore == "best" and best.is_file():
        module.load_state_dict(load_checkpoint(best)["state_dict"])
    if features is not None and inference_dtype(cfg.train.precision, device) != inference_dtype(
        cfg.eval.precision, device
    ):
        # the cached inputs were computed at the training precision; evaluation scores the validation and
        # test images at eval.precision, as `cxr predict` does (runtime.inference_dtype)
        t_eval_inputs = time.perf_counter()
        for split in ("val", "test"):
            if split in data.images:
                features[split] = compute(data.images[split], data.keys[split], None, cfg.eval.precision)
        timing["eval_inputs_s"] = round(time.perf_counter() - t_eval_inputs, 3)
    model.to("cpu")
    used = [round(float(v), 4) for v in pos_weight] if pos_weight is not None else None
    return Trained(
        model, data, spec, channels, device, features, timing, trainer.current_epoch, used, suffix, path_text
    )


def _per_split(compute, data: PreparedData, label: str | None) -> dict[str, np.ndarray]:
    """``compute(images, keys, label)`` for every split (cached backbone features or prefix activations)."""
    return {
        split: compute(data.images[split], data.keys[split], f"{label} ({split})" if label else None)
        for split in data.images
    }


def _tensor_loaders(features: dict[str, np.ndarray], data: PreparedData, cfg: RunConfig) -> dict:
    """Train/val loaders over precomputed tensors (features or activations) and the targets."""
    return {
        split: _loader(
            TensorDataset(torch.from_numpy(features[split]), torch.from_numpy(data.y(split))),
            cfg,
            shuffle=split == "train",
        )
        for split in ("train", "val")
    }


def _code_loaders(
    cfg: RunConfig, data: PreparedData, channels: int, timing: dict[str, float]
) -> dict[str, DataLoader]:
    """Loaders over autoencoder codes; the codes' encode time is recorded apart from training time."""
    assert data.codes is not None and data.codes_meta is not None
    shape = tuple(data.codes["train"].shape[1:])
    size = cfg.data.image_size
    if shape != (channels, size, size):
        raise CxrError(
            f"the codes are {'x'.join(map(str, shape))} but the model expects {channels}x{size}x{size}; "
            f"drop --image-size/model.in_channels (they follow the codes) or re-encode"
        )
    timing["encode_s"] = data.codes_meta["encode_s"]
    timing["autoencoder_train_s"] = data.codes_meta.get("autoencoder_train_s")
    return {
        split: _loader(
            TensorDataset(torch.from_numpy(data.codes[split]), torch.from_numpy(data.labels[split])),
            cfg,
            shuffle=split == "train",
        )
        for split in ("train", "val")
    }


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A Lightning checkpoint read with ``weights_only=True``: a file that is damaged, or that holds
    pickled objects other than tensors and plain values (a tampered file), is refused as ModelError."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelError(
            f"{path} was refused: it holds pickled objects other than tensors and plain values (a checkpoint "
            "from elsewhere or a tampered file); nothing in it was executed. Start the run again"
        ) from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, wrong format...: a damaged file
        raise ModelError(
            f"{path} is damaged or not a checkpoint ({exc.__class__.__name__}); start the run again"
        ) from None


class EpochShuffle(RandomSampler):
    """Shuffle whose order depends only on (seed, epoch), so that `--resume` sees the batches an
    uninterrupted run would see. (A shared torch.Generator would restart from its seed in the resumed
    process.) Lightning calls ``set_epoch`` before each epoch's first batch; under DDP it replaces this
    sampler with a DistributedSampler, which is also seeded by seed + epoch."""

    def __init__(self, data_source, seed: int):
        super().__init__(data_source)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:  # noqa: D102
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=g).tolist()


class EpochSeed(L.Callback):
    """Reseed torch, numpy and random at each epoch start from (seed, epoch): dropout and augmentation
    then draw the same numbers whether or not the run was interrupted and resumed (Lightning
    checkpoints do not hold RNG states). Exact with num_workers=0 (the default); worker processes
    keep their own RNG streams."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # noqa: D102
        s = (self.seed * 1_000_003 + trainer.current_epoch + 1) % 2**32
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)


def drops_last_batch(n: int, batch_size: int) -> bool:
    """True when a training epoch of ``n`` samples would end on a batch of one sample.

    Batch norm cannot take a batch of one (no variance to normalise by: InceptionV3's auxiliary
    classifier, dense batch norm), so the training loader drops that single sample — a different
    one each epoch, as the order is reshuffled — and keeps every other last batch.
    """
    return n > batch_size and n % batch_size == 1


def _loader(ds, cfg: RunConfig, shuffle: bool) -> DataLoader:
    generator = torch.Generator().manual_seed(cfg.train.seed)
    return DataLoader(
        ds,
        batch_size=cfg.train.batch_size,
        drop_last=shuffle and drops_last_batch(len(ds), cfg.train.batch_size),
        sampler=EpochShuffle(ds, cfg.train.seed) if shuffle else None,
        num_workers=cfg.train.num_workers,
        generator=generator,
        persistent_workers=cfg.train.num_workers > 0,
    )


def positive_weights(setting: str | list[float], data: PreparedData) -> torch.Tensor | None:
    """BCE ``pos_weight`` per finding: none, ``balanced`` (negatives / positives among the known training
    targets, 1 where a finding has no positive) or the given list (one number per finding)."""
    findings = data.findings
    if setting == "none":
        return None
    if isinstance(setting, list):
        if len(setting) != len(findings):
            raise CxrError(
                f"train.pos_weight has {len(setting)} value(s) for {len(findings)} finding(s) "
                f"({', '.join(findings)}); give one per finding in that order, or 'balanced'"
            )
        return torch.tensor(setting, dtype=torch.float32)
    t = data.targets["train"]
    pos = np.nansum(t == 1, axis=0).astype(np.float64)
    neg = np.nansum(t == 0, axis=0).astype(np.float64)
    return torch.tensor(np.where(pos > 0, neg / np.maximum(pos, 1), 1.0), dtype=torch.float32)


def _class_weights(labels: np.ndarray, k: int) -> torch.Tensor:
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    return torch.tensor(len(labels) / (k * np.maximum(counts, 1)), dtype=torch.float32)


def launched_rank() -> int:
    """0 for the process that owns the run folder; nonzero for a DDP worker started by a launcher
    (Lightning's, torchrun, SLURM), read from the environment before the Trainer exists."""
    for key in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"):
        value = os.environ.get(key, "")
        if value.isdigit() and int(value) != 0:
            return int(value)
    return 0


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary sibling and renamed: a failed write (full disk, kill) leaves the
    previous complete checkpoint in place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:  # noqa: D102
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        atomic_write(path, buf.getbuffer())


def ema_callback(decay: float) -> L.Callback:
    """Lightning's EMAWeightAveraging (over torch.optim.swa_utils.AveragedModel) on the parameters only; the
    buffers (batch-norm running statistics) are copied from the trained model after every step.

    Averaging the running statistics too (Lightning's default) broke short runs: their average stays
    near the initial mean 0 / variance 1 for hundreds of steps, and on PneumoniaMNIST (37 steps per
    epoch, decay 0.99) the averaged model predicted one class for every validation image for 4+
    epochs, while the same averaged weights with the trained model's statistics scored 0.958."""
    from lightning.pytorch.callbacks import EMAWeightAveraging

    class _EMA(EMAWeightAveraging):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: D102
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            if self._average_model is not None:
                for average, current in zip(
                    self._average_model.module.buffers(), pl_module.buffers(), strict=True
                ):
                    average.data.copy_(current.data)

    return _EMA(decay=decay, use_buffers=False)


def _trainer(
    cfg: RunConfig,
    out: Path,
    device: str,
    progress: bool,
    history: HistoryCallback,
    extra: list[L.Callback] | None = None,
) -> L.Trainer:
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    mode = "min" if cfg.train.monitor == "val_loss" else "max"
    callbacks: list[L.Callback] = [
        ModelCheckpoint(
            dirpath=out / "checkpoints",
            filename="best",
            monitor=cfg.train.monitor,
            mode=mode,
            save_top_k=1,
            # only its weights are read back; last.ckpt carries the optimizer. With an EMA of the weights
            # the full save runs the callback's hook that puts the averaged weights in state_dict.
            save_weights_only=not cfg.train.ema_decay,
            enable_version_counter=False,
        ),
        # last.ckpt after *every* epoch, for --resume. (Lightning's save_last=True only writes it when
        # best.ckpt improved, so a resumed run repeated epochs.) Saved at train-epoch end, after
        # history.csv got the epoch's row, with the early-stopping and best-checkpoint state updated.
        ModelCheckpoint(
            dirpath=out / "checkpoints",
            filename="last",
            save_top_k=1,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        ),
        EpochSeed(cfg.train.seed),
        history,
        *(extra or []),
    ]
    if cfg.train.ema_decay:
        # validation, best.ckpt and the final model use the averaged weights
        callbacks.append(ema_callback(cfg.train.ema_decay))
    if cfg.train.early_stopping:
        callbacks.append(EarlyStopping(cfg.train.monitor, patience=cfg.train.early_stopping, mode=mode))
    loggers: list[Any] = [CSVLogger(out, name="logs", version="")]
    if cfg.train.tensorboard:
        loggers.append(TensorBoardLogger(out, name="tensorboard", version="", default_hp_metric=False))
    devices: Any = cfg.train.devices if cfg.train.devices == "auto" else int(cfg.train.devices)
    os.environ.setdefault("PL_DISABLE_FORK", "0")
    bar, bar_callbacks = progress_bar(progress)  # "Epoch 3/20" on stderr, at a terminal only
    callbacks += bar_callbacks
    return L.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=devices,
        num_nodes=cfg.train.num_nodes,
        strategy=cfg.train.strategy,
        precision=resolve_precision(cfg.train.precision, device),
        max_epochs=cfg.train.epochs,
        callbacks=callbacks,
        logger=loggers,
        deterministic=True,
        enable_progress_bar=bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        default_root_dir=out,
        plugins=[AtomicCheckpointIO()],
    )
