"""User prompts of ``segvol predict``: parsing, and mapping from the input file to the model's grid.

Coordinates are given either as voxel indices of the input file, in the file's own axis order (``i, j, k``:
what nibabel's ``img.dataobj[i, j, k]``, ITK-SNAP and 3D Slicer's "IJK" show), or as world millimetres in the
NIfTI's RAS frame (``x, y, z``: the file's affine applied to ``i, j, k``). Both are mapped to the canonical
(z, y, x) grid, then through the case's crop and resampling to the preprocessed grid the model sees. A box
is two opposite corners in any order (flips between the file and the canonical grid swap them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segvolpipe.errors import UserError
from segvolpipe.inference.windows import TargetPrompt
from segvolpipe.io.nifti import Geometry

COORDS = ("voxel", "world")
# A coordinate may lie up to half a voxel outside the index range (the voxel's own extent).
_EDGE = 0.5


@dataclass(frozen=True)
class UserPrompt:
    """A spatial prompt as the user gave it (file voxels or world mm), plus an optional name."""

    text: str | None = None
    box: tuple[float, float, float, float, float, float] | None = None
    points: tuple[tuple[float, float, float, int], ...] = field(default=())
    coords: str = "voxel"

    def __post_init__(self) -> None:
        if self.coords not in COORDS:
            raise UserError(f"unknown --coords {self.coords!r} (voxel or world)")

    @property
    def spatial(self) -> bool:
        return self.box is not None or bool(self.points)


def _numbers(text: str, n: int, what: str) -> list[float]:
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise UserError(f"{what} {text!r}: expected {n} comma-separated numbers") from None
    if len(values) != n or not all(np.isfinite(values)):
        raise UserError(f"{what} {text!r}: expected {n} comma-separated finite numbers")
    return values


def parse_box(text: str) -> tuple[float, float, float, float, float, float]:
    """``"a0,b0,c0,a1,b1,c1"`` → two opposite corners."""
    return tuple(_numbers(text, 6, "--box"))  # type: ignore[return-value]


def parse_point(text: str) -> tuple[float, float, float, int]:
    """``"a,b,c"`` (positive) or ``"a,b,c,neg"`` / ``"a,b,c,pos"`` → ``(a, b, c, label)``."""
    parts = [p.strip() for p in text.split(",")]
    label = 1
    if len(parts) == 4 and parts[3].lower() in ("neg", "negative", "0", "pos", "positive", "1"):
        label = 0 if parts[3].lower() in ("neg", "negative", "0") else 1
        parts = parts[:3]
    a, b, c = _numbers(",".join(parts), 3, "--point")
    return a, b, c, label


def to_canonical(coords: Sequence[Sequence[float]], geometry: Geometry, kind: str) -> np.ndarray:
    """``[N, 3]`` file voxels (``voxel``) or RAS mm (``world``) → canonical (z, y, x) voxel coordinates."""
    pts = np.asarray(coords, dtype=np.float64).reshape(-1, 3)
    homogeneous = np.c_[pts, np.ones(len(pts))]
    world = homogeneous if kind == "world" else homogeneous @ np.asarray(geometry.affine).T
    return (world @ np.linalg.inv(np.asarray(geometry.canonical_affine)).T)[:, :3]


def canonical_to_preprocessed(canonical: np.ndarray, props: dict[str, Any]) -> np.ndarray:
    """Canonical voxel coordinates → the preprocessed grid (crop, then the resampling's edge-aligned scaling)."""
    lo = np.array([b[0] for b in props["bbox"]], dtype=np.float64)
    cropped = np.array(props["cropped_shape"], dtype=np.float64)
    new = np.array(props["shape_after_resampling"], dtype=np.float64)
    return (canonical - lo + 0.5) * (new / cropped) - 0.5


def _check_inside(canonical: np.ndarray, geometry: Geometry, given: Sequence[Sequence[float]], what: str,
                  coords: str, path: str) -> None:
    shape = np.array(geometry.canonical_shape, dtype=np.float64)
    bad = np.any((canonical < -_EDGE) | (canonical > shape - 1 + _EDGE), axis=1)
    if bad.any():
        first = given[int(np.argmax(bad))]
        unit = "file voxel (i, j, k)" if coords == "voxel" else "world (x, y, z RAS mm)"
        raise UserError(f"{what} {tuple(round(float(v), 2) for v in first)} lies outside the image ({unit}; the "
                        f"file is {'×'.join(map(str, geometry.shape))} voxels)", path)


def locate(prompt: UserPrompt, geometry: Geometry, props: dict[str, Any], text_index: int,
           path: str) -> TargetPrompt:
    """The prompt as a :class:`TargetPrompt` on the preprocessed grid.

    Raises:
        UserError: a box corner or a point outside the image (naming ``path``), or no prompt at all.
    """
    new = np.array(props["shape_after_resampling"])
    box = None
    if prompt.box is not None:
        corners = [prompt.box[:3], prompt.box[3:]]
        canon = to_canonical(corners, geometry, prompt.coords)
        _check_inside(canon, geometry, corners, "box corner", prompt.coords, path)
        pre = canonical_to_preprocessed(canon, props)
        lo = np.clip(np.floor(pre.min(axis=0) + 0.5), 0, new - 1).astype(int)
        hi = np.clip(np.floor(pre.max(axis=0) + 0.5), 0, new - 1).astype(int)
        box = (*lo.tolist(), *np.maximum(hi, lo).tolist())
    points: list[tuple[float, float, float, int]] = []
    if prompt.points:
        coords = [p[:3] for p in prompt.points]
        canon = to_canonical(coords, geometry, prompt.coords)
        _check_inside(canon, geometry, coords, "point", prompt.coords, path)
        pre = np.clip(canonical_to_preprocessed(canon, props), 0, new - 1)
        points = [(float(q[0]), float(q[1]), float(q[2]), int(p[3])) for q, p in zip(pre, prompt.points, strict=True)]
    try:
        return TargetPrompt(text_index, box, tuple(points))  # type: ignore[arg-type]
    except ValueError as exc:
        raise UserError(f"{exc} (--text, --box or --point)") from None


@dataclass(frozen=True)
class Target:
    """One output of a case: the value written in the label map, its name, and the prompt for the model."""

    value: int
    name: str
    text: str | None = None
    user: UserPrompt | None = None


REFERENCE_PROMPTS = ("text", "box", "points", "box+text")


def reference_targets(labels: dict[int, str], reference: np.ndarray, affine: np.ndarray, prompt: str,
                      n_points: int = 3) -> list[Target]:
    """Prompts derived from a canonical reference [Z, Y, X] with 4×4 ``affine``, in world mm (so any grid of the
    same case takes them), for evaluation and validation.

    ``text`` names every class; ``box`` gives each class present in the reference the tight box of its voxels;
    ``points`` gives it ``n_points`` positive points drawn from its voxels (seeded by the class value, so a rerun
    gives the same points); ``box+text`` a box and the name. A class absent from the reference gets no spatial
    prompt (nothing is asked for it).
    """
    if prompt not in REFERENCE_PROMPTS:
        raise UserError(f"unknown prompt kind {prompt!r} ({', '.join(REFERENCE_PROMPTS)})")
    if prompt == "text":
        return [Target(value, name, name) for value, name in labels.items()]
    affine = np.asarray(affine, dtype=np.float64)
    targets = []
    for value, name in labels.items():
        idx = np.argwhere(reference == value)
        if idx.size == 0:
            continue
        text = name if prompt == "box+text" else None
        if prompt == "points":
            chosen = idx[np.random.default_rng(value).choice(len(idx), size=min(n_points, len(idx)), replace=False)]
            world = np.c_[chosen.astype(np.float64), np.ones(len(chosen))] @ affine.T
            spatial = UserPrompt(text, points=tuple((*map(float, w[:3]), 1) for w in world), coords="world")
        else:
            corners = np.c_[np.stack([idx.min(0), idx.max(0)]).astype(np.float64), np.ones(2)] @ affine.T
            box = tuple(float(v) for v in (*corners[0, :3], *corners[1, :3]))
            spatial = UserPrompt(text, box, coords="world")  # type: ignore[arg-type]
        targets.append(Target(value, name, text, spatial))
    return targets
