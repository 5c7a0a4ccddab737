"""Invariants as properties (hypothesis, derandomised so CI draws the same examples every run).

1. Preprocess then revert → the original file grid, for random shapes, spacings, any of the 48 orientations and
   random origins: the written files have the input's exact shape and affine; image and label come back exactly
   when the target spacing is the case's own (no resampling), and otherwise every voxel farther than
   ``ceil(f) + 2`` voxels (per canonical axis; ``f`` = cropped voxels per resampled voxel along that axis) from
   a voxel of another value comes back exactly (labels) or to float32 rounding (images), no label is invented.
   Near boundaries resampling may move labels: that band is the documented tolerance.
2. Metrics: a label map scores Dice 1 against itself (NaN for classes it lacks); the file-level scorer gives the
   same Dice, IoU, TP, FP, FN, voxel counts and volumes when prediction and reference are stored in other
   orientations (each its own) as the array-level metrics on the canonical grid.
"""

from __future__ import annotations

import math
import tempfile
from itertools import permutations, product
from pathlib import Path

import nibabel as nib
import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from nibabel.orientations import axcodes2ornt, inv_ornt_aff, ornt_transform
from scipy import ndimage

from segvolpipe.evaluation.metrics import case_metrics, dice_scores, score_case
from segvolpipe.io.nifti import CANONICAL_AXCODES, Geometry, read_image, read_label, write_label, write_volume
from segvolpipe.preprocessing.case import PreprocessSettings, preprocess_arrays, revert_to_canonical
from segvolpipe.preprocessing.normalization import ChannelNorm

_PAIRS = (("L", "R"), ("P", "A"), ("I", "S"))
# every orientation of a 3D grid: 6 axis orders × 8 flips
ORIENTATIONS = [tuple(_PAIRS[a][f] for a, f in zip(order, flips, strict=True))
                for order in permutations(range(3)) for flips in product((0, 1), repeat=3)]
PROPERTY = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
RAW = (ChannelNorm(0, "CT", "none"),)  # intensities kept as they are: the image's way back is checkable

sizes = st.integers(2, 9).map(lambda k: 2 * k + 1)  # odd, 5 … 19
spacings = st.floats(0.5, 5.0, allow_nan=False, allow_infinity=False)
orientations = st.sampled_from(ORIENTATIONS)
origins = st.tuples(*[st.floats(-300.0, 300.0, allow_nan=False)] * 3)


