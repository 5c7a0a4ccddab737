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
