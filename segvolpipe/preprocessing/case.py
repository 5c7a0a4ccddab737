"""One case forward (raw → preprocessed grid) and back (preprocessed grid → the file's own grid).

Forward: read (canonical z, y, x) → crop to the non-zero box → normalise → resample to the target
spacing (images cubic, labels one-hot linear + arg-max; nearest along a coarse axis) → store
``{case}.npy`` float32 [C, Z, Y, X], ``{case}_seg.npy`` int8 [Z, Y, X] (int16 beyond 127 labels) and
``{case}.json``.
Back: :func:`revert_to_canonical` undoes resampling and cropping; :class:`~segvolpipe.io.nifti.Geometry`
undoes the reorientation when writing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from segvolpipe.config import to_jsonable
from segvolpipe.fingerprint.case import crop_box
from segvolpipe.io.atomic import read_json, save_npy, write_json
from segvolpipe.io.dataset import RawCase, files_hash
from segvolpipe.io.nifti import Geometry, read_image, read_label
from segvolpipe.preprocessing.normalization import ChannelNorm, normalize
from segvolpipe.preprocessing.resampling import (
    anisotropic_axis,
    resample_image,
    resample_label,
    resample_soft,
    resample_soft_box,
    resampled_shape,
)


@dataclass(frozen=True)
class PreprocessSettings:
    """Everything that determines a case's preprocessed arrays."""

    target_spacing: tuple[float, float, float]
    normalization: tuple[ChannelNorm, ...]
    image_order: int = 3
    label_order: int = 1

    def key(self) -> str:
        return hashlib.sha256(json.dumps(to_jsonable(self), sort_keys=True).encode()).hexdigest()[:16]


def seg_dtype(label_ids: tuple[int, ...]) -> type:
    """int8 for up to 127 labels (half the bytes of int16), else int16."""
    return np.int8 if max(label_ids, default=0) <= np.iinfo(np.int8).max else np.int16


