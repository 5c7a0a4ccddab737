"""Rotations in the world: longitudinal axis for any orientation, the analytic ellipsoid, the enlarged grid,
independence from the storage orientation, the common field of view, consistency Dice and angle parsing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from segvolpipe.errors import UserError
from segvolpipe.evaluation.rotation import (
    SEED_PROTOCOL_ANGLES,
    consistency_dice,
    longitudinal_axis,
    parse_angles,
    parse_sweep,
    resample_to,
    rotate_image,
    rotate_label,
    rotate_volume,
    rotated_grid,
    rotation_matrix,
    valid_mask,
)
from segvolpipe.io.nifti import Geometry

SHAPE = (14, 20, 18)  # canonical (z, y, x)
SPACING = (2.0, 1.0, 1.5)  # anisotropic, mm


def canonical_affine(
    shape: tuple[int, int, int] = SHAPE, spacing: tuple[float, float, float] = SPACING
) -> np.ndarray:
    return np.asarray(Geometry.from_canonical_spec(shape, spacing, origin=(-7.0, 4.0, 11.0)).canonical_affine)


def world_coords(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """[..., 3] RAS mm of every voxel centre."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(np.float64)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def ellipsoid(world: np.ndarray, centre: np.ndarray, semi_axes: np.ndarray) -> np.ndarray:
    return (((world - centre) / semi_axes) ** 2).sum(-1) < 1


@pytest.mark.parametrize(
    ("axcodes", "expected"),
    [
        (("R", "A", "S"), 2),
        (("L", "P", "S"), 2),
        (("L", "A", "S"), 2),
        (("A", "S", "R"), 1),
        (("P", "I", "R"), 1),
        (("S", "R", "A"), 0),
        (("I", "P", "L"), 0),
    ],
)
def test_longitudinal_axis_any_orientation(axcodes: tuple[str, str, str], expected: int) -> None:
    geometry = Geometry.from_canonical_spec((6, 7, 8), (3.0, 0.8, 0.9), axcodes)
    assert longitudinal_axis(np.asarray(geometry.affine)) == expected
    assert longitudinal_axis(np.asarray(geometry.canonical_affine)) == 0  # canonical grids are (S, A, R)


def test_longitudinal_axis_oblique() -> None:
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    tilted = affine.copy()
    tilted[:3, :3] = (
        rotation_matrix((0.0, 0.0, math.radians(30))) @ affine[:3, :3]
    )  # 30° about R: still axial
    assert longitudinal_axis(tilted) == 2
    tilted[:3, :3] = rotation_matrix((0.0, 0.0, math.radians(60))) @ affine[:3, :3]  # 60°: axis 1 is nearer S
    assert longitudinal_axis(tilted) == 1


def test_rotation_matrix_convention() -> None:
    r = rotation_matrix((0.3, -0.2, 0.1))
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)
    parts = rotation_matrix((0.3, 0, 0)) @ rotation_matrix((0, -0.2, 0)) @ rotation_matrix((0, 0, 0.1))
    np.testing.assert_allclose(r, parts, atol=1e-12)  # R_S @ R_A @ R_R: the tilt about R acts first
    np.testing.assert_allclose(
        rotation_matrix((math.pi / 2, 0, 0)) @ [1, 0, 0], [0, 1, 0], atol=1e-12
    )  # R → A
    np.testing.assert_allclose(
        rotation_matrix((0, 0, math.pi / 2)) @ [0, 1, 0], [0, 0, 1], atol=1e-12
    )  # A → S
    with pytest.raises(ValueError):
        rotation_matrix((0.1, 0.2))


def test_zero_rotation_is_the_identity() -> None:
    rng = np.random.default_rng(0)
    affine = canonical_affine()
    image = rng.normal(size=SHAPE).astype(np.float32)
    label = rng.integers(0, 4, size=SHAPE).astype(np.int16)
    out, new_affine = rotate_image(image, affine, (0.0, 0.0, 0.0))
    np.testing.assert_allclose(out, image, atol=1e-4)
    np.testing.assert_allclose(new_affine, affine, atol=1e-9)
    out, _ = rotate_label(label, affine, (0.0, 0.0, 0.0))
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, label)
    assert valid_mask(SHAPE, affine, (0.0, 0.0, 0.0)).all()


def test_rotated_ellipsoid_matches_the_analytic_one() -> None:
    affine = canonical_affine()
    centre_voxel = affine @ [*((np.array(SHAPE) - 1) / 2), 1.0]
    centre = centre_voxel[:3] + np.array([3.0, -2.0, 1.0])  # RAS mm, off the rotation centre
    semi = np.array([9.0, 6.0, 10.0])  # along R, A, S
    label = ellipsoid(world_coords(SHAPE, affine), centre, semi).astype(np.uint8)
    angles = (0.6, 0.2, -0.3)
    out, new_affine = rotate_label(label, affine, angles)
    # a point w of the output holds what was at c + Rᵀ (w - c) before the rotation
    rot = rotation_matrix(angles)
    back = (world_coords(out.shape, new_affine) - centre_voxel[:3]) @ rot + centre_voxel[:3]
    tol = max(SPACING)  # nearest neighbour may differ within one voxel of the boundary
    inner, outer = ellipsoid(back, centre, semi - tol), ellipsoid(back, centre, semi + tol)
    assert inner.sum() > 200
    assert not (inner & (out == 0)).any() and not (~outer & (out == 1)).any()
    exact = ellipsoid(back, centre, semi)
    assert np.mean(exact != out.astype(bool)) < 0.02


