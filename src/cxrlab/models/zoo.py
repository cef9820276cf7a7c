"""torchvision backbones, loaded through the weights enum API.

Each backbone returns the last convolutional feature map (what Keras' ``include_top=False``
returns); the head does pooling. Inception v3 and GoogLeNet take their ImageNet inputs
normalised to [-1, 1] (torchvision's ``transform_input``), so their registered mean/std is 0.5.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cxrlab.config import ModelConfig
from cxrlab.models.registry import ModelSpec, register
from cxrlab.models.split import densenet_blocks, sequential_blocks
from cxrlab.models.weights import load_torchvision_weights

HALF = (0.5, 0.5, 0.5)


def _tv(name: str, weights: str | None, pretrained: bool, **random_init: Any) -> nn.Module:
    """A torchvision model with ImageNet weights, or randomly initialised with ``random_init`` kwargs."""
    import torchvision.models as tvm

    entry = load_torchvision_weights(weights) if pretrained and weights else None
    if entry is not None:
        return getattr(tvm, name)(weights=entry)
    return getattr(tvm, name)(weights=None, **random_init)


def _features(name: str, weights: str):
    """Backbones whose ``.features`` is the whole convolutional part."""

    def build(pretrained: bool, cfg: ModelConfig) -> nn.Module:
        return _tv(name, weights, pretrained).features

    return build


def _resnet(name: str, weights: str):
    def build(pretrained: bool, cfg: ModelConfig) -> nn.Module:
        net = _tv(name, weights, pretrained)
        return nn.Sequential(*list(net.children())[:-2])  # drop avgpool and fc

    return build


def _densenet121(pretrained: bool, cfg: ModelConfig) -> nn.Module:
    # torchvision applies the final ReLU in forward(), not in .features (Keras ends with `relu` too)
    net = _tv("densenet121", "DenseNet121_Weights.IMAGENET1K_V1", pretrained)
    return nn.Sequential(net.features, nn.ReLU(inplace=True))


def _alexnet(pretrained: bool, cfg: ModelConfig) -> nn.Module:
    net = _tv("alexnet", "AlexNet_Weights.IMAGENET1K_V1", pretrained)
    return nn.Sequential(net.features, net.avgpool)  # 256 × 6 × 6 at any size ≥ 63 px


_GOOGLENET = [
    "conv1",
    "maxpool1",
    "conv2",
    "conv3",
    "maxpool2",
    "inception3a",
    "inception3b",
    "maxpool3",
    "inception4a",
    "inception4b",
    "inception4c",
    "inception4d",
    "inception4e",
    "maxpool4",
    "inception5a",
    "inception5b",
]


def _googlenet(pretrained: bool, cfg: ModelConfig) -> nn.Module:
    net = _tv("googlenet", "GoogLeNet_Weights.IMAGENET1K_V1", pretrained, aux_logits=False, init_weights=True)
    return nn.Sequential(*[getattr(net, n) for n in _GOOGLENET])


_INCEPTION_TO_6E = [
    "Conv2d_1a_3x3",
    "Conv2d_2a_3x3",
    "Conv2d_2b_3x3",
    "maxpool1",
    "Conv2d_3b_1x1",
    "Conv2d_4a_3x3",
    "maxpool2",
    "Mixed_5b",
    "Mixed_5c",
    "Mixed_5d",
    "Mixed_6a",
    "Mixed_6b",
    "Mixed_6c",
    "Mixed_6d",
    "Mixed_6e",
]
_INCEPTION_FROM_7A = ["Mixed_7a", "Mixed_7b", "Mixed_7c"]


class InceptionBackbone(nn.Module):
    """torchvision's Inception v3 up to ``Mixed_7c`` (2048 × 8 × 8 at 299 px).

    ``forward_aux`` also returns the ``Mixed_6e`` map (768 × 17 × 17) that the auxiliary
    classifier reads; :class:`~cxrlab.models.heads.Classifier` builds that classifier with
    :meth:`make_aux_head` (torchvision's ``InceptionAux``, its convolutions pretrained when the
    backbone is, a new output layer).

    Keras' InceptionV3 builds every batch norm with ``scale=False``; torchvision's have a γ per
    channel (17,216 in all). ``keras_bn_scale = False`` tells :mod:`cxrlab.models.summary` to
    leave them out of the Keras-convention counts.
    """

    keras_bn_scale = False

    def __init__(self, net: nn.Module):
        super().__init__()
        self.lower = nn.Sequential(*[getattr(net, n) for n in _INCEPTION_TO_6E])
        self.upper = nn.Sequential(*[getattr(net, n) for n in _INCEPTION_FROM_7A])
        self._aux_template = [net.AuxLogits]  # a list: not a submodule of the backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upper(self.lower(x))

    def forward_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The final map and the ``Mixed_6e`` map."""
        mid = self.lower(x)
        return self.upper(mid), mid

    def make_aux_head(self, num_outputs: int, in_shape: tuple[int, ...]) -> nn.Module | None:
        """The auxiliary classifier, or None when the input is too small for it (< 299 px)."""
        aux = self._aux_template[0]
        if aux is None or len(in_shape) != 3 or min(in_shape[1:]) < 8:  # Mixed_6e below 17 × 17
            return None
        aux.fc = nn.Linear(aux.fc.in_features, num_outputs)
        return aux


