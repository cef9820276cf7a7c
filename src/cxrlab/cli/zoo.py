"""`cxr models` and `cxr summary`: the model zoo from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cxrlab.cli import app
from cxrlab.cli.options import SUMMARY, overrides, with_config_flags

Opt = typer.Option


@app.command()
def models(
    timm: Annotated[
        str,
        Opt(
            "--timm",
            help="also list timm models matching this glob pattern (e.g. 'mobilenetv1*'), with whether "
            "their pretrained weights are in timm's cache [default: none]",
        ),
    ] = None,
    as_json: Annotated[bool, Opt("--json", help="print JSON instead of a table")] = False,
) -> None:
    """List the registered models: backbone parameters, input size, feature shape, offline weights.

    "weights offline: yes" means the ImageNet checkpoint is already under $TORCH_HOME/hub/checkpoints,
    so --pretrained works without a network. Any timm model can be used as timm/NAME.
    """
    from cxrlab.models.summary import model_table
    from cxrlab.models.timm_models import timm_table

    rows = model_table()
    extra = timm_table(timm) if timm else []
    if as_json:
        typer.echo(json.dumps({"models": rows, "timm": extra}, indent=2))
        return
    typer.echo(_table(rows))
    if extra:
        typer.echo("")
        typer.echo(_table(extra))
    elif timm:
        typer.echo(f"no timm model matches {timm!r}")
    from cxrlab.models.weights import torch_home

    typer.echo(f"\nweights offline = checkpoint present in {torch_home()} (set TORCH_HOME to change)")
    typer.echo(
        "xrv/… (chest-X-ray pretrained, pip install 'cxrlab[xrv]'): torchxrayvision's cache, "
        "~/.torchxrayvision/models_data; `cxr zoo xrv/NAME --out RUN` makes a zero-shot run of one"
    )
    typer.echo(
        "Also: any timm model as timm/NAME (e.g. timm/mobilenetv1_100; list with --timm 'PATTERN*'). "
        "Details: cxr summary MODEL."
    )


def _table(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    shown = [{k: _cell(r[k]) for k in keys} for r in rows]
    widths = {k: max(len(k), *(len(r[k]) for r in shown)) for k in keys}
    numeric = {k for k in keys if all(r[k] is None or isinstance(r[k], int) for r in rows)}
    line = "  ".join(k.rjust(widths[k]) if k in numeric else k.ljust(widths[k]) for k in keys).rstrip()
    out = [line, "-" * len(line)]
    for r in shown:
        out.append(
            "  ".join(r[k].rjust(widths[k]) if k in numeric else r[k].ljust(widths[k]) for k in keys).rstrip()
        )
    return "\n".join(out)


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if value is None:
        return "-"
    return str(value)


@app.command()
@with_config_flags(SUMMARY, before="set_")
def summary(
    model: Annotated[
        str, typer.Argument(help="a model name from `cxr models` or timm/NAME (or use --config)")
    ] = None,
    config: Annotated[
        Path, Opt("--config", "-c", help="summarise the model of this run config / recipe YAML")
    ] = None,
    num_classes: Annotated[
        int, Opt(help="number of classes [default: the config's data.classes, else 2]")
    ] = None,
    set_: Annotated[
        list[str],
        Opt("--set", help="override any config key, e.g. --set model.head.hidden=[256] (repeatable)"),
    ] = None,
    layers: Annotated[
        str, Opt(help="rows to show: all | params (layers holding weights) | none (totals only)")
    ] = "all",
    as_json: Annotated[bool, Opt("--json", help="print JSON instead of a table")] = False,
    **flags: Any,
) -> None:
    """Keras-style summary: layer, output shape, parameters, trainable; totals in both conventions.

    PyTorch counts parameters only; Keras also counts batch norm's moving mean/variance as
    non-trainable weights. Layer numbers are what --freeze N counts (layer 1 = the input).
    Examples: cxr summary vgg16 --freeze backbone;  cxr summary --config configs/covid_vgg16_binary.yaml
    """
    from cxrlab.cli.core import build_config
    from cxrlab.config import check_range
    from cxrlab.errors import ConfigError
    from cxrlab.models.summary import summarize

    if (model is None) == (config is None):
        raise ConfigError("give a MODEL name or --config FILE (one of them), e.g. `cxr summary vgg16`")
    if layers not in ("all", "params", "none"):
        raise ConfigError(f"--layers {layers!r}: choose all, params or none")
    check_range("--num-classes", num_classes, 1, 100_000, "a number of classes")
    cfg = build_config(config, {"model.name": model, **overrides(SUMMARY, flags)}, set_)
    findings = None if num_classes else _label_file_findings(cfg)
    classes = num_classes or (len(findings) if findings else len(cfg.data.classes) if cfg.data.classes else 2)
    result = summarize(cfg.model, classes, cfg.data.image_size)
    if as_json:
        extra = {"task": "multilabel", "findings": findings} if findings else {}
        typer.echo(json.dumps({**result.to_dict(), **extra}, indent=2, default=str))
    else:
        typer.echo(result.to_text(layers))
        if findings:
            names = ", ".join(findings)
            typer.echo(f"Multi-label: {len(findings)} outputs, one sigmoid per finding: {names}")


def _label_file_findings(cfg: Any) -> list[str] | None:
    """The findings of a config's multi-label label file (one output each; read without looking for the
    images, ``data.labels.findings`` and ``data.labels.task`` applied), or None for a single-label task."""
    labels = cfg.data.labels
    if not labels.file:
        return None
    from cxrlab.data.index import DatasetIndex
    from cxrlab.data.labels import read_labels
    from cxrlab.data.prepare import apply_task

    read = read_labels(cfg.data.path or ".", labels, check_images=False)
    index = DatasetIndex(read.source, "labels", list(read.classes), [], task=read.task,
                         findings=read.findings)  # fmt: skip
    apply_task(index, labels.task, labels.no_finding)
    return list(index.findings) if index.task == "multilabel" else None


@app.command()
def zoo(
    model: Annotated[str, typer.Argument(help="a pretrained classifier: an xrv/… name from `cxr models`")],
    out: Annotated[
        Path, Opt("--out", "-o", help="run folder to create (must not exist, unless --overwrite)")
    ],
    overwrite: Annotated[bool, Opt(help="replace an existing run folder at --out")] = False,
    as_json: Annotated[bool, Opt("--json", help="print model.json instead of a summary")] = False,
) -> None:
    """Write a run folder holding a pretrained classifier as it is (no training), for zero-shot use.

    torchxrayvision's networks (xrv/…) predict the findings they were trained on. The folder works with
    `cxr evaluate RUN --data DATA --labels FILE` (findings matched by name; --label-map DATA=MODEL for
    other spellings; the unmatched ones are listed), `cxr predict`, `cxr serve` and `cxr explain`.
    Example: cxr zoo xrv/densenet121-res224-nih --out runs/xrv-nih
    """
    from cxrlab.pipeline.pretrained import pretrained_run

    meta = pretrained_run(model, out, overwrite)
    if as_json:
        typer.echo(json.dumps(meta, indent=2))
        return
    typer.echo(
        f"{out}: {model} as {meta['pretrained']['source']} trained it, {len(meta['findings'])} findings: "
        + ", ".join(meta["findings"])
    )
    typer.echo(
        f"next: cxr evaluate {out} --data IMAGES --labels LABELS.csv (zero-shot), cxr predict {out} IMAGE"
    )
