"""Subgroup metrics (cxrlab.evaluation.subgroups) on real label rows: nih-1000 (multi-label, NIH's Patient
Gender / Patient Age / View Position) and covid-ieee (sex / age / view, blank cells).

Oracles: fairlearn's MetricFrame with scikit-learn metrics, and scikit-learn on masks, on the same
predictions; end to end, predictions.csv of a real run re-scored per sex. Bad input (missing, single-valued
columns, free-text ages) is named in one line and nothing is dropped silently."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import recall_score, roc_auc_score

from cxrlab.config import LabelsConfig
from cxrlab.data.index import discover
from cxrlab.evaluation import subgroups as sg
from tests.conftest import DATA, _need, run_cli

pytest.importorskip("fairlearn.metrics")  # the [fairness] extra (a skip fails under CXRLAB_REQUIRE_ALL=1)

NIH = DATA / "nih-1000"
COVID = DATA / "covid-ieee"


@pytest.fixture(scope="module")
def nih():
    """nih-1000's test split: its index, targets, patients, and real-signal scores (patient age plus
    the label, so per-group AUCs differ) thresholded at 0.5."""
    _need(NIH / "labels.csv", "nih-1000")
    index = discover(NIH / "images", labels=LabelsConfig(file=str(NIH / "labels.csv"), format="nih"))
    test = index.split("test")
    targets = np.stack([s.targets for s in test]).astype(np.float64)
    rng = np.random.default_rng(0)
    probs = np.clip(0.35 * targets + 0.65 * rng.random(targets.shape), 0, 1)
    thresholds = {f: {"threshold": 0.6} for f in index.findings}
    return index, test, targets, probs, thresholds


@pytest.mark.parametrize(
    ("text", "years", "band"),
    [("058Y", 58, "40-59"), ("90+", 90, "80+"), ("045M", 3.75, "0-19"), ("58", 58, "40-59"),
     ("58.0", 58, "40-59"), (" 19 ", 19, "0-19"), ("080Y", 80, "80+"), ("003D", 3 / 365.25, "0-19")],
)  # fmt: skip
def test_ages_parse_from_label_cells_and_dicom_patient_age(text, years, band):
    assert sg.parse_age(text) == pytest.approx(years)
    assert sg.normalise("age", text) == band


@pytest.mark.parametrize("text", ["", "abc", "-5", "200", "Y", None, "unknown"])
def test_unparseable_ages_are_none(text):
    assert sg.parse_age(text) is None and sg.normalise("age", text) is None


def test_sex_is_normalised_and_blank_is_missing():
    assert [sg.normalise("sex", v) for v in ("M", "female", " F ", "", "Unknown", "O")] == [
        "M", "F", "F", None, None, "O"
    ]  # fmt: skip


def test_preset_defaults_are_sex_age_band_and_view(nih):
    index, test, *_ = nih
    data = sg.collect(index, [s.path for s in test])
    assert [a.name for a in data.attributes] == ["sex", "age band", "view"]
    assert data.attributes[0].source == "column 'Patient Gender' of labels.csv"
    assert sum(data.attributes[1].levels().values()) == len(test)  # every NIH age parses


def _oracle_frame(o: sg.Outcome, groups: np.ndarray, findings: list[str], targets, probs, decided):
    """An independent MetricFrame: scikit-learn metrics on (positive, called) and per finding."""
    from fairlearn.metrics import MetricFrame

    frame = MetricFrame(
        metrics={"sensitivity": recall_score, "specificity": lambda t, p: recall_score(1 - t, 1 - p)},
        y_true=o.positive.astype(int), y_pred=o.called.astype(int), sensitive_features=groups,
    )  # fmt: skip
    per = {}
    for j, f in enumerate(findings):
        y = targets[:, j].astype(int)
        per[f] = MetricFrame(
            metrics=lambda t, p: roc_auc_score(t, p) if 0 < t.sum() < len(t) else np.nan,
            y_true=y, y_pred=probs[:, j], sensitive_features=groups,
        ).by_group  # fmt: skip
    return frame.by_group, per


def test_per_group_numbers_equal_fairlearn_and_sklearn(nih):
    index, test, targets, probs, thresholds = nih
    data = sg.collect(index, [s.path for s in test], min_n=20)
    o = sg.multilabel_outcome(targets, probs, index.findings, thresholds)
    r = sg.evaluate(data, o, [s.group for s in test], n_boot=50, seed=0)
    sex = np.array(data.attributes[0].values, dtype=object)
    by_group, per = _oracle_frame(o, sex, index.findings, targets, probs, o.decided)
    rows = {(g["attribute"], g["group"]): g for g in r["groups"]}
    for level in ("F", "M"):
        row = rows[("sex", level)]
        m = sex == level
        assert row["n_images"] == m.sum()
        assert row["n_patients"] == len({s.group for s, k in zip(test, m, strict=True) if k})
        assert row["sensitivity"] == pytest.approx(by_group.loc[level, "sensitivity"])
        assert row["specificity"] == pytest.approx(by_group.loc[level, "specificity"])
        # sklearn directly: underdiagnosis = positives (any finding) with every finding below threshold
        pos = targets[m].max(1) > 0
        normal_call = ~(probs[m] >= 0.6).any(1)
        assert row["underdiagnosis_rate"] == pytest.approx(1 - recall_score(pos, ~normal_call))
        assert row["prevalence"] == pytest.approx(pos.mean())
        aucs = []
        for j, f in enumerate(index.findings):
            want = per[f].loc[level]
            got = row[f"{f}/auc"]
            assert (got is None and np.isnan(want)) or got == pytest.approx(want)
            if got is not None:
                aucs.append(got)
                assert got == pytest.approx(roc_auc_score(targets[m, j], probs[m, j]))
        assert row["auc"] == pytest.approx(np.mean(aucs))
    assert r["overall"]["n_images"] == len(test)
    for row in r["groups"]:  # every interval holds its estimate (the patient bootstrap's point is it)
        for key in sg.METRICS:
            ci = row.get(f"{key}_ci95")
            if ci is not None and row[key] is not None:
                assert ci[0] - 1e-9 <= row[key] <= ci[1] + 1e-9
    assert r["bootstrap_unit"] == "patient" and "patients" in r["ci_method"]


def test_a_planted_gap_is_warned_and_small_cells_named(nih):
    """Scores that are noise for women and informative for men: the AUC gap's CI excludes zero and the
    report's warning says so; 80+ (5 images) and the sex × age band cells below min_n are named."""
    index, test, targets, _, thresholds = nih
    data = sg.collect(index, [s.path for s in test], min_n=20)
    sex = np.array(data.attributes[0].values, dtype=object)
    rng = np.random.default_rng(1)
    probs = np.where((sex == "M")[:, None], 0.8 * targets + 0.2 * rng.random(targets.shape),
                     rng.random(targets.shape))  # fmt: skip
    o = sg.multilabel_outcome(targets, probs, index.findings, thresholds)
    r = sg.evaluate(data, o, [s.group for s in test], n_boot=200, seed=0)
    gap = next(g for g in r["gaps"] if g["attribute"] == "sex" and g["metric"] == "auc")
    assert (gap["high"], gap["low"]) == ("M", "F") and gap["excludes_zero"]
    assert any(w.startswith("AUC differs by sex") and "worse for F" in w for w in r["warnings"])
    small = {(c["attribute"], c["group"]): c["n_images"] for c in r["too_small"]}
    assert small[("age band", "80+")] == 5
    assert not any(g["group"] == "80+" for g in r["groups"])
    cross = r["intersections"][0]
    assert cross["attributes"] == ["sex", "age band"]
    cells = [c for c in r["too_small"] if c["attribute"] == "sex × age band"]
    assert cross["computed"] is bool(not cells) and all(c["n_images"] < 20 for c in cells)
    if not cross["computed"]:
        assert not any(g["attribute"] == "sex × age band" for g in r["groups"])


