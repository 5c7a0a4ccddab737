"""Fingerprint: known-answer statistics, bounded sampling, data-level checks reported together."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segvolpipe.errors import Problems
from segvolpipe.fingerprint import ChannelStats, Fingerprint, compute_fingerprint, nonzero_bbox
from segvolpipe.io.dataset import load_training_cases
from segvolpipe.io.nifti import Geometry, write_label, write_volume
from tests.conftest import make_blob_dataset


def test_nonzero_bbox() -> None:
    img = np.zeros((1, 5, 6, 7), np.float32)
    img[0, 1:3, 2:5, 3] = 1
    assert nonzero_bbox(img) == ((1, 3), (2, 5), (3, 4))
    assert nonzero_bbox(np.zeros((1, 2, 2, 2))) is None


def test_channel_stats_known_answer() -> None:
    s = ChannelStats.from_sample(0, "CT", np.arange(1, 101, dtype=np.float32))
    assert s.mean == pytest.approx(50.5)
    assert s.min == 1 and s.max == 100
    assert s.percentile(50.0) == pytest.approx(50.5)
    assert s.percentile(0.5) == pytest.approx(1.495)
    assert ChannelStats.from_json(s.to_json()) == s


def test_fingerprint_of_blob_dataset(tmp_path: Path) -> None:
    folder = make_blob_dataset(tmp_path, n=4)
    spec, cases = load_training_cases(folder)
    fp = compute_fingerprint("Dataset500_Blobs", spec, cases, workers=2, progress=False)
    assert len(fp.cases) == 4
    assert fp.spacings.shape == (4, 3)
    assert fp.spacings[0] == pytest.approx((3.0, 0.8, 0.8), rel=1e-5)
    # foreground of the blob CT is ~100 (liver) and ~20 (spleen) HU, never air
    assert 10 < fp.channels[0].mean < 110 and fp.channels[0].min > -200
    assert {lab["name"] for lab in fp.labels} == {"liver", "spleen"}
    assert all(lab["n_cases_present"] == 4 for lab in fp.labels)
    assert Fingerprint.from_json(fp.to_json()).to_json() == fp.to_json()
    # deterministic, and the same with one worker
    fp1 = compute_fingerprint("Dataset500_Blobs", spec, cases, workers=1, progress=False)
    assert fp1.to_json() == fp.to_json()


def test_sample_is_bounded(tmp_path: Path) -> None:
    folder = make_blob_dataset(tmp_path, n=3)
    spec, cases = load_training_cases(folder)
    fp = compute_fingerprint("D", spec, cases, workers=1, progress=False, max_samples=3000)
    assert fp.samples_per_case == 1000
    assert fp.channels[0].n_samples <= 3000


def test_data_problems_all_reported(tmp_path: Path) -> None:
    folder = make_blob_dataset(tmp_path, n=4, vary_spacing=False)
    geom = Geometry.from_canonical_spec((12, 24, 20), (3.0, 0.8, 0.8), ("R", "A", "S"), (0, 0, 0))
    bad = np.zeros((12, 24, 20), np.float32)
    bad[3, 3, 3] = np.nan
    write_volume(folder / "imagesTr" / "blob_000_0000.nii.gz", bad, geom, np.float32)
    label = np.zeros((12, 24, 20), np.int16)
    label[2, 2, 2] = 7
    g1 = Geometry.from_canonical_spec((12, 24, 20), (3.0, 0.8, 0.8), ("L", "P", "S"), (1, -1, 2))
    write_label(folder / "labelsTr" / "blob_001.nii.gz", label, g1)
    g3 = Geometry.from_canonical_spec((12, 24, 20), (3.0, 0.8, 0.8), ("A", "S", "R"), (3, -3, 6))
    write_volume(folder / "imagesTr" / "blob_003_0000.nii.gz", np.zeros((12, 24, 20)), g3, np.int16)
    spec, cases = load_training_cases(folder)
    with pytest.raises(Problems) as info:
        compute_fingerprint("D", spec, cases, workers=2, progress=False)
    text = "\n".join(info.value.lines())
    assert "blob_000_0000.nii.gz: 1 voxel(s) are NaN or Inf" in text
    assert "blob_001.nii.gz: label values [7] are not declared" in text
    assert "blob_003_0000.nii.gz: image is all zeros" in text
