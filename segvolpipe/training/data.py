"""Training data: memory-mapped cases and random (foreground-oversampled or zoom-out) samples; the batches and
their workers are :mod:`segvolpipe.training.loader`'s.

Arrays are in the preprocessed canonical layout: images ``[C, Z, Y, X]``, labels and pseudo-masks
``[Z, Y, X]``, with axis 0 the patient's longitudinal axis. Every sample is drawn from its own
generator ``np.random.default_rng([seed, epoch, iteration, rank, index_in_batch])``, so a batch does not
depend on the number of workers, on what was drawn before (resuming at an epoch boundary reproduces
it) and differs between ranks. This module produces CPU arrays; the trainer moves them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from segvolpipe.errors import UserError
from segvolpipe.planning.plans import check_mirror_axes
from segvolpipe.training.augment import augment, source_size

MAX_LOCATIONS = 10_000
_LOCATION_SEED = 1234


@dataclass(frozen=True)
class SamplingOptions:
    """How training samples are drawn.

    Attributes:
        input_size: ``(z, y, x)`` crop / model input size.
        batch_size: Samples per batch.
        oversample_foreground: Probability that a crop is centred (± a small offset) on a random voxel
            of a class drawn uniformly among the classes present in the case.
        zoom_out_probability: Probability of SegVol's zoom-out view: the whole case resized to ``input_size``.
        augment: Apply the augmentation of :mod:`segvolpipe.training.augment`.
        transforms: With ``augment``, nnU-Net's rotation, scaling, noise, brightness, contrast and gamma before the
            mirroring; False: the mirroring alone (``segvol train --augmentation mirror``).
        rotation_aug: ±90° about the longitudinal axis instead of the small default rotations (with ``transforms``).
        pseudo_masks: Return the pseudo-masks (zeros otherwise, or when a case has none).
        label_mirror: Label values after a left–right mirror (``ModelSpec.label_mirror``): lateral classes swap
            when augmentation mirrors across the body; None when no class has a side.
        mirror_axes: Axes (0, 1, 2 = z, y, x) that augmentation mirrors, each with probability 0.5; the plans give
            the left-right axis only. The default is what runs trained before the plans had the field did.
    """

    input_size: tuple[int, int, int]
    batch_size: int
    oversample_foreground: float = 0.33
    zoom_out_probability: float = 0.25
    augment: bool = True
    transforms: bool = True
    rotation_aug: bool = False
    pseudo_masks: bool = True
    label_mirror: tuple[int, ...] | None = None
    mirror_axes: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        check_mirror_axes(self.mirror_axes)

    @property
    def transforming(self) -> bool:
        """Whether samples are rotated, scaled and so on (then drawn from a block larger than the input)."""
        return self.augment and self.transforms


def _open(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise UserError("missing array (run the preprocessing / pseudo-mask stage again)", path) from None
    except (OSError, ValueError) as exc:
        raise UserError(f"unreadable array: {exc}", path) from None


class CaseStore:
    """Memory-mapped cases of one configuration folder (+ optional pseudo-mask folder).

    Headers are checked when the store is built; arrays are opened on demand (no file stays open, so
    the store can serve thousands of cases and be sent to worker processes). Class locations and
    channel minima are computed lazily once per process and cached.

    Args:
        folder: ``preprocessed/DatasetXXX_Name/{configuration}``.
        case_ids: The cases to serve.
        pseudo_folder: ``preprocessed/DatasetXXX_Name/pseudomasks/{configuration}``, or None.

    Raises:
        UserError: Naming the file, when an array is missing or unreadable, an image is not
            ``[C, Z, Y, X]``, or the image, label and pseudo-mask grids disagree.
    """

    def __init__(self, folder: Path, case_ids: Sequence[str], pseudo_folder: Path | None = None) -> None:
        self.folder = Path(folder)
        self.pseudo_folder = None if pseudo_folder is None else Path(pseudo_folder)
        self.case_ids = tuple(case_ids)
        self._locations: dict[str, dict[int, np.ndarray]] = {}
        self._minima: dict[str, np.ndarray] = {}
        for case in self.case_ids:
            image, label = _open(self._image_path(case)), _open(self._label_path(case))
            if image.ndim != 4:
                raise UserError(
                    f"image has shape {image.shape}, expected [C, Z, Y, X]", self._image_path(case)
                )
            if label.shape != image.shape[1:]:
                raise UserError(
                    f"label shape {label.shape} does not match image shape {image.shape}",
                    self._label_path(case),
                )
            if self.pseudo_folder is not None:
                pseudo = _open(self._pseudo_path(case))
                if pseudo.shape != label.shape:
                    raise UserError(
                        f"pseudo-mask shape {pseudo.shape} does not match label shape {label.shape}",
                        self._pseudo_path(case),
                    )

    def _image_path(self, case: str) -> Path:
        return self.folder / f"{case}.npy"

    def _label_path(self, case: str) -> Path:
        return self.folder / f"{case}_seg.npy"

    def _pseudo_path(self, case: str) -> Path:
        assert self.pseudo_folder is not None
        return self.pseudo_folder / f"{case}.npy"

    def image(self, case: str) -> np.ndarray:
        """The normalised image, float32 ``[C, Z, Y, X]`` (memory-mapped, read-only)."""
        return _open(self._image_path(case))

    def label(self, case: str) -> np.ndarray:
        """The label map ``[Z, Y, X]`` (values 0..K; memory-mapped, read-only)."""
        return _open(self._label_path(case))

    def pseudo(self, case: str) -> np.ndarray | None:
        """The pseudo-mask int32 ``[Z, Y, X]`` (0 none, -1 ignore, 1..K labels, > K regions), or None."""
        return None if self.pseudo_folder is None else _open(self._pseudo_path(case))

    def channel_minima(self, case: str) -> np.ndarray:
        """Each image channel's minimum, float32 ``[C]`` (the padding value); cached."""
        if case not in self._minima:
            image = self.image(case)
            self._minima[case] = np.asarray(image.reshape(image.shape[0], -1).min(axis=1), dtype=np.float32)
        return self._minima[case]

    def class_locations(self, case: str) -> dict[int, np.ndarray]:
        """Label value (> 0, present in the case) -> int64 ``[n, 3]`` ``(z, y, x)`` voxel indices.

        At most :data:`MAX_LOCATIONS` per class, drawn with a fixed seed (so every process agrees);
        computed lazily once and cached.
        """
        if case not in self._locations:
            label = np.asarray(self.label(case))
            flat = np.flatnonzero(label)
            values = label.reshape(-1)[flat]
            rng = np.random.default_rng(_LOCATION_SEED)
            out: dict[int, np.ndarray] = {}
            for value in np.unique(values):
                idx = flat[values == value]
                if idx.size > MAX_LOCATIONS:
                    idx = np.sort(rng.choice(idx, MAX_LOCATIONS, replace=False))
                out[int(value)] = np.stack(np.unravel_index(idx, label.shape), axis=1).astype(np.int64)
            self._locations[case] = out
        return self._locations[case]


