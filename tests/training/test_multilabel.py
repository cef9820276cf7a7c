"""Multi-label findings end to end on the real nih-1000 label file: masked BCE, pos_weight, the frozen
fast path, val_auc early stopping, per-finding thresholds on validation, predictions.csv, the report,
`cxr evaluate`, `cxr predict` and `cxr compare` — one trained run reused by every test."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cxrlab.stats import youden_threshold
from cxrlab.training.module import masked_bce
from tests.conftest import DATA, run_cli

NIH = DATA / "nih-1000"
NIH_ARGS = ["--data", str(NIH / "images"), "--labels", str(NIH / "labels.csv"), "--labels-format", "nih"]
FAST = ["-q", "--no-tensorboard", "--set", "eval.tsne=false", "--set", "eval.bootstrap=50"]


def test_masked_bce_ignores_nan_targets_hand_computed():
    logits = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]])
    targets = torch.tensor([[1.0, float("nan"), 0.0], [0.0, 1.0, float("nan")]])
    pw = torch.tensor([2.0, 3.0, 4.0])

    def cell(x: float, y: float, w: float) -> float:
        s = 1 / (1 + np.exp(-x))
        return -(w * y * np.log(s) + (1 - y) * np.log(1 - s))

    known = [(0.5, 1, 2.0), (2.0, 0, 4.0), (1.5, 0, 2.0), (0.0, 1, 3.0)]
    expected = np.mean([cell(x, y, w) for x, y, w in known])
    assert float(masked_bce(logits, targets, pw)) == pytest.approx(expected, rel=1e-6)
    # whatever the logit behind a NaN target, the loss and its gradient there do not move
    moved = logits.clone()
    moved[0, 1], moved[1, 2] = 50.0, -50.0
    assert float(masked_bce(moved, targets, pw)) == pytest.approx(expected, rel=1e-6)
    x = logits.clone().requires_grad_(True)
    masked_bce(x, targets).backward()
    assert x.grad[0, 1] == 0 and x.grad[1, 2] == 0 and x.grad[0, 0] != 0


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory, torch_home):
    """Frozen ImageNet MobileNetV2 at 64 px on nih-1000 (fast path), balanced pos_weight, val_auc monitor."""
    if not (NIH / "labels.csv").is_file():
        pytest.skip("nih-1000 not available")
    out = tmp_path_factory.mktemp("ml") / "nih"
    proc = run_cli(
        "train", *NIH_ARGS, "--model", "mobilenet_v2", "--pretrained", "--freeze", "backbone",
        "--image-size", "64", "--epochs", "3", "--lr", "3e-3", "--out", str(out), *FAST,
        "--set", "train.pos_weight=balanced", "--set", "train.monitor=val_auc",
        # fp32: the tests below compare training's scores with `cxr predict` / `cxr evaluate` re-scoring to
        # 1e-4; with precision auto a CPU with native bf16 computes both in bf16 and they agree to ~1e-3
        "--set", "train.precision=32",
        env={"TORCH_HOME": str(torch_home.parents[2])},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out, proc


def _metrics(run):
    return json.loads((run / "metrics.json").read_text())


def test_run_is_multilabel_on_the_fast_path(ml_run):
    run, proc = ml_run
    m = _metrics(run)
    assert m["multilabel"] and m["fast_path"] and len(m["findings"]) == 14
    assert "test macro AUC" in proc.stdout and "micro AUC" in proc.stdout
    history = list(csv.DictReader((run / "history.csv").open()))
    assert "val_auc" in history[0] and all(0 <= float(r["val_auc"]) <= 1 for r in history)
    per = m["test"]["per_finding"]
    assert set(per) == set(m["findings"])
    assert 0 <= m["test"]["macro_auc"] <= 1 and m["test"]["bootstrap_unit"].startswith("patient (")


def test_multilabel_run_has_its_model_card(ml_run):
    """model_card.json / .md of a multi-label run (cxrlab.reports.model_card): the registry's multi-label
    metrics with CIs, every finding's AUC and saved threshold."""
    run, _ = ml_run
    m, card = _metrics(run), json.loads((run / "model_card.json").read_text())
    assert card["task"] == "multilabel" and card["classes"] == m["findings"]
    assert card["metrics"]["macro_auc"]["value"] == pytest.approx(m["test"]["macro_auc"])
    assert card["metrics"]["macro_auc"]["ci95"] == pytest.approx(m["test"]["macro_auc_ci95"])
    for f in m["findings"]:
        saved = m["thresholds"][f]["threshold"]
        assert card["operating_point"]["thresholds"][f] == pytest.approx(saved, abs=1e-5)
        auc = m["test"]["per_finding"][f]["auc"]
        assert card["metrics"]["per_finding"][f]["auc"] == (None if auc is None else pytest.approx(auc))
    md = (run / "model_card.md").read_text()
    assert "| finding | test positives | ROC AUC | 95% CI |" in md and "## Known limitations" in md