def test_intersections_are_computed_when_every_cell_is_large_enough(nih):
    """min_n 6: age band 80+ (5 images) is too small alone, so its cells are not asked for; the other
    sex × age band cells (the smallest F · 20-39, 6 images) are all computed."""
    index, test, targets, probs, thresholds = nih
    data = sg.collect(index, [s.path for s in test], ["sex", "age"], min_n=6)
    o = sg.multilabel_outcome(targets, probs, index.findings, thresholds)
    r = sg.evaluate(data, o, [s.group for s in test], n_boot=0, seed=0)
    assert r["intersections"] == [{"attributes": ["sex", "age band"], "computed": True}]
    cross = {g["group"]: g for g in r["groups"] if g["attribute"] == "sex × age band"}
    assert len(cross) == 6 and "F · 80+" not in cross
    sex, age = (np.array(a.values, dtype=object) for a in data.attributes)
    for name, row in cross.items():
        left, right = name.split(" · ")
        m = (sex == left) & (age == right)
        assert row["n_images"] == m.sum() >= 6
        pos = targets[m].max(1) > 0
        if not pos.any():  # no positive case: undefined, not scikit-learn's zero_division fill-in
            assert row["underdiagnosis_rate"] is None and row["sensitivity"] is None
            continue
        assert row["underdiagnosis_rate"] == pytest.approx(1 - recall_score(pos, (probs[m] >= 0.6).any(1)))