def _crop(
    array: np.ndarray, start: Sequence[int], size: Sequence[int], fill: np.ndarray | float,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``array[..., start:start + size]`` over the last three axes, padded with ``fill`` outside.

    Args:
        array: ``[..., Z, Y, X]``.
        start: ``(z, y, x)`` corner, may be negative or run past the end.
        size: ``(z, y, x)`` output size.
        fill: Scalar, or one value per leading channel (``[C]`` for a ``[C, Z, Y, X]`` array).
        out: Write into this ``[..., *size]`` array (of any dtype that holds the values) instead.

    Returns:
        ``out``, or a new ``[..., *size]`` array of ``array``'s dtype.
    """
    lead = array.shape[:-3]
    if out is None:
        out = np.empty((*lead, *size), dtype=array.dtype)
    out[...] = np.reshape(fill, (-1, 1, 1, 1)) if np.ndim(fill) else fill
    src, dst = [], []
    for s, n, dim in zip(start, size, array.shape[-3:], strict=True):
        lo, hi = max(s, 0), min(s + n, dim)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[(..., *dst)] = array[(..., *src)]
    return out


def _resize_nearest(array: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of ``[Z, Y, X]`` (pixel centres, like ``mode="nearest-exact"``)."""
    idx = [
        np.minimum(((np.arange(n) + 0.5) * d / n).astype(np.int64), d - 1)
        for n, d in zip(size, array.shape, strict=True)
    ]
    return np.asarray(array[np.ix_(*idx)])


def _crop_start(
    rng: np.random.Generator, shape: Sequence[int], size: Sequence[int], centre: np.ndarray | None
) -> list[int]:
    """Corner of an input-sized crop: uniform, or around ``centre`` and kept inside the case if it can be."""
    start = []
    for d, (dim, n) in enumerate(zip(shape, size, strict=True)):
        if dim <= n:
            start.append((dim - n) // 2)  # the whole axis, centred, padded on both sides
        elif centre is None:
            start.append(int(rng.integers(0, dim - n + 1)))
        else:
            start.append(int(np.clip(centre[d] - n // 2, 0, dim - n)))
    return start


def _source(
    store: CaseStore, case: str, rng: np.random.Generator, options: SamplingOptions, zoom_out: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The block to augment: image float32 ``[C, *block]`` and ``seg`` float32 ``[S, *block]`` (the label, then the
    pseudo-mask when there is one: S = 2, else 1, so no all-zero channel is resampled), cropped straight into the
    float array the augmentation reads.

    ``block`` is the input size, or :func:`~segvolpipe.training.augment.source_size` when the sample will be
    rotated or scaled; the input-sized view sits at its centre.
    """
    size = tuple(int(v) for v in options.input_size)
    block = source_size(size, options.rotation_aug) if options.transforming else size
    image, label = store.image(case), store.label(case)
    pseudo = store.pseudo(case) if options.pseudo_masks else None
    if zoom_out:  # the whole case resized to the input size
        tensor = torch.from_numpy(np.array(image, dtype=np.float32))[None]
        image = F.interpolate(tensor, size=size, mode="trilinear")[0].numpy()
        label = _resize_nearest(label, size)
        pseudo = None if pseudo is None else _resize_nearest(pseudo, size)
        corner = [0, 0, 0]
    else:
        centre = None
        if rng.random() < options.oversample_foreground:
            locations = store.class_locations(case)
            if locations:
                voxels = locations[sorted(locations)[int(rng.integers(len(locations)))]]
                offset = np.asarray(size) // 8
                centre = voxels[int(rng.integers(len(voxels)))] + rng.integers(-offset, offset + 1)
        corner = _crop_start(rng, label.shape, size, centre)
    start = [c - (b - n) // 2 for c, b, n in zip(corner, block, size, strict=True)]
    seg = np.empty((1 if pseudo is None else 2, *block), np.float32)
    _crop(label, start, block, 0, out=seg[0])
    if pseudo is not None:
        _crop(pseudo, start, block, 0, out=seg[1])
    return _crop(image, start, block, store.channel_minima(case)).astype(np.float32, copy=False), seg


def make_sample(
    store: CaseStore, case: str, rng: np.random.Generator, options: SamplingOptions
) -> dict[str, np.ndarray]:
    """Draw one training sample of ``case`` with the sample's own generator ``rng``.

    Returns:
        ``image`` float32 ``[C, *input_size]``, ``label`` int16 ``[*input_size]``, ``pseudo`` int32
        ``[*input_size]`` (zeros when the case has none or ``options.pseudo_masks`` is off) and
        ``zoom_out`` a bool scalar array.
    """
    zoom_out = bool(rng.random() < options.zoom_out_probability)
    image, seg = _source(store, case, rng, options, zoom_out)
    if options.augment:
        size = tuple(int(v) for v in options.input_size)
        image, seg = augment(image, seg, rng, size, options.rotation_aug, options.label_mirror, options.mirror_axes,
                             options.transforms)
        seg = np.rint(seg)
    return {
        "image": np.ascontiguousarray(image, dtype=np.float32),
        "label": seg[0].astype(np.int16),
        "pseudo": seg[1].astype(np.int32) if len(seg) > 1 else np.zeros(seg.shape[1:], np.int32),
        "zoom_out": np.array(zoom_out),
    }
