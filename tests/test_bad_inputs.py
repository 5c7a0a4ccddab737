"""The bad-input matrix: every kind of broken input, run through the real CLI, gives exit code 2 and one
``error: <file>: <problem>`` line, never a traceback; a stage that works case by case still does the good cases
and leaves nothing half-written.

Stages and what "the others go on" means for each:

* ``plan-preprocess`` checks the whole raw dataset first (nnU-Net's integrity check: the fingerprint, the plans
  and the splits need every case) and reports every problem at once; it writes nothing when one is found. The
  good cases must not be blamed.
* ``predict`` and ``evaluate --pred/--ref`` work case by case: the good case is written (or scored), the bad one
  is recorded as failed, and no temporary or final file is left for it.

Volumes are tiny (8×12×10 voxels); the one model is an untrained tiny segvol saved with ``save_checkpoint`` (no
training), built once for the module.

Not a kind here: case ids with ``../`` or absolute paths in dataset.json file lists, since dataset.json has none
(cases are found from file names in imagesTr/labelsTr, which cannot hold ``/``); a ``-d`` naming a path is covered.
A symbolic link to an existing file outside the dataset is followed like a file (linking raw data in is common);
a link to nothing is an error.
"""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from segvolpipe.cli import app
from segvolpipe.io.nifti import Geometry, write_label, write_volume
from segvolpipe.models.registry import build_model
from segvolpipe.models.spec import ModelSpec, spec_from_plans
from segvolpipe.training.checkpoint import TrainState, load_checkpoint, save_checkpoint
from tests.conftest import blob_case

runner = CliRunner()
SHAPE = (8, 12, 10)  # canonical (z, y, x)
GEOMETRY = Geometry.from_canonical_spec(SHAPE, (2.0, 1.0, 1.0))
DATASET_JSON = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "spleen": 2},
                "numTraining": 3, "file_ending": ".nii.gz"}


# -- building blocks ------------------------------------------------------------------------------------------------
def _image(seed: int = 0) -> np.ndarray:
    return blob_case(SHAPE, seed)[0]


def _label(seed: int = 0) -> np.ndarray:
    return blob_case(SHAPE, seed)[1]


def write_image(path: Path, seed: int = 0, geometry: Geometry = GEOMETRY) -> Path:
    write_volume(path, _image(seed), geometry, np.int16)
    return path


def write_raw(raw: Path, dataset_id: int = 17, name: str = "Bad", n: int = 3, channels: int = 1) -> Path:
    """A valid raw dataset of ``n`` blob cases ``case_{i}`` (8×12×10 voxels); returns its folder."""
    folder = raw / f"Dataset{dataset_id:03d}_{name}"
    for i in range(n):
        for c in range(channels):
            write_image(folder / "imagesTr" / f"case_{i}_{c:04d}.nii.gz", i)
        write_label(folder / "labelsTr" / f"case_{i}.nii.gz", _label(i), GEOMETRY)
    spec = {**DATASET_JSON, "numTraining": n, "channel_names": {str(c): "CT" for c in range(channels)}}
    (folder / "dataset.json").write_text(json.dumps(spec))
    return folder


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))


def _truncated(path: Path) -> None:
    write_image(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _text(path: Path) -> None:
    path.write_text("patient 17, CT abdomen: see PACS\n")


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _flat(path: Path) -> None:
    _save_nifti(path, np.zeros(SHAPE[1:], np.int16))


def _four_d(path: Path) -> None:
    _save_nifti(path, np.zeros((*SHAPE, 2), np.int16))


def _voxels(value: float) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        image = _image().astype(np.float32)
        if np.isnan(value) or np.isinf(value):
            image[2, 3, 4] = value
        else:
            image[:] = value
        write_volume(path, image, GEOMETRY, np.float32)

    return write


def _pixdim(value: float) -> Callable[[Path], None]:
    """A .nii.gz whose grid comes from pixdim (qform/sform codes 0) with pixdim[1] = ``value``."""

    def write(path: Path) -> None:
        img = nib.Nifti1Image(_image().astype(np.int16), None)
        raw = bytearray(img.to_bytes())
        raw[80:84] = np.float32(value).tobytes()  # pixdim[1]
        raw[252:256] = np.zeros(2, np.int16).tobytes()  # qform_code, sform_code
        path.write_bytes(gzip.compress(bytes(raw)))

    return write


def _rgb(path: Path) -> None:
    _save_nifti(path, np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]))


