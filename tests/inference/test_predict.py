"""``segvol predict``: original geometry for any orientation, prompts in file voxels and world mm, folds, errors,
resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from segvolpipe.cli import app
from segvolpipe.inference import predictor as predictor_module
from segvolpipe.inference.model_folder import FoldModel
from segvolpipe.inference.predictor import Predictor
from segvolpipe.inference.prompts import UserPrompt, canonical_to_preprocessed, locate, to_canonical
from segvolpipe.io.nifti import Geometry, read_image, read_label, write_volume
from tests.conftest import blob_case, make_blob_dataset, tiny_model_folder

runner = CliRunner()


class LiverByIntensity(nn.Module):
    """A known-answer "model": the liver prompt (vocabulary 0) finds voxels brighter than 50 (see :func:`_liver_image`);
    a box prompt paints its box; nothing else is found."""

    promptable = True

    def __init__(self, spec) -> None:
        super().__init__()
        self.spec = spec
        self.input_size = spec.vit.input_size

    def forward(self, image, prompts):
        b, p = prompts.text.shape
        out = torch.full((b, p, *self.input_size), -10.0)
        liver = (image[:, 0] - 50.0) / 5.0
        for j in range(p):
            if prompts.boxes is not None and (prompts.box_mask is None or bool(prompts.box_mask[0, j])):
                lo, hi = prompts.boxes[0, j, :3].long(), prompts.boxes[0, j, 3:].long()
                out[:, j, lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1] = 10.0
            elif int(prompts.text[0, j]) == 0:
                out[:, j] = liver
        return out


@pytest.fixture()
def model_folder(roots: dict[str, Path]) -> Path:
    """A results folder with an (untrained) tiny segvol fold 0 over a blob dataset preprocessed without
    normalisation (so that intensities stay in HU for the known-answer model)."""
    make_blob_dataset(roots["raw"], 12, n=4, shape=(16, 32, 28))
    return tiny_model_folder(roots, "12")


@pytest.fixture()
def known_answer(monkeypatch):
    """Swap every loaded fold model for :class:`LiverByIntensity`."""
    original = predictor_module.load_fold_models

    def load(folder, folds, checkpoint, device):
        spec, models = original(folder, folds, checkpoint, device)
        return spec, [FoldModel(m.fold, m.path, LiverByIntensity(spec)) for m in models]

    monkeypatch.setattr(predictor_module, "load_fold_models", load)


def _liver_image(shape, seed):
    """The blob phantom's liver at 100 on 0 (+ noise): a cubic resampling's overshoot at its edge stays far below
    the known-answer model's threshold of 50, so the expected prediction is the liver itself."""
    _, label = blob_case(shape, seed)
    noise = np.random.default_rng(seed).normal(0, 3, shape)
    return (100.0 * (label == 1) + noise).astype(np.float32), label


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


@pytest.mark.parametrize("axcodes, shape, spacing", [
    (("R", "A", "S"), (16, 32, 28), (2.5, 0.9, 0.9)),
    (("L", "P", "S"), (15, 33, 27), (3.0, 0.8, 0.8)),   # odd sizes
    (("L", "A", "S"), (17, 31, 29), (2.0, 1.0, 1.0)),
    (("A", "S", "R"), (14, 30, 26), (4.0, 0.7, 0.75)),  # sagittal storage, strongly anisotropic
])
@pytest.mark.parametrize("mode", ["zoom", "sliding"])
def test_predictions_keep_the_inputs_geometry_and_find_the_object(model_folder, known_answer, tmp_path, axcodes,
                                                                    shape, spacing, mode):
    image, label = _liver_image(shape, seed=3)
    geometry = Geometry.from_canonical_spec(shape, spacing, axcodes, (5.0, -7.0, 11.0))
    src = tmp_path / "in"
    src.mkdir()
    write_volume(src / "case_0000.nii.gz", image, geometry, np.int16)
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", "-i", str(src), "-o", str(out), "--mode", mode, "--classes", "liver",
                                 "--save-probabilities", "--no-progress"])
    assert result.exit_code == 0, result.output
    written, source = nib.load(out / "case.nii.gz"), nib.load(src / "case_0000.nii.gz")
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    assert nib.aff2axcodes(written.affine) == axcodes and written.get_data_dtype() == np.uint8
    predicted, _ = read_label(out / "case.nii.gz")
    assert _dice(predicted == 1, label == 1) > 0.9
    probs = np.load(out / "case_probabilities.npz", allow_pickle=False)
    assert probs["probabilities"].shape == (1, *source.shape) and probs["names"].tolist() == ["liver"]
    record = json.loads((out / "predictions.json").read_text())
    assert record["settings"]["mode"] == mode and record["cases"]["case"]["status"] == "done"
    voxel_ml = float(np.prod(spacing)) / 1000
    assert record["cases"]["case"]["volumes_ml"]["liver"] == pytest.approx((predicted == 1).sum() * voxel_ml, abs=1e-3)


