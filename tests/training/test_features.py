"""The feature/activation cache's storage type: fp16 only where every value fits."""

from __future__ import annotations

import numpy as np

from cxrlab.training.features import storage_dtype


def test_fp16_is_kept_when_values_fit_and_float32_is_used_beyond_its_range():
    fits = np.array([[-65000.0, 3.5], [0.0, 65000.0]], dtype=np.float32)
    assert storage_dtype(fits, np.float16) is np.float16
    assert np.isfinite(fits.astype(storage_dtype(fits, np.float16))).all()
    for big in (7e4, -7e4):
        beyond = np.array([1.0, big], dtype=np.float32)
        kept = beyond.astype(storage_dtype(beyond, np.float16))
        assert kept.dtype == np.float32 and kept[1] == np.float32(big)
    assert storage_dtype(np.zeros((0, 4), np.float32), np.float16) is np.float16
    assert storage_dtype(np.array([1e9], np.float32), np.float32) is np.float32
