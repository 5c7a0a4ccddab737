"""The fingerprint of one case: geometry, non-zero box, label voxel counts and a foreground intensity sample.

This pass reads every voxel once, so it also runs the data-level checks of the raw dataset (NaN/Inf
voxels, all-zero images, label values that ``dataset.json`` does not declare).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from segvolpipe.errors import UserError
from segvolpipe.io.dataset import RawCase
from segvolpipe.io.nifti import read_image, read_label


@dataclass(frozen=True)
class CaseTask:
    """What a worker needs to fingerprint one case."""

    case: RawCase
    label_ids: tuple[int, ...]
    samples: int
    seed: int = 0


def nonzero_bbox(image: np.ndarray) -> tuple[tuple[int, int], ...] | None:
    """Bounding box ``((z0, z1), (y0, y1), (x0, x1))`` (half-open) of voxels non-zero in any channel.

    Args:
        image: ``[C, Z, Y, X]``.

    Returns:
        The box, or None when every voxel is zero.
    """
    mask = np.any(image != 0, axis=0)
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=other))
        if hits.size == 0:
            return None
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def crop_box(image: np.ndarray, label: np.ndarray | None = None) -> tuple[tuple[int, int], ...] | None:
    """The box that preprocessing crops to: non-zero image voxels, grown to hold every labelled voxel.

    Reference labels sometimes reach outside the image's non-zero region (a mask drawn on a template);
    keeping them inside the box makes preprocessing a label map and mapping it back exact.
    """
    box = nonzero_bbox(image)
    if label is None or box is None:
        return box
    label_box = nonzero_bbox(label[None])
    if label_box is None:
        return box
    return tuple((min(a0, b0), max(a1, b1)) for (a0, a1), (b0, b1) in zip(box, label_box, strict=True))


def fingerprint_case(task: CaseTask) -> dict[str, Any]:
    """Fingerprint one case.

    Returns:
        A dict with ``case_id``, ``spacing``/``shape`` (canonical z, y, x), ``axcodes``, ``bbox``,
        ``cropped_shape``, ``crop_fraction``, ``label_voxels`` ({id: count}) and ``samples``
        (float32 array [C, n] of foreground intensities, n ≤ ``task.samples``).

    Raises:
        UserError: NaN/Inf voxels, an all-zero image or undeclared label values, naming the file.
    """
    case = task.case
    image, geometry = read_image(case.images, dtype=None)  # stored dtype: int16 CT needs no float copy
    for c in range(image.shape[0]):
        if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image[c]).all():
            bad = int((~np.isfinite(image[c])).sum())
            raise UserError(f"{bad} voxel(s) are NaN or Inf", case.images[c])
    assert case.label is not None
    label, label_geometry = read_label(case.label)
    if label_geometry.shape != geometry.shape:
        raise UserError(f"shape {label_geometry.shape} differs from {case.images[0].name} {geometry.shape}", case.label)
    if not label_geometry.same_grid(geometry):
        raise UserError(f"affine differs from {case.images[0].name} (spacing, origin or direction)", case.label)
    counts = np.bincount(label.ravel().astype(np.int64))
    present = {int(v): int(n) for v, n in enumerate(counts) if n}
    undeclared = sorted(set(present) - set(task.label_ids))
    if undeclared:
        raise UserError(f"label values {undeclared} are not declared in dataset.json labels", case.label)
    box = crop_box(image, label)
    if nonzero_bbox(image) is None:
        raise UserError("image is all zeros", case.images[0])
    cropped_shape = tuple(b - a for a, b in box)
    foreground = label > 0
    n_fg = int(foreground.sum())
    flat_idx = np.flatnonzero(foreground)
    rng = np.random.default_rng([task.seed, zlib.crc32(case.case_id.encode())])
    if n_fg > task.samples:
        flat_idx = np.sort(rng.choice(flat_idx, size=task.samples, replace=False))
    samples = image.reshape(image.shape[0], -1)[:, flat_idx].astype(np.float32)
    return {
        "case_id": case.case_id,
        "spacing": list(geometry.spacing),
        "shape": list(geometry.canonical_shape),
        "axcodes": "".join(geometry.axcodes),
        "bbox": [list(b) for b in box],
        "cropped_shape": list(cropped_shape),
        "crop_fraction": float(np.prod(cropped_shape) / np.prod(geometry.canonical_shape)),
        "label_voxels": {str(k): v for k, v in present.items() if k != 0},
        "voxel_volume_ml": float(np.prod(geometry.spacing) / 1000.0),
        "samples": samples,
    }
