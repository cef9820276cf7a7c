"""Test-time shift averaging (cxrlab.models.tta) on a real radiograph."""

from __future__ import annotations

import numpy as np
import torch

from cxrlab.config import ModelConfig
from cxrlab.models import build_model
from cxrlab.models.tta import ShiftAverage, shift_pixels, shifted_views, with_tta


def _radiograph(pneumoniamnist_npz) -> torch.Tensor:
    image = np.load(pneumoniamnist_npz)["test_images"][0]
    return torch.from_numpy(image).float().div(255)[None, None]


def test_views_are_the_image_and_four_edge_repeating_shifts(pneumoniamnist_npz):
    x = _radiograph(pneumoniamnist_npz)
    views = shifted_views(x, 2)
    assert len(views) == 5 and all(v.shape == x.shape for v in views)
    assert torch.equal(views[0], x)
    up, down, left, right = views[1:]
    # content moves down by 2: rows 2.. are the image's rows ..-2, the top strip repeats row 0
    assert torch.equal(up[..., 2:, :], x[..., :-2, :]) and torch.equal(
        up[..., :2, :], x[..., :1, :].expand_as(up[..., :2, :])
    )
    assert torch.equal(down[..., :-2, :], x[..., 2:, :])
    assert torch.equal(left[..., :, 2:], x[..., :, :-2])
    assert torch.equal(right[..., :, :-2], x[..., :, 2:]) and torch.equal(right[..., :, -1], x[..., :, -1])
    assert shifted_views(x, 0) == [x]


def test_shift_average_is_the_mean_of_the_five_views_logits(pneumoniamnist_npz):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="small_cnn"), 2, 28).eval()
    x = torch.cat([_radiograph(pneumoniamnist_npz)] * 3)
    x = (x - 0.5) / 0.25
    wrapped = with_tta(model, 2)
    assert isinstance(wrapped, ShiftAverage) and with_tta(model, 0) is model
    with torch.no_grad():
        expected = torch.stack([model(v) for v in shifted_views(x, 2)]).mean(0)
        got = wrapped(x)
        assert torch.allclose(got, expected, atol=1e-5)
        assert not torch.allclose(got, model(x), atol=1e-5)  # the views differ, so does the average
        assert torch.allclose(wrapped.head.out(wrapped.features(x)), got)


def test_shift_is_a_fraction_of_the_side():
    assert shift_pixels(0.07, 28) == 2 and shift_pixels(0.07, 64) == 4 and shift_pixels(0.0, 224) == 0