def _covid_file(tmp_path: Path, edit) -> Path:
    """covid-ieee's labels.csv with some cells edited (``edit(rows)``), written beside the images."""
    src = _need(COVID / "labels.csv", "covid-ieee")
    with src.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    edit(rows)
    out = tmp_path / "labels.csv"
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def test_free_text_ages_parse_or_are_counted_never_dropped(tmp_path):
    def edit(rows):
        for row, text in zip(rows, ["058Y", "90+", "", "abc", "045M", "abc"], strict=False):
            row["age"] = text

    file = _covid_file(tmp_path, edit)
    index = discover(COVID / "images", labels=LabelsConfig(file=str(file), format="covid-ieee"))
    paths = [s.path for s in index.samples]
    data = sg.collect(index, paths, ["sex", "age", "view"])
    age = next(a for a in data.attributes if a.name == "age band")
    assert sum(age.levels().values()) + age.blank + sum(age.unparsed.values()) == len(paths)
    assert age.unparsed["abc"] == 2
    by_path = {s.path: s for s in index.samples}
    first = [sg.normalise("age", index.table.rows[by_path[p].row][3]) for p in paths[:6]]
    assert first[:2] == ["40-59", "80+"] and first[4] == "0-19"
    line = next(n for n in data.notes if n.startswith("age band:"))
    assert f"of {len(paths)} images have no usable value" in line and "'abc' ×2" in line
    sex = next(a for a in data.attributes if a.name == "sex")
    assert sex.blank == 36  # covid-ieee's own blank sex cells: counted, in no group


def test_missing_and_single_valued_columns_are_one_line_each(tmp_path):
    def edit(rows):
        for row in rows:
            row["modality"] = "X-ray"

    file = _covid_file(tmp_path, edit)
    index = discover(COVID / "images", labels=LabelsConfig(file=str(file), format="covid-ieee"))
    data = sg.collect(index, [s.path for s in index.samples], ["sex", "Race", "modality"])
    assert [a.name for a in data.attributes] == ["sex"]
    assert data.missing == ["subgroup 'Race' is not a column of labels.csv: left out"]
    single = "modality (column 'modality' of labels.csv) has one value (X-ray)"
    assert any(n.startswith(single) for n in data.notes)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, len(index.samples))
    probs = np.column_stack([1 - (p := rng.random(len(y))), p])
    o = sg.single_label_outcome(y, probs, (p >= 0.5).astype(int), ["a", "b"], "b")
    r = sg.evaluate(data, o, [s.group for s in index.samples], n_boot=0, seed=0)
    assert r["warnings"][0] == data.missing[0]  # the report and the model card show it


def test_single_label_binary_equals_sklearn_at_the_threshold(tmp_path):
    """Binary single-label: positive = the operating point's class; sensitivity / specificity /
    underdiagnosis per sex are scikit-learn's recall on the thresholded predictions."""
    file = _need(COVID / "labels.csv", "covid-ieee")
    index = discover(COVID / "images", labels=LabelsConfig(file=str(file), format="covid-ieee"))
    samples = index.samples
    data = sg.collect(index, [s.path for s in samples], ["sex"], min_n=10)
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, len(samples))
    p1 = np.clip(0.3 * y + 0.7 * rng.random(len(y)), 0, 1)
    probs = np.column_stack([1 - p1, p1])
    pred = (p1 >= 0.4).astype(int)
    o = sg.single_label_outcome(y, probs, pred, ["neg", "pos"], "pos")
    r = sg.evaluate(data, o, [s.group for s in samples], n_boot=100, seed=0)
    sex = np.array(data.attributes[0].values, dtype=object)
    for row in r["groups"]:
        m = sex == row["group"]
        assert row["sensitivity"] == pytest.approx(recall_score(y[m], pred[m]))
        assert row["specificity"] == pytest.approx(recall_score(1 - y[m], 1 - pred[m]))
        assert row["underdiagnosis_rate"] == pytest.approx(1 - recall_score(y[m], pred[m]))
        assert row["auc"] == pytest.approx(roc_auc_score(y[m], p1[m]))
    assert {g["group"] for g in r["groups"]} == {"F", "M"}


