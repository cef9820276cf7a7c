"""`cxr explain` (heatmaps + lung-attention score) and `cxr lungs train` (thin: logic in cxrlab.explain)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrlab.cli import app
from cxrlab.explain.methods import method_help

Opt = typer.Option
Arg = typer.Argument

lungs_app = typer.Typer(
    help="The lung-segmentation model behind the lung-attention score of `cxr explain`.\n\n"
    "cxrlab ships one (trained on covid-ieee); `cxr lungs train` trains your own.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
app.add_typer(lungs_app, name="lungs")


@lungs_app.command("train")
def lungs_train(
    data: Annotated[Path, Opt(help="a folder with images/, masks/ (same names) and labels.csv (patientid)")],
    out: Annotated[
        Path, Opt("--out", "-o", help="folder for lungs.safetensors, lungs.json, heldout_dice.csv")
    ],
    size: Annotated[int, Opt(help="input size in px (multiple of 8)")] = 128,
    epochs: Annotated[int, Opt(help="passes over the training patients' images")] = 40,
    width: Annotated[int, Opt(help="U-Net base width (channels of its first block)")] = 8,
    seed: Annotated[int, Opt(help="seed of the patient split and of training")] = 0,
    overwrite: Annotated[bool, Opt(help="replace an earlier `cxr lungs train` folder")] = False,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="only the result line")] = False,
) -> None:
    """Train a tiny lung-segmentation U-Net on image/mask pairs, holding out 20% of the patients.

    Example: cxr lungs train --data ../shared/data/covid-ieee --out lungs
    """
    from cxrlab.explain.lungs import train_lungs

    card = train_lungs(
        data, out, size=size, epochs=epochs, base=width, seed=seed, overwrite=overwrite,
        log=(lambda s: None) if quiet else (lambda s: typer.echo(s, err=True)),
    )  # fmt: skip
    d = card["dice_heldout"]
    typer.echo(
        f"held-out Dice {d['mean']:.3f} (median {d['median']:.3f}, min {d['min']:.3f}) on {d['n_images']} "
        f"images of {d['n_patients']} patients; wrote {out}/lungs.safetensors and lungs.json "
        f"({card['parameters']:,} parameters)"
    )


@app.command()
def explain(
    run: Annotated[Path, Arg(help="a run folder written by `cxr train`")],
    images: Annotated[list[str], Arg(help="image files, folders (searched recursively) or globs")],
    out: Annotated[Path, Opt("--out", "-o", help="folder for the overlays, JSON files and summary.json")],
    method: Annotated[str, Opt(help=method_help())] = "gradcam",
    layer: Annotated[
        str, Opt(help="target module name (default: the model family's, from the registry; e.g. backbone)")
    ] = None,
    target: Annotated[
        str, Opt("--class", help="explain this class (default: each image's predicted class)")
    ] = None,
    masks: Annotated[
        Path, Opt(help="folder of lung masks named like the images (override the shipped segmenter)")
    ] = None,
    segmenter: Annotated[
        Path, Opt(help="lungs.safetensors from `cxr lungs train` (default: the one shipped with cxrlab)")
    ] = None,
    min_share: Annotated[float, Opt(help="warn when a class's mean lung share is below this")] = 0.5,
    overwrite: Annotated[bool, Opt(help="replace an earlier `cxr explain` folder")] = False,
) -> None:
    """Where the model looks: a heatmap per image (overlay PNG + JSON) and the lung-attention score — the
    share of each heatmap's mass inside the lung fields, per image and per class with a 95% CI.

    Example: cxr explain runs/covid ../shared/data/covid-challenge/test --out explain/covid
    """
    from cxrlab.explain.explain import explain as run_explain

    summary = run_explain(
        run, images, out, method=method, layer=layer, target=target, masks=masks, segmenter=segmenter,
        min_share=min_share, overwrite=overwrite, warn=lambda s: typer.echo(s, err=True),
    )  # fmt: skip
    for what, groups in (("class", summary["by_class"]), ("folder", summary["by_folder"])):
        for name, s in groups.items():
            empty = f", {s['empty']} empty heatmaps" if s["empty"] else ""
            if s["lung_share"] is None:
                typer.echo(f"{what} {name}: no lung share (all {s['empty']} heatmaps empty)")
                continue
            ci = f"95% CI {s['ci95'][0]:.3f}-{s['ci95'][1]:.3f}" if s.get("ci95") else "CI not estimable"
            typer.echo(
                f"{what} {name}: lung share {s['lung_share']:.3f} ({ci}; lung area {s['lung_area']:.3f}; "
                f"n={s['n']}{empty})"
            )
    for w in summary["warnings"]:
        typer.echo(f"warning: {w}", err=True)
    skipped = f", {summary['skipped']} skipped" if summary["skipped"] else ""
    typer.echo(
        f"explained {summary['images']} images ({summary['method']} at {summary['layer']}{skipped}); "
        f"wrote {out}/summary.json, explain.csv and an overlay PNG + JSON per image"
    )
