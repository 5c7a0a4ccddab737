"""How well pseudo regions match the labelled classes (computed before the ground-truth overwrite)."""

from __future__ import annotations

import numpy as np


def best_match_dice(regions: np.ndarray, seg: np.ndarray, class_ids: tuple[int, ...]) -> dict[int, float]:
    """Per class, the Dice of the union of regions lying mostly (> 50 %) inside it, against the class.

    Args:
        regions: int [Z, Y, X] region ids (≤ 0 means no region).
        seg: int [Z, Y, X] classes.
        class_ids: The classes to score (absent classes are skipped).

    Returns:
        ``{class id: Dice}`` for every class present in ``seg``.
    """
    r = np.where(regions > 0, regions, 0).astype(np.int64).ravel()
    s = seg.astype(np.int64).ravel()
    n_cls = int(max(max(class_ids, default=0), s.max(initial=0))) + 1
    table = np.bincount(r * n_cls + s, minlength=(int(r.max(initial=0)) + 1) * n_cls).reshape(-1, n_cls)
    table[0] = 0  # voxels in no region belong to no union
    region_sizes = table.sum(axis=1)
    class_sizes = np.bincount(s, minlength=n_cls)
    out: dict[int, float] = {}
    for c in class_ids:
        if c >= n_cls or class_sizes[c] == 0:
            continue
        members = table[:, c] * 2 > region_sizes  # more than half of the region inside the class
        members[0] = False
        union = int(region_sizes[members].sum())
        inter = int(table[members, c].sum())
        out[c] = 2.0 * inter / (union + int(class_sizes[c]))
    return out


def body_mask(image: np.ndarray) -> np.ndarray:
    """SegVol's foreground rule: voxels above the volume's mean ([Z, Y, X] → bool)."""
    return image > image.mean()


def box_voxels(mask: np.ndarray) -> int:
    """Number of voxels in the bounding box of ``mask`` (0 when it is empty)."""
    extent = 1
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hits.size == 0:
            return 0
        extent *= int(hits[-1] - hits[0] + 1)
    return extent


def coverage(regions: np.ndarray, body: np.ndarray) -> float:
    """Fraction of body voxels that lie in some region (id ≥ 1)."""
    n = int(body.sum())
    return float(((regions > 0) & body).sum() / n) if n else 0.0
