from __future__ import annotations

import pytest

from cxrlab.config import RunConfig
from cxrlab.errors import ConfigError


def test_yaml_round_trip(tmp_path):
    cfg = RunConfig()
    cfg.data.path = "somewhere"
    cfg.data.classes = ["covid", "normal"]
    cfg.model.freeze = "backbone"
    cfg.model.head.hidden = [256]
    cfg.model.head.dropout = [0.0, 0.3]
    cfg.train.lr = 1e-4
    cfg.save(tmp_path / "c.yaml")
    again = RunConfig.load(tmp_path / "c.yaml")
    assert again == cfg
    assert again.to_yaml() == cfg.to_yaml()


def test_unknown_key_is_named_with_suggestion(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'train.lrr'.*did you mean 'lr'"):
        RunConfig.load(path)


def test_wrong_type_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"'train.epochs'.*many"):
        RunConfig.load(path)


def test_top_level_unknown_section(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("trian:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'trian'.*did you mean 'train'"):
        RunConfig.load(path)


def test_invalid_yaml_and_missing_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: [epochs: 3\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        RunConfig.load(path)
    with pytest.raises(ConfigError, match="not found"):
        RunConfig.load(tmp_path / "missing.yaml")


def test_set_overrides():
    cfg = RunConfig().override(
        ["train.lr=1e-4", "model.freeze=backbone", "data.classes=[a, b]", "model.head.hidden=[128, 32]"]
    )
    assert cfg.train.lr == 1e-4
    assert cfg.model.freeze == "backbone"
    assert cfg.data.classes == ["a", "b"]
    assert cfg.model.head.hidden == [128, 32]
    with pytest.raises(ConfigError, match="unknown key 'lrate'"):
        RunConfig().override(["train.lrate=1"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        RunConfig().override(["train.lr"])


def test_freeze_accepts_numbers_and_words():
    assert RunConfig.from_dict({"model": {"freeze": 300}}).model.freeze == "300"
    assert RunConfig.from_dict({"model": {"freeze": "backbone"}}).model.freeze == "backbone"
    with pytest.raises(ConfigError, match="model.freeze"):
        RunConfig.from_dict({"model": {"freeze": "everything"}})


def test_hidden_layer_width_must_be_positive():
    """A zero-width dense layer is refused in one line naming the key (a sweep once trained one)."""
    with pytest.raises(ConfigError, match=r"model\.head\.hidden.*at least 1, got 0"):
        RunConfig().override(["model.head.hidden=[16, 0]"])


def test_yaml_off_and_on_mean_the_words_for_explain(tmp_path):
    assert RunConfig().override(["eval.explain=off"]).eval.explain == "off"
    assert RunConfig().override(["eval.explain=on"]).eval.explain == "auto"
    path = tmp_path / "run.yaml"
    path.write_text("eval:\n  explain: off\n")
    assert RunConfig.load(path).eval.explain == "off"
    with pytest.raises(ConfigError):
        RunConfig().override(["eval.explain=sometimes"])


def test_precision_32_written_as_a_number_is_the_word(tmp_path):
    assert RunConfig().override(["train.precision=32"]).train.precision == "32"
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  precision: 32\n")
    assert RunConfig.load(path).train.precision == "32"
    with pytest.raises(ConfigError, match="precision"):
        RunConfig().override(["train.precision=64"])


def test_tta_shift_is_a_fraction_of_the_side_up_to_a_quarter():
    assert RunConfig().eval.tta_shift == 0
    assert RunConfig().override(["eval.tta_shift=0.07"]).eval.tta_shift == 0.07
    with pytest.raises(ConfigError, match="tta_shift"):
        RunConfig().override(["eval.tta_shift=0.5"])
