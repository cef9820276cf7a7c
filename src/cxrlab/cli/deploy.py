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
    backend: Annotated[
        str,
        Opt(
            help="inference engine: onnx (the model exported to ONNX at startup, run by onnxruntime), torch, "
            "or auto (onnx when the [export] extra is installed, else torch)"
        ),
    ] = "auto",
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
        explain=explainer, heatmaps=heatmaps, backend=backend.lower(),
    )  # fmt: skip


@app.command()
def node(
    run: Annotated[Path, typer.Argument(help="a run folder written by `cxr train`")],
    out: Annotated[
        Path, Opt("--out", "-o", help="folder for node.log, results.jsonl, failures.jsonl, seen.txt")
    ],
    port: Annotated[int, Opt(help="receive C-STORE on this port (with --allow)")] = None,
    host: Annotated[str, Opt(help="address --port listens on")] = "127.0.0.1",
    ae_title: Annotated[
        str, Opt("--ae-title", help="this node's AE title (the called AE title it accepts)")
    ] = "CXRLAB",
    allow: Annotated[
        str, Opt(help="calling AE titles allowed to send, comma-separated (every other one is rejected)")
    ] = "",
    pacs: Annotated[
        str,
        Opt(help="store the SR and heatmap back by C-STORE to HOST:PORT:AET (default: STOW-RS to --watch)"),
    ] = None,
    watch: Annotated[
        str,
        Opt(
            help="poll this DICOMweb server (QIDO-RS) for new images, fetch them (WADO-RS), e.g. "
            "http://127.0.0.1:8042/dicom-web"
        ),
    ] = None,
    poll: Annotated[float, Opt(help="seconds between two --watch polls")] = 10.0,
    modalities: Annotated[str, Opt(help="with --watch, the modalities processed, comma-separated")] = "CR,DX",
    retries: Annotated[int, Opt(help="retries of a failed fetch or store before it is reported")] = 3,
    backoff: Annotated[float, Opt(help="seconds before the first retry (doubled at each next one)")] = 2.0,
    once: Annotated[bool, Opt(help="with --watch: poll once, process what is new, exit")] = False,
    heatmap: Annotated[bool, Opt(help="a Grad-CAM overlay as a Secondary Capture beside the SR")] = True,
    method: Annotated[str, Opt(help=method_help())] = "gradcam",
) -> None:
    """A model as a DICOM node: images in from a PACS, a Structured Report and a heatmap back into the study.

    In: C-STORE to --port from the AE titles in --allow, and/or a DICOMweb server watched with --watch.
    Out, into the image's own study: a Comprehensive SR (findings, probabilities, the operating threshold,
    model name and run id, the out-of-distribution verdict, a reference to the image) and the heatmap as a
    Secondary Capture, sent by C-STORE to --pacs or by STOW-RS to the --watch server. Failed fetches and
    stores are retried with backoff, then logged and listed in OUT/failures.jsonl; logs never hold patient
    names or ids. Examples, with Orthanc on 127.0.0.1 (docs/serving.md):

    \b
    cxr node runs/covid --out node-out --port 11112 --allow ORTHANC --pacs 127.0.0.1:4242:ORTHANC
    cxr node runs/covid --out node-out --watch http://127.0.0.1:8042/dicom-web --once
    """
    import signal

    from cxrlab._optional import require

    for module in ("pynetdicom", "highdicom", "dicomweb_client", "pydicom"):  # no [pacs]: one line, first
        require(module, "pacs", "cxr node")
    from cxrlab.deploy.node import Node, NodeOptions, Peer, setup_logging
    from cxrlab.evaluation.inference import image_run

    opts = NodeOptions(
        out=out, port=port, host=host, ae_title=ae_title,
        allow=tuple(a.strip() for a in allow.split(",") if a.strip()),
        pacs=Peer.parse(pacs) if pacs else None, watch=watch, poll_s=poll,
        modalities=tuple(m.strip().upper() for m in modalities.split(",") if m.strip()), retries=retries,
        backoff_s=backoff, once=once,
    )  # fmt: skip
    loaded = image_run(run)
    explainer = None
    if heatmap:
        from cxrlab.explain.inline import Explainer

        explainer = Explainer(loaded, method=method)
    the_node = Node(loaded, opts, explainer)
    setup_logging(out, echo=lambda line: typer.echo(line, err=True))
    previous = signal.signal(signal.SIGTERM, lambda *_: the_node.stop())  # finish the queue, then exit
    try:
        the_node.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
