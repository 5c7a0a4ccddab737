"""Phantom datasets: determinism, anatomy, intensities, geometry, files and the folder contract."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from segvolpipe.errors import UserError
from segvolpipe.io.nifti import read_label, read_volume
from segvolpipe.phantoms import ORGANS, PhantomOptions, PhantomResult, make_phantom_case, make_phantom_dataset
from segvolpipe.phantoms.case import PERMUTED_ORIENTATIONS, make_case
from segvolpipe.phantoms.tissues import Tissue

SMALL = (32, 64, 64)
TINY = (16, 32, 32)


def _centroid(mask: np.ndarray) -> np.ndarray:
    """Mean (z, y, x) index of a mask."""
    return np.argwhere(mask).mean(axis=0)


def _read_dataset_json(folder: Path) -> dict:
    return json.loads((folder / "dataset.json").read_text())


# --- options ---------------------------------------------------------------------------------------


def test_options_validation_says_did_you_mean() -> None:
    with pytest.raises(UserError, match="did you mean 'ct'"):
        PhantomOptions(modality="CT")
    with pytest.raises(UserError, match="did you mean 'mri'"):
        PhantomOptions(modality="mr")
    with pytest.raises(UserError, match="did you mean 't2'"):
        PhantomOptions(modality="mri", mri_contrast="T2")
    with pytest.raises(UserError, match="did you mean 'liver'"):
        PhantomOptions(labels=("livr",))
    with pytest.raises(UserError, match="twice"):
        PhantomOptions(labels=("liver", "liver"))
    with pytest.raises(UserError, match="size"):
        PhantomOptions(size=(4, 64, 64))


def test_options_json_round_trip_and_hash() -> None:
    options = PhantomOptions(n_train=3, modality="mri", mri_contrast="t2", size=SMALL, labels=("spleen", "liver"))
    data = json.loads(json.dumps(options.to_json()))
    assert PhantomOptions.from_json(data) == options
    assert PhantomOptions.from_json(data).options_hash() == options.options_hash()
    assert PhantomOptions(seed=1).options_hash() != PhantomOptions(seed=2).options_hash()
    assert options.dataset_name == "PhantomMRI" and PhantomOptions().dataset_name == "PhantomCT"
    assert PhantomOptions().case_name(7) == "phantomct_007"
    result = PhantomResult(Path("/x/Dataset001_A"), "Dataset001_A", ("a_000",), ("a_001",), False, 1.5)
    assert PhantomResult.from_json(json.loads(json.dumps(result.to_json()))) == result


# --- one case --------------------------------------------------------------------------------------


def test_same_seed_same_case_and_other_seed_differs() -> None:
    options = PhantomOptions(size=SMALL, seed=3)
    image_a, label_a, geometry_a = make_phantom_case(1, options)
    image_b, label_b, geometry_b = make_phantom_case(1, options)
    assert np.array_equal(image_a, image_b) and np.array_equal(label_a, label_b) and geometry_a == geometry_b
    image_c, label_c, _ = make_phantom_case(2, options)
    assert not np.array_equal(label_a, label_c)
    image_d, _, _ = make_phantom_case(1, PhantomOptions(size=SMALL, seed=4))
    assert not np.array_equal(image_a, image_d)
    assert image_a.dtype == np.float32 and image_a.shape == SMALL
    assert label_a.dtype == np.int16 and label_a.shape == SMALL


@pytest.mark.parametrize("index", [0, 1, 2])
def test_every_organ_present_with_plausible_volume(index: int) -> None:
    _, label, _ = make_phantom_case(index, PhantomOptions(size=SMALL))
    fractions = np.bincount(label.ravel(), minlength=len(ORGANS) + 1) / label.size
    bounds = {  # fraction of the field of view (real abdominal CTs: liver ~3 %, pancreas ~0.1 %)
        "liver": (0.015, 0.12), "spleen": (0.001, 0.012), "left_kidney": (0.001, 0.008),
        "right_kidney": (0.001, 0.008), "aorta": (0.0005, 0.005), "stomach": (0.002, 0.03),
        "pancreas": (0.0002, 0.004),
    }
    for organ_id, organ in enumerate(ORGANS, start=1):
        low, high = bounds[organ]
        assert low < fractions[organ_id] < high, (organ, fractions[organ_id])
    assert fractions[1] == max(fractions[1:])  # the liver is the largest organ


def test_anatomy_is_placed_in_the_canonical_frame() -> None:
    """z Superior, y Anterior, x patient's Right."""
    _, label, _ = make_phantom_case(0, PhantomOptions(size=SMALL))
    c = {organ: _centroid(label == i) for i, organ in enumerate(ORGANS, start=1)}
    assert c["liver"][2] > c["spleen"][2]  # liver on the right
    assert c["right_kidney"][2] > c["left_kidney"][2]
    assert c["stomach"][2] < label.shape[2] / 2 < c["liver"][2]
    assert c["liver"][0] > c["left_kidney"][0] and c["liver"][0] > c["right_kidney"][0]  # liver higher
    assert c["pancreas"][1] > c["aorta"][1]  # pancreas anterior to the aorta
    assert c["spleen"][1] < c["stomach"][1]  # spleen posterior
    z_extent = [np.unique(np.nonzero(label == i)[0]).size for i in range(1, len(ORGANS) + 1)]
    assert min(z_extent) < label.shape[0]  # not every organ on every slice


