"""`cxr zoo MODEL --out RUN`: a run folder holding a pretrained classifier as it is, without training.

torchxrayvision's networks (``xrv/…``) were trained to predict chest findings; zero-shot evaluation scores
them on other data exactly as they are. The folder is an ordinary run folder — ``config.yaml``,
``model.safetensors``, ``model.json`` (the findings of ``model.pathologies``, torchxrayvision's operating
threshold per finding, the preprocessing contract), ``status.json`` — so ``cxr evaluate RUN --data DATA
--labels FILE`` scores it (findings matched by name, ``--label-map`` for other spellings, the unmatched ones
listed), and ``cxr predict``, ``cxr serve`` and ``cxr explain`` use it. It has no data and no test split of
its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxrlab.config import DataConfig, RunConfig
from cxrlab.errors import CxrError
from cxrlab.models import get_spec
from cxrlab.runs import RUN_ENTRIES, atomic_write, check_out_path, claim_folder, save_model, write_status

#: model.json's operating-point method of a zero-shot run
METHOD = "torchxrayvision's operating points (op_threshs), per finding"


def pretrained_run(model: str, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Write ``out`` as a run folder of ``model`` (an ``xrv/…`` name) as it was trained; returns its
    model.json. One line when the model has no pretrained classifier of its own or the weights are missing."""
    spec = get_spec(model)
    if spec.family != "xrv":
        raise CxrError(
            f"{model} has no pretrained classifier of its own (only xrv/… models have: see `cxr models`); "
            f"train it with `cxr train --model {model} --pretrained --freeze backbone`"
        )
    from cxrlab.models import xrv

    out = check_out_path(out)
    spec.ensure_weights()  # type: ignore[misc]  # offline and missing: one line before the folder is claimed
    busy = f"{out} is not empty; choose a new --out or add --overwrite"
    lock = claim_folder(out, "train", RUN_ENTRIES, "a training run folder", overwrite, busy)
    try:
        write_status(out, "running")
        net, findings, thresholds = xrv.zero_shot_model(model)
        cfg = RunConfig(
            task=f"zero-shot: {model} as torchxrayvision trained it ({len(findings)} findings)",
            data=DataConfig(image_size=spec.input_size),
            model=xrv.zero_shot_config(model),
        )
        atomic_write(out / "config.yaml", cfg.to_yaml())
        meta = {
            "model": model,
            "classes": findings,
            "image_size": spec.input_size,
            "resize": "squash",
            "channels": spec.channels,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "operating_point": {"positive_class": None, "threshold": None, "method": METHOD},
            "temperature": 1.0,
            "input": "images",
            "tta_shift_px": 0,
            "task": "multilabel",
            "findings": findings,
            "thresholds": {f: round(t, 6) for f, t in thresholds.items()},
            "zero_shot": True,
            "pretrained": xrv.info(model),
        }
        save_model(out, net, meta)
        write_status(out, "finished", epochs_done=0, zero_shot=True)
    except BaseException:
        write_status(out, "failed")
        raise
    finally:
        lock.release()
    return meta
