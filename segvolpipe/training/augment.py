"""nnU-Net-like data augmentation with batchgenerators, applied to one sample at a time.

Arrays are in the canonical preprocessed layout ``(z, y, x)``: axis 0 is the patient's longitudinal
(superior) axis. Rotation and scaling are :class:`RotateScaleCrop`, which draws and turns as batchgenerators'
:class:`SpatialTransform` (``rotate_coords_3d``) and resamples with torch (tested against it). That matrix's
``angle_x`` leaves coordinate 0 unchanged, so **``angle_x`` rotates about array axis 0** (the longitudinal axis:
every axial slice keeps its content), ``angle_y`` about axis 1 and ``angle_z`` about axis 2 (checked by
``tests/training/test_data.py``). Noise, brightness, contrast and gamma are batchgenerators' transforms.

batchgenerators draws from numpy's *global* random state, and its Gaussian noise draws the variance
from the standard library's :mod:`random`; :func:`augment` seeds both from the sample's own generator
right before the transforms run, so a sample is a pure function of that generator.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform,
    ContrastAugmentationTransform,
    GammaTransform,
)
from batchgenerators.transforms.noise_transforms import GaussianNoiseTransform
from batchgenerators.transforms.spatial_transforms import SpatialTransform

from segvolpipe.models.spec import LEFT_RIGHT_AXIS


@dataclass(frozen=True)
class RotationRange:
    """Symmetric rotation ranges (radians) about each array axis, and the per-sample probability.

    Attributes:
        about_axis0: Largest ``|angle|`` about axis 0 (z, longitudinal); batchgenerators' ``angle_x``.
        about_axis1: Largest ``|angle|`` about axis 1 (y, anterior); batchgenerators' ``angle_y``.
        about_axis2: Largest ``|angle|`` about axis 2 (x, right); batchgenerators' ``angle_z``.
        probability: Probability that a sample is rotated at all (then all three angles are drawn).
    """

    about_axis0: float
    about_axis1: float
    about_axis2: float
    probability: float

    def angles(self) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
        """``(angle_x, angle_y, angle_z)`` intervals in batchgenerators' naming."""
        return tuple((-a, a) for a in (self.about_axis0, self.about_axis1, self.about_axis2))  # type: ignore[return-value]


#: nnU-Net-like default: ±15° about the longitudinal axis, ±5° about the others, p = 0.2.
DEFAULT_ROTATION = RotationRange(float(np.deg2rad(15.0)), float(np.deg2rad(5.0)), float(np.deg2rad(5.0)), 0.2)
#: ``rotation_aug=True``: ±90° about the longitudinal axis, ±0.1 rad about the others, p = 0.5
#: (the range of the rotation-robustness test).
WIDE_ROTATION = RotationRange(float(np.pi / 2), 0.1, 0.1, 0.5)
SCALE_RANGE = (0.85, 1.25)
SCALE_PROBABILITY = 0.2


def rotation_range(rotation_aug: bool) -> RotationRange:
    """The rotation range used for ``SamplingOptions.rotation_aug``."""
    return WIDE_ROTATION if rotation_aug else DEFAULT_ROTATION


