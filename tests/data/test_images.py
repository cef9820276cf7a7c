"""Decoding odd images: synthetic files for bad-input cases, real radiographs for the rest."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cxrlab.data import images as img_mod
from cxrlab.data.images import ImageReadError, load_gray


def _gradient(w=64, h=48):
    return (np.linspace(0, 255, w)[None, :] * np.ones((h, 1))).astype(np.uint8)


def test_real_radiographs_decode_to_fixed_size(covid_dir):
    from PIL import ImageOps

    for f in sorted((covid_dir / "train" / "covid").iterdir())[:8]:
        arr = load_gray(f, 64)
        assert arr.shape == (64, 64) and arr.dtype == np.uint8 and arr.std() > 5
        # the pixels are the radiograph's: PIL's own grey decode, squashed to 64 px, within a few levels
        ref = np.asarray(ImageOps.exif_transpose(Image.open(f)).convert("L").resize((64, 64), Image.BILINEAR))
        assert np.abs(arr.astype(float) - ref).mean() < 6, f.name


def test_16bit_png_is_stretched(tmp_path):
    data = (np.linspace(0, 4095, 64)[None, :] * np.ones((32, 1))).astype(np.uint16)
    path = tmp_path / "x16.png"
    Image.fromarray(data).save(path)
    arr = load_gray(path, 32)
    # 12-bit data stretched over 0-255, not clipped at 255 (as a plain mode conversion would)
    assert arr.min() <= 8 and arr.max() >= 245 and 100 < np.median(arr) < 155


def test_cmyk_palette_rgba_modes(tmp_path):
    base = Image.fromarray(_gradient())
    cmyk = tmp_path / "cmyk.jpg"
    base.convert("CMYK").save(cmyk)
    pal = tmp_path / "pal.png"
    p = base.convert("P")
    p.info["transparency"] = 0
    p.save(pal, transparency=0)
    rgba = tmp_path / "rgba.png"
    base.convert("RGBA").save(rgba)
    plain = tmp_path / "plain.png"
    base.save(plain)
    ref = load_gray(plain, 16).astype(int)
    assert (np.diff(ref[0]) > 0).all() and ref[0, 0] < 20 and ref[0, -1] > 235  # a left-to-right ramp
    for path in (cmyk, pal, rgba):
        arr = load_gray(path, 16)
        assert arr.shape == (16, 16)
        assert np.abs(arr.astype(int) - ref).max() <= 4, path.name  # same grey ramp, not inverted or black


def test_exif_orientation_is_honoured(tmp_path):
    arr = np.zeros((20, 40), dtype=np.uint8)
    arr[:, :20] = 255  # bright left half, landscape
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = tmp_path / "rot.jpg"
    im.save(path, exif=exif.tobytes())
    out = load_gray(path, 40, resize="pad")
    # displayed portrait: bright half on top → after padding to square, top rows brighter than bottom
    assert out[:20].mean() > out[20:].mean() + 50


def test_png_with_jpg_extension(tmp_path):
    path = tmp_path / "really_png.jpg"
    Image.fromarray(_gradient()).save(path, format="PNG")
    plain = tmp_path / "plain.png"
    Image.fromarray(_gradient()).save(plain)
    arr = load_gray(path, 16)
    assert arr.shape == (16, 16) and np.array_equal(arr, load_gray(plain, 16))  # decoded as the PNG it is


@pytest.mark.parametrize("kind", ["zero", "truncated", "text"])
def test_broken_files_raise_clear_errors(tmp_path, kind):
    path = tmp_path / f"{kind}.jpg"
    if kind == "zero":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not an image")
    else:
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ImageReadError) as exc:
        load_gray(path, 32)
    assert "\n" not in str(exc.value)


def test_decompression_bomb_guard(tmp_path, monkeypatch):
    # A 20,000 × 20,000 PNG header is refused before any pixel is decoded.
    path = tmp_path / "bomb.png"
    Image.new("1", (20_000, 20_000)).save(path, optimize=True)
    with pytest.raises(ImageReadError, match="pixel limit"):
        load_gray(path, 32)
    assert img_mod.MAX_PIXELS == 100_000_000