def test_ct_intensities_per_tissue() -> None:
    for index in range(2):
        case = make_case(index, PhantomOptions())  # full size: small vessels keep their contrast
        image, tissue, label = case.image, case.tissue, case.label
        assert case.dtype == np.int16 and np.array_equal(image, np.round(image))
        assert image.min() >= -1024 and image.max() <= 3071
        assert abs(np.median(image[tissue == Tissue.AIR]) + 1000) < 10
        assert image[tissue == Tissue.FAT].mean() < -50
        assert image[tissue == Tissue.CORTICAL].max() > 300
        assert 80 < image[label == 1].mean() < 130  # portal-venous liver (vessels and lesions included)
        cortex, medulla = (ndimage.binary_erosion(tissue == t) for t in (Tissue.KIDNEY_CORTEX, Tissue.KIDNEY_MEDULLA))
        assert image[cortex].mean() > image[medulla].mean() + 20  # away from the partial volume with the fat
        # contrast-filled: its core, since the partial volume with the periaortic fat darkens a small aorta's rim
        assert 120 < np.percentile(image[ndimage.binary_erosion(tissue == Tissue.AORTA)], 90) < 300
        assert 90 < np.median(image[ndimage.binary_erosion(tissue == Tissue.SPLEEN, iterations=2)]) < 140
        muscle = np.median(image[ndimage.binary_erosion(tissue == Tissue.MUSCLE, iterations=1)])
        assert 35 < muscle < 75  # unenhanced: organs stand out from the abdominal wall
        # A gas pocket inside the stomach label, in its anterior part.
        stomach = label == ORGANS.index("stomach") + 1
        gas = stomach & (image < -500)
        assert gas.any() and _centroid(gas)[1] > _centroid(stomach)[1]
        air = image[ndimage.binary_erosion(tissue == Tissue.AIR, iterations=3)]
        assert 3 < air[air > -1024].std() < 40  # noise


@pytest.mark.parametrize("contrast", ["t1", "t2"])
def test_mri_background_near_zero_and_contrast(contrast: str) -> None:
    case = make_case(0, PhantomOptions(size=SMALL, modality="mri", mri_contrast=contrast))
    image, tissue = case.image, case.tissue
    assert case.dtype in (np.uint16, np.float32)
    assert image.min() >= 0 and (image > 0).mean() > 0.9
    body = image[tissue != Tissue.AIR]
    assert image[tissue == Tissue.AIR].mean() < 0.1 * np.median(body)
    mean = {t: image[tissue == t].mean() for t in (Tissue.LIVER, Tissue.SPLEEN, Tissue.FAT, Tissue.STOMACH_CONTENT)}
    if contrast == "t1":
        assert mean[Tissue.FAT] > mean[Tissue.LIVER] > mean[Tissue.SPLEEN] > mean[Tissue.STOMACH_CONTENT]
    else:
        assert mean[Tissue.STOMACH_CONTENT] > mean[Tissue.SPLEEN] > mean[Tissue.LIVER]
    ct = make_case(0, PhantomOptions(size=SMALL))
    assert np.array_equal(ct.label, case.label)  # same patients whatever the modality