def test_multiclass_without_a_normal_class_is_named_not_computed():
    y = np.array([0, 1, 2])
    assert sg.single_label_outcome(y, np.eye(3), y, ["a", "b", "c"], None) is None
    data = sg.SubgroupData([sg.Attribute("sex", "x", ["F", "M", "F"])], [])
    r = sg.evaluate(data, None, None, 0, 0)
    assert "normal class" in r["skipped"] and r["summary"]


# ---------------------------------------------------------------------------------------------- end to end


NIH_ARGS = ["--data", str(NIH / "images"), "--labels", str(NIH / "labels.csv"), "--labels-format", "nih"]


@pytest.fixture(scope="module")
def nih_run(tmp_path_factory):
    """A small real multi-label run on nih-1000 (small CNN, 32 px, one epoch, 50 resamples)."""
    _need(NIH / "labels.csv", "nih-1000")
    out = tmp_path_factory.mktemp("sg") / "nih"
    proc = run_cli("train", *NIH_ARGS, "--model", "small_cnn", "--image-size", "32", "--epochs", "1",
                   "--out", str(out), "-q", "--no-tensorboard", "--set", "eval.tsne=false",
                   "--set", "eval.bootstrap=50", "--set", "eval.explain=off")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out


def _sex_by_image() -> dict[str, str]:
    with (NIH / "labels.csv").open(newline="") as fh:
        return {r["Image Index"]: r["Patient Gender"] for r in csv.DictReader(fh)}


