"""``cxr bench``: training and inference throughput per model, device and precision.

Each (model, device, precision) case runs in a **fresh Python process**, so its peak memory is
its own. On CPU the numbers are the process's resident-set high-water mark (``getrusage``
``ru_maxrss``, what the operating system had to provide): ``base_mb`` after importing torch and
building the model and one batch, ``infer_peak_mb`` after timing inference, ``train_peak_mb``
after timing training (it includes inference's peak and library code paged in by the first
backward pass, so compare it between models rather than read it as tensor bytes). On CUDA they
are ``torch.cuda`` allocator figures (tensors only): ``memory_allocated`` after building, then
``max_memory_allocated`` per phase.

``--config FILE`` times a recipe's model exactly as ``cxr train`` builds it from that config: the
model, its head, ``model.freeze`` (only the parameters that train get gradients and optimiser
state), ``data.image_size``, ``model.in_channels``, ``train.batch_size``, ``train.precision``
(``auto`` resolved per device as training does) and the number of ``data.classes``. The bench
row names the config. The frozen-backbone fast path (features cached once, only the head trains)
is not simulated: a frozen backbone still runs forward at every timed step.

Inputs are real radiographs: the bundled PneumoniaMNIST test images (MedMNIST v2, CC BY 4.0),
resized to the model's input size. Models start from random weights (speed does not depend on
the weights). Training steps mirror ``cxr train`` (Adam, cross-entropy, autocast for bf16/fp16,
contiguous memory); inference mirrors ``cxr evaluate`` (eval mode, ``channels_last``,
``inference_mode``).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cxrlab.errors import CxrError
from cxrlab.runs import atomic_write, check_writable, write_csv

PRECISIONS = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}
LIGHTNING_PRECISIONS = {"32": "fp32", "bf16-mixed": "bf16", "16-mixed": "fp16"}
DEFAULT_MODELS = ["mobilenet_v2", "resnet18", "small_cnn"]
BENCH_FIELDS = [
    "config",
    "model",
    "device",
    "device_name",
    "precision",
    "batch_size",
    "image_size",
    "params",
    "trainable_params",
    "freeze",
    "train_img_s",
    "train_s_per_step",
    "train_s_per_epoch",
    "dataset_size",
    "infer_img_s",
    "base_mb",
    "infer_peak_mb",
    "train_peak_mb",
    "memory_measure",
    "threads",
]


def available_devices() -> dict[str, str]:
    """Devices present on this machine, with a human name."""
    import platform

    import torch

    found = {"cpu": platform.processor() or platform.machine()}
    if torch.cuda.is_available():
        found["cuda"] = torch.cuda.get_device_name(0)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found["mps"] = "Apple GPU"
    return found


def _images(n: int, size: int, channels: int, mean, std):
    """``n`` real radiographs from the bundled PneumoniaMNIST, resized and normalised."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from cxrlab.data.bundled import bundled_pneumoniamnist

    with np.load(bundled_pneumoniamnist()) as z:
        raw = z["test_images"]
        labels = z["test_labels"].reshape(-1)
    idx = np.arange(n) % len(raw)
    x = torch.from_numpy(raw[idx]).float().div(255).unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).expand(-1, channels, -1, -1)
    m = torch.tensor(mean[:channels] if len(mean) >= channels else mean * channels).view(1, -1, 1, 1)
    s = torch.tensor(std[:channels] if len(std) >= channels else std * channels).view(1, -1, 1, 1)
    return ((x - m) / s).contiguous(), torch.from_numpy(labels[idx].astype(np.int64))


