"""Resampling between voxel grids that span the same physical box (voxel edges aligned).

Images: cubic spline. Labels: each label's one-hot map linearly interpolated, then the arg-max, so no
label is ever invented. For anisotropic data (coarsest axis > 3× the finest) the coarse axis is
resampled by nearest neighbour after the in-plane interpolation, as nnU-Net does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

ANISOTROPY_THRESHOLD = 3.0


def anisotropic_axis(*spacings: Sequence[float], threshold: float = ANISOTROPY_THRESHOLD) -> int | None:
    """The coarse axis when any of ``spacings`` has max/min > ``threshold``, else None."""
    for spacing in spacings:
        s = np.asarray(spacing, dtype=np.float64)
        if s.max() / s.min() > threshold:
            return int(np.argmax(s))
    return None


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]) -> tuple[int, ...]:
    """Shape of the grid with ``target_spacing`` over the same physical extent (at least 1 per axis)."""
    return tuple(
        max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target_spacing, strict=True)
    )


def _zoom(volume: np.ndarray, new_shape: Sequence[int], order: int, axis: int | None, coarse_order: int) -> np.ndarray:
    """Zoom one 3D volume to ``new_shape``; along ``axis`` (if given) use ``coarse_order``."""
    old = np.asarray(volume.shape)
    factors = np.asarray(new_shape) / old
    if np.all(factors == 1):
        return volume.copy()
    if axis is None or order == coarse_order:
        return ndimage.zoom(volume, factors, order=order, mode="nearest", grid_mode=True)
    inplane = factors.copy()
    inplane[axis] = 1.0
    out = volume
    if not np.all(inplane == 1):
        out = ndimage.zoom(out, inplane, order=order, mode="nearest", grid_mode=True)
    if factors[axis] != 1:
        along = np.ones(3)
        along[axis] = factors[axis]
        out = ndimage.zoom(out, along, order=coarse_order, mode="nearest", grid_mode=True)
    return out


def resample_image(
    image: np.ndarray, new_shape: Sequence[int], axis: int | None = None, order: int = 3
) -> np.ndarray:
    """Resample every channel of ``image`` [C, Z, Y, X] to ``new_shape`` (float32)."""
    new_shape = tuple(int(n) for n in new_shape)
    if tuple(image.shape[1:]) == new_shape:
        return image.astype(np.float32, copy=True)
    return np.stack([_zoom(c.astype(np.float32, copy=False), new_shape, order, axis, 0) for c in image])


def resample_soft(maps: np.ndarray, new_shape: Sequence[int], axis: int | None = None) -> np.ndarray:
    """Resample soft maps (logits, probabilities) [C, Z, Y, X] linearly (nearest along a coarse axis)."""
    return resample_image(maps, new_shape, axis=axis, order=1)


def resample_label(
    label: np.ndarray, new_shape: Sequence[int], axis: int | None = None, order: int = 1
) -> np.ndarray:
    """Resample a label map [Z, Y, X] to ``new_shape`` without inventing labels.

    Each label's one-hot map is interpolated (``order``; nearest along a coarse ``axis``) and each voxel
    takes the label with the largest value, tracked as a running maximum so memory holds two maps.
    """
    new_shape = tuple(int(n) for n in new_shape)
    if tuple(label.shape) == new_shape:
        return label.copy()
    values = np.unique(label)
    if values.size == 1:
        return np.full(new_shape, values[0], dtype=label.dtype)
    best = np.full(new_shape, -1.0, dtype=np.float32)
    out = np.zeros(new_shape, dtype=label.dtype)
    for v in values:
        score = _zoom((label == v).astype(np.float32), new_shape, order, axis, 0)
        better = score > best
        out[better] = v
        best[better] = score[better]
    return out