def boxes_map(rng: np.random.Generator, shape: tuple[int, ...], values: list[int], n: int) -> np.ndarray:
    """``n`` random axis-aligned boxes painted with random ``values`` (later boxes over earlier ones)."""
    out = np.zeros(shape, np.int16)
    for _ in range(n):
        lo = [int(rng.integers(0, s)) for s in shape]
        hi = [int(rng.integers(a + 1, s + 1)) for a, s in zip(lo, shape, strict=True)]
        out[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = rng.choice(values)
    return out


def uniform_within(array: np.ndarray, radius: tuple[int, ...]) -> np.ndarray:
    """Voxels whose box of half-width ``radius`` (per axis, clamped at the border) holds a single value."""
    size = tuple(2 * r + 1 for r in radius)
    return ndimage.maximum_filter(array, size=size, mode="nearest") == ndimage.minimum_filter(
        array, size=size, mode="nearest")


def same_grid_in(axcodes: tuple[str, str, str], geometry: Geometry) -> Geometry:
    """The geometry of ``geometry``'s canonical voxel grid stored in another orientation (same voxels in the world)."""
    to_file = ornt_transform(axcodes2ornt(CANONICAL_AXCODES), axcodes2ornt(axcodes))
    shape = geometry.canonical_shape
    return Geometry.from_affine(np.asarray(geometry.canonical_affine) @ inv_ornt_aff(to_file, shape),
                                _transformed_shape(shape, to_file))


def _transformed_shape(shape: tuple[int, int, int], ornt: np.ndarray) -> tuple[int, int, int]:
    """The shape of an array of ``shape`` after nibabel's ``apply_orientation(array, ornt)``."""
    out = [0, 0, 0]
    for src, (dst, _) in enumerate(ornt):
        out[int(dst)] = shape[src]
    return tuple(out)  # type: ignore[return-value]


# -- 1. preprocess then revert ---------------------------------------------------------------------------------
@PROPERTY
@given(shape=st.tuples(sizes, sizes, sizes), spacing=st.tuples(spacings, spacings, spacings),
       axcodes=orientations, origin=origins, lossless=st.booleans(),
       factors=st.tuples(*[st.floats(0.5, 2.0)] * 3), seed=st.integers(0, 2**32 - 1))
def test_preprocess_then_revert_returns_the_file_grid(shape, spacing, axcodes, origin, lossless, factors,
                                                      seed) -> None:
    rng = np.random.default_rng(seed)
    image = boxes_map(rng, shape, list(range(-1000, 1001, 7)), 4).astype(np.float32)  # zero around: cropped
    label = boxes_map(rng, shape, [0, 1, 2, 3], 5)  # may reach where the image is zero
    geometry = Geometry.from_canonical_spec(shape, spacing, axcodes, origin)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_volume(folder / "c_0000.nii.gz", image, geometry, np.float32)
        write_label(folder / "c.nii.gz", label, geometry)
        read, geom = read_image([folder / "c_0000.nii.gz"])
        ref, _ = read_label(folder / "c.nii.gz")
        target = geom.spacing if lossless else tuple(s * f for s, f in zip(geom.spacing, factors, strict=True))
        data, seg, props = preprocess_arrays(read, ref, geom, PreprocessSettings(target, RAW), np.int16)
        assert seg is not None and data.shape[1:] == seg.shape == tuple(props["shape_after_resampling"])
        back_label = revert_to_canonical(seg, props, is_label=True)
        back_image = revert_to_canonical(data, props, is_label=False)[0]
        out = Geometry.from_json(props["geometry"])
        write_label(folder / "back.nii.gz", back_label, out)
        write_volume(folder / "back_0000.nii.gz", back_image, out, np.float32)
        files = {name: nib.load(str(folder / name)) for name in ("c.nii.gz", "back.nii.gz", "c_0000.nii.gz",
                                                                   "back_0000.nii.gz")}
        for original, restored in (("c.nii.gz", "back.nii.gz"), ("c_0000.nii.gz", "back_0000.nii.gz")):
            a, b = files[original], files[restored]
            assert a.shape == b.shape and np.array_equal(a.affine, b.affine)
            assert np.array_equal(a.get_sform(), b.get_sform()) and np.array_equal(a.get_qform(), b.get_qform())
            assert nib.aff2axcodes(b.affine) == tuple(axcodes)
        restored_label, _ = read_label(folder / "back.nii.gz")
        restored_image, _ = read_image([folder / "back_0000.nii.gz"])
        resampled = tuple(props["shape_after_resampling"]) != tuple(props["cropped_shape"])
        assert not (lossless and resampled)  # the case's own spacing never resamples
        event("lossless" if not resampled else f"resampled, nearest along axis {props['anisotropic_axis']}")
        if not resampled:
            for original, restored in (("c.nii.gz", "back.nii.gz"), ("c_0000.nii.gz", "back_0000.nii.gz")):
                assert np.array_equal(np.asarray(files[original].dataobj), np.asarray(files[restored].dataobj))
            assert np.array_equal(restored_label, ref) and np.array_equal(restored_image, read)
            return
    # a resampled axis reaches ceil(n / m) original voxels (linear taps both ways), one more for cubic images
    reach = [0 if n == m else math.ceil(n / m) for n, m in
             zip(props["cropped_shape"], props["shape_after_resampling"], strict=True)]
    assert set(np.unique(restored_label)) <= set(np.unique(ref))  # no label invented
    far = uniform_within(ref, tuple(reach))
    event(f"labels: {int(10 * far.mean()) * 10}-{int(10 * far.mean()) * 10 + 10} % of the voxels checked")
    assert np.array_equal(restored_label[far], ref[far])
    far = uniform_within(read[0], tuple(r + (r > 0) for r in reach))
    event(f"image: {int(10 * far.mean()) * 10}-{int(10 * far.mean()) * 10 + 10} % of the voxels checked")
    np.testing.assert_allclose(restored_image[0][far], read[0][far], rtol=1e-5, atol=1e-3)


# -- 2. metrics --------------------------------------------------------------------------------------------------
label_maps = st.builds(
    lambda shape, n_classes, seed: (shape, n_classes, seed),
    st.tuples(*[st.integers(1, 12)] * 3), st.integers(1, 5), st.integers(0, 2**32 - 1))


@PROPERTY
@given(case=label_maps)
def test_a_label_map_scores_dice_one_against_itself(case) -> None:
    shape, n_classes, seed = case
    rng = np.random.default_rng(seed)
    present = [v for v in range(1, n_classes + 1) if rng.random() < 0.6]
    labels = rng.choice([0, *present], size=shape).astype(np.int16)
    values = list(range(1, n_classes + 2))  # one class more than any map holds: always absent
    scores = dice_scores(labels, labels, values)
    for v in values:
        if (labels == v).any():
            assert scores[v] == 1.0
        else:
            assert math.isnan(scores[v])
    for v, m in case_metrics(labels, labels, values, (1.0, 2.0, 0.5)).items():
        assert m.fp == m.fn == 0 and m.tp == m.n_pred == m.n_ref == int((labels == v).sum())
        assert (math.isnan(m.iou) and m.tp == 0) or m.iou == 1.0


@PROPERTY
@given(case=label_maps, spacing=st.tuples(spacings, spacings, spacings), origin=origins,
       pred_axcodes=orientations, ref_axcodes=orientations, noise=st.floats(0.0, 1.0))
def test_metrics_do_not_depend_on_the_orientation_files_are_stored_in(case, spacing, origin, pred_axcodes,
                                                                     ref_axcodes, noise) -> None:
    shape, n_classes, seed = case
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, n_classes + 1, size=shape).astype(np.int16)
    pred = np.where(rng.random(shape) < noise, rng.integers(0, n_classes + 1, size=shape), ref).astype(np.int16)
    labels = {v: f"class{v}" for v in range(n_classes + 2)}  # the last class is in neither map
    ref_geometry = Geometry.from_canonical_spec(shape, spacing, ref_axcodes, origin)
    pred_geometry = same_grid_in(pred_axcodes, ref_geometry)
    assert pred_geometry.axcodes == tuple(pred_axcodes) and pred_geometry.canonical_shape == shape
    values = sorted(v for v in labels if v)
    want = case_metrics(pred, ref, values, ref_geometry.spacing)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_label(folder / "pred.nii.gz", pred, pred_geometry)
        write_label(folder / "ref.nii.gz", ref, ref_geometry)
        stored = np.asarray(nib.load(str(folder / "pred.nii.gz")).dataobj)
        assert stored.shape == pred_geometry.shape  # the file holds the reoriented array
        got = score_case("c", folder / "pred.nii.gz", folder / "ref.nii.gz", labels).metrics
    assert list(got) == values
    for v in values:
        g, w = got[v], want[v]
        assert (g.tp, g.fp, g.fn, g.n_pred, g.n_ref) == (w.tp, w.fp, w.fn, w.n_pred, w.n_ref)
        for a, b in ((g.dice, w.dice), (g.iou, w.iou)):
            assert (math.isnan(a) and math.isnan(b)) or a == b
        assert math.isclose(g.pred_ml, w.pred_ml, rel_tol=1e-6) and math.isclose(g.ref_ml, w.ref_ml, rel_tol=1e-6)
    assert math.isnan(got[values[-1]].dice)