def test_training_reports_subgroups_that_predictions_csv_reproduces(nih_run):
    from fairlearn.metrics import MetricFrame

    m = json.loads((nih_run / "metrics.json").read_text())
    s = m["subgroups"]
    assert [a["name"] for a in s["attributes"]] == ["sex", "age band", "view"]
    assert s["min_n"] == 20 and s["summary"] and isinstance(s["warnings"], list)
    with (nih_run / "predictions.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    findings = m["findings"]
    sex_of = _sex_by_image()
    sex = np.array([sex_of[Path(r["path"]).name] for r in rows])
    positive = np.array([any(r[f"true_{f}"] == "1" for f in findings) for r in rows]).astype(int)
    called = np.array([any(r[f"pred_{f}"] == "1" for f in findings) for r in rows]).astype(int)
    frame = MetricFrame(metrics={"sensitivity": recall_score,
                                 "specificity": lambda t, p: recall_score(1 - t, 1 - p)},
                        y_true=positive, y_pred=called, sensitive_features=sex)  # fmt: skip
    got = {g["group"]: g for g in s["groups"] if g["attribute"] == "sex"}
    for level in ("F", "M"):
        assert got[level]["n_images"] == (sex == level).sum()
        for key in ("sensitivity", "specificity"):
            want = frame.by_group.loc[level, key]
            assert got[level][key] == pytest.approx(want) or (got[level][key] is None and np.isnan(want))
    html = (nih_run / "report.html").read_text()
    assert "Subgroups: for whom the model fails" in html and "forest plot" in html
    assert (nih_run / s["figure"]).is_file()


def test_cxr_evaluate_reports_the_same_subgroups(nih_run, tmp_path):
    out = tmp_path / "ev"
    proc = run_cli("evaluate", str(nih_run), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    again = json.loads((out / "metrics.json").read_text())["subgroups"]
    first = json.loads((nih_run / "metrics.json").read_text())["subgroups"]
    key = lambda g: (g["attribute"], g["group"])  # noqa: E731
    for a, b in zip(sorted(first["groups"], key=key), sorted(again["groups"], key=key), strict=True):
        assert key(a) == key(b) and a["n_images"] == b["n_images"]
        for k in sg.METRICS:
            assert (a[k] is None and b[k] is None) or a[k] == pytest.approx(b[k], abs=1e-4)
    assert "Subgroups: for whom the model fails" in (out / "report.html").read_text()


def test_subgroups_can_be_turned_off(nih_run, tmp_path):
    from cxrlab.config import RunConfig
    from cxrlab.evaluation.scoring import subgroup_data

    cfg = RunConfig.load(nih_run / "config.yaml")
    cfg.eval.subgroups = []
    assert subgroup_data(cfg.eval, None, []) is None


def test_compare_puts_subgroups_of_runs_on_the_same_images_side_by_side(nih_run, tmp_path):
    import shutil

    other = tmp_path / "copy"
    shutil.copytree(nih_run, other)  # a second run folder scored on the same test images
    out = tmp_path / "cmp"
    proc = run_cli("compare", str(nih_run), str(other), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    with (out / "subgroups.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    groups = json.loads((nih_run / "metrics.json").read_text())["subgroups"]["groups"]
    assert len(rows) == 2 * (len(groups) + 1)  # each run: overall + every computed subgroup
    first = {(r["attribute"], r["group"]): r for r in rows if r["run"] == rows[0]["run"]}
    for g in groups:
        r = first[(g["attribute"], g["group"])]
        assert int(r["n_images"]) == g["n_images"] and r["test_set"] == "A"
        assert (r["auc"] == "" and g["auc"] is None) or float(r["auc"]) == pytest.approx(g["auc"])
    md = (out / "compare.md").read_text()
    assert "## Per subgroup (same test images)" in md and f"{other.name}: underdiagnosis" in md
    assert "Per subgroup (same test images)" in (out / "compare.html").read_text()


def test_audit_counts_the_subgroup_mix_and_warns_when_a_split_lacks_one(nih):
    from cxrlab.audit.subgroups import subgroup_mix

    index, *_ = nih
    samples = index.samples
    paths = [s.path for s in samples]
    mix = subgroup_mix(index, paths, [s.split for s in samples])
    sex = next(a for a in mix["attributes"] if a["name"] == "sex")
    for split in ("train", "val", "test"):
        assert sum(sex["counts"][split].values()) == sum(s.split == split for s in samples)
    assert not [w for w in mix["warnings"] if "sex" in w]
    # every 80+ image moved to train: val and test have none, and say so
    band = {p: sg.normalise("age", index.table.rows[s.row][index.table.columns.index("Patient Age")])
            for p, s in zip(paths, samples, strict=True)}  # fmt: skip
    moved = ["train" if band[p] == "80+" else s.split for p, s in zip(paths, samples, strict=True)]
    mix = subgroup_mix(index, paths, moved)
    lines = [w for w in mix["warnings"] if "80+" in w]
    n80 = sum(b == "80+" for b in band.values())
    assert lines == [
        f"the val split has no image of age band 80+ (train {n80}): thresholds are chosen without them",
        f"the test split has no image of age band 80+ (train {n80}): "
        "its performance there cannot be measured",
    ]


def test_the_training_audit_reports_the_subgroup_mix(nih_run):
    audit = json.loads((nih_run / "metrics.json").read_text())["audit"]
    names = [a["name"] for a in audit["subgroups"]["attributes"]]
    assert names == ["sex", "age band", "view"]
    sex = audit["subgroups"]["attributes"][0]["counts"]
    assert set(sex) == {"train", "val", "test"} and sum(sex["test"].values()) == 206


def test_cxr_audit_page_shows_the_subgroup_mix(tmp_path):
    file = _need(COVID / "labels.csv", "covid-ieee")
    out = tmp_path / "audit"
    proc = run_cli("audit", "--data", str(COVID / "images"), "--labels", str(file), "--labels-format",
                   "covid-ieee", "--label-column", "view", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    mix = json.loads((out / "audit.json").read_text())["subgroups"]
    assert [a["name"] for a in mix["attributes"]] == ["sex", "age band"]  # view is the label
    assert any("is the label the model predicts" in n for n in mix["notes"])
    html = (out / "audit.html").read_text()
    assert "Subgroup mix per split" in html and "36 of 235 images have no usable value" in html


def test_dicom_folders_group_by_header_sex_age_view_and_manufacturer(tmp_path):
    """The 4 real DICOMs in a class folder: PatientSex, PatientAge ('081' style numbers), ViewPosition
    from the headers; Manufacturer is blank in all four, so it is named in one line, not compared."""
    import shutil

    pytest.importorskip("pydicom")
    src = sorted(_need(DATA / "dicom", "real DICOMs").glob("*.dcm"))
    for i, f in enumerate(src):
        folder = tmp_path / ("a" if i % 2 else "b")
        folder.mkdir(exist_ok=True)
        shutil.copy(f, folder / f.name)
    index = discover(tmp_path, val_fraction=0.25, test_fraction=0.25, require_test=False)
    paths = [s.path for s in index.samples]
    data = sg.collect(index, paths, min_n=1)
    by = {a.name: a for a in data.attributes}
    assert list(by) == ["sex", "age band", "view"]
    assert all(a.source.startswith("DICOM ") for a in by.values())
    assert by["sex"].levels() == {"F": 1, "M": 3}
    assert by["age band"].levels() == {"60-79": 3, "80+": 1}
    assert by["view"].levels() == {"AP": 1, "PA": 2} and by["view"].blank == 1
    assert any(n.startswith("manufacturer (DICOM Manufacturer) has no usable value") for n in data.notes)