@pytest.mark.parametrize("axcodes", [("R", "A", "S"), ("L", "P", "S"), ("P", "I", "L")])
def test_voxel_and_world_prompts_land_on_the_same_preprocessed_voxel(axcodes):
    shape = (12, 20, 18)
    geometry = Geometry.from_canonical_spec(shape, (3.0, 0.8, 0.9), axcodes, (10.0, 20.0, -30.0))
    marker = np.zeros(shape, np.float32)
    marker[7, 13, 4] = 1.0
    file_index = np.argwhere(geometry.from_canonical(marker) == 1)[0]
    world = np.asarray(geometry.affine) @ np.r_[file_index, 1.0]
    props = {"bbox": [[0, n] for n in shape], "cropped_shape": list(shape), "shape_after_resampling": list(shape),
             "canonical_shape": list(shape)}
    for coords, value in (("voxel", file_index), ("world", world[:3])):
        assert np.allclose(to_canonical([value], geometry, coords)[0], (7, 13, 4))
        target = locate(UserPrompt(points=((*map(float, value), 1),), coords=coords), geometry, props, -1, "f")
        assert np.allclose(target.points[0][:3], (7, 13, 4))
    corner = np.asarray(geometry.affine) @ np.r_[np.array(geometry.shape) - 1, 1.0]
    box = locate(UserPrompt(box=(*world[:3], *corner[:3]), coords="world"), geometry, props, -1, "f").box
    assert box is not None and all(box[a] <= (7, 13, 4)[a] <= box[a + 3] for a in range(3))
    # through a crop and a resampling: a linear resampling of a coordinate ramp samples exactly these positions
    from segvolpipe.preprocessing.resampling import resample_soft
    props2 = {**props, "bbox": [[2, 12], [4, 20], [0, 18]], "cropped_shape": [10, 16, 18],
              "shape_after_resampling": [20, 16, 9]}
    mapped = canonical_to_preprocessed(np.array([[7.0, 13.0, 4.0]]), props2)[0]
    assert np.allclose(mapped, [10.5, 9.0, 1.75])
    ramp = np.broadcast_to(np.arange(2, 12, dtype=np.float32)[:, None, None], (10, 16, 18))[None]
    z_positions = resample_soft(np.ascontiguousarray(ramp), (20, 16, 9))[0, :, 0, 0]
    assert z_positions[10] == pytest.approx(7.0 - 0.25) and z_positions[11] == pytest.approx(7.0 + 0.25)


