"""The model card (cxrlab.reports.model_card): written by `cxr train` into the run folder from what the run
measured, rewritten by `cxr evaluate RUN --data OTHER`, embedded in `cxr export`'s files, served at
/v1/model and shown compactly on the service page. Real runs, real images, real external data."""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
from pathlib import Path

import pytest

from cxrlab.audit.severity import LEVELS, rank, ranked
from cxrlab.metrics import metrics_for
from tests.conftest import DATA, run_cli

MAPPING = "COVID=covid,Normal=normal"


def _card(run: Path) -> dict:
    return json.loads((run / "model_card.json").read_text())


def _texts(card: dict) -> list[str]:
    return [x["text"] for x in card["limitations"]]


def _other_hospital(root: Path, kermany_dir: Path, start: int) -> Path:
    """An external set of another layout and other class names: COVID = posterior-anterior COVID-19
    radiographs of covid-ieee (the ieee8023 collection), Normal = kermany-224 test NORMAL images."""
    ieee = DATA / "covid-ieee"
    if not (ieee / "labels.csv").is_file():
        pytest.skip(f"covid-ieee not found at {ieee} (see shared/data/README.md); CI always has it")
    rows = [r for r in csv.DictReader((ieee / "labels.csv").open()) if r["view"] == "PA"]
    (root / "COVID").mkdir(parents=True)
    (root / "Normal").mkdir()
    for r in rows[start : start + 12]:
        shutil.copy(ieee / "images" / r["filename"], root / "COVID" / r["filename"])
    for f in sorted((kermany_dir / "test" / "NORMAL").iterdir())[start : start + 12]:
        shutil.copy(f, root / "Normal" / f.name)
    return root


@pytest.fixture(scope="module")
def run_copy(small_run, tmp_path_factory) -> Path:
    """A copy of the shared deploy run, so that its external validations stay in this module."""
    out = tmp_path_factory.mktemp("card") / "run"
    shutil.copytree(small_run, out)
    return out


@pytest.fixture(scope="module")
def validated(run_copy, kermany_dir, tmp_path_factory) -> tuple[Path, Path, dict]:
    """The copy after `cxr evaluate RUN --data OTHER` on a real external set; with the card before it."""
    before = _card(run_copy)
    data = _other_hospital(tmp_path_factory.mktemp("ext") / "hospital A", kermany_dir, 0)
    proc = run_cli("evaluate", str(run_copy), "--data", str(data), "--label-map", MAPPING, "-q")
    assert proc.returncode == 0, proc.stderr
    return run_copy, data, before


