"""Canonical grid, orientation round trips and unreadable files."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segvolpipe.errors import UserError
from segvolpipe.io.nifti import Geometry, read_image, read_label, read_volume, write_label, write_volume

ORIENTATIONS = [("R", "A", "S"), ("L", "P", "S"), ("L", "A", "S"), ("L", "P", "I"), ("A", "S", "R"), ("S", "R", "A")]


@pytest.mark.parametrize("axcodes", ORIENTATIONS)
def test_canonical_round_trip_any_orientation(tmp_path: Path, axcodes: tuple[str, str, str]) -> None:
    canonical = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    geom = Geometry.from_canonical_spec((5, 6, 7), (3.0, 0.7, 0.9), axcodes, (10.0, -5.0, 2.0))
    assert geom.axcodes == axcodes
    assert geom.canonical_shape == (5, 6, 7)
    path = tmp_path / "img.nii.gz"
    write_volume(path, canonical, geom, np.float32)
    back, geom2 = read_volume(path)
    np.testing.assert_array_equal(back, canonical)
    np.testing.assert_allclose(geom2.spacing, (3.0, 0.7, 0.9), rtol=1e-6)
    assert geom2.axcodes == axcodes
    # the file really is stored in that orientation: nibabel agrees
    img = nib.load(str(path))
    assert nib.aff2axcodes(img.affine) == axcodes
    # the same world point holds the same value in file and canonical grids
    ijk = np.array([1, 2, 3])
    world = img.affine @ np.r_[ijk, 1]
    cijk = np.linalg.inv(np.asarray(geom2.canonical_affine)) @ world
    assert back[tuple(np.round(cijk[:3]).astype(int))] == np.asarray(img.dataobj)[tuple(ijk)]


def test_canonical_axes_point_superior_anterior_right() -> None:
    geom = Geometry.from_canonical_spec((4, 5, 6), (2.0, 1.0, 1.0), ("L", "P", "I"))
    direction = np.asarray(geom.canonical_affine)[:3, :3]
    # canonical axis 0 moves along world +z (S), axis 1 along +y (A), axis 2 along +x (R)
    assert direction[2, 0] > 0 and direction[1, 1] > 0 and direction[0, 2] > 0


def test_geometry_json_round_trip() -> None:
    geom = Geometry.from_canonical_spec((4, 5, 6), (2.5, 0.8, 0.8), ("L", "P", "S"), (1, 2, 3))
    assert Geometry.from_json(geom.to_json()) == geom


def test_write_label_keeps_exact_affine_and_shape(tmp_path: Path) -> None:
    geom = Geometry.from_canonical_spec((4, 5, 6), (2.5, 0.8, 0.8), ("L", "A", "S"), (1, 2, 3))
    label = np.zeros((4, 5, 6), np.int16)
    label[1:3, 2:4, 1:5] = 2
    write_label(tmp_path / "lab.nii", label, geom)
    img = nib.load(str(tmp_path / "lab.nii"))
    assert img.shape == geom.shape
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, np.asarray(geom.affine), atol=1e-5)
    back, _ = read_label(tmp_path / "lab.nii")
    np.testing.assert_array_equal(back, label)


def test_read_image_stacks_channels_and_rejects_other_grid(tmp_path: Path) -> None:
    g1 = Geometry.from_canonical_spec((4, 5, 6), (2.0, 1.0, 1.0))
    g2 = Geometry.from_canonical_spec((4, 5, 6), (2.0, 1.0, 1.5))
    write_volume(tmp_path / "a_0000.nii.gz", np.ones((4, 5, 6)), g1, np.float32)
    write_volume(tmp_path / "a_0001.nii.gz", 2 * np.ones((4, 5, 6)), g1, np.float32)
    write_volume(tmp_path / "a_0002.nii.gz", np.ones((4, 5, 6)), g2, np.float32)
    arr, _ = read_image([tmp_path / "a_0000.nii.gz", tmp_path / "a_0001.nii.gz"])
    assert arr.shape == (2, 4, 5, 6) and arr[1].max() == 2
    with pytest.raises(UserError, match="channel grid differs"):
        read_image([tmp_path / "a_0000.nii.gz", tmp_path / "a_0002.nii.gz"])


def _raw(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _patched_spacing(tmp_path: Path, value: float, code: int = 0) -> Path:
    """A .nii whose header says pixdim[1] = value, with qform/sform codes ``code`` (0: affine from pixdim)."""
    path = _save(tmp_path, np.zeros((4, 5, 6), np.float32), name="bad.nii")
    raw = bytearray(path.read_bytes())
    raw[80:84] = np.float32(value).tobytes()  # pixdim[1]
    raw[252:254] = np.int16(code).tobytes()  # qform_code
    raw[254:256] = np.int16(code).tobytes()  # sform_code
    if code:
        raw[280:292] = np.zeros(3, np.float32).tobytes()  # srow_x = 0: a singular sform
    path.write_bytes(bytes(raw))
    return path


def _save(tmp_path: Path, data: np.ndarray, affine: np.ndarray | None = None, name: str = "x.nii.gz") -> Path:
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: _raw(p / "e.nii.gz", b""), "empty"),
        (lambda p: _raw(p / "t.nii.gz", b"hello, not nifti"), "not a readable NIfTI"),
        (lambda p: _save(p, np.zeros((4, 5), np.float32)), "2D"),
        (lambda p: _save(p, np.zeros((4, 5, 6, 2), np.float32)), "4D"),
        (lambda p: _patched_spacing(p, 0.0), "zero or negative voxel spacing"),
        (lambda p: _patched_spacing(p, float("nan")), "NaN or Inf"),
        (lambda p: _patched_spacing(p, -1.0, code=1), "zero voxel spacing|singular|NaN|not a readable"),
        (lambda p: p / "missing.nii.gz", "not found"),
    ],
)
def test_bad_files_give_one_clear_error(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(UserError, match=message) as info:
        read_volume(path)
    assert info.value.path == str(path)
    assert "\n" not in info.value.line()


def test_truncated_gzip_is_reported(tmp_path: Path) -> None:
    path = _save(tmp_path, np.random.default_rng(0).normal(size=(30, 30, 30)).astype(np.float32))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match="truncated|not a readable"):
        read_volume(path)


def test_trailing_singleton_dimension_is_accepted(tmp_path: Path) -> None:
    path = _save(tmp_path, np.ones((4, 5, 6, 1), np.float32))
    arr, geom = read_volume(path)
    assert arr.shape == (6, 5, 4) and geom.shape == (4, 5, 6)


def test_label_with_fractional_values_is_rejected(tmp_path: Path) -> None:
    path = _save(tmp_path, np.full((4, 5, 6), 0.5, np.float32))
    with pytest.raises(UserError, match="non-integer"):
        read_label(path)


def test_uncompressed_nii_gz_suffix_mismatch_still_reads(tmp_path: Path) -> None:
    data = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    path = _save(tmp_path, data, name="plain.nii")
    gz = tmp_path / "z.nii.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    a, _ = read_volume(path, dtype=None)
    b, _ = read_volume(gz, dtype=None)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.int16
