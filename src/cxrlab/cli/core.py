"""`cxr train`, `cxr evaluate`, `cxr predict`, `cxr demo`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cxrlab.cli import app
from cxrlab.errors import ConfigError

Opt = typer.Option


def parse_label_map(text: str | None) -> dict[str, str]:
    """'COVID=covid,Normal=normal' → {'COVID': 'covid', 'Normal': 'normal'}."""
    if not text:
        return {}
    out = {}
    for item in text.split(","):
        if "=" not in item:
            raise ConfigError(f"--label-map {text!r}: expected SRC=DST pairs separated by commas")
        src, dst = item.split("=", 1)
        out[src.strip()] = dst.strip()
    return out


def build_config(config: Path | None, overrides: dict[str, Any], sets: list[str] | None):
    """Config file (or defaults) ← explicit flags ← --set KEY=VALUE."""
    from cxrlab.config import RunConfig

    cfg = RunConfig.load(config) if config else RunConfig()
    flat = [f"{k}={json.dumps(v)}" for k, v in overrides.items() if v is not None]
    return cfg.override(flat + list(sets or []))


@app.command()
def train(
    out: Annotated[
        Path, Opt("--out", "-o", help="run folder to create (must not exist, unless --overwrite)")
    ] = None,
    data: Annotated[str, Opt(help="folder (train/val/test or class subfolders) or MedMNIST .npz")] = None,
    config: Annotated[Path, Opt("--config", "-c", help="YAML config; flags below override it")] = None,
    model: Annotated[str, Opt(help="model name from `cxr models` [default: mobilenet_v2]")] = None,
    classes: Annotated[
        str, Opt(help="comma-separated subset and order of classes, e.g. covid,normal")
    ] = None,
    label_map: Annotated[str, Opt(help="rename classes: SRC=DST,… (e.g. COVID=covid)")] = None,
    image_size: Annotated[int, Opt(help="input size in pixels [default: the model's]")] = None,
    pretrained: Annotated[
        bool,
        Opt(
            "--pretrained/--random-init",
            help="start from torchvision ImageNet weights [default: random init]",
        ),
    ] = None,
    freeze: Annotated[str, Opt(help="none | backbone | N (first N layers) [default: none]")] = None,
    epochs: Annotated[int, Opt(help="maximum epochs [default: 20]")] = None,
    batch_size: Annotated[int, Opt(help="batch size [default: 32]")] = None,
    lr: Annotated[float, Opt(help="learning rate [default: 1e-3]")] = None,
    optimizer: Annotated[str, Opt(help="adam | adamw | sgd [default: adam]")] = None,
    weight_decay: Annotated[float, Opt(help="weight decay [default: 0]")] = None,
    dropout: Annotated[float, Opt(help="dropout in the head [default: 0.2]")] = None,
    early_stopping: Annotated[
        int, Opt(help="patience in epochs on the monitored metric [default: 5]")
    ] = None,
    class_weights: Annotated[
        bool,
        Opt(
            "--class-weights/--no-class-weights",
            help="weight the loss by inverse class frequency [default: off]",
        ),
    ] = None,
    augment: Annotated[
        bool, Opt("--augment/--no-augment", help="Keras-style rotation/shift/shear/zoom/flip [default: off]")
    ] = None,
    seed: Annotated[
        int, Opt(help="random seed: same seed + data + machine = same metrics [default: 0]")
    ] = None,
    device: Annotated[str, Opt(help="auto | cpu | cuda [default: auto]")] = None,
    devices: Annotated[str, Opt(help="number of devices for multi-device training [default: auto]")] = None,
    num_nodes: Annotated[int, Opt(help="number of nodes (clusters) [default: 1]")] = None,
    strategy: Annotated[str, Opt(help="Lightning strategy, e.g. ddp [default: auto]")] = None,
    precision: Annotated[str, Opt(help="auto | 32 | bf16-mixed | 16-mixed [default: auto]")] = None,
    cache_dir: Annotated[
        str, Opt(help="decoded-image cache [default: $CXRLAB_CACHE_DIR or ~/.cache/cxrlab]")
    ] = None,
    extra_train: Annotated[
        str, Opt(help="folder of extra (synthetic) training images, class subfolders")
    ] = None,
    max_per_class: Annotated[int, Opt(help="use at most N images per class and split (quick trials)")] = None,
    tensorboard: Annotated[
        bool,
        Opt(
            "--tensorboard/--no-tensorboard",
            help="write TensorBoard logs to RUN/tensorboard [default: on]; "
            "view with `tensorboard --logdir RUN/tensorboard`",
        ),
    ] = None,
    target_sensitivity: Annotated[
        float,
        Opt(
            help="binary runs: operating threshold = the highest reaching this sensitivity on validation "
            "data, e.g. 0.95 [default: Youden's J]"
        ),
    ] = None,
    temperature_scaling: Annotated[
        bool,
        Opt(
            "--temperature-scaling/--no-temperature-scaling",
            help="fit a softmax temperature on validation data (calibration) [default: off]",
        ),
    ] = None,
    set_: Annotated[
        list[str], Opt("--set", help="override any config key: --set train.lr=1e-4 (repeatable)")
    ] = None,
    resume: Annotated[Path, Opt(help="continue an interrupted run folder from its last checkpoint")] = None,
    overwrite: Annotated[bool, Opt(help="replace an existing run folder at --out")] = False,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Train a classifier and write a run folder with metrics (95% CIs), plots and report.html.

    Example: cxr train --data ../shared/data/covid-challenge --classes covid,normal
    --model mobilenet_v2 --pretrained --freeze backbone --out runs/covid
    """
    from cxrlab.training.train import train as run_train

    if resume is not None:
        metrics = run_train(None, resume, resume=True, progress=not quiet)  # type: ignore[arg-type]
        _print_summary(resume, metrics)
        return
    if out is None:
        raise ConfigError("--out RUN is required: the folder where the run is written")
    overrides = {
        "data.path": data,
        "data.classes": classes.split(",") if classes else None,
        "data.label_map": parse_label_map(label_map) or None,
        "data.image_size": image_size,
        "data.augment": augment,
        "data.cache_dir": cache_dir,
        "data.extra_train": extra_train,
        "data.max_per_class": max_per_class,
        "model.name": model,
        "model.pretrained": pretrained,
        "model.freeze": freeze,
        "model.head.dropout": dropout,
        "train.epochs": epochs,
        "train.batch_size": batch_size,
        "train.lr": lr,
        "train.optimizer": optimizer,
        "train.weight_decay": weight_decay,
        "train.early_stopping": early_stopping,
        "train.class_weights": class_weights,
        "train.seed": seed,
        "train.device": device,
        "train.devices": devices,
        "train.num_nodes": num_nodes,
        "train.strategy": strategy,
        "train.precision": precision,
        "train.tensorboard": tensorboard,
        "eval.target_sensitivity": target_sensitivity,
        "eval.temperature_scaling": temperature_scaling,
    }
    cfg = build_config(config, overrides, set_)
    inputs = (config,) if config else ()  # --overwrite never deletes the folder of the config file
    metrics = run_train(cfg, out, overwrite=overwrite, progress=not quiet, protect=inputs)
    _print_summary(out, metrics)


