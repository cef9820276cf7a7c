"""`cxr audit`: leakage and shortcut checks of a dataset, before any training."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from cxrlab.cli import app
from cxrlab.cli.options import AUDIT, labels_config, resolved, with_config_flags

Opt = typer.Option


#: Folder names that say nothing about the dataset: the default output folder is named after the first
#: folder above DATA that is not one of them (``nih-1000/images`` → ``audits/nih-1000``).
GENERIC_NAMES = frozenset(
    {"images", "image", "imgs", "img", "png", "pngs", "jpg", "jpeg", "dicom", "dcm", "files", "data",
     "dataset", "datasets", "all", "train", "val", "valid", "test", "raw"}
)  # fmt: skip


def default_out(data: str | Path) -> Path:
    """``audits/<dataset name>``: DATA's name (a file's without its suffix), or, when that is a generic name
    such as ``images``, the name of the nearest folder above it that is not."""
    path = Path(os.path.abspath(data))
    names = [path.stem if path.suffix.lower() in (".npz", ".csv", ".gz") else path.name]
    names += [p.name for p in path.parents]
    name = next((n for n in names if n and n.lower() not in GENERIC_NAMES), None)
    return Path("audits") / (name or names[0] or "data")


@app.command()
@with_config_flags(AUDIT, before="out")
def audit(
    data: Annotated[
        str | None,
        typer.Argument(
            help="folder (train/val/test or class subfolders), MedMNIST .npz, or the image folder of "
            "--labels (or give it as --data)",
            show_default=False,
        ),
    ] = None,
    data_option: Annotated[
        str | None, Opt("--data", help="the dataset, as `cxr train --data` takes it (same as DATA)")
    ] = None,
    out: Annotated[
        Path,
        Opt(
            "--out",
            "-o",
            help="folder for audit.json, audit.html and plots/ [default: audits/<dataset name>: DATA's "
            "name, or the nearest folder above it when DATA is a generic name such as images/ "
            "(nih-1000/images → audits/nih-1000)]",
        ),
    ] = None,
    max_distance: Annotated[
        int, Opt(help="near duplicate: at most this many of 256 perceptual-hash bits differ")
    ] = 24,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="no progress bars")] = False,
    **flags: Any,
) -> None:
    """Audit a dataset: counts, unreadable files, exact and near duplicates within and across splits,
    patients in two splits, acquisition properties per class, and metadata-only / image-statistics
    baselines next to chance. Writes audit.json and audit.html; prints the warnings.

    Example: cxr audit --data ../shared/data/covid-challenge --classes covid,normal --out audits/covid
    """
    import shutil

    from cxrlab.audit import audit_dataset, write_audit
    from cxrlab.errors import ConfigError
    from cxrlab.runs import check_outside_inputs, check_writable

    if data is not None and data_option is not None and data != data_option:
        raise ConfigError(f"two datasets given ({data} and --data {data_option}): give one")
    data = data if data is not None else data_option
    if data is None:
        raise ConfigError("give the dataset to audit: cxr audit --data FOLDER (or cxr audit FOLDER)")
    o = resolved(AUDIT, flags)
    seed = o["seed"]
    if not 0 <= max_distance <= 256:
        raise ConfigError(
            f"--max-distance {max_distance}: give a number of differing hash bits from 0 to 256 (default 24)"
        )
    if not 0 <= seed < 2**32:
        raise ConfigError(f"--seed {seed}: give a seed from 0 to 2**32 - 1")
    target = out or default_out(data)
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
            progress=not quiet,
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