def _complex(path: Path) -> None:
    _save_nifti(path, _image().astype(np.complex64))


# (writer, the problem in the error line)
BAD_FILES: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (_truncated, "truncated or corrupt"),
    "text": (_text, "not a readable NIfTI"),
    "empty": (_empty, "file is empty"),
    "2d": (_flat, "expected a 3D volume, got a 2D image"),
    "4d": (_four_d, "expected a 3D volume, got a 4D image"),
    "rgb": (_rgb, "voxels are not real numbers"),
    "complex": (_complex, "voxels are not real numbers"),
    "pixdim-zero": (_pixdim(0.0), "zero or negative voxel spacing"),
    "pixdim-negative": (_pixdim(-1.5), "zero or negative voxel spacing"),
    "pixdim-nan": (_pixdim(float("nan")), "voxel spacing is NaN or Inf"),
}


def assert_error(result, *fragments: str) -> list[str]:
    """Exit code 2, no traceback, and one ``error:`` line holding every fragment; returns the error lines."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert any(all(f in line for f in fragments) for line in lines), f"no error line with {fragments}:\n{result.output}"
    return lines


def leftovers(folder: Path) -> list[str]:
    """Temporary files an interrupted write would leave."""
    return sorted(p.name for p in folder.rglob("*.tmp*")) if folder.exists() else []


def files_under(folder: Path) -> list[str]:
    """Every file under ``folder`` (an empty folder, e.g. where a stage lock was taken and released, is nothing)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir()) if folder.exists() else []


# -- plan-preprocess: the integrity check over the whole raw dataset -------------------------------------------------
def _bad_image(kind: str) -> Callable[[Path], tuple[str, str]]:
    def corrupt(folder: Path) -> tuple[str, str]:
        writer, problem = BAD_FILES[kind]
        path = folder / "imagesTr" / "case_1_0000.nii.gz"
        path.unlink()
        writer(path)
        return path.name, problem

    return corrupt


def _bad_voxels(value: float, problem: str) -> Callable[[Path], tuple[str, str]]:
    def corrupt(folder: Path) -> tuple[str, str]:
        _voxels(value)(folder / "imagesTr" / "case_1_0000.nii.gz")
        return "case_1_0000.nii.gz", problem

    return corrupt


def _label_shape(folder: Path) -> tuple[str, str]:
    shape = (8, 12, 11)
    write_label(folder / "labelsTr" / "case_1.nii.gz", np.zeros(shape, np.int16),
                Geometry.from_canonical_spec(shape, (2.0, 1.0, 1.0)))
    return "case_1.nii.gz", "differs from case_1_0000.nii.gz"


def _label_affine(folder: Path) -> tuple[str, str]:
    moved = Geometry.from_canonical_spec(SHAPE, (2.0, 1.0, 1.0), origin=(30.0, 0.0, 0.0))
    write_label(folder / "labelsTr" / "case_1.nii.gz", _label(1), moved)
    return "case_1.nii.gz", "affine differs from case_1_0000.nii.gz"


def _undeclared_label(folder: Path) -> tuple[str, str]:
    label = _label(1)
    label[0, 0, 0] = 7
    write_label(folder / "labelsTr" / "case_1.nii.gz", label, GEOMETRY)
    return "case_1.nii.gz", "label values [7] are not declared"


