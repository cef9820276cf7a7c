"""`cxr train`, `cxr evaluate`, `cxr predict`, `cxr demo`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cxrlab.cli import app
from cxrlab.cli.options import (
    EVALUATE,
    TRAIN,
    overrides,
    parse_label_map,
    resolved,
    split_list,
    with_config_flags,
)
from cxrlab.errors import ConfigError

Opt = typer.Option


def build_config(config: Path | None, values: dict[str, Any], sets: list[str] | None):
    """Config file (or defaults) ← explicit flags ({config key: value}) ← --set KEY=VALUE."""
    from cxrlab.config import RunConfig

    cfg = RunConfig.load(config) if config else RunConfig()
    flat = [f"{k}={json.dumps(v)}" for k, v in values.items() if v is not None]
    return cfg.override(flat + list(sets or []))


@app.command()
@with_config_flags(TRAIN, before="set_")
def train(
    out: Annotated[
        Path, Opt("--out", "-o", help="run folder to create (must not exist, unless --overwrite)")
    ] = None,
    config: Annotated[Path, Opt("--config", "-c", help="YAML config; flags below override it")] = None,
    set_: Annotated[
        list[str], Opt("--set", help="override any config key: --set train.lr=1e-4 (repeatable)")
    ] = None,
    resume: Annotated[Path, Opt(help="continue an interrupted run folder from its last checkpoint")] = None,
    overwrite: Annotated[bool, Opt(help="replace an existing run folder at --out")] = False,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="no progress bars")] = False,
    **flags: Any,
) -> None:
    """Train a classifier and write a run folder with metrics (95% CIs), plots and report.html.

    Example: cxr train --data ../shared/data/covid-challenge --classes covid,normal
    --model mobilenet_v2 --pretrained --freeze backbone --out runs/covid
    """
    from cxrlab.pipeline.train import train as run_train

    if resume is not None:
        metrics = run_train(None, resume, resume=True, progress=not quiet)  # type: ignore[arg-type]
        _print_summary(resume, metrics)
        return
    if out is None:
        raise ConfigError("--out RUN is required: the folder where the run is written")
    given = overrides(TRAIN, flags)
    cfg = build_config(config, given, set_)
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
@with_config_flags(EVALUATE)
def evaluate(
    run: Annotated[Path, typer.Argument(help="a run folder written by `cxr train`")],
    data: Annotated[str, Opt(help="evaluate on this dataset instead of the run's test split")] = None,
    classes: Annotated[str, Opt(help="comma-separated classes to evaluate (default: the model's)")] = None,
    label_map: Annotated[str, Opt(help="map the dataset's class names to the model's: SRC=DST,…")] = None,
    out: Annotated[Path, Opt(help="where to write [default: RUN/evaluation or RUN/external]")] = None,
    **flags: Any,
) -> None:
    """Evaluate a trained run (metrics with 95% CIs, plots, report) on its test split or on other data."""
    from cxrlab.pipeline.evaluate import evaluate_run

    result = evaluate_run(
        run,
        data,
        split_list(classes, "--classes") if classes is not None else None,
        parse_label_map(label_map) if label_map is not None else {},
        out,
        resolved(EVALUATE, flags)["device"],
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
    from cxrlab.evaluation.inference import predict as run_predict

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
