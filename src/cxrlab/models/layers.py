"""What counts as a "layer": the unit of ``--freeze N`` and of the rows of ``cxr summary``.

A layer is what Keras would make a layer object of, found by running the network once and
recording, in execution order:

* the **input** (layer 1, like Keras' ``InputLayer`` at ``model.layers[0]``);
* every call of a **leaf module** (convolution, batch norm, activation module, pooling, linear,
  dropout, flatten …; ``nn.Identity`` excluded) and of a module holding parameters of its own
  (e.g. timm's ``BatchNormAct2d``, whose activation is then a layer of its own too) — a module
  called twice (ResNet's shared ``relu``) makes two layers, as Keras builds two ``Activation``
  layers;
* every **functional op** outside those modules that Keras would build a layer for: activations
  (``F.relu`` in torchvision's Inception), pooling (``F.avg_pool2d``), concatenation
  (``torch.cat``), addition and multiplication of tensors (residuals, squeeze-excitation),
  dropout, flatten, padding.

With this definition torchvision's InceptionV3 has exactly Keras' 311 layers, so "freeze the
first 300 layers of InceptionV3" means the same thing in both. Differences that remain are
listed in ``docs/models.md`` (Keras' VGG fuses ReLU into its ``Conv2D`` layers, Keras adds
``ZeroPadding2D`` layers before some strided convolutions, branch order inside a block).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

#: functional ops recorded as layers, by ``__name__`` → layer type shown in summaries
FUNCTIONAL_LAYERS: dict[str, str] = {
    **{
        n: "activation"
        for n in (
            "relu",
            "relu_",
            "relu6",
            "hardtanh",
            "silu",
            "gelu",
            "sigmoid",
            "hardswish",
            "hardsigmoid",
            "leaky_relu",
            "elu",
            "tanh",
            "softmax",
        )
    },
    **{
        n: "pooling"
        for n in (
            "avg_pool2d",
            "max_pool2d",
            "adaptive_avg_pool2d",
            "adaptive_max_pool2d",
            "max_pool2d_with_indices",
        )
    },
    "cat": "concatenate",
    "concatenate": "concatenate",
    "__add__": "add",
    "__iadd__": "add",
    "__radd__": "add",
    "add": "add",
    "add_": "add",
    "__mul__": "multiply",
    "__rmul__": "multiply",
    "mul": "multiply",
    "mul_": "multiply",
    "dropout": "dropout",
    "flatten": "flatten",
    "pad": "padding",
}


@dataclass
class Layer:
    """One layer of a traced network."""

    index: int  # 1-based; layer 1 is the input
    name: str  # module path, or the op's name for functional layers
    kind: str  # module class name, or "input"/"activation"/"concatenate"/…
    module: nn.Module | None  # None for the input and functional ops
    output_shape: tuple[int, ...] | None  # without the batch dimension
    first_call: bool = True  # False when a module is called again (its parameters are counted once)


def _is_layer_module(m: nn.Module) -> bool:
    children = list(m.children())
    if isinstance(m, nn.Identity):
        return False
    if not children:
        return not isinstance(m, nn.Sequential | nn.ModuleList | nn.ModuleDict)
    return bool(list(m.parameters(recurse=False)))


def _shape(out: object) -> tuple[int, ...] | None:
    if isinstance(out, tuple | list) and out:
        out = out[0]
    if isinstance(out, torch.Tensor) and out.dim() >= 1:
        return tuple(out.shape[1:])
    return None


class _Recorder(TorchFunctionMode):
    """Hooks on layer modules + a torch-function mode for functional ops outside them."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.layers: list[Layer] = []
        self._depth = 0  # > 0 inside a leaf module: its internal F.* calls are not layers
        self._seen: set[int] = set()
        self._open: list[Layer] = []  # layers whose module is running (hooks nest)
        self._handles = []
        for name, m in model.named_modules():
            if _is_layer_module(m):
                leaf = not list(m.children())
                self._handles.append(m.register_forward_pre_hook(self._pre(name or "(root)", leaf)))
                self._handles.append(m.register_forward_hook(self._post(leaf)))

    def _pre(self, name: str, leaf: bool):
        def hook(module: nn.Module, args: object) -> None:
            first = id(module) not in self._seen
            self._seen.add(id(module))
            self.layers.append(Layer(0, name, type(module).__name__, module, None, first))
            self._open.append(self.layers[-1])
            if leaf:
                self._depth += 1

        return hook

    def _post(self, leaf: bool):
        def hook(module: nn.Module, args: object, out: object) -> None:
            if leaf:
                self._depth -= 1
            self._open.pop().output_shape = _shape(out)

        return hook

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        out = func(*args, **(kwargs or {}))
        kind = FUNCTIONAL_LAYERS.get(getattr(func, "__name__", ""))
        if kind is not None and self._depth == 0:
            self.layers.append(Layer(0, func.__name__, kind, None, _shape(out)))
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def trace_layers(model: nn.Module, example: torch.Tensor) -> list[Layer]:
    """The layers of ``model`` for input ``example`` (run once in eval mode, without gradients).

    ``example`` may live on the ``meta`` device together with the model: shapes only, no compute.
    """
    recorder = _Recorder(model)
    try:
        with _eval_mode(model), torch.no_grad(), recorder:
            model(example)
    finally:
        recorder.remove()
    layers = [Layer(1, "input", "input", None, tuple(example.shape[1:]))] + recorder.layers
    for i, layer in enumerate(layers, start=1):
        layer.index = i
    return layers


def example_input(model: nn.Module, size: int | None = None, device: str | torch.device | None = None):
    """A one-image zero batch for ``model`` (a :class:`~cxrlab.models.heads.Classifier` or backbone).

    The size defaults to the registered model's input size; channels are read off the first
    convolution (1 for a flattening MLP without one).
    """
    from cxrlab.models.registry import get_spec

    name = getattr(model, "name", "")
    if size is None:
        size = get_spec(name).input_size if name else 224
    channels = next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if channels is None:
        channels = getattr(model, "in_channels", None) or 1
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return torch.zeros(1, channels, size, size, device=device)


def backbone_layers(model: nn.Module, size: int | None = None) -> list[Layer]:
    """Layers of the backbone of a classifier (what ``--freeze N`` counts)."""
    backbone = getattr(model, "backbone", model)
    example = example_input(model, size)
    return trace_layers(backbone, example)


def freeze_first_layers(model: nn.Module, n: int, size: int | None = None) -> int:
    """Freeze the parameters of the backbone's layers 1…``n`` (layer 1 is the input, as in Keras).

    Returns the number of backbone layers; ``n`` beyond it freezes the whole backbone (as Keras'
    ``base.layers[:n]`` would).
    """
    layers = backbone_layers(model, size)
    for layer in layers[:n]:
        if layer.module is not None:
            for p in layer.module.parameters(recurse=False):
                p.requires_grad_(False)
    return len(layers)