class RotateScaleCrop(AbstractTransform):
    """Rotation and scaling about the block's centre, then the centre crop to ``input_size`` (no elastic deformation).

    What batchgenerators' :class:`SpatialTransform` does with these settings (:func:`batchgenerators_spatial`), drawn
    the same way: the same values from numpy's global state in the same order, so the transforms after it see the
    same random stream and a sample that is neither rotated nor scaled is the same centre crop. The others are
    resampled with torch's ``grid_sample`` on a grid built from the 3×3 matrix: the image trilinear with edge values
    repeated (callers pad with each channel's minimum beforehand), as nnU-Net v2 samples it now (batchgeneratorsv2's
    spatial transform is ``grid_sample``); segmentation channels nearest neighbour with 0 outside, so no label is
    ever interpolated (within half a voxel beyond the block's edge voxels: the edge's label, where scipy gives 0;
    the block is sized so that the ranges drawn rarely reach it).

    batchgenerators builds a float64 coordinate mesh of the whole output for every sample, moved or not, and
    interpolates each channel with scipy's ``map_coordinates`` from a float64 copy: a 32×256×256 sample cost 0.24 s
    on one core against 0.10 s now (``benchmarks/bench_unet_step.py --sample-variant segvol``), the GPU loader's
    limit.
    """

    def __init__(self, input_size: tuple[int, int, int], rotation: RotationRange,
                 scale_probability: float = SCALE_PROBABILITY, scale: tuple[float, float] = SCALE_RANGE) -> None:
        self.input_size = tuple(int(v) for v in input_size)
        self.rotation, self.scale_probability, self.scale = rotation, float(scale_probability), scale

    def draw(self) -> np.ndarray | None:
        """The matrix ``A`` taking output coordinates (about the output's centre, row ``(z, y, x)``) to input
        coordinates about the block's centre (``p = A c``), or None when the sample is neither rotated nor scaled."""
        matrix = None
        rot = self.rotation
        if rot.probability > 0 and np.random.uniform() < rot.probability:
            angles = []
            for low, high in rot.angles():
                np.random.uniform()  # batchgenerators' per-axis draw (p_rot_per_axis = 1: every axis turns)
                angles.append(np.random.uniform(low, high))
            matrix = _rotation_matrix(*angles).T
        if self.scale_probability > 0 and np.random.uniform() < self.scale_probability:
            low, high = self.scale
            if np.random.random() < 0.5 and low < 1:
                factor = np.random.uniform(low, 1)
            else:
                factor = np.random.uniform(max(low, 1), high)
            matrix = (np.eye(3) if matrix is None else matrix) * factor
        return matrix

    def __call__(self, **data_dict: np.ndarray) -> dict[str, np.ndarray]:
        data, seg = data_dict["data"], data_dict.get("seg")
        out_data = np.empty((*data.shape[:2], *self.input_size), np.float32)
        out_seg = None if seg is None else np.empty((*seg.shape[:2], *self.input_size), np.float32)
        for b in range(data.shape[0]):
            matrix = self.draw()
            if matrix is None:
                inner = tuple(slice((n - p) // 2, (n - p) // 2 + p) for n, p in
                              zip(data.shape[2:], self.input_size, strict=True))
                out_data[b] = data[(b, slice(None), *inner)]
                if seg is not None:
                    out_seg[b] = seg[(b, slice(None), *inner)]
                continue
            grid = self._grid(matrix, data.shape[2:])
            out_data[b] = F.grid_sample(_tensor(data[b]), grid, mode="bilinear", padding_mode="border",
                                        align_corners=True)[0].numpy()
            if seg is not None:
                out_seg[b] = F.grid_sample(_tensor(seg[b]), grid, mode="nearest", padding_mode="zeros",
                                           align_corners=True)[0].numpy()
        data_dict["data"] = out_data
        if seg is not None:
            data_dict["seg"] = out_seg
        return data_dict

    def _grid(self, matrix: np.ndarray, block: tuple[int, ...]) -> torch.Tensor:
        """``grid_sample``'s grid ``[1, *input_size, 3]`` for ``p = A c``: normalised input coordinates
        (``align_corners``: −1 and 1 are the first and last voxel centres) in its ``(x, y, z)`` order. Each is a sum
        of three per-axis terms, broadcast (cheaper than ``affine_grid``'s matrix product over every voxel)."""
        scaled = matrix / (np.maximum(np.asarray(block, float) - 1, 1) / 2)[:, None]
        axes = [torch.arange(n, dtype=torch.float32) - (n - 1) / 2 for n in self.input_size]
        grid = torch.empty(1, *self.input_size, 3)
        for k, row in enumerate(scaled[::-1]):  # the input's x, y, z
            along_z = axes[0].view(-1, 1, 1) * float(row[0])
            along_y = axes[1].view(1, -1, 1) * float(row[1])
            torch.add(along_z + along_y, axes[2].view(1, 1, -1) * float(row[2]), out=grid[0, ..., k])
        return grid


def _tensor(channels: np.ndarray) -> torch.Tensor:
    """``[C, Z, Y, X]`` → a float32 ``[1, C, Z, Y, X]`` tensor sharing the array's memory where it can (a read-only
    array, e.g. a memory map, is copied: torch tensors are writable)."""
    array = np.ascontiguousarray(channels, np.float32)
    return torch.from_numpy(array if array.flags.writeable else array.copy())[None]


def batchgenerators_spatial(input_size: tuple[int, int, int], rotation: RotationRange,
                            scale_probability: float = SCALE_PROBABILITY) -> SpatialTransform:
    """batchgenerators' :class:`SpatialTransform` set up as :class:`RotateScaleCrop` (the reference its tests and
    ``benchmarks/bench_unet_step.py`` compare it with): image order 1 with edge values repeated, segmentation order 0
    with 0 outside, centred."""
    angle_x, angle_y, angle_z = rotation.angles()
    return SpatialTransform(
        patch_size=tuple(input_size),
        do_elastic_deform=False,
        do_rotation=rotation.probability > 0,
        angle_x=angle_x,
        angle_y=angle_y,
        angle_z=angle_z,
        p_rot_per_sample=rotation.probability,
        do_scale=scale_probability > 0,
        scale=SCALE_RANGE,
        p_scale_per_sample=scale_probability,
        border_mode_data="nearest",
        order_data=1,
        border_mode_seg="constant",
        border_cval_seg=0,
        order_seg=0,
        random_crop=False,
    )


@lru_cache(maxsize=16)
def source_size(input_size: tuple[int, int, int], rotation_aug: bool) -> tuple[int, int, int]:
    """Size of the block to crop around a sample so that rotation and scaling rarely reach its border.

    The bounding box of the input-sized box under every rotation of the range (sampled on a grid) and
    the largest scale, rounded up so that ``source - input`` is even along each axis (the spatial
    transform's centre crop is then exact when it does not move the grid).

    Returns:
        ``(z, y, x)`` sizes, each at least the input size.
    """
    size = np.asarray(input_size, dtype=float)
    half = (size - 1) / 2
    corners = np.array(list(itertools.product(*[(-h, h) for h in half])))  # [8, 3]
    rot = rotation_range(rotation_aug)
    grids = [np.linspace(-a, a, 9) for a in (rot.about_axis0, rot.about_axis1, rot.about_axis2)]
    extent = half.copy()
    for a0, a1, a2 in itertools.product(*grids):
        extent = np.maximum(extent, np.abs(corners @ _rotation_matrix(a0, a1, a2)).max(axis=0))
    needed = np.ceil(2 * extent * SCALE_RANGE[1] + 1).astype(int)
    out = np.maximum(needed, size.astype(int))
    out += (out - size.astype(int)) % 2
    return tuple(int(v) for v in out)  # type: ignore[return-value]


def _rotation_matrix(a0: float, a1: float, a2: float) -> np.ndarray:
    """batchgenerators' ``rotate_coords_3d`` matrix (row vectors of ``(z, y, x)`` coordinates)."""
    c, s = np.cos, np.sin
    rx = np.array([[1, 0, 0], [0, c(a0), -s(a0)], [0, s(a0), c(a0)]])
    ry = np.array([[c(a1), 0, s(a1)], [0, 1, 0], [-s(a1), 0, c(a1)]])
    rz = np.array([[c(a2), -s(a2), 0], [s(a2), c(a2), 0], [0, 0, 1]])
    return rx @ ry @ rz


@lru_cache(maxsize=16)
def build_transforms(input_size: tuple[int, int, int], rotation_aug: bool) -> Compose:
    """The pipeline: rotation and scaling (:class:`RotateScaleCrop`), then batchgenerators' Gaussian noise,
    brightness, contrast and gamma (inverted and not).

    Probabilities follow nnU-Net's defaults (noise 0.1, multiplicative brightness 0.15, contrast 0.15,
    inverted gamma 0.1, gamma 0.3). Mirroring follows in :func:`augment` (it must know the labels' sides).
    """
    return Compose(
        [
            RotateScaleCrop(input_size, rotation_range(rotation_aug)),
            GaussianNoiseTransform(noise_variance=(0.0, 0.1), p_per_sample=0.1),
            BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15),
            ContrastAugmentationTransform(p_per_sample=0.15),
            GammaTransform(
                (0.7, 1.5), invert_image=True, per_channel=True, retain_stats=True, p_per_sample=0.1
            ),
            GammaTransform(
                (0.7, 1.5), invert_image=False, per_channel=True, retain_stats=True, p_per_sample=0.3
            ),
        ]
    )


