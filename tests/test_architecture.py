"""The floor plan, enforced: imports only point down, and no module imports itself back.

The graph is read from the source (every ``import`` statement: top-level, inside functions and under
``TYPE_CHECKING``), so a lazy import cannot hide a cycle. Layers, bottom to top — a module may import its
own package and anything in a lower layer; packages in the same layer never import each other:
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cxrlab"

LAYERS: list[set[str]] = [
    {"_version", "errors"},
    {"_optional"},  # optional dependencies: the one-line "needs cxrlab[EXTRA]" error
    {"config"},
    {"runs", "runtime", "stats"},  # run folders, device/precision, statistics
    {"metrics"},  # metrics.json: its schema, reader/writer and the metric registry
    {"figures", "pages"},  # pictures and HTML pages
    {"data"},
    {"datasets"},  # cxrlab.datasets.open: a torch Dataset with a metadata table over the data floor's readers
    {"models"},
    {"training"},
    {"evaluation", "audit"},
    {"explain"},  # where the model looks: Grad-CAM, the lung segmenter, the lung-attention score
    {"reports"},
    {"pipeline"},  # the one orchestration layer: data → fit → evaluate → audit → explain → report
    {"experiments", "generative", "deploy"},
    {"reproduce"},  # the five reports, run end to end (experiments + generative)
    {"demo"},
    {"cli"},
    {"__main__"},
    {""},  # the package's own __init__: the public API, lazily importing from the layers
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = ("cxrlab", *path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """``module -> {cxrlab modules it imports}``; ``from pkg import sub`` counts as importing ``pkg.sub``."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_of(package: str) -> int:
    for i, layer in enumerate(LAYERS):
        if package in layer:
            return i
    raise AssertionError(f"cxrlab.{package} is in no layer of tests/test_architecture.py: place it")


def test_no_module_imports_itself_back():
    assert cycles(import_graph()) == []


def upward_imports() -> list[str]:
    """Every import of a package in the same or a higher layer, as 'module -> target'."""
    wrong = []
    for module, targets in import_graph().items():
        here = package_of(module)
        for target in targets:
            there = package_of(target)
            if there != here and layer_of(there) >= layer_of(here):
                wrong.append(f"{module} -> {target}")
    return sorted(wrong)


def test_every_import_points_down():
    assert upward_imports() == []


def test_no_two_packages_import_each_other():
    edges = {(package_of(a), package_of(b)) for a, ts in import_graph().items() for b in ts}
    mutual = sorted({tuple(sorted(e)) for e in edges if e[0] != e[1] and (e[1], e[0]) in edges})
    assert mutual == []


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("from cxrlab.training.train import fit\n", "cxrlab.training.train"),
        ("def f():\n    from cxrlab.pipeline import train\n", "cxrlab.pipeline.train"),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cxrlab.experiments import compare\n",
         "cxrlab.experiments.compare"),
        ("from ..evaluation import plots\n", "cxrlab.evaluation.plots"),
    ],
)  # fmt: skip
def test_the_check_sees_top_level_lazy_and_type_only_imports(tmp_path, monkeypatch, source, target):
    """An upward import planted in a copy of the package is caught, wherever it sits."""
    import shutil

    copy = tmp_path / "cxrlab"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__", "assets"))
    (copy / "data" / "planted.py").write_text(source)
    monkeypatch.setitem(globals(), "SRC", copy)
    assert upward_imports() == [f"cxrlab.data.planted -> {target}"]