def _missing_label(folder: Path) -> tuple[str, str]:
    (folder / "labelsTr" / "case_1.nii.gz").unlink()
    return "labelsTr", "case 'case_1' has no label file case_1.nii.gz"


def _missing_keys(folder: Path) -> tuple[str, str]:
    spec = {k: v for k, v in DATASET_JSON.items() if k not in ("labels", "file_ending")}
    (folder / "dataset.json").write_text(json.dumps(spec))
    return "dataset.json", "missing key 'labels'"


def _wrong_types(folder: Path) -> tuple[str, str]:
    (folder / "dataset.json").write_text(json.dumps({**DATASET_JSON, "numTraining": "3", "labels": ["liver"]}))
    return "dataset.json", "'numTraining' must be an integer, got str"


def _invalid_json(folder: Path) -> tuple[str, str]:
    (folder / "dataset.json").write_text('{"channel_names": {"0": "CT"}, "labels": ')
    return "dataset.json", "not valid JSON"


def _dangling_symlink(folder: Path) -> tuple[str, str]:
    path = folder / "imagesTr" / "case_1_0000.nii.gz"
    path.unlink()
    path.symlink_to(folder.parent.parent / "elsewhere" / "case_1_0000.nii.gz")
    return "case_1_0000.nii.gz", "broken symbolic link"


def _dangling_label_symlink(folder: Path) -> tuple[str, str]:
    path = folder / "labelsTr" / "case_1.nii.gz"
    path.unlink()
    path.symlink_to("/nonexistent/case_1.nii.gz")
    return "labelsTr/case_1.nii.gz", "broken symbolic link: its target /nonexistent/case_1.nii.gz does not exist"


PLAN_KINDS: dict[str, Callable[[Path], tuple[str, str]]] = {
    **{f"image-{kind}": _bad_image(kind) for kind in BAD_FILES},
    "image-nan": _bad_voxels(float("nan"), "1 voxel(s) are NaN or Inf"),
    "image-inf": _bad_voxels(float("inf"), "1 voxel(s) are NaN or Inf"),
    "image-all-zero": _bad_voxels(0.0, "image is all zeros"),
    "label-shape": _label_shape,
    "label-affine": _label_affine,
    "label-undeclared-value": _undeclared_label,
    "label-missing": _missing_label,
    "dataset-json-missing-keys": _missing_keys,
    "dataset-json-wrong-types": _wrong_types,
    "dataset-json-invalid": _invalid_json,
    "imagesTr-dangling-symlink": _dangling_symlink,
    "labelsTr-dangling-symlink": _dangling_label_symlink,
}


@pytest.mark.parametrize("kind", list(PLAN_KINDS))
def test_plan_preprocess_rejects(kind: str, roots: dict[str, Path]) -> None:
    folder = write_raw(roots["raw"])
    file, problem = PLAN_KINDS[kind](folder)
    result = runner.invoke(app, ["plan-preprocess", "-d", "17", "--np", "1", "--no-progress"])
    lines = assert_error(result, file, problem)
    assert not any("case_0" in line or "case_2" in line for line in lines), result.output  # good cases not blamed
    assert files_under(roots["preprocessed"]) == []  # nothing written


def test_plan_preprocess_missing_channel_of_a_two_channel_dataset(roots: dict[str, Path]) -> None:
    folder = write_raw(roots["raw"], channels=2)
    (folder / "imagesTr" / "case_1_0001.nii.gz").unlink()
    result = runner.invoke(app, ["plan-preprocess", "-d", "17", "--np", "1", "--no-progress"])
    assert_error(result, "imagesTr", "case 'case_1' lacks channel(s) [1]")
    assert files_under(roots["preprocessed"]) == []