def augment(
    image: np.ndarray,
    seg: np.ndarray,
    rng: np.random.Generator,
    input_size: tuple[int, int, int],
    rotation_aug: bool = False,
    label_mirror: tuple[int, ...] | None = None,
    mirror_axes: tuple[int, ...] = (0, 1, 2),
    transforms: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Augment one sample and centre-crop it to ``input_size`` (with ``transforms``: rotation, scaling and the
    intensity transforms of :func:`build_transforms`), then mirror each of ``mirror_axes`` with probability 0.5.

    Mirroring axis 2 (the patient's left–right axis) turns a left structure into a right one: with
    ``label_mirror`` the segmentation values ``v`` in ``0..K`` become ``label_mirror[v]`` then (``"left kidney"`` ↔
    ``"right kidney"``), so a lateral label never contradicts the image; nnU-Net's plain mirroring does.

    Args:
        image: float ``[C, Z, Y, X]`` block, normally :func:`source_size` large, centred on the sample.
        seg: ``[S, Z, Y, X]`` segmentation channels (label, pseudo-mask) that move with the image.
        rng: The sample's generator; one draw seeds numpy's and :mod:`random`'s global states.
        input_size: Output ``(z, y, x)``.
        rotation_aug: Use :data:`WIDE_ROTATION` instead of :data:`DEFAULT_ROTATION`.
        label_mirror: Label values after a left–right mirror (see :meth:`ModelSpec.label_mirror`), or None.
        mirror_axes: The axes that may be mirrored (0, 1, 2 = z, y, x).
        transforms: Run :func:`build_transforms` before the mirroring; False: the centre crop is mirrored alone.

    Returns:
        ``image`` float32 ``[C, *input_size]`` and ``seg`` float32 ``[S, *input_size]`` holding only
        values present in the input ``seg`` (or 0).
    """
    seed = int(rng.integers(0, 2**32))
    np.random.seed(seed)
    random.seed(seed)  # GaussianNoiseTransform draws its variance with random.uniform
    if transforms:
        out = build_transforms(tuple(input_size), bool(rotation_aug))(
            data=np.ascontiguousarray(image[None], dtype=np.float32),
            seg=np.ascontiguousarray(seg[None], dtype=np.float32),
        )
        image, seg = np.asarray(out["data"][0], dtype=np.float32), np.asarray(out["seg"][0], dtype=np.float32)
    else:
        inner = tuple(slice((n - p) // 2, (n - p) // 2 + p) for n, p in zip(image.shape[1:], input_size, strict=True))
        image, seg = image[(slice(None), *inner)], seg[(slice(None), *inner)]
    # one draw per axis whichever axes may flip, so a sample's other random choices do not depend on them
    flips = tuple(a for a in range(3) if np.random.uniform() < 0.5 and a in mirror_axes)
    if flips:
        image = np.ascontiguousarray(np.flip(image, axis=tuple(a + 1 for a in flips)))
        seg = np.ascontiguousarray(np.flip(seg, axis=tuple(a + 1 for a in flips)))
    if LEFT_RIGHT_AXIS in flips and label_mirror is not None:
        seg = swap_sides(seg, label_mirror)
    return image, seg


def swap_sides(seg: np.ndarray, label_mirror: tuple[int, ...]) -> np.ndarray:
    """Values ``v`` in ``0..K`` of ``seg`` become ``label_mirror[v]``; others (pseudo regions, −1) are kept.

    ``seg`` holds whole numbers (crops and nearest-neighbour resampling only move values); a pass per value that
    changes (one per left–right pair) instead of a lookup table over every voxel through int64 (a fifth of the time
    on a 32×256×256 sample)."""
    out = seg.copy()
    for value, mirrored in enumerate(label_mirror):
        if mirrored != value:
            out[seg == value] = mirrored
    return out
