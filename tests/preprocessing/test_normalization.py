"""Normalisation schemes: known answers, the registry, overrides with "did you mean"."""

from __future__ import annotations

import numpy as np
import pytest

from segvolpipe.errors import UserError
from segvolpipe.preprocessing.normalization import (
    NORMALIZERS,
    ChannelNorm,
    default_scheme,
    normalize,
    parse_norm_override,
)


def test_ct_clips_then_standardises_with_dataset_stats() -> None:
    x = np.array([[[[-1000.0, 0.0, 50.0, 3000.0]]]], np.float32)
    n = ChannelNorm(0, "CT", "ct", clip_low=-100.0, clip_high=200.0, mean=50.0, std=25.0)
    out = normalize(x, None, (n,))
    np.testing.assert_allclose(out.ravel(), [(-100 - 50) / 25, -2.0, 0.0, (200 - 50) / 25])


def test_zscore_within_mask() -> None:
    x = np.zeros((1, 2, 2, 2), np.float32)
    x[0, 0] = [[1, 2], [3, 4]]
    mask = x[0] != 0
    out = normalize(x, mask, (ChannelNorm(0, "T2", "zscore", use_mask=True),))
    inside = out[0][mask]
    assert inside.mean() == pytest.approx(0, abs=1e-6) and inside.std() == pytest.approx(1, abs=1e-5)
    assert (out[0][~mask] == 0).all()


def test_segvol_scheme_uses_voxels_above_the_mean() -> None:
    rng = np.random.default_rng(0)
    x = np.where(rng.random((1, 20, 20, 20)) < 0.5, -1000.0, rng.normal(100, 10, (1, 20, 20, 20))).astype(np.float32)
    out = normalize(x, None, (ChannelNorm(0, "CT", "segvol"),))[0]
    fg = x[0] > x[0].mean()
    assert out[fg].mean() == pytest.approx(0, abs=0.05) and out[fg].std() == pytest.approx(1, abs=0.05)
    assert out.min() >= (x[0][fg].min() - x[0][fg].mean()) / x[0][fg].std() - 0.5  # air clipped up to the fg range


def test_rescale_and_none() -> None:
    x = np.array([[[[2.0, 4.0, 6.0]]]], np.float32)
    np.testing.assert_allclose(normalize(x, None, (ChannelNorm(0, "X", "rescale01"),)).ravel(), [0, 0.5, 1])
    np.testing.assert_array_equal(normalize(x, None, (ChannelNorm(0, "X", "none"),)), x)


def test_registry_and_defaults() -> None:
    assert set(NORMALIZERS) == {"ct", "segvol", "zscore", "rescale01", "none"}
    assert default_scheme("CT") == "ct" and default_scheme("ct") == "ct"
    assert default_scheme("T2") == "zscore" and default_scheme("MRI") == "zscore"


def test_overrides() -> None:
    assert parse_norm_override("segvol", 2) == {0: "segvol", 1: "segvol"}
    assert parse_norm_override("1:none", 2) == {1: "none"}
    with pytest.raises(UserError, match="did you mean 'zscore'"):
        parse_norm_override("zscor", 1)
    with pytest.raises(UserError, match="does not exist"):
        parse_norm_override("3:ct", 1)
    with pytest.raises(ValueError, match="needs"):
        ChannelNorm(0, "CT", "ct")
