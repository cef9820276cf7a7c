"""``train(cfg, out)``: data → model → Lightning fit → evaluation → run folder."""

from __future__ import annotations

import io
import logging
import os
import random
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
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
from cxrlab.data.index import codes_meta
from cxrlab.data.prepare import ImageArrayDataset, PreparedData, prepare_data
from cxrlab.errors import CxrError, ModelError
from cxrlab.models import (
    ModelSpec,
    build_model,
    get_spec,
    load_torchvision_weights,
    resolve_channels,
)
from cxrlab.models.heads import Classifier
from cxrlab.runs import (
    LOCK,
    MARKER,
    RUN_ENTRIES,
    RunLock,
    atomic_write,
    check_out_path,
    check_replaceable,
    check_writable,
    clear_folder,
    disk_full,
    read_csv,
    run_lock,
    settle_stale,
    write_csv,
    write_marker,
    write_status,
)
from cxrlab.training.features import backbone_features, fast_path_applies
from cxrlab.training.module import ClassifierModule
from cxrlab.training.runtime import resolve_device, resolve_precision

HISTORY_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]


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


def quiet_lightning() -> None:
    """Keep Lightning's banner lines (GPU available…, tips) out of the user's terminal."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")
    warnings.filterwarnings("ignore", message=".*The number of training batches.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    # frozen layers are put in eval mode on purpose: their batch-norm statistics must not drift
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    # --resume continues in a run folder whose checkpoints/ and logs/ exist by design
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")


class HistoryCallback(L.Callback):
    """Appends one row per epoch to history.csv (rewritten atomically each epoch)."""

    def __init__(self, path: Path, rows: list[dict[str, Any]] | None = None):
        self.path = path
        self.rows = rows or []
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
        for key in HISTORY_FIELDS[1:-1]:
            if key in m:
                row[key] = round(float(m[key]), 6)
        self.rows = [r for r in self.rows if int(r["epoch"]) < row["epoch"]] + [row]
        write_csv(self.path, self.rows, HISTORY_FIELDS)


class DiskFull(CxrError):
    """No space left on the device holding the run folder."""


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (status interrupted, run resumable) but exiting with 143."""


def prepare_out(
    out: Path, resume: bool, overwrite: bool, protect: tuple[str | Path, ...] = ()
) -> tuple[RunLock, bool]:
    """Make ``out`` ready for this run and take its lock; return the lock and whether ``out`` was created.

    An existing run is replaced only with ``overwrite``, and only when cxrlab wrote it (its marker) and it
    holds nothing else (:func:`cxrlab.runs.check_replaceable`); a second process writing the same folder
    stops at once (:class:`cxrlab.runs.RunInUse`). Nothing is changed when this fails.
    """
    check_out_path(out, "--resume" if resume else "--out")
    if resume:
        if not (out / "config.yaml").is_file():
            raise CxrError(f"--resume {out}: not a run folder (no config.yaml)")
        return run_lock(out), False
    created = not out.exists()
    lock = run_lock(out) if (out / LOCK).is_file() else None
    try:
        if out.is_dir() and any(p.name != LOCK for p in out.iterdir()):
            if not overwrite:
                raise CxrError(
                    f"{out} already exists and is not empty; choose another --out, add --overwrite, "
                    f"or continue it with --resume {out}"
                )
            check_replaceable(out, "train", RUN_ENTRIES, "a training run folder", protect)
            lock = lock or run_lock(out)
            clear_folder(out, RUN_ENTRIES)
        check_writable(out)
        lock = lock or run_lock(out)
        write_marker(out, "train")
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return lock, created


