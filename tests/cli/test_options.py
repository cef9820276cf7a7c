"""Options defined once: every config-backed flag is in the table of cxrlab.cli.options, has typer default
None, and shows the config model's default; every list option goes through one parser that strips spaces."""

from __future__ import annotations

import json
import re

import click
import pytest
import typer.main

from cxrlab.cli import app
from cxrlab.cli.options import AUDIT, EVALUATE, SUMMARY, TRAIN, parse_label_map, split_list
from cxrlab.config import RunConfig
from cxrlab.errors import ConfigError
from tests.conftest import run_cli
from tests.trust.conftest import copy_subset, one_line_error

# Options of these commands that are deliberately not run-config keys (a new flag must go in the table
# or here, consciously).
NOT_CONFIG = {
    "train": {"out", "config", "set_", "resume", "overwrite", "quiet", "seeds", "help"},  # seeds: many runs
    "audit": {"data", "data_option", "out", "max_distance", "quiet", "help"},
    "summary": {"model", "config", "num_classes", "set_", "layers", "as_json", "help"},
    "evaluate": {"run", "data", "classes", "label_map", "out", "quiet", "allow_changed", "help"},
}
TABLES = {"train": TRAIN, "audit": AUDIT, "summary": SUMMARY, "evaluate": EVALUATE}


def _command(name: str) -> click.Command:
    return typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]


def _config_value(key: str):
    """The default of a dotted key, read from a dumped RunConfig (not through cxrlab.cli.options)."""
    node = RunConfig().model_dump()
    for part in key.split("."):
        assert isinstance(node, dict) and part in node, f"{key} is not a config key"
        node = node[part]
    return node


@pytest.mark.parametrize("command", sorted(TABLES))
def test_config_flags_match_the_config_model(command):
    table = {f.name: f for f in TABLES[command]}
    options = {p.name: p for p in _command(command).params}
    assert set(table) <= set(options), set(table) - set(options)
    unknown = set(options) - set(table) - NOT_CONFIG[command]
    assert not unknown, f"{command}: flags neither in the config table nor declared non-config: {unknown}"
    for name, flag in table.items():
        opt = options[name]
        value = _config_value(flag.key)
        assert opt.default is None, f"--{name}: typer default must be None (not given), got {opt.default!r}"
        match = re.search(r"\[default: (.+)\]$", opt.help or "")
        assert match, f"--{name}: help has no [default: …]: {opt.help!r}"
        shown = match.group(1)
        if value in (None, {}, []):
            assert shown == flag.unset and shown, (name, shown)
        elif isinstance(value, bool):
            assert shown == (opt.opts[0] if value else opt.secondary_opts[0]), (name, shown, value)
        elif isinstance(value, int | float):
            assert float(shown) == value, (name, shown, value)
        else:
            assert shown == str(value), (name, shown, value)


def test_train_help_shows_the_config_defaults():
    proc = run_cli("train", "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    lr, epochs = RunConfig().train.lr, RunConfig().train.epochs
    assert f"learning rate [default: {lr:g}]" in text and f"maximum epochs [default: {epochs}]" in text
    assert "[default: --no-augment]" in text and "[default: --tensorboard]" in text


@pytest.mark.parametrize(
    "text,expected",
    [("covid, normal", ["covid", "normal"]), (" a ,, b , ", ["a", "b"]), ("single", ["single"])],
)
def test_split_list_strips_spaces_and_drops_empties(text, expected):
    assert split_list(text) == expected


@pytest.mark.parametrize("text", ["", " ", " , ,"])
def test_split_list_refuses_an_empty_list_in_one_line(text):
    with pytest.raises(ConfigError) as exc:
        split_list(text, "--classes")
    assert str(exc.value).startswith(f"--classes {text!r}: give at least one") and "\n" not in str(exc.value)


def test_label_map_pairs_strip_spaces():
    assert parse_label_map(" COVID = covid , Normal=normal,") == {"COVID": "covid", "Normal": "normal"}
    for bad in ("COVID", "=covid", "COVID="):
        with pytest.raises(ConfigError, match="expected SRC=DST pairs"):
            parse_label_map(bad)


def test_sweep_param_values_strip_spaces():
    from cxrlab.experiments.sweep import parse_param

    assert parse_param("lr= 1e-3 , 1e-4 ,").values == [1e-3, 1e-4]
    assert parse_param("optimizer=adam, sgd").values == ["adam", "sgd"]
    with pytest.raises(ConfigError, match="give at least one"):
        parse_param("lr= , ")


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory, covid_dir):
    """covid + normal (real images), train 10/class, test 4/class."""
    root = tmp_path_factory.mktemp("data") / "covid-normal"
    return copy_subset(covid_dir, root, {"train": 10, "test": 4}, ("covid", "normal"))


FAST = ["--model", "small_cnn", "--image-size", "32", "--epochs", "1", "-q", "--no-tensorboard",
        "--set", "eval.tsne=false", "--set", "eval.bootstrap=50"]  # fmt: skip


def test_classes_with_spaces_work_in_train_evaluate_and_audit(two_classes, tmp_path):
    run = tmp_path / "run"
    run_cli("train", "--data", str(two_classes), "--classes", "covid, normal", *FAST, "--out", str(run),
            check=True)  # fmt: skip
    assert json.loads((run / "metrics.json").read_text())["classes"] == ["covid", "normal"]
    ext = tmp_path / "ext"
    run_cli("evaluate", str(run), "--data", str(two_classes), "--classes", " normal , covid ",
            "--out", str(ext), check=True)  # fmt: skip
    assert sorted(json.loads((ext / "metrics.json").read_text())["classes"]) == ["covid", "normal"]
    audit = tmp_path / "audit"
    run_cli("audit", str(two_classes), "--classes", "covid, normal", "--out", str(audit), check=True)
    assert json.loads((audit / "audit.json").read_text())["classes"] == ["covid", "normal"]
    # nothing left after splitting: one line, in every command
    for args in (["train", "--data", str(two_classes), "--out", str(tmp_path / "r2")],
                 ["audit", str(two_classes), "--out", str(tmp_path / "a2")],
                 ["evaluate", str(run), "--data", str(two_classes)]):  # fmt: skip
        line = one_line_error(run_cli(*args, "--classes", " , "))
        assert "--classes ' , ': give at least one" in line
    assert not (tmp_path / "r2").exists() and not (tmp_path / "a2").exists()