def test_grow_keeps_every_foreground_voxel() -> None:
    affine = canonical_affine()
    label = np.zeros(SHAPE, np.int16)
    label[2:12, 0:5, 13:18] = 2  # in a corner of the in-plane field of view
    angles = SEED_PROTOCOL_ANGLES
    out, new_affine = rotate_label(label, affine, angles)
    assert all(a >= b for a, b in zip(out.shape, SHAPE, strict=True)) and out.shape != SHAPE
    assert np.count_nonzero(out) == pytest.approx(np.count_nonzero(label), rel=0.03)
    assert set(np.unique(out)) == {0, 2}
    cut, cut_affine = rotate_label(label, affine, angles, grow=False)
    assert cut.shape == SHAPE and np.array_equal(cut_affine, affine)
    assert np.count_nonzero(cut) < 0.9 * np.count_nonzero(label)  # the fixed grid loses the corner
    # the world centroid stays where the rotation puts it
    centre = (affine @ [*((np.array(SHAPE) - 1) / 2), 1.0])[:3]
    before = world_coords(SHAPE, affine)[label > 0].mean(0)
    after = world_coords(out.shape, new_affine)[out > 0].mean(0)
    np.testing.assert_allclose(after, rotation_matrix(angles) @ (before - centre) + centre, atol=0.5)


def test_quarter_turn_of_an_anisotropic_volume() -> None:
    shape, spacing = (10, 12, 10), (3.0, 1.0, 2.0)  # in-plane field of view 12 mm (A) × 20 mm (R)
    affine = canonical_affine(shape, spacing)
    label = np.zeros(shape, np.int16)
    label[3:7, 5:7, 8:10] = 1  # 4 × 2 × 2 voxels, 8 mm to the right of the centre
    out, new_affine = rotate_label(label, affine, (math.pi / 2, 0.0, 0.0))
    assert out.shape == (10, 20, 6)  # the A and R extents swap in mm: 20 mm / 1 mm, 12 mm / 2 mm
    np.testing.assert_allclose(new_affine[:3, :3], affine[:3, :3])
    centre = (affine @ [*((np.array(shape) - 1) / 2), 1.0])[:3]
    before = world_coords(shape, affine)[label > 0].mean(0) - centre
    after = world_coords(out.shape, new_affine)[out > 0].mean(0) - centre
    assert before[0] > 7 and abs(before[1]) < 1  # to the right (R) of the centre ...
    np.testing.assert_allclose(after, [-before[1], before[0], before[2]], atol=1.01)  # ... now anterior (A)
    # 2 voxels of 2 mm along R become 4 of 1 mm along A, 2 of 1 mm along A become 1 of 2 mm along R:
    # the volume (and, same voxel size, the count) is kept, up to nearest-neighbour ties at voxel faces
    assert np.count_nonzero(out) == pytest.approx(np.count_nonzero(label), rel=0.25)


@pytest.mark.parametrize("axcodes", [("L", "P", "S"), ("A", "S", "R"), ("P", "I", "L")])
def test_rotation_does_not_depend_on_the_storage_orientation(axcodes: tuple[str, str, str]) -> None:
    rng = np.random.default_rng(1)
    label = np.zeros(SHAPE, np.int16)
    label[3:11, 4:15, 5:13] = rng.integers(0, 3, size=(8, 11, 8))
    canonical = canonical_affine()
    ras_corner = canonical[:3, 3]
    probe = Geometry.from_canonical_spec(SHAPE, SPACING, axcodes)
    corner = np.zeros(SHAPE, np.int16)
    corner[0, 0, 0] = 1
    origin = ras_corner - np.asarray(probe.affine)[:3, :3] @ np.argwhere(probe.from_canonical(corner))[0]
    stored = Geometry.from_canonical_spec(SHAPE, SPACING, axcodes, origin=tuple(origin))
    np.testing.assert_allclose(stored.canonical_affine, canonical, atol=1e-9)

    expected, expected_affine = rotate_label(label, canonical, SEED_PROTOCOL_ANGLES)
    out, out_affine = rotate_label(
        stored.from_canonical(label), np.asarray(stored.affine), SEED_PROTOCOL_ANGLES
    )
    back = Geometry.from_affine(out_affine, out.shape)
    np.testing.assert_allclose(back.canonical_affine, expected_affine, atol=1e-6)
    assert np.mean(back.to_canonical(out) != expected) < 0.002  # nearest-neighbour ties only


