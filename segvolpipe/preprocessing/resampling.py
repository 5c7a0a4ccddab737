"""Resampling between voxel grids that span the same physical box (voxel edges aligned).

Separable: each axis is resampled by a sparse (n_out × n_in) weight matrix, so the cost is a few
multiply-adds per output voxel and axis, whatever the volume size. Output voxel j of an axis samples the
input at ``(j + 0.5) · n_in / n_out − 0.5`` (edges aligned, as ``scipy.ndimage.zoom(grid_mode=True)``),
indices clamped at the borders.

Images: cubic convolution (Keys, a = −0.5; interpolating, like a cubic spline). Labels: each label's
one-hot map interpolated linearly inside its own bounding box, then the arg-max (background's score is
one minus the others'), so no label is ever invented. For anisotropic data (coarsest axis > 3× the
finest) the coarse axis is resampled by nearest neighbour, as nnU-Net does.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy import sparse

ANISOTROPY_THRESHOLD = 3.0
CUBIC_A = -0.5


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


def _cubic(t: np.ndarray) -> np.ndarray:
    a, t = CUBIC_A, np.abs(t)
    return np.where(
        t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1, np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0)
    )


@lru_cache(maxsize=256)
def axis_weights(n_in: int, n_out: int, kind: str, start: int = 0, stop: int | None = None) -> sparse.csr_matrix:
    """Sparse weights mapping ``n_in`` samples to output samples ``start:stop`` of an ``n_out`` grid.

    Args:
        kind: ``"cubic"``, ``"linear"`` or ``"nearest"``.
    """
    stop = n_out if stop is None else stop
    j = np.arange(start, stop)
    x = (j + 0.5) * (n_in / n_out) - 0.5
    if kind == "nearest":
        cols = np.clip(np.floor(x + 0.5).astype(np.int64), 0, n_in - 1)[:, None]
        vals = np.ones_like(cols, dtype=np.float32)
    else:
        taps = 4 if kind == "cubic" else 2
        base = np.floor(x).astype(np.int64) - (1 if kind == "cubic" else 0)
        idx = base[:, None] + np.arange(taps)[None, :]
        dist = x[:, None] - idx
        vals = (_cubic(dist) if kind == "cubic" else np.maximum(0.0, 1 - np.abs(dist))).astype(np.float32)
        cols = np.clip(idx, 0, n_in - 1)
    rows = np.repeat(np.arange(stop - start), cols.shape[1])
    return sparse.csr_matrix((vals.ravel(), (rows, cols.ravel())), shape=(stop - start, n_in), dtype=np.float32)


def _apply_axis(volume: np.ndarray, weights: sparse.csr_matrix, axis: int) -> np.ndarray:
    moved = np.moveaxis(volume, axis, 0)
    flat = np.ascontiguousarray(moved).reshape(moved.shape[0], -1)
    out = np.asarray(weights @ flat, dtype=np.float32).reshape((weights.shape[0], *moved.shape[1:]))
    return np.moveaxis(out, 0, axis)


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Input index of each output voxel for nearest-neighbour resampling (same rule as the weights)."""
    return axis_weights(n_in, n_out, "nearest").indices


def _kinds(kind: str, axis: int | None) -> list[str]:
    return ["nearest" if a == axis else kind for a in range(3)]


def resample_volume(
    volume: np.ndarray,
    new_shape: Sequence[int],
    kind: str,
    axis: int | None = None,
) -> np.ndarray:
    """Resample one 3D volume to ``new_shape``; nearest along ``axis`` when given.

    Nearest-neighbour axes are gathered (``np.take``; the dtype is kept), the others go through sparse
    weights (float32). Axes that shrink are done first and axes that grow last, so every pass touches as
    few voxels as possible.

    Args:
        volume: ``[Z, Y, X]``.
        new_shape: Output grid shape.
        kind: ``"cubic"``, ``"linear"`` or ``"nearest"``.
        axis: Coarse axis resampled by nearest neighbour, or None.
    """
    out = volume
    kinds = _kinds(kind, axis)
    for a in sorted(range(3), key=lambda a: new_shape[a] / volume.shape[a]):
        n_in, n_out = volume.shape[a], int(new_shape[a])
        if n_in == n_out:
            continue
        if kinds[a] == "nearest":
            out = np.take(out, nearest_indices(n_in, n_out), axis=a)
        else:
            out = _apply_axis(out.astype(np.float32, copy=False), axis_weights(n_in, n_out, kinds[a]), a)
    return out if kind == "nearest" else out.astype(np.float32, copy=False)


def resample_image(image: np.ndarray, new_shape: Sequence[int], axis: int | None = None, order: int = 3) -> np.ndarray:
    """Resample every channel of ``image`` [C, Z, Y, X] to ``new_shape`` (float32; order 3 cubic, 1 linear, 0 nearest)."""
    new_shape = tuple(int(n) for n in new_shape)
    if tuple(image.shape[1:]) == new_shape:
        return image.astype(np.float32, copy=True)
    kind = {3: "cubic", 1: "linear", 0: "nearest"}[order]
    return np.stack([resample_volume(c, new_shape, kind, axis) for c in image])


def resample_soft(maps: np.ndarray, new_shape: Sequence[int], axis: int | None = None) -> np.ndarray:
    """Resample soft maps (logits, probabilities) [C, Z, Y, X] linearly (nearest along a coarse axis)."""
    return resample_image(maps, new_shape, axis=axis, order=1)


