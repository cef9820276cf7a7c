"""The CAM method registry: each ``--method`` / ``eval.explain_method`` name and the pytorch-grad-cam class
behind it. Importing it loads neither torch nor pytorch-grad-cam (the CLI's help lists the names)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cxrlab.errors import CxrError


@dataclass(frozen=True)
class CamMethod:
    """One entry of :data:`METHODS`: a ``--method`` name and the pytorch-grad-cam class behind it."""

    name: str  #: the ``--method`` / ``eval.explain_method`` name
    cls: str  #: the pytorch-grad-cam class
    label: str  #: how pages and progress bars name it
    class_specific: bool  #: False: the same map whatever class is asked for
    gradients: bool  #: needs a backward pass (else forward passes only)
    about: str  #: one line for docs and --help

    def cam_class(self) -> type:
        """The pytorch-grad-cam class (one line naming the extra when the package is missing)."""
        from cxrlab._optional import require

        package = require("pytorch_grad_cam", "explain", "heatmaps")
        _silence_bars(package)
        return getattr(package, self.cls)


def _silence_bars(package: Any) -> None:
    """Score-CAM and Ablation-CAM draw a tqdm bar per image on stderr (no option turns it off): their modules'
    ``tqdm`` becomes one whose bars are disabled. Only pytorch-grad-cam's own reference changes."""
    import functools
    import types

    import tqdm

    quiet = types.SimpleNamespace(tqdm=functools.partial(tqdm.tqdm, disable=True))
    for module in (package.score_cam, package.ablation_cam):
        if getattr(module, "tqdm", None) is tqdm:
            module.tqdm = quiet


_REGISTERED = (
    CamMethod("gradcam", "GradCAM", "Grad-CAM", True, True,
              "channel weights = mean gradient of the class score over the map (Selvaraju et al. 2017)"),
    CamMethod("gradcam++", "GradCAMPlusPlus", "Grad-CAM++", True, True,
              "weights from second-order terms of the gradient: several instances of a class"),
    CamMethod("hirescam", "HiResCAM", "HiResCAM", True, True,
              "gradient times activation per position, summed over channels (no averaging)"),
    CamMethod("xgradcam", "XGradCAM", "XGrad-CAM", True, True,
              "gradient weights normalised by the activations (axiom-based Grad-CAM)"),
    CamMethod("layercam", "LayerCAM", "LayerCAM", True, True,
              "positive gradients times activations per position; finer maps at earlier layers"),
    CamMethod("gradcamelementwise", "GradCAMElementWise", "Grad-CAM element-wise", True, True,
              "ReLU of gradient times activation per position before summing"),
    CamMethod("eigengradcam", "EigenGradCAM", "Eigen-Grad-CAM", True, True,
              "first principal component of gradient times activation"),
    CamMethod("eigencam", "EigenCAM", "EigenCAM", False, False,
              "first principal component of the layer's maps: class-agnostic, never all zero"),
    CamMethod("scorecam", "ScoreCAM", "Score-CAM", True, False,
              "weights = class score with the image masked by each channel: one forward pass per channel"),
    CamMethod("ablationcam", "AblationCAM", "Ablation-CAM", True, False,
              "weights = drop of the class score when each channel is zeroed: one pass per channel"),
)  # fmt: skip
#: The registry: ``--method`` name → :class:`CamMethod` (tests iterate it).
METHODS: dict[str, CamMethod] = {m.name: m for m in _REGISTERED}
DEFAULT_METHOD = "gradcam"


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "").replace("-", "").replace(" ", "").replace("plusplus", "++")


_ALIASES = {_key(m.name): m.name for m in _REGISTERED} | {_key(m.cls): m.name for m in _REGISTERED}


def list_methods() -> list[str]:
    """The registered method names, in registry order."""
    return list(METHODS)


def get_method(name: str, option: str = "--method") -> CamMethod:
    """The registry entry for ``name`` (a registry name or a pytorch-grad-cam class name; case, ``-`` and
    ``_`` ignored); one line listing the known names otherwise (``option`` names the setting in it)."""
    found = _ALIASES.get(_key(name)) if isinstance(name, str) else None
    if found is None:
        raise CxrError(f"unknown {option} {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[found]


def method_help() -> str:
    """The ``--method`` help text: every registered name (the slow forward-only ones marked)."""
    names = [f"{m.name} (slow)" if not m.gradients and m.class_specific else m.name for m in _REGISTERED]
    return "heatmap method (docs/explain.md): " + " | ".join(names)