def test_training_writes_the_card_from_its_evidence(small_run):
    card = _card(small_run)
    metrics = json.loads((small_run / "metrics.json").read_text())
    meta = json.loads((small_run / "model.json").read_text())
    assert card["schema_version"] == 1 and card["run"] == "run" and card["task"] == "single-label"
    assert card["classes"] == ["covid", "normal"] and {"model.json", "metrics.json"} <= set(card["evidence"])
    use = card["intended_use"]
    assert "covid vs normal" in use["summary"] and any(
        "not a medical device" in s for s in use["not_intended"]
    )
    # internal metrics: every registered metric the test split reports, with its CI, as metrics.json has it
    test = metrics["test"]
    for m in metrics_for("single", binary=True):
        if m.value(test) is None:
            continue
        row = card["metrics"][m.name]
        assert row["label"] == m.label and row["value"] == pytest.approx(m.value(test))
        if m.interval(test):
            assert row["ci95"] == pytest.approx(m.interval(test))
    assert card["metrics"]["n"] == test["n"] == 62
    assert card["operating_point"]["threshold"] == meta["operating_point"]["threshold"]
    # the audit's warnings: each once, ranked by severity, nothing lost
    audit = card["training_data"]["audit"]["warnings"]
    assert sorted(w["text"] for w in audit) == sorted(set(metrics["audit"]["warnings"]))
    assert [rank(w["severity"]) for w in audit] == sorted(rank(w["severity"]) for w in audit)
    assert card["training_data"]["counts"] == metrics["data"]["counts"]
    # lung attention as measured, the OOD guard as found in the folder
    la = metrics["lung_attention"]
    assert card["lung_attention"]["status"] == la["status"]
    if la["status"] == "done":
        assert card["lung_attention"]["overall"]["lung_share"] == la["overall"]["lung_share"]
    ood = small_run / "ood.json"
    assert card["ood"]["status"] == ("assessed" if ood.is_file() else "not assessed")
    assert card["subgroups"]["status"] == ("assessed" if metrics.get("subgroups") else "not assessed")
    # limitations: distinct, most severe first; not externally validated (there is no external.json)
    texts = _texts(card)
    assert len(texts) == len({t.lower() for t in texts})
    assert [rank(x["severity"]) for x in card["limitations"]] == sorted(
        rank(x["severity"]) for x in card["limitations"]
    )
    assert card["external_validation"] == [] and not list(small_run.glob("*/external.json"))
    assert sum("Not validated on any external dataset" in t for t in texts) == 1
    md = (small_run / "model_card.md").read_text()
    for heading in ("Known limitations", "Intended use", "Training data", "Internal metrics",
                    "Operating threshold", "External validation", "Lung attention",
                    "Out-of-distribution guard", "Subgroups"):  # fmt: skip
        assert f"## {heading}" in md
    assert "Not validated on any external dataset" in md and "Not externally validated" in md
    auc = card["metrics"]["auc"]
    assert f"| ROC AUC | {auc['value']:.3f} | [{auc['ci95'][0]:.3f}, {auc['ci95'][1]:.3f}] |" in md


