"""torchvision backbones, loaded through the weights enum API.

Each backbone returns the last convolutional feature map; the head does pooling.
"""

from __future__ import annotations

from torch import nn

from cxrlab.config import ModelConfig
from cxrlab.models.registry import ModelSpec, load_torchvision_weights, register


def _tv(name: str, weights: str | None, pretrained: bool):
    import torchvision.models as tvm

    entry = load_torchvision_weights(weights) if pretrained and weights else None
    return getattr(tvm, name)(weights=entry)


def _mobilenet_v2(pretrained: bool, cfg: ModelConfig) -> nn.Module:
    return _tv("mobilenet_v2", "MobileNet_V2_Weights.IMAGENET1K_V1", pretrained).features


def _resnet(name: str, weights: str):
    def build(pretrained: bool, cfg: ModelConfig) -> nn.Module:
        net = _tv(name, weights, pretrained)
        return nn.Sequential(
            net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
        )

    return build


register(
    ModelSpec(
        "mobilenet_v2",
        _mobilenet_v2,
        224,
        weights="MobileNet_V2_Weights.IMAGENET1K_V1",
        description="MobileNetV2 (Sandler et al. 2018), 1280-d features",
    )
)
register(
    ModelSpec(
        "resnet18",
        _resnet("resnet18", "ResNet18_Weights.IMAGENET1K_V1"),
        224,
        weights="ResNet18_Weights.IMAGENET1K_V1",
        description="ResNet-18 (He et al. 2016), 512-d",
    )
)