def test_geometry_orientations_vary_and_spacing_in_range() -> None:
    options = PhantomOptions(size=TINY, n_train=24)
    geometries = [make_phantom_case(i, options)[2] for i in range(24)]
    axcodes = {g.axcodes for g in geometries}
    assert len(axcodes) >= 4
    assert axcodes & set(PERMUTED_ORIENTATIONS)  # some files stored with permuted axes
    for g in geometries:
        assert g.canonical_shape == TINY
        z, y, x = g.spacing
        assert 1.5 <= z <= 5.0 and 0.6 <= y <= 1.0 and abs(x - y) < 1e-6
    assert len({g.affine[0][3] for g in geometries}) > 1  # random origins
    fixed = PhantomOptions(size=TINY, random_orientation=False)
    assert {make_phantom_case(i, fixed)[2].axcodes for i in range(6)} == {("R", "A", "S")}


def test_deformation_and_size_vary_between_cases() -> None:
    options = PhantomOptions(size=SMALL)
    labels = [make_phantom_case(i, options)[1] for i in range(4)]
    for organ_id in range(1, len(ORGANS) + 1):
        masks = [label == organ_id for label in labels]
        # every case draws each organ differently (two small organs may still share a voxel count on this grid)
        assert not any(np.array_equal(a, b) for i, a in enumerate(masks) for b in masks[i + 1:])
        volumes = [int(m.sum()) for m in masks]
        assert min(volumes) > 0 and max(volumes) > 1.1 * min(volumes)


# --- the dataset -----------------------------------------------------------------------------------


def test_dataset_files_round_trip(tmp_path: Path) -> None:
    options = PhantomOptions(n_train=2, n_test=1, size=SMALL, seed=5)
    result = make_phantom_dataset(7, options, raw_root=tmp_path, progress=False)
    folder = tmp_path / "Dataset007_PhantomCT"
    assert result.folder == folder and result.dataset == folder.name and not result.skipped
    assert result.train_cases == ("phantomct_000", "phantomct_001") and result.test_cases == ("phantomct_002",)
    for index, (images, labels) in enumerate([("imagesTr", "labelsTr")] * 2 + [("imagesTs", "labelsTs")]):
        case = f"phantomct_{index:03d}"
        image, label, geometry = make_phantom_case(index, options)
        read_image, image_geometry = read_volume(folder / images / f"{case}_0000.nii.gz")
        read_lab, label_geometry = read_label(folder / labels / f"{case}.nii.gz")
        assert np.array_equal(read_lab, label)
        assert np.abs(read_image - image).max() <= 0.5
        assert image_geometry.axcodes == geometry.axcodes and image_geometry.same_grid(label_geometry)
        assert np.allclose(image_geometry.spacing, geometry.spacing, atol=1e-4)
        assert np.allclose(image_geometry.affine, geometry.affine, atol=1e-3)
    data = _read_dataset_json(folder)
    _check_world_anatomy(folder / "labelsTr" / "phantomct_000.nii.gz")
    assert data["channel_names"] == {"0": "CT"}
    assert data["labels"] == {"background": 0, **{organ: i for i, organ in enumerate(ORGANS, start=1)}}
    assert data["numTraining"] == 2 and data["file_ending"] == ".nii.gz" and data["name"] == "PhantomCT"
    assert data["phantom"]["options_hash"] == options.options_hash()
    assert PhantomOptions.from_json(data["phantom"]) == options
    assert sorted(p.name for p in folder.iterdir()) == ["dataset.json", "imagesTr", "imagesTs", "labelsTr", "labelsTs"]


