"""One test per parameter count the five reports print, in the report's own convention.

Each model is built from its recipe (configs/*.yaml) with random initialisation on the meta
device: no weights are read. The reports are Keras (000–003: moving statistics of batch norm
count as non-trainable weights) or PyTorch (004: parameters only).
"""

from __future__ import annotations

import pytest

from cxrlab.config import RunConfig
from cxrlab.models.summary import ModelSummary, summarize
from tests.conftest import ROOT

INCEPTION_BN_SCALE = 17_216  # torchvision's InceptionV3 batch-norm γ; Keras' (scale=False) has none


def _summary(recipe: str) -> ModelSummary:
    cfg = RunConfig.load(ROOT / "configs" / f"{recipe}.yaml")
    return summarize(cfg.model, len(cfg.data.classes), cfg.data.image_size, macs=False)


def _keras(s: ModelSummary) -> tuple[int, int, int]:
    return s.keras_total, s.keras_trainable, s.keras_non_trainable


def test_report_000_vgg16_binary():
    """Report 000, Task 1: total 21,139,777, trainable 6,424,065, non-trainable 14,715,712."""
    assert _keras(_summary("covid_vgg16_binary")) == (21_139_777, 6_424_065, 14_715_712)


def test_report_000_inception_v3_four_classes():
    """Report 000, Task 2 and part b): total 34,919,460, trainable 13,112,580, non-trainable 21,806,880."""
    s = _summary("covid4_inception_v3_freeze300")
    assert _keras(s) == (34_919_460, 13_112_580, 21_806_880)
    assert s.keras_absent == INCEPTION_BN_SCALE and s.aux_params == 0
    head = [r for r in s.rows if r.part == "head" and r.params]
    assert s.rows[[r.kind for r in s.rows].index("Flatten")].output_shape == (51_200,)
    assert sum(r.params for r in head) == s.trainable == 13_112_580, "the report's trainable count = its head"
    text = s.to_text("none")
    assert "34,919,460" in text and "17,216" in text and "scale=False" in text


def test_report_000_vgg16_four_classes():
    """Report 000, part b): total 21,140,548, trainable 6,424,836, non-trainable 14,715,712."""
    assert _keras(_summary("covid4_vgg16_freeze300")) == (21_140_548, 6_424_836, 14_715_712)


def test_report_002_inception_v3_binary_gap():
    """Report 002, Task 1: total 22,069,217, trainable 19,892,801, non-trainable 2,176,416."""
    s = _summary("covid_inception_v3_binary_gap")
    assert _keras(s) == (22_069_217, 19_892_801, 2_176_416)
    assert s.total == 22_069_217 + INCEPTION_BN_SCALE - s.bn_stats


def test_report_002_inception_v3_four_classes():
    """Report 002, Task 2: total 48,085,492 exactly; trainable 43,649,684 / non-trainable 4,435,808 are
    4,160 off: layer 150 lies inside mixed5, where Keras and cxrlab order the branches differently."""
    s = _summary("covid4_inception_v3_freeze150")
    assert s.keras_total == 48_085_492
    assert (s.keras_trainable, s.keras_non_trainable) == (43_649_684 - 4_160, 4_435_808 + 4_160)


def test_report_002_mobilenet_v1_four_classes():
    """Report 002, Task 2: total 28,989,412, trainable 28,953,508, non-trainable 35,904."""
    assert _keras(_summary("covid4_mobilenet_v1_freeze20")) == (28_989_412, 28_953_508, 35_904)


def test_report_002_backbone_counts():
    """Report 002: "21,802,784 parameters in the output layer of InceptionV3 and 3,228,864 in MobileNet"."""
    for recipe, printed, gap in (
        ("covid4_inception_v3_freeze150", 21_802_784, INCEPTION_BN_SCALE),
        ("covid4_mobilenet_v1_freeze20", 3_228_864, 0),
    ):
        s = _summary(recipe)
        backbone = sum(r.keras_params for r in s.rows if r.part == "backbone")
        assert backbone == printed, recipe
        assert sum(r.params for r in s.rows if r.part == "backbone") + s.bn_stats - gap == printed


def test_report_003_mlp():
    """Report 003, Part 1 Task 1: total 353,254, all trainable."""
    for recipe in ("x32_mlp", "x32_mlp_leaky_relu", "x32_mlp_more_epochs", "x32_mlp_half_batch"):
        assert _keras(_summary(recipe)) == (353_254, 353_254, 0), recipe


def test_report_003_cnn_layer_table():
    """Report 003, Part 2 Task 1: total 3,271,492, trainable 3,271,332, non-trainable 160; its layer table."""
    s = _summary("x32_cnn")
    assert _keras(s) == (3_271_492, 3_271_332, 160)
    printed = [640, 128, 73_856, 64, 147_584, 64, 295_168, 32, 590_080, 32, 2_097_664, 65_664, 516]
    assert [r.keras_params for r in s.rows if r.keras_params] == printed
    pools = [r.output_shape for r in s.rows if r.kind == "MaxPool2d"]
    assert pools == [(64, 16, 16), (128, 8, 8), (256, 4, 4)]
    assert [r.output_shape for r in s.rows if r.kind == "Flatten"] == [(4_096,)]


@pytest.mark.parametrize(
    "recipe, total",
    [
        # computed from report 004's printed modules (it prints no count): PyTorch convention
        ("kermany_alexnet_base", 2_454_208 + 9_216 * 4_096 + 4_096 + 4_096 * 4_096 + 4_096 + 4_096 * 2 + 2),
        ("kermany_alexnet_improved", 3_904 + 51_264 + 73_856 + 4_608 * 1_024 + 1_024 + 524_800 + 1026),
    ],
)
def test_report_004_alexnet_printed_modules(recipe, total):
    s = _summary(recipe)
    assert s.total == s.keras_total == total
    assert not any(r.kind.startswith("BatchNorm") for r in s.rows), "report 004's AlexNets have no batch norm"
    dropouts = [i for i, r in enumerate(s.rows) if r.kind == "Dropout"]
    assert len(dropouts) == 2 and s.rows[-1].kind == "Linear" and s.rows[-2].kind != "Dropout"
