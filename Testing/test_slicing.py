"""3D → 2D slicing and reassembly, preprocessing, and mapping predictions back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aeseg.data.slicing import from_slices, inplane_shape, inplane_spacing, to_slices
from aeseg.data.transforms import DataConfig, normalise, resize_probabilities, resize_slices
from aeseg.errors import ConfigError


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_and_reassemble_is_exact(axis):
    vol = np.random.default_rng(axis).normal(size=(2, 5, 6, 7)).astype(np.float32)  # (C, Z, Y, X)
    sl = to_slices(vol, axis)
    n = {0: 7, 1: 6, 2: 5}[axis]
    assert sl.shape[0] == n and sl.shape[1] == 2
    np.testing.assert_array_equal(from_slices(sl, axis), vol)
    lab = (vol[0] > 0).astype(np.uint8)
    np.testing.assert_array_equal(from_slices(to_slices(lab, axis), axis), lab)
    assert sl.shape[2:] == inplane_shape(vol.shape[1:], axis)


def test_axial_slice_is_a_z_plane():
    vol = np.arange(2 * 3 * 4).reshape(1, 2, 3, 4)
    np.testing.assert_array_equal(to_slices(vol, 2)[1, 0], vol[0, 1])
    np.testing.assert_array_equal(to_slices(vol, 0)[3, 0], vol[0, :, :, 3])  # sagittal: fixed x
    assert inplane_spacing((0.5, 0.7, 3.0), 2) == (0.7, 0.5)
    assert inplane_spacing((0.5, 0.7, 3.0), 0) == (3.0, 0.7)


def test_bad_axis():
    with pytest.raises(ConfigError, match="slice axis"):
        to_slices(np.zeros((1, 2, 2, 2)), 3)


def test_normalisation_modes():
    rng = np.random.default_rng(0)
    ct = rng.uniform(-1000, 1000, size=(1, 2, 8, 8)).astype(np.float32)
    out = normalise(ct, DataConfig(intensity="ct", ct_window_low=-100, ct_window_high=100))
    assert out.min() == -1.0 and out.max() == 1.0
    inside = (ct > -100) & (ct < 100)
    np.testing.assert_allclose(out[inside], ct[inside] / 100.0, atol=1e-5)
    mr = rng.gamma(2.0, 50.0, size=(1, 3, 16, 16)).astype(np.float32)
    out = normalise(mr, DataConfig(intensity="percentile", percentile_low=1, percentile_high=99))
    assert out.min() == -1.0 and out.max() == 1.0
    lo, hi = np.percentile(mr, [1, 99])
    mid = (mr > lo) & (mr < hi)
    np.testing.assert_allclose(out[mid], (mr[mid] - lo) / (hi - lo) * 2 - 1, atol=1e-4)


def test_window_normalisation_is_the_same_for_every_case():
    """A fixed window maps a pixel value to the same output whatever else the case holds
    (per-case percentiles do not: a bright spot rescales the whole image)."""
    rng = np.random.default_rng(1)
    base = rng.uniform(80, 180, size=(1, 1, 16, 16)).astype(np.float32)
    spot = base.copy()
    spot[..., 4:8, 4:8] = 250.0
    cfg = DataConfig(intensity="window", window_low=0, window_high=255)
    a, b = normalise(base, cfg), normalise(spot, cfg)
    np.testing.assert_allclose(a[..., 8:, 8:], b[..., 8:, 8:], atol=1e-6)
    np.testing.assert_allclose(a, base / 255.0 * 2 - 1, atol=1e-5)
    pa, pb = normalise(base, DataConfig()), normalise(spot, DataConfig())
    assert np.abs(pa[..., 8:, 8:] - pb[..., 8:, 8:]).max() > 0.05
    with pytest.raises(ConfigError, match="window_high"):
        normalise(base, DataConfig(intensity="window", window_low=10, window_high=10))


def test_resize_nearest_keeps_label_values_and_probabilities_map_back():
    lab = np.zeros((2, 1, 10, 14), np.float32)
    lab[:, :, 2:8, 3:11] = 1
    r = resize_slices(lab, 32, "nearest")
    assert r.shape == (2, 1, 32, 32) and set(np.unique(r)) == {0.0, 1.0}
    prob = torch.from_numpy(np.concatenate([1 - r, r], 1))
    back = resize_probabilities(prob, (10, 14))[:, 1].numpy() > 0.5
    assert (back == lab[:, 0].astype(bool)).mean() > 0.95
