"""The run folder: everything needed to reproduce and inspect a run.

::

    RUN/config.yaml       complete config (``cxr train --config RUN/config.yaml`` repeats the run)
    RUN/splits.csv        every image with its split and class
    RUN/history.csv       epoch, train_loss, train_acc, val_loss, val_acc, seconds
    RUN/predictions.csv   per test image: path, true, pred, p_<class> (for paired tests between runs)
    RUN/metrics.json      test metrics with CIs, timing, parameters, audit warnings
    RUN/model.safetensors final weights (no pickle: loading never executes code)
    RUN/model.json        classes, input size, channels, normalisation, operating threshold
    RUN/checkpoints/      Lightning checkpoints (best.ckpt, last.ckpt) for --resume
    RUN/logs/             CSV and TensorBoard logs
    RUN/plots/*.png       curves, confusion matrix, ROC, t-SNE, reliability diagram
    RUN/report.html       one self-contained page
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from cxrlab.errors import CxrError, ModelError

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write a file via a temporary sibling and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; run files are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        return _clean(obj.item())
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    """JSON with NaN/inf written as null."""
    atomic_write(path, json.dumps(_clean(obj), indent=2) + "\n")


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON file, with a one-line error when missing or damaged."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CxrError(f"{path} not found; is this a cxrlab run folder?") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CxrError(f"{path} is damaged (not valid JSON)") from None


def write_csv(path: str | Path, rows: list[dict[str, Any]], fields: list[str] | None = None) -> None:
    """Write rows as CSV (atomically)."""
    import io

    fields = fields or (list(rows[0]) if rows else [])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in fields})
    atomic_write(path, buf.getvalue())


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV file (empty list when absent)."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def check_writable(folder: Path) -> None:
    """Create ``folder`` and prove it can be written, or fail with one line."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".cxrlab-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise CxrError(f"cannot write to {folder}: {exc.strerror or exc}; choose another --out") from None


def require_run(run: str | Path) -> Path:
    """A path that must be an existing run folder."""
    path = Path(run)
    if not (path / "config.yaml").is_file():
        raise CxrError(f"{path} is not a cxrlab run folder (no config.yaml); give the --out of a `cxr train`")
    return path


def save_model(run: Path, model, meta: dict[str, Any]) -> None:
    """Save weights as safetensors plus a JSON description."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(run / "model.safetensors", save(state))
    write_json(run / "model.json", meta)


def load_state(run: Path) -> dict[str, Any]:
    """Read model.safetensors; a damaged or tampered file is refused, never executed."""
    from safetensors.torch import load

    path = run / "model.safetensors"
    if not path.is_file():
        raise ModelError(f"{path} not found: the run did not finish; `cxr train --resume {run}` completes it")
    try:
        return load(path.read_bytes())
    except Exception as exc:  # noqa: BLE001 - any decoding failure means a damaged file
        raise ModelError(
            f"{path} is corrupted or not a safetensors file ({exc.__class__.__name__}); retrain or restore it"
        ) from None
