"""Safe loading: a tampered or corrupted checkpoint or model file is refused in one line, and code
hidden in a pickle never runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli
from tests.trust.conftest import one_line_error


class Payload:
    """Unpickling this calls ``open(marker, "w")``: the marker file appears if the pickle is executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def tampered_file(path: Path, marker: Path) -> None:
    """A checkpoint-looking torch file that carries a code-executing pickle payload."""
    torch.save({"epoch": 0, "state_dict": {}, "payload": Payload(marker)}, path)


@pytest.fixture()
def run_copy(binary_run, tmp_path) -> Path:
    return Path(shutil.copytree(binary_run, tmp_path / "run"))


def test_tampered_checkpoint_is_refused_and_not_executed(run_copy, tmp_path):
    marker = tmp_path / "pwned"
    ckpt = run_copy / "checkpoints" / "last.ckpt"
    tampered_file(ckpt, marker)
    line = one_line_error(run_cli("train", "--resume", str(run_copy)))
    assert str(ckpt) in line and "refused" in line and "nothing in it was executed" in line
    assert not marker.exists()
    # the payload is live: an unsafe load (weights_only=False) would have run it
    torch.load(ckpt, weights_only=False)
    assert marker.exists()


def test_corrupted_checkpoint_is_one_line(run_copy):
    ckpt = run_copy / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:5000])
    line = one_line_error(run_cli("train", "--resume", str(run_copy)))
    assert str(ckpt) in line and "damaged" in line


@pytest.mark.parametrize("damage", ["truncated", "tampered"])
@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_damaged_model_file_is_refused(run_copy, tmp_path, covid_small, damage, command):
    model = run_copy / "model.safetensors"
    marker = tmp_path / "pwned"
    if damage == "truncated":
        model.write_bytes(model.read_bytes()[:1000])
    else:
        tampered_file(model, marker)
    image = sorted((covid_small / "test" / "covid").iterdir())[0]
    args = ["evaluate", str(run_copy)] if command == "evaluate" else ["predict", str(run_copy), str(image)]
    line = one_line_error(run_cli(*args))
    assert str(model) in line and "corrupted or not a safetensors file" in line
    assert not marker.exists()
