"""Keras-style model summaries: layer, output shape, parameters, trainable — and totals two ways.

* **PyTorch convention**: parameters only (``model.parameters()``); batch-norm running mean and
  variance are buffers, not parameters.
* **Keras convention**: batch norm's ``moving_mean`` and ``moving_variance`` are (non-trainable)
  weights, so every ``BatchNorm`` adds ``2 × channels`` to the total and the non-trainable count.
  A backbone whose Keras twin builds its batch norms without a scale (``keras_bn_scale = False``:
  Keras' InceptionV3 uses ``BatchNormalization(scale=False)``) has γ weights that Keras does not
  have: they are left out of the Keras column (17,216 for InceptionV3) and the summary says so.

Summaries are computed on the ``meta`` device: no memory for weights, no arithmetic, so even
VGG-19 summarises instantly. Layers are those of :mod:`cxrlab.models.layers` (what
``--freeze N`` counts); their numbers are the ``#`` column.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from cxrlab.config import ModelConfig
from cxrlab.models.heads import Classifier
from cxrlab.models.layers import trace_layers


def bn_statistics(module: nn.Module) -> int:
    """Running mean + variance entries of a batch-norm module (Keras counts them as weights)."""
    if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
        return sum(b.numel() for b in (module.running_mean, module.running_var) if b is not None)
    return 0


def _trainable_flag(params: list[nn.Parameter]) -> str:
    if not params:
        return ""
    flags = {p.requires_grad for p in params}
    return "partial" if len(flags) == 2 else ("yes" if True in flags else "no")


@dataclass
class SummaryRow:
    """One layer of the summary."""

    index: int | None
    name: str
    kind: str
    output_shape: tuple[int, ...] | None
    params: int
    keras_params: int
    trainable: str  # yes | no | partial | "" (no parameters)
    part: str  # input | backbone | head | aux


@dataclass
class ModelSummary:
    """A model's layers and its parameter totals in both conventions."""

    model: str
    input_shape: tuple[int, ...]
    outputs: int
    rows: list[SummaryRow]
    total: int
    trainable: int
    bn_stats: int
    aux_params: int
    backbone_layers: int
    freeze: str = "none"
    macs: int | None = None
    keras_absent: int = 0  # parameters with no Keras counterpart (InceptionV3's batch-norm γ)
    keras_absent_trainable: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def non_trainable(self) -> int:
        return self.total - self.trainable

    @property
    def keras_total(self) -> int:
        return self.total + self.bn_stats - self.keras_absent

    @property
    def keras_trainable(self) -> int:
        return self.trainable - self.keras_absent_trainable

    @property
    def keras_non_trainable(self) -> int:
        return self.keras_total - self.keras_trainable

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        d = asdict(self)
        d["pytorch"] = {"total": self.total, "trainable": self.trainable, "non_trainable": self.non_trainable}
        d["keras"] = {
            "total": self.keras_total,
            "trainable": self.keras_trainable,
            "non_trainable": self.keras_non_trainable,
        }
        return d

    def to_text(self, layers: str = "all") -> str:
        """The table: ``layers`` = all | params (rows holding parameters) | none (totals only)."""
        lines = [
            f"Model: {self.model} · input {_shape(self.input_shape)} · "
            f"{self.outputs} output{'s' if self.outputs != 1 else ''} · freeze: {self.freeze}"
        ]
        rows = [r for r in self.rows if layers == "all" or (layers == "params" and r.keras_params)]
        if layers != "none":
            name_w = min(48, max([5] + [len(r.name) for r in rows]))
            kind_w = max([4] + [len(r.kind) for r in rows])
            head = f"{'#':>4}  {'layer':<{name_w}}  {'type':<{kind_w}}  {'output shape':<14}  "
            head += f"{'params':>12}  {'Keras params':>12}  trainable"
            lines += [head, "-" * len(head)]
            for r in rows:
                index = "" if r.index is None else str(r.index)
                name = r.name if len(r.name) <= name_w else "…" + r.name[-(name_w - 1) :]
                lines.append(
                    f"{index:>4}  {name:<{name_w}}  {r.kind:<{kind_w}}  {_shape(r.output_shape):<14}  "
                    f"{_n(r.params) if r.keras_params else '':>12}  "
                    f"{_n(r.keras_params) if r.keras_params else '':>12}  {r.trainable}"
                )
            lines.append("-" * len(head))
        w = max(len(_n(self.keras_total)), 10)
        lines += [
            f"{'':28}{'PyTorch':>{w + 2}}  {'Keras':>{w + 2}}",
            f"{'Total params':28}{_n(self.total):>{w + 2}}  {_n(self.keras_total):>{w + 2}}",
            f"{'Trainable params':28}{_n(self.trainable):>{w + 2}}  {_n(self.keras_trainable):>{w + 2}}",
            f"{'Non-trainable params':28}{_n(self.non_trainable):>{w + 2}}  "
            f"{_n(self.keras_non_trainable):>{w + 2}}",
            f"PyTorch counts parameters only; Keras also counts batch norm's moving mean/variance "
            f"({_n(self.bn_stats)} values, buffers in PyTorch) as non-trainable weights.",
        ]
        if self.keras_absent:
            lines.append(
                f"Keras' InceptionV3 builds its batch norms without a scale (scale=False): torchvision's "
                f"have one γ per channel, {_n(self.keras_absent)} parameters "
                f"({_n(self.keras_absent_trainable)} trainable) that the Keras column leaves out."
            )
        lines += [
            f"Layers: {len([r for r in self.rows if r.index])} (backbone: layers 1–{self.backbone_layers}, "
            f"layer 1 = input; `--freeze N` freezes layers 1…N)",
        ]
        if self.aux_params:
            lines.append(
                f"Auxiliary classifier (training only, ignored in evaluation; Keras' InceptionV3 has none): "
                f"{_n(self.aux_params)} params, left out of the totals (as in metrics.json, `cxr compare`)."
            )
        if self.macs is not None:
            lines.append(f"Multiply-accumulates per image: {self.macs / 1e9:.3f} G")
        lines += self.notes
        return "\n".join(lines)


