"""Figures for papers on real runs: eval.figure_format png/svg/pdf in plots/ and report.html (train and
`cxr evaluate`), and compare.html / report.html of those runs in a 1280-px-wide headless Chromium."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.browser import check_page, chromium, page_layout
from tests.conftest import run_cli

TINY = [
    "--classes", "covid,normal", "--model", "small_cnn", "--epochs", "1", "--image-size", "32",
    "--max-per-class", "12", "--set", "eval.explain=off", "--set", "eval.tsne=false",
    "--set", "eval.bootstrap=50", "--no-tensorboard", "-q",
]  # fmt: skip
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("curves", "confusion", "roc", "reliability")
# the pdf run's folder name is one word of over 20 characters: tables must still fit
NAMES = {"png": "png", "svg": "svg", "pdf": "small_cnn_pdf_figures_covid_normal_32px"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, covid_dir) -> dict[str, Path]:
    """Three tiny small-CNN runs on covid vs normal, one per eval.figure_format (the pdf one at 100 dpi)."""
    root = tmp_path_factory.mktemp("paper-figures")
    out = {}
    for fmt, name in NAMES.items():
        out[fmt] = root / name
        extra = ["--set", "eval.figure_dpi=100"] if fmt == "pdf" else []
        sets = ["--set", f"eval.figure_format={fmt}", *extra]
        run_cli("train", "--data", str(covid_dir), *TINY, *sets, "--out", str(out[fmt]), check=True)
    return out


def kind(path: Path) -> str:
    head = path.read_bytes()[:8]
    if head == PNG_MAGIC:
        return "png"
    if head.startswith(b"%PDF-"):
        return "pdf"
    if ET.parse(path).getroot().tag == "{http://www.w3.org/2000/svg}svg":
        return "svg"
    return "unknown"


def check_plots(folder: Path, fmt: str, metrics: dict) -> None:
    """plots/ holds each plot in ``fmt`` (pdf: a PNG beside each); metrics.json's plots name those files."""
    for name in PLOTS if (folder / "history.csv").is_file() else PLOTS[1:]:  # cxr evaluate: no curves
        file = folder / metrics["plots"][name]
        assert file.suffix == f".{fmt}" and kind(file) == fmt, file
        assert (file.with_suffix(".png").is_file()) == (fmt in ("png", "pdf")), file
    if "samples" in metrics["plots"]:  # an image grid: a picture, always PNG
        assert kind(folder / metrics["plots"]["samples"]) == "png"


def test_figure_format_in_plots_and_report(runs, tmp_path):
    from PIL import Image

    for fmt, run in runs.items():
        metrics = json.loads((run / "metrics.json").read_text())
        check_plots(run, fmt, metrics)
        html = (run / "report.html").read_text()
        assert html.count("data:image/svg+xml;base64,") == (4 if fmt == "svg" else 0)
        assert html.count("data:image/png;base64,") == (1 if fmt == "svg" else 5)  # + the training samples
    # figure_dpi: the pdf run's PNG renditions at 100 dpi, the png run's at the default 150 (roc: 4.8 in wide)
    assert Image.open(runs["pdf"] / "plots" / "roc.png").size[0] == 480
    assert Image.open(runs["png"] / "plots" / "roc.png").size[0] == 720
    # the ROC legend names the positive class (covid: the one not named like 'normal')
    assert "ROC (positive: covid), AUC" in (runs["svg"] / "plots" / "roc.svg").read_text()
    # cxr evaluate re-scores with the run's own format
    out = tmp_path / "eval-svg"
    run_cli("evaluate", str(runs["svg"]), "--out", str(out), "-q", check=True)
    result = json.loads((out / "metrics.json").read_text())
    check_plots(out, "svg", result)
    assert "data:image/svg+xml;base64," in (out / "report.html").read_text()
    for fmt in ("svg", "pdf"):  # every embedded image decodes in a real browser
        check_page(runs[fmt] / "report.html", "run_report")
    check_page(out / "report.html", "eval_report")


def test_bad_figure_format_is_one_line(covid_dir, tmp_path):
    proc = run_cli("train", "--data", str(covid_dir), "--set", "eval.figure_format=tiff", "--out",
                   str(tmp_path / "x"))  # fmt: skip
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines == ["error: --set: 'eval.figure_format': Input should be 'png', 'svg' or 'pdf' (got 'tiff')"]
    assert not (tmp_path / "x").exists()


def test_compare_and_report_tables_fit_1280_px(runs, tmp_path):
    if chromium() is None:
        pytest.skip(
            "chromium is not installed (CI installs it in .ci/run; locally: apt-get install chromium)"
        )
    paths = [str(runs[f]) for f in ("png", "svg", "pdf")]
    run_cli("compare", *paths, "--out", str(tmp_path / "cmp"), check=True)
    run_cli("report", *paths, "--out", str(tmp_path / "rep"), check=True)
    for page in (tmp_path / "cmp" / "compare.html", tmp_path / "rep" / "report.html"):
        layout = page_layout(page, width=1280)
        assert layout["errors"] == [], layout["errors"]
        assert layout["window"] == 1280
        assert layout["scroll_width"] <= 1280, f"{page.name}: the page scrolls sideways"
        wide = [t for t in layout["tables"] if t["columns"] >= 18]
        assert wide, f"{page.name}: no comparison table found"  # the 18-column results table
        for t in layout["tables"]:
            where = f"{page.name}, table {t['header']!r}"
            assert t["right"] <= 1280 and t["box_right"] <= 1280, where
            assert not t["scrolls"], f"{where} needs scrolling"
    # a narrow window: the page itself still does not scroll sideways (wide tables scroll in their box)
    assert page_layout(tmp_path / "cmp" / "compare.html", width=700)["scroll_width"] <= 700
