"""Quality of synthetic images: two-sample tests and memorisation on real radiographs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxrlab.data.images import load_gray
from cxrlab.errors import DataError
from cxrlab.generative.quality import memorization, quality_report, two_sample_cnn, two_sample_logreg
from tests.browser import check_page
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def normals(kermany_dir) -> np.ndarray:
    """160 real NORMAL training radiographs at 32 px."""
    files = sorted((kermany_dir / "train" / "NORMAL").iterdir())[:160]
    return np.stack([load_gray(f, 32) for f in files])


def test_two_sample_tests_tell_shifted_images_apart_but_not_real_halves(normals):
    a, b = normals[:80], normals[80:]
    same = two_sample_logreg(a, b, seed=0)
    assert same["accuracy_ci95"][0] <= 0.5 <= same["accuracy_ci95"][1]
    flipped = two_sample_logreg(a, b[:, ::-1].copy(), seed=0)  # upside-down radiographs: a real shift
    assert (
        flipped["accuracy"] > 0.9
        and flipped["accuracy_ci95"][0] > 0.5
        and flipped["p_value_vs_chance"] < 1e-6
    )
    cnn = two_sample_cnn(a, b[:, ::-1].copy(), seed=0, steps=60)
    assert cnn["accuracy"] > 0.8 and cnn["n"] == 160


def test_memorization_flags_copies_not_new_images(normals):
    train, held_out = normals[:100], normals[100:]
    rng = np.random.default_rng(0)
    copies = np.clip(train[:40].astype(int) + rng.integers(-3, 4, train[:40].shape), 0, 255).astype(np.uint8)
    copied = memorization(train, copies, size=32)
    assert copied["share_closer_than_real_p5"] == 1.0 and copied["ratio_of_medians"] < 0.2
    fresh = memorization(train, held_out, size=32)
    assert 0.5 < fresh["ratio_of_medians"] < 2 and fresh["share_closer_than_real_p5"] < 0.3
    assert fresh["synthetic_self_nn_median"] > 0


def test_quality_report(synth_dir, tiny_kermany, tmp_path):
    out = tmp_path / "quality"
    proc = run_cli(
        "gan",
        "quality",
        str(synth_dir),
        "--data",
        str(tiny_kermany),
        "--out",
        str(out),
        "--cnn-steps",
        "20",
        "-q",
    )
    assert proc.returncode == 0, proc.stderr
    q = json.loads((out / "quality.json").read_text())
    entry = q["classes"]["NORMAL"]
    assert entry["n_synthetic"] == 30 and entry["n_real_train"] == 24
    assert len(entry["two_sample"]) == 2 and all(0 <= t["accuracy"] <= 1 for t in entry["two_sample"])
    for key in ("grid", "nearest", "distances"):
        assert (out / entry["plots"][key]).is_file()
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64") == 3 and "two-sample" in html
    check_page(out / "report.html", "quality")
    wrong = tmp_path / "wrong"
    (wrong / "lungs").mkdir(parents=True)
    with pytest.raises(DataError, match="lungs: not classes"):
        quality_report(wrong, str(tiny_kermany), tmp_path / "q2", progress=False)
    assert not (tmp_path / "q2").exists()
