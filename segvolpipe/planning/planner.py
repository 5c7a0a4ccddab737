"""Self-configuration: fingerprint (+ accelerator, + user overrides) → :class:`Plans`.

Rules (see ARCHITECTURE.md "Planning"):

* Target spacing: per-axis median; when the coarsest axis is > 3× the others, that axis takes its
  10th percentile instead (nnU-Net's anisotropy rule).
* ``3d_lite``: the ViT input keeps the proportions of the median case (the whole-volume "zoom-out"
  view), scaled down into the tier's voxel budget; patch sizes make physically near-cubic patches with
  about the tier's token count; width/depth are the largest that fit the tier's compute budget (at most 2 layers
  on the CPU tier, whose minutes of training a shallow encoder uses best: ``budget.CPU_TIER``). On the CPU
  tier the grid is first coarsened (nnU-Net's 3d_lowres rule, :func:`coarsen_for_coverage`) until the input
  holds at least a quarter of the median case. Its decoder gets the convolutional image path, and zoom-out
  training samples only where the whole median case is over 8 inputs (:func:`zoom_out_probability`).
* ``3d_segvol``: SegVol's reference model (input 32×256×256, patch 4×16×16, width 768, 12 layers, 12 heads).
* Batch size from the memory model of :mod:`segvolpipe.planning.budget`, at most 5 % of the dataset's
  voxels per batch (but at least 2 when memory allows), capped per tier.
* The default configuration follows the accelerator: ``3d_segvol`` on a CUDA GPU with ≥ 20 GB, else ``3d_lite``.
"""

from __future__ import annotations

import itertools

import numpy as np

from segvolpipe.fingerprint import Fingerprint
from segvolpipe.planning import budget
from segvolpipe.planning.plans import (
    Accelerator,
    ConfigurationPlan,
    DecoderPlan,
    InferencePlan,
    Plans,
    TrainerPlan,
    UNetPlan,
    ViTPlan,
)
from segvolpipe.preprocessing.normalization import ChannelNorm, default_scheme
from segvolpipe.preprocessing.resampling import ANISOTROPY_THRESHOLD, anisotropic_axis, resampled_shape

SEGVOL_MIN_GPU_GB = 20.0


# Peak AdamW learning rates: SegVol's 1e-4 for its ViT-B; 3e-4 for the smaller from-scratch 3d_lite models.
# 1e-3 led in 4-minute CPU runs of an older model (val crop Dice 0.06 at 1e-4, 0.10 at 1e-3, 0.08 at 3e-3), but
# over 10 minutes (Dataset900, fold 0, BENCHMARKS.md "Training") 3e-4 gives text-prompt Dice 0.283 / 0.484 against
# 0.197 / 0.335 (nnU-Net's augmentation / none, seed 0), box + text the same or better (the demo's 6-minute run:
# text 0.150 -> 0.193, box + text 0.575 -> 0.513: boxes come later at the lower rate; at 1e-4, ten minutes give
# text 0.282 but box + text 0.410).
SEGVOL_LR = 1e-4
LITE_LR = 3e-4
# 3d_lite's decoder reads the image through a small U-Net (models/detail.py; its peak lr is the U-Net's): in ten
# CPU minutes (Dataset900, fold 0, --augmentation none, seed 0) text-prompt Dice 0.484 -> 0.800, box + text
# 0.673 -> 0.802 (BENCHMARKS.md, "Training"). 3d_segvol stays SegVol's model exactly.
LITE_IMAGE_DETAIL = 16
# SegVol's multi-size training: a quarter of the samples are the whole case resized to the input (the view the
# zoom-out pass of prediction sees). 3d_lite keeps it only where that view shrinks the median case more than
# ZOOM_OUT_MIN_SHRINK times in volume; on the CPU tier the input holds at least a quarter of the median case, so the
# view is close to a crop and the samples are better spent on crops: ten CPU minutes (Dataset900, fold 0, seed 0)
# reached text-prompt Dice 0.818 without them against 0.801 (BENCHMARKS.md, "Training"). 3d_segvol keeps SegVol's.
ZOOM_OUT_PROBABILITY = TrainerPlan.zoom_out_probability  # SegVol's share, the plans' default
ZOOM_OUT_MIN_SHRINK = 8.0


