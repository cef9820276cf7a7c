"""timm models by `timm/NAME`, offline weights handling, and pretrained backbones on 1-channel input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from cxrlab.config import ModelConfig
from cxrlab.data.prepare import to_tensor
from cxrlab.errors import ModelError
from cxrlab.models import build_model, get_spec
from tests.conftest import run_cli

timm = pytest.importorskip("timm")


def test_timm_model_builds_trains_and_counts_like_timm():
    torch.manual_seed(0)
    spec = get_spec("timm/mobilenetv1_100")
    assert (spec.family, spec.input_size, spec.mean) == ("timm", 224, (0.5, 0.5, 0.5))
    model = build_model(ModelConfig(name="timm/mobilenetv1_100"), 4)
    with torch.device("meta"):
        reference = timm.create_model("mobilenetv1_100", num_classes=0)
    assert sum(p.numel() for p in model.backbone.parameters()) == sum(
        p.numel() for p in reference.parameters()
    )
    assert model.head.in_shape == (1024, 7, 7)
    model.train()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 4)
    out.pow(2).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_grey_input_for_a_timm_model():
    model = build_model(ModelConfig(name="timm/mobilenetv1_100", in_channels=1), 2).eval()
    assert model.backbone.net.conv_stem.in_channels == 1
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 64)).shape == (1, 2)


def test_unknown_timm_model_is_one_line_with_suggestions():
    with pytest.raises(ModelError, match="timm/mobilenetv1_100") as err:
        get_spec("timm/mobilenetv1_10")
    assert "\n" not in str(err.value)


def test_pretrained_timm_without_cached_weights_fails_fast_with_one_line(tmp_path, small_covid):
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}  # never download in tests
    proc = run_cli(
        "train", "--data", str(small_covid), "--model", "timm/mobilenetv1_100", "--pretrained",
        "--out", str(tmp_path / "run"), "-q", env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "not in timm's cache" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_without_timm_installed_a_timm_name_says_how_to_install_it():
    code = (
        "import sys; sys.modules['timm'] = None\n"
        "from cxrlab.models import get_spec\n"
        "from cxrlab.errors import ModelError\n"
        "try:\n    get_spec('timm/mobilenetv1_100')\n"
        "except ModelError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "pip install 'cxrlab[timm]'" in out.stdout, out.stderr


def test_one_channel_pretrained_mobilenet_equals_three_channels_on_the_replicated_image(
    torch_home, covid_dir
):
    """Summed RGB kernels: a grey image in 1 channel gives exactly the 3-channel network's output."""
    from PIL import Image

    path = sorted((covid_dir / "train" / "normal").iterdir())[0]
    grey = np.array(Image.open(path).convert("L").resize((224, 224)))[None]
    spec = get_spec("mobilenet_v2")
    rgb = build_model(ModelConfig(name="mobilenet_v2", pretrained=True), 2).eval()
    one = build_model(ModelConfig(name="mobilenet_v2", pretrained=True, in_channels=1), 2).eval()
    one.head.load_state_dict(rgb.head.state_dict())  # the new heads are randomly initialised
    first_rgb, first_one = rgb.backbone[0][0].weight, one.backbone[0][0].weight
    assert first_one.shape == (32, 1, 3, 3)
    assert torch.allclose(first_one, first_rgb.sum(dim=1, keepdim=True))
    x1 = to_tensor(grey, 1, spec.mean, spec.std)  # normalised grey plane
    with torch.no_grad():
        assert torch.allclose(rgb(x1.expand(-1, 3, -1, -1)), one(x1), atol=1e-5)
        feats_rgb = rgb.backbone(x1.expand(-1, 3, -1, -1))
        feats_one = one.backbone(x1)
    assert torch.allclose(feats_rgb, feats_one, atol=1e-5)
    assert feats_one.abs().sum() > 0
