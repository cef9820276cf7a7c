"""`cxr compare`, `cxr sweep`, `cxr bench`, `cxr report`: experiments across runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrlab.cli import app
from cxrlab.cli.options import split_list

Opt = typer.Option
Arg = typer.Argument


@app.command()
def compare(
    runs: Annotated[list[Path], Arg(help="finished run folders (from `cxr train` or a sweep)")],
    out: Annotated[Path, Opt("--out", "-o", help="folder for compare.csv/.md/.html and plots")] = Path(
        "comparison"
    ),
) -> None:
    """Compare runs: one table (parameters in PyTorch's and Keras' conventions, time per
    epoch/step with fast-path head-only timings marked †, test accuracy with 95% CI, AUC, macro and
    weighted precision/recall/F1), overlaid validation curves, accuracy against time, and an exact
    McNemar test for every pair evaluated on the same test images (Holm-corrected). Runs with
    different test sets are put in separate groups (column test_set) and never tested against
    each other.

    Example: cxr compare runs/mobilenet runs/resnet18 runs/small_cnn --out runs/compare
    """
    from cxrlab.experiments.compare import compare_runs

    result = compare_runs(runs, out)
    for note in result["notes"]:
        typer.secho(f"warning: {note}", fg="yellow", err=True)
    typer.echo(result["markdown"].split("\n![")[0].rstrip())
    typer.echo(f"\nwritten: {out / 'compare.csv'}, {out / 'compare.md'}, {out / 'compare.html'}")


@app.command()
def sweep(
    config: Annotated[Path, Opt("--config", "-c", help="base run config (YAML); every trial starts from it")],
    param: Annotated[
        list[str],
        Opt(
            "--param",
            "-p",
            help="NAME=V1,V2,… (values) or NAME=LOW:HIGH[:log] (range), repeatable; NAME is a config key "
            "(train.lr) or a short name: lr, dropout, batch_size, weight_decay, epochs, optimizer, model, "
            "freeze, image_size, l2, momentum. List values in YAML flow syntax, quoted for the shell: "
            "'model.head.hidden=[512,512],[256,256]'. dropout=R on a base with a per-layer dropout list "
            "sets R on its dropout layers (non-zero entries) and keeps the zeros",
        ),
    ],
    out: Annotated[
        Path, Opt("--out", "-o", help="sweep folder: trials/, study.db, sweep.csv, compare.*")
    ] = Path("sweep"),
    trials: Annotated[
        int,
        Opt(help="total trials in the study, across all workers [default: the grid size, or 20 for TPE]"),
    ] = None,
    sampler: Annotated[
        str, Opt(help="auto (grid when every --param is a list, else TPE) | grid | tpe")
    ] = "auto",
    storage: Annotated[
        str,
        Opt(
            help="Optuna storage URL shared by workers, e.g. postgresql://user:pw@host/db "
            "[default: sqlite:///OUT/study.db]"
        ),
    ] = None,
    study: Annotated[str, Opt(help="study name; workers with the same --storage and --study cooperate")] = (
        "cxr-sweep"
    ),
    prune: Annotated[
        bool,
        Opt("--prune/--no-prune", help="stop hopeless trials early (Optuna median pruner)"),
    ] = True,
    set_: Annotated[
        list[str], Opt("--set", help="override a base-config key for every trial: --set train.epochs=10")
    ] = None,
    progress: Annotated[bool, Opt("--progress/--quiet", help="show each trial's progress bars")] = False,
) -> None:
    """Sweep hyperparameters with Optuna (grid or TPE); every trial is a normal run folder.

    Trials are ranked on the validation metric of the base config (train.monitor), never on the
    test split. Start the same command on several processes or machines (same --storage and
    --study) to share one study. Writes sweep.csv, sweep.json, Optuna's history/importance plots
    and a compare table of the finished trials.

    Example: cxr sweep --config base.yaml --param lr=1e-3,5e-4,1e-4 --param dropout=0.2,0.5,0.8

    List values: cxr sweep --config base.yaml --param 'model.head.hidden=[512],[256,128]'
    """
    from cxrlab.config import RunConfig
    from cxrlab.experiments.sweep import run_sweep

    base = RunConfig.load(config).override(list(set_ or []))
    summary = run_sweep(base, param, out, trials, sampler, storage, study, prune, progress=progress)
    typer.echo(f"trials: {summary['trials']} · this worker {summary['worker_wall_s']} s")
    for f in summary.get("failed", []):
        typer.echo(f"trial {f['trial']} failed ({f['params']}): {f['error']}")
    best = summary["best"]
    if best:
        acc = best.get("test_accuracy")
        typer.echo(
            f"best trial {best['trial']}: {best['params']} → validation {summary['direction'][:3]} "
            f"{best['value']:.4f}" + (f", test accuracy {acc:.3f}" if acc is not None else "")
        )
    typer.echo(f"written: {out / 'sweep.csv'}, {out / 'compare.md'}, {out / 'plots'}")


@app.command()
def bench(
    models: Annotated[
        str,
        Opt(
            help="comma-separated models from `cxr models` "
            "[default: mobilenet_v2,resnet18,small_cnn, or none with --config]"
        ),
    ] = None,
    config: Annotated[
        list[Path],
        Opt(
            "--config",
            "-c",
            help="time a recipe's model as `cxr train` builds it (model, head, freeze, image size, "
            "in_channels, batch size, precision, classes); repeatable",
        ),
    ] = None,
    devices: Annotated[
        str, Opt(help="cpu,cuda,mps — the ones absent here are skipped and listed")
    ] = "cpu,cuda",
    precision: Annotated[
        str, Opt(help="fp32,bf16,fp16 (autocast for bf16/fp16) [default: fp32,bf16, or the config's]")
    ] = None,
    batch_size: Annotated[int, Opt(help="images per step [default: 32, or the config's]")] = None,
    image_size: Annotated[int, Opt(help="input size [default: each model's own, or the config's]")] = None,
    steps: Annotated[int, Opt(help="timed steps per measurement (after the warm-up)")] = 10,
    warmup: Annotated[int, Opt(help="untimed warm-up steps")] = 2,
    dataset_size: Annotated[
        int, Opt(help="training-set size for seconds per epoch (316 = covid-challenge)")
    ] = 316,
    num_classes: Annotated[int, Opt(help="classes of the output layer")] = 4,
    out: Annotated[Path, Opt("--out", "-o", help="folder for bench.csv and bench.md")] = Path("bench"),
) -> None:
    """Training and inference throughput per model, device and precision: images/s, seconds per
    step, seconds per epoch for --dataset-size images, peak memory. Each case runs in a fresh
    process; devices or precisions that do not work here are skipped and listed.

    Example: cxr bench --models mobilenet_v2,resnet18 --precision fp32,bf16 --image-size 128

    Example: cxr bench --config configs/x32_mlp.yaml --config configs/x32_cnn.yaml --devices cpu
    """
    from cxrlab.experiments.bench import run_bench

    report = run_bench(
        split_list(models, "--models") if models is not None else None,
        split_list(devices, "--devices"),
        split_list(precision, "--precision") if precision is not None else None,
        batch_size,
        image_size,
        steps,
        warmup,
        dataset_size,
        num_classes,
        out,
        configs=list(config or []),
    )
    typer.echo(report["markdown"].rstrip())
    typer.echo(f"\nwritten: {out / 'bench.csv'}, {out / 'bench.md'}")


@app.command()
def report(
    runs: Annotated[list[Path], Arg(help="finished run folders to put side by side")],
    out: Annotated[
        Path, Opt("--out", "-o", help="folder for report.html (self-contained) and its tables")
    ] = Path("report"),
    title: Annotated[str, Opt(help="document title [default: the task]")] = None,
) -> None:
    """One HTML document comparing runs, laid out like a paper: task, data and audit warnings,
    architectures, hyperparameters, curves, confusion matrices, ROC, t-SNE, the comparison table
    with CIs and paired significance tests, and timing.

    Example: cxr report runs/mobilenet runs/resnet18 --out runs/report
    """
    from cxrlab.experiments.report import write_comparison_report

    path = write_comparison_report(runs, out, title)
    typer.echo(f"report: {path}")