@contextmanager
def _sigterm_as_interrupt(state: dict[str, Any]) -> Iterator[None]:
    """SIGTERM raises like Ctrl-C for the duration (main thread only; the old handler is restored);
    ``state["signal"]`` records it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame) -> None:
        state["signal"] = signum
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _discard(out: Path, created: bool) -> None:
    """Remove what this command wrote into ``out`` (the folder itself when this command created it)."""
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    try:
        clear_folder(out, RUN_ENTRIES)
        (out / MARKER).unlink(missing_ok=True)
        (out / LOCK).unlink(missing_ok=True)
    except OSError:
        pass


def _error_text(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, CxrError) else f"{exc.__class__.__name__}: {exc}"


def _ended(
    exc: BaseException, out: Path, resume: bool, created: bool, state: dict[str, Any]
) -> BaseException:
    """Record truthfully how the run ended (status.json, or the half-made folder removed) and return the
    exception to raise: a one-line :class:`CxrError` where there is one."""
    term = isinstance(exc, _Terminated) or state.get("signal") == signal.SIGTERM
    word, code = ("terminated (SIGTERM)", 143) if term else ("interrupted", 130)
    if isinstance(exc, TrainingInterrupted):  # Lightning stopped fit; status.json is written
        if term:
            exc = TrainingInterrupted(str(exc).replace("interrupted", word, 1))
            exc.exit_code = code
        return exc
    if isinstance(exc, KeyboardInterrupt):
        if state["evaluating"]:
            # after training, while evaluating: the checkpoints are complete, only the scoring is not
            write_status(out, "interrupted", stage="evaluation")
            msg = (
                f"{word} during evaluation; training had finished and {out}/checkpoints is kept: "
                f"finish it with `cxr train --resume {out}`"
            )
        elif state["fitting"]:
            write_status(out, "interrupted", stage="training")
            msg = f"{word}; the run folder {out} is kept: continue with `cxr train --resume {out}`"
        elif resume:
            write_status(out, "interrupted", stage=state["stage"])
            msg = f"{word} before training resumed; continue later with `cxr train --resume {out}`"
        else:
            _discard(out, created)
            where = "while decoding images" if state["stage"] == "decoding" else "before training started"
            msg = f"{word} {where}; nothing was trained, {out} removed"
        err = TrainingInterrupted(msg)
        err.exit_code = code
        return err
    full = disk_full(exc)
    if full is not None:
        path = full.filename or out
        if not resume and not state["fitting"]:
            _discard(out, created)
            return DiskFull(
                f"no space left on device while writing {path}; nothing was trained and {out} was removed: "
                "free space and run again"
            )
        msg = (
            f"no space left on device while writing {path}; "
            f"free space and resume with `cxr train --resume {out}`"
        )
        write_status(out, "failed", error=msg)
        return DiskFull(msg)
    if not resume and not state["fitting"]:
        _discard(out, created)
    else:
        write_status(out, "failed", error=_error_text(exc))
    return exc


def train(
    cfg: RunConfig,
    out: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: list[L.Callback] | None = None,
    protect: tuple[str | Path, ...] = (),
) -> dict[str, Any]:
    """Train and evaluate a run described by ``cfg``; return metrics.json's content.

    ``callbacks`` are extra Lightning callbacks (e.g. a sweep's pruning callback); ``protect``: more input
    paths (the config file) that ``overwrite`` must never delete, besides the data folders. Under DDP
    every process runs this function; only global rank 0 writes the run folder and evaluates,
    the other ranks return ``{}``.

    The run folder is locked for the whole command. A run that fails or is interrupted before its first
    epoch removes what it wrote (nothing half-made is left behind); a run that fails or is interrupted
    later keeps its folder, with ``status.json`` saying what happened, so it can be inspected or resumed.
    SIGTERM is handled like Ctrl-C (exit 143); a full disk ends in one line.
    """
    out = Path(out)
    state: dict[str, Any] = {"stage": "starting", "fitting": False, "evaluating": False}
    if launched_rank() != 0:  # a DDP worker: rank 0 owns the run folder
        return _train(cfg, out, resume, progress, state, list(callbacks or []))
    inputs = tuple(protect) + ((cfg.data.path, cfg.data.extra_train) if cfg is not None else ())
    lock, created = prepare_out(out, resume, overwrite, tuple(p for p in inputs if p))
    try:
        with _sigterm_as_interrupt(state):
            try:
                return _train(cfg, out, resume, progress, state, list(callbacks or []))
            except BaseException as exc:
                final = _ended(exc, out, resume, created, state)
                if final is exc:
                    raise
                raise final from None
    finally:
        lock.release()


def _train(
    cfg: RunConfig,
    out: Path,
    resume: bool,
    progress: bool,
    state: dict[str, bool],
    callbacks: list[L.Callback],
) -> dict[str, Any]:
    from cxrlab.evaluation.evaluate import evaluate_trained

    quiet_lightning()
    t0 = time.perf_counter()
    zero = launched_rank() == 0
    if resume:
        cfg = RunConfig.load(out / "config.yaml")
        if not (out / "checkpoints" / "last.ckpt").is_file():
            raise CxrError(
                f"--resume {out}: no checkpoints/last.ckpt yet (interrupted before the first epoch); "
                "start the run again"
            )
        stale = settle_stale(out) if zero else None
        if stale:
            print(f"warning: {out} was interrupted ({stale}); resuming it", file=sys.stderr)
    spec = get_spec(cfg.model.name)
    if cfg.model.pretrained and spec.weights and spec.family == "torchvision":
        load_torchvision_weights(spec.weights)  # fail in seconds, before decoding any image
    if cfg.model.pretrained and spec.family == "timm":
        from cxrlab.models.timm_models import ensure_timm_weights

        ensure_timm_weights(spec.name)
    _codes_input(cfg, spec)  # autoencoder codes as --data: input size and channels come from them
    if cfg.data.image_size is None:
        cfg.data.image_size = spec.input_size
    device = resolve_device(cfg.train.device)
    if device == "cuda" and not torch.cuda.is_available():
        raise CxrError("--device cuda but no CUDA GPU is visible; use --device cpu or auto")
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    if not resume and zero:
        atomic_write(out / "config.yaml", cfg.to_yaml())
    if zero:
        write_status(out, "running", **({"resumed": True} if resume else {}))

    state["stage"] = "decoding"
    data = prepare_data(cfg.data, cfg.data.image_size, cfg.train.seed, progress=progress)
    state["stage"] = "preparing"
    if zero:
        _write_splits(out, data)
    model = build_model(cfg.model, len(data.classes), cfg.data.image_size)
    channels = resolve_channels(spec, cfg.model)
    timing = {"decode_s": round(data.decode_s, 3)}

    features = None
    t_feat = time.perf_counter()
    if data.codes is not None:  # autoencoder codes: the whole model trains on them, no pixels involved
        net: torch.nn.Module = model
        loaders = _code_loaders(cfg, data, channels, timing)
    elif fast_path_applies(cfg):
        cache = ImageCache(cfg.data.cache_dir)
        features = {
            split: backbone_features(
                model,
                data.images[split],
                data.keys[split],
                cfg,
                spec,
                channels,
                device,
                cache,
                label=f"features ({split})" if progress else None,
            )
            for split in data.images
        }
        net = model.head
        loaders = {
            split: _loader(
                TensorDataset(torch.from_numpy(features[split]), torch.from_numpy(data.labels[split])),
                cfg,
                shuffle=split == "train",
            )
            for split in ("train", "val")
        }
    else:
        net = model
        loaders = {}
        for split in ("train", "val"):
            ds = ImageArrayDataset(
                data.images[split],
                data.labels[split],
                channels,
                spec.mean,
                spec.std,
                cfg.data.augmentation if cfg.data.augment and split == "train" else None,
            )
            loaders[split] = _loader(ds, cfg, shuffle=split == "train")
    timing["features_s"] = round(time.perf_counter() - t_feat, 3)

    weights = _class_weights(data.labels["train"], len(data.classes)) if cfg.train.class_weights else None
    l2_modules = model.l2_modules(cfg.model.head.l2_layers)
    module = ClassifierModule(net, cfg.train, len(data.classes), weights, cfg.model.head.l2, l2_modules)

    t_train = time.perf_counter()
    history_rows = read_csv(out / "history.csv") if resume else []
    if cfg.train.tensorboard and "train" in data.images:
        from cxrlab.training.tensorboard import TensorBoardExtras

        callbacks.append(TensorBoardExtras(data.images["train"], data.labels["train"], data.classes))
    trainer = _trainer(
        cfg, out, device, progress, HistoryCallback(out / "history.csv", history_rows), callbacks
    )
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
        return {}

    # The best epoch's weights, from this run folder (a path stored in the checkpoint could point to
    # where the folder was before it was moved); loaded without unpickling code (load_checkpoint).
    best = out / "checkpoints" / "best.ckpt"
    if best.is_file():
        module.load_state_dict(load_checkpoint(best)["state_dict"])
    model.to("cpu")
    trained = Trained(model, data, spec, channels, device, features, timing)
    state["evaluating"], state["stage"] = True, "evaluating"
    metrics = evaluate_trained(cfg, out, trained, t0, progress=progress)
    write_status(out, "finished", epochs_done=trainer.current_epoch)
    return metrics


def _codes_input(cfg: RunConfig, spec: ModelSpec) -> None:
    """Codes from `cxr autoencoder encode` set the input size and channels; code models need codes."""
    meta = codes_meta(cfg.data.path)
    if meta is not None:
        channels, size, _ = meta["shape"]
        if size < 8:
            raise CxrError(f"codes of {size}x{size} are too small to train on (need 8x8); use less --depth")
        cfg.data.image_size = cfg.data.image_size or size
        cfg.model.in_channels = cfg.model.in_channels or channels
    elif spec.family == "codes" and cfg.data.path:
        raise CxrError(
            f"model {spec.name} trains on autoencoder codes, not images: encode the data first with "
            "`cxr autoencoder encode AE --data DATA --out CODES`, then pass --data CODES"
        )


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


def _loader(ds, cfg: RunConfig, shuffle: bool) -> DataLoader:
    generator = torch.Generator().manual_seed(cfg.train.seed)
    return DataLoader(
        ds,
        batch_size=cfg.train.batch_size,
        sampler=EpochShuffle(ds, cfg.train.seed) if shuffle else None,
        num_workers=cfg.train.num_workers,
        generator=generator,
        persistent_workers=cfg.train.num_workers > 0,
    )


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
    if cfg.train.early_stopping:
        callbacks.append(EarlyStopping(cfg.train.monitor, patience=cfg.train.early_stopping, mode=mode))
    loggers: list[Any] = [CSVLogger(out, name="logs", version="")]
    if cfg.train.tensorboard:
        loggers.append(TensorBoardLogger(out, name="tensorboard", version="", default_hp_metric=False))
    devices: Any = cfg.train.devices if cfg.train.devices == "auto" else int(cfg.train.devices)
    os.environ.setdefault("PL_DISABLE_FORK", "0")
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
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        default_root_dir=out,
        plugins=[AtomicCheckpointIO()],
    )


def _write_splits(out: Path, data: PreparedData) -> None:
    rows = [
        {
            "split": s.split,
            "class": data.classes[s.label],
            "path": s.path,
            "group": s.group,
            "synthetic": int(s.synthetic),
        }
        for s in data.index.samples
    ]
    write_csv(out / "splits.csv", rows, ["split", "class", "path", "group", "synthetic"])
