"""The graph's input: noise estimate, units of noise, total-variation denoising, and what it buys."""

from __future__ import annotations

import numpy as np
import pytest

from segvolpipe.errors import UserError
from segvolpipe.pseudomask.case import PseudomaskSettings, segment_case
from segvolpipe.pseudomask.denoise import check_denoise, noise_sigma, prepare
from segvolpipe.pseudomask.metrics import best_match_dice
from tests.pseudomask.test_graph import blocks


@pytest.mark.parametrize("sigma", [0.5, 3.0, 40.0])
def test_noise_sigma_recovers_white_noise_over_structure(sigma: float) -> None:
    """Air and two tissues 10 σ apart, + N(0, σ²): borders are a few % of the pairs; the median ignores them."""
    truth = np.zeros((20, 48, 48), np.int32)
    truth[:, :, 16:32], truth[:, :, 32:] = 1, 2
    rng = np.random.default_rng(0)
    volume = (np.array([0.0, 100.0, 110.0])[truth] * sigma + rng.normal(0, sigma, truth.shape)).astype(np.float32)
    assert noise_sigma(volume, (1.0, 1.0, 1.0)) == pytest.approx(sigma, rel=0.05)


def test_noise_sigma_uses_the_fine_axes_of_thick_slices() -> None:
    """Along a 5 mm z, neighbours differ by anatomy (here a ramp of 3 σ per slice): only y and x count."""
    rng = np.random.default_rng(1)
    ramp = 3.0 * np.arange(24, dtype=np.float32)[:, None, None] + 100.0
    volume = (ramp + rng.normal(0, 1.0, (24, 40, 40))).astype(np.float32)
    assert noise_sigma(volume, (5.0, 1.0, 1.0)) == pytest.approx(1.0, rel=0.05)
    assert noise_sigma(volume, (1.0, 1.0, 1.0)) > 1.3  # isotropic: the ramp leaks in


def test_noise_sigma_of_integer_and_constant_images_is_positive() -> None:
    """Integer data with little noise: most neighbour differences are exactly 0, the median is 0."""
    rng = np.random.default_rng(2)
    volume = np.zeros((8, 16, 32), np.float32)
    volume[:, :, 16:] = 100.0 + np.round(rng.normal(0, 0.4, (8, 16, 16)))
    assert 0.2 < noise_sigma(volume, (1.0, 1.0, 1.0)) < 0.8
    assert noise_sigma(np.full((4, 5, 6), 7.0, np.float32), (1.0, 1.0, 1.0)) == 1.0


@pytest.mark.parametrize("denoise", ["tv", "gaussian"])
def test_prepare_is_in_units_of_noise(denoise: str) -> None:
    """Scaling and shifting the intensities (CT in HU vs z-scored, MRI units) changes nothing downstream."""
    volume, _ = blocks((10, 16, 24), seed=3, noise=2.0)
    a, sa = prepare(volume, (2.0, 1.0, 1.0), denoise)
    b, sb = prepare(volume * 37.0 + 5.0, (2.0, 1.0, 1.0), denoise)
    assert sb == pytest.approx(37.0 * sa, rel=1e-4)
    np.testing.assert_allclose(b - b.mean(), a - a.mean(), atol=2e-3)
    assert a.dtype == np.float32 and a.flags.c_contiguous


def test_tv_flattens_regions_and_keeps_their_steps() -> None:
    volume, truth = blocks((12, 20, 30), seed=4, noise=3.0)  # steps of 10 = 3.3 σ
    raw, _ = prepare(volume, (1.0, 1.0, 1.0), "gaussian")
    flat, _ = prepare(volume, (1.0, 1.0, 1.0), "tv", tv_weight=2.0)
    for label in range(1, 5):
        inside = truth == label
        assert flat[inside].std() < 0.4 * raw[inside].std()
    for a, b in ((1, 2), (2, 3), (3, 4)):  # ROF moves region means a little (their bias), never much
        step_raw = raw[truth == b].mean() - raw[truth == a].mean()
        assert 0.8 * step_raw < flat[truth == b].mean() - flat[truth == a].mean() < 1.1 * step_raw


def _straddling(regions: np.ndarray, truth: np.ndarray) -> int:
    """How many (region, block) pairs beyond one per region: 0 when every region lies inside one block."""
    pairs = np.unique(np.stack([regions.ravel(), truth.ravel()]), axis=1)
    return pairs.shape[1] - np.unique(regions).size


@pytest.mark.parametrize(("rule", "tv_weight"), [("percentile", 1.0), ("fh", 2.0)])
def test_tv_keeps_block_borders_that_the_gaussian_crosses(rule: str, tv_weight: float) -> None:
    """Steps of 2–3 σ: with TV no region ever crosses a border and every block is the union of the regions inside
    it; SegVol's blur joins two blocks somewhere in the same volumes. The default (percentile, TV weight 1 σ) and
    fh (k 1.5 σ) with TV weight 2 σ; at weight 1 σ fh lets one small region straddle a border in one volume of six."""
    crossed = 0
    for noise in (3.0, 4.0):
        for seed in (5, 6, 7):
            volume, truth = blocks((16, 24, 36), seed=seed, noise=noise)
            tv, _ = segment_case(volume, (1.0, 1.0, 1.0), PseudomaskSettings(rule=rule, min_size=200, tv_weight=tv_weight))
            assert _straddling(tv, truth) == 0
            assert best_match_dice(tv, truth, (1, 2, 3, 4)) == {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}
            blurred, _ = segment_case(volume, (1.0, 1.0, 1.0), PseudomaskSettings(rule=rule, min_size=200, denoise="gaussian"))
            crossed += _straddling(blurred, truth)
    assert crossed > 0


def test_unknown_denoiser_and_bad_weight() -> None:
    assert check_denoise(" TV ") == "tv"
    with pytest.raises(UserError, match="did you mean 'gaussian'"):
        check_denoise("gauss")
    with pytest.raises(UserError, match="tv-weight"):
        PseudomaskSettings(tv_weight=0.0)
    with pytest.raises(UserError, match="denoiser"):
        PseudomaskSettings(denoise="median")
    assert PseudomaskSettings().key() != PseudomaskSettings(denoise="gaussian").key()
