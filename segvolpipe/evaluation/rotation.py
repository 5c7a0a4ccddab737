"""Rotation robustness (seed reports 000/001): rotate volumes in the world and compare on a common field of view.

The protocol: every volume is rotated 45° about the patient's longitudinal (superior–inferior) axis and
0.1 rad about the two other world axes, the image interpolated (cubic) and the reference nearest-neighbour;
predictions on the rotated images are scored against the rotated references, and ``rotate(predict(x))`` is
compared with ``predict(rotate(x))`` on the voxels both cover.

Conventions:

* World frame: RAS mm (nibabel's; axes R, A, S). Angles are ``(about S, about A, about R)`` in radians,
  right-handed about +S, +A and +R. The matrix acting on RAS column vectors is
  ``R = R_S(a_S) @ R_A(a_A) @ R_R(a_R)``: the tilt about R acts first, then the one about A, then the main
  rotation about the longitudinal axis, all about fixed world axes. Rotations are about fixed world axes,
  so the result does not depend on how the array is stored: use each array's own affine.
* Centre: the world position of the volume's centre voxel coordinate ``(n - 1) / 2``.
* Output grid: the input's spacing and axis directions (the affine's 3×3 part is kept), centred on the same
  world point. ``grow=True`` makes it the smallest grid holding every rotated voxel (whole field of view,
  nothing cut); ``grow=False`` keeps the input grid. The grid depends only on the input's shape and affine
  and the angles, so an image, its reference and an upright prediction of the same grid rotated with the same
  angles all land on one grid: ``rotate_label(predict(x))`` and ``predict(rotate_image(x))`` compare voxel by
  voxel, within :func:`valid_mask` (there is no need for :func:`resample_to` in that case).
* Voxels are cubes: a sample inside the footprint of an edge voxel takes its value, a sample outside the
  volume takes ``cval`` (scipy's ``grid-constant`` mode); images pad with their minimum (air), labels with 0.

CLI angle strings are parsed by :func:`parse_angles` (``"45,0.1,0.1"``: degrees about S, radians about A and
R, the seed protocol) and :func:`parse_sweep` (degrees about S).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from scipy.ndimage import affine_transform

from segvolpipe.errors import UserError
from segvolpipe.evaluation.metrics import dice_scores

Angles = tuple[float, float, float]
SEED_PROTOCOL_ANGLES: Angles = (math.radians(45.0), 0.1, 0.1)


def longitudinal_axis(affine: np.ndarray) -> int:
    """The array axis (0, 1 or 2) whose direction is closest to the patient's superior–inferior axis.

    Args:
        affine: 4×4 (or 3×3) voxel→world RAS affine; any orientation, permutation or obliquity.
    """
    lin = np.asarray(affine, dtype=np.float64)[:3, :3]
    cosines = np.abs(lin[2]) / np.linalg.norm(lin, axis=0)  # |component along world S| of each unit axis
    return int(np.argmax(cosines))


def rotation_matrix(angles: Sequence[float]) -> np.ndarray:
    """3×3 world-frame (RAS) rotation ``R_S(a_S) @ R_A(a_A) @ R_R(a_R)`` for ``angles = (a_S, a_A, a_R)`` rad."""
    if len(angles) != 3 or not all(math.isfinite(float(a)) for a in angles):
        raise ValueError(f"expected three finite angles in radians, got {tuple(angles)}")
    a_s, a_a, a_r = (float(a) for a in angles)
    return _about(2, a_s) @ _about(1, a_a) @ _about(0, a_r)


def _about(world_axis: int, theta: float) -> np.ndarray:
    """Right-handed rotation by ``theta`` about RAS world axis 0 (R), 1 (A) or 2 (S)."""
    i, j = ((1, 2), (2, 0), (0, 1))[world_axis]
    m = np.eye(3)
    m[i, i] = m[j, j] = math.cos(theta)
    m[i, j], m[j, i] = -math.sin(theta), math.sin(theta)
    return m


def rotated_grid(
    shape: Sequence[int], affine: np.ndarray, angles: Sequence[float], grow: bool = True
) -> tuple[tuple[int, int, int], np.ndarray]:
    """The output grid ``(shape, 4×4 affine)`` of :func:`rotate_volume` for a 3D grid and these angles."""
    affine = np.asarray(affine, dtype=np.float64)
    if not grow:
        return tuple(int(s) for s in shape), affine.copy()  # type: ignore[return-value]
    lin = affine[:3, :3]
    n = np.asarray(shape, dtype=np.float64)
    centre = (n - 1) / 2
    corners = np.array(list(itertools.product(*[(-0.5, s - 0.5) for s in n]))) - centre  # voxel footprints
    rel = np.linalg.solve(lin, rotation_matrix(angles) @ lin @ corners.T).T  # rotated, in index units
    new_shape = np.maximum(np.ceil(2 * np.abs(rel).max(axis=0) - 1e-6), 1).astype(int)
    new_affine = affine.copy()
    new_affine[:3, 3] = affine[:3, :3] @ centre + affine[:3, 3] - lin @ ((new_shape - 1) / 2)
    return tuple(int(s) for s in new_shape), new_affine  # type: ignore[return-value]


def rotate_volume(
    array: np.ndarray,
    affine: np.ndarray,
    angles: Sequence[float],
    order: int,
    cval: float | Sequence[float] = 0.0,
    grow: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate a volume about its centre in the world (mm, so anisotropic spacing is right).

    Args:
        array: [X0, X1, X2] or channels-first [C, X0, X1, X2], any orientation (its own ``affine``).
        affine: 4×4 voxel→world RAS affine of the spatial axes.
        angles: ``(about S, about A, about R)`` in radians (see the module docstring).
        order: Spline order: 3 (cubic) or 1 (linear) for images, 0 (nearest) for label maps.
        cval: Value outside the input; one per channel allowed.
        grow: Enlarge the grid to keep the whole rotated field of view (else keep the input grid).

    Returns:
        ``(rotated array [(C,) Y0, Y1, Y2], its 4×4 affine)``; same dtype for ``order == 0``, float otherwise.
    """
    shape, new_affine = rotated_grid(array.shape[-3:], affine, angles, grow)
    about_centre = _rotation_about(np.asarray(affine, dtype=np.float64), array.shape[-3:], angles)
    return _resample(array, affine, shape, new_affine, order, cval, world_inverse=about_centre), new_affine