def _inception_v3(pretrained: bool, cfg: ModelConfig) -> nn.Module:
    net = _tv(
        "inception_v3", "Inception_V3_Weights.IMAGENET1K_V1", pretrained, aux_logits=True, init_weights=True
    )
    return InceptionBackbone(net)


def _spec(
    name: str,
    builder,
    weights: str,
    feature_dim: int,
    description: str,
    input_size: int = 224,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    blocks=None,
) -> None:
    extra = {"mean": mean, "std": std} if mean else {}
    register(
        ModelSpec(
            name,
            builder,
            input_size,
            weights=weights,
            feature_dim=feature_dim,
            description=description,
            cam_layer="backbone",  # the last convolutional feature map (after its activation)
            blocks=blocks,
            **extra,
        )
    )


_spec(
    "vgg16",
    _features("vgg16", "VGG16_Weights.IMAGENET1K_V1"),
    "VGG16_Weights.IMAGENET1K_V1",
    512,
    "VGG-16 (Simonyan & Zisserman 2015) conv base, 512×7×7",
    blocks=sequential_blocks,
)
_spec(
    "vgg19",
    _features("vgg19", "VGG19_Weights.IMAGENET1K_V1"),
    "VGG19_Weights.IMAGENET1K_V1",
    512,
    "VGG-19 conv base, 512×7×7",
    blocks=sequential_blocks,
)
_spec(
    "resnet18",
    _resnet("resnet18", "ResNet18_Weights.IMAGENET1K_V1"),
    "ResNet18_Weights.IMAGENET1K_V1",
    512,
    "ResNet-18 (He et al. 2016), 512×7×7",
    blocks=sequential_blocks,
)
_spec(
    "resnet34",
    _resnet("resnet34", "ResNet34_Weights.IMAGENET1K_V1"),
    "ResNet34_Weights.IMAGENET1K_V1",
    512,
    "ResNet-34, 512×7×7",
    blocks=sequential_blocks,
)
_spec(
    "resnet50",
    _resnet("resnet50", "ResNet50_Weights.IMAGENET1K_V1"),
    "ResNet50_Weights.IMAGENET1K_V1",
    2048,
    "ResNet-50, 2048×7×7",
    blocks=sequential_blocks,
)
_spec(
    "densenet121",
    _densenet121,
    "DenseNet121_Weights.IMAGENET1K_V1",
    1024,
    "DenseNet-121 (Huang et al. 2017), 1024×7×7",
    blocks=densenet_blocks,
)
_spec(
    "inception_v3",
    _inception_v3,
    "Inception_V3_Weights.IMAGENET1K_V1",
    2048,
    "Inception v3 (Szegedy et al. 2016), 299 px, 2048×8×8; auxiliary logits while training",
    input_size=299,
    mean=HALF,
    std=HALF,
)
_spec(
    "googlenet",
    _googlenet,
    "GoogLeNet_Weights.IMAGENET1K_V1",
    1024,
    "GoogLeNet / Inception v1 (Szegedy et al. 2015), 1024×7×7",
    mean=HALF,
    std=HALF,
)
_spec(
    "mobilenet_v2",
    _features("mobilenet_v2", "MobileNet_V2_Weights.IMAGENET1K_V1"),
    "MobileNet_V2_Weights.IMAGENET1K_V1",
    1280,
    "MobileNetV2 (Sandler et al. 2018), 1280×7×7",
    blocks=sequential_blocks,
)
_spec(
    "mobilenet_v3_large",
    _features("mobilenet_v3_large", "MobileNet_V3_Large_Weights.IMAGENET1K_V1"),
    "MobileNet_V3_Large_Weights.IMAGENET1K_V1",
    960,
    "MobileNetV3-Large (Howard et al. 2019), 960×7×7",
    blocks=sequential_blocks,
)
_spec(
    "mobilenet_v3_small",
    _features("mobilenet_v3_small", "MobileNet_V3_Small_Weights.IMAGENET1K_V1"),
    "MobileNet_V3_Small_Weights.IMAGENET1K_V1",
    576,
    "MobileNetV3-Small, 576×7×7",
    blocks=sequential_blocks,
)
_spec(
    "efficientnet_b0",
    _features("efficientnet_b0", "EfficientNet_B0_Weights.IMAGENET1K_V1"),
    "EfficientNet_B0_Weights.IMAGENET1K_V1",
    1280,
    "EfficientNet-B0 (Tan & Le 2019), 1280×7×7",
    blocks=sequential_blocks,
)
_spec(
    "alexnet",
    _alexnet,
    "AlexNet_Weights.IMAGENET1K_V1",
    256,
    "AlexNet (Krizhevsky et al. 2012), RGB, 256×6×6",
)
