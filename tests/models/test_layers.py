"""What a "layer" is (Keras' counting) and what `--freeze N` freezes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cxrlab.config import ModelConfig
from cxrlab.models import build_model
from cxrlab.models.layers import backbone_layers, trace_layers


def _meta(name: str, freeze: str = "none", **kw):
    with torch.device("meta"):
        return build_model(ModelConfig(name=name, freeze=freeze, **kw), 2)


@pytest.mark.parametrize(
    ("name", "layers"),
    [
        ("inception_v3", 311),  # Keras InceptionV3(include_top=False): 311 layers
        ("resnet50", 173),  # Keras: 175 = these + conv1_pad and pool1_pad (ZeroPadding2D)
        ("vgg16", 32),  # Keras: 19, its Conv2D layers include the ReLU
        ("timm/mobilenetv1_100", 82),  # Keras MobileNet: 86 = these + 4 ZeroPadding2D
    ],
)
def test_layer_counts_match_keras_conventions(name, layers):
    assert len(backbone_layers(_meta(name))) == layers


def test_layers_are_in_execution_order_with_the_input_first():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Identity(), nn.MaxPool2d(2))
    layers = trace_layers(net, torch.zeros(1, 1, 8, 8))
    assert [(layer.index, layer.kind) for layer in layers] == [
        (1, "input"),
        (2, "Conv2d"),
        (3, "BatchNorm2d"),
        (4, "ReLU"),
        (5, "MaxPool2d"),
    ]
    assert layers[1].output_shape == (4, 6, 6) and layers[-1].output_shape == (4, 3, 3)


def test_functional_ops_count_as_layers_and_reused_modules_twice():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)
            self.relu = nn.ReLU()

        def forward(self, x):
            y = self.relu(self.conv(x))
            return torch.cat([self.relu(x + y), torch.nn.functional.avg_pool2d(x, 1)], 1)

    layers = trace_layers(Block(), torch.zeros(1, 2, 4, 4))
    kinds = [layer.kind for layer in layers]
    assert kinds == ["input", "Conv2d", "ReLU", "add", "ReLU", "pooling", "concatenate"]
    assert [layer.first_call for layer in layers if layer.kind == "ReLU"] == [True, False]


def _trainable_names(model) -> set[str]:
    return {n for n, p in model.backbone.named_parameters() if p.requires_grad}


def test_freeze_n_freezes_exactly_the_first_n_layers_of_inception():
    model = _meta("inception_v3", "300")
    layers = backbone_layers(model)
    expected = set()
    for layer in layers[300:]:
        if layer.module is not None:
            expected |= {id(p) for p in layer.module.parameters(recurse=False)}
    trainable = {id(p) for p in model.backbone.parameters() if p.requires_grad}
    assert trainable == expected
    names = _trainable_names(model)
    assert names and all(n.startswith("upper.2.") for n in names), "only part of mixed10 trains"
    assert all(p.requires_grad for p in model.head.parameters())
    assert all(p.requires_grad for p in model.aux_head.parameters())


def test_freeze_boundaries_of_inception_blocks_match_keras():
    # Keras' classic fine-tuning recipe freezes model.layers[:249]: everything through block mixed8.
    model = _meta("inception_v3", "249")
    names = _trainable_names(model)
    assert all(n.startswith(("upper.1.", "upper.2.")) for n in names)  # mixed9, mixed10
    assert any(n.startswith("upper.1.") for n in names)
    assert not any(p.requires_grad for p in model.backbone.upper[0].parameters())  # mixed8 frozen


def test_freeze_0_none_backbone_and_beyond_the_last_layer():
    for freeze in ("0", "none"):
        assert all(p.requires_grad for p in _meta("resnet18", freeze).parameters())
    for freeze in ("backbone", "1000"):
        model = _meta("resnet18", freeze)
        assert not any(p.requires_grad for p in model.backbone.parameters())
        assert all(p.requires_grad for p in model.head.parameters())


def test_freeze_20_of_mobilenet_v1_stops_inside_the_third_block():
    model = _meta("timm/mobilenetv1_100", "19")
    net = model.backbone.net
    # Keras' layers[:20] end with conv_dw_3, its BN and ReLU (after a ZeroPadding2D timm lacks)
    assert not net.blocks[1][1].conv_dw.weight.requires_grad
    assert not net.blocks[1][1].bn1.weight.requires_grad
    assert net.blocks[1][1].conv_pw.weight.requires_grad
    # stem conv + BN (weight, bias), two whole separable blocks, then conv_dw_3 + BN
    assert sum(not p.requires_grad for p in net.parameters()) == 3 + 6 + 6 + 3


def test_freezing_keeps_the_models_train_eval_state():
    model = build_model(ModelConfig(name="small_cnn", freeze="4"), 2)
    assert model.training and all(m.training for m in model.modules())
