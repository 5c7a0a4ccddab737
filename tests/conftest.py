"""Shared fixtures: isolated data roots and a tiny hand-made raw dataset (blobs) for fast checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segvolpipe.io.nifti import Geometry, write_label, write_volume

AXCODES = [("R", "A", "S"), ("L", "P", "S"), ("L", "A", "S"), ("A", "S", "R"), ("L", "P", "I")]


@pytest.fixture()
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """SEGVOL_RAW / _PREPROCESSED / _RESULTS pointing into a fresh temporary folder."""
    out = {k: tmp_path / k for k in ("raw", "preprocessed", "results")}
    monkeypatch.setenv("SEGVOL_RAW", str(out["raw"]))
    monkeypatch.setenv("SEGVOL_PREPROCESSED", str(out["preprocessed"]))
    monkeypatch.setenv("SEGVOL_RESULTS", str(out["results"]))
    return out


def blob_case(shape: tuple[int, int, int], seed: int, modality: str = "CT") -> tuple[np.ndarray, np.ndarray]:
    """A canonical (z, y, x) image with a body ellipsoid and two labelled blobs."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = (yy / 0.8) ** 2 + (xx / 0.9) ** 2 < 1
    c1 = rng.uniform(-0.2, 0.2, 3)
    blob1 = ((zz - c1[0]) / 0.5) ** 2 + ((yy - c1[1]) / 0.3) ** 2 + ((xx - 0.3 - c1[2]) / 0.3) ** 2 < 1
    blob2 = ((zz + 0.1) / 0.4) ** 2 + ((yy + 0.2) / 0.2) ** 2 + ((xx + 0.4) / 0.2) ** 2 < 1
    label = np.zeros(shape, np.int16)
    label[blob1 & body] = 1
    label[blob2 & body] = 2
    if modality == "CT":
        image = np.where(body, 40.0, -1000.0) + 60 * (label == 1) - 20 * (label == 2)
    else:
        image = np.where(body, 300.0, 0.0) + 200 * (label == 1) + 100 * (label == 2)
    image = image + rng.normal(0, 10, shape)
    return image.astype(np.float32), label


def make_blob_dataset(
    raw: Path,
    dataset_id: int = 500,
    n: int = 4,
    shape: tuple[int, int, int] = (12, 24, 20),
    modality: str = "CT",
    spacing: tuple[float, float, float] = (3.0, 0.8, 0.8),
    vary_spacing: bool = True,
) -> Path:
    """A raw dataset of ``n`` blob cases stored in varied orientations; returns its folder."""
    folder = raw / f"Dataset{dataset_id:03d}_Blobs"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir(parents=True)
    for i in range(n):
        image, label = blob_case(shape, i, modality)
        sp = (spacing[0] * (1 + 0.2 * (i % 3)), spacing[1] * (1 + 0.1 * (i % 2)), spacing[2] * (1 + 0.1 * (i % 2)))
        geom = Geometry.from_canonical_spec(shape, sp if vary_spacing else spacing, AXCODES[i % len(AXCODES)], (i, -i, 2 * i))
        dtype = np.int16 if modality == "CT" else np.float32
        write_volume(folder / "imagesTr" / f"blob_{i:03d}_0000.nii.gz", image, geom, dtype)
        write_label(folder / "labelsTr" / f"blob_{i:03d}.nii.gz", label, geom)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": modality},
        "labels": {"background": 0, "liver": 1, "spleen": 2},
        "numTraining": n,
        "file_ending": ".nii.gz",
    }))
    return folder


def tiny_model_folder(roots: dict[str, Path], dataset: str, variant: str = "segvol") -> Path:
    """``results/{dataset}/{variant}__3d_lite`` with an untrained tiny fold 0 (seeded) for the raw dataset
    ``dataset`` already under ``roots["raw"]``, planned without normalisation so that intensities stay as written
    (for known-answer models)."""
    import shutil
    from dataclasses import replace

    import torch

    from segvolpipe.models.registry import build_model
    from segvolpipe.models.spec import spec_from_plans
    from segvolpipe.planning.plans import load_plans, save_plans
    from segvolpipe.preprocessing.stage import PlanPreprocessOptions, run_plan_preprocess
    from segvolpipe.training.checkpoint import TrainState, save_checkpoint
    from tests.models.conftest import TINY_DECODER, TINY_UNET, TINY_VIT

    result = run_plan_preprocess(dataset, PlanPreprocessOptions(workers=1, progress=False, norm="none",
                                                                plan_only=True))
    plans = load_plans(result.folder / "plans.json")
    small = replace(plans.configurations["3d_lite"], vit=TINY_VIT, decoder=TINY_DECODER, unet=TINY_UNET)
    plans = replace(plans, configurations={"3d_lite": small}, default_configuration="3d_lite")
    folder = roots["results"] / result.folder.name / f"{variant}__3d_lite"
    (folder / "fold_0").mkdir(parents=True)
    save_plans(folder / "plans.json", plans)
    shutil.copy(result.folder / "dataset.json", folder / "dataset.json")
    spec = spec_from_plans(plans, "3d_lite", variant)
    torch.manual_seed(0)
    save_checkpoint(folder / "fold_0" / "checkpoint_final.pt", build_model(spec), None, TrainState(), {},
                    spec.to_json())
    return folder


def shrink_plans_for_training(plans_path: Path) -> None:
    """Make the ``3d_lite`` configuration of a plans file a tiny model that trains in seconds (batch 1, two
    prompts per sample; a 4-channel image path in the decoder, as the planner gives 3d_lite one) and the default
    one."""
    from dataclasses import replace

    from segvolpipe.planning.plans import load_plans, save_plans
    from tests.models.conftest import TINY_DECODER, TINY_UNET, TINY_VIT

    plans = load_plans(plans_path)
    conf = plans.configurations["3d_lite"]
    small = replace(conf, vit=TINY_VIT, decoder=replace(TINY_DECODER, image_detail_channels=4), unet=TINY_UNET,
                    trainer=replace(conf.trainer, batch_size=1, max_prompts_per_sample=2))
    save_plans(plans_path, replace(plans, configurations={**plans.configurations, "3d_lite": small},
                                   default_configuration="3d_lite"))
