"""Figures for papers, in process and without training: eval.figure_format/figure_dpi, the file each format
writes, what the HTML embeds of it, the ROC legend's positive class and the reliability diagram's counts."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
import yaml

from cxrlab import pages
from cxrlab.config import RunConfig
from cxrlab.errors import ConfigError
from cxrlab.evaluation import plots
from cxrlab.figures import DPI, figure_output, plt, save_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def binary(n=120, seed=0):
    """covid (class 0, the positive) vs normal, probabilities that mostly rank covid first."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p_covid = np.clip(np.where(y == 0, 0.7, 0.3) + rng.normal(0, 0.2, n), 0.01, 0.99)
    return y, np.stack([p_covid, 1 - p_covid], axis=1)


def legend_texts(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def is_svg(path) -> bool:
    return ET.parse(path).getroot().tag == "{http://www.w3.org/2000/svg}svg"


def test_config_figure_format_and_dpi():
    cfg = RunConfig()
    assert (cfg.eval.figure_format, cfg.eval.figure_dpi) == ("png", DPI) == ("png", 150)
    cfg = cfg.override(["eval.figure_format=PDF", "eval.figure_dpi=300"])
    assert (cfg.eval.figure_format, cfg.eval.figure_dpi) == ("pdf", 300)
    again = RunConfig.from_dict(yaml.safe_load(cfg.to_yaml()))  # round-trips through config.yaml
    assert (again.eval.figure_format, again.eval.figure_dpi) == ("pdf", 300)
    for bad, says in (
        ("eval.figure_format=jpg", "'eval.figure_format': Input should be 'png', 'svg' or 'pdf' (got 'jpg')"),
        ("eval.figure_dpi=10", "'eval.figure_dpi': Input should be greater than or equal to 50"),
        ("eval.figure_dpi=5000", "'eval.figure_dpi': Input should be less than or equal to 1200"),
    ):
        with pytest.raises(ConfigError) as err:
            cfg.override([bad])
        assert says in str(err.value) and "\n" not in str(err.value)


def test_binary_roc_legend_names_the_positive_class():
    y, probs = binary()
    fig = plots.roc_figure(y, probs, ["covid", "normal"], auc=0.9123, positive="covid")
    assert legend_texts(fig) == ["ROC (positive: covid), AUC 0.912"]
    curve = fig.axes[0].get_lines()[0]
    assert curve.get_ydata()[-2] > 0.5 and curve.get_xdata()[1] < 0.5  # covid's curve, above the diagonal
    plt.close(fig)
    # no operating point given: the second class, with the AUC computed from the probabilities
    from sklearn.metrics import roc_auc_score

    fig = plots.roc_figure(y, probs, ["covid", "normal"])
    assert legend_texts(fig) == [f"ROC (positive: normal), AUC {roc_auc_score(y == 1, probs[:, 1]):.3f}"]
    plt.close(fig)
    # one class only in the data: no curve, no legend
    fig = plots.roc_figure(np.zeros(10, int), probs[:10], ["covid", "normal"], positive="covid")
    assert fig.axes[0].get_legend() is None
    plt.close(fig)


def test_multiclass_roc_legend_gives_each_class_its_auc():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 90)
    probs = rng.dirichlet([1, 1, 1], 90) + 0.5 * np.eye(3)[y]
    probs /= probs.sum(1, keepdims=True)
    fig = plots.roc_figure(y, probs, ["covid", "normal", "viral"], auc=0.8)
    texts = legend_texts(fig)
    assert [t.split(",")[0] for t in texts] == ["covid vs rest", "normal vs rest", "viral vs rest"]
    assert all(t.split(", AUC ")[1].replace(".", "").isdigit() for t in texts)
    plt.close(fig)