def test_balanced_pos_weight_is_negatives_over_positives_in_train(ml_run):
    run, _ = ml_run
    m = _metrics(run)
    rows = [r for r in csv.DictReader((run / "splits.csv").open()) if r["split"] == "train"]
    for f, w in zip(m["findings"], m["pos_weight"], strict=True):
        pos = sum(f in r["class"].split("|") for r in rows)
        assert w == pytest.approx((len(rows) - pos) / pos if pos else 1.0, rel=1e-3)


def test_predictions_csv_and_auc_equal_sklearn(ml_run):
    run, _ = ml_run
    m = _metrics(run)
    rows = list(csv.DictReader((run / "predictions.csv").open()))
    findings = m["findings"]
    assert list(rows[0])[:3] == ["path", "patient", "findings"]
    assert list(rows[0])[3:] == [f"{k}_{f}" for k in ("p", "true", "pred") for f in findings]
    assert len(rows) == m["test"]["n"]
    for f in findings:
        y = np.array([int(r[f"true_{f}"]) for r in rows])
        p = np.array([float(r[f"p_{f}"]) for r in rows])
        entry = m["test"]["per_finding"][f]
        if 0 < y.sum() < len(y):
            # the csv rounds to 6 digits (near-equal scores can tie); exact: test_multilabel_metrics.py
            assert entry["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-3)
        else:
            assert entry["auc"] is None and "undefined" in entry["note"]
        thr = m["thresholds"][f]["threshold"]
        assert all(int(r[f"pred_{f}"]) == (float(r[f"p_{f}"]) >= thr - 1e-6) for r in rows)
        assert all((f in r["findings"].split("|")) == (r[f"pred_{f}"] == "1") for r in rows)


def test_thresholds_chosen_on_validation_not_test(ml_run):
    """cxr predict on the run's validation images gives the probabilities the thresholds were chosen on."""
    run, _ = ml_run
    m = _metrics(run)
    val = [r for r in csv.DictReader((run / "splits.csv").open()) if r["split"] == "val"]
    proc = run_cli("predict", str(run), *[r["path"] for r in val], "--json")
    assert proc.returncode == 0, proc.stderr
    got = {r["image"]: r for r in json.loads(proc.stdout)}
    test_rows = list(csv.DictReader((run / "predictions.csv").open()))
    differs = 0
    for f in m["findings"]:
        y = np.array([f in r["class"].split("|") for r in val], dtype=int)
        p = np.array([got[r["path"]]["probabilities"][f] for r in val])
        saved = m["thresholds"][f]["threshold"]
        if 0 < y.sum() < len(y):
            assert saved == pytest.approx(youden_threshold(y, p), abs=2e-5)
            assert "on validation" in m["thresholds"][f]["method"]
        yt = np.array([int(r[f"true_{f}"]) for r in test_rows])
        pt = np.array([float(r[f"p_{f}"]) for r in test_rows])
        if 0 < yt.sum() < len(yt):
            differs += abs(youden_threshold(yt, pt) - saved) > 1e-6
    assert differs > 0  # the test split would have given other thresholds
    # predict names the findings above threshold as the class
    first = got[val[0]["path"]]
    assert first["class"] == ("|".join(first["findings"]) or "(none)")


def test_report_shows_data_warnings_first_and_every_finding(ml_run):
    run, _ = ml_run
    html = (run / "report.html").read_text()
    m = _metrics(run)
    assert "Test metrics, multi-label" in html and "macro ROC AUC" in html
    if m["audit"]["warnings"]:
        assert html.index("Data warnings") < html.index("Test metrics, multi-label")
    for f in m["findings"]:
        assert f"<td>{f}</td>" in html
    for plot in ("roc", "cooccurrence", "reliability", "curves"):
        assert (run / m["plots"][plot]).is_file()
    assert "the data audit could not run" not in " ".join(m["audit"]["warnings"])
    assert "findings_baseline" in m["audit"]
    # the label file's uncertainty policy is named (NIH has no -1 cells; the default policy is ignore)
    policy = m["label_policy"]
    assert policy == m["test"]["label_policy"] and policy["uncertainty"] == "ignore"
    assert policy["file"].endswith("labels.csv") and policy["format"] == "nih"
    assert "uncertainty policy <b>ignore</b>" in html and "masked out of the loss and the metrics" in html


def test_evaluate_rescoring_matches_training(ml_run):
    run, _ = ml_run
    proc = run_cli("evaluate", str(run))
    assert proc.returncode == 0, proc.stderr
    assert "macro AUC" in proc.stdout
    again = json.loads((run / "evaluation" / "metrics.json").read_text())
    m = _metrics(run)
    assert again["test"]["n"] == m["test"]["n"]
    for f in m["findings"]:
        a, b = again["test"]["per_finding"][f]["auc"], m["test"]["per_finding"][f]["auc"]
        assert (a is None and b is None) or a == pytest.approx(b, abs=1e-4)
    assert (run / "evaluation" / "report.html").is_file()


def test_bad_pos_weight_length_is_one_line(tmp_path, torch_home):
    from tests.trust.conftest import one_line_error

    proc = run_cli("train", *NIH_ARGS, "--model", "small_cnn", "--image-size", "32", "--epochs", "1",
                   "--out", str(tmp_path / "r"), *FAST, "--set", "train.pos_weight=[1, 2]")  # fmt: skip
    line = one_line_error(proc)
    assert "train.pos_weight has 2 value(s) for 14 finding(s)" in line
    assert not (tmp_path / "r").exists()
    line = one_line_error(
        run_cli("train", *NIH_ARGS, "--out", str(tmp_path / "r"), "--set", "train.pos_weight=heavy")
    )
    assert "pos_weight" in line and "balanced" in line
    line = one_line_error(
        run_cli("train", *NIH_ARGS, "--out", str(tmp_path / "r"), *FAST, "--set", "data.labels.task=single")
    )
    assert "data.labels.task=single needs exactly one finding" in line


def test_compare_two_multilabel_runs_paired_auc_holm(ml_run, tmp_path, torch_home):
    """A second run (cached features: seconds) against the first: per-finding and macro AUC differences."""
    run, _ = ml_run
    other = tmp_path / "nih-nopw"
    proc = run_cli(
        "train", *NIH_ARGS, "--model", "mobilenet_v2", "--pretrained", "--freeze", "backbone",
        "--image-size", "64", "--epochs", "1", "--out", str(other), *FAST,
        env={"TORCH_HOME": str(torch_home.parents[2])},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("compare", str(run), str(other), "--out", str(tmp_path / "cmp"))
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((tmp_path / "cmp" / "pairwise_auc.csv").open()))
    findings = _metrics(run)["findings"]
    assert [r["finding"] for r in rows] == findings + ["macro AUC"]
    tested = [r for r in rows if r["p_bootstrap"]]
    from cxrlab.stats import holm

    assert [float(r["p_holm"]) for r in tested] == pytest.approx(
        holm([float(r["p_bootstrap"]) for r in tested]), abs=1e-4
    )
    macro = rows[-1]
    assert float(macro["auc_a"]) == pytest.approx(_metrics(run)["test"]["macro_auc"], abs=1e-4)
    lo, hi = float(macro["difference_ci95_lo"]), float(macro["difference_ci95_hi"])
    assert lo <= float(macro["difference"]) <= hi
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "Multi-label: paired AUC differences" in md and "older run without predictions" not in md
    from tests.browser import check_page

    html = (tmp_path / "cmp" / "compare.html").read_text()
    assert "Multi-label: per-finding AUC, paired tests" in html and f"over {len(tested)}" in html
    for f in findings + ["macro AUC"]:
        assert f"<td>{f}</td>" in html
    check_page(tmp_path / "cmp" / "compare.html", "compare")


HIRES = DATA / "nih-hires"


def test_external_validation_on_nih_hires_per_finding(ml_run, tmp_path):
    """cxr evaluate RUN --data OTHER --labels OTHER.csv: 19 NIH images at 256-1024 px (resized to the run's
    64 px), scored per finding at the saved thresholds; AUCs equal sklearn's on the written predictions."""
    if not (HIRES / "labels.csv").is_file():
        pytest.skip("nih-hires not available")
    run, _ = ml_run
    out = tmp_path / "ext"
    proc = run_cli(*_external(run, HIRES / "images", HIRES / "labels.csv"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["test"]["n"] == 19 and m["findings"] == _metrics(run)["findings"]
    assert m["findings_match"]["only_in_model"] == [] and m["findings_match"]["only_in_data"] == []
    assert set(m["internal_auc"]) == set(m["findings"])
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 19
    for f, entry in m["test"]["per_finding"].items():
        y = np.array([int(r[f"true_{f}"]) for r in rows])
        p = np.array([float(r[f"p_{f}"]) for r in rows])
        if 0 < y.sum() < len(y):
            assert entry["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-3)
            if entry["auc_ci95"] is None:  # 19 images: a finding with 1-2 positive patients
                assert m["test"]["ci_notes"][f"auc:{f}"].startswith("not estimable")
                assert f"  {f}: AUC {entry['auc']:.3f} [95% CI not estimable]" in proc.stdout
            else:
                assert entry["auc_ci95"][0] <= entry["auc"] <= entry["auc_ci95"][1]
            assert f"  {f}: AUC {entry['auc']:.3f}" in proc.stdout
        else:
            assert entry["auc"] is None
    assert m["test"]["label_policy"]["file"] == str(HIRES / "labels.csv")
    assert "macro ROC AUC" in (out / "report.html").read_text()
    # the run's model card lists this external validation (written with --out outside the run folder)
    card = json.loads((run / "model_card.json").read_text())
    [e] = [e for e in card["external_validation"] if e["file"] == str((out / "metrics.json").resolve())]
    assert e["source"] == str(HIRES / "images") and e["n"] == 19
    both = [
        f
        for f, v in m["test"]["per_finding"].items()
        if v["auc"] is not None and m["internal_auc"][f]["auc"] is not None
    ]
    [row] = e["metrics"]
    assert row["external"] == pytest.approx(np.mean([m["test"]["per_finding"][f]["auc"] for f in both]))
    assert row["internal"] == pytest.approx(np.mean([m["internal_auc"][f]["auc"] for f in both]))
    texts = [x["text"] for x in card["limitations"]]
    assert not any("Not validated on any external dataset" in t for t in texts)
    assert any(
        t.startswith(f"Externally validated on {HIRES / 'images'} (19 images): macro ROC AUC") for t in texts
    )


def _renamed_test_rows(run, path):
    """nih-1000's label rows of the run's own test images, with Effusion spelled 'Pleural effusion'."""
    test = {r["path"].rsplit("/", 1)[-1] for r in csv.DictReader((run / "splits.csv").open())
            if r["split"] == "test"}  # fmt: skip
    with (NIH / "labels.csv").open() as src, path.open("w", newline="") as dst:
        reader = csv.DictReader(src)
        writer = csv.DictWriter(dst, reader.fieldnames or [])
        writer.writeheader()
        for r in reader:
            if r["Image Index"] in test:
                r["Finding Labels"] = r["Finding Labels"].replace("Effusion", "Pleural effusion")
                writer.writerow(r)
    return len(test)


def _external(run, images, labels):
    return ["evaluate", str(run), "--data", str(images), "--labels", str(labels), "--labels-format", "nih"]


def test_external_label_map_and_findings_on_one_side(ml_run, tmp_path):
    """A label file naming Effusion differently: --label-map renames it to the model's finding; findings
    only the model (or only the data) has are listed in metrics.json, the report and the terminal. On the
    run's own test images the mapped AUCs equal the run's own."""
    run, _ = ml_run
    labels = tmp_path / "renamed.csv"
    n = _renamed_test_rows(run, labels)
    args = _external(run, NIH / "images", labels)
    proc = run_cli(*args, "--findings", "Pleural effusion,Cardiomegaly", "--label-map",
                   "Pleural effusion=Effusion", "--out", str(tmp_path / "mapped"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "mapped" / "metrics.json").read_text())
    own = _metrics(run)
    match = m["findings_match"]
    assert match["evaluated"] == m["findings"] == ["Cardiomegaly", "Effusion"]  # the model's order
    assert match["only_in_model"] == [f for f in own["findings"] if f not in ("Cardiomegaly", "Effusion")]
    assert match["only_in_data"] == [] and match["renamed"] == {"Pleural effusion": "Effusion"}
    assert m["test"]["n"] == n == own["test"]["n"]
    for f in ("Cardiomegaly", "Effusion"):
        assert m["test"]["per_finding"][f]["positives"] == own["test"]["per_finding"][f]["positives"]
        got, want = m["test"]["per_finding"][f]["auc"], own["test"]["per_finding"][f]["auc"]
        assert got == pytest.approx(want, abs=1e-4)
    assert "note: only in the model, not in the data (not evaluated): Atelectasis" in proc.stdout
    html = (tmp_path / "mapped" / "report.html").read_text()
    assert "only in the model, not in the data" in html and "renamed by --label-map" in html
    # without the map, the renamed finding is on the data's side only
    proc = run_cli(*args, "--findings", "Pleural effusion,Cardiomegaly", "--out", str(tmp_path / "plain"))
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    assert m["findings"] == ["Cardiomegaly"] and m["findings_match"]["only_in_data"] == ["Pleural effusion"]
    assert "only in the data, not predicted by the model (not evaluated): Pleural effusion" in proc.stdout


def test_external_bad_inputs_are_one_line(ml_run, tmp_path):
    from tests.trust.conftest import one_line_error

    run, _ = ml_run
    labels = tmp_path / "renamed.csv"
    _renamed_test_rows(run, labels)
    args = _external(run, NIH / "images", labels)
    line = one_line_error(run_cli(*args, "--findings", "Pleural effusion", "--out", str(tmp_path / "a")))
    assert "none of the model's findings" in line and "--label-map SRC=DST" in line
    line = one_line_error(run_cli(*args, "--label-map", "Effusions=Effusion", "--out", str(tmp_path / "b")))
    assert "--label-map names 'Effusions', not findings of" in line and "Pleural effusion" in line
    line = one_line_error(run_cli(*_external(run, NIH / "images", labels)[:2], "--labels", str(labels),
                                  "--out", str(tmp_path / "c")))  # fmt: skip
    assert "give its image folder with --data" in line
    assert not any((tmp_path / d).exists() for d in "abc")


def test_sweep_ranks_on_validation_macro_auc_and_tensorboard_logs_per_finding(ml_run, tmp_path, torch_home):
    """cxr sweep on the fixture's multi-label config (train.monitor=val_auc; cached features, 2 epochs, a
    2-value grid): each trial's objective is its run's validation macro AUC, the best is the highest; each
    trial's TensorBoard log has val_auc per epoch (= history.csv) and val_auc/<finding>, whose mean over
    the defined findings is val_auc."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cxrlab.config import RunConfig

    run, _ = ml_run
    cfg = RunConfig.load(run / "config.yaml")
    cfg.train.epochs, cfg.train.tensorboard = 2, True
    base = tmp_path / "base.yaml"
    cfg.save(base)
    out = tmp_path / "sweep"
    proc = run_cli("sweep", "--config", str(base), "--param", "lr=1e-2,1e-3", "--out", str(out),
                   env={"TORCH_HOME": str(torch_home.parents[2])})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["direction"] == "maximize" and summary["trials"] == {"complete": 2}
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    values = []
    for row in rows:
        trial = Path(row["run"])
        m = _metrics(trial)
        assert m["val"]["auc"] == m["val"]["macro_auc"]
        assert float(row["value"]) == pytest.approx(m["val"]["macro_auc"], abs=1e-6)
        values.append(float(row["value"]))
        history = list(csv.DictReader((trial / "history.csv").open()))
        ea = EventAccumulator(str(trial / "tensorboard"), size_guidance={"scalars": 0})
        ea.Reload()
        logged = ea.Scalars("val_auc")
        assert len(logged) == len(history) == 2  # Lightning's step is the optimizer step, not the epoch
        assert [e.value for e in logged] == pytest.approx([float(h["val_auc"]) for h in history], abs=1e-5)
        per = [t for t in ea.Tags()["scalars"] if t.startswith("val_auc/")]
        assert per and {t.split("/", 1)[1] for t in per} <= set(m["findings"])
        for epoch in (1, 2):
            mean = np.mean([e.value for t in per for e in ea.Scalars(t) if e.step == epoch])
            assert mean == pytest.approx(logged[epoch - 1].value, abs=1e-4)
    assert summary["best"]["value"] == pytest.approx(max(values))


def test_audit_page_has_per_finding_baselines_and_prevalence(ml_run, tmp_path):
    """audit.html of the run's real audit (cxr train's): prevalence per split and finding, and the
    metadata-only shortcut baseline per finding with its CI and strongest columns, in Chromium."""
    from cxrlab.audit import write_audit
    from cxrlab.pages import fmt
    from tests.browser import check_page

    run, _ = ml_run
    audit = _metrics(run)["audit"]
    _, page = write_audit(audit, tmp_path / "audit")
    check_page(page, "audit")
    html = page.read_text()
    assert "Shortcut baseline per finding: metadata only" in html
    assert "Prevalence per split and finding" in html
    per = audit["findings_baseline"]["per_finding"]
    assert set(per) == set(audit["findings"])
    for f, b in per.items():
        row = html[html.index(f"<tr><td>{f}</td>", html.index("findings-baseline")) :].split("</tr>")[0]
        if "skipped" in b:
            assert b["skipped"] in row
        else:
            lo, hi = b["auc_ci95"]
            assert f"{fmt(b['auc'])} [{fmt(lo)}, {fmt(hi)}]" in row and b["signal"][0]["column"] in row
        k, n = audit["counts"]["test"][f], audit["images"]["test"]
        prev = html[html.index(f"<tr><td>{f}</td>", html.index("finding-prevalence")) :].split("</tr>")[0]
        assert f"{k} / {n} ({fmt(k / n)})" in prev
