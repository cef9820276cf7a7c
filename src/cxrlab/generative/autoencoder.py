"""Convolutional autoencoder: compress radiographs to codes, then train a classifier on the codes.

The Kermany report's encoder: four convolutions 1→32→64→128→256 (kernel 3, stride 2, padding 1,
batch norm + ReLU each) turn a 224×224 grayscale image into a 256×14×14 code; the decoder
mirrors it with transposed convolutions back to 1×224×224 (sigmoid output), trained with MSE
and Adam. ``latent_channels`` (the last encoder width) and ``depth`` (number of stride-2
layers) are options. Training uses Lightning (train/validation loops, best-checkpoint by
validation loss, device and precision handling).

``train_autoencoder`` writes ``AE/``::

    autoencoder.json         architecture, data, losses, timing (what `encode` needs)
    autoencoder.safetensors  encoder + decoder weights (best validation loss)
    history.csv, loss.png    train / validation reconstruction MSE per epoch
    reconstructions.png      validation originals (top) vs reconstructions (bottom)
    checkpoints/             Lightning checkpoints (best.ckpt, last.ckpt; loaded weights-only)

``encode_dataset`` writes ``CODES/codes.npz`` (format: :data:`cxrlab.data.index.CODES_FILE`) and
``CODES/codes.json``; ``cxr train --data CODES --model code_cnn`` trains on it.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cxrlab.config import MAX_BATCH, MAX_EPOCHS, check_range, check_seed_and_lr
from cxrlab.data.index import CODES_FILE
from cxrlab.errors import ConfigError, CxrError
from cxrlab.figures import image_grid
from cxrlab.generative.common import (
    check_out,
    load_data,
    load_weights,
    loss_plot,
    now,
    prepare_folder,
    read_meta,
    to_uint8,
)
from cxrlab.runs import save_weights, write_csv, write_json
from cxrlab.runtime import batched, resolve_device, resolve_precision
from cxrlab.training.module import TrainingDiverged

META = "autoencoder.json"
WEIGHTS = "autoencoder.safetensors"


class Interrupted(CxrError):
    """Ctrl-C during autoencoder training."""

    exit_code = 130


def encoder_widths(latent_channels: int, depth: int, base: int = 32) -> list[int]:
    """Channel widths of the encoder: base, 2·base, … and ``latent_channels`` last (32-64-128-256)."""
    return [base * 2**i for i in range(depth - 1)] + [latent_channels]


class ConvAutoencoder(nn.Module):
    """Stride-2 conv encoder (BN + ReLU) and a mirrored transposed-conv decoder ending in a sigmoid."""

    def __init__(self, latent_channels: int = 256, depth: int = 4, base: int = 32):
        super().__init__()
        widths = encoder_widths(latent_channels, depth, base)
        enc: list[nn.Module] = []
        cin = 1
        for w in widths:
            enc += [nn.Conv2d(cin, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(True)]
            cin = w
        dec: list[nn.Module] = []
        outs = widths[::-1][1:] + [1]
        for i, (a, b) in enumerate(zip(widths[::-1], outs, strict=True)):
            last = i == len(outs) - 1
            dec.append(nn.ConvTranspose2d(a, b, 3, stride=2, padding=1, output_padding=1, bias=last))
            dec += [nn.Sigmoid()] if last else [nn.BatchNorm2d(b), nn.ReLU(True)]
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class AutoencoderModule(L.LightningModule):
    """MSE reconstruction of uint8 image batches (scaled to [0, 1] on the fly), Adam."""

    def __init__(self, net: ConvAutoencoder, lr: float):
        super().__init__()
        self.net, self.lr = net, lr

    def _loss(self, batch) -> torch.Tensor:
        x = batch[0].float().div(255.0)
        return nn.functional.mse_loss(self.net(x), x)

    def training_step(self, batch, batch_idx):  # noqa: D102
        loss = self._loss(batch)
        if not bool(torch.isfinite(loss.detach())):
            raise TrainingDiverged(
                f"the autoencoder's reconstruction loss became {float(loss):g} at epoch "
                f"{self.current_epoch + 1} (step {self.global_step + 1}); lower --lr (now {self.lr:g}), "
                "e.g. 1e-3"
            )
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch[0]))
        return loss

    def validation_step(self, batch, batch_idx):  # noqa: D102
        self.log("val_loss", self._loss(batch), on_epoch=True, prog_bar=True, batch_size=len(batch[0]))

    def configure_optimizers(self):  # noqa: D102
        return torch.optim.Adam(self.net.parameters(), lr=self.lr)


class LossHistory(L.Callback):
    """history.csv (epoch, train_loss, val_loss, seconds), rewritten atomically after each epoch."""

    def __init__(self, path: Path):
        self.path, self.rows, self._start = path, [], time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # noqa: D102
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: D102
        m = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch + 1, "seconds": round(time.perf_counter() - self._start, 3)}
        row.update({k: round(float(m[k]), 6) for k in ("train_loss", "val_loss") if k in m})
        self.rows.append(row)
        write_csv(self.path, self.rows, ["epoch", "train_loss", "val_loss", "seconds"])


class _Images(Dataset):
    """uint8 images ``(N, H, W)`` (in RAM or a read-only store) → ``((1, H, W) uint8,)`` items, each a copy
    of its row, like a ``TensorDataset`` over them without copying the whole split."""

    def __init__(self, x: np.ndarray):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor]:
        return (torch.from_numpy(np.array(self.x[i])).unsqueeze(0),)


def train_autoencoder(
    data: str,
    out: str | Path,
    *,
    classes: list[str] | None = None,
    image_size: int = 224,
    latent_channels: int = 256,
    depth: int = 4,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    max_per_class: int | None = None,
    cache_dir: str | None = None,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the autoencoder on the training split (validation split for model selection); write ``out``."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from cxrlab.runtime import quiet_lightning

    check_seed_and_lr(seed, lr)
    check_range("--image-size", image_size, 8, 1024, "an input size in pixels")
    check_range("--depth", depth, 1, 8, "a number of stride-2 layers")
    check_range("--latent", latent_channels, 1, 4096, "a number of code channels")
    check_range("--epochs", epochs, 1, MAX_EPOCHS, "a number of epochs")
    check_range("--batch-size", batch_size, 1, MAX_BATCH, "a batch size")
    if image_size % 2**depth:
        raise ConfigError(
            f"--image-size {image_size} is not divisible by 2^depth = {2**depth}; "
            f"use e.g. {max(2**depth, image_size // 2**depth * 2**depth)}"
        )
    dev = resolve_device(device)
    check_out(out, META, overwrite, "an autoencoder folder")
    quiet_lightning()
    t0 = time.perf_counter()
    L.seed_everything(seed, workers=True, verbose=False)
    data_cfg, prepared = load_data(
        data, image_size, seed, classes, max_per_class, cache_dir, progress=progress
    )
    out = prepare_folder(out, META, overwrite, "an autoencoder folder")
    net = ConvAutoencoder(latent_channels, depth)
    code_shape = [latent_channels, image_size // 2**depth, image_size // 2**depth]
    meta: dict[str, Any] = {
        "status": "running",
        "started": now(),
        "latent_channels": latent_channels,
        "depth": depth,
        "widths": encoder_widths(latent_channels, depth),
        "image_size": image_size,
        "code_shape": code_shape,
        "compression": round(image_size**2 / float(np.prod(code_shape)), 4),
        "data": data_cfg.model_dump(mode="json"),
        "classes": prepared.classes,
        "counts": prepared.index.counts(),
        "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "optimizer": "adam"},
    }
    write_json(out / META, meta)
    gen = torch.Generator().manual_seed(seed)
    train_dl = DataLoader(
        _Images(prepared.images["train"]), batch_size=batch_size, shuffle=True, generator=gen
    )
    val_dl = DataLoader(_Images(prepared.images["val"]), batch_size=batch_size)
    module = AutoencoderModule(net, lr)
    history = LossHistory(out / "history.csv")
    ckpt = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="best",
        monitor="val_loss",
        save_last=True,
        enable_version_counter=False,
    )
    from cxrlab.training.progress import progress_bar

    bar, bar_callbacks = progress_bar(progress)  # "Epoch 3/20" on stderr, at a terminal only
    trainer = L.Trainer(
        accelerator="gpu" if dev == "cuda" else "cpu",
        devices=1,
        precision=resolve_precision("auto", dev),
        max_epochs=epochs,
        callbacks=[ckpt, history, *bar_callbacks],
        logger=False,
        deterministic="warn",
        enable_progress_bar=bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=out,
    )
    t_train = time.perf_counter()
    try:
        trainer.fit(module, train_dl, val_dl)
    except TrainingDiverged:
        meta.update(status="failed", epochs_done=len(history.rows))
        write_json(out / META, meta)
        raise
    except SystemExit:  # Lightning's answer to Ctrl-C
        if trainer.interrupted:
            meta.update(status="interrupted", epochs_done=len(history.rows))
            write_json(out / META, meta)
            raise Interrupted(
                f"interrupted after {len(history.rows)} epoch(s); {out} is kept but unusable: train again"
            ) from None
        raise
    train_s = time.perf_counter() - t_train
    if ckpt.best_model_path and Path(ckpt.best_model_path).is_file():
        module.load_state_dict(
            torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        )
    net = module.net.cpu().eval()
    save_weights(out / WEIGHTS, net)

    test_mse = reconstruction_mse(net, prepared.images["test"]) if "test" in prepared.images else None
    loss_plot(history.rows, ["train_loss", "val_loss"], out / "loss.png", "autoencoder reconstruction", "MSE")
    show = prepared.images["val"][:8]
    with torch.no_grad():
        recon = to_uint8(net(torch.from_numpy(show).unsqueeze(1).float().div(255.0)))
    image_grid(
        [show, recon],
        out / "reconstructions.png",
        ["validation originals", "reconstructions"],
        f"autoencoder {image_size}px → {'×'.join(map(str, code_shape))}",
    )
    best = min((r for r in history.rows if "val_loss" in r), key=lambda r: r["val_loss"], default={})
    meta.update(
        status="finished",
        finished=now(),
        epochs_done=len(history.rows),
        best_epoch=best.get("epoch"),
        val_mse=best.get("val_loss"),
        train_mse=history.rows[-1].get("train_loss") if history.rows else None,
        test_mse=test_mse,
        train_s=round(train_s, 3),
        decode_s=round(prepared.decode_s, 3),
        total_s=round(time.perf_counter() - t0, 3),
        device=dev,
    )
    write_json(out / META, meta)
    return meta


def reconstruction_mse(net: ConvAutoencoder, images: np.ndarray, device: str = "cpu") -> float:
    """Mean squared reconstruction error (pixels in [0, 1]) over uint8 images ``(N, H, W)``."""
    net = net.eval().to(device)
    total, n = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(images), 64):
            x = torch.tensor(images[start : start + 64]).unsqueeze(1).float().div(255.0).to(device)
            total += float(((net(x) - x) ** 2).mean(dim=(1, 2, 3)).sum())
            n += len(x)
    return round(total / max(n, 1), 6)


def load_autoencoder(folder: str | Path) -> tuple[ConvAutoencoder, dict[str, Any]]:
    """Rebuild the autoencoder from ``autoencoder.json`` and load its safetensors weights."""
    meta = read_meta(folder, META, "an autoencoder folder", "cxr autoencoder train --data DATA --out AE")
    if meta.get("status") != "finished":
        raise CxrError(f"{folder}: autoencoder training did not finish; train it again")
    net = ConvAutoencoder(meta["latent_channels"], meta["depth"])
    load_weights(Path(folder) / WEIGHTS, net)
    return net.eval(), meta


def encode_dataset(
    autoencoder: str | Path,
    out: str | Path,
    *,
    data: str | None = None,
    classes: list[str] | None = None,
    max_per_class: int | None = None,
    seed: int | None = None,
    batch_size: int = 64,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode every split of ``data`` (default: the autoencoder's data) into ``out/codes.npz``.

    Splits are made exactly as `cxr train` makes them for the same data and seed (default: the
    autoencoder's seed), so a code-trained run and a raw-image run score the same test images.
    """
    check_range("--batch-size", batch_size, 1, MAX_BATCH, "a batch size")
    net, ae = load_autoencoder(autoencoder)
    dev = resolve_device(device)
    data_cfg = ae["data"]
    source = data or data_cfg["path"]
    check_seed_and_lr(seed)
    seed = ae["train"]["seed"] if seed is None else seed
    check_out(out, CODES_FILE, overwrite, "a codes folder")
    _, prepared = load_data(
        source,
        ae["image_size"],
        seed,
        classes if classes is not None else (None if data else data_cfg.get("classes")),
        max_per_class,
        data_cfg.get("cache_dir"),
        data_cfg.get("resize", "squash"),
        progress=progress,
    )
    out = prepare_folder(out, CODES_FILE, overwrite, "a codes folder")
    encoder = net.encoder.to(dev).eval()
    arrays: dict[str, np.ndarray] = {"classes": np.array(prepared.classes, dtype=str)}
    t_enc = time.perf_counter()
    for split, images in prepared.images.items():
        (codes,) = batched(
            encoder,
            lambda s, im=images: torch.tensor(im[s]).unsqueeze(1).float().div(255.0),
            len(images),
            batch_size,
            dev,
            None,
            channels_last=False,
            progress=f"encoding ({split})" if progress else None,
        )
        samples = prepared.index.split(split)
        arrays[f"{split}_codes"] = codes.astype(np.float16)
        arrays[f"{split}_labels"] = prepared.labels[split]
        arrays[f"{split}_paths"] = np.array(prepared.paths[split], dtype=str)
        arrays[f"{split}_groups"] = np.array([s.group for s in samples], dtype=str)
    encode_s = time.perf_counter() - t_enc
    meta = {
        "created": now(),
        "autoencoder": str(Path(autoencoder).resolve()),
        "autoencoder_train_s": ae.get("train_s"),
        "autoencoder_val_mse": ae.get("val_mse"),
        "source": str(source),
        "image_size": ae["image_size"],
        "shape": list(arrays["train_codes"].shape[1:]),
        "dtype": "float16",
        "classes": prepared.classes,
        "counts": prepared.index.counts(),
        "split_origin": prepared.index.split_origin,
        "seed": seed,
        "decode_s": round(prepared.decode_s, 3),
        "encode_s": round(encode_s, 3),
        "device": dev,
        "threads": torch.get_num_threads(),
    }
    arrays["meta"] = np.array(json.dumps(meta))
    _save_npz(out / CODES_FILE, arrays)
    write_json(out / "codes.json", meta)
    return meta


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez via a temporary sibling (no pickled objects: every array is numeric or fixed-width text)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, allow_pickle=False, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
