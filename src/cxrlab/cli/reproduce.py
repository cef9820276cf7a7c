"""`cxr reproduce`: the five reports cxrlab grew from, run end to end and set side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrlab.cli import app

Opt = typer.Option


@app.command()
def reproduce(
    report: Annotated[
        list[str] | None,
        typer.Argument(
            help="report number(s) 000–004 (0–4 works), or all; leave out with --list", show_default=False
        ),
    ] = None,
    data_root: Annotated[
        Path,
        Opt("--data-root", help="folder holding covid-challenge/ and kermany-224/ (e.g. ../shared/data)"),
    ] = None,
    out: Annotated[
        Path, Opt("--out", "-o", help="folder for reproduce.html/.md/.json and one folder per report")
    ] = None,
    budget: Annotated[
        str,
        Opt(
            help="quick: minutes on 2 CPU cores (fewer epochs/images, stated per experiment) "
            "| full: the reports' settings"
        ),
    ] = "quick",
    seed: Annotated[int, Opt(help="random seed of every run")] = 0,
    list_: Annotated[bool, Opt("--list", help="list the reports and their experiments, run nothing")] = False,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="no progress output")] = False,
) -> None:
    """Reproduce the reports cxrlab grew from: run each report's experiments in order (recipes, sweeps,
    autoencoder, DCGAN) and write one document laid out like the reports, with each printed number beside
    cxrlab's value and its 95% CI, the wall time here beside the report's stated time, and the same plots.
    Running again into the same --out reuses finished experiments (an interrupted run resumes).

    Example: cxr reproduce 000 --data-root ../shared/data --out reproduce --budget quick
    """
    from cxrlab.config import check_seed_and_lr
    from cxrlab.errors import ConfigError
    from cxrlab.reproduce import BUDGETS, load_catalog, select_reports
    from cxrlab.reproduce import reproduce as run

    if budget not in BUDGETS:  # flags are checked before anything is listed or run
        raise ConfigError(f"--budget {budget!r}: give {' or '.join(BUDGETS)}")
    check_seed_and_lr(seed)
    if list_:
        for rep in select_reports(report or ["all"]):
            print(f"{rep.id}  {rep.title}")
            for exp in rep.experiments:
                print(f"     {exp.id:<32} {exp.kind:<11} {exp.recipe or ', '.join(exp.recipes) or ''}")
        return
    if not report:
        raise ConfigError(
            f"give a report ({', '.join(load_catalog())} or all), "
            "e.g. cxr reproduce 000 --data-root DIR --out DIR"
        )
    if data_root is None or out is None:
        raise ConfigError("give --data-root (the folder holding covid-challenge/ and kermany-224/) and --out")
    doc = run(report, data_root, out, budget=budget, seed=seed, progress=not quiet)
    failed = [k for k, r in doc["results"].items() if r.get("status") == "failed"]
    print(
        f"wrote {out / 'reproduce.html'} and {out / 'reproduce.md'}"
        + (f"; {len(failed)} experiment(s) failed: {', '.join(failed)}" if failed else "")
    )