def preprocess_arrays(
    image: np.ndarray,
    label: np.ndarray | None,
    geometry: Geometry,
    settings: PreprocessSettings,
    label_dtype: type = np.int16,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Crop, normalise and resample one case held in memory.

    Args:
        image: ``[C, Z, Y, X]`` canonical, float32.
        label: ``[Z, Y, X]`` canonical, or None.
        geometry: The file geometry of the case.
        settings: Target spacing, normalisation, interpolation orders.

    Returns:
        ``(data [C, Z', Y', X'] float32, seg [Z', Y', X'] of ``label_dtype`` or None, properties)``; the properties hold
        what :func:`revert_to_canonical` needs.
    """
    box = crop_box(image, label)
    if box is None:
        box = tuple((0, n) for n in image.shape[1:])
    sl = tuple(slice(a, b) for a, b in box)
    cropped = image[(slice(None), *sl)]
    mask = None
    if any(n.use_mask for n in settings.normalization):
        mask = ndimage.binary_fill_holes(np.any(cropped != 0, axis=0))
    data = normalize(cropped, mask, settings.normalization)
    spacing = geometry.spacing
    new_shape = resampled_shape(data.shape[1:], spacing, settings.target_spacing)
    axis = anisotropic_axis(spacing, settings.target_spacing)
    data = resample_image(data, new_shape, axis, settings.image_order)
    seg = None
    if label is not None:
        seg = resample_label(label[sl].astype(label_dtype), new_shape, axis, settings.label_order)
    props = {
        "geometry": geometry.to_json(),
        "canonical_shape": list(image.shape[1:]),
        "bbox": [list(b) for b in box],
        "cropped_shape": [b - a for a, b in box],
        "spacing": list(spacing),
        "target_spacing": list(settings.target_spacing),
        "shape_after_resampling": list(new_shape),
        "anisotropic_axis": axis,
    }
    return data, seg, props


def revert_to_canonical(
    array: np.ndarray, props: dict[str, Any], is_label: bool, fill: float = 0.0
) -> np.ndarray:
    """Map an array on the preprocessed grid back to the canonical grid of the original file.

    Args:
        array: ``[Z', Y', X']`` label map (``is_label``) or ``[C, Z', Y', X']`` soft maps (logits or
            probabilities), on the grid of ``props["shape_after_resampling"]``.
        props: The case's properties (``{case}.json``).
        is_label: Labels are resampled one-hot + arg-max, soft maps linearly.
        fill: Value outside the cropped box for soft maps (labels get 0).

    Returns:
        ``[Z, Y, X]`` or ``[C, Z, Y, X]`` on the canonical grid; write it with
        ``Geometry.from_json(props["geometry"])`` to get the file's own grid and affine.
    """
    cropped_shape = tuple(props["cropped_shape"])
    axis = props.get("anisotropic_axis")
    full = tuple(props["canonical_shape"])
    sl = tuple(slice(a, b) for a, b in props["bbox"])
    if is_label:
        if tuple(array.shape) != tuple(props["shape_after_resampling"]):
            raise ValueError(f"label shape {array.shape} is not the preprocessed shape {props['shape_after_resampling']}")
        out = np.zeros(full, dtype=array.dtype)
        out[sl] = resample_label(array, cropped_shape, axis)
        return out
    if tuple(array.shape[1:]) != tuple(props["shape_after_resampling"]):
        raise ValueError(f"map shape {array.shape[1:]} is not the preprocessed shape {props['shape_after_resampling']}")
    out = np.full((array.shape[0], *full), fill, dtype=np.float32)
    out[(slice(None), *sl)] = resample_soft(array, cropped_shape, axis)
    return out


def revert_soft_box(prob: np.ndarray, props: dict[str, Any], floor: float) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """:func:`revert_to_canonical` of one soft map, computed only where it can reach ``floor`` (> 0).

    Exporting a target needs only the voxels where its probability can reach the decision threshold; on a
    large CT most targets cover a small part of the grid, so this resamples a box instead of the whole map.

    Args:
        prob: ``[Z', Y', X']`` probabilities on the grid of ``props["shape_after_resampling"]``.
        props: The case's properties (``{case}.json``).
        floor: Every canonical voxel outside the returned region is below it.

    Returns:
        ``(region, values)`` — slices of the canonical grid and the float32 map there, equal to the full
        :func:`revert_to_canonical` inside the region — or None when no voxel reaches ``floor``.
    """
    if floor <= 0:
        raise ValueError(f"floor must be positive (outside the crop box the map is 0), got {floor}")
    if tuple(prob.shape) != tuple(props["shape_after_resampling"]):
        raise ValueError(f"map shape {prob.shape} is not the preprocessed shape {props['shape_after_resampling']}")
    reach = prob >= floor
    hits = [np.flatnonzero(reach.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    if hits[0].size == 0:
        return None
    box = [(int(h[0]), int(h[-1]) + 1) for h in hits]
    region, values = resample_soft_box(prob, tuple(props["cropped_shape"]), box, props.get("anisotropic_axis"))
    offset = tuple(slice(r.start + a, r.stop + a) for r, (a, _) in zip(region, props["bbox"], strict=True))
    return offset, values


@dataclass(frozen=True)
class CaseJob:
    """A worker's job: preprocess ``case`` into ``out_dir`` unless already done with the same inputs."""

    case: RawCase
    out_dir: Path
    settings: PreprocessSettings
    label_ids: tuple[int, ...]
    overwrite: bool = False


def case_input_hash(job: CaseJob) -> str:
    """Raw files (names, sizes, times), the settings and the package version (new code may preprocess differently)."""
    from segvolpipe import __version__

    return files_hash(list(job.case.files()), extra=f"{job.settings.key()}|{__version__}")


def is_done(job: CaseJob) -> bool:
    """True when the case's outputs exist and record the same input hash."""
    cid, out = job.case.case_id, job.out_dir
    props_path = out / f"{cid}.json"
    if not (props_path.exists() and (out / f"{cid}.npy").exists() and (out / f"{cid}_seg.npy").exists()):
        return False
    try:
        return read_json(props_path).get("input_hash") == case_input_hash(job)
    except Exception:
        return False


def preprocess_case(job: CaseJob) -> dict[str, Any]:
    """Read, preprocess and store one case (atomic; the JSON is written last, so it marks completion).

    Returns:
        ``{"case_id", "skipped", "shape"}``.
    """
    cid, out = job.case.case_id, job.out_dir
    if not job.overwrite and is_done(job):
        return {"case_id": cid, "skipped": True, "shape": read_json(out / f"{cid}.json")["shape_after_resampling"]}
    image, geometry = read_image(job.case.images)
    label = None
    if job.case.label is not None:
        label, _ = read_label(job.case.label)
    data, seg, props = preprocess_arrays(image, label, geometry, job.settings, seg_dtype(job.label_ids))
    save_npy(out / f"{cid}.npy", data)
    if seg is not None:
        save_npy(out / f"{cid}_seg.npy", seg)
        counts = np.bincount(seg.ravel().astype(np.int64), minlength=max(job.label_ids) + 1)
        props["class_voxels"] = {str(i): int(counts[i]) for i in job.label_ids if i != 0}
    props.update({"case_id": cid, "input_hash": case_input_hash(job), "settings_key": job.settings.key(),
                  "images": [p.name for p in job.case.images], "label": job.case.label.name if job.case.label else None})
    write_json(out / f"{cid}.json", props)
    return {"case_id": cid, "skipped": False, "shape": props["shape_after_resampling"]}
