"""dataset.json schema, case discovery and header checks: every problem reported at once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segvolpipe.errors import Problems, UserError
from segvolpipe.io.dataset import DatasetSpec, load_training_cases
from segvolpipe.io.nifti import Geometry, write_volume
from tests.conftest import make_blob_dataset


def _spec(**over) -> dict:
    base = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}, "numTraining": 2, "file_ending": ".nii.gz"}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"labels": None}, "missing key 'labels'"),
        ({"numTraining": "2"}, "'numTraining' must be an integer"),
        ({"labels": {"background": 0, "liver": 2}}, "consecutive"),
        ({"labels": {"liver": 1}}, "background"),
        ({"labels": {"background": 0, "liver": [1, 2]}}, "region-based"),
        ({"channel_names": {"1": "CT"}}, "consecutive from '0'"),
        ({"file_ending": ".mha"}, "file_ending"),
    ],
)
def test_dataset_json_problems(over: dict, message: str) -> None:
    with pytest.raises(Problems) as info:
        DatasetSpec.from_json(_spec(**over), Path("dataset.json"))
    assert any(message in line for line in info.value.lines())


def test_valid_spec() -> None:
    spec = DatasetSpec.from_json(_spec(labels={"liver": 1, "background": 0}), Path("dataset.json"))
    assert spec.labels == (("background", 0), ("liver", 1))
    assert spec.foreground_labels == (("liver", 1),)


def test_blob_dataset_loads(tmp_path: Path) -> None:
    folder = make_blob_dataset(tmp_path, n=3)
    spec, cases = load_training_cases(folder)
    assert [c.case_id for c in cases] == ["blob_000", "blob_001", "blob_002"]
    assert spec.channel_names == ("CT",)


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    folder = make_blob_dataset(tmp_path, n=4)
    (folder / "labelsTr" / "blob_001.nii.gz").unlink()  # image without label
    (folder / "imagesTr" / "notes.txt").write_text("x")  # extra file
    (folder / "labelsTr" / "ghost.nii.gz").write_bytes(b"")  # label without image
    geom = Geometry.from_canonical_spec((12, 24, 21), (3.0, 0.8, 0.8))
    write_volume(folder / "labelsTr" / "blob_002.nii.gz", np.zeros((12, 24, 21)), geom, np.uint8)  # shape mismatch
    with pytest.raises(Problems) as info:
        load_training_cases(folder)
    text = "\n".join(info.value.lines())
    assert "blob_001" in text and "no label" in text
    assert "notes.txt" in text
    assert "ghost.nii.gz" in text
    assert "blob_002.nii.gz" in text and "shape" in text
    assert "numTraining" not in text  # still 4 image cases


def test_numtraining_mismatch(tmp_path: Path) -> None:
    folder = make_blob_dataset(tmp_path, n=2)
    data = json.loads((folder / "dataset.json").read_text())
    data["numTraining"] = 5
    (folder / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(Problems, match="1 problem"):
        load_training_cases(folder)


def test_affine_mismatch_between_image_and_label(tmp_path: Path) -> None:
    folder = make_blob_dataset(tmp_path, n=2, vary_spacing=False)
    image_geom = Geometry.from_canonical_spec((12, 24, 20), (3.0, 0.8, 0.8), ("R", "A", "S"), (50, 0, 0))
    write_volume(folder / "labelsTr" / "blob_000.nii.gz", np.zeros((12, 24, 20)), image_geom, np.uint8)
    with pytest.raises(Problems) as info:
        load_training_cases(folder)
    assert any("affine differs" in line or "shape" in line for line in info.value.lines())


def test_missing_dataset_json(tmp_path: Path) -> None:
    folder = make_blob_dataset(tmp_path, n=2)
    (folder / "dataset.json").unlink()
    with pytest.raises(UserError, match="dataset.json not found"):
        load_training_cases(folder)


def test_invalid_json_names_the_file(tmp_path: Path) -> None:
    folder = make_blob_dataset(tmp_path, n=2)
    (folder / "dataset.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON") as info:
        load_training_cases(folder)
    assert info.value.path.endswith("dataset.json")


def test_two_channel_case_with_mismatched_channel_grid(tmp_path: Path) -> None:
    folder = make_blob_dataset(tmp_path, n=2, modality="MRI", vary_spacing=False)
    data = json.loads((folder / "dataset.json").read_text())
    data["channel_names"] = {"0": "T1", "1": "T2"}
    (folder / "dataset.json").write_text(json.dumps(data))
    same = Geometry.from_canonical_spec((12, 24, 20), (3.0, 0.8, 0.8), ("R", "A", "S"), (0, 0, 0))
    # blob_000 is stored RAS at the origin, blob_001 LPS at (1, -1, 2) (see make_blob_dataset)
    write_volume(folder / "imagesTr" / "blob_000_0001.nii.gz", np.ones((12, 24, 20)), same, np.float32)
    write_volume(folder / "imagesTr" / "blob_001_0001.nii.gz", np.ones((12, 24, 20)), same, np.float32)
    with pytest.raises(Problems) as info:
        load_training_cases(folder)
    lines = info.value.lines()
    assert len(lines) == 1 and "blob_001_0001.nii.gz" in lines[0] and "affine differs" in lines[0]


def test_4d_image_is_reported_at_dataset_level(tmp_path: Path) -> None:
    import nibabel as nib

    folder = make_blob_dataset(tmp_path, n=2)
    nib.save(nib.Nifti1Image(np.zeros((20, 24, 12, 3), np.int16), np.eye(4)), str(folder / "imagesTr" / "blob_001_0000.nii.gz"))
    with pytest.raises(Problems) as info:
        load_training_cases(folder)
    assert any("blob_001_0000.nii.gz: expected a 3D volume, got a 4D image" in line for line in info.value.lines())
