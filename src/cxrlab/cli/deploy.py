"""`cxr export` and `cxr serve`: the model in use outside cxrlab."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrlab.cli import app
from cxrlab.explain.methods import method_help

Opt = typer.Option


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="a run folder written by `cxr train`")],
    out: Annotated[Path, Opt("--out", "-o", help="the file to write (model.onnx, model.pt)")],
    fmt: Annotated[str, Opt("--format", "-f", help="onnx or torchscript")] = "onnx",
    overwrite: Annotated[bool, Opt(help="replace an existing --out file")] = False,
    tolerance: Annotated[
        float, Opt(help="largest max |Δp| allowed between the export and cxrlab on the parity images")
    ] = 1e-4,
) -> None:
    """Export a run's model (ONNX or TorchScript) with its preprocessing contract embedded as metadata.

    The file takes grey images scaled to [0, 1], shape (N, 1, H, W), and returns calibrated class
    probabilities; a parity check on 32 test images of the run must agree with cxrlab's own inference
    within 1e-4 or nothing is written. Example: cxr export runs/covid --format onnx --out covid.onnx
    """
    from cxrlab.deploy.export import export_run

    result = export_run(run, fmt.lower(), out, overwrite=overwrite, tolerance=tolerance)
    par = result["parity"]
    typer.echo(
        f"parity on {par['n']} test images: max |Δp| = {par['max_abs_diff']:.2e} (limit {par['tolerance']:g})"
    )
    size = result["input"]["image_size"]
    typer.echo(
        f"wrote {out} ({fmt.lower()}, {result['bytes'] / 1e6:.1f} MB, run {result['run_id']}): input float32 "
        f"(N, 1, {size}, {size}) grey in [0, 1] → probabilities of {', '.join(result['classes'])}"
    )


@app.command()
def serve(
    run: Annotated[Path, typer.Argument(help="a run folder written by `cxr train`")],
    host: Annotated[str, Opt(help="address to listen on (0.0.0.0: every interface; then use --token)")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, Opt(help="port to listen on")] = 8000,
    token: Annotated[
        str, Opt(help="require 'Authorization: Bearer TOKEN' on /v1 routes [env: CXRLAB_SERVE_TOKEN]")
    ] = None,
    max_upload_mb: Annotated[float, Opt(help="largest upload accepted, in MB (413 above)")] = 20.0,
    decode_workers: Annotated[int, Opt(help="threads decoding uploads at once")] = 2,
    heatmaps: Annotated[
        bool,
        Opt(
            help="a Grad-CAM overlay and the lung-attention share in every response (?heatmap=false skips); "
            "without it, only on POST /v1/predict?heatmap=true"
        ),
    ] = False,
    method: Annotated[str, Opt(help=method_help())] = "gradcam",
    layer: Annotated[str, Opt(help="heatmap target module (default: the model family's)")] = None,
) -> None:
    """Serve a run's model over HTTP: POST /v1/predict, GET /v1/model, /healthz, /docs and a web page at /.

    Example: cxr serve runs/covid --port 8000 --heatmaps, then open http://127.0.0.1:8000/
    """
    from cxrlab._optional import require

    for module in ("fastapi", "uvicorn", "python_multipart"):  # no [serve] extra: one line, first
        require(module, "serve", "cxr serve")
    from cxrlab.deploy.serve import serve as run_serve
    from cxrlab.explain.inline import Explainer
    from cxrlab.explain.methods import get_method

    get_method(method)  # an unknown --method: one line before anything loads

    def explainer(loaded):
        return Explainer(loaded, method=method, layer=layer)

    run_serve(
        run, host, port, token, max_upload_mb, decode_workers, announce=lambda s: typer.echo(s, err=True),
        explain=explainer, heatmaps=heatmaps,
    )  # fmt: skip
