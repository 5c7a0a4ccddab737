"""Cleaning of raw graph regions and the ground-truth merge.

Label conventions of a pseudo-mask (int32 [Z, Y, X]): 0 = no region, −1 = ignore, ≥ 1 region ids.

* Regions smaller than ``min_voxels`` become −1 (ignore), as SegVol's code does.
* Regions lying mostly (> 50 %) outside the body — voxels at or below the volume's mean, SegVol's
  foreground rule — are air/background: 0.
* Each remaining region gets a 3D binary opening then closing (face connectivity, one iteration) inside
  its bounding box; closing never takes voxels another region already holds. Connected pieces smaller
  than ``min_voxels`` and voxels removed by the opening become 0.
* The ground truth overwrites: class ``c`` keeps id ``c``; pseudo regions are renumbered after the
  largest class id, consecutively, in order of first appearance.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_STRUCT = ndimage.generate_binary_structure(3, 1)


def _padded(sl: tuple[slice, ...], shape: tuple[int, ...], pad: int = 1) -> tuple[slice, ...]:
    return tuple(slice(max(0, s.start - pad), min(n, s.stop + pad)) for s, n in zip(sl, shape, strict=True))


def clean_regions(
    regions: np.ndarray, body: np.ndarray, min_voxels: int, morphology: bool = True
) -> np.ndarray:
    """Filter and smooth raw regions.

    Args:
        regions: int32 [Z, Y, X], ids 1..R (every voxel in some region).
        body: bool [Z, Y, X], the body (foreground) mask.
        min_voxels: Size threshold for regions and their connected pieces.
        morphology: Apply the per-region opening and closing.

    Returns:
        int32 [Z, Y, X] with 0 (no region), −1 (ignore) and region ids (the raw ids, not renumbered).
    """
    sizes = np.bincount(regions.ravel())
    inside = np.bincount(regions.ravel(), weights=body.ravel().astype(np.float64), minlength=sizes.size)
    out = np.zeros(regions.shape, np.int32)
    small = sizes < min_voxels
    small[0] = False
    out[small[regions]] = -1
    for rid, sl in enumerate(ndimage.find_objects(regions), start=1):
        if sl is None or small[rid] or inside[rid] <= 0.5 * sizes[rid]:
            continue
        box = _padded(sl, regions.shape)
        mask = regions[box] == rid
        if morphology:
            mask = ndimage.binary_closing(ndimage.binary_opening(mask, _STRUCT), _STRUCT)
        pieces, n = ndimage.label(mask, _STRUCT)
        if n == 0:
            continue
        keep = np.bincount(pieces.ravel()) >= min_voxels
        keep[0] = False
        target = out[box]
        target[keep[pieces] & (target == 0)] = rid
    return out


def merge_ground_truth(pseudo: np.ndarray, seg: np.ndarray, n_classes: int) -> tuple[np.ndarray, int]:
    """Overwrite pseudo regions with the ground-truth classes and renumber the pseudo ids.

    Args:
        pseudo: int32 [Z, Y, X] cleaned regions (0, −1, ids).
        seg: [Z, Y, X] ground-truth classes 0..n_classes.
        n_classes: The largest class id of the dataset (ids 1..n_classes are reserved for classes).

    Returns:
        ``(merged int32 [Z, Y, X], number of pseudo regions kept)``; pseudo ids are
        ``n_classes + 1 .. n_classes + kept``.
    """
    merged = pseudo.copy()
    labelled = seg > 0
    merged[labelled] = 0
    ids = merged.ravel()
    positive = ids > 0
    unique, first = np.unique(ids[positive], return_index=True)
    order = unique[np.argsort(first, kind="stable")]  # first appearance in C order
    lookup = np.zeros(int(pseudo.max(initial=0)) + 1, np.int32)
    lookup[order] = np.arange(n_classes + 1, n_classes + 1 + order.size, dtype=np.int32)
    out = np.where(merged > 0, lookup[np.maximum(merged, 0)], merged).astype(np.int32)
    out[labelled] = seg[labelled]
    return out, int(order.size)
