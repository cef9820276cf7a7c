"""DCGAN per class (Radford et al. 2016), as in the Kermany report: synthetic 64×64 radiographs.

Generator: a 100-d noise vector → transposed convolutions with batch norm + ReLU → a 1×64×64
image through Tanh. Discriminator: strided convolutions with batch norm + LeakyReLU(0.2) (no
batch norm on the first layer) → one sigmoid probability. Adam (lr 2e-4, β1 0.5), BCE, weights
initialised N(0, 0.02) as in the paper. It is trained on the *training split* of one class only:
validation and test images never reach the GAN (its images are later added to training data).

The loop is plain PyTorch rather than Lightning: a GAN step alternates two optimisers on one
batch, which Lightning only supports through manual optimisation — the loop body would be the
same code, while Lightning's added value here (validation loop, checkpoint selection on a
monitored metric, early stopping) has no meaning for a GAN, whose losses do not measure quality.

``train_gan`` writes ``GAN/``::

    gan.json                               class, architecture, data, timing, status
    generator.safetensors, discriminator.safetensors   latest weights (after each epoch)
    checkpoints/epoch_NNN_{generator,discriminator}.safetensors   every --checkpoint-every epochs
    samples/epoch_NNN.png                  the same 64 fixed noise vectors every epoch (mode collapse shows)
    real.png                               64 real training images of the class, for comparison
    losses.csv, losses.png                 discriminator/generator loss and D(x), D(G(z)) per epoch
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrlab.config import MAX_BATCH, MAX_EPOCHS, check_range, check_seed_and_lr
from cxrlab.errors import ConfigError, CxrError, DataError
from cxrlab.generative.common import (
    check_out,
    load_data,
    load_weights,
    loss_plot,
    now,
    prepare_folder,
    read_meta,
    save_png,
    tile,
    to_uint8,
)
from cxrlab.runs import save_weights, write_csv, write_json
from cxrlab.runtime import resolve_device

META = "gan.json"
LOSS_FIELDS = ["epoch", "loss_d", "loss_g", "d_real", "d_fake", "seconds"]


def _levels(image_size: int) -> int:
    """Number of ×2 stages between 4×4 and ``image_size`` (64 → 4)."""
    if not 16 <= image_size <= 1024 or image_size & (image_size - 1):
        raise ConfigError(
            f"--image-size {image_size}: the DCGAN needs a power of two from 16 to 1024 (e.g. 64)"
        )
    return int(math.log2(image_size)) - 2


class Generator(nn.Module):
    """z (nz×1×1) → 4×4 → … → 1×size×size in [-1, 1]; widths ngf·8, ngf·4, ngf·2, ngf for 64 px."""

    def __init__(self, nz: int = 100, ngf: int = 64, image_size: int = 64):
        super().__init__()
        k = _levels(image_size)
        widths = [ngf * 2 ** (k - 1 - i) for i in range(k)]
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(nz, widths[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(True),
        ]
        for a, b in zip(widths, widths[1:], strict=False):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], 1, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.nz = nz

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(len(z), self.nz, 1, 1))


class Discriminator(nn.Module):
    """1×size×size → strided convs (LeakyReLU 0.2; batch norm from the second layer on) → P(real)."""

    def __init__(self, ndf: int = 64, image_size: int = 64):
        super().__init__()
        k = _levels(image_size)
        widths = [ndf * 2**i for i in range(k)]
        layers: list[nn.Module] = [nn.Conv2d(1, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for a, b in zip(widths, widths[1:], strict=False):
            layers += [nn.Conv2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)


def dcgan_init(module: nn.Module) -> None:
    """DCGAN paper initialisation: conv weights N(0, 0.02), batch-norm scale N(1, 0.02), shift 0."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def class_images(
    data: str,
    class_name: str,
    image_size: int,
    seed: int,
    cache_dir: str | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, str, dict[str, Any]]:
    """Real *training-split* images of one class (uint8 ``(N, S, S)``), its exact name, data record."""
    cfg, prepared = load_data(data, image_size, seed, cache_dir=cache_dir, progress=progress)
    lower = {c.lower(): c for c in prepared.classes}
    name = class_name if class_name in prepared.classes else lower.get(class_name.lower())
    if name is None:
        raise DataError(f"class {class_name!r} not in {data}; it has: {', '.join(prepared.classes)}")
    label = prepared.classes.index(name)
    real = np.array([not s.synthetic for s in prepared.index.split("train")])
    images = prepared.images["train"][(prepared.labels["train"] == label) & real]
    record = {"data": cfg.model_dump(mode="json"), "classes": prepared.classes, "decode_s": prepared.decode_s}
    return images, name, record


