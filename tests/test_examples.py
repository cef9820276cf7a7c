"""The example notebooks in examples/ run end to end: executed with nbclient in a kernel of this
interpreter (a kernel spec written to a temporary JUPYTER_PATH), from examples/ as a user runs them, on the
real datasets; any cell error fails the test. They are stored with their outputs cleared."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import DATA, ROOT, WEIGHTS, _need

EXAMPLES = ROOT / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
KERNEL = "cxrlab-tests"


@pytest.fixture()
def kernel(tmp_path, monkeypatch) -> str:
    """A kernel spec running this interpreter (the project's venv), found through JUPYTER_PATH."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec_json = {"argv": argv, "display_name": KERNEL, "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(spec_json))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("CXRLAB_DATA", str(DATA))
    monkeypatch.setenv("CXRLAB_EXAMPLES_OUT", str(tmp_path / "runs"))
    monkeypatch.setenv("TORCH_HOME", str(WEIGHTS))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    return KERNEL


def test_there_are_two_notebooks_stored_without_outputs():
    import nbformat

    assert [p.name for p in NOTEBOOKS] == ["01_train_evaluate_explain.ipynb", "02_label_file_subgroups.ipynb"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and all(not c.outputs and c.execution_count is None for c in code), path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, kernel: str):
    pytest.importorskip("nbclient")
    import nbformat
    from nbclient import NotebookClient

    _need(DATA / "covid-challenge", "covid-challenge dataset")
    _need(DATA / "nih-1000", "nih-1000 dataset")
    _need(WEIGHTS / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth", "MobileNetV2 ImageNet weights")
    nb = nbformat.read(path, as_version=4)
    where = {"metadata": {"path": str(EXAMPLES)}}  # run from examples/, as a user does
    client = NotebookClient(nb, kernel_name=kernel, timeout=600, resources=where)
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    tables = [o for o in outputs if "text/html" in o.get("data", {})]
    assert tables, "the notebook shows its tables"
    if path.stem.startswith("01"):
        assert len(figures) == 2  # the images and their Grad-CAM overlays
