"""torchxrayvision's chest-X-ray-pretrained networks: ``model.name: xrv/WEIGHTS``.

``xrv/densenet121-res224-{all,nih,pc,chex,rsna,mimic_nb,mimic_ch}`` (DenseNet-121, 224 px) and
``xrv/resnet50-res512-all`` (ResNet-50, 512 px), the networks of Cohen et al. 2022 (torchxrayvision), trained
on hundreds of thousands of chest radiographs. torchxrayvision is optional (``pip install 'cxrlab[xrv]'``).

**Their preprocessing contract is the registry entry**: one grey channel, torchxrayvision's scaling
(``xrv.utils.normalize(img, 255)``: 8-bit grey → ``(2 · img/255 − 1) · 1024``, i.e. [-1024, 1024]) written as
mean 0.5 / std 1/2048 on cxrlab's [0, 1] input, and their resolution (224 / 512) as the default input size. So
the run's config.yaml and model.json, ``cxr predict``, ``cxr serve`` and the ONNX export's metadata carry
exactly that input, with nothing for a user to set.

**Weights** come from torchxrayvision's own cache (``~/.torchxrayvision/models_data/``, the file name of its
release URL), downloaded there by torchxrayvision's own downloader when missing. Offline, a missing file fails
within seconds in one line naming the file and the folder. torchxrayvision loads its files with
``torch.load(weights_only=False)`` (its DenseNet files are pickled modules); cxrlab reads them itself with
``weights_only=True``, allowing only ``nn.Module`` classes of torch, torchvision and torchxrayvision, and
loads the state into the same architecture torchxrayvision builds.

Backbones: the DenseNet's ``features`` and the ReLU its ``features2`` applies (1024 × 7 × 7, blocks as
``densenet121``); the ResNet-50 up to ``layer4`` (2048 × 16 × 16, blocks as ``resnet50``). The pretrained
classifier itself (one sigmoid per finding of ``model.pathologies``) is kept for zero-shot use:
:func:`zero_shot_model`.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from cxrlab.config import HeadConfig, ModelConfig
from cxrlab.errors import ModelError
from cxrlab.models.registry import ModelSpec, register
from cxrlab.models.split import densenet_blocks, sequential_blocks
from cxrlab.models.weights import network_reachable

PREFIX = "xrv/"
#: torchxrayvision's [-1024, 1024] scaling on cxrlab's [0, 1] grey input: (x - 0.5) / (1 / 2048)
XRV_MEAN = (0.5,)
XRV_STD = (1 / 2048,)
RELEASE_HOST = "github.com"
#: modules whose ``nn.Module`` classes a torchxrayvision weight file may name (weights_only loading)
_ALLOWED_MODULES = ("torchxrayvision.", "torch.nn.modules.", "torchvision.models.")
#: the classes a pickled torchxrayvision DenseNet is made of (legacy, non-zip files cannot be scanned)
_LEGACY_CLASSES = (
    "torchxrayvision.models.DenseNet",
    "torchxrayvision.models._DenseBlock",
    "torchxrayvision.models._DenseLayer",
    "torchxrayvision.models._Transition",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.pooling.AvgPool2d",
    "torch.nn.modules.linear.Linear",
)


@dataclass(frozen=True)
class XrvEntry:
    """One torchxrayvision weights name and what cxrlab needs to know before importing the package."""

    weights: str  # torchxrayvision's weights name, e.g. "densenet121-res224-nih"
    arch: str  # "densenet121" | "resnet50"
    size: int  # the resolution it was trained at
    trained_on: str

    @property
    def name(self) -> str:
        return PREFIX + self.weights


ENTRIES: tuple[XrvEntry, ...] = (
    XrvEntry("densenet121-res224-all", "densenet121", 224,
             "NIH, PadChest, CheXpert, MIMIC-CXR, Google, OpenI, RSNA"),
    XrvEntry("densenet121-res224-nih", "densenet121", 224, "NIH ChestX-ray14"),
    XrvEntry("densenet121-res224-pc", "densenet121", 224, "PadChest"),
    XrvEntry("densenet121-res224-chex", "densenet121", 224, "CheXpert"),
    XrvEntry("densenet121-res224-rsna", "densenet121", 224, "RSNA Pneumonia Challenge"),
    XrvEntry("densenet121-res224-mimic_nb", "densenet121", 224, "MIMIC-CXR (NegBio labels)"),
    XrvEntry("densenet121-res224-mimic_ch", "densenet121", 224, "MIMIC-CXR (CheXpert labels)"),
    XrvEntry("resnet50-res512-all", "resnet50", 512, "PadChest, NIH, RSNA, SIIM, VinDr-CXR"),
)  # fmt: skip
BY_NAME = {e.name: e for e in ENTRIES}


def entry(name: str) -> XrvEntry:
    """The entry of ``xrv/WEIGHTS`` (one line listing the choices for an unknown name)."""
    if name not in BY_NAME:
        raise ModelError(f"unknown torchxrayvision model {name!r}; choose one of {', '.join(BY_NAME)}")
    return BY_NAME[name]


def import_xrv(feature: str = "an xrv/… model") -> ModuleType:
    """torchxrayvision, or a one-line error naming the ``[xrv]`` extra. Its import turns every warning of
    the process off (``warnings.filterwarnings("ignore")`` in ``torchxrayvision.models``); the filters are
    put back."""
    from cxrlab._optional import MissingDependencyError, require

    with warnings.catch_warnings():
        try:
            return require("torchxrayvision", "xrv", feature)
        except MissingDependencyError as exc:  # a ModelError, as every other model that cannot be built
            raise ModelError(str(exc)) from None


def weights_folder() -> Path:
    """torchxrayvision's weight cache (``~/.torchxrayvision/models_data/``)."""
    return Path(import_xrv().utils.get_cache_dir())


