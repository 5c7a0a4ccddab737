"""``segvol plan-preprocess`` end to end through the CLI: the folder contract, idempotence, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from segvolpipe.cli import app
from segvolpipe.io.atomic import load_npy
from tests.conftest import make_blob_dataset

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_folder_contract_and_idempotence(roots: dict[str, Path]) -> None:
    make_blob_dataset(roots["raw"], 500, n=5)
    result = _run("plan-preprocess", "-d", "500", "--np", "2", "--no-progress")
    assert result.exit_code == 0, result.output
    out = roots["preprocessed"] / "Dataset500_Blobs"
    cases = [f"blob_{i:03d}" for i in range(5)]
    expected = {"dataset.json", "fingerprint.json", "plans.json", "splits.json", "preprocess_report.json"}
    for conf in ("3d_lite", "3d_segvol"):
        expected |= {f"{conf}/{c}{suffix}" for c in cases for suffix in (".npy", "_seg.npy", ".json")}
    assert set(_snapshot(out)) == expected
    for name in ("fingerprint.json", "plans.json", "splits.json"):
        data = json.loads((out / name).read_text())
        assert data["schema_version"] == 1 and data["provenance"]["package"] == "segvolpipe"
    data = load_npy(out / "3d_lite" / "blob_000.npy", mmap=True)
    seg = load_npy(out / "3d_lite" / "blob_000_seg.npy", mmap=True)
    props = json.loads((out / "3d_lite" / "blob_000.json").read_text())
    assert isinstance(data, np.memmap) and data.dtype == np.float32 and data.ndim == 4
    assert seg.dtype == np.int8 and data.shape[1:] == seg.shape == tuple(props["shape_after_resampling"])
    assert set(np.unique(seg)) <= {0, 1, 2}
    # a rerun changes nothing
    before = _snapshot(out)
    again = _run("plan-preprocess", "-d", "Dataset500_Blobs", "--np", "2", "--no-progress")
    assert again.exit_code == 0 and "0 preprocessed, 5 unchanged" in again.output
    after = _snapshot(out)
    changed = {k for k in before if before[k] != after[k]}
    assert changed <= {"preprocess_report.json"}, changed
    # --overwrite redoes the work
    redo = _run("plan-preprocess", "-d", "500", "--np", "1", "--overwrite", "--no-progress", "-c", "3d_lite")
    assert redo.exit_code == 0 and "5 preprocessed" in redo.output
    assert _snapshot(out)["3d_lite/blob_000.npy"] != before["3d_lite/blob_000.npy"]
    np.testing.assert_array_equal(load_npy(out / "3d_lite" / "blob_000.npy"), np.asarray(data))


def test_changed_raw_case_is_redone(roots: dict[str, Path]) -> None:
    folder = make_blob_dataset(roots["raw"], 500, n=3)
    assert _run("plan-preprocess", "-d", "500", "-c", "3d_lite", "--np", "1", "--no-progress").exit_code == 0
    image = folder / "imagesTr" / "blob_001_0000.nii.gz"
    image.write_bytes(image.read_bytes())  # same content, new mtime → its input hash changes
    result = _run("plan-preprocess", "-d", "500", "-c", "3d_lite", "--np", "1", "--no-progress")
    assert result.exit_code == 0 and "1 preprocessed, 2 unchanged" in result.output


def test_fingerprint_only_and_plan_only(roots: dict[str, Path]) -> None:
    make_blob_dataset(roots["raw"], 500, n=3)
    out = roots["preprocessed"] / "Dataset500_Blobs"
    assert _run("plan-preprocess", "--fingerprint-only", "--no-progress").exit_code == 0
    assert {p.name for p in out.iterdir()} == {"fingerprint.json", "dataset.json"}
    assert _run("plan-preprocess", "--plan-only", "--no-progress", "--gpu-memory-gb", "80").exit_code == 0
    assert {p.name for p in out.iterdir()} == {"fingerprint.json", "dataset.json", "plans.json", "splits.json"}
    assert json.loads((out / "plans.json").read_text())["default_configuration"] == "3d_segvol"


def test_norm_override_replans(roots: dict[str, Path]) -> None:
    make_blob_dataset(roots["raw"], 500, n=3)
    assert _run("plan-preprocess", "--plan-only", "--no-progress").exit_code == 0
    assert _run("plan-preprocess", "--plan-only", "--no-progress", "--norm", "segvol").exit_code == 0
    plans = json.loads((roots["preprocessed"] / "Dataset500_Blobs" / "plans.json").read_text())
    assert plans["normalization"][0]["scheme"] == "segvol"
    bad = _run("plan-preprocess", "--plan-only", "--no-progress", "--norm", "zscor")
    assert bad.exit_code == 2 and "did you mean 'zscore'" in bad.output


def test_bad_dataset_exits_2_and_writes_nothing(roots: dict[str, Path]) -> None:
    folder = make_blob_dataset(roots["raw"], 500, n=3)
    (folder / "labelsTr" / "blob_002.nii.gz").write_bytes(b"garbage")
    (folder / "imagesTr" / "blob_000_0001.nii.gz").write_bytes(b"")
    result = _run("plan-preprocess", "-d", "500", "--no-progress")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert any("blob_002.nii.gz" in line and "not a readable NIfTI" in line for line in lines)
    assert any("blob_000_0001.nii.gz" in line and "channel 1" in line for line in lines)
    assert "Traceback" not in result.output
    assert not (roots["preprocessed"] / "Dataset500_Blobs").exists()


def test_unknown_dataset_and_configuration(roots: dict[str, Path]) -> None:
    make_blob_dataset(roots["raw"], 500, n=2)
    result = _run("plan-preprocess", "-d", "7", "--no-progress")
    assert result.exit_code == 2 and "no dataset '7'; existing: Dataset500_Blobs" in result.output
    result = _run("plan-preprocess", "-c", "3d_ful", "--no-progress")
    assert result.exit_code == 2 and "unknown configuration '3d_ful'" in result.output


def test_unknown_flag_is_rejected() -> None:
    result = runner.invoke(app, ["plan-preprocess", "--epochs", "3"])
    assert result.exit_code == 2 and "No such option" in result.output


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("make-phantoms", "plan-preprocess", "pseudomask", "models", "demo"):
        assert cmd in result.output


def test_grid_and_data_problems_found_while_fingerprinting(roots: dict[str, Path]) -> None:
    """With no missing files, headers are checked in the fingerprint pass: still all at once, still nothing written."""
    from segvolpipe.io.nifti import Geometry, write_label, write_volume

    folder = make_blob_dataset(roots["raw"], 500, n=3, vary_spacing=False)
    moved = Geometry.from_canonical_spec((12, 24, 20), (3.0, 0.8, 0.8), ("R", "A", "S"), (40.0, 0.0, 0.0))
    write_label(folder / "labelsTr" / "blob_000.nii.gz", np.zeros((12, 24, 20), np.int16), moved)
    nan_image = np.full((12, 24, 20), np.nan, np.float32)
    lps = Geometry.from_canonical_spec((12, 24, 20), (3.0, 0.8, 0.8), ("L", "P", "S"), (1.0, -1.0, 2.0))
    write_volume(folder / "imagesTr" / "blob_001_0000.nii.gz", nan_image, lps, np.float32)
    result = _run("plan-preprocess", "-d", "500", "--np", "2", "--no-progress")
    assert result.exit_code == 2
    text = result.output
    assert "blob_000.nii.gz: affine differs from blob_000_0000.nii.gz" in text
    assert "blob_001_0000.nii.gz: 5760 voxel(s) are NaN or Inf" in text
    assert not (roots["preprocessed"] / "Dataset500_Blobs").exists()