def test_external_validation_rewrites_the_card(validated, kermany_dir, tmp_path):
    run_copy, data, before = validated
    assert any("Not validated on any external dataset" in t for t in _texts(before))
    ext = json.loads((run_copy / "external" / "external.json").read_text())
    card = _card(run_copy)
    assert card["written"] >= before["written"] and "external/external.json" in card["evidence"]
    [e] = card["external_validation"]
    assert (
        e["source"] == str(data)
        and e["n"] == ext["external"]["n"] == 24
        and e["file"] == "external/external.json"
    )
    rows = {r["metric"]: r for r in ext["metrics"]}
    for row in e["metrics"]:  # the drops as external.json measured them
        assert row["drop"] == pytest.approx(rows[row["metric"]]["drop"])
        assert row["external_ci95"] == pytest.approx(rows[row["metric"]]["external_ci95"])
    texts = _texts(card)
    assert not any("Not validated on any external dataset" in t for t in texts)
    [line] = [t for t in texts if t.startswith("Externally validated on")]
    auc = rows["ROC AUC"]
    assert str(data) in line and f"({-auc['drop']:+.3f})" in line and f"{auc['external']:.3f} there" in line
    # an external set that shares images with training is named as not independent (or not, as measured)
    shared = ext["overlap_with_training"].get("external_images_in_training") or 0
    assert any("it is not independent" in t for t in texts) == (shared > 0)
    md = (run_copy / "model_card.md").read_text()
    assert f"### {data} (24 images; `external/external.json`)" in md and "Not externally validated" not in md

    # a second external set written outside the run folder (--out) is added, and remembered afterwards
    data_b = _other_hospital(tmp_path / "hospital B", kermany_dir, 12)
    out_b = tmp_path / "eval-b"
    proc = run_cli("evaluate", str(run_copy), "--data", str(data_b), "--label-map", MAPPING, "--out",
                   str(out_b), "-q")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    card = _card(run_copy)
    assert [e["source"] for e in card["external_validation"]] == [str(data), str(data_b)]
    assert card["external_validation"][1]["file"] == str((out_b / "external.json").resolve())
    assert sum(t.startswith("Externally validated on") for t in _texts(card)) == 2
    from cxrlab.reports.model_card import write_card

    again = write_card(run_copy)  # e.g. after the run's own `cxr evaluate`: both sets are still listed
    assert [e["source"] for e in again["external_validation"]] == [str(data), str(data_b)]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_embeds_the_card(fmt, run_copy, tmp_path):
    from cxrlab.deploy.export import read_metadata, read_model_card

    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt")
    proc = run_cli("export", str(run_copy), "--format", fmt, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    card = _card(run_copy)
    assert read_model_card(out) == card
    assert read_metadata(out)["run_id"].startswith("run@")  # the contract is unchanged beside it
    if fmt == "onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        assert json.loads(props["model_card"]) == card


def test_served_card_and_the_page(validated, tmp_path):
    """/v1/model is the run folder's card plus the contract and the server's heatmaps; the page shows its
    limitations once each, ranked, in a few lines (checked in a real Chromium)."""
    from tests.deploy.test_serve import Server

    run_copy = validated[0]
    card = _card(run_copy)
    server = Server(run_copy).wait()
    try:
        status, model, _ = server.get("/v1/model")
        assert status == 200
        contract_keys = {"cxrlab_version", "model", "classes", "input", "task", "operating_point"}
        for key, value in card.items():
            if key not in contract_keys:
                assert model[key] == value, key
        assert model["run_id"].startswith("run@") and model["input"]["image_size"] == 64
        assert "heatmaps" in model and model["limitations"][0]["severity"] in LEVELS
        status, page, _ = server.get("/")
        assert status == 200
        html = page["text"]
        file = tmp_path / "serve.html"
        file.write_text(html)
        state = _page_state(server.port)
    finally:
        server.stop()
    section = html[html.index("<h2>Known limitations</h2>") : html.index("<script")]
    assert section.count('class="warn"') == 0  # no boxes: one line per limitation
    shown = card["limitations"]
    assert section.count("<li>") == len(shown)
    for x in shown:  # each exactly once (the page escapes quotes)
        assert section.count(x["text"].replace("'", "&#39;")) == 1
    assert "Externally validated on" in section and "Not validated on any external dataset" not in html
    if state is not None:
        assert state["errors"] == []
        assert state["visible"] == [x["text"] for x in shown[:6]]
        assert state["severities"][: len(shown)] == [x["severity"] for x in shown]
        assert state["evidence"].startswith("External validation:") and "hospital A" in state["evidence"]


def _page_state(port: int) -> dict | None:
    """The limitations a reader sees on the page in headless Chromium (None without Chromium, outside CI)."""
    from tests.browser import chromium, chromium_page, page_errors
    from tests.conftest import REQUIRE_ALL

    if chromium() is None:
        if REQUIRE_ALL:
            pytest.fail("chromium is not installed (.ci/run installs it)")
        return None
    with chromium_page(("Page", "Runtime", "Log"), timeout=60) as cdp:
        cdp.call("Page.navigate", url=f"http://127.0.0.1:{port}/")
        cdp.wait_for("Page.loadEventFired", 60)
        time.sleep(0.2)
        value = cdp.call(
            "Runtime.evaluate",
            expression="""JSON.stringify({
                visible: Array.from(document.querySelectorAll('#limitations > li'))
                    .filter(li => li.offsetParent !== null)
                    .map(li => li.innerText.replace(/^\\S+\\s+/, '')),
                severities: Array.from(document.querySelectorAll('ul.limits .sev')).map(s => s.textContent),
                evidence: (Array.from(document.querySelectorAll('p.muted'))
                    .map(p => p.innerText).find(t => t.includes('External validation:')) || '')
                    .split('\\n').find(t => t.startsWith('External validation:')) || ''})""",
            returnByValue=True,
        )["result"]["value"]
        state = json.loads(value)
        state["errors"] = page_errors(cdp.events)
    return state


def test_severity_ranking_dedupes():
    got = ranked(["b  text", "1 image(s) of the test split are exact copies of x", "B text", ""])
    assert [w["severity"] for w in got] == ["critical", "medium"] and got[1]["text"] == "b text"
    assert re.match(r"\d", got[0]["text"])