def test_reliability_diagram_shows_each_bins_count():
    y, probs = binary(n=200)
    fig = plots.reliability_figure(y, probs, ece=0.05)
    ax = fig.axes[0]
    conf = probs.max(1)
    edges = np.linspace(0, 1, 11)
    expected = [int(((conf > lo) & (conf <= hi)).sum()) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    expected = [n for n in expected if n]
    counts = [int(t.get_text()) for t in ax.texts]
    assert counts == expected and sum(counts) == len(y)
    bars = ax.patches
    assert len(bars) == len(counts)
    for text, bar in zip(ax.texts, bars, strict=True):  # each count stands on its bar
        x, top = text.xy
        assert bar.get_x() <= x <= bar.get_x() + bar.get_width() and top == pytest.approx(bar.get_height())
    assert ax.get_ylim()[1] > 1  # room above a bar of accuracy 1
    assert "n = 200" in ax.get_title()
    plt.close(fig)


def _figure():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 1], label="a line")
    ax.imshow(np.eye(4), extent=(0, 1, 0, 1))  # a raster part: drawn at the dpi in svg/pdf too
    ax.legend()
    return fig


def test_save_figure_writes_the_configured_format(tmp_path):
    from PIL import Image

    png = save_figure(_figure(), tmp_path / "default" / "a.png")  # outside figure_output: PNG at 150 dpi
    assert png.read_bytes()[:8] == PNG_MAGIC and Image.open(png).size == (4 * DPI, 3 * DPI)
    with figure_output("png", 100):
        small = save_figure(_figure(), tmp_path / "png" / "a.png")
    assert Image.open(small).size == (400, 300)
    with figure_output("svg", 300):
        svg = save_figure(_figure(), tmp_path / "svg" / "a.png")
    assert svg.name == "a.svg" and is_svg(svg) and sorted(p.name for p in svg.parent.iterdir()) == ["a.svg"]
    with figure_output("pdf"):
        pdf = save_figure(_figure(), tmp_path / "pdf" / "a.png")
    assert pdf.name == "a.pdf" and pdf.read_bytes()[:5] == b"%PDF-"
    assert (tmp_path / "pdf" / "a.png").read_bytes()[:8] == PNG_MAGIC  # the rendition for HTML pages
    # reproducible: the same figure twice gives the same bytes (no dates, fixed SVG ids)
    with figure_output("svg"):
        first = save_figure(_figure(), tmp_path / "svg1" / "a.png").read_bytes()
        assert save_figure(_figure(), tmp_path / "svg2" / "a.png").read_bytes() == first
    with figure_output("pdf"):
        first = save_figure(_figure(), tmp_path / "pdf1" / "a.png").read_bytes()
        assert save_figure(_figure(), tmp_path / "pdf2" / "a.png").read_bytes() == first
    with pytest.raises(ValueError, match="figure format 'jpg'"), figure_output("jpg"):
        pass


def test_plots_follow_figure_output_and_pages_embed_them(tmp_path):
    y, probs = binary()
    with figure_output("svg"):
        svg = plots.roc(y, probs, ["covid", "normal"], tmp_path / "svg" / "roc.png", 0.9, "covid")
    with figure_output("pdf", 80):
        pdf = plots.reliability(y, probs, tmp_path / "pdf" / "reliability.png", 0.05)
    assert is_svg(svg) and pdf.read_bytes()[:5] == b"%PDF-"
    assert "ROC (positive: covid), AUC 0.900" in svg.read_text()  # matplotlib writes each text into a comment
    # shown as large as the PNG at 150 dpi would be (4.8 in wide: 720 px), sharp at any zoom
    assert '<img alt="ROC" width="720" src="data:image/svg+xml;base64,' in pages.png(svg, "ROC")
    html = pages.png(pdf, "reliability")  # a PDF is shown as the PNG beside it
    assert 'src="data:image/png;base64,' in html and "reliability" in html
    (tmp_path / "pdf" / "reliability.png").unlink()
    assert pages.png(pdf, "reliability") == ""  # nothing to show: no broken image
