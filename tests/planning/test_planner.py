"""Planning rules: anisotropic target spacing, ViT geometry, U-Net layout, batch size, JSON round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segvolpipe.errors import UserError
from segvolpipe.fingerprint import ChannelStats, Fingerprint
from segvolpipe.planning import budget
from segvolpipe.planning.planner import (
    make_plans,
    plan_median_shape,
    plan_target_spacing,
    plan_unet,
    plan_vit_geometry,
    zoom_out_probability,
)
from segvolpipe.planning.plans import Accelerator, Plans, load_plans, save_plans
from segvolpipe.planning.splits import make_splits

CPU = Accelerator("cpu", "test", 24.0, 2)
GPU = Accelerator("cuda", "H100", 80.0, 1)


def _fingerprint(n: int = 6, shape=(60, 160, 160), spacing=(2.5, 0.8, 0.8)) -> Fingerprint:
    cases = tuple(
        {"case_id": f"c{i}", "spacing": list(spacing), "shape": list(shape), "cropped_shape": list(shape),
         "crop_fraction": 1.0, "label_voxels": {"1": 1000}, "voxel_volume_ml": 0.0016, "bbox": [], "axcodes": "RAS"}
        for i in range(n)
    )
    ch = ChannelStats.from_sample(0, "CT", np.linspace(-100, 200, 1000))
    return Fingerprint("Dataset001_X", "h", (ch,), ({"name": "liver", "id": 1},), cases, 1000)


def test_target_spacing_median_and_anisotropy_rule() -> None:
    iso = np.array([[1.0, 1.0, 1.0], [2.0, 1.0, 1.0], [1.5, 0.8, 0.8]])
    assert plan_target_spacing(iso) == pytest.approx((1.5, 1.0, 1.0))
    aniso = np.array([[5.0, 0.8, 0.8]] * 5 + [[1.5, 0.8, 0.8]] * 2 + [[4.0, 0.7, 0.7]] * 3)
    z, y, x = plan_target_spacing(aniso)
    assert z == pytest.approx(np.percentile(aniso[:, 0], 10))
    assert (y, x) == pytest.approx((0.8, 0.8))


@pytest.mark.parametrize(("median", "spacing", "budget_voxels", "tokens"), [
    ((60, 200, 200), (2.5, 0.8, 0.8), 32 * 64 * 64, 256),
    ((100, 100, 100), (1.0, 1.0, 1.0), 32 * 256 * 256, 2048),
    ((12, 300, 260), (5.0, 0.7, 0.7), 32 * 64 * 64, 256),
    ((8, 10, 12), (1.0, 1.0, 1.0), 32 * 64 * 64, 256),
])
def test_vit_geometry_is_consistent(median, spacing, budget_voxels, tokens) -> None:
    inp, patch = plan_vit_geometry(median, spacing, budget_voxels, tokens)
    assert all(i % p == 0 and i // p >= 2 for i, p in zip(inp, patch, strict=True))
    assert np.prod(inp) <= 2.5 * budget_voxels
    assert all(p & (p - 1) == 0 for p in patch)  # powers of two


def test_unet_layout_follows_nnunet_rules() -> None:
    plan = plan_unet((40, 200, 200), (3.0, 0.8, 0.8), 48 * 64 * 64, 16)
    assert plan.kernel_sizes[0] == (1, 3, 3)  # anisotropic: no convolution across coarse slices at first
    assert plan.strides[1][0] == 1 and plan.strides[1][1:] == (2, 2)  # pool in-plane first
    divisor = np.prod(np.array(plan.strides), axis=0)
    assert all(p % d == 0 for p, d in zip(plan.patch_size, divisor, strict=True))
    assert plan.filters[0] == 16 and max(plan.filters) <= 320


def test_plans_cpu_and_gpu_defaults_and_round_trip(tmp_path: Path) -> None:
    fp = _fingerprint()
    cpu = make_plans("Dataset001_X", fp, CPU, ("CT",), (("background", 0), ("liver", 1)))
    assert cpu.default_configuration == "3d_lite"
    gpu = make_plans("Dataset001_X", fp, GPU, ("CT",), (("background", 0), ("liver", 1)))
    assert gpu.default_configuration == "3d_segvol"
    seg = gpu.configuration("3d_segvol")
    assert (seg.vit.input_size, seg.vit.patch_size, seg.vit.hidden_size, seg.vit.num_layers, seg.vit.num_heads) == (
        (32, 256, 256), (4, 16, 16), 768, 12, 12)
    assert seg.vit.num_tokens == 2048 and seg.decoder.upscale_channels == (192, 96)
    lite_cpu, lite_gpu = cpu.configuration("3d_lite"), gpu.configuration("3d_lite")
    assert lite_gpu.vit.num_tokens > lite_cpu.vit.num_tokens  # scales up on a GPU
    assert lite_cpu.estimated_gflop_per_sample <= budget.CPU_TIER.gflop_per_sample
    # the CPU tier's encoder is shallow (minutes of training), the GPU tier's is as deep as its budget allows
    assert (lite_cpu.vit.hidden_size, lite_cpu.vit.num_layers) == (192, 2) and lite_gpu.vit.num_layers > 2
    assert 1 <= lite_cpu.trainer.batch_size <= budget.CPU_TIER.max_batch
    assert cpu.normalization[0].scheme == "ct" and cpu.normalization[0].clip_low == pytest.approx(fp.channels[0].percentile(0.5))
    save_plans(tmp_path / "plans.json", cpu)
    assert load_plans(tmp_path / "plans.json") == cpu
    with pytest.raises(UserError, match="did you mean '3d_lite'"):
        cpu.configuration("3d_lit")


def test_misspelt_field_in_plans_is_an_error(tmp_path: Path) -> None:
    plans = make_plans("Dataset001_X", _fingerprint(), CPU, ("CT",), (("background", 0), ("liver", 1)))
    data = plans.to_json()
    data["configurations"]["3d_lite"]["trainer"]["epoch"] = 3
    (tmp_path / "plans.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="unknown field"):
        load_plans(tmp_path / "plans.json")
    assert Plans.from_json(plans.to_json()) == plans


def test_batch_size_respects_memory() -> None:
    assert budget.batch_size_for(10.0, 8, per_sample_gb=1.0, static_gb=2.0, dataset_cap=100) == 6
    assert budget.batch_size_for(10.0, 8, per_sample_gb=100.0, static_gb=2.0, dataset_cap=100) == 1
    assert budget.batch_size_for(100.0, 8, per_sample_gb=1.0, static_gb=2.0, dataset_cap=0) == 2


def test_splits_are_seeded_and_disjoint() -> None:
    ids = [f"case_{i}" for i in range(12)]
    a, b = make_splits(ids), make_splits(list(reversed(ids)))
    assert a == b and len(a) == 5
    vals = [c for f in a for c in f["val"]]
    assert sorted(vals) == sorted(ids)
    assert all(not set(f["train"]) & set(f["val"]) for f in a)
    assert len(make_splits(["a", "b", "c"])) == 3
    assert make_splits(["a"]) == [{"train": ["a"], "val": ["a"]}]


def test_cpu_lite_grid_is_coarsened_until_the_input_holds_a_quarter_of_the_median_case() -> None:
    fp = _fingerprint(shape=(60, 160, 160), spacing=(2.5, 0.8, 0.8))  # 1.5 M voxels: 9 % in a 131 k input
    cpu = make_plans("Dataset001_X", fp, CPU, ("CT",), (("background", 0), ("liver", 1)))
    lite, segvol = cpu.configuration("3d_lite"), cpu.configuration("3d_segvol")
    assert segvol.target_spacing == pytest.approx((2.5, 0.8, 0.8))  # SegVol's configuration keeps the median
    sp = np.asarray(lite.target_spacing)
    assert (sp > np.array([2.5, 0.8, 0.8])).all()
    # the in-plane axes, more than twice finer, grow first (nnU-Net's lowres rule): the grid gets more isotropic
    assert sp[0] / sp[1] < 2.5 / 0.8
    coverage = np.prod(lite.vit.input_size) / np.prod(lite.median_shape)
    assert 0.2 <= coverage <= 0.5
    assert np.prod(lite.median_shape) * budget.CPU_TIER.min_input_coverage <= budget.CPU_TIER.voxel_budget
    # no coarser than needed: 3 % finer on every axis and the median case holds more than 4 inputs' worth again
    finer = plan_median_shape(fp, tuple(sp / 1.03))
    assert np.prod(finer) * budget.CPU_TIER.min_input_coverage > budget.CPU_TIER.voxel_budget
    # a small case needs nothing coarser; the GPU tier never coarsens
    small = make_plans("Dataset001_X", _fingerprint(shape=(40, 64, 64), spacing=(1.0, 1.0, 1.0)), CPU, ("CT",),
                       (("background", 0), ("liver", 1)))
    assert small.configuration("3d_lite").target_spacing == pytest.approx((1.0, 1.0, 1.0))
    gpu = make_plans("Dataset001_X", fp, GPU, ("CT",), (("background", 0), ("liver", 1)))
    assert gpu.configuration("3d_lite").target_spacing == pytest.approx((2.5, 0.8, 0.8))


def test_lite_trains_on_zoom_out_views_only_where_they_shrink_the_case() -> None:
    assert zoom_out_probability((48, 48, 48), (76, 80, 80)) == 0.0  # Dataset900: the view shrinks 4.4×
    assert zoom_out_probability((32, 64, 64), (120, 320, 320)) == 0.25  # 94×
    fp = _fingerprint(shape=(200, 512, 512), spacing=(1.0, 0.7, 0.7))
    cpu = make_plans("Dataset001_X", fp, CPU, ("CT",), (("background", 0), ("liver", 1)))
    # the CPU tier's input holds a quarter of the median case: no zoom-out views; SegVol's configuration keeps them
    assert cpu.configuration("3d_lite").trainer.zoom_out_probability == 0.0
    assert cpu.configuration("3d_segvol").trainer.zoom_out_probability == 0.25
    lite_gpu = make_plans("Dataset001_X", fp, GPU, ("CT",), (("background", 0), ("liver", 1))).configuration("3d_lite")
    # the GPU tier does not coarsen: its input is a small part of this large case, whose zoom-out view it trains on
    assert np.prod(lite_gpu.median_shape) / np.prod(lite_gpu.vit.input_size) > 8
    assert lite_gpu.trainer.zoom_out_probability == 0.25


def test_the_encoder_ladder_respects_a_depth_cap() -> None:
    assert budget.choose_vit_size(432, 12.0) == (192, 6, 6)  # the compute budget alone
    assert budget.choose_vit_size(432, 12.0, max_layers=2) == (192, 2, 6)
    assert budget.choose_vit_size(432, 0.1, max_layers=2) == (192, 2, 6)  # nothing fits: the smallest allowed
    assert budget.choose_vit_size(432, 0.1) == budget.VIT_LADDER[0]
    with pytest.raises(ValueError, match="at most 1 layers"):
        budget.choose_vit_size(432, 12.0, max_layers=1)