def weights_url(name: str) -> str:
    """The release URL torchxrayvision downloads ``name``'s weights from."""
    return str(import_xrv().models.model_urls[entry(name).weights]["weights_url"])


def weights_path(name: str) -> Path:
    """Where torchxrayvision keeps ``name``'s weight file (its URL's file name in its cache folder)."""
    return weights_folder() / os.path.basename(weights_url(name))


def weights_cached(name: str) -> bool | None:
    """True when the weight file is on disk; None when torchxrayvision is not installed."""
    try:
        return weights_path(name).is_file()
    except ModelError:
        return None


def _offline() -> bool:
    return os.environ.get("CXRLAB_OFFLINE", "") not in ("", "0")


def ensure_weights(name: str) -> Path:
    """The weight file, downloaded by torchxrayvision into its cache when missing; offline (or with
    ``CXRLAB_OFFLINE=1``) a missing file fails within seconds, naming the file and the folder."""
    path = weights_path(name)
    if path.is_file():
        return path
    url = weights_url(name)
    if _offline() or not network_reachable(RELEASE_HOST):
        raise ModelError(
            f"pretrained weights {path.name} are not in {path.parent} and {RELEASE_HOST} cannot be reached; "
            f"download {url} into that folder (torchxrayvision's cache), or train without --pretrained"
        )
    xrv = import_xrv()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # its progress bar must not mix into --json output
            xrv.models.get_weights(entry(name).weights, str(path.parent))
    except Exception as exc:  # noqa: BLE001 - a failed download is one line
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise ModelError(
            f"could not download {url} into {path.parent} ({first}); fetch it there by hand, or train "
            "without --pretrained"
        ) from None
    return path


