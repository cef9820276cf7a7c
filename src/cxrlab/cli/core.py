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
    labels_config,
    overrides,
    parse_label_map,
    resolved,
    split_list,
    with_config_flags,
)
from cxrlab.errors import ConfigError, CxrError
from cxrlab.explain.methods import method_help

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
    seeds: Annotated[
        str,
        Opt(
            help="train once per seed (0,1,2,3,4 or 0-4) into OUT/seed-S and write OUT/seeds.json/.csv/.md "
            "with mean, std, min and max of every headline test metric"
        ),
    ] = None,
    **flags: Any,
) -> None:
    """Train a classifier and write a run folder with metrics (95% CIs), plots and report.html.

    Example: cxr train --data ../shared/data/covid-challenge --classes covid,normal
    --model mobilenet_v2 --pretrained --freeze backbone --out runs/covid
    """
    import time

    started = time.perf_counter()  # metrics.json's timing.stages.startup: loading torch, Lightning, cxrlab
    from cxrlab.pipeline.train import train as run_train

    if seeds is not None:
        _train_seeds(seeds, out, config, set_, resume, overwrite, quiet, flags)
        return
    if resume is not None:
        metrics = run_train(None, resume, resume=True, progress=not quiet, started=started)  # type: ignore[arg-type]
        _print_summary(resume, metrics)
        return
    if out is None:
        raise ConfigError("--out RUN is required: the folder where the run is written")
    given = overrides(TRAIN, flags)
    cfg = build_config(config, given, set_)
    inputs = (config,) if config else ()  # --overwrite never deletes the folder of the config file
    metrics = run_train(cfg, out, overwrite=overwrite, progress=not quiet, protect=inputs, started=started)
    _print_summary(out, metrics)


def _train_seeds(
    text: str,
    out: Path | None,
    config: Path | None,
    sets: list[str] | None,
    resume: Path | None,
    overwrite: bool,
    quiet: bool,
    flags: dict[str, Any],
) -> None:
    """`cxr train --seeds`: the same config once per seed, then the spread of the headline metrics."""
    from cxrlab.pipeline.seeds import parse_seeds, summary_lines, train_seeds

    if resume is not None:
        raise ConfigError(
            "--seeds and --resume do not go together: resume each interrupted seed's run folder "
            "(OUT/seed-S) on its own, or rerun the group with --overwrite"
        )
    if out is None:
        raise ConfigError("--out GROUP is required with --seeds: the folder that gets one run per seed")
    chosen = parse_seeds(text)
    given = overrides(TRAIN, flags)
    if given.get("train.seed") is not None:
        raise ConfigError("--seed and --seeds do not go together: give the seeds with --seeds only")
    cfg = build_config(config, given, sets)
    inputs = (config,) if config else ()
    result = train_seeds(
        cfg, out, chosen, overwrite=overwrite, progress=not quiet, protect=inputs, echo=typer.echo
    )
    typer.echo(f"\nover {len(chosen)} seeds (mean ± sample std):")
    for line in summary_lines(result):
        typer.echo("  " + line)
    typer.echo(f"written: {out / 'seeds.json'}, {out / 'seeds.csv'}, {out / 'seeds.md'}")


def _print_summary(out: Path, metrics: dict[str, Any]) -> None:
    if not metrics:  # a DDP worker process (rank > 0): rank 0 prints the summary
        return
    t = metrics["test"]  # (the audit's warnings were printed before training started)
    if metrics.get("multilabel"):
        from cxrlab.evaluation.multilabel import summary_line

        typer.echo(f"test {summary_line(t)} · {_command_s(metrics):.1f} s")
        typer.echo(f"report: {Path(out) / 'report.html'}")
        return
    typer.echo(f"test {headline_line(t)} · {_command_s(metrics):.1f} s")
    typer.echo(f"report: {Path(out) / 'report.html'}")
    for warning in metrics.get("warnings") or []:  # a model that predicts one class: the last line
        typer.echo(f"warning: {warning}")


def _command_s(metrics: dict[str, Any]) -> float:
    """The command's wall time (``timing.command_s``: audit, training, evaluation, explain and report)."""
    timing = metrics["timing"]
    return float(timing["command_s"] if "command_s" in timing else timing["total_s"])


def headline_line(t: dict[str, Any]) -> str:
    """``accuracy 0.887 [95% CI 0.806–0.952] at the threshold 0.41 for covid, n=62, AUC 0.970 (argmax
    accuracy 0.500)``: the deployed decision first, argmax beside it, labelled."""
    from cxrlab.stats import ci_text

    op = t.get("operating_point") or {}
    rule = (
        f" at the threshold {op['threshold']:.3g} for {op['positive_class']}"
        if t.get("decision") == "threshold" and op.get("threshold") is not None
        else ""
    )
    auc = t.get("auc")
    auc_text = f"{auc:.3f}" if isinstance(auc, float) and auc == auc else "undefined (one class)"
    argmax = (t.get("argmax") or {}).get("accuracy")
    return (
        f"accuracy {t['accuracy']:.3f} {ci_text(t.get('accuracy_ci95'))}{rule}, n={t['n']}, AUC {auc_text}"
        + (f" (argmax accuracy {argmax:.3f})" if isinstance(argmax, float) else "")
    )


