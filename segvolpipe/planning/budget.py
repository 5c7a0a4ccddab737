"""Compute and memory models used to size the models and pick batch sizes.

The numbers are estimates for a training step (forward + backward), not measurements; they only have to
rank configurations and keep a batch inside the device's memory. Activation bytes per token follow the
usual transformer accounting (about 34 bytes × width per layer and token at 16 bit, with fused
attention that stores no token×token matrix); on the CPU everything is 32 bit, twice that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# (width, layers, heads): the ladder of encoder sizes the compute budget chooses from.
VIT_LADDER: tuple[tuple[int, int, int], ...] = (
    (96, 4, 4),
    (128, 4, 4),
    (192, 2, 6),
    (192, 6, 6),
    (256, 8, 8),
    (384, 8, 8),
    (512, 12, 8),
    (768, 12, 12),
)


@dataclass(frozen=True)
class Tier:
    """A device tier: how much compute and memory one training sample may use."""

    name: str
    voxel_budget: int  # voxels of the ViT input (32×64×64 on CPU, 32×256×256 like SegVol on GPU)
    token_target: int
    gflop_per_sample: float  # forward + backward of the encoder for one sample
    unet_voxel_budget: int
    unet_base_filters: int
    max_batch: int
    epochs: int
    iters_per_epoch: int
    # 3d_lite's spacing is coarsened until its input holds at least this fraction of the median case's voxels
    # (nnU-Net's 3d_lowres rule): on a small budget, context is worth more than resolution
    min_input_coverage: float = 0.0
    # the encoder's depth at most (None: any rung of the ladder)
    max_vit_layers: int | None = None


# The CPU tier's encoder has two layers. With the decoder's image path drawing the masks, the ViT only has to say
# where a target lies, and a shallow one learns that in fewer steps: in ten CPU minutes text-prompt Dice 0.818 with
# the 6 layers the compute budget alone chose, 0.834 with 4, 0.838 with 2 (BENCHMARKS.md, "Training").
CPU_TIER = Tier("cpu", 32 * 64 * 64, 256, 12.0, 48 * 64 * 64, 16, 2, 30, 25, min_input_coverage=0.25,
                max_vit_layers=2)
GPU_TIER = Tier("cuda", 32 * 256 * 256, 2048, 400.0, 128 * 128 * 128, 32, 8, 300, 250)


def vit_params(hidden: int, layers: int, mlp: int, patch_voxels: int, tokens: int, channels: int = 1) -> int:
    """Parameters of a ViT encoder (attention 4h², MLP 2·h·mlp, norms, patch and position embeddings)."""
    per_layer = 4 * hidden * hidden + 4 * hidden + 2 * hidden * mlp + mlp + hidden + 4 * hidden
    return layers * per_layer + (patch_voxels * channels + 1) * hidden + tokens * hidden + 2 * hidden


def vit_gflop(hidden: int, layers: int, tokens: int) -> float:
    """Training FLOPs (×3 for backward) of the encoder for one sample, in GFLOP."""
    dense = 2 * tokens * layers * 12 * hidden * hidden
    attention = 2 * layers * 2 * tokens * tokens * hidden
    return 3 * (dense + attention) / 1e9


def choose_vit_size(tokens: int, gflop_budget: float, max_layers: int | None = None) -> tuple[int, int, int]:
    """The largest (width, layers, heads) of the ladder, at most ``max_layers`` deep, whose training cost fits the
    budget (the smallest such rung when none fits)."""
    rungs = [r for r in VIT_LADDER if max_layers is None or r[1] <= max_layers]
    if not rungs:
        raise ValueError(f"no encoder of the ladder has at most {max_layers} layers")
    best = rungs[0]
    for width, layers, heads in rungs:
        if vit_gflop(width, layers, tokens) <= gflop_budget:
            best = (width, layers, heads)
    return best


def decoder_params(dim: int, depth: int, mlp: int, up: tuple[int, int]) -> int:
    """Rough parameter count of the two-way transformer decoder, hypernetworks and upscaling."""
    attn = 4 * dim * dim
    per_block = 3 * attn + 2 * dim * mlp
    upscale = dim * up[0] * 8 + up[0] * up[1] * 8
    hyper = 4 * (2 * dim * dim + dim * up[1])
    return depth * per_block + attn + upscale + hyper


def training_memory_gb(
    params: int,
    hidden: int,
    layers: int,
    tokens: int,
    input_voxels: int,
    upscale: tuple[int, int],
    prompts: int,
    batch: int,
    half_precision: bool,
    image_detail: int = 0,
) -> float:
    """Estimated peak memory of one training step in GiB.

    Weights, gradients and AdamW moments in fp32 (16 bytes per parameter), encoder activations
    (34 or 68 bytes × width per token and layer), the image path's (``image_detail`` channels: three stored
    tensors per block, one block at the input's size, about eight at the 64× token count with the deeper levels),
    and per prompt the decoder's upscaled feature maps (×8 then ×64 the token count, three stored tensors each) and
    the full-size logits.
    """
    bytes_act = 2 if half_precision else 4
    static = 16 * params
    encoder = layers * tokens * hidden * 17 * bytes_act
    encoder += 3 * bytes_act * image_detail * (input_voxels + 8 * 64 * tokens)
    decoder = prompts * (3 * bytes_act * tokens * (8 * upscale[0] + 64 * upscale[1]) + 3 * 4 * input_voxels)
    return (static + batch * (encoder + decoder)) / 1024**3


def batch_size_for(budget_gb: float, max_batch: int, per_sample_gb: float, static_gb: float, dataset_cap: int) -> int:
    """The largest batch that fits ``budget_gb`` (80 % usable), within [1, max_batch] and the dataset cap."""
    usable = 0.8 * budget_gb - static_gb
    fit = math.floor(usable / per_sample_gb) if per_sample_gb > 0 else max_batch
    return int(max(1, min(fit, max_batch, max(2, dataset_cap))))
