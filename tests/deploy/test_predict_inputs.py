"""cxrlab.predict with images in memory: numpy arrays, torch tensors and PIL images give the probabilities
their file gives (a real 2400 px RGBA PNG of covid-challenge), mixed with paths in one list."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import cxrlab
from cxrlab.data.images import to_gray
from cxrlab.errors import CxrError
from tests.conftest import COVID

PNG = COVID / "train" / "covid" / "covid-19-pneumonia-14-L.png"


def _probs(result: dict) -> np.ndarray:
    return np.array(list(result["probabilities"].values()))


def test_array_tensor_and_pil_inputs_match_the_path(small_run, test_images):
    assert PNG.is_file()
    rgba = np.asarray(Image.open(PNG))  # H x W x 4 uint8, as PIL reads the file
    assert rgba.shape[2] == 4 and rgba.shape[0] > 2000
    grey = np.asarray(to_gray(Image.open(PNG)))  # H x W: the file's grey pixels at full size
    inputs = {
        "path": str(PNG),
        "uint8 HxWx4": rgba,
        "float32 HxWx4 in [0, 1]": rgba.astype(np.float32) / 255,
        "uint8 HxW grey": grey,
        "float64 HxW grey": grey / 255.0,
        "uint8 HxWx3 grey": np.repeat(grey[..., None], 3, axis=2),
        "tensor 4xHxW uint8": torch.from_numpy(rgba.copy()).permute(2, 0, 1),
        "tensor 1xHxW float": torch.from_numpy(grey.copy()).float().div(255).unsqueeze(0),
        "tensor HxW float64": torch.from_numpy(grey / 255.0),
        "PIL": Image.open(PNG),
    }
    results = cxrlab.predict(small_run, list(inputs.values()))
    assert len(results) == len(inputs) and all("class" in r for r in results)
    want = _probs(results[0])
    for (name, _), r in zip(inputs.items(), results, strict=True):
        np.testing.assert_allclose(_probs(r), want, atol=1e-6, err_msg=name)
        assert r["class"] == results[0]["class"], name
    assert results[0]["image"] == str(PNG)
    assert [r["image"] for r in results[1:3]] == ["<numpy.ndarray #1>", "<numpy.ndarray #2>"]
    assert results[-1]["image"] == f"<PIL.Image #{len(inputs) - 1}>"
    # one image alone, a 4-D batch, and paths of other images mixed in keep their own results
    alone = cxrlab.predict(small_run, rgba)
    np.testing.assert_allclose(_probs(alone[0]), want, atol=1e-6)
    batch = torch.from_numpy(np.stack([grey, grey])).unsqueeze(1)  # N x 1 x H x W
    names = [r["image"] for r in cxrlab.predict(small_run, batch)]
    assert names == ["<torch.Tensor #0>", "<torch.Tensor #1>"]
    other = str(test_images[0])
    mixed = cxrlab.predict(small_run, [other, Image.open(PNG)])
    np.testing.assert_allclose(_probs(mixed[0]), _probs(cxrlab.predict(small_run, [other])[0]), atol=1e-6)
    np.testing.assert_allclose(_probs(mixed[1]), want, atol=1e-6)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ([3.5], "image #0 is a float; give image paths, numpy arrays, torch tensors or PIL images"),
        (42, "images is a int; give a list of image paths"),
        ([np.zeros((8, 8), np.int64)], "<numpy.ndarray #0>: an array of dtype int64; give uint8"),
        ([np.full((8, 8), 1.5)], "values from 1.5 to 1.5; float images must lie in [0, 1]"),
        ([np.full((8, 8), np.nan)], "a float image with 64 NaN or infinite values"),
        ([np.zeros((3, 8, 8), np.uint8)], "channels first? numpy arrays are channels last"),
        ([torch.zeros(8, 8, 3)], "channels last? tensors are channels first"),
        ([np.zeros((2, 2, 8, 8), np.uint8)], "give H×W, H×W×1, H×W×3 or H×W×4"),
        ([np.zeros((0, 8), np.uint8)], "is empty (8x0 pixels)"),
        ([torch.zeros(8, 8, dtype=torch.bool)], "dtype bool"),
    ],
)
def test_bad_images_are_one_line(small_run, images, message):
    with pytest.raises(CxrError) as exc:
        cxrlab.predict(small_run, images)
    assert message in str(exc.value) and "\n" not in str(exc.value)
