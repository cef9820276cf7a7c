"""Heads as config: pooling, batch norm, dense stack, activation, dropout, L2 on chosen layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cxrlab.config import HeadConfig, ModelConfig, TrainConfig
from cxrlab.models import build_model
from cxrlab.models.heads import Head, dropout_rates
from cxrlab.training.module import ClassifierModule


def _kinds(head: Head) -> list[str]:
    return [type(m).__name__ for m in head.body]


def test_dropout_rate_i_comes_before_dense_layer_i_and_the_last_before_the_output():
    assert dropout_rates(0.2, 2) == [0.2, 0.2, 0.2]
    assert dropout_rates([0.0, 0.3], 1) == [0.0, 0.3]
    assert dropout_rates([0.0, 0.5], 3) == [0.0, 0.5, 0.5, 0.5]  # a short list repeats its last rate
    head = Head((512, 7, 7), HeadConfig(pooling="flatten", hidden=[256], dropout=[0.0, 0.3]), [256], 1)
    assert _kinds(head) == ["Linear", "ReLU", "Dropout"]
    assert head.body[2].p == 0.3 and head.body[0].in_features == 512 * 7 * 7


@pytest.mark.parametrize(
    ("pooling", "expected"),
    [
        ("avg", lambda x: x.mean((2, 3))),
        ("max", lambda x: x.amax((2, 3))),
        ("flatten", lambda x: x.flatten(1)),
    ],
)
def test_pooling(pooling, expected):
    head = Head((3, 4, 4), HeadConfig(pooling=pooling, dropout=0.0), [], 2).eval()
    x = torch.randn(2, 3, 4, 4)
    assert torch.allclose(head.features(x), expected(x))


def test_batch_norm_on_the_map_and_after_dense_layers_and_leaky_slope():
    cfg = HeadConfig(
        batch_norm=True, dense_batch_norm=True, activation="leaky_relu", leaky_slope=0.2, dropout=0.0
    )
    head = Head((8, 3, 3), cfg, [16, 4], 2)
    assert isinstance(head.norm, nn.BatchNorm2d) and head.norm.num_features == 8
    assert _kinds(head) == ["Linear", "BatchNorm1d", "LeakyReLU", "Linear", "BatchNorm1d", "LeakyReLU"]
    assert head.body[2].negative_slope == 0.2
    vector = Head((1024,), HeadConfig(batch_norm=True), [], 4)  # MLP input: batch norm on the vector
    assert isinstance(vector.norm, nn.BatchNorm1d)


def _model(where):
    head = HeadConfig(hidden=[8], dropout=0.0, l2=0.5, l2_layers=where)
    return build_model(ModelConfig(name="small_cnn", head=head), 2)


def test_l2_applies_to_the_chosen_layers_only():
    model = _model(["hidden"])
    assert model.l2_modules(["hidden"]) == [model.head.body[0]]
    assert model.l2_modules(["output"]) == [model.head.out]
    convs = model.l2_modules(["conv"])
    assert convs and all(isinstance(m, nn.Conv2d) for m in convs)
    model = build_model(ModelConfig(name="small_cnn", freeze="backbone"), 2)
    assert model.l2_modules(["conv"]) == [], "frozen layers get no penalty"


def test_keras_style_penalty_is_l2_times_the_sum_of_squared_weights():
    model = _model(["conv"])
    module = ClassifierModule(model, TrainConfig(), 2, l2=0.5, l2_modules=model.l2_modules(["conv"]))
    expected = 0.5 * sum((m.weight**2).sum() for m in model.backbone.modules() if isinstance(m, nn.Conv2d))
    assert torch.allclose(module.penalty(), expected)


def test_penalty_shrinks_the_penalised_weights_in_training():
    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 64, 64), torch.randint(0, 2, (8,))
    norms = {}
    for l2 in (0.0, 1.0):
        torch.manual_seed(0)
        model = build_model(
            ModelConfig(name="small_cnn", head=HeadConfig(hidden=[8], l2=l2, l2_layers=["conv"])), 2
        )
        module = ClassifierModule(
            model, TrainConfig(lr=0.01), 2, l2=l2, l2_modules=model.l2_modules(["conv"])
        )
        opt = module.configure_optimizers()
        for _ in range(5):
            opt.zero_grad()
            (module.loss(model(x), y) + module.penalty()).backward()
            opt.step()
        norms[l2] = float(model.backbone[0].weight.detach().norm())
    assert norms[1.0] < norms[0.0]
