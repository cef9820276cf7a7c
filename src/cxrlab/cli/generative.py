"""`cxr autoencoder train|encode` and `cxr gan train|sample|quality` (thin: logic in cxrlab.generative)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrlab.cli import app
from cxrlab.cli.options import split_list

Opt = typer.Option
Arg = typer.Argument
_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

autoencoder_app = typer.Typer(
    help="Compress radiographs with a convolutional autoencoder; train classifiers on the codes.\n\n"
    "1. cxr autoencoder train --data DATA --out AE\n\n"
    "2. cxr autoencoder encode AE --out CODES\n\n"
    "3. cxr train --data CODES --model code_cnn --out RUN",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings=_SETTINGS,
)
gan_app = typer.Typer(
    help="DCGAN per class: synthetic training images, their quality, and augmentation.\n\n"
    "1. cxr gan train --data DATA --class NAME --out GAN\n\n"
    "2. cxr gan sample GAN --n 1280 --out SYNTH/NAME\n\n"
    "3. cxr gan quality SYNTH --data DATA --out QUALITY\n\n"
    "4. cxr train --data DATA --extra-train SYNTH --out RUN",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings=_SETTINGS,
)
app.add_typer(autoencoder_app, name="autoencoder")
app.add_typer(gan_app, name="gan")

_DEVICE = Opt(help="auto | cpu | cuda")
_QUIET = Opt("--quiet", "-q", help="no progress bars")
_CACHE = Opt(help="decoded-image cache [default: $CXRLAB_CACHE_DIR or ~/.cache/cxrlab]")


@autoencoder_app.command("train")
def autoencoder_train(
    data: Annotated[str, Opt(help="folder (train/val/test or class subfolders) or MedMNIST .npz")],
    out: Annotated[Path, Opt("--out", "-o", help="folder to create for the autoencoder")],
    classes: Annotated[str, Opt(help="comma-separated subset of classes [default: all]")] = None,
    image_size: Annotated[int, Opt(help="input size; must be divisible by 2^depth")] = 224,
    latent: Annotated[int, Opt(help="channels of the code (last encoder layer)")] = 256,
    depth: Annotated[int, Opt(help="stride-2 conv layers: code side = image size / 2^depth")] = 4,
    epochs: Annotated[int, Opt(help="training epochs (best validation MSE is kept)")] = 10,
    batch_size: Annotated[int, Opt(help="batch size")] = 32,
    lr: Annotated[float, Opt(help="Adam learning rate")] = 1e-3,
    seed: Annotated[int, Opt(help="random seed (also the split seed when data has no splits)")] = 0,
    max_per_class: Annotated[int, Opt(help="use at most N images per class and split [default: all]")] = None,
    cache_dir: Annotated[str, _CACHE] = None,
    device: Annotated[str, _DEVICE] = "auto",
    overwrite: Annotated[bool, Opt(help="replace an existing autoencoder folder at --out")] = False,
    quiet: Annotated[bool, _QUIET] = False,
) -> None:
    """Train the convolutional autoencoder (1→32→64→128→256, 224×224 → 256×14×14) with MSE and Adam.

    Writes AE/autoencoder.safetensors (+ .json), history.csv and loss.png (train/validation
    reconstruction MSE per epoch), reconstructions.png (originals vs reconstructions) and checkpoints/.
    """
    from cxrlab.generative.autoencoder import train_autoencoder

    meta = train_autoencoder(
        data,
        out,
        classes=split_list(classes, "--classes") if classes is not None else None,
        image_size=image_size,
        latent_channels=latent,
        depth=depth,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        max_per_class=max_per_class,
        cache_dir=cache_dir,
        device=device,
        overwrite=overwrite,
        progress=not quiet,
    )
    typer.echo(
        f"autoencoder {meta['image_size']}px → {'×'.join(map(str, meta['code_shape']))}: "
        f"validation MSE {meta['val_mse']:.5f} (epoch {meta['best_epoch']}), test MSE {meta['test_mse']}, "
        f"trained in {meta['train_s']:.1f} s"
    )
    typer.echo(f"written: {out}")


@autoencoder_app.command("encode")
def autoencoder_encode(
    autoencoder: Annotated[Path, Arg(help="folder written by `cxr autoencoder train`")],
    out: Annotated[Path, Opt("--out", "-o", help="folder to create for codes.npz")],
    data: Annotated[str, Opt(help="dataset to encode [default: the autoencoder's training data]")] = None,
    classes: Annotated[
        str, Opt(help="comma-separated subset of classes [default: the autoencoder's]")
    ] = None,
    max_per_class: Annotated[
        int, Opt(help="encode at most N images per class and split [default: all]")
    ] = None,
    seed: Annotated[
        int,
        Opt(help="split seed when data has no splits; use your run's --seed [default: the autoencoder's]"),
    ] = None,
    batch_size: Annotated[int, Opt(help="images per encoder batch")] = 64,
    device: Annotated[str, _DEVICE] = "auto",
    overwrite: Annotated[bool, Opt(help="replace an existing codes folder at --out")] = False,
    quiet: Annotated[bool, _QUIET] = False,
) -> None:
    """Encode every split (train/val/test) into CODES/codes.npz, with the encode time.

    Then: cxr train --data CODES --model code_cnn --out RUN (the run records encode and train time).
    """
    from cxrlab.generative.autoencoder import encode_dataset

    meta = encode_dataset(
        autoencoder,
        out,
        data=data,
        classes=split_list(classes, "--classes") if classes is not None else None,
        max_per_class=max_per_class,
        seed=seed,
        batch_size=batch_size,
        device=device,
        overwrite=overwrite,
        progress=not quiet,
    )
    n = sum(sum(c.values()) for c in meta["counts"].values())
    typer.echo(f"{n} images → codes {'×'.join(map(str, meta['shape']))} in {meta['encode_s']:.1f} s")
    typer.echo(f"next: cxr train --data {out} --model code_cnn --out RUN")


@gan_app.command("train")
def gan_train(
    data: Annotated[str, Opt(help="dataset; only its training split of --class is used")],
    class_name: Annotated[str, Opt("--class", help="class to learn, e.g. NORMAL")],
    out: Annotated[Path, Opt("--out", "-o", help="folder to create for the GAN")],
    epochs: Annotated[int, Opt(help="training epochs")] = 25,
    batch_size: Annotated[int, Opt(help="batch size")] = 64,
    image_size: Annotated[int, Opt(help="generated image size (power of two ≥ 16)")] = 64,
    nz: Annotated[int, Opt(help="noise vector length")] = 100,
    ngf: Annotated[int, Opt(help="generator width (channels of its last hidden layer)")] = 64,
    ndf: Annotated[int, Opt(help="discriminator width (channels of its first layer)")] = 64,
    lr: Annotated[float, Opt(help="Adam learning rate (both networks)")] = 2e-4,
    beta1: Annotated[float, Opt(help="Adam beta1")] = 0.5,
    max_images: Annotated[int, Opt(help="use at most N training images of the class [default: all]")] = None,
    checkpoint_every: Annotated[int, Opt(help="keep a checkpoint every N epochs (0: latest only)")] = 5,
    seed: Annotated[int, Opt(help="random seed (also the split seed when data has no splits)")] = 0,
    cache_dir: Annotated[str, _CACHE] = None,
    device: Annotated[str, _DEVICE] = "auto",
    overwrite: Annotated[bool, Opt(help="replace an existing GAN folder at --out")] = False,
    quiet: Annotated[bool, _QUIET] = False,
) -> None:
    """Train a DCGAN on one class's training images (never validation or test images).

    Writes samples/epoch_NNN.png (fixed noise, every epoch), losses.csv + losses.png,
    generator/discriminator .safetensors, checkpoints/ and gan.json.
    """
    from cxrlab.generative.gan import train_gan

    meta = train_gan(
        data,
        class_name,
        out,
        epochs=epochs,
        batch_size=batch_size,
        nz=nz,
        ngf=ngf,
        ndf=ndf,
        lr=lr,
        beta1=beta1,
        image_size=image_size,
        seed=seed,
        max_images=max_images,
        checkpoint_every=checkpoint_every,
        cache_dir=cache_dir,
        device=device,
        overwrite=overwrite,
        progress=not quiet,
    )
    typer.echo(
        f"DCGAN {meta['class']}: {meta['n_train_images']} training images, {meta['epochs_done']} epochs "
        f"in {meta['train_s']:.1f} s"
    )
    typer.echo(f"next: cxr gan sample {out} --n 1280 --out SYNTH/{meta['class']}")


@gan_app.command("sample")
def gan_sample(
    gan: Annotated[Path, Arg(help="folder written by `cxr gan train`")],
    out: Annotated[
        Path, Opt("--out", "-o", help="folder for the PNGs; name it after the class: SYNTH/<class>")
    ],
    n: Annotated[int, Opt("--n", help="number of images")] = 1280,
    seed: Annotated[int, Opt(help="noise seed")] = 0,
    device: Annotated[str, _DEVICE] = "auto",
    overwrite: Annotated[bool, Opt(help="replace PNGs written earlier into --out")] = False,
) -> None:
    """Write N generated images as PNGs (use SYNTH with `cxr train --extra-train SYNTH`)."""
    from cxrlab.generative.gan import sample_gan

    info = sample_gan(gan, n, out, seed=seed, device=device, overwrite=overwrite)
    typer.echo(f"{info['n']} {info['image_size']}×{info['image_size']} images of {info['class']} → {out}")
    if Path(out).name != info["class"]:
        typer.secho(
            f"note: --extra-train reads DIR/<class>/; this GAN's class is {info['class']!r}, "
            f"the folder is {Path(out).name!r}",
            fg="yellow",
            err=True,
        )


@gan_app.command("quality")
def gan_quality(
    synthetic: Annotated[Path, Arg(help="folder with one subfolder of synthetic images per class")],
    data: Annotated[str, Opt(help="the real dataset; its training split is the reference")],
    out: Annotated[Path, Opt("--out", "-o", help="folder for quality.json, plots and report.html")],
    size: Annotated[int, Opt(help="compare at this size (the GAN's image size)")] = 64,
    folds: Annotated[int, Opt(help="cross-validation folds of the two-sample test")] = 5,
    cnn_steps: Annotated[
        int, Opt(help="Adam steps per fold of the small-CNN detector; 0 skips it (minutes on a busy CPU)")
    ] = 150,
    seed: Annotated[int, Opt(help="seed (also the split seed when data has no splits)")] = 0,
    cache_dir: Annotated[str, _CACHE] = None,
    overwrite: Annotated[bool, Opt(help="replace an existing quality folder at --out")] = False,
    quiet: Annotated[bool, _QUIET] = False,
) -> None:
    """Real-vs-synthetic two-sample test (0.5 = indistinguishable), memorisation check, sample grids."""
    from cxrlab.generative.quality import quality_report

    result = quality_report(
        synthetic,
        data,
        out,
        size=size,
        seed=seed,
        folds=folds,
        cnn_steps=cnn_steps,
        cache_dir=cache_dir,
        overwrite=overwrite,
        progress=not quiet,
    )
    for name, e in result["classes"].items():
        for t in e["two_sample"]:
            lo, hi = t["accuracy_ci95"]
            typer.echo(f"{name}: {t['detector']}: accuracy {t['accuracy']:.3f} [95% CI {lo:.3f}–{hi:.3f}]")
        m = e["memorization"]
        typer.echo(
            f"{name}: nearest training image, median distance synthetic {m['synthetic_nn_median']:.4f} "
            f"vs real {m['real_nn_median']:.4f}"
        )
    typer.echo(f"report: {Path(out) / 'report.html'}")
