"""One case forward and back: preprocess a label map, map it back, compare with the original file."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segvolpipe.io.nifti import Geometry, read_image, read_label, write_label, write_volume
from segvolpipe.preprocessing.case import (
    PreprocessSettings,
    preprocess_arrays,
    revert_soft_box,
    revert_to_canonical,
)
from segvolpipe.preprocessing.normalization import ChannelNorm
from tests.conftest import blob_case

NORM = (ChannelNorm(0, "CT", "ct", clip_low=-200.0, clip_high=300.0, mean=50.0, std=40.0),)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    scores = []
    for v in np.unique(np.concatenate([np.unique(a), np.unique(b)])):
        if v == 0:
            continue
        inter = np.sum((a == v) & (b == v))
        scores.append(2 * inter / (np.sum(a == v) + np.sum(b == v)))
    return float(np.mean(scores))


def _write_case(tmp_path: Path, axcodes, spacing, shape=(16, 32, 28)) -> tuple[Path, Path]:
    image, label = blob_case(shape, 3)
    # pad with zeros so cropping has something to remove
    image = np.pad(image, 2)
    label = np.pad(label, 2)
    geom = Geometry.from_canonical_spec(image.shape, spacing, axcodes, (5.0, -7.0, 11.0))
    write_volume(tmp_path / "c_0000.nii.gz", image, geom, np.int16)
    write_label(tmp_path / "c.nii.gz", label, geom)
    return tmp_path / "c_0000.nii.gz", tmp_path / "c.nii.gz"


@pytest.mark.parametrize("axcodes", [("R", "A", "S"), ("L", "P", "S"), ("L", "A", "S"), ("A", "S", "R")])
def test_round_trip_is_exact_without_resampling(tmp_path: Path, axcodes) -> None:
    img_path, lab_path = _write_case(tmp_path, axcodes, (2.0, 0.8, 0.8))
    image, geom = read_image([img_path])
    label, _ = read_label(lab_path)
    settings = PreprocessSettings(geom.spacing, NORM)
    data, seg, props = preprocess_arrays(image, label, geom, settings)
    assert props["cropped_shape"] == [16, 32, 28]  # the zero padding was cropped
    assert data.shape[1:] == seg.shape == tuple(props["shape_after_resampling"])
    back = revert_to_canonical(seg, props, is_label=True)
    write_label(tmp_path / "back.nii.gz", back, Geometry.from_json(props["geometry"]))
    original = np.asarray(nib.load(str(lab_path)).dataobj)
    restored = nib.load(str(tmp_path / "back.nii.gz"))
    np.testing.assert_array_equal(np.asarray(restored.dataobj), original)
    np.testing.assert_allclose(restored.affine, nib.load(str(lab_path)).affine, atol=1e-5)
    assert nib.aff2axcodes(restored.affine) == axcodes


@pytest.mark.parametrize("axcodes", [("L", "P", "S"), ("S", "R", "A")])
def test_round_trip_with_resampling_keeps_dice(tmp_path: Path, axcodes) -> None:
    img_path, lab_path = _write_case(tmp_path, axcodes, (3.0, 0.7, 0.7), shape=(20, 96, 80))
    image, geom = read_image([img_path])
    label, _ = read_label(lab_path)
    # finer grid everywhere: nothing is lost, even the small blobs come back
    fine = PreprocessSettings((1.5, 0.5, 0.5), NORM)
    _, seg, props = preprocess_arrays(image, label, geom, fine)
    back = revert_to_canonical(seg, props, is_label=True)
    assert back.shape == label.shape
    assert _dice(back, label) >= 0.99
    # coarser in-plane grid: organ-sized objects still come back with Dice >= 0.99
    settings = PreprocessSettings((1.5, 1.0, 1.0), NORM)
    smooth = np.zeros_like(label)
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in label.shape], indexing="ij")
    smooth[((zz - 12) / 9.0) ** 2 + ((yy - 50) / 36.0) ** 2 + ((xx - 42) / 30.0) ** 2 < 1] = 1  # organ-sized
    _, seg2, props2 = preprocess_arrays(image, smooth, geom, settings)
    assert _dice(revert_to_canonical(seg2, props2, is_label=True), smooth) >= 0.99


def test_soft_maps_revert_to_full_grid() -> None:
    image, label = blob_case((10, 20, 16), 1)
    image = np.pad(image, 1)[None]
    geom = Geometry.from_canonical_spec(image.shape[1:], (2.0, 1.0, 1.0))
    data, seg, props = preprocess_arrays(image, None, geom, PreprocessSettings((1.0, 1.0, 1.0), NORM))
    assert seg is None
    probs = np.stack([np.full(data.shape[1:], 0.25, np.float32), np.full(data.shape[1:], 0.75, np.float32)])
    back = revert_to_canonical(probs, props, is_label=False, fill=0.0)
    assert back.shape == (2, *image.shape[1:])
    assert back[1, 1:-1, 1:-1, 1:-1] == pytest.approx(0.75)
    assert back[1, 0].max() == 0.0


@pytest.mark.parametrize("spacing, target", [((2.0, 1.0, 1.0), (1.0, 1.3, 0.7)), ((4.0, 0.8, 0.8), (4.0, 1.1, 1.1))])
def test_a_soft_map_reverted_in_its_box_equals_the_full_revert_there(spacing, target) -> None:
    """The predictor exports each target only where it can reach the threshold: inside the returned region the
    values are the full export's, outside it the full export stays below the floor (also along a coarse axis
    resampled by nearest neighbour)."""
    image, _ = blob_case((12, 30, 26), 1)
    image = np.pad(image, 2)[None]
    geom = Geometry.from_canonical_spec(image.shape[1:], spacing)
    data, _, props = preprocess_arrays(image, None, geom, PreprocessSettings(target, NORM))
    rng = np.random.default_rng(0)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in data.shape[1:]], indexing="ij")
    prob = (1 / (1 + np.exp(12 * (np.sqrt((zz - 0.3) ** 2 + (yy + 0.2) ** 2 + xx**2) - 0.35)))).astype(np.float32)
    prob += rng.uniform(0, 0.05, prob.shape).astype(np.float32)
    full = revert_to_canonical(prob[None], props, is_label=False, fill=0.0)[0]
    for floor in (0.5, 0.9):
        region, values = revert_soft_box(prob, props, floor)
        np.testing.assert_allclose(values, full[region], atol=1e-6)
        outside = np.ones(full.shape, bool)
        outside[region] = False
        assert full[outside].max() < floor
        assert values.size < full.size / 2  # the point: a box, not the grid
    assert revert_soft_box(prob, props, 2.0) is None


def test_settings_key_changes_with_settings() -> None:
    a = PreprocessSettings((1.0, 1.0, 1.0), NORM)
    b = PreprocessSettings((1.0, 1.0, 1.5), NORM)
    assert a.key() != b.key() and a.key() == PreprocessSettings((1.0, 1.0, 1.0), NORM).key()


def test_labels_outside_the_nonzero_image_survive_the_round_trip() -> None:
    image = np.zeros((1, 10, 12, 14), np.float32)
    image[0, 3:7, 3:9, 3:11] = 100.0
    label = np.zeros((10, 12, 14), np.int16)
    label[4:6, 4:8, 4:10] = 1
    label[8, 1, 12] = 2  # a labelled voxel where the image is zero (a mask drawn on a template)
    geom = Geometry.from_canonical_spec((10, 12, 14), (1.0, 1.0, 1.0))
    _, seg, props = preprocess_arrays(image, label, geom, PreprocessSettings((1.0, 1.0, 1.0), NORM))
    np.testing.assert_array_equal(revert_to_canonical(seg, props, is_label=True), label)