def _n(value: int) -> str:
    return f"{value:,}"


def _shape(shape: tuple[int, ...] | None) -> str:
    return "×".join(str(s) for s in shape) if shape else ""


def summarize_model(
    model: Classifier, image_size: int, channels: int, freeze: str = "none", macs: bool = True
) -> ModelSummary:
    """Summarise a built classifier for ``channels × image_size × image_size`` input."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example = torch.zeros(1, channels, image_size, image_size, device=device)
    layers = trace_layers(model, example)
    backbone_ids = {id(m) for m in model.backbone.modules()}
    no_scale = _keras_unscaled(model)
    rows: list[SummaryRow] = []
    counted: set[int] = set()
    for layer in layers:
        params: list[nn.Parameter] = []
        stats = 0
        if layer.module is not None and layer.first_call:
            params = list(layer.module.parameters(recurse=False))
            stats = bn_statistics(layer.module)
            counted.update(id(p) for p in params)
        n = sum(p.numel() for p in params)
        absent = no_scale.get(id(layer.module), (0, 0))[0] if layer.first_call else 0
        name = layer.name if layer.first_call else f"{layer.name} (again)"
        part = "input" if layer.kind == "input" else "functional"
        if layer.module is not None:
            part = "backbone" if id(layer.module) in backbone_ids else "head"
        rows.append(
            SummaryRow(
                layer.index,
                name,
                layer.kind,
                layer.output_shape,
                n,
                n + stats - absent,
                _trainable_flag(params),
                part,
            )
        )
    # functional layers (F.relu, torch.cat …) before the head's first module belong to the backbone
    first_head = next((i for i, r in enumerate(rows) if r.part == "head"), len(rows))
    for i, r in enumerate(rows):
        if r.part == "functional":
            r.part = "backbone" if i < first_head else "head"
    n_backbone = max(r.index or 1 for r in rows if r.part in ("input", "backbone"))
    aux_params = 0
    aux = getattr(model, "aux_head", None)
    if aux is not None:
        aux_list = list(aux.parameters())
        aux_params = sum(p.numel() for p in aux_list)
        counted.update(id(p) for p in aux_list)
        rows.append(
            SummaryRow(
                None,
                "aux_head (training only)",
                type(aux).__name__,
                (model.head.out.out_features,),
                aux_params,
                aux_params + sum(bn_statistics(m) for m in aux.modules()),
                _trainable_flag(aux_list),
                "aux",
            )
        )
    unused = [p for p in model.parameters() if id(p) not in counted]
    if unused:
        rows.append(
            SummaryRow(
                None,
                "(parameters not used in the forward pass)",
                "",
                None,
                sum(p.numel() for p in unused),
                sum(p.numel() for p in unused),
                _trainable_flag(unused),
                "unused",
            )
        )
    aux_ids = {id(p) for p in aux.parameters()} if aux is not None else set()
    aux_modules = {id(m) for m in aux.modules()} if aux is not None else set()
    all_params = [p for p in model.parameters() if id(p) not in aux_ids]  # the inference model's
    summary = ModelSummary(
        model=getattr(model, "name", type(model).__name__),
        input_shape=(channels, image_size, image_size),
        outputs=model.head.out.out_features,
        rows=rows,
        total=sum(p.numel() for p in all_params),
        trainable=sum(p.numel() for p in all_params if p.requires_grad),
        bn_stats=sum(bn_statistics(m) for m in model.modules() if id(m) not in aux_modules),
        aux_params=aux_params,
        backbone_layers=n_backbone,
        freeze=freeze,
        keras_absent=sum(a for a, _ in no_scale.values()),
        keras_absent_trainable=sum(t for _, t in no_scale.values()),
    )
    if macs:
        summary.macs = count_macs(model, example)
    return summary


def _keras_unscaled(model: Classifier) -> dict[int, tuple[int, int]]:
    """Batch norms whose γ Keras' twin lacks: id → (γ size, trainable γ size)."""
    if getattr(model.backbone, "keras_bn_scale", True):
        return {}
    return {
        id(m): (m.weight.numel(), m.weight.numel() if m.weight.requires_grad else 0)
        for m in model.backbone.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.weight is not None
    }


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one eval-mode forward pass (``FlopCounterMode`` FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops() // 2)


def build_on_meta(
    cfg: ModelConfig, num_classes: int, image_size: int | None = None
) -> tuple[Classifier, int, int]:
    """Build ``cfg``'s classifier on the meta device (random init, no weights are read).

    Returns the model, its input size and channels.
    """
    from cxrlab.models.build import build_model
    from cxrlab.models.registry import get_spec, resolve_channels

    spec = get_spec(cfg.name)
    size = image_size or spec.input_size
    with torch.device("meta"):
        model = build_model(cfg.model_copy(update={"pretrained": False}), num_classes, size)
    return model, size, resolve_channels(spec, cfg)


def summarize(
    cfg: ModelConfig, num_classes: int = 2, image_size: int | None = None, macs: bool = True
) -> ModelSummary:
    """Summary of the classifier ``cfg`` describes, for ``num_classes`` classes."""
    model, size, channels = build_on_meta(cfg, num_classes, image_size)
    summary = summarize_model(model, size, channels, cfg.freeze, macs)
    if cfg.freeze.isdigit() and int(cfg.freeze) > summary.backbone_layers:
        summary.notes.append(
            f"--freeze {cfg.freeze} exceeds the backbone's {summary.backbone_layers} layers: "
            "the whole backbone is frozen (as Keras' base.layers[:N] would)."
        )
    return summary


def backbone_params(name: str) -> tuple[int, tuple[int, ...]]:
    """Parameters of a registered model's backbone and its output shape at the default input size."""
    model, _, _ = build_on_meta(ModelConfig(name=name), 2)
    return sum(p.numel() for p in model.backbone.parameters()), model.head.in_shape


def _offline_weights(spec: Any) -> bool | None:
    """Whether ``spec``'s pretrained weights are on disk (None: no weights, or its extra is missing)."""
    from cxrlab.models.weights import weights_available

    if spec.weights_cached is not None:
        return spec.weights_cached()
    return weights_available(spec.weights) if spec.weights else None


def model_table() -> list[dict[str, Any]]:
    """One row per registered model for `cxr models` (parameters counted on the meta device)."""
    from cxrlab.models.registry import get_spec, model_names

    rows = []
    for name in model_names():
        spec = get_spec(name)
        try:
            params, shape = backbone_params(name)
        except Exception:  # noqa: BLE001 - one broken entry must not hide the others
            params, shape = None, None
        rows.append(
            {
                "model": name,
                "family": spec.family,
                "input": f"{spec.channels}×{spec.input_size}×{spec.input_size}",
                "features": _shape(shape),
                "backbone params": params,
                "pretrained": spec.weights is not None or spec.weights_cached is not None,
                "pretrained on": spec.pretrained_on or ("ImageNet" if spec.weights else None),
                "weights offline": _offline_weights(spec),
                "needs": f"cxrlab[{spec.extra}]" if spec.extra else None,
                "description": spec.description,
            }
        )
    return rows
