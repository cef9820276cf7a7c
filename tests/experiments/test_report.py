"""`cxr report`: one HTML document, checked in a real headless browser."""

from __future__ import annotations

import pytest

from tests.browser import check_page, chromium, inspect_page
from tests.conftest import run_cli


def test_report_renders_in_headless_chromium(runs, tmp_path):
    if chromium() is None:
        pytest.skip(
            "chromium is not installed (CI installs it in .ci/run; locally: apt-get install chromium)"
        )
    out = tmp_path / "report"
    proc = run_cli("report", str(runs["mnv2"]), str(runs["cnn"]), str(runs["other"]), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    page = check_page(out / "report.html", "comparison")  # no error, broken image or external request
    check_page(out / "compare.html", "compare")
    # curves, confusion, ROC per run (3 each), t-SNE for 3 runs, val overlay, accuracy-vs-time
    assert len(page["images"]) >= 3 * 4 + 2
    assert all(i["width"] > 100 and i["height"] > 100 for i in page["images"])
    headings = " | ".join(page["headings"])
    for section in (
        "Task and data",
        "Architectures",
        "Hyperparameters",
        "Results on the test set",
        "Training curves",
        "Confusion matrices and ROC",
        "t-SNE",
        "Timing",
    ):
        assert section in headings
    assert page["tables"] >= 6 and page["text"] > 1500
    html = (out / "report.html").read_text()
    assert "McNemar" in html and "95% CI" in html and "different test sets" in html
    assert "covid vs normal" in page["title"]


def test_browser_check_catches_broken_pages(tmp_path):
    if chromium() is None:
        pytest.skip(
            "chromium is not installed (CI installs it in .ci/run; locally: apt-get install chromium)"
        )
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<html><head><link rel="stylesheet" href="http://127.0.0.1:9/style.css"></head><body>'
        '<img alt="gone" src="missing.png"><script>console.error("boom")</script></body></html>'
    )
    page = inspect_page(bad)
    assert page["broken_images"] == ["gone"]
    assert any("boom" in e for e in page["errors"])
    assert page["external_requests"] == ["http://127.0.0.1:9/style.css"]
    assert page["kind"] is None
    with pytest.raises(AssertionError, match="page kind None"):
        check_page(bad, "compare")