def _print_summary(out: Path, metrics: dict[str, Any]) -> None:
    if not metrics:  # a DDP worker process (rank > 0): rank 0 prints the summary
        return
    t = metrics["test"]
    lo, hi = t["accuracy_ci95"] or (float("nan"), float("nan"))
    auc = t["auc"]
    for w in metrics.get("audit", {}).get("warnings", []):
        typer.secho(f"warning: {w}", fg="yellow", err=True)
    typer.echo(
        f"test accuracy {t['accuracy']:.3f} [95% CI {lo:.3f}–{hi:.3f}], n={t['n']}"
        + (f", AUC {auc:.3f}" if auc is not None else "")
        + f" · {metrics['timing']['total_s']:.1f} s"
    )
    typer.echo(f"report: {Path(out) / 'report.html'}")


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="a run folder written by `cxr train`")],
    data: Annotated[str, Opt(help="evaluate on this dataset instead of the run's test split")] = None,
    classes: Annotated[str, Opt(help="comma-separated classes to evaluate (default: the model's)")] = None,
    label_map: Annotated[str, Opt(help="map the dataset's class names to the model's: SRC=DST,…")] = None,
    out: Annotated[Path, Opt(help="where to write [default: RUN/evaluation or RUN/external]")] = None,
    device: Annotated[str, Opt(help="auto | cpu | cuda")] = "auto",
) -> None:
    """Evaluate a trained run (metrics with 95% CIs, plots, report) on its test split or on other data."""
    from cxrlab.evaluation.run_eval import evaluate_run

    result = evaluate_run(
        run, data, classes.split(",") if classes else None, parse_label_map(label_map), out, device
    )
    t = result["test"]
    lo, hi = t["accuracy_ci95"] or (float("nan"), float("nan"))
    auc = f"{t['auc']:.3f}" if t["auc"] == t["auc"] else "undefined (one class)"  # NaN != NaN
    typer.echo(f"accuracy {t['accuracy']:.3f} [95% CI {lo:.3f}–{hi:.3f}], n={t['n']}, AUC {auc}")
    target = Path(out) if out else Path(run) / ("evaluation" if data is None else "external")
    typer.echo(f"report: {target / 'report.html'}")


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="a run folder written by `cxr train`")],
    images: Annotated[list[str], typer.Argument(help="image files")],
    as_json: Annotated[bool, Opt("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Predict the class and class probabilities of each image (binary runs use the saved threshold)."""
    from cxrlab.evaluation.run_eval import predict as run_predict

    results = run_predict(run, images)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    for r in results:
        if "error" in r:
            typer.echo(f"{r['image']}\terror: {r['error']}")
        else:
            probs = "  ".join(f"{c}={p:.3f}" for c, p in r["probabilities"].items())
            typer.echo(f"{r['image']}\t{r['class']}\t{probs}")


@app.command()
def demo(
    out: Annotated[Path, Opt(help="run folder to write")] = Path("runs/demo"),
    epochs: Annotated[int, Opt(help="epochs")] = 8,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Train a small CNN on the bundled PneumoniaMNIST (MedMNIST v2, CC BY 4.0) in about a minute."""
    from cxrlab.demo import run_demo

    metrics = run_demo(out, epochs=epochs, progress=not quiet)
    _print_summary(out, metrics)
