"""Geometric building blocks of the phantoms: smooth random fields, a warped body frame, primitives.

Shapes are evaluated directly at *warped* coordinates (the identity grid plus a smooth displacement
field), which deforms the anatomy exactly as warping a label map with ``map_coordinates(order=0)``
would, without resampling anything. Each primitive is evaluated only inside its bounding box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def gaussian_basis(n: int, n_ctrl: int) -> np.ndarray:
    """Interpolation weights from ``n_ctrl`` evenly spread control points to ``n`` samples.

    Returns:
        float32 array ``[n, n_ctrl]``: Gaussian weights (width = control spacing), rows summing to 1.
    """
    pos = np.linspace(0.0, 1.0, n, dtype=np.float64)[:, None]
    ctrl = np.linspace(-0.15, 1.15, n_ctrl, dtype=np.float64)[None, :]
    width = 1.3 / max(n_ctrl - 1, 1)
    weights = np.exp(-0.5 * ((pos - ctrl) / width) ** 2)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def smooth_field(shape: Sequence[int], n_ctrl: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed white noise, built separably from a coarse grid of random control values.

    Equivalent to low-pass filtering white noise with a Gaussian of about one control spacing, at a
    fraction of the cost (three small matrix products).

    Args:
        shape: Output shape ``(Z, Y, X)``.
        n_ctrl: Control points per axis ``(z, y, x)``; more points give finer detail.
        rng: Random generator.

    Returns:
        float32 array ``[Z, Y, X]`` with mean ~0 and standard deviation 1.
    """
    nz, ny, nx = (int(s) for s in shape)
    cz, cy, cx = (int(c) for c in n_ctrl)
    ctrl = rng.standard_normal((cz, cy, cx)).astype(np.float32)
    bz, by, bx = gaussian_basis(nz, cz), gaussian_basis(ny, cy), gaussian_basis(nx, cx)
    field = (bz @ ctrl.reshape(cz, cy * cx)).reshape(nz, cy, cx)
    field = np.matmul(by, field)  # [nz, ny, cx]
    field = field @ bx.T  # [nz, ny, nx]
    field -= field.mean()
    std = float(field.std())
    return field / std if std > 0 else field


@dataclass
class Frame:
    """Body-relative coordinates of every voxel of the canonical grid, after a smooth deformation.

    ``u`` points to the patient's right and ``v`` anteriorly, both in units of the abdominal cavity's
    half-width (so circles stay circles); ``w`` runs from -1 (first, inferior slice) to +1 (last,
    superior slice). Arrays are float32 ``[Z, Y, X]``.
    """

    u: np.ndarray
    v: np.ndarray
    w: np.ndarray
    center_x: float
    center_y: float
    scale: float  # voxels per u/v unit (largest over z)
    pad: int  # voxels added to every bounding box to cover the deformation

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.u.shape  # type: ignore[return-value]

    def box(
        self, u: tuple[float, float], v: tuple[float, float], w: tuple[float, float] = (-2.0, 2.0)
    ) -> tuple[slice, slice, slice]:
        """Voxel slices ``(z, y, x)`` covering the body-relative box ``u × v × w`` (plus :attr:`pad`)."""
        nz, ny, nx = self.shape
        hz = (nz - 1) / 2.0

        def span(lo: float, hi: float, center: float, scale: float, n: int) -> slice:
            a = int(np.floor(center + lo * scale)) - self.pad
            b = int(np.ceil(center + hi * scale)) + self.pad + 1
            return slice(min(max(a, 0), n), min(max(b, 0), n))

        return (
            span(w[0], w[1], hz, hz, nz),
            span(v[0], v[1], self.center_y, self.scale, ny),
            span(u[0], u[1], self.center_x, self.scale, nx),
        )


