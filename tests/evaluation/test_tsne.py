"""t-SNE of a large test split embeds a stratified sample (minutes otherwise), and says so."""

from __future__ import annotations

import numpy as np

from cxrlab.evaluation.evaluate import tsne_plot
from cxrlab.evaluation.plots import TSNE_MAX_POINTS, tsne_sample


def test_sample_keeps_every_class_share_and_is_reproducible():
    y = np.r_[np.zeros(9000, int), np.ones(1000, int), np.full(3, 2)]
    rows = tsne_sample(y, 5000, seed=1)
    assert abs(len(rows) - 5000) <= 2 and len(np.unique(rows)) == len(rows) and np.all(np.diff(rows) > 0)
    counts = np.bincount(y[rows], minlength=3)
    assert abs(counts[0] - 4498) <= 1 and abs(counts[1] - 500) <= 1 and counts[2] >= 1  # a rare class stays
    assert np.array_equal(rows, tsne_sample(y, 5000, seed=1))
    assert not np.array_equal(rows, tsne_sample(y, 5000, seed=2))
    assert np.array_equal(tsne_sample(y[:4000], 5000), np.arange(4000))  # small splits: every image
    assert TSNE_MAX_POINTS >= 1000


def test_a_large_split_is_sampled_and_the_note_says_so(tmp_path, pneumoniamnist_npz):
    data = np.load(pneumoniamnist_npz)
    feats = data["test_images"].reshape(len(data["test_images"]), -1).astype(np.float32)  # 624 real images
    y = data["test_labels"].ravel()
    notes: dict[str, str] = {}
    png = tsne_plot(feats, y, ["normal", "pneumonia"], tmp_path / "tsne.png", 0, notes, max_points=200)
    assert png is not None and png.stat().st_size > 5000
    assert "stratified sample of 200 of the 624 test images" in notes["tsne"]
    notes.clear()
    names = ["normal", "pneumonia"]
    assert tsne_plot(feats[:150], y[:150], names, tmp_path / "all.png", 0, notes, max_points=200)
    assert "tsne" not in notes  # every point embedded: nothing to say