def test_box_and_point_prompts_from_the_command_line(model_folder, known_answer, tmp_path):
    shape = (16, 32, 28)
    image, _ = blob_case(shape, seed=1)
    geometry = Geometry.from_canonical_spec(shape, (2.0, 1.0, 1.0), ("L", "P", "S"))
    src = tmp_path / "one_0000.nii.gz"
    write_volume(src, image, geometry, np.int16)
    # a box given in file voxels (i, j, k = L, P, S axes): canonical z 4..9, y 10..20, x 8..15
    canonical = np.zeros(shape, np.uint8)
    canonical[4:10, 10:21, 8:16] = 1
    idx = np.argwhere(geometry.from_canonical(canonical))
    lo, hi = idx.min(0), idx.max(0)
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", "-i", str(src), "-o", str(out), "--box", ",".join(map(str, [*hi, *lo])),
                                 "--text", "spleen", "--mode", "sliding", "--no-progress"])
    assert result.exit_code == 0, result.output
    predicted, _ = read_label(out / "one.nii.gz")
    assert _dice(predicted == 2, canonical == 1) > 0.8  # written with the dataset's value for "spleen"
    outside = runner.invoke(app, ["predict", "-i", str(src), "-o", str(tmp_path / "o2"), "--point", "500,1,1",
                                  "--no-progress"])
    assert outside.exit_code == 2 and "lies outside the image" in outside.output and "one_0000.nii.gz" in outside.output
    unknown = runner.invoke(app, ["predict", "-i", str(src), "-o", str(tmp_path / "o3"), "--text", "livr"])
    assert unknown.exit_code == 2 and "did you mean 'liver'" in unknown.output