def zoom_out_probability(input_size: tuple[int, int, int], median: tuple[int, int, int]) -> float:
    """SegVol's share of zoom-out samples when the median case is over ``ZOOM_OUT_MIN_SHRINK`` inputs, else 0."""
    shrink = float(np.prod(median, dtype=np.float64)) / float(np.prod(input_size, dtype=np.float64))
    return ZOOM_OUT_PROBABILITY if shrink > ZOOM_OUT_MIN_SHRINK else 0.0

def plan_target_spacing(spacings: np.ndarray) -> tuple[float, float, float]:
    """Median spacing, with the coarse axis at its 10th percentile for anisotropic datasets."""
    target = np.median(spacings, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    if target[worst] > ANISOTROPY_THRESHOLD * max(target[others]):
        low = float(np.percentile(spacings[:, worst], 10))
        target[worst] = max(low, float(max(target[others])) + 1e-5)
    return tuple(float(v) for v in target)  # type: ignore[return-value]


def plan_median_shape(fp: Fingerprint, target: tuple[float, float, float]) -> tuple[int, int, int]:
    """Median over cases of the cropped shape resampled to ``target``."""
    shapes = [resampled_shape(c["cropped_shape"], c["spacing"], target) for c in fp.cases]
    return tuple(int(v) for v in np.median(np.array(shapes), axis=0))  # type: ignore[return-value]


def coarsen_for_coverage(
    fp: Fingerprint, target: tuple[float, float, float], input_voxels: int, min_coverage: float
) -> tuple[tuple[float, float, float], tuple[int, int, int]]:
    """The spacing (and median shape there) at which an input of ``input_voxels`` holds ``min_coverage`` of the
    median case, starting from ``target``; ``target`` itself when it already does.

    nnU-Net's 3d_lowres rule: the spacing grows by 3 % per step, only along the finest axes while some axis is
    more than twice as fine as the coarsest, so an anisotropic grid first becomes more isotropic.
    """
    spacing = np.asarray(target, dtype=np.float64)
    median = plan_median_shape(fp, target)
    if min_coverage <= 0:
        return target, median
    while float(np.prod(median, dtype=np.float64)) * min_coverage > input_voxels:
        fine = spacing.max() / spacing > 2
        spacing = np.where(fine, spacing * 1.03, spacing) if fine.any() else spacing * 1.03
        median = plan_median_shape(fp, tuple(float(v) for v in spacing))  # type: ignore[arg-type]
    return tuple(float(v) for v in spacing), median  # type: ignore[return-value]


def plan_vit_geometry(
    median_shape: tuple[int, int, int], spacing: tuple[float, float, float], voxel_budget: int, tokens: int
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """ViT input size and patch size (z, y, x) for the median case, a voxel budget and a token target.

    The input keeps the median case's proportions (it is also the whole-volume zoom-out view), scaled
    into ``voxel_budget``. Patch sizes are powers of two chosen among all combinations to bring the
    token count near ``tokens`` while keeping patches physically close to cubes.
    """
    m = np.asarray(median_shape, dtype=np.float64)
    f = min(1.0, (voxel_budget / m.prod()) ** (1 / 3))
    size = np.maximum(m * f, 2.0)
    sp = np.asarray(spacing, dtype=np.float64)
    options = [[2**k for k in range(7) if 2 ** (k + 1) <= max(2.0, s)] for s in size]
    best, best_score = None, np.inf
    for combo in itertools.product(*options):
        patch = np.asarray(combo, dtype=np.float64)
        grid = np.maximum(np.round(size / patch), 2)
        physical = patch * sp
        score = abs(np.log(grid.prod() / tokens)) + 2.0 * np.log(physical.max() / physical.min())
        if score < best_score:
            best, best_score = (patch, grid), score
    assert best is not None
    patch, grid = best
    inp = tuple(int(g * p) for g, p in zip(grid, patch, strict=True))
    return inp, tuple(int(p) for p in patch)  # type: ignore[return-value]


def plan_unet(
    median_shape: tuple[int, int, int], spacing: tuple[float, float, float], voxel_budget: int, base_filters: int
) -> UNetPlan:
    """nnU-Net-style patch (∝ 1/spacing, within the median shape) and pooling/kernel layout."""
    sp = np.asarray(spacing, dtype=np.float64)
    p = 1.0 / sp
    p = p * (voxel_budget / p.prod()) ** (1 / 3)
    p = np.minimum(p, np.asarray(median_shape, dtype=np.float64))
    size = np.maximum(np.floor(p), 4).astype(int)
    kernels: list[tuple[int, int, int]] = [tuple(3 if s <= 2 * sp.min() else 1 for s in sp)]  # type: ignore[list-item]
    strides: list[tuple[int, int, int]] = [(1, 1, 1)]
    cur_sp, cur_sz = sp.copy(), size.astype(np.float64)
    for _ in range(5):
        pool = [cur_sz[a] / 2 >= 4 and cur_sp[a] <= 2 * cur_sp.min() for a in range(3)]
        if not any(pool):
            break
        strides.append(tuple(2 if q else 1 for q in pool))  # type: ignore[arg-type]
        cur_sp = np.where(pool, cur_sp * 2, cur_sp)
        cur_sz = np.where(pool, cur_sz / 2, cur_sz)
        kernels.append(tuple(3 if s <= 2 * cur_sp.min() else 1 for s in cur_sp))  # type: ignore[arg-type]
    divisor = np.prod(np.array(strides), axis=0)
    size = np.maximum(divisor, (size // divisor) * divisor)
    filters = tuple(min(base_filters * 2**i, 320) for i in range(len(strides)))
    return UNetPlan(tuple(int(v) for v in size), tuple(kernels), tuple(strides), filters)  # type: ignore[arg-type]


def _dataset_batch_cap(fp: Fingerprint, target: tuple[float, float, float], input_voxels: int) -> int:
    total = sum(np.prod(resampled_shape(c["cropped_shape"], c["spacing"], target)) for c in fp.cases)
    return int(0.05 * total // input_voxels)


def _configuration(
    name: str,
    fp: Fingerprint,
    accel: Accelerator,
    target: tuple[float, float, float],
    median: tuple[int, int, int],
    vit: ViTPlan,
    tier: budget.Tier,
    epochs: int,
    iters: int,
    warmup: int,
    notes: str,
    lr: float,
    image_detail: int = 0,
    zoom_out: float = ZOOM_OUT_PROBABILITY,
) -> ConfigurationPlan:
    n_labels = len(fp.labels)
    dec_heads = 8 if vit.hidden_size % 8 == 0 else 4
    decoder = DecoderPlan(
        prompt_embed_dim=vit.hidden_size,
        transformer_depth=2,
        transformer_mlp_dim=2048 if vit.hidden_size == 768 else max(64, (vit.hidden_size * 8 // 3) // 64 * 64),
        transformer_heads=dec_heads,
        upscale_channels=(vit.hidden_size // 4, vit.hidden_size // 8),
        image_detail_channels=image_detail,
    )
    voxels = int(np.prod(vit.input_size))
    patch_voxels = int(np.prod(vit.patch_size))
    params = budget.vit_params(vit.hidden_size, vit.num_layers, vit.mlp_dim, patch_voxels, vit.num_tokens, len(fp.channels))
    params += budget.decoder_params(vit.hidden_size, 2, decoder.transformer_mlp_dim, decoder.upscale_channels)
    params += 9800 * image_detail**2  # the image path's convolutions (2.51 M parameters at 16 channels)
    prompts = max(1, min(n_labels, 8))
    half = accel.kind == "cuda"

    def mem(batch: int) -> float:
        return budget.training_memory_gb(params, vit.hidden_size, vit.num_layers, vit.num_tokens, voxels,
                                         decoder.upscale_channels, prompts, batch, half, image_detail)

    static = mem(0)
    per_sample = mem(1) - static
    memory_budget = accel.memory_gb if accel.kind == "cuda" else min(accel.memory_gb * 0.5, 16.0)
    batch = budget.batch_size_for(memory_budget, tier.max_batch, per_sample, static,
                                  _dataset_batch_cap(fp, target, voxels))
    unet = plan_unet(median, target, tier.unet_voxel_budget, tier.unet_base_filters)
    return ConfigurationPlan(
        name=name,
        target_spacing=target,
        median_shape=median,
        anisotropic_axis=anisotropic_axis(target),
        vit=vit,
        decoder=decoder,
        unet=unet,
        trainer=TrainerPlan(batch_size=batch, epochs=epochs, iters_per_epoch=iters, lr=lr,
                            warmup_epochs=warmup, max_prompts_per_sample=prompts, zoom_out_probability=zoom_out),
        inference=InferencePlan(roi_size=vit.input_size, zoom_out_size=vit.input_size),
        estimated_memory_gb=round(mem(batch), 2),
        estimated_gflop_per_sample=round(budget.vit_gflop(vit.hidden_size, vit.num_layers, vit.num_tokens), 1),
        notes=notes,
    )


def plan_normalization(fp: Fingerprint, overrides: dict[int, str]) -> tuple[ChannelNorm, ...]:
    """One :class:`ChannelNorm` per channel: the channel name's default scheme unless overridden."""
    use_mask = fp.median_crop_fraction < 0.75  # nnU-Net: z-score inside the non-zero mask when cropping shrank a lot
    norms = []
    for ch in fp.channels:
        scheme = overrides.get(ch.index, default_scheme(ch.name))
        if scheme == "ct":
            norms.append(ChannelNorm(ch.index, ch.name, "ct", False, ch.percentile(0.5), ch.percentile(99.5), ch.mean, ch.std))
        else:
            norms.append(ChannelNorm(ch.index, ch.name, scheme, use_mask and scheme == "zscore"))
    return tuple(norms)


def _sized_for(tier: budget.Tier) -> str:
    depth = f", at most {tier.max_vit_layers} encoder layers" if tier.max_vit_layers else ""
    return f"sized for the {tier.name} tier: {tier.gflop_per_sample:g} GFLOP per sample{depth}"


def make_plans(
    dataset: str,
    fp: Fingerprint,
    accel: Accelerator,
    channel_names: tuple[str, ...],
    labels: tuple[tuple[str, int], ...],
    norm_overrides: dict[int, str] | None = None,
) -> Plans:
    """Plan both configurations for a fingerprint and an accelerator."""
    target = plan_target_spacing(fp.spacings)
    median = plan_median_shape(fp, target)
    tier = budget.GPU_TIER if accel.kind == "cuda" else budget.CPU_TIER
    lite_target, lite_median = coarsen_for_coverage(fp, target, tier.voxel_budget, tier.min_input_coverage)
    inp, patch = plan_vit_geometry(lite_median, lite_target, tier.voxel_budget, tier.token_target)
    tokens = int(np.prod([i // p for i, p in zip(inp, patch, strict=True)]))
    width, layers, heads = budget.choose_vit_size(tokens, tier.gflop_per_sample, tier.max_vit_layers)
    lite_vit = ViTPlan(inp, patch, width, 4 * width, layers, heads)
    lite = _configuration("3d_lite", fp, accel, lite_target, lite_median, lite_vit, tier, tier.epochs, tier.iters_per_epoch,
                          max(1, tier.epochs // 30), _sized_for(tier),
                          LITE_LR, LITE_IMAGE_DETAIL,
                          zoom_out_probability(inp, lite_median))
    segvol_vit = ViTPlan((32, 256, 256), (4, 16, 16), 768, 3072, 12, 12)
    segvol_tier = budget.Tier("segvol", 0, 2048, 0.0, budget.GPU_TIER.unet_voxel_budget, 32,
                              4 if accel.kind == "cuda" else 1, 500, 250)
    segvol = _configuration("3d_segvol", fp, accel, target, median, segvol_vit, segvol_tier, 500, 250, 10,
                            "SegVol's reference model (BAAI-DCAI/SegVol)", SEGVOL_LR)
    default = "3d_segvol" if accel.kind == "cuda" and accel.memory_gb >= SEGVOL_MIN_GPU_GB else "3d_lite"
    return Plans(
        dataset=dataset,
        channel_names=channel_names,
        labels=labels,
        normalization=plan_normalization(fp, norm_overrides or {}),
        configurations={"3d_lite": lite, "3d_segvol": segvol},
        default_configuration=default,
        accelerator=accel,
        fingerprint_hash=fp.input_hash,
    )