@app.command()
@with_config_flags(EVALUATE)
def evaluate(
    run: Annotated[Path, typer.Argument(help="a run folder written by `cxr train`")],
    data: Annotated[str, Opt(help="evaluate on this dataset instead of the run's test split")] = None,
    classes: Annotated[str, Opt(help="comma-separated classes to evaluate (default: the model's)")] = None,
    label_map: Annotated[str, Opt(help="map the dataset's class names to the model's: SRC=DST,…")] = None,
    out: Annotated[Path, Opt(help="where to write [default: RUN/evaluation or RUN/external]")] = None,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="no progress bars")] = False,
    allow_changed: Annotated[
        bool,
        Opt(
            "--allow-changed",
            help="score the test images of RUN/splits.csv that are still there unchanged (SHA-256), "
            "leaving out missing or changed ones (said in the output and metrics.json); without it they "
            "stop the command",
        ),
    ] = False,
    **flags: Any,
) -> None:
    """Evaluate a trained run (metrics with 95% CIs, plots, report) on its test split or on other data."""
    import time

    started = time.perf_counter()  # metrics.json's timing.stages.startup, as for `cxr train`
    from cxrlab.pipeline.evaluate import evaluate_run
    from cxrlab.runtime import resolve_device

    o = resolved(EVALUATE, flags)
    resolve_device(o["device"])  # a mistyped --device: one line before the run is read or --out is made
    result = evaluate_run(
        run,
        data,
        split_list(classes, "--classes") if classes is not None else None,
        parse_label_map(label_map) if label_map is not None else {},
        out,
        o["device"],
        labels_config(o),
        progress=not quiet,
        allow_changed=allow_changed,
        started=started,
    )
    t = result["test"]
    if result.get("multilabel"):
        from cxrlab.evaluation.multilabel import summary_line

        typer.echo(f"{summary_line(t)} · {_command_s(result):.1f} s")
        if "findings_match" in result:  # external validation: per finding, and what only one side has
            internal = result.get("internal_auc", {})
            from cxrlab.stats import ci_text

            for name, f in t["per_finding"].items():
                auc = "undefined" if f["auc"] is None else f"{f['auc']:.3f}"
                ci = f.get("auc_ci95")
                inside = f" {ci_text(ci)}" if f["auc"] is not None else ""
                own = internal.get(name, {}).get("auc")
                typer.echo(f"  {name}: AUC {auc}{inside}, {f['positives']} positive of {f['n']}"
                           + (f" (run's own test: {own:.3f})" if own is not None else ""))  # fmt: skip
            for note in t.get("notes", []):  # one side only, renames, shared file names, undefined AUCs
                typer.echo(f"note: {note}")
    else:
        typer.echo(f"{headline_line(t)} · {_command_s(result):.1f} s")
    target = Path(out) if out else Path(run) / ("evaluation" if data is None else "external")
    typer.echo(f"report: {target / 'report.html'}")
    for warning in result.get("warnings") or []:
        typer.echo(f"warning: {warning}")


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="a run folder written by `cxr train`")],
    images: Annotated[
        list[str],
        typer.Argument(help="image files, folders (searched recursively) or globs ('scans/**/*.png')"),
    ],
    as_json: Annotated[bool, Opt("--json", help="print JSON instead of a table")] = False,
    out: Annotated[
        Path,
        Opt(
            "--out", "-o", help="write a CSV (image, class, p_<class>…, error) here; with --explain a folder"
        ),
    ] = None,
    overwrite: Annotated[bool, Opt(help="replace an existing --out file")] = False,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="no progress bar")] = False,
    explain: Annotated[
        bool,
        Opt("--explain", help="also a Grad-CAM overlay per image and the lung-attention share (--out DIR)"),
    ] = False,
    method: Annotated[str, Opt(help="with --explain, the " + method_help() + " [default: gradcam]")] = None,
) -> None:
    """Predict the class and class probabilities of each image (binary runs use the saved threshold).

    Unreadable files are named on stderr, one line each, and counted at the end; the others are still
    predicted. With --explain, --out is a folder: predictions.csv (plus lung_share, lung_area,
    heatmap_class, overlay) and an overlay PNG per image, as `cxr explain` makes them.
    Example: cxr predict runs/covid scans/ --out predictions.csv
    """
    from cxrlab.evaluation.inference import expand_inputs, image_run

    lock = explainer = None
    created = out is not None and not out.exists()
    if method is not None and not explain:
        raise ConfigError("--method chooses --explain's heatmap method: add --explain --out DIR")
    if explain:
        from cxrlab.explain.methods import get_method

        get_method(method or "gradcam")  # an unknown --method: one line before anything loads
        if out is None:
            raise ConfigError("--explain writes an overlay per image: give --out DIR (a new or empty folder)")
        from cxrlab.runs import check_out_path

        check_out_path(out)
    elif out is not None and out.exists() and not overwrite:
        raise ConfigError(f"--out {out} already exists; choose another file or pass --overwrite")
    loaded = image_run(run)
    if explain:
        from cxrlab.explain.inline import Explainer
        from cxrlab.runs import claim_folder

        explainer = Explainer(loaded, method=method or "gradcam")
        protect = (Path(loaded.path), *(Path(i) for i in images if Path(i).is_dir()))
        lock = claim_folder(
            out, "predict", ("*.png", "predictions.csv"), "a `cxr predict --explain` folder", overwrite,
            f"{out} is not empty; choose a new --out or add --overwrite", protect=protect,
        )  # fmt: skip
    try:
        _predict(loaded, expand_inputs(images), as_json, out, quiet, explainer)
    except CxrError:
        if explain and created:  # the folder this command made for nothing: gone again
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            lock.release()


