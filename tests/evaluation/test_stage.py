"""``segvol evaluate``: two folders, a model's test split or cross-validation predictions, the rotation test with a
rotation-equivariant known-answer model, the sweep, and the comparison of variants."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from segvolpipe.cli import app
from segvolpipe.evaluation.rotation import SEED_PROTOCOL_ANGLES
from segvolpipe.inference import predictor as predictor_module
from segvolpipe.inference.model_folder import FoldModel
from segvolpipe.io.nifti import Geometry, read_label, write_label, write_volume
from tests.conftest import AXCODES, blob_case, tiny_model_folder
from tests.inference.test_predict import LiverByIntensity

runner = CliRunner()
SHAPE = (16, 32, 28)
DATASET_JSON = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "spleen": 2},
                "numTraining": 3, "file_ending": ".nii.gz"}


def _write_split(folder: Path, split: str, seeds: list[int]) -> None:
    """Cases ``blob_{seed}``: the blob phantom's liver at 100 on 0 (+ noise), so the known-answer model finds it;
    stored in varied orientations."""
    for d in (f"images{split}", f"labels{split}"):
        (folder / d).mkdir(parents=True, exist_ok=True)
    for k, seed in enumerate(seeds):
        _, label = blob_case(SHAPE, seed)
        image = (100.0 * (label == 1) + np.random.default_rng(seed).normal(0, 3, SHAPE)).astype(np.float32)
        geometry = Geometry.from_canonical_spec(SHAPE, (2.0, 1.0, 1.0), AXCODES[k % len(AXCODES)], (k, -k, 2 * k))
        write_volume(folder / f"images{split}" / f"blob_{seed:03d}_0000.nii.gz", image, geometry, np.float32)
        write_label(folder / f"labels{split}" / f"blob_{seed:03d}.nii.gz", label, geometry)


@pytest.fixture()
def model_folder(roots: dict[str, Path]) -> Path:
    """``results/Dataset012_Blobs/segvol__3d_lite`` with an untrained tiny fold 0 over three training cases,
    planned without normalisation (intensities stay as written for the known-answer model)."""
    raw = roots["raw"] / "Dataset012_Blobs"
    _write_split(raw, "Tr", [0, 1, 2])
    (raw / "dataset.json").write_text(json.dumps(DATASET_JSON))
    return tiny_model_folder(roots, "12")


@pytest.fixture()
def known_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every loaded fold model is :class:`LiverByIntensity`: text "liver" thresholds the intensity (equivariant
    under rotation), a box prompt paints its box, anything else finds nothing."""
    original = predictor_module.load_fold_models

    def load(folder, folds, checkpoint, device):
        spec, models = original(folder, folds, checkpoint, device)
        return spec, [FoldModel(m.fold, m.path, LiverByIntensity(spec)) for m in models]

    monkeypatch.setattr(predictor_module, "load_fold_models", load)


def _evaluate(*args: str):
    return runner.invoke(app, ["evaluate", *args, "--np", "1", "--no-progress"])


def _validation(folder: Path, raw: Path, fold: str, case: str, drop_spleen: bool = False) -> None:
    """A cross-validation prediction of ``case`` by ``fold``: its reference (without the spleen if asked)."""
    if not (folder / f"fold_{fold}" / "checkpoint_final.pt").exists():
        shutil.copytree(folder / "fold_0", folder / f"fold_{fold}", ignore=shutil.ignore_patterns("validation"))
    label, geometry = read_label(raw / "labelsTr" / f"{case}.nii.gz")
    if drop_spleen:
        label = np.where(label == 2, 0, label)
    write_label(folder / f"fold_{fold}" / "validation" / f"{case}.nii.gz", label, geometry)


