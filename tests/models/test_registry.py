"""Every registered model builds, runs forward and backward, and has the right shapes and size."""

from __future__ import annotations

import pytest
import torch
import torchvision.models as tvm

from cxrlab.config import HeadConfig, ModelConfig
from cxrlab.errors import ModelError
from cxrlab.models import apply_freeze, build_model, get_spec, model_names, resolve_channels

NAMES = model_names()
TORCHVISION = [n for n in NAMES if get_spec(n).family == "torchvision"]

#: the parts of torchvision's own model that a backbone leaves out (its classifier)
TV_CLASSIFIER = {
    "vgg16": ["avgpool", "classifier"],
    "vgg19": ["avgpool", "classifier"],
    "resnet18": ["fc"],
    "resnet34": ["fc"],
    "resnet50": ["fc"],
    "densenet121": ["classifier"],
    "inception_v3": ["fc", "AuxLogits"],
    "googlenet": ["fc"],
    "mobilenet_v2": ["classifier"],
    "mobilenet_v3_large": ["classifier"],
    "mobilenet_v3_small": ["classifier"],
    "efficientnet_b0": ["classifier"],
    "alexnet": ["classifier"],
}

#: a small input that the architecture still accepts (speed on 2 CPU cores); Inception needs 299 for aux
SMALL_SIZE = {"inception_v3": 299, "alexnet": 64}


def _n(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _input(name: str, size: int, batch: int = 2) -> torch.Tensor:
    spec = get_spec(name)
    channels = resolve_channels(spec, ModelConfig(name=name))
    return torch.randn(batch, channels, size, size)


def test_the_issue_s_architectures_are_registered():
    wanted = {
        "vgg16",
        "vgg19",
        "resnet18",
        "resnet34",
        "resnet50",
        "densenet121",
        "inception_v3",
        "googlenet",
        "mobilenet_v2",
        "mobilenet_v3_large",
        "mobilenet_v3_small",
        "efficientnet_b0",
        "alexnet",
        "mlp",
        "cnn5",
        "pneumonia_cnn",
        "pneumonia_cnn_improved",
        "alexnet_base",
        "alexnet_improved",
    }
    assert wanted <= set(NAMES)
    assert set(TV_CLASSIFIER) == set(TORCHVISION)
    assert get_spec("inception_v3").input_size == 299


@pytest.mark.parametrize("name", NAMES)
def test_builds_runs_forward_and_backward_with_the_right_shapes(name):
    """Eval forward at the model's default input size, then train forward + backward (batch 2)."""
    torch.manual_seed(0)
    spec = get_spec(name)
    model = build_model(ModelConfig(name=name), 3)
    model.eval()
    with torch.no_grad():
        assert model(_input(name, spec.input_size, batch=1)).shape == (1, 3)
    if spec.feature_dim is not None:
        assert model.head.in_shape[0] == spec.feature_dim
    width = model.head.feature_dim  # default head: pooling, default dense stack, output layer
    assert _n(model.head) == _n(model.head.body) + width * 3 + 3
    size = SMALL_SIZE.get(name, min(64, spec.input_size))  # where the architecture allows: faster
    model.train()
    out = model(_input(name, size))
    logits = out[0] if isinstance(out, tuple) else out
    assert logits.shape == (2, 3)
    sum(o.pow(2).mean() for o in (out if isinstance(out, tuple) else (out,))).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads), "every trainable parameter gets a gradient"
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "alexnet_improved", "cnn5", "timm/mobilenetv1_100"])
def test_forward_backward_at_the_true_default_input_size_one_model_per_family(name):
    if name.startswith("timm/"):
        pytest.importorskip("timm")
    spec = get_spec(name)
    model = build_model(ModelConfig(name=name), 2).train()
    out = model(_input(name, spec.input_size))
    assert out.shape == (2, 2)
    out.pow(2).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(("output", "outputs"), [("softmax", 2), ("sigmoid", 1)])
def test_binary_output_is_one_sigmoid_logit_or_two_softmax_logits(output, outputs):
    model = build_model(ModelConfig(name="small_cnn", head=HeadConfig(output=output, hidden=[8])), 2)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, outputs)
    with pytest.raises(ModelError, match="sigmoid needs exactly 2 classes"):
        build_model(ModelConfig(name="small_cnn", head=HeadConfig(output="sigmoid")), 3)


@pytest.mark.parametrize("name", sorted(TV_CLASSIFIER))
def test_backbone_parameters_equal_torchvision_s_model_without_its_classifier(name):
    with torch.device("meta"):
        kwargs = {"aux_logits": True, "init_weights": False} if name in ("inception_v3", "googlenet") else {}
        if name == "googlenet":
            kwargs["aux_logits"] = False
        reference = getattr(tvm, name)(weights=None, **kwargs)
        model = build_model(ModelConfig(name=name), 2)
    expected = _n(reference) - sum(_n(getattr(reference, part)) for part in TV_CLASSIFIER[name])
    assert _n(model.backbone) == expected
    if name == "inception_v3":  # torchvision's auxiliary classifier, with a 2-class output layer
        assert _n(model.aux_head) == _n(reference.AuxLogits) - 768 * 1000 - 1000 + 768 * 2 + 2


def test_inception_returns_aux_logits_only_while_training_and_only_when_the_backbone_trains():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 299, 299)
    model = build_model(ModelConfig(name="inception_v3", freeze="300"), 3)
    model.train()
    with torch.no_grad():
        main, aux = model(x)
        assert main.shape == aux.shape == (2, 3)
        model.eval()
        assert model(x).shape == (2, 3)
        apply_freeze(model, "backbone")
        model.train()
        assert isinstance(model(x), torch.Tensor), "a frozen backbone gets no auxiliary loss"
    with torch.device("meta"):
        small = build_model(ModelConfig(name="inception_v3"), 3, image_size=160)
    assert small.aux_head is None, "Mixed_6e is too small for torchvision's auxiliary classifier"


def test_small_models_take_grey_or_rgb_input_and_the_width_multiplier():
    grey = build_model(ModelConfig(name="cnn5"), 4)
    rgb = build_model(ModelConfig(name="cnn5", in_channels=3), 4)
    half = build_model(ModelConfig(name="cnn5", width=0.5), 4)
    assert grey.backbone[0].in_channels == 1 and rgb.backbone[0].in_channels == 3
    convs = [m.out_channels for m in half.backbone if isinstance(m, torch.nn.Conv2d)]
    assert convs == [32, 64, 64, 128, 128]
    no_bn = build_model(ModelConfig(name="cnn5", conv_batch_norm=False, conv_dropout=0.25), 4)
    kinds = {type(m) for m in no_bn.backbone}
    assert torch.nn.BatchNorm2d not in kinds and torch.nn.Dropout in kinds
    mlp = build_model(ModelConfig(name="mlp"), 4)
    assert _n(mlp) == 1024 * 300 + 300 + 300 * 150 + 150 + 150 * 4 + 4


def test_unknown_model_is_one_line_with_a_suggestion():
    with pytest.raises(ModelError, match="did you mean 'resnet50'") as err:
        get_spec("resnet5O")
    assert "\n" not in str(err.value)