def test_a_symlink_to_a_file_outside_the_dataset_is_an_ordinary_case(roots: dict[str, Path]) -> None:
    """Linking raw files in from elsewhere (instead of copying gigabytes) is common practice and is allowed: the
    link is followed, the case is read from its target; only a link that leads nowhere is an error (above)."""
    folder = write_raw(roots["raw"])
    outside = roots["raw"].parent / "elsewhere" / "case_1_0000.nii.gz"
    outside.parent.mkdir()
    (folder / "imagesTr" / "case_1_0000.nii.gz").rename(outside)
    (folder / "imagesTr" / "case_1_0000.nii.gz").symlink_to(outside)
    result = runner.invoke(app, ["plan-preprocess", "-d", "17", "--np", "1", "--no-progress", "--plan-only"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("args, fragments", [
    (["-d", "99"], ("no dataset '99'; existing: Dataset017_A, Dataset017_B",)),
    (["-d", "17"], ("dataset id 17 is used by several folders: Dataset017_A, Dataset017_B",)),
    (["-d", "../Dataset017_A"], ("'../Dataset017_A' is not a dataset id",)),
    ([], ("several datasets; choose one with -d",)),
], ids=["unknown-id", "duplicate-id", "path-as-id", "no-id-several-datasets"])
def test_plan_preprocess_dataset_resolution(args: list[str], fragments: tuple[str, ...],
                                            roots: dict[str, Path]) -> None:
    write_raw(roots["raw"], name="A")
    write_raw(roots["raw"], name="B")
    result = runner.invoke(app, ["plan-preprocess", *args, "--np", "1", "--no-progress"])
    assert_error(result, *fragments)
    assert files_under(roots["preprocessed"]) == []


def test_plan_preprocess_unknown_configuration(roots: dict[str, Path]) -> None:
    write_raw(roots["raw"])
    result = runner.invoke(app, ["plan-preprocess", "-d", "17", "-c", "3d_nope", "--np", "1", "--no-progress"])
    assert_error(result, "unknown configuration '3d_nope'", "3d_lite")
    assert not list((roots["preprocessed"] / "Dataset017_Bad").glob("3d_*"))


# -- a tiny trained model (no training) -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``raw/``, ``preprocessed/`` (plans and splits only) and ``results/Dataset012_Tiny/segvol__3d_lite`` with an
    untrained tiny segvol fold 0, planned without normalisation. Read-only for the tests: copy before changing."""
    from segvolpipe.planning.plans import load_plans, save_plans
    from segvolpipe.preprocessing.stage import PlanPreprocessOptions, run_plan_preprocess
    from tests.models.conftest import TINY_DECODER, TINY_UNET, TINY_VIT

    base = tmp_path_factory.mktemp("world")
    with pytest.MonkeyPatch.context() as mp:
        for key in ("raw", "preprocessed", "results"):
            mp.setenv(f"SEGVOL_{key.upper()}", str(base / key))
        write_raw(base / "raw", 12, "Tiny")
        result = run_plan_preprocess("12", PlanPreprocessOptions(workers=1, progress=False, norm="none",
                                                                 plan_only=True, gpu_memory_gb=0))
    plans = load_plans(result.folder / "plans.json")
    small = replace(plans.configurations["3d_lite"], vit=TINY_VIT, decoder=TINY_DECODER, unet=TINY_UNET)
    plans = replace(plans, configurations={"3d_lite": small}, default_configuration="3d_lite")
    save_plans(result.folder / "plans.json", plans)
    folder = base / "results" / "Dataset012_Tiny" / "segvol__3d_lite"
    (folder / "fold_0").mkdir(parents=True)
    save_plans(folder / "plans.json", plans)
    shutil.copy(result.folder / "dataset.json", folder / "dataset.json")
    spec = spec_from_plans(plans, "3d_lite", "segvol")
    torch.manual_seed(0)
    save_checkpoint(folder / "fold_0" / "checkpoint_final.pt", build_model(spec), None, TrainState(), {},
                    spec.to_json())
    return base


@pytest.fixture()
def model(world: Path) -> Path:
    return world / "results" / "Dataset012_Tiny" / "segvol__3d_lite"


@pytest.fixture()
def own_world(world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the world that a test may change, with the roots pointing into it."""
    base = tmp_path / "world"
    shutil.copytree(world, base, symlinks=True)
    for key in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"SEGVOL_{key.upper()}", str(base / key))
    return base


def _predict(model: Path, source: Path, output: Path, *extra: str):
    return runner.invoke(app, ["predict", "-i", str(source), "-o", str(output), "-m", str(model), "--mode", "sliding",
                               "--no-progress", *extra])


def _check_bad_case_skipped(output: Path, bad: str = "bad") -> None:
    """The good case is written and recorded; the bad one is recorded as failed, with no file, no temporary."""
    record = json.loads((output / "predictions.json").read_text())["cases"]
    assert record["good"]["status"] == "done" and (output / "good.nii.gz").is_file()
    assert record[bad]["status"] == "failed"
    assert not list(output.glob(f"{bad}*")) and leftovers(output) == []


# -- predict: case by case -----------------------------------------------------------------------------------------
def _predict_bad_file(kind: str) -> Callable[[Path], tuple[str, str]]:
    def make(src: Path) -> tuple[str, str]:
        writer, problem = BAD_FILES[kind]
        writer(src / "bad_0000.nii.gz")
        return "bad_0000.nii.gz", problem

    return make


def _predict_two_channels(src: Path) -> tuple[str, str]:
    write_image(src / "bad_0000.nii.gz")
    write_image(src / "bad_0001.nii.gz", 1)
    return "bad_0000.nii.gz", "channel file(s) 0000, 0001; the model needs 0000"


def _predict_voxels(value: float, problem: str) -> Callable[[Path], tuple[str, str]]:
    def make(src: Path) -> tuple[str, str]:
        _voxels(value)(src / "bad_0000.nii.gz")
        return "bad_0000.nii.gz", problem

    return make


PREDICT_KINDS: dict[str, Callable[[Path], tuple[str, str]]] = {
    **{f"image-{kind}": _predict_bad_file(kind) for kind in BAD_FILES},
    "two-channels-for-a-one-channel-model": _predict_two_channels,
    "image-nan": _predict_voxels(float("nan"), "NaN or infinite"),
    "image-inf": _predict_voxels(float("inf"), "NaN or infinite"),
}


@pytest.mark.parametrize("kind", list(PREDICT_KINDS))
def test_predict_fails_the_bad_case_and_does_the_good_one(kind: str, model: Path, tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    write_image(src / "good_0000.nii.gz")
    file, problem = PREDICT_KINDS[kind](src)
    result = _predict(model, src, out)
    assert_error(result, "bad: ", file, problem)
    _check_bad_case_skipped(out)


def test_predict_all_zero_image_is_predicted_not_failed(model: Path, tmp_path: Path) -> None:
    """An all-zero input is a valid (if empty) image at inference time: it is predicted (nothing found), not
    an error; the raw dataset check refuses it for training (above)."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _voxels(0.0)(src / "zero_0000.nii.gz")
    result = _predict(model, src, out)
    assert result.exit_code == 0, result.output
    assert (out / "zero.nii.gz").is_file()


@pytest.mark.parametrize("prompt", [["--box", "0,0,0,30,3,3"], ["--point", "40,2,2"], ["--point", "-5,1,1"]],
                         ids=["box", "point", "negative-point"])
def test_predict_prompt_outside_the_volume(prompt: list[str], model: Path, tmp_path: Path) -> None:
    """The prompt fits the good case (48 voxels along the file's i axis) and lies outside the bad one (10): the
    good one is still predicted; a prompt outside both fails both, each naming its file."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    big = (8, 12, 48)
    write_volume(src / "good_0000.nii.gz", np.resize(_image(), big), Geometry.from_canonical_spec(big, (2.0, 1.0, 1.0)),
                 np.int16)
    write_image(src / "bad_0000.nii.gz")
    result = _predict(model, src, out, *prompt, "--text", "liver")
    if prompt[1].startswith("-"):  # outside every image: still a clear error per case, nothing written
        assert_error(result, "bad: ", "bad_0000.nii.gz", "lies outside the image")
        assert_error(result, "good: ", "good_0000.nii.gz", "lies outside the image")
        assert not list(out.glob("*.nii.gz")) and leftovers(out) == []
        return
    assert_error(result, "bad: ", "bad_0000.nii.gz", "lies outside the image")
    _check_bad_case_skipped(out)


def test_predict_empty_input_folder(model: Path, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("no images")
    result = _predict(model, tmp_path / "in", tmp_path / "out")
    assert_error(result, str(tmp_path / "in"), "no NIfTI images here")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["existing-file", "below-a-file", "sysfs"])
def test_predict_output_that_cannot_be_written(where: str, model: Path, tmp_path: Path) -> None:
    """Tests run as root here, where a read-only folder (chmod) is still writable; these outputs fail for root
    too: an existing file, a folder below a file, and a folder in sysfs (creating one there is not permitted)."""
    src = tmp_path / "in"
    src.mkdir()
    write_image(src / "good_0000.nii.gz")
    (tmp_path / "file").write_text("I am a file")
    output = {"existing-file": tmp_path / "file", "below-a-file": tmp_path / "file" / "out",
              "sysfs": Path("/sys/segvol_out")}[where]
    if where == "sysfs" and not Path("/sys/kernel").is_dir():
        pytest.skip("no sysfs here")
    result = _predict(model, src, output)
    assert_error(result, str(output), "output folder")
    assert (tmp_path / "file").read_text() == "I am a file"


def test_predict_unknown_dataset_and_configuration(own_world: Path, tmp_path: Path) -> None:
    src = write_image(tmp_path / "x_0000.nii.gz")
    result = runner.invoke(app, ["predict", "-i", str(src), "-o", str(tmp_path / "o"), "-d", "99", "--no-progress"])
    assert_error(result, "no dataset '99'", "Dataset012_Tiny")
    result = runner.invoke(app, ["predict", "-i", str(src), "-o", str(tmp_path / "o"), "-d", "12", "-c", "3d_nope",
                                 "--no-progress"])
    assert_error(result, "3d_nope", "segvol__3d_lite")
    assert not (tmp_path / "o").exists()


def _made_for_3d_segvol(path: Path) -> None:
    """Overwrite the checkpoint at ``path`` with one made for configuration 3d_segvol (same tiny sizes)."""
    spec = replace(ModelSpec.from_json(load_checkpoint(path)["spec"]), configuration="3d_segvol")
    save_checkpoint(path, build_model(spec), None, TrainState(), {}, spec.to_json())


def _other_configuration(folder: Path) -> tuple[str, str]:
    _made_for_3d_segvol(folder / "fold_0" / "checkpoint_final.pt")
    return "fold_0/checkpoint_final.pt", "checkpoint was made for configuration '3d_segvol'"


def _truncated_checkpoint(folder: Path) -> tuple[str, str]:
    path = folder / "fold_0" / "checkpoint_final.pt"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3])
    return "fold_0/checkpoint_final.pt", "corrupted or unreadable checkpoint"


def _not_a_checkpoint(folder: Path) -> tuple[str, str]:
    (folder / "fold_0" / "checkpoint_final.pt").write_text("not a checkpoint")
    return "fold_0/checkpoint_final.pt", "corrupted or unreadable checkpoint"


@pytest.mark.parametrize("damage", [_other_configuration, _truncated_checkpoint, _not_a_checkpoint],
                         ids=["other-configuration", "truncated", "text"])
def test_predict_bad_checkpoint(damage, model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "segvol__3d_lite"
    shutil.copytree(model, folder)
    file, problem = damage(folder)
    src = write_image(tmp_path / "x_0000.nii.gz")
    result = _predict(folder, src, tmp_path / "out")
    assert_error(result, file, problem)
    assert not (tmp_path / "out" / "x.nii.gz").exists()


def test_predict_folds_from_two_configurations(model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "segvol__3d_lite"
    shutil.copytree(model, folder)
    shutil.copytree(folder / "fold_0", folder / "fold_1")
    _made_for_3d_segvol(folder / "fold_1" / "checkpoint_final.pt")
    src = write_image(tmp_path / "x_0000.nii.gz")
    result = _predict(folder, src, tmp_path / "out")
    assert_error(result, "fold_1/checkpoint_final.pt", "checkpoint was made for another model", "3d_segvol")


# -- train ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, fragments", [
    (["--variant", "foo"], ("--variant", "'foo' is not one of", "segvol")),
    (["--variant", "so4"], ("--variant", "did you mean 'so3'")),
    (["-c", "3d_nope"], ("unknown configuration '3d_nope'", "3d_lite")),
    (["-d", "99"], ("no dataset '99'", "Dataset012_Tiny")),
    (["--fold", "7"], ("unknown fold '7'",)),
], ids=["unknown-variant", "misspelt-variant", "unknown-configuration", "unknown-dataset", "unknown-fold"])
def test_train_bad_options(args: list[str], fragments: tuple[str, ...], own_world: Path) -> None:
    result = runner.invoke(app, ["train", "-d", "12", *args, "--device", "cpu", "--no-progress"])
    assert_error(result, *fragments)
    assert not list((own_world / "results").rglob("fold_*/config.json"))


def test_train_init_from_a_checkpoint_of_another_configuration(own_world: Path) -> None:
    model = own_world / "results" / "Dataset012_Tiny" / "segvol__3d_lite"
    other = own_world / "other" / "segvol__3d_segvol"
    shutil.copytree(model, other)
    _made_for_3d_segvol(other / "fold_0" / "checkpoint_final.pt")
    result = runner.invoke(app, ["train", "-d", "12", "--variant", "so3", "--init", str(other), "--device", "cpu",
                                 "--epochs", "1", "--iters-per-epoch", "1", "--np", "0", "--no-progress"])
    assert_error(result, "checkpoint_final.pt", "checkpoint was made for another model", "3d_segvol")
    assert not list((own_world / "results" / "Dataset012_Tiny").glob("so3__3d_lite/fold_0/checkpoint_*.pt"))


# -- evaluate --pred/--ref: case by case ---------------------------------------------------------------------------
def _eval_pred(kind: str, pred: Path) -> tuple[str, str]:
    path = pred / "bad.nii.gz"
    if kind == "wrong-shape":
        shape = (8, 12, 9)
        write_label(path, np.zeros(shape, np.int16), Geometry.from_canonical_spec(shape, (2.0, 1.0, 1.0)))
        return "bad.nii.gz", "prediction is not on the grid of its reference bad.nii.gz"
    if kind == "other-affine":
        write_label(path, _label(1), Geometry.from_canonical_spec(SHAPE, (2.0, 1.0, 1.5)))
        return "bad.nii.gz", "prediction is not on the grid of its reference bad.nii.gz"
    if kind == "undeclared-value":
        label = _label(1)
        label[0, 0, 0] = 9
        write_label(path, label, GEOMETRY)
        return "bad.nii.gz", "prediction holds label value(s) [9] not among the dataset's labels"
    if kind == "truncated":
        write_label(path, _label(1), GEOMETRY)
        path.write_bytes(path.read_bytes()[:40])
        return "bad.nii.gz", "truncated or corrupt"
    if kind == "missing":
        return "bad.nii.gz", "no prediction for case bad"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["wrong-shape", "other-affine", "undeclared-value", "truncated", "missing"])