def test_bad_cases_are_reported_and_the_others_predicted(model_folder, tmp_path):
    shape = (16, 32, 28)
    image, _ = blob_case(shape, seed=2)
    geometry = Geometry.from_canonical_spec(shape, (2.0, 1.0, 1.0))
    src = tmp_path / "in"
    src.mkdir()
    write_volume(src / "good_0000.nii.gz", image, geometry, np.int16)
    write_volume(src / "two_0000.nii.gz", image, geometry, np.int16)
    write_volume(src / "two_0001.nii.gz", image, geometry, np.int16)
    (src / "broken_0000.nii.gz").write_bytes(b"not a nifti at all")
    flat = nib.Nifti1Image(np.zeros((8, 8), np.int16), np.eye(4))
    nib.save(flat, src / "flat_0000.nii.gz")
    (src / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", "-i", str(src), "-o", str(out), "--no-progress"])
    assert result.exit_code == 2
    record = json.loads((out / "predictions.json").read_text())["cases"]
    assert record["good"]["status"] == "done" and (out / "good.nii.gz").is_file()
    assert {c for c, r in record.items() if r["status"] == "failed"} == {"two", "broken", "flat"}
    assert "the model needs 0000" in record["two"]["error"]
    assert "3D" in record["flat"]["error"] and "flat_0000.nii.gz" in record["flat"]["error"]
    assert "broken_0000.nii.gz" in record["broken"]["error"]
    assert "3 case(s) failed" in result.output and "Traceback" not in result.output
    assert not (out / "two.nii.gz").exists() and not list(out.glob("*.tmp*"))


def test_an_interrupted_run_continues_and_equals_an_uninterrupted_one(model_folder, tmp_path, monkeypatch):
    from segvolpipe.inference import stage

    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        image, _ = blob_case((16, 32, 28), seed=i)
        write_volume(src / f"c{i}_0000.nii.gz", image, Geometry.from_canonical_spec((16, 32, 28), (2.0, 1.0, 1.0)),
                     np.int16)
    reference = tmp_path / "reference"
    assert runner.invoke(app, ["predict", "-i", str(src), "-o", str(reference), "--no-progress"]).exit_code == 0

    original, calls = stage.predict_one, []

    def dies_on_the_second_case(job):
        calls.append(job.case.case)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(job)

    monkeypatch.setattr(stage, "predict_one", dies_on_the_second_case)
    out = tmp_path / "out"
    runner.invoke(app, ["predict", "-i", str(src), "-o", str(out), "--no-progress"])
    assert (out / "c0.nii.gz").exists() and not (out / "c1.nii.gz").exists()
    monkeypatch.setattr(stage, "predict_one", original)
    again = runner.invoke(app, ["predict", "-i", str(src), "-o", str(out), "--no-progress"])
    assert again.exit_code == 0 and "skipped" in again.output
    for i in range(3):
        assert np.array_equal(read_label(out / f"c{i}.nii.gz")[0], read_label(reference / f"c{i}.nii.gz")[0])
    assert json.loads((out / "predictions.json").read_text())["cases"]["c0"]["status"] == "done"


def test_folds_are_ensembled_and_the_model_is_found_without_arguments(model_folder, roots, tmp_path):
    shutil.copytree(model_folder / "fold_0", model_folder / "fold_1")
    image, _ = blob_case((16, 32, 28), seed=0)
    geometry = Geometry.from_canonical_spec((16, 32, 28), (2.0, 1.0, 1.0))
    src = tmp_path / "x_0000.nii.gz"
    write_volume(src, image, geometry, np.int16)
    one = Predictor(model_folder, folds=("0",), mode="sliding")
    both = Predictor(model_folder, mode="sliding")
    assert [m.fold for m in both.models] == ["0", "1"]
    img, geom = read_image([src])
    a = one.predict(img, geom, one.targets(), probabilities=True)
    b = both.predict(img, geom, both.targets(), probabilities=True)
    assert np.abs(a.probabilities.astype(np.float32) - b.probabilities.astype(np.float32)).max() < 2e-3
    # no -d / -m: the only trained model; a second one makes the choice ambiguous
    assert runner.invoke(app, ["predict", "-i", str(src), "-o", str(tmp_path / "o"), "--no-progress"]).exit_code == 0
    shutil.copytree(model_folder, model_folder.parent / "so3__3d_lite")
    ambiguous = runner.invoke(app, ["predict", "-i", str(src), "-o", str(tmp_path / "o2")])
    assert ambiguous.exit_code == 2 and "several trained models" in ambiguous.output and "so3__3d_lite" in ambiguous.output
    picked = runner.invoke(app, ["predict", "-i", str(src), "-o", str(tmp_path / "o3"), "-d", "12", "--variant",
                                 "segvol", "--mode", "sliding", "--no-progress"])
    assert picked.exit_code == 0, picked.output


@pytest.mark.parametrize("variant", ["segvol", "unet"])
def test_labels_exported_in_boxes_equal_the_full_export(roots, variant, request):
    """Without ``--save-probabilities`` each target is mapped back only where it can win a voxel; the labels must be
    those of mapping every map back whole (the path taken when the probabilities are kept). The promptable model is
    the known-answer one on a ramp (probabilities across the whole range), the U-Net an untrained one (every class wins somewhere)."""
    if variant == "segvol":
        request.getfixturevalue("known_answer")
    make_blob_dataset(roots["raw"], 12, n=4, shape=(16, 32, 28))
    folder = tiny_model_folder(roots, "12", variant)
    image, _ = _liver_image((15, 33, 27), seed=5)
    image[:, :, :] = np.linspace(40, 60, 27, dtype=np.float32)  # a shallow ramp: probabilities 0.12 to 0.88
    geometry = Geometry.from_canonical_spec((15, 33, 27), (3.0, 0.8, 0.8), ("L", "P", "S"))
    predictor = Predictor(folder, mode="sliding")
    whole = predictor.predict(image[None], geometry, predictor.targets(), probabilities=True)
    boxed = predictor.predict(image[None], geometry, predictor.targets())
    assert boxed.probabilities is None
    assert 0 < (whole.label > 0).sum() < whole.label.size and len(np.unique(whole.label)) > 1
    np.testing.assert_array_equal(boxed.label, whole.label)


def test_wrong_channel_count_and_nan_voxels_are_clear_errors(model_folder, tmp_path):
    predictor = Predictor(model_folder, mode="sliding")
    geometry = Geometry.from_canonical_spec((8, 8, 8), (1.0, 1.0, 1.0))
    with pytest.raises(Exception, match="2 channel\\(s\\), the model needs 1"):
        predictor.predict(np.zeros((2, 8, 8, 8), np.float32), geometry, predictor.targets(), "two.nii.gz")
    bad = np.zeros((1, 8, 8, 8), np.float32)
    bad[0, 1, 1, 1] = np.nan
    with pytest.raises(Exception, match="NaN or infinite"):
        predictor.predict(bad, geometry, predictor.targets(), "nan.nii.gz")
