"""`cxr prepare`: decode a dataset once into the cache's memory-mapped store, without training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cxrlab.cli import app
from cxrlab.cli.options import TRAIN, overrides, with_config_flags

Opt = typer.Option


@app.command()
@with_config_flags(TRAIN, before="set_")
def prepare(
    config: Annotated[Path, Opt("--config", "-c", help="YAML config; flags below override it")] = None,
    set_: Annotated[
        list[str], Opt("--set", help="override any config key: --set data.val_fraction=0.2 (repeatable)")
    ] = None,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="no progress bar")] = False,
    **flags: Any,
) -> None:
    """Build the decoded-image store of a dataset (one memory-mapped file per split in the cache) and
    stop: `cxr train` with the same data flags (--data, --classes, --image-size or --model, --seed,
    fractions, --cache-dir) then decodes nothing. An interrupted build resumes where it stopped.
    Use it to pre-build the store once before a multi-process or multi-node job.

    Example: cxr prepare --data ../shared/data/covid-challenge --image-size 224 --cache-dir /scratch/cxr
    """
    from cxrlab.cli.core import build_config
    from cxrlab.data.prepare import prepare_data
    from cxrlab.models.registry import get_spec

    cfg = build_config(config, overrides(TRAIN, flags), set_)
    size = cfg.data.image_size or get_spec(cfg.model.name).input_size
    data = prepare_data(cfg.data, size, cfg.train.seed, progress=not quiet)
    for split, images in data.images.items():
        where = getattr(images, "filename", None) or "in memory (no usable cache: nothing stored)"
        typer.echo(f"{split}: {len(images)} images, {size}×{size} → {where}")
    if data.codes is not None:
        typer.echo("autoencoder codes: nothing to decode")
    if data.index.skipped:
        typer.echo(f"{len(data.index.skipped)} unreadable file(s) left out, e.g. {data.index.skipped[0][0]}: "
                   f"{data.index.skipped[0][1]}", err=True)  # fmt: skip
    typer.echo(f"decoded or read in {data.decode_s:.1f} s")