def test_two_folders_are_scored_and_a_missing_prediction_is_listed(tmp_path: Path) -> None:
    geometry = Geometry.from_canonical_spec((6, 8, 8), (1.0, 1.0, 2.0), ("L", "P", "S"))
    ref, pred = np.zeros((6, 8, 8), np.int16), np.zeros((6, 8, 8), np.int16)
    ref[1:3, 2:4, 2:4] = 1  # 8 voxels; the prediction is shifted by 1 along x: 4 overlap, 4 false positives
    pred[1:3, 2:4, 3:5] = 1
    ref[4, 0:2, 0:2] = pred[4, 0:2, 0:2] = 2
    dataset = tmp_path / "Dataset001_Hand"
    for name, arrays in (("labelsTr", {"a": ref, "b": ref}), ("pred", {"a": pred})):
        for case, array in arrays.items():
            (dataset / name).mkdir(parents=True, exist_ok=True)
            write_label(dataset / name / f"{case}.nii.gz", array, geometry)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({**DATASET_JSON, "labels": {"background": 0, "a": 1, "b": 2}}))
    result = _evaluate("--pred", str(dataset / "pred"), "--ref", str(dataset / "labelsTr"), "--labels", str(labels))
    assert result.exit_code == 2, result.output
    assert "no prediction for case b" in result.output and "1 case(s) failed" in result.output
    assert "Traceback" not in result.output
    summary = json.loads((dataset / "pred" / "summary.json").read_text())
    case_a = summary["metric_per_case"][0]
    assert summary["n_cases"] == 1 and case_a["case"] == "a"
    assert case_a["metrics"]["1"]["Dice"] == pytest.approx(0.5) and case_a["metrics"]["1"]["IoU"] == pytest.approx(1 / 3)
    assert case_a["metrics"]["2"]["Dice"] == 1.0 and case_a["metrics"]["1"]["pred_ml"] == pytest.approx(8 * 2e-3)
    assert summary["foreground_mean"]["Dice"] == pytest.approx(0.75) and summary["failures"][0]["case"] == "b"
    rows = list(csv.DictReader((dataset / "pred" / "per_case.csv").open()))
    assert [(r["case"], r["name"], float(r["Dice"])) for r in rows] == [("a", "a", 0.5), ("a", "b", 1.0)]
    # labels from the dataset.json beside the reference folder; -o elsewhere
    (dataset / "dataset.json").write_text(labels.read_text())
    (dataset / "labelsTr" / "b.nii.gz").unlink()
    out = tmp_path / "scores"
    again = _evaluate("--pred", str(dataset / "pred"), "--ref", str(dataset / "labelsTr"), "-o", str(out))
    assert again.exit_code == 0, again.output
    assert json.loads((out / "summary.json").read_text())["labels_file"] == str(dataset / "dataset.json")
    # bad inputs: one line, exit 2
    (dataset / "dataset.json").unlink()
    no_labels = _evaluate("--pred", str(dataset / "pred"), "--ref", str(dataset / "labelsTr"))
    assert no_labels.exit_code == 2 and "give --labels" in no_labels.output
    alone = _evaluate("--pred", str(dataset / "pred"))
    assert alone.exit_code == 2 and "--pred and --ref go together" in alone.output
    bad_angles = _evaluate("--angles", "45,x")
    assert bad_angles.exit_code == 2 and "--angles" in bad_angles.output


