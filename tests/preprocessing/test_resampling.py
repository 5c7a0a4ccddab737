"""Resampling: shapes, identity, no invented labels, the anisotropic axis."""

from __future__ import annotations

import numpy as np

from segvolpipe.preprocessing.resampling import (
    anisotropic_axis,
    resample_image,
    resample_label,
    resampled_shape,
)


def test_shapes_and_axis() -> None:
    assert resampled_shape((10, 20, 30), (3.0, 1.0, 1.0), (1.5, 2.0, 1.0)) == (20, 10, 30)
    assert anisotropic_axis((5.0, 1.0, 1.0)) == 0
    assert anisotropic_axis((2.0, 1.0, 1.0)) is None
    assert anisotropic_axis((1.0, 1.0, 1.0), (1.0, 4.0, 1.0)) == 1


def test_identity_is_exact() -> None:
    img = np.random.default_rng(0).normal(size=(1, 5, 6, 7)).astype(np.float32)
    np.testing.assert_array_equal(resample_image(img, (5, 6, 7)), img)
    lab = np.random.default_rng(0).integers(0, 3, (5, 6, 7)).astype(np.int16)
    np.testing.assert_array_equal(resample_label(lab, (5, 6, 7)), lab)


def test_labels_are_never_invented() -> None:
    lab = np.zeros((8, 16, 16), np.int16)
    lab[2:6, 2:8, 2:8] = 1
    lab[2:6, 8:14, 8:14] = 3
    out = resample_label(lab, (13, 23, 29), axis=0)
    assert set(np.unique(out)) <= {0, 1, 3}
    assert out.shape == (13, 23, 29)
    # volume fraction of each label is kept within a few percent
    for v in (1, 3):
        assert abs((out == v).mean() - (lab == v).mean()) < 0.02


def test_constant_image_stays_constant_and_upsample_back() -> None:
    img = np.full((1, 4, 4, 4), 7.0, np.float32)
    np.testing.assert_allclose(resample_image(img, (8, 6, 5)), 7.0, rtol=1e-5)
    smooth = np.linspace(0, 1, 16, dtype=np.float32)[None, None, None, :].repeat(8, 2).repeat(8, 1)
    down = resample_image(smooth, (8, 8, 8))
    up = resample_image(down, (8, 8, 16))
    assert np.abs(up - smooth)[..., 2:-2].max() < 0.02


def test_linear_and_nearest_match_scipy_zoom_on_the_same_grid() -> None:
    from scipy import ndimage

    from segvolpipe.preprocessing.resampling import resample_volume

    vol = np.random.default_rng(1).normal(size=(7, 11, 13)).astype(np.float32)
    for shape in [(14, 8, 13), (5, 22, 9)]:
        factors = np.array(shape) / np.array(vol.shape)
        for kind, order in (("linear", 1), ("nearest", 0)):
            ours = resample_volume(vol, shape, kind)
            ref = ndimage.zoom(vol, factors, order=order, mode="nearest", grid_mode=True)
            assert ref.shape == ours.shape
            if kind == "linear":
                np.testing.assert_allclose(ours, ref, atol=1e-5)
            else:  # ties (x exactly .5) may round either way; all others agree
                assert (ours == ref).mean() > 0.97


def test_cubic_is_interpolating_and_reproduces_a_ramp() -> None:
    from segvolpipe.preprocessing.resampling import resample_volume

    ramp = np.broadcast_to(np.arange(12, dtype=np.float32)[None, None, :], (4, 5, 12)).copy()
    up = resample_volume(ramp, (4, 5, 24), "cubic")
    expected = (np.arange(24) + 0.5) / 2 - 0.5
    np.testing.assert_allclose(up[0, 0, 3:-3], expected[3:-3], atol=1e-5)  # borders clamp
    np.testing.assert_allclose(resample_volume(ramp, (4, 5, 12), "cubic"), ramp)


def test_label_boxes_match_whole_volume_one_hot() -> None:
    """The per-label box shortcut gives the same answer as interpolating every one-hot map in full."""
    from segvolpipe.preprocessing.resampling import resample_volume

    rng = np.random.default_rng(3)
    lab = np.zeros((10, 30, 30), np.int16)
    for v in (1, 2, 3):
        z, y, x = rng.integers(1, 20, 3)
        lab[z % 8 : z % 8 + 3, y : y + 8, x : x + 6] = v
    for axis in (None, 0):
        for shape in [(25, 21, 40), (6, 30, 17)]:
            scores = np.stack([resample_volume((lab == v).astype(np.float32), shape, "linear", axis) for v in range(4)])
            full = np.argmax(scores, axis=0)
            np.testing.assert_array_equal(resample_label(lab, shape, axis=axis), full)