def make_frame(
    shape: Sequence[int],
    center_xy: tuple[float, float],
    half_width: float,
    z_scale: np.ndarray,
    displacement: np.ndarray,
) -> Frame:
    """Warped body-relative coordinates.

    Args:
        shape: Canonical shape ``(Z, Y, X)``.
        center_xy: Cavity centre ``(x, y)`` in voxels.
        half_width: Cavity half-width in voxels at ``z_scale == 1``.
        z_scale: float ``[Z]`` per-slice scale of the body cross-section.
        displacement: float32 ``[3, Z, Y, X]`` displacement in voxels along ``(z, y, x)``.

    Returns:
        The :class:`Frame`.
    """
    nz, ny, nx = (int(s) for s in shape)
    cx, cy = center_xy
    zz = np.arange(nz, dtype=np.float32)[:, None, None]
    yy = np.arange(ny, dtype=np.float32)[None, :, None]
    xx = np.arange(nx, dtype=np.float32)[None, None, :]
    inv = (1.0 / (half_width * np.asarray(z_scale, dtype=np.float32)))[:, None, None]
    u = (xx + displacement[2] - np.float32(cx)) * inv
    v = (yy + displacement[1] - np.float32(cy)) * inv
    hz = np.float32(max((nz - 1) / 2.0, 0.5))
    w = (zz + displacement[0] - hz) / hz
    pad = int(np.ceil(np.abs(displacement).max())) + 1
    return Frame(
        u=u.astype(np.float32, copy=False),
        v=v.astype(np.float32, copy=False),
        w=w.astype(np.float32, copy=False),
        center_x=float(cx),
        center_y=float(cy),
        scale=float(half_width * float(np.max(z_scale))),
        pad=pad,
    )


def ellipsoid(
    frame: Frame,
    box: tuple[slice, slice, slice],
    center: Sequence[float],
    radii: Sequence[float],
    angle: float = 0.0,
) -> np.ndarray:
    """Normalised squared distance ``f`` to an ellipsoid (``f <= 1`` inside), inside ``box``.

    Args:
        frame: Body coordinates.
        box: Voxel slices from :meth:`Frame.box`.
        center: ``(u, v, w)`` centre.
        radii: ``(ru, rv, rw)`` semi-axes (before the rotation).
        angle: Rotation about the longitudinal axis in radians (from +u towards +v).

    Returns:
        float32 array of the box's shape.
    """
    du = frame.u[box] - np.float32(center[0])
    dv = frame.v[box] - np.float32(center[1])
    dw = frame.w[box] - np.float32(center[2])
    if angle:
        c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        du, dv = du * c + dv * s, dv * c - du * s
    return (du / np.float32(radii[0])) ** 2 + (dv / np.float32(radii[1])) ** 2 + (dw / np.float32(radii[2])) ** 2


def ellipsoid_box(
    frame: Frame, center: Sequence[float], radii: Sequence[float]
) -> tuple[slice, slice, slice]:
    """Bounding box of an ellipsoid at any rotation about the longitudinal axis."""
    r = max(radii[0], radii[1])
    return frame.box((center[0] - r, center[0] + r), (center[1] - r, center[1] + r),
                     (center[2] - radii[2], center[2] + radii[2]))


def paint(
    tissue: np.ndarray,
    label: np.ndarray,
    box: tuple[slice, slice, slice],
    mask: np.ndarray,
    tissue_value: int | np.ndarray,
    label_value: int,
    free: np.ndarray | None = None,
) -> np.ndarray:
    """Write ``tissue_value``/``label_value`` where ``mask`` holds inside ``box`` (in place).

    Args:
        tissue: uint8 ``[Z, Y, X]`` tissue map.
        label: int16 ``[Z, Y, X]`` organ map.
        box: Voxel slices.
        mask: bool array of the box's shape.
        tissue_value: One tissue, or a uint8 array of the box's shape (per-voxel tissues).
        label_value: Organ id written with it.
        free: Optional bool lookup ``[n_tissues]``: only voxels whose current tissue is free are painted.

    Returns:
        The mask actually painted.
    """
    t = tissue[box]
    if free is not None:
        mask = mask & free[t]
    if isinstance(tissue_value, np.ndarray):
        t[mask] = tissue_value[mask]
    else:
        t[mask] = tissue_value
    label[box][mask] = label_value
    return mask
