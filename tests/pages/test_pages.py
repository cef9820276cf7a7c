"""HTML pages from templates: the filters, escaping, and every page kind opened in headless Chromium.

One small real run (small_cnn, 32 px, covid vs normal, 1 epoch) feeds a real context to every
template, so the completeness check does not depend on which other tests ran.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import jinja2
import optuna
import pytest

from cxrlab import pages
from cxrlab.config import RunConfig
from cxrlab.experiments.compare import compare_runs
from cxrlab.experiments.report import write_comparison_report
from cxrlab.experiments.sweep import parse_param, summarize_sweep
from cxrlab.generative.quality import quality_report
from cxrlab.reports.html import run_report_context, write_eval_report
from tests.browser import check_page
from tests.conftest import run_cli

KINDS = ["audit", "compare", "comparison", "eval_report", "external", "quality", "run_report", "sweep"]
#: page kinds whose real page is checked in Chromium by their own tests (tests/reproduce)
OTHER_KINDS = ["reproduce"]


def _copy(src: Path, dst: Path, files: list[Path]) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, dst / f.name)


@pytest.fixture(scope="module")
def site(tmp_path_factory, covid_dir) -> dict[str, Path]:
    """One page of every kind, each written by cxrlab's own code from one small real run."""
    root = tmp_path_factory.mktemp("pages")
    data, external = root / "data", root / "other hospital"
    for cls in ("covid", "normal"):
        train = sorted((covid_dir / "train" / cls).iterdir())
        test = sorted((covid_dir / "test" / cls).iterdir())
        _copy(covid_dir, data / "train" / cls, train[:12])
        _copy(covid_dir, data / "test" / cls, test[:6])
        _copy(covid_dir, external / cls, test[6:14])
    run = root / "run"
    args = ["--model", "small_cnn", "--image-size", "32", "--epochs", "1", "-q", "--no-tensorboard"]
    evals = ["--set", "eval.tsne=false", "--set", "eval.bootstrap=50"]
    run_cli("train", "--data", str(data), *args, *evals, "--out", str(run), check=True)
    run_cli("evaluate", str(run), "--data", str(external), "--out", str(root / "ext"), check=True)
    run_cli("audit", str(data), "--out", str(root / "audit"), check=True)
    compare_runs([run], root / "compare")
    write_comparison_report([run], root / "report")
    synthetic = root / "synthetic"
    _copy(covid_dir, synthetic / "covid", sorted((external / "covid").iterdir()))
    quality_report(synthetic, str(data), root / "quality", size=32, cnn_steps=0, progress=False)
    # A study as a sweep leaves it: one trial finished (the real run), one failed with its reason.
    param = parse_param("lr=1e-3,1e-2")
    dist = {"lr": optuna.distributions.CategoricalDistribution([1e-3, 1e-2])}
    metrics = json.loads((run / "metrics.json").read_text())
    study = optuna.create_study(direction="minimize", study_name="pages")
    study.add_trial(
        optuna.trial.create_trial(
            params={"lr": 1e-3},
            distributions=dist,
            value=metrics["val"]["loss"],
            intermediate_values={0: metrics["val"]["loss"]},
            user_attrs={"run": str(run), "test_accuracy": metrics["test"]["accuracy"], "total_s": 1.0},
        )
    )
    study.add_trial(
        optuna.trial.create_trial(
            params={"lr": 1e-2},
            distributions=dist,
            state=optuna.trial.TrialState.FAIL,
            user_attrs={"error": "loss became NaN <at epoch 1>"},
        )
    )
    summarize_sweep(root / "sweep", study, [param], "grid", "postgresql://me:secret@db/cxr")
    return {
        "run": run,
        "run_report": run / "report.html",
        "eval_report": root / "ext" / "report.html",
        "external": root / "ext" / "external.html",
        "audit": root / "audit" / "audit.html",
        "compare": root / "compare" / "compare.html",
        "comparison": root / "report" / "report.html",
        "quality": root / "quality" / "report.html",
        "sweep": root / "sweep" / "sweep.html",
    }