def train_gan(
    data: str,
    class_name: str,
    out: str | Path,
    *,
    epochs: int = 25,
    batch_size: int = 64,
    nz: int = 100,
    ngf: int = 64,
    ndf: int = 64,
    lr: float = 2e-4,
    beta1: float = 0.5,
    image_size: int = 64,
    seed: int = 0,
    max_images: int | None = None,
    checkpoint_every: int = 5,
    cache_dir: str | None = None,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a DCGAN on one class's training images; write ``out`` (see the module docstring)."""
    check_seed_and_lr(seed, lr)
    check_range("--epochs", epochs, 1, MAX_EPOCHS, "a number of epochs")
    check_range("--batch-size", batch_size, 1, MAX_BATCH, "a batch size")
    check_range("--nz", nz, 1, 4096, "a noise vector length")
    check_range("--ngf", ngf, 1, 1024, "a generator width")
    check_range("--ndf", ndf, 1, 1024, "a discriminator width")
    check_range("--max-images", max_images, 1, 10**9, "a number of images")
    check_range("--checkpoint-every", checkpoint_every, 0, MAX_EPOCHS, "a number of epochs (0: latest only)")
    if not (math.isfinite(beta1) and 0 <= beta1 < 1):
        raise ConfigError(f"--beta1 {beta1:g}: give Adam's beta1 from 0 up to (not including) 1, e.g. 0.5")
    _levels(image_size)
    dev = resolve_device(device)
    check_out(out, META, overwrite, "a GAN folder")
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    images, name, record = class_images(data, class_name, image_size, seed, cache_dir, progress)
    if max_images and len(images) > max_images:
        images = images[np.sort(np.random.default_rng(seed).choice(len(images), max_images, replace=False))]
    if len(images) < 2:
        raise DataError(f"class {name!r} has {len(images)} training image(s); a GAN needs many more")
    out = prepare_folder(out, META, overwrite, "a GAN folder")
    save_png(out / "real.png", tile(images[:64]))
    gen, disc = Generator(nz, ngf, image_size).to(dev), Discriminator(ndf, image_size).to(dev)
    gen.apply(dcgan_init)
    disc.apply(dcgan_init)
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=(beta1, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(beta1, 0.999))
    bce = nn.BCELoss()
    fixed = torch.randn(64, nz, generator=torch.Generator().manual_seed(seed + 1)).to(dev)
    real_all = torch.from_numpy(images).unsqueeze(1)  # uint8, scaled per batch
    meta: dict[str, Any] = {
        "status": "running",
        "started": now(),
        "class": name,
        "n_train_images": len(images),
        "image_size": image_size,
        "nz": nz,
        "ngf": ngf,
        "ndf": ndf,
        "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "beta1": beta1, "seed": seed},
        **record,
        "device": dev,
    }
    write_json(out / META, meta)
    rows: list[dict[str, Any]] = []
    order = torch.Generator().manual_seed(seed)
    bar = _bar(epochs, f"GAN {name}") if progress else None
    t_train = time.perf_counter()
    try:
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            sums = np.zeros(4)
            perm = torch.randperm(len(real_all), generator=order)
            gen.train()
            disc.train()
            for i in range(0, len(perm), batch_size):
                real = real_all[perm[i : i + batch_size]].to(dev).float().div(127.5).sub(1.0)
                n = len(real)
                ones, zeros = torch.ones(n, device=dev), torch.zeros(n, device=dev)
                fake = gen(torch.randn(n, nz, device=dev))
                # discriminator: real → 1, fake → 0
                opt_d.zero_grad(set_to_none=True)
                p_real = disc(real)
                p_fake = disc(fake.detach())
                _check_finite(p_real, p_fake, epoch=epoch, lr=lr, out=out, meta=meta)
                loss_d = bce(p_real, ones) + bce(p_fake, zeros)
                loss_d.backward()
                opt_d.step()
                # generator: make the discriminator say 1 on fakes (non-saturating loss)
                opt_g.zero_grad(set_to_none=True)
                p_gen = disc(fake)
                _check_finite(p_gen, epoch=epoch, lr=lr, out=out, meta=meta)
                loss_g = bce(p_gen, ones)
                loss_g.backward()
                opt_g.step()
                sums += (
                    np.array([loss_d.item(), loss_g.item(), p_real.mean().item(), p_fake.mean().item()]) * n
                )
            means = sums / len(perm)
            rows.append(
                {
                    "epoch": epoch,
                    **{k: round(float(v), 5) for k, v in zip(LOSS_FIELDS[1:5], means, strict=True)},
                    "seconds": round(time.perf_counter() - start, 3),
                }
            )
            gen.eval()
            with torch.no_grad():
                save_png(out / "samples" / f"epoch_{epoch:03d}.png", tile(to_uint8(gen(fixed), -1.0, 1.0)))
            save_weights(out / "generator.safetensors", gen)
            save_weights(out / "discriminator.safetensors", disc)
            if checkpoint_every and epoch % checkpoint_every == 0:
                save_weights(out / "checkpoints" / f"epoch_{epoch:03d}_generator.safetensors", gen)
                save_weights(out / "checkpoints" / f"epoch_{epoch:03d}_discriminator.safetensors", disc)
            write_csv(out / "losses.csv", rows, LOSS_FIELDS)
            loss_plot(rows, ["loss_d", "loss_g"], out / "losses.png", f"DCGAN {name}: losses per epoch")
            meta.update(epochs_done=epoch, train_s=round(time.perf_counter() - t_train, 3))
            write_json(out / META, meta)
            if bar:
                bar.set_postfix(loss_d=f"{means[0]:.3f}", loss_g=f"{means[1]:.3f}")
                bar.update(1)
    except KeyboardInterrupt:  # Ctrl-C: the weights of the last finished epoch stay usable
        meta.update(status="interrupted")
        write_json(out / META, meta)
        raise
    if bar:
        bar.close()
    loss_plot(rows, ["d_real", "d_fake"], out / "discriminator.png", "mean D(x) and D(G(z))", "probability")
    meta.update(status="finished", finished=now(), total_s=round(time.perf_counter() - t0, 3))
    write_json(out / META, meta)
    return meta


def _check_finite(*outputs: torch.Tensor, epoch: int, lr: float, out: Path, meta: dict[str, Any]) -> None:
    """One line (and gan.json marked failed) when the discriminator's outputs became NaN: the GAN diverged,
    and BCE would fail on them with torch's own message."""
    if all(bool(torch.isfinite(o).all()) for o in outputs):
        return
    meta.update(status="failed", epochs_done=epoch - 1)
    write_json(out / META, meta)
    raise ConfigError(
        f"the GAN diverged at epoch {epoch}: the discriminator's outputs became NaN; lower --lr "
        f"(now {lr:g}), e.g. 2e-4; {out} is left unfinished"
    )


def _bar(total: int, desc: str):
    from cxrlab.runtime import progress

    return progress(desc=desc, total=total, unit="epoch")


def load_generator(folder: str | Path) -> tuple[Generator, dict[str, Any]]:
    """The trained generator of a GAN folder (safetensors weights, never pickle)."""
    meta = read_meta(folder, META, "a GAN folder", "cxr gan train --data DATA --class NAME --out GAN")
    if not meta.get("epochs_done"):
        raise CxrError(f"{folder}: the GAN has not finished an epoch yet; train it again")
    gen = Generator(meta["nz"], meta["ngf"], meta["image_size"])
    load_weights(Path(folder) / "generator.safetensors", gen)
    return gen.eval(), meta


def generate_batches(gen: Generator, n: int, seed: int = 0, batch_size: int = 256, device: str = "cpu"):
    """Yield ``n`` uint8 images from seeded noise, ``batch_size`` at a time (memory stays flat)."""
    noise = torch.Generator().manual_seed(seed)
    gen = gen.to(device).eval()
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            z = torch.randn(min(batch_size, n - start), gen.nz, generator=noise).to(device)
            yield to_uint8(gen(z), -1.0, 1.0)


def generate(gen: Generator, n: int, seed: int = 0, batch_size: int = 256, device: str = "cpu") -> np.ndarray:
    """``n`` uint8 images ``(n, S, S)`` from seeded noise."""
    chunks = list(generate_batches(gen, n, seed, batch_size, device))
    return np.concatenate(chunks) if chunks else np.zeros((0, 1, 1), np.uint8)


MAX_SAMPLES = 1_000_000


def sample_gan(
    folder: str | Path,
    n: int,
    out: str | Path,
    *,
    seed: int = 0,
    device: str = "auto",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``n`` generated PNGs into ``out`` (name it ``DIR/<class>`` for ``--extra-train DIR``)."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SAMPLES:
        raise ConfigError(f"--n {n}: give a number of images from 1 to {MAX_SAMPLES:,}")
    check_seed_and_lr(seed)
    resolve_device(device)  # a mistyped --device: one line before the GAN folder is read
    gen, meta = load_generator(folder)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CxrError(f"{out} is a file; --out takes a folder (DIR/<class>)")
    existing = sorted(out.glob("*")) if out.is_dir() else []
    if existing:
        ours = [p for p in existing if p.name.startswith("gan_") and p.suffix == ".png"]
        if not overwrite or len(ours) != len(existing):
            raise CxrError(
                f"{out} is not empty; choose another --out"
                + (
                    " or add --overwrite"
                    if len(ours) == len(existing)
                    else " (it holds files not written here)"
                )
            )
        for p in ours:
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    # Written batch by batch: memory stays flat and Ctrl-C keeps every PNG written so far.
    i = 0
    try:
        for batch in generate_batches(gen, n, seed, device=resolve_device(device)):
            for im in batch:
                save_png(out / f"gan_s{seed}_{i:05d}.png", im)
                i += 1
    except BaseException:
        # a signal landing inside atomic_write's mkstemp can strand its temporary file: remove it
        for tmp in out.glob(f".gan_s{seed}_*.tmp"):
            tmp.unlink(missing_ok=True)
        raise
    return {"class": meta["class"], "n": n, "out": str(out), "seed": seed, "image_size": meta["image_size"]}