def _check_world_anatomy(path: Path) -> None:
    """In the file's own RAS+ world coordinates (nibabel alone): liver right, high; pancreas anterior."""
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)

    def world(organ: str) -> np.ndarray:
        ijk = np.argwhere(data == ORGANS.index(organ) + 1).mean(axis=0)
        return nib.affines.apply_affine(img.affine, ijk)

    assert world("liver")[0] > world("spleen")[0] and world("right_kidney")[0] > world("left_kidney")[0]
    assert world("pancreas")[1] > world("aorta")[1]
    assert world("liver")[2] > world("left_kidney")[2]


def test_mri_dataset_json(tmp_path: Path) -> None:
    options = PhantomOptions(n_train=1, n_test=0, size=TINY, modality="mri", mri_contrast="t2")
    make_phantom_dataset(3, options, raw_root=tmp_path, progress=False)
    data = _read_dataset_json(tmp_path / "Dataset003_PhantomMRI")
    assert data["channel_names"] == {"0": "MRI"} and data["numTraining"] == 1
    image, _ = read_volume(tmp_path / "Dataset003_PhantomMRI" / "imagesTr" / "phantommri_000_0000.nii.gz")
    assert image.min() >= 0


def test_workers_give_identical_files(tmp_path: Path) -> None:
    options = PhantomOptions(n_train=2, n_test=1, size=TINY)
    one = make_phantom_dataset(1, options, raw_root=tmp_path / "a", workers=1, progress=False)
    two = make_phantom_dataset(1, options, raw_root=tmp_path / "b", workers=2, progress=False)
    files = sorted(p.relative_to(one.folder) for p in one.folder.rglob("*.nii.gz"))
    assert len(files) == 6
    assert files == sorted(p.relative_to(two.folder) for p in two.folder.rglob("*.nii.gz"))
    for rel in files:
        assert (one.folder / rel).read_bytes() == (two.folder / rel).read_bytes(), rel


def test_rerun_is_skipped_and_changes_need_overwrite(tmp_path: Path) -> None:
    options = PhantomOptions(n_train=2, n_test=0, size=TINY)
    make_phantom_dataset(9, options, raw_root=tmp_path, progress=False)
    json_path = tmp_path / "Dataset009_PhantomCT" / "dataset.json"
    stamp = json_path.stat().st_mtime_ns
    again = make_phantom_dataset(9, options, raw_root=tmp_path, progress=False)
    assert again.skipped and json_path.stat().st_mtime_ns == stamp
    changed = PhantomOptions(n_train=2, n_test=0, size=TINY, seed=1)
    with pytest.raises(UserError) as excinfo:
        make_phantom_dataset(9, changed, raw_root=tmp_path, progress=False)
    assert "Dataset009_PhantomCT" in excinfo.value.line()
    redone = make_phantom_dataset(9, changed, raw_root=tmp_path, overwrite=True, progress=False)
    assert not redone.skipped and _read_dataset_json(redone.folder)["phantom"]["seed"] == 1
    # A missing case file is regenerated without overwrite (same options).
    (redone.folder / "labelsTr" / "phantomct_001.nii.gz").unlink()
    assert not make_phantom_dataset(9, changed, raw_root=tmp_path, progress=False).skipped
    assert (redone.folder / "labelsTr" / "phantomct_001.nii.gz").is_file()


def test_same_id_other_name_is_never_deleted(tmp_path: Path) -> None:
    make_phantom_dataset(4, PhantomOptions(n_train=1, n_test=0, size=TINY), raw_root=tmp_path, progress=False)
    other = PhantomOptions(n_train=1, n_test=0, size=TINY, name="Other")
    for overwrite in (False, True):
        with pytest.raises(UserError) as excinfo:
            make_phantom_dataset(4, other, raw_root=tmp_path, overwrite=overwrite, progress=False)
        assert "Dataset004_PhantomCT" in excinfo.value.line() and "already used" in excinfo.value.line()
    assert [p.name for p in tmp_path.iterdir()] == ["Dataset004_PhantomCT"]
    result = make_phantom_dataset(5, other, raw_root=tmp_path, progress=False)
    assert result.train_cases == ("other_000",)