def test_a_test_split_is_predicted_scored_and_rotated_and_a_rerun_reuses_it(model_folder, known_answer, roots):
    raw = roots["raw"] / "Dataset012_Blobs"
    _write_split(raw, "Ts", [100, 101])
    result = _evaluate()  # no argument: the only trained model; the seed protocol's rotation, text prompts, zoom
    assert result.exit_code == 0, result.output
    out = model_folder / "evaluation"
    for name in ("summary.json", "per_case.csv", "dice_violins.png", "overlay_blob_100.png", "overlay_blob_101.png",
                 "rotation.json", "rotation_bars.png", "test_predictions/blob_100.nii.gz",
                 "test_predictions/predictions.json"):
        assert (out / name).is_file(), name
    assert not (out / "dice_vs_angle.png").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["source"] == "test" and summary["n_cases"] == 2 and summary["failures"] == []
    assert summary["mean"]["1"]["Dice"] > 0.9 and summary["mean"]["2"]["Dice"] == 0.0  # text finds no spleen
    rotation = json.loads((out / "rotation.json").read_text())
    assert rotation["settings"]["prompt"] == "text" and rotation["settings"]["mode"] == "zoom"
    assert rotation["settings"]["angles_rad"] == pytest.approx(list(SEED_PROTOCOL_ANGLES))
    assert rotation["n_cases"] == 2 and set(rotation["cases"]) == {"blob_100", "blob_101"}
    liver = rotation["classes"]["liver"]
    assert set(liver) == {"upright", "rotated", "drop", "consistency", "n_cases"}
    # the upright prediction is the test prediction; an equivariant model loses (almost) nothing by rotation
    assert all(c["upright_reused"] for c in rotation["cases"].values())
    assert liver["upright"] == pytest.approx(summary["mean"]["1"]["Dice"])
    # (tolerance: the cubic image and the nearest-neighbour reference disagree on some boundary voxels of a blob
    # of ~300 voxels)
    assert abs(liver["drop"]) < 0.08 and liver["rotated"] > 0.88 and liver["consistency"] > 0.88
    assert rotation["classes"]["spleen"]["upright"] == 0.0 and rotation["mean"]["upright"] == pytest.approx(
        (liver["upright"] + 0.0) / 2)
    assert "rotation test" in result.output and "consistency" in result.output
    # a rerun: predictions and rotation cases are reused, the results are the same; an overlay of a case no
    # longer evaluated (an earlier version of the dataset) is removed
    (out / "overlay_gone.png").write_bytes(b"stale")
    again = _evaluate()
    assert again.exit_code == 0, again.output
    assert "already done" in again.output and "already predicted" in again.output
    assert not (out / "overlay_gone.png").exists() and (out / "overlay_blob_100.png").is_file()
    rerun = json.loads((out / "rotation.json").read_text())
    assert rerun["cases"] == rotation["cases"] and rerun["classes"] == rotation["classes"]
    assert not list(out.rglob("*.tmp*"))


def test_cross_validation_predictions_and_the_model_resolution(model_folder, known_answer, roots):
    raw = roots["raw"] / "Dataset012_Blobs"
    _validation(model_folder, raw, "0", "blob_000")
    _validation(model_folder, raw, "1", "blob_001", drop_spleen=True)
    result = _evaluate("--mode", "sliding", "--prompt", "box+text", "--angles", "30")
    assert result.exit_code == 0, result.output
    out = model_folder / "evaluation"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["source"] == "cross-validation" and summary["n_cases"] == 2
    per_case = {c["case"]: c["metrics"] for c in summary["metric_per_case"]}
    assert per_case["blob_000"]["1"]["Dice"] == 1.0 and per_case["blob_000"]["2"]["Dice"] == 1.0
    assert per_case["blob_001"]["2"]["Dice"] == 0.0
    assert not (out / "test_predictions").exists()
    rotation = json.loads((out / "rotation.json").read_text())
    assert {c: r["fold"] for c, r in rotation["cases"].items()} == {"blob_000": "0", "blob_001": "1"}
    assert rotation["settings"]["prompt"] == "box+text" and rotation["settings"]["angles_rad"] == pytest.approx(
        [math.radians(30), 0, 0])
    # box prompts paint the reference's box: both classes are found upright and rotated (neither reused)
    assert all(not c["upright_reused"] for c in rotation["cases"].values())
    for name in ("liver", "spleen"):
        assert 0.4 < rotation["classes"][name]["upright"] < 0.95 and rotation["classes"][name]["rotated"] > 0.4
    # a second trained model makes the choice ambiguous; -d/--variant picks one
    shutil.copytree(model_folder, model_folder.parent / "so3__3d_lite")
    ambiguous = _evaluate()
    assert ambiguous.exit_code == 2 and "several trained models" in ambiguous.output
    assert "segvol__3d_lite" in ambiguous.output and "so3__3d_lite" in ambiguous.output
    picked = _evaluate("-d", "12", "--variant", "so3", "--no-rotate")
    assert picked.exit_code == 0, picked.output
    assert (model_folder.parent / "so3__3d_lite" / "evaluation" / "summary.json").is_file()