def _maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def bench_case(case: dict[str, Any]) -> dict[str, Any]:
    """Measure one case in this process (call through :func:`run_bench` for isolated memory)."""
    import torch

    from cxrlab.config import ModelConfig, RunConfig
    from cxrlab.models import build_model, get_spec, resolve_channels
    from cxrlab.runtime import prepare_for_inference, resolve_precision

    device, precision = case["device"], case["precision"]
    steps, warmup = case["steps"], case["warmup"]
    if case.get("config") is not None:  # a recipe: its model, head, freeze, size, channels, batch
        run_cfg = RunConfig.from_dict(case["config"])
        cfg = run_cfg.model.model_copy(update={"pretrained": False})
        bs = case["batch_size"] or run_cfg.train.batch_size
        size = case.get("image_size") or run_cfg.data.image_size
        if precision is None:
            precision = LIGHTNING_PRECISIONS.get(resolve_precision(run_cfg.train.precision, device), "fp32")
    else:
        cfg = ModelConfig(name=case["model"], pretrained=False)
        bs, size = case["batch_size"], case.get("image_size")
    model_name = cfg.name
    spec = get_spec(model_name)
    size = size or spec.input_size
    torch.manual_seed(0)
    model = build_model(cfg, case["num_classes"], size).to(device)
    channels = resolve_channels(spec, cfg)
    x, y = _images(bs, size, channels, spec.mean, spec.std)
    y = y % case["num_classes"]
    x, y = x.to(device), y.to(device)
    dtype = getattr(torch, PRECISIONS[precision]) if PRECISIONS[precision] else None
    cuda = device == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def autocast():
        return torch.autocast(device_type=device, dtype=dtype or torch.float32, enabled=dtype is not None)

    # ------------------------------------------------------------------ inference
    net = prepare_for_inference(model, device)
    xi = x.contiguous(memory_format=torch.channels_last)
    base = torch.cuda.memory_allocated() / 2**20 if cuda else _maxrss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        for _ in range(warmup):
            with autocast():
                net(xi)
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            with autocast():
                net(xi)
        sync()
        infer_s = (time.perf_counter() - t0) / steps
    infer_peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _maxrss_mb()

    # ------------------------------------------------------------------ training
    model = model.to(memory_format=torch.contiguous_format).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and precision == "fp16")
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast():
            out = model(x)
            out = out[0] if isinstance(out, tuple) else out
            if out.shape[1] == 1:  # sigmoid head: one logit for two classes
                loss = torch.nn.functional.binary_cross_entropy_with_logits(out[:, 0].float(), y.float())
            else:
                loss = torch.nn.functional.cross_entropy(out.float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    train_s = (time.perf_counter() - t0) / steps
    train_peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _maxrss_mb()
    n = case["dataset_size"]
    return {
        "config": case.get("config_name") or "",
        "model": model_name,
        "device": device,
        "device_name": available_devices().get(device, device),
        "precision": precision,
        "batch_size": bs,
        "image_size": size,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "freeze": cfg.freeze,
        "train_img_s": round(bs / train_s, 2),
        "train_s_per_step": round(train_s, 4),
        "train_s_per_epoch": round(math.ceil(n / bs) * train_s, 2),
        "dataset_size": n,
        "infer_img_s": round(bs / infer_s, 2),
        "base_mb": round(base, 1),
        "infer_peak_mb": round(infer_peak, 1),
        "train_peak_mb": round(train_peak, 1),
        "memory_measure": "torch.cuda allocator (tensors)" if cuda else "process peak RSS (ru_maxrss)",
        "threads": torch.get_num_threads(),
    }


def _worker() -> None:
    """Subprocess entry: read a case as JSON on stdin, print the result as the last stdout line."""
    case = json.loads(sys.stdin.read())
    try:
        result = bench_case(case)
    except Exception as exc:  # noqa: BLE001 - reported as a skipped case with its reason
        result = {"error": f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    print(json.dumps(result))


def _run_isolated(case: dict[str, Any], timeout: float) -> dict[str, Any]:
    code = "from cxrlab.experiments.bench import _worker; _worker()"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps(case),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"took longer than {timeout:.0f} s; lower --steps or --batch-size"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"worker failed ({proc.returncode}): {tail}"}
    return json.loads(lines[-1])


BENCH_OUTPUTS = ("bench.csv", "bench.md")


def run_bench(
    models: list[str] | None = None,
    devices: list[str] | None = None,
    precisions: list[str] | None = None,
    batch_size: int | None = None,
    image_size: int | None = None,
    steps: int = 10,
    warmup: int = 2,
    dataset_size: int = 316,
    num_classes: int = 4,
    out: str | Path | None = None,
    timeout: float = 900,
    progress: bool = True,
    configs: list[str | Path] | None = None,
) -> dict[str, Any]:
    """Benchmark every model × device × precision, and every ``configs`` recipe × device (at the
    config's precision unless ``precisions`` is given); skipped cases are listed with the reason.

    ``models`` defaults to :data:`DEFAULT_MODELS` when no config is given. ``batch_size`` and
    ``image_size`` default to 32 and the model's own size, or to the config's values.
    Writes ``out/bench.csv`` and ``out/bench.md`` when ``out`` is given.
    """
    from cxrlab.config import RunConfig
    from cxrlab.models import get_spec
    from cxrlab.runs import check_out_folder

    if out is not None:  # before minutes of measuring, not after
        check_out_folder(Path(out), BENCH_OUTPUTS)
    recipes = [(Path(c), RunConfig.load(c)) for c in configs or []]  # bad files fail at once
    models = list(models) if models else ([] if recipes else DEFAULT_MODELS)
    devices = devices or ["cpu", "cuda"]
    for m in models + [cfg.model.name for _, cfg in recipes]:
        get_spec(m)  # unknown names fail at once, with the list of choices
    bad = [p for p in precisions or [] if p not in PRECISIONS]
    if bad:
        raise CxrError(f"--precision {','.join(bad)}: choose from {', '.join(PRECISIONS)}")
    known = {"cpu", "cuda", "mps"}
    if any(d not in known for d in devices):
        raise CxrError(f"--devices {','.join(devices)}: choose from {', '.join(sorted(known))}")
    from cxrlab.config import MAX_BATCH, check_range

    check_range("--batch-size", batch_size, 1, MAX_BATCH, "a batch size")
    check_range("--image-size", image_size, 8, 4096, "an input size in pixels")
    check_range("--steps", steps, 1, 100_000, "a number of timed steps")
    check_range("--warmup", warmup, 0, 100_000, "a number of warm-up steps")
    check_range("--dataset-size", dataset_size, 1, 10**9, "a number of training images")
    check_range("--num-classes", num_classes, 1, 100_000, "a number of classes")
    common = {"steps": steps, "warmup": warmup, "dataset_size": dataset_size, "image_size": image_size}
    planned: list[dict[str, Any]] = [
        {**common, "model": m, "precision": p, "batch_size": batch_size or 32, "num_classes": num_classes}
        for m in models
        for p in precisions or ["fp32", "bf16"]
    ]
    for path, cfg in recipes:
        for p in precisions or [None]:  # None: the config's train.precision, resolved per device
            planned.append(
                {
                    **common,
                    "model": cfg.model.name,
                    "config": cfg.model_dump(mode="json"),
                    "config_name": str(path),
                    "precision": p,
                    "batch_size": batch_size,
                    "num_classes": len(cfg.data.classes) if cfg.data.classes else num_classes,
                }
            )
    present = available_devices()
    rows: list[dict[str, Any]] = []
    skipped: list[str] = [f"{d}: not available on this machine" for d in devices if d not in present]
    for device in [d for d in devices if d in present]:
        for planned_case in planned:
            case = {**planned_case, "device": device}
            what = f"{case.get('config_name') or case['model']} on {device} ({case['precision'] or 'config'})"
            if progress:
                print(f"bench {what} …", file=sys.stderr, flush=True)
            result = _run_isolated(case, timeout)
            if "error" in result:
                skipped.append(f"{what}: {result['error']}")
            else:
                rows.append(result)
    report = {"rows": rows, "skipped": skipped, "markdown": bench_markdown(rows, skipped)}
    if out is not None:
        out = Path(out)
        check_writable(out)
        write_csv(out / "bench.csv", rows, BENCH_FIELDS)
        atomic_write(out / "bench.md", report["markdown"])
    return report


def bench_markdown(rows: list[dict[str, Any]], skipped: list[str]) -> str:
    """The bench table as Markdown, followed by the skipped cases."""
    from cxrlab.experiments.compare import md_table

    with_config = any(r.get("config") for r in rows)
    header = [
        *(["config"] if with_config else []),
        "model",
        "device",
        "precision",
        "batch",
        "size",
        "params (trainable)",
        "train img/s",
        "train s/step",
        "train s/epoch (n)",
        "infer img/s",
        "base MB",
        "infer peak MB",
        "train peak MB",
    ]
    cells = [
        [
            *([r.get("config") or "—"] if with_config else []),
            r["model"],
            r["device"],
            r["precision"],
            r["batch_size"],
            r["image_size"],
            f"{r['params']:,} ({r['trainable_params']:,})",
            r["train_img_s"],
            r["train_s_per_step"],
            f"{r['train_s_per_epoch']} ({r['dataset_size']})",
            r["infer_img_s"],
            r["base_mb"],
            r["infer_peak_mb"],
            r["train_peak_mb"],
        ]
        for r in rows
    ]
    text = md_table(header, cells)
    if rows:
        names = sorted({f"{r['device']}: {r['device_name']} ({r['threads']} threads)" for r in rows})
        text += (
            "\n"
            + "; ".join(names)
            + ". Peak memory: "
            + ", ".join(sorted({f"{r['device']} = {r['memory_measure']}" for r in rows}))
            + ".\n"
        )
    if skipped:
        text += "\nSkipped:\n" + "".join(f"- {s}\n" for s in skipped)
    return text