def test_folder_with_foreign_content_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "Dataset002_PhantomCT"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(UserError) as excinfo:
        make_phantom_dataset(2, PhantomOptions(n_train=1, n_test=0, size=TINY), raw_root=tmp_path, progress=False)
    assert "Dataset002_PhantomCT" in excinfo.value.line()
    with pytest.raises(UserError, match="not a phantom dataset"):
        make_phantom_dataset(2, PhantomOptions(n_train=1, n_test=0, size=TINY), raw_root=tmp_path, overwrite=True, progress=False)
    assert (folder / "notes.txt").read_text() == "mine"


def test_labels_subset_relabels_consecutively(tmp_path: Path) -> None:
    full = PhantomOptions(size=SMALL)
    subset = PhantomOptions(size=SMALL, labels=("spleen", "liver", "pancreas"))
    image_full, label_full, _ = make_phantom_case(0, full)
    image_sub, label_sub, _ = make_phantom_case(0, subset)
    assert np.array_equal(image_full, image_sub)  # unlabelled organs are still drawn
    expected = np.zeros_like(label_full)
    for new_id, organ in enumerate(subset.labels, start=1):
        expected[label_full == ORGANS.index(organ) + 1] = new_id
    assert np.array_equal(label_sub, expected)
    options = PhantomOptions(n_train=1, n_test=0, size=TINY, labels=("spleen", "liver"))
    result = make_phantom_dataset(6, options, raw_root=tmp_path, progress=False)
    assert _read_dataset_json(result.folder)["labels"] == {"background": 0, "spleen": 1, "liver": 2}
    label, _ = read_label(result.folder / "labelsTr" / "phantomct_000.nii.gz")
    assert set(np.unique(label)) <= {0, 1, 2}


def test_made_with_other_options_tells_the_demo_when_to_regenerate(tmp_path: Path) -> None:
    from segvolpipe.phantoms import made_with_other_options

    small = PhantomOptions(n_train=1, n_test=0, size=(16, 32, 32))
    other = PhantomOptions(n_train=1, n_test=0, size=(16, 32, 32), seed=5)
    assert not made_with_other_options(902, small, tmp_path)  # nothing there yet
    make_phantom_dataset(902, small, raw_root=tmp_path)
    assert not made_with_other_options(902, small, tmp_path)
    assert made_with_other_options(902, other, tmp_path)
    make_phantom_dataset(902, other, raw_root=tmp_path, overwrite=True)
    assert not made_with_other_options(902, other, tmp_path)
    user = tmp_path / "Dataset903_PhantomCT"
    user.mkdir()
    (user / "dataset.json").write_text(json.dumps({"name": "mine"}))
    assert not made_with_other_options(903, small, tmp_path)  # not a phantom: never overwritten


@pytest.mark.parametrize(("inside", "outside", "fat_share"), [
    (("left_kidney", "right_kidney"), ("liver", "spleen", "pancreas"), 0.5),  # perirenal and sinus fat
    (("aorta",), ("liver", "pancreas", "stomach"), 0.9),  # periaortic fat
    (("pancreas",), ("liver", "spleen", "stomach", "aorta"), 0.9),  # peripancreatic fat
])
def test_retroperitoneal_organs_lie_in_fat_and_no_organ_touches_them(inside, outside, fat_share) -> None:
    # The organs painted later (liver, spleen, stomach) never reach the retroperitoneal ones: a layer of fat lies
    # between, as in the abdomen, and not an edge between two soft tissues of nearly the same density.
    for index in range(3):
        case = make_case(index, PhantomOptions(size=(32, 64, 64)))
        organ = np.isin(case.label, [ORGANS.index(o) + 1 for o in inside])
        near = ndimage.binary_dilation(organ, ndimage.generate_binary_structure(3, 1)) & ~organ
        others = case.label[near]
        assert organ.any() and not np.isin(others, [ORGANS.index(o) + 1 for o in outside]).any()
        assert (case.tissue[near] == Tissue.FAT).mean() > fat_share
