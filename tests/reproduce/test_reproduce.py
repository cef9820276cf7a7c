"""`cxr reproduce`: report 000 end to end on the real covid-challenge data (quick budget), the document's
numbers against the report's, reuse on a second run, and bad input in one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cxrlab.reproduce.catalog import METRICS, Reported, load_catalog, load_recipe, select_reports
from cxrlab.reproduce.document import verdict
from tests.browser import check_page
from tests.conftest import DATA, run_cli
from tests.trust.conftest import one_line_error

OFFLINE = {"CXRLAB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def report_000(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("reproduce") / "r"
    proc = run_cli(
        "reproduce",
        "000",
        "--data-root",
        str(DATA),
        "--out",
        str(out),
        "--budget",
        "quick",
        env=OFFLINE,
        timeout=2400,
        check=True,
    )
    return out, proc.stdout


@pytest.mark.timeout(2700)  # covers the module fixture: all of report 000 (minutes on 2 cores)
def test_report_000_quick_end_to_end(report_000):
    out, stdout = report_000
    doc = json.loads((out / "reproduce.json").read_text())
    assert doc["budget"] == "quick" and doc["reports"] == ["000"]
    results = doc["results"]
    assert set(results) == {e.key for e in load_catalog()["000"].experiments}
    assert all(r["status"] == "finished" for r in results.values()), results
    for key, printed in (
        ("000/task1_vgg16_binary", 21_139_777),
        ("000/task2_inception_v3", 34_919_460),
        ("000/b_vgg16_4class", 21_140_548),
    ):
        run = next(iter(results[key]["runs"].values()))
        assert run["values"]["params_total"][0] == printed  # Keras' convention, as the report prints it
        acc, ci = run["values"]["test_accuracy"]
        assert 0 <= ci[0] <= acc <= ci[1] <= 1
        # no ImageNet VGG16/InceptionV3 weights on this machine: the rows say so instead of pretending
        assert results[key]["random_weights"] is True
        assert any(n.startswith("RANDOM WEIGHTS") for n in results[key]["notes"])
        assert (out / results[key]["folder"] / "metrics.json").is_file()
    md = (out / "reproduce.md").read_text()
    assert md.count("| parameters, total | 21,139,777 |") == 1 and "| exact |" in md
    assert "not comparable (random weights)" in md
    assert re.search(r"\| test accuracy \| 100\.0% \| c\) Task 1 \| \d+\.\d% \[\d+\.\d%, \d+\.\d%\] \|", md)
    assert "fast path" in md  # frozen backbones: the document says the seconds per epoch are the head's
    for rel in re.findall(r"\]\((000/[^)]+\.png)\)", md):
        assert (out / rel).is_file(), rel
    check_page(out / "reproduce.html", "reproduce")


@pytest.mark.timeout(2700)
def test_second_run_reuses_finished_experiments(report_000):
    out, _ = report_000
    before = json.loads((out / "reproduce.json").read_text())["results"]
    proc = run_cli("reproduce", "000", "--data-root", str(DATA), "--out", str(out), env=OFFLINE, check=True)
    assert proc.stdout.count("reusing") == 3
    after = json.loads((out / "reproduce.json").read_text())["results"]
    assert {k: v["runs"] for k, v in after.items()} == {k: v["runs"] for k, v in before.items()}


@pytest.mark.parametrize(
    "args, message",
    [
        (["007"], "report '007' is not one of cxrlab's reports"),
        (["000", "--budget", "slow"], "--budget 'slow': give quick or full"),
        (["004", "--data-root", "{empty}"], "has no kermany-224/"),
        (["000", "--out", "{file}"], "is an existing file"),
        ([], "give a report"),
        (["003", "--data-root", "{fake}", "--out", "{fake}/out"], "is inside the input folder"),
    ],
)
def test_bad_input_is_one_line(tmp_path, args, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    afile = tmp_path / "afile"
    afile.write_text("x")
    fake = tmp_path / "data-root"
    (fake / "covid-challenge").mkdir(parents=True)
    defaults = {"--data-root": str(DATA), "--out": str(tmp_path / "out")}
    args = [a.format(empty=empty, file=afile, fake=fake) for a in args]
    for flag, value in defaults.items():
        if flag not in args and args:
            args += [flag, value]
    proc = run_cli("reproduce", *args, env=OFFLINE)
    one_line_error(proc)
    assert message in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_catalog_recipes_load_and_metrics_are_known():
    reports = select_reports("all")
    assert [r.id for r in reports] == ["000", "001", "002", "003", "004"]
    for report in reports:
        for exp in report.experiments:
            for recipe in [exp.recipe, *exp.recipes]:
                if recipe:
                    load_recipe(recipe)  # every recipe named in reports.yaml ships with the package
            for numbers in exp.reported.values():
                assert set(numbers) <= set(METRICS)
    assert [r.id for r in select_reports(["3", "000", "3"])] == ["000", "003"]


@pytest.mark.parametrize(
    "metric, reported, value, ci, comparable, expected",
    [
        ("test_accuracy", 0.75, 0.70, [0.62, 0.78], True, "report's value inside cxrlab's 95% CI"),
        ("test_accuracy", 0.75, 0.90, [0.84, 0.95], True, "cxrlab higher"),
        ("test_accuracy", 0.75, 0.50, [0.41, 0.59], True, "cxrlab lower"),
        ("test_accuracy", 0.75, 0.50, [0.41, 0.59], False, "not comparable (random weights)"),
        ("params_total", 21_139_777, 21_139_777, None, False, "exact"),
        ("params_trainable", 43_649_684, 43_645_524, None, True, "differs by -4,160"),
        ("s_per_epoch", (20.0, 25.0), 4.5, None, True, "5× faster here"),
        ("train_time_s", 17.52, 35.04, None, True, "2× slower here"),
        ("test_loss", 0.81, 0.78, None, True, "cxrlab better"),
        ("train_accuracy", 0.839, 1.0, None, True, "cxrlab higher"),
    ],
)
def test_verdict(metric, reported, value, ci, comparable, expected):
    assert verdict(Reported(metric, reported, "somewhere"), value, ci, comparable) == expected


def test_quick_budget_times_are_marked_not_comparable():
    """A quick run with fewer epochs or images cannot be timed against the report's full training."""
    from cxrlab.reproduce.document import time_caveats

    catalog = load_catalog()
    head_only = next(e for e in catalog["000"].experiments if e.id == "task1_vgg16_binary")
    assert set(time_caveats(head_only, "quick")) == {"train_time_s", "gpu_train_time_s"}
    capped = next(e for e in catalog["004"].experiments if e.id == "vgg19")
    assert "s_per_epoch" in time_caveats(capped, "quick")
    unchanged = next(e for e in catalog["003"].experiments if e.id == "p1_task1_mlp_relu")
    assert time_caveats(unchanged, "quick") == {} and time_caveats(head_only, "full") == {}