def test_evaluate_folders_scores_the_good_case(kind: str, tmp_path: Path) -> None:
    ref, pred = tmp_path / "Dataset001_X" / "labelsTr", tmp_path / "pred"
    for folder in (ref, pred):
        folder.mkdir(parents=True)
    for case in ("good", "bad"):
        write_label(ref / f"{case}.nii.gz", _label(1), GEOMETRY)
    write_label(pred / "good.nii.gz", _label(1), GEOMETRY)
    (ref.parent / "dataset.json").write_text(json.dumps(DATASET_JSON))
    file, problem = _eval_pred(kind, pred)
    result = runner.invoke(app, ["evaluate", "--pred", str(pred), "--ref", str(ref), "--np", "1", "--no-progress"])
    assert_error(result, "bad: ", file, problem)
    summary = json.loads((pred / "summary.json").read_text())
    assert [row["case"] for row in summary["metric_per_case"]] == ["good"]
    assert [f["case"] for f in summary["failures"]] == ["bad"]
    assert leftovers(pred) == []


@pytest.mark.parametrize("content, problem", [
    ('{"labels": {', "not valid JSON"),
    (json.dumps({"labels": {"background": 0}}), "missing key 'channel_names'"),
    (json.dumps({**DATASET_JSON, "labels": {"background": 0, "liver": "1"}}), "label 'liver' must map to an integer"),
], ids=["invalid-json", "missing-keys", "wrong-types"])
def test_evaluate_with_a_bad_labels_file(content: str, problem: str, tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    ref.mkdir()
    write_label(ref / "a.nii.gz", _label(), GEOMETRY)
    labels = tmp_path / "labels.json"
    labels.write_text(content)
    result = runner.invoke(app, ["evaluate", "--pred", str(ref), "--ref", str(ref), "--labels", str(labels),
                                 "--np", "1", "--no-progress"])
    assert_error(result, str(labels), problem)
    assert not (ref / "summary.json").exists()


@pytest.mark.parametrize("below", [False, True], ids=["existing-file", "below-a-file"])
def test_evaluate_output_that_cannot_be_written(below: bool, tmp_path: Path) -> None:
    ref = tmp_path / "Dataset001_X" / "labelsTr"
    ref.mkdir(parents=True)
    write_label(ref / "a.nii.gz", _label(), GEOMETRY)
    (ref.parent / "dataset.json").write_text(json.dumps(DATASET_JSON))
    (tmp_path / "file").write_text("I am a file")
    output = tmp_path / "file" / "out" if below else tmp_path / "file"
    result = runner.invoke(app, ["evaluate", "--pred", str(ref), "--ref", str(ref), "-o", str(output), "--np", "1",
                                 "--no-progress"])
    assert_error(result, str(output), "cannot be used")
    assert (tmp_path / "file").read_text() == "I am a file"


# -- option values off their fixed lists, in every command that has them -------------------------------------------
@pytest.mark.parametrize("args, fragments", [
    (["predict", "-i", "x", "-o", "y", "--variant", "foo"], ("'--variant'", "'foo' is not one of")),
    (["predict", "-i", "x", "-o", "y", "--mode", "zom"], ("'--mode'", "did you mean 'zoom'")),
    (["evaluate", "--variant", "sgevol"], ("'--variant'", "did you mean 'segvol'")),
    (["evaluate", "--prompt", "boxes"], ("'--prompt'", "did you mean 'box'")),
    (["predict", "-o", "y"], ("Missing option '-i' / '--input'",)),
    (["train", "--epochs", "many"], ("'--epochs'", "valid integer")),
], ids=["predict-variant", "predict-mode", "evaluate-variant", "evaluate-prompt", "missing-option", "not-a-number"])
def test_usage_errors_are_error_lines(args: list[str], fragments: tuple[str, ...]) -> None:
    result = runner.invoke(app, args)
    assert_error(result, *fragments)
    assert "╭" not in result.output  # not click's framed panel: the same one-line form as every other error