def _safe_classes(path: Path) -> list[type]:
    """The ``nn.Module`` classes of torch, torchvision and torchxrayvision that ``path`` names (weights_only
    loading refuses, by name, anything else it holds)."""
    names: list[str] = list(_LEGACY_CLASSES)
    if zipfile.is_zipfile(path):
        with contextlib.suppress(Exception):
            names = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    found: list[type] = []
    for qualified in names:
        if not qualified.startswith(_ALLOWED_MODULES):
            continue
        module, _, attr = qualified.rpartition(".")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
        if isinstance(obj, type) and issubclass(obj, nn.Module):
            found.append(obj)
    return found


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A torchxrayvision weight file (a pickled module or a state dict) as a state dict, read with
    ``torch.load(weights_only=True)``; a damaged or foreign file is refused in one line."""
    import_xrv()  # the module classes a pickled DenseNet names
    try:
        with torch.serialization.safe_globals(_safe_classes(path)):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors of any kind: one line
        first = " ".join(str(exc).split())[:300] or exc.__class__.__name__
        raise ModelError(
            f"{path} cannot be read as torchxrayvision weights with weights_only loading ({first}); "
            "delete it so that it is downloaded again"
        ) from None
    if isinstance(obj, nn.Module):
        for mod in obj.modules():  # torchxrayvision's patch for modules pickled by old torch versions
            if not hasattr(mod, "_non_persistent_buffers_set"):
                mod._non_persistent_buffers_set = set()
        obj = obj.state_dict()
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path} holds no torchxrayvision weights (neither a module nor a state dict)")
    return obj


def xrv_network(name: str, pretrained: bool) -> tuple[nn.Module, nn.Linear]:
    """torchxrayvision's network for ``name`` as ``(backbone, classifier)``: the architecture
    torchxrayvision builds (DenseNet-121 of ``xrv.models.DenseNet``; torchvision's ResNet-50 with a 1-channel
    first convolution, as ``xrv.models.ResNet``), 18 outputs, with the weights of its file when
    ``pretrained``."""
    e = entry(name)
    xrv = import_xrv()
    if e.arch == "densenet121":
        net: nn.Module = xrv.models.DenseNet(weights=None)  # builds without reading any file
    else:
        import torchvision

        net = torchvision.models.resnet50(num_classes=len(xrv.datasets.default_pathologies), weights=None)
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if pretrained:
        path = ensure_weights(name)
        try:
            net.load_state_dict(read_weights(path))
        except RuntimeError as exc:
            raise ModelError(
                f"{path} does not fit {name}'s architecture ({str(exc).splitlines()[0]}); delete it so that "
                "it is downloaded again"
            ) from None
    if e.arch == "densenet121":
        return nn.Sequential(net.features, nn.ReLU(inplace=True)), net.classifier  # type: ignore[return-value]
    return nn.Sequential(*list(net.children())[:-2]), net.fc  # type: ignore[return-value]


def pretrained_findings(name: str) -> list[tuple[int, str, float | None]]:
    """The findings ``name``'s classifier was trained on: ``(output index, name, operating threshold)``
    (torchxrayvision's ``op_threshs``; None where it has none). Outputs with an empty name are left out."""
    info = import_xrv().models.model_urls[entry(name).weights]
    thresholds = list(info.get("op_threshs") or [])
    out = []
    for i, label in enumerate(info["labels"]):
        if label:
            t = float(thresholds[i]) if i < len(thresholds) else math.nan
            out.append((i, label, None if math.isnan(t) else t))
    return out


def zero_shot_config(name: str) -> ModelConfig:
    """The model section of a zero-shot run: the pretrained network, frozen, with a head that is exactly its
    classifier (global average pooling, no hidden layer, no dropout)."""
    return ModelConfig(
        name=name, pretrained=True, freeze="backbone", head=HeadConfig(pooling="avg", hidden=[], dropout=0.0)
    )


def zero_shot_model(name: str) -> tuple[nn.Module, list[str], dict[str, float]]:
    """``name`` as torchxrayvision trained it: a :class:`~cxrlab.models.heads.Classifier` whose outputs are
    the logits of its findings (in ``model.pathologies`` order, empty names left out), the findings, and
    torchxrayvision's operating thresholds per finding (0.5 where it has none)."""
    from cxrlab.models.build import build_model

    findings = pretrained_findings(name)
    cfg = zero_shot_config(name)
    model = build_model(cfg.model_copy(update={"pretrained": False}), len(findings), entry(name).size)
    backbone, classifier = xrv_network(name, pretrained=True)
    keep = torch.tensor([i for i, _, _ in findings])
    with torch.no_grad():
        model.backbone.load_state_dict(backbone.state_dict())
        model.head.out.weight.copy_(classifier.weight[keep])
        model.head.out.bias.copy_(classifier.bias[keep])
    thresholds = {label: (0.5 if t is None else t) for _, label, t in findings}
    return model.eval(), [label for _, label, _ in findings], thresholds


def _builder(name: str):
    def build(pretrained: bool, cfg: ModelConfig) -> nn.Module:
        return xrv_network(name, pretrained)[0]

    return build


def _check(name: str):
    def check() -> None:
        ensure_weights(name)

    return check


def _cached(name: str):
    def cached() -> bool | None:
        return weights_cached(name)

    return cached


def describe(e: XrvEntry) -> str:
    arch = "DenseNet-121" if e.arch == "densenet121" else "ResNet-50"
    fmap = "1024×7×7" if e.arch == "densenet121" else "2048×16×16"
    return f"torchxrayvision {arch}, {e.size} px grey, [-1024, 1024] scaling, {fmap}; {e.trained_on}"


def info(name: str) -> dict[str, Any]:
    """What a run records about the pretrained weights (model.json ``pretrained``)."""
    e = entry(name)
    return {
        "source": "torchxrayvision",
        "weights": e.weights,
        "file": os.path.basename(weights_url(name)),
        "trained_on": e.trained_on,
        "input": f"1×{e.size}×{e.size} grey, torchxrayvision's [-1024, 1024] scaling",
    }


for _e in ENTRIES:
    register(
        ModelSpec(
            _e.name,
            _builder(_e.name),
            _e.size,
            channels=1,
            mean=XRV_MEAN,
            std=XRV_STD,
            family="xrv",
            description=describe(_e),
            feature_dim=1024 if _e.arch == "densenet121" else 2048,
            cam_layer="backbone",
            blocks=densenet_blocks if _e.arch == "densenet121" else sequential_blocks,
            pretrained_on="chest X-rays",
            extra="xrv",
            weights_cached=_cached(_e.name),
            ensure_weights=_check(_e.name),
        )
    )
