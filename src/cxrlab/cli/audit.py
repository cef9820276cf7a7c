"""`cxr audit`: leakage and shortcut checks of a dataset, before any training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cxrlab.cli import app
from cxrlab.cli.options import AUDIT, labels_config, resolved, with_config_flags

Opt = typer.Option


@app.command()
@with_config_flags(AUDIT, before="out")
def audit(
    data: Annotated[str, typer.Argument(help="folder (train/val/test or class subfolders) or MedMNIST .npz")],
    out: Annotated[
        Path,
        Opt("--out", "-o", help="folder for audit.json, audit.html and plots/ [default: audits/<DATA name>]"),
    ] = None,
    max_distance: Annotated[
        int, Opt(help="near duplicate: at most this many of 256 perceptual-hash bits differ")
    ] = 24,
    **flags: Any,
) -> None:
    """Audit a dataset: counts, unreadable files, exact and near duplicates within and across splits,
    patients in two splits, acquisition properties per class, and metadata-only / image-statistics
    baselines next to chance. Writes audit.json and audit.html; prints the warnings.

    Example: cxr audit ../shared/data/covid-challenge --classes covid,normal --out audits/covid
    """
    import shutil

    from cxrlab.audit import audit_dataset, write_audit
    from cxrlab.errors import ConfigError
    from cxrlab.runs import check_outside_inputs, check_writable

    o = resolved(AUDIT, flags)
    seed = o["seed"]
    if not 0 <= max_distance <= 256:
        raise ConfigError(
            f"--max-distance {max_distance}: give a number of differing hash bits from 0 to 256 (default 24)"
        )
    if not 0 <= seed < 2**32:
        raise ConfigError(f"--seed {seed}: give a seed from 0 to 2**32 - 1")
    target = out or Path("audits") / (Path(data).stem or "data")
    if target.exists() and not target.is_dir():
        raise ConfigError(f"--out {target} is an existing file; give a folder for audit.json and audit.html")
    check_outside_inputs(target, (data,))
    existed = target.exists()
    check_writable(target)  # fail before the work, not after it
    try:
        result = audit_dataset(
            data,
            o["classes"],
            o["label_map"],
            o["group_pattern"] or None,  # an empty --group-pattern: no patient ids
            o["patient_csv"],
            o["file_column"],
            o["patient_column"],
            seed,
            max_distance,
            o["cache_dir"],
            labels_config(o),
        )
    except BaseException:
        if not existed:
            shutil.rmtree(target, ignore_errors=True)
        raise
    json_path, html_path = write_audit(result, target)
    for w in result["warnings"]:
        typer.secho(f"warning: {w}", fg="yellow", err=True)
    m, i = result["metadata_baseline"], result["image_baseline"]
    if "accuracy" in m:
        typer.echo(
            f"metadata-only baseline: accuracy {m['accuracy']:.3f}, balanced {m['balanced_accuracy']:.3f} "
            f"(chance {m['chance']:.3f} / {m['chance_balanced']:.3f})"
        )
    if "accuracy" in i:
        typer.echo(
            f"image-statistics baseline: accuracy {i['accuracy']:.3f}, balanced {i['balanced_accuracy']:.3f}"
        )
    typer.echo(f"{len(result['warnings'])} warning(s) · {result['seconds']:.1f} s · {json_path}")
    typer.echo(f"report: {html_path}")