def _predict(
    loaded: Any, paths: list[Any], as_json: bool, out: Path | None, quiet: bool, explainer: Any
) -> None:
    """The body of `cxr predict` (``explainer``: --explain's Explainer, or None)."""
    import sys

    from cxrlab.evaluation.inference import iter_predictions

    used: set[str] = set()
    bar = None
    if not quiet and len(paths) > 1:
        from cxrlab.runtime import progress

        bar = progress(desc="predicting", total=len(paths))

    held: list[dict[str, Any]] = []  # unreadable before the first prediction: if none follows, one error line
    good = 0

    def note(r: dict[str, Any]) -> None:
        line = f"unreadable: {r['image']}: {r['error']}"
        (bar.write(line, file=sys.stderr) if bar is not None else typer.echo(line, err=True))

    results: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for part in iter_predictions(loaded, paths):
        if explainer is not None:
            from cxrlab.explain.inline import explain_predictions

            explain_predictions(explainer, part, out, used)
        for r in part:
            if "error" in r:
                (note(r) if good else held.append(r))
                continue
            good += 1
            for h in held:
                note(h)
            held = []
            if not as_json and out is None:
                probs = "  ".join(f"{c}={p:.3f}" for c, p in r["probabilities"].items())
                line = f"{r['image']}\t{r['class']}\t{probs}"
                (bar.write(line) if bar is not None else typer.echo(line))
            if (r.get("ood") or {}).get("in_distribution") is False and not as_json:  # the OOD guard
                why = "; ".join(r["ood"]["reasons"])
                flag = f"outside what this model was validated on: {r['image']}: {why}"
                (bar.write(flag, file=sys.stderr) if bar is not None else typer.echo(flag, err=True))
        results += part
        if bar is not None:
            bar.update(len(part))
    if bar is not None:
        bar.close()
    done = sum("class" in r for r in results)
    bad = len(results) - done
    if done == 0:
        first = results[0] if results else None
        if first is None:
            raise CxrError("no images given")
        more = f" (and {len(results) - 1} more unreadable)" if len(results) > 1 else ""
        raise CxrError(f"no readable image: {first['image']}: {first['error']}{more}")
    if out is not None:
        from cxrlab.runs import write_csv

        ood_fields = ["in_distribution", "ood_score", "ood_threshold", "ood_reasons"]  # the OOD guard
        fields = ["image", "class", *(f"p_{c}" for c in loaded.classes), *ood_fields, "error"]
        extra = ["lung_share", "lung_area", "heatmap_class", "overlay"] if explainer is not None else []
        for r in results:
            ood = r.get("ood") or {}
            verdict = {"in_distribution": ood.get("in_distribution"), "ood_score": ood.get("score"),
                       "ood_threshold": ood.get("threshold"),
                       "ood_reasons": "; ".join(ood.get("reasons") or [])}  # fmt: skip
            rows.append({"image": r["image"], "class": r.get("class", ""), "error": r.get("error", ""),
                         **{f"p_{c}": v for c, v in r.get("probabilities", {}).items()},
                         **{k: "" if v is None else v for k, v in verdict.items()},
                         **{f: "" if r.get(f) is None else r[f] for f in extra}})  # fmt: skip
        write_csv(
            out / "predictions.csv" if explainer is not None else out, rows, fields[:-1] + extra + ["error"]
        )
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    summary = f"predicted {done} image(s)" + (f", {bad} unreadable (named above)" if bad else "")
    if explainer is not None:
        how = f"{explainer.method} at {explainer.layer_name}"
        wrote = f"; wrote {out}/predictions.csv and {done} overlay PNG(s) ({how})"
    else:
        wrote = f"; wrote {out}" if out is not None else ""
    typer.echo(summary + wrote, err=True)


@app.command()
def demo(
    out: Annotated[Path, Opt(help="run folder to write")] = Path("runs/demo"),
    epochs: Annotated[int, Opt(help="epochs [default: the recipe's]")] = None,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Train a small CNN on the bundled PneumoniaMNIST (MedMNIST v2, CC BY 4.0) in under two minutes, with
    the settings of configs/fast_pneumoniamnist.yaml."""
    from cxrlab.demo import run_demo

    metrics = run_demo(out, epochs=epochs, progress=not quiet)
    _print_summary(out, metrics)
