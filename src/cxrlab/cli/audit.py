"""`cxr audit`: leakage and shortcut checks of a dataset, before any training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrlab.cli import app

Opt = typer.Option


@app.command()
def audit(
    data: Annotated[str, typer.Argument(help="folder (train/val/test or class subfolders) or MedMNIST .npz")],
    classes: Annotated[
        str, Opt(help="comma-separated subset and order of classes, e.g. covid,normal [default: all]")
    ] = None,
    label_map: Annotated[str, Opt(help="rename classes: SRC=DST,… (e.g. COVID=covid)")] = None,
    out: Annotated[
        Path,
        Opt("--out", "-o", help="folder for audit.json, audit.html and plots/ [default: audits/<DATA name>]"),
    ] = None,
    group_pattern: Annotated[
        str,
        Opt(
            help="regex on file names whose first group is a patient id (the default reads Kermany's "
            "personN_); an empty string: no patient ids"
        ),
    ] = r"(person\d+)[_-]",
    patient_csv: Annotated[
        Path,
        Opt(help="CSV mapping files to patients (e.g. ieee8023 metadata.csv); overrides --group-pattern"),
    ] = None,
    file_column: Annotated[
        str, Opt(help="CSV column with the file name or path relative to DATA")
    ] = "filename",
    patient_column: Annotated[str, Opt(help="CSV column with the patient id")] = "patientid",
    seed: Annotated[
        int, Opt(help="seed of the splits carved when DATA lacks val/ or test/ (as `cxr train`)")
    ] = 0,
    max_distance: Annotated[
        int, Opt(help="near duplicate: at most this many of 256 perceptual-hash bits differ")
    ] = 24,
    cache_dir: Annotated[
        str, Opt(help="decoded-image cache [default: $CXRLAB_CACHE_DIR or ~/.cache/cxrlab]")
    ] = None,
) -> None:
    """Audit a dataset: counts, unreadable files, exact and near duplicates within and across splits,
    patients in two splits, acquisition properties per class, and metadata-only / image-statistics
    baselines next to chance. Writes audit.json and audit.html; prints the warnings.

    Example: cxr audit ../shared/data/covid-challenge --classes covid,normal --out audits/covid
    """
    import shutil

    from cxrlab.audit import audit_dataset, write_audit
    from cxrlab.cli.core import parse_label_map
    from cxrlab.errors import ConfigError
    from cxrlab.runs import check_writable

    if not 0 <= max_distance <= 256:
        raise ConfigError(
            f"--max-distance {max_distance}: give a number of differing hash bits from 0 to 256 (default 24)"
        )
    if not 0 <= seed < 2**32:
        raise ConfigError(f"--seed {seed}: give a seed from 0 to 2**32 - 1")
    target = out or Path("audits") / (Path(data).stem or "data")
    if target.exists() and not target.is_dir():
        raise ConfigError(f"--out {target} is an existing file; give a folder for audit.json and audit.html")
    existed = target.exists()
    check_writable(target)  # fail before the work, not after it
    try:
        result = audit_dataset(
            data,
            [c.strip() for c in classes.split(",") if c.strip()] if classes else None,
            parse_label_map(label_map),
            group_pattern or None,
            patient_csv,
            file_column,
            patient_column,
            seed,
            max_distance,
            cache_dir,
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