def rotate_image(
    image: np.ndarray, affine: np.ndarray, angles: Sequence[float], order: int = 3, grow: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`rotate_volume` for an image [(C,) X0, X1, X2]: cubic, padded with each channel's minimum (air).

    Each channel is clipped to its input range, so cubic overshoot at sharp edges (body/air) invents no
    intensities the scan did not have.
    """
    channels = image if image.ndim == 4 else image[None]
    lows = [float(c.min()) if c.size else 0.0 for c in channels]
    highs = [float(c.max()) if c.size else 0.0 for c in channels]
    out, new_affine = rotate_volume(
        image, affine, angles, order=order, cval=lows if image.ndim == 4 else lows[0], grow=grow
    )
    for c, lo, hi in zip(out if image.ndim == 4 else out[None], lows, highs, strict=True):
        np.clip(c, lo, hi, out=c)
    return out, new_affine


def rotate_label(
    label: np.ndarray, affine: np.ndarray, angles: Sequence[float], grow: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`rotate_volume` for a label map [X0, X1, X2]: nearest neighbour, padded with 0, dtype kept."""
    return rotate_volume(label, affine, angles, order=0, cval=0, grow=grow)


def valid_mask(
    shape: Sequence[int], affine: np.ndarray, angles: Sequence[float], grow: bool = True
) -> np.ndarray:
    """bool mask on the rotated grid of the voxels that came from inside the original volume.

    The common field of view of ``rotate(predict(x))`` and ``predict(rotate(x))``: outside it one of them
    saw only padding.
    """
    ones = np.ones(tuple(int(s) for s in shape), dtype=np.uint8)
    return rotate_volume(ones, affine, angles, order=0, cval=0, grow=grow)[0].astype(bool)


def resample_to(
    array: np.ndarray,
    affine: np.ndarray,
    target_shape: Sequence[int],
    target_affine: np.ndarray,
    order: int,
    cval: float | Sequence[float] = 0.0,
) -> np.ndarray:
    """Bring a volume [(C,) X0, X1, X2] with ``affine`` onto another grid (no rotation of the content).

    Needed only when two volumes are not on one grid yet, e.g. a prediction written on some other grid;
    the rotated volumes of one input grid already share a grid (see the module docstring).
    """
    return _resample(array, affine, target_shape, target_affine, order, cval, world_inverse=np.eye(4))


def consistency_dice(
    a: np.ndarray, b: np.ndarray, mask: np.ndarray | None, values: Sequence[int]
) -> dict[int, float]:
    """Dice per class value between two label maps of one grid, counted only inside ``mask`` (bool).

    NaN for a class absent from both within the mask (the empty-reference policy of
    :mod:`segvolpipe.evaluation.metrics`).
    """
    if a.shape != b.shape or (mask is not None and mask.shape != a.shape):
        raise ValueError(
            f"shapes differ: {a.shape}, {b.shape}" + ("" if mask is None else f", mask {mask.shape}")
        )
    if mask is not None:
        a, b = a[mask], b[mask]
    return dice_scores(a, b, values)


def parse_angles(text: str) -> Angles:
    """Parse a rotation such as ``"45,0.1,0.1"`` into radians ``(about S, about A, about R)``.

    Convention (the seed protocol, the CLI default ``--angles 45,0.1,0.1``): the first value, the rotation
    about the longitudinal axis, is in **degrees**; the other two, the small tilts about A and R, are in
    **radians**. A value may carry an explicit unit that overrides its position: ``45deg``, ``0.7854rad``,
    ``5.73deg``. One value alone is a rotation about the longitudinal axis only (``"90"``).

    Raises:
        UserError: not one or three numbers, a malformed number, a non-finite value.
    """
    items = [t.strip() for t in str(text).split(",")]
    if len(items) not in (1, 3) or not all(items):
        raise UserError(
            f"--angles {text!r}: expected 'S_DEG,A_RAD,R_RAD' (e.g. 45,0.1,0.1) or one angle in degrees about "
            "the longitudinal axis"
        )
    defaults = ("deg", "rad", "rad")
    values = [_angle(item, unit, text) for item, unit in zip(items, defaults, strict=False)]
    return (values + [0.0, 0.0])[:3]  # type: ignore[return-value]


def _angle(item: str, default_unit: str, text: str) -> float:
    unit = default_unit
    for suffix in ("deg", "°", "rad"):
        if item.lower().endswith(suffix):
            item, unit = item[: -len(suffix)].strip(), "rad" if suffix == "rad" else "deg"
            break
    try:
        value = float(item)
    except ValueError:
        raise UserError(f"--angles {text!r}: {item!r} is not a number") from None
    if not math.isfinite(value):
        raise UserError(f"--angles {text!r}: angles must be finite")
    return math.radians(value) if unit == "deg" else value


def parse_sweep(text: str) -> list[float]:
    """Parse a sweep of rotations about the longitudinal axis, ``"0,15,30,45,60,90"``, into degrees.

    Raises:
        UserError: empty, a malformed or non-finite number.
    """
    items = [t.strip() for t in str(text).split(",")]
    if not all(items):
        raise UserError(
            f"--sweep {text!r}: expected comma-separated angles in degrees, e.g. 0,15,30,45,60,90"
        )
    out = []
    for item in items:
        try:
            value = float(item.removesuffix("deg").removesuffix("°").strip())
        except ValueError:
            raise UserError(f"--sweep {text!r}: {item!r} is not a number of degrees") from None
        if not math.isfinite(value):
            raise UserError(f"--sweep {text!r}: angles must be finite")
        out.append(value)
    return out


def _rotation_about(affine: np.ndarray, shape: Sequence[int], angles: Sequence[float]) -> np.ndarray:
    """4×4 world map from a rotated position back to where it came from: ``c + Rᵀ (w - c)``."""
    centre = affine @ np.array([*((np.asarray(shape, dtype=np.float64) - 1) / 2), 1.0])
    inverse = np.eye(4)
    rot_t = rotation_matrix(angles).T
    inverse[:3, :3] = rot_t
    inverse[:3, 3] = centre[:3] - rot_t @ centre[:3]
    return inverse


def _resample(
    array: np.ndarray,
    affine: np.ndarray,
    shape: Sequence[int],
    target_affine: np.ndarray,
    order: int,
    cval: float | Sequence[float],
    world_inverse: np.ndarray,
) -> np.ndarray:
    """Sample ``array`` at ``affine⁻¹ · world_inverse · target_affine · j`` for every target voxel ``j``."""
    if array.ndim not in (3, 4):
        raise ValueError(f"expected [X0, X1, X2] or [C, X0, X1, X2], got shape {array.shape}")
    if order not in (0, 1, 2, 3, 4, 5):
        raise ValueError(f"spline order must be 0..5, got {order}")
    index_map = np.linalg.solve(
        np.asarray(affine, dtype=np.float64), world_inverse @ np.asarray(target_affine)
    )
    if order > 0 and not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
    channels = array if array.ndim == 4 else array[None]
    cvals = list(cval) if isinstance(cval, Sequence) else [cval] * len(channels)
    if len(cvals) != len(channels):
        raise ValueError(f"{len(cvals)} cval(s) for {len(channels)} channel(s)")
    out = np.stack(
        [
            affine_transform(
                c,
                index_map[:3, :3],
                offset=index_map[:3, 3],
                output_shape=tuple(int(s) for s in shape),
                order=order,
                mode="grid-constant",
                cval=float(v),
                prefilter=order > 1,
            )
            for c, v in zip(channels, cvals, strict=True)
        ]
    )
    return out if array.ndim == 4 else out[0]