def test_filters(tmp_path):
    assert pages.fmt(None) == "—" and pages.fmt(0.12345) == "0.123" and pages.fmt(2.25, 1) == "2.2"
    assert pages.fmt(7) == "7" and pages.fmt("a<b") == "a<b"  # escaping is the template's job
    assert pages.ci([0.1, 0.25]) == "[0.100, 0.250]" and pages.ci(None) == "" and pages.ci([None, None]) == ""
    assert pages.thousands(1234567) == "1,234,567" and pages.thousands(None) == "—"
    assert pages.sci(0.000123456) == "0.000123" and pages.sci(None) == "—"
    assert pages.png(tmp_path / "missing.png", "gone") == "" and pages.png(None) == ""
    from PIL import Image

    Image.new("L", (4, 3), 128).save(tmp_path / "p.png")
    html = str(pages.png(tmp_path / "p.png", 'a "b" <c>'))
    assert html.startswith("<figure><img") and html.endswith("</figure>")
    assert 'alt="a &#34;b&#34; &lt;c&gt;"' in html and "<figcaption" in html
    data = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html).group(1)
    assert base64.b64decode(data) == (tmp_path / "p.png").read_bytes()


def test_every_template_is_a_page_kind():
    assert pages.page_kinds() == sorted(KINDS + OTHER_KINDS)
    assert sorted(p.name for p in pages.TEMPLATES.iterdir()) == sorted(
        [*pages.SHARED, *(f"{k}.html" for k in KINDS + OTHER_KINDS)]
    )
    with pytest.raises(jinja2.UndefinedError):
        pages.render("compare.html")  # a context key missing is an error, not an empty cell


def test_render_escapes_what_data_says(site, tmp_path):
    """A class named <script> is shown as text: nothing from a folder name or config runs."""
    run = site["run"]
    hostile = '<script>console.error("xss")</script>'
    metrics = json.loads(
        json.dumps(json.loads((run / "metrics.json").read_text())).replace("covid", json.dumps(hostile)[1:-1])
    )
    metrics["audit"] = {"warnings": [f"{hostile} is predicted by <b>file size</b>"]}
    cfg = RunConfig.load(run / "config.yaml")
    out = pages.write_page(tmp_path / "x.html", "run_report.html", **run_report_context(run, cfg, metrics))
    html = out.read_text()
    assert "<script>" not in html and "&lt;script&gt;console.error(&#34;xss&#34;)&lt;/script&gt;" in html
    assert "&lt;b&gt;file size&lt;/b&gt;" in html
    page = check_page(out, "run_report")  # no console error: the script did not run
    assert len(page["images"]) >= 3


def test_eval_report_skips_a_missing_plot(site, tmp_path):
    result = json.loads((site["run"] / "metrics.json").read_text())
    result.update(run=str(site["run"]), plots={"roc": "plots/roc.png", "gone": "plots/gone.png"})
    shutil.copytree(site["run"] / "plots", tmp_path / "plots")
    page = check_page(write_eval_report(tmp_path, result), "eval_report")
    # the other images are the run's Grad-CAM gallery (plots/gallery, tests/explain/test_report.py)
    assert [i["alt"] for i in page["images"] if " — " not in i["alt"]] == ["roc"]


@pytest.mark.parametrize("kind", KINDS)
def test_page_in_chromium(site, kind):
    page = check_page(site[kind], kind)
    assert page["tables"] >= 1 and page["text"] > 300
    html = site[kind].read_text()
    assert html.count("<style>") == 1 and "http://" not in html and "https://" not in html
    if kind == "sweep":
        assert "loss became NaN &lt;at epoch 1&gt;" in html and "secret" not in html
        assert "me:***@db" in html and page["images"]