def _output_box(box: Sequence[tuple[int, int]], shape: Sequence[int], new_shape: Sequence[int]) -> list[tuple[int, int]]:
    """Output voxels whose linear interpolation can touch the input box (one voxel of margin)."""
    out = []
    for (a, b), n_in, n_out in zip(box, shape, new_shape, strict=True):
        f = n_out / n_in
        out.append((max(0, int(np.floor((a - 1) * f)) - 1), min(n_out, int(np.ceil((b + 1) * f)) + 1)))
    return out


def _box_weights(
    box: Sequence[tuple[int, int]], shape: Sequence[int], new_shape: Sequence[int], kinds: Sequence[str]
) -> tuple[tuple[slice, ...], tuple[slice, ...], list[sparse.csr_matrix | None]]:
    """What resampling (linear or nearest per axis) needs to produce only the outputs that can read ``box``.

    Returns:
        ``(region, crop, weights)``: the output voxels whose stencil can touch the input ``box`` (every
        other output reads inputs outside it only), the input voxels those outputs read, and per axis the
        weights restricted to both (None where the axis keeps its size).
    """
    region, crop, mats = [], [], []
    for a, (start, stop) in enumerate(_output_box(box, shape, new_shape)):
        region.append(slice(start, stop))
        if shape[a] == new_shape[a]:
            crop.append(slice(start, stop))
            mats.append(None)
            continue
        w = axis_weights(int(shape[a]), int(new_shape[a]), kinds[a])[start:stop]  # the whole axis's cached weights
        c0, c1 = int(w.indices.min()), int(w.indices.max()) + 1
        crop.append(slice(c0, c1))
        mats.append(w[:, c0:c1].tocsr())
    return tuple(region), tuple(crop), mats


def resample_soft_box(
    volume: np.ndarray, new_shape: Sequence[int], box: Sequence[tuple[int, int]], axis: int | None = None
) -> tuple[tuple[slice, ...], np.ndarray]:
    """:func:`resample_soft` of one map [Z, Y, X], computed only where the output can read the input ``box``.

    The result equals the whole resampled map inside the returned region; every output voxel outside it
    interpolates input voxels outside ``box`` only (so it is below a floor when every voxel at or above that
    floor lies in ``box``: linear weights are convex).

    Returns:
        ``(region, values)``: slices of the ``new_shape`` grid and float32 values of that region.
    """
    new_shape = tuple(int(n) for n in new_shape)
    region, crop, mats = _box_weights(box, volume.shape, new_shape, _kinds("linear", axis))
    out = volume[crop].astype(np.float32)
    for a in sorted(range(3), key=lambda a: new_shape[a] / volume.shape[a]):
        if mats[a] is not None:
            out = _apply_axis(out, mats[a], a)
    return region, out


def resample_label(label: np.ndarray, new_shape: Sequence[int], axis: int | None = None, order: int = 1) -> np.ndarray:
    """Resample a label map [Z, Y, X] to ``new_shape`` without inventing labels.

    Each foreground label's one-hot map is interpolated linearly (``order`` 1; 0 is nearest everywhere)
    inside its bounding box; a voxel takes the foreground label with the largest score when that score
    beats background's (one minus the sum of the foreground scores). Along a coarse ``axis`` labels are
    gathered by nearest neighbour, which commutes with the one-hot arg-max, so it is done on the integer
    map: before the in-plane work when that axis shrinks, after it when it grows.
    """
    new_shape = tuple(int(n) for n in new_shape)
    if tuple(label.shape) == new_shape:
        return label.copy()
    if order == 0:
        return resample_volume(label, new_shape, "nearest")
    nearest_axes = [] if axis is None else [axis]
    pre = [a for a in nearest_axes if new_shape[a] < label.shape[a]]
    post = [a for a in nearest_axes if new_shape[a] >= label.shape[a]]
    for a in pre:
        label = np.take(label, nearest_indices(label.shape[a], new_shape[a]), axis=a)
    middle = tuple(label.shape[a] if a in post else new_shape[a] for a in range(3))
    out = _linear_one_hot(label, middle) if middle != tuple(label.shape) else label.copy()
    for a in post:
        out = np.take(out, nearest_indices(out.shape[a], new_shape[a]), axis=a)
    return out


def _linear_one_hot(label: np.ndarray, new_shape: tuple[int, int, int]) -> np.ndarray:
    """Per-label linear interpolation of the one-hot maps inside each label's box, then the arg-max."""
    from scipy import ndimage

    best = np.zeros(new_shape, dtype=np.float32)
    total = np.zeros(new_shape, dtype=np.float32)
    out = np.zeros(new_shape, dtype=label.dtype)
    kinds = _kinds("linear", None)
    for value, sl in enumerate(ndimage.find_objects(label), start=1):  # labels are validated non-negative
        if sl is None:
            continue
        region, crop, mats = _box_weights([(s.start, s.stop) for s in sl], label.shape, new_shape, kinds)
        score = (label[crop] == value).astype(np.float32)
        for a, m in enumerate(mats):
            if m is not None:
                score = _apply_axis(score, m, a)
        total[region] += score
        better = score > best[region]
        out[region][better] = value
        best[region][better] = score[better]
    out[best <= 1.0 - total] = 0
    return out