def test_sweep_gives_dice_against_angle(model_folder, known_answer, roots):
    nothing = _evaluate()
    assert nothing.exit_code == 2 and "nothing to evaluate" in nothing.output
    _validation(model_folder, roots["raw"] / "Dataset012_Blobs", "0", "blob_002")
    result = _evaluate("--sweep", "0,90", "--mode", "sliding", "--cases", "1")
    assert result.exit_code == 0, result.output
    out = model_folder / "evaluation"
    rotation = json.loads((out / "rotation.json").read_text())
    sweep = rotation["sweep"]
    assert sweep["angles_deg"] == [0.0, 90.0] and set(sweep["classes"]) == {"liver", "spleen"}
    case = rotation["cases"]["blob_002"]
    assert set(case["sweep"]) == {"0", "90"} and case["sweep"]["0"] == case["upright"]
    assert sweep["classes"]["liver"][0] == pytest.approx(rotation["classes"]["liver"]["upright"])
    assert sweep["classes"]["liver"][1] > 0.88 and len(sweep["mean"]) == 2
    assert (out / "dice_vs_angle.png").is_file() and "Dice against rotation" in result.output
    no_rotation = _evaluate("--no-rotate", "--sweep", "0,90")
    assert no_rotation.exit_code == 2 and "drop --no-rotate" in no_rotation.output


def test_compare_reads_every_variant(model_folder, known_answer, roots):
    _validation(model_folder, roots["raw"] / "Dataset012_Blobs", "0", "blob_000")
    assert _evaluate("--mode", "sliding", "--sweep", "0,45").exit_code == 0
    so3 = model_folder.parent / "so3__3d_lite"
    shutil.copytree(model_folder, so3)
    rotation = json.loads((so3 / "evaluation" / "rotation.json").read_text())
    rotation["mean"].update(upright=0.9, rotated=0.85, drop=0.05)
    rotation["seconds_per_case"]["upright"] = 2.0
    (so3 / "evaluation" / "rotation.json").write_text(json.dumps(rotation))
    shutil.copytree(model_folder, model_folder.parent / "unet__3d_lite", ignore=shutil.ignore_patterns("evaluation"))
    result = _evaluate("--compare", "-d", "12")
    assert result.exit_code == 0, result.output
    base = model_folder.parent
    comparison = json.loads((base / "comparison.json").read_text())
    rows = {r["variant"]: r for r in comparison["rows"]}
    assert set(rows) == {"segvol", "so3", "unet"} and not rows["unet"]["evaluated"]
    assert rows["so3"]["upright"] == 0.9 and rows["so3"]["drop"] == 0.05 and rows["so3"]["seconds"] == 2.0
    own = json.loads((model_folder / "evaluation" / "rotation.json").read_text())["mean"]
    assert rows["segvol"]["upright"] == own["upright"] and rows["segvol"]["drop"] == own["drop"]
    assert rows["segvol"]["cases"] == 1 and 0.4 < rows["segvol"]["upright"] < 0.6  # liver ≈ 1, spleen 0
    assert (base / "comparison.png").is_file() and (base / "dice_vs_angle.png").is_file()
    assert "not evaluated" in result.output and "so3" in result.output
    (so3 / "evaluation" / "summary.json").write_text("{broken")
    broken = _evaluate("--compare")
    assert broken.exit_code == 2 and "summary.json" in broken.output and "not valid JSON" in broken.output