def test_multichannel_image_rotates_each_channel_and_pads_with_air() -> None:
    rng = np.random.default_rng(2)
    affine = canonical_affine()
    image = np.stack([rng.normal(size=SHAPE) - 1000, rng.uniform(0, 1, size=SHAPE)]).astype(np.float32)
    out, new_affine = rotate_image(image, affine, SEED_PROTOCOL_ANGLES, order=1)
    assert out.shape[0] == 2
    for c in range(2):
        single, single_affine = rotate_volume(
            image[c], affine, SEED_PROTOCOL_ANGLES, order=1, cval=float(image[c].min())
        )
        np.testing.assert_allclose(out[c], single, atol=1e-5)
        np.testing.assert_allclose(single_affine, new_affine)
        assert out[c][0, 0, 0] == pytest.approx(image[c].min())  # a corner of the enlarged grid is padding
    cubic, _ = rotate_image(
        image, affine, SEED_PROTOCOL_ANGLES
    )  # cubic overshoot is clipped to the input range
    assert all(cubic[c].min() >= image[c].min() and cubic[c].max() <= image[c].max() for c in range(2))
    with pytest.raises(ValueError, match="cval"):
        rotate_volume(image, affine, SEED_PROTOCOL_ANGLES, order=1, cval=[0.0])


def test_valid_mask_is_the_rotated_field_of_view() -> None:
    affine = canonical_affine()
    mask = valid_mask(SHAPE, affine, SEED_PROTOCOL_ANGLES)
    shape, _ = rotated_grid(SHAPE, affine, SEED_PROTOCOL_ANGLES)
    assert mask.shape == shape and mask.dtype == bool
    assert mask.sum() == pytest.approx(np.prod(SHAPE), rel=0.02)  # a rotation keeps the volume
    assert not mask[0, 0, 0] and mask[tuple(s // 2 for s in shape)]
    ones, _ = rotate_label(np.ones(SHAPE, np.int16), affine, SEED_PROTOCOL_ANGLES)
    np.testing.assert_array_equal(mask, ones == 1)


def test_rotated_prediction_and_rotated_grid_agree_without_resampling() -> None:
    """rotate(predict(x)) lands on predict(rotate(x))'s grid; resample_to onto that grid is then a no-op."""
    affine = canonical_affine()
    label = np.zeros(SHAPE, np.int16)
    label[4:10, 5:15, 4:14] = 1
    rotated, new_affine = rotate_label(label, affine, SEED_PROTOCOL_ANGLES)
    image_rot, image_affine = rotate_image(label.astype(np.float32), affine, SEED_PROTOCOL_ANGLES)
    assert image_rot.shape == rotated.shape and np.array_equal(image_affine, new_affine)
    np.testing.assert_array_equal(
        resample_to(rotated, new_affine, rotated.shape, new_affine, order=0), rotated
    )
    # resample_to moves content between grids: a target grid shifted by two voxels along axis 1
    shifted = affine.copy()
    shifted[:3, 3] += 2 * affine[:3, 1]
    moved = resample_to(label, affine, SHAPE, shifted, order=0)
    np.testing.assert_array_equal(moved[:, :-2], label[:, 2:])
    assert not moved[:, -2:].any()


def test_consistency_dice() -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 3, size=(6, 7, 8)).astype(np.int16)
    scores = consistency_dice(a, a.copy(), None, [1, 2, 5])
    assert scores[1] == scores[2] == 1.0 and math.isnan(scores[5])
    b = a.copy()
    b[:, :, :4] = 0
    mask = np.zeros(a.shape, bool)
    mask[:, :, 4:] = True
    assert consistency_dice(a, b, mask, [1, 2]) == {1: 1.0, 2: 1.0}  # differences outside the mask ignored
    assert consistency_dice(a, b, None, [1])[1] < 0.8
    with pytest.raises(ValueError):
        consistency_dice(a, b[:-1], None, [1])


def test_parse_angles() -> None:
    assert parse_angles("45,0.1,0.1") == pytest.approx((math.pi / 4, 0.1, 0.1))
    assert parse_angles("45,0.1,0.1") == pytest.approx(SEED_PROTOCOL_ANGLES)
    assert parse_angles(" 90 ") == pytest.approx((math.pi / 2, 0.0, 0.0))
    assert parse_angles("0.7854rad, 5.73deg, -0.1") == pytest.approx((0.7854, math.radians(5.73), -0.1))
    for bad in ("", "45,0.1", "a,0.1,0.1", "45,,0.1", "nan,0,0", "45,0.1,0.1,0"):
        with pytest.raises(UserError) as info:
            parse_angles(bad)
        assert "--angles" in info.value.line() and "\n" not in info.value.line()


def test_parse_sweep() -> None:
    assert parse_sweep("0,15,30,45,60,90") == [0.0, 15.0, 30.0, 45.0, 60.0, 90.0]
    assert parse_sweep("-10, 22.5deg") == [-10.0, 22.5]
    for bad in ("", "0,,15", "0,x", "inf"):
        with pytest.raises(UserError, match="--sweep"):
            parse_sweep(bad)
