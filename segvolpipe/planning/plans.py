"""The plans: the single source of truth for preprocessing, models, training and inference.

``plans.json`` holds everything the later stages need, so training reads nothing else. All objects are
frozen dataclasses that round-trip through JSON (:mod:`segvolpipe.config`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segvolpipe.config import from_jsonable, to_jsonable
from segvolpipe.errors import UserError, check_choice
from segvolpipe.io.atomic import SCHEMA_VERSION, read_json, write_json
from segvolpipe.preprocessing.normalization import ChannelNorm

Shape3 = tuple[int, int, int]
Spacing3 = tuple[float, float, float]


def _positive(name: str, values: tuple[float, ...] | tuple[int, ...]) -> None:
    if len(values) != 3 or min(values) <= 0:
        raise ValueError(f"{name} must be three positive numbers, got {values}")


@dataclass(frozen=True)
class ViTPlan:
    """The SegVol image encoder (MONAI ViT with perceptron patch embedding); sizes in (z, y, x)."""

    input_size: Shape3
    patch_size: Shape3
    hidden_size: int
    mlp_dim: int
    num_layers: int
    num_heads: int
    pos_embed: str = "perceptron"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _positive("input_size", self.input_size)
        _positive("patch_size", self.patch_size)
        if any(i % p for i, p in zip(self.input_size, self.patch_size, strict=True)):
            raise ValueError(f"input_size {self.input_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")

    @property
    def grid(self) -> Shape3:
        return tuple(i // p for i, p in zip(self.input_size, self.patch_size, strict=True))  # type: ignore[return-value]

    @property
    def num_tokens(self) -> int:
        z, y, x = self.grid
        return z * y * x


@dataclass(frozen=True)
class DecoderPlan:
    """SAM-style prompt encoder and two-way-transformer mask decoder of SegVol."""

    prompt_embed_dim: int
    transformer_depth: int = 2
    transformer_mlp_dim: int = 2048
    transformer_heads: int = 8
    upscale_channels: tuple[int, int] = (192, 96)
    text_embed_dim: int = 512
    num_multimask_outputs: int = 3
    #: Base channels of the convolutional image path into the decoder (:mod:`segvolpipe.models.detail`); 0 = none,
    #: SegVol's decoder exactly.
    image_detail_channels: int = 0


@dataclass(frozen=True)
class UNetPlan:
    """nnU-Net-like DynUNet (the task-specific baseline), configured nnU-Net's way from spacing and shape."""

    patch_size: Shape3
    kernel_sizes: tuple[Shape3, ...]
    strides: tuple[Shape3, ...]
    filters: tuple[int, ...]
    deep_supervision: bool = True

    def __post_init__(self) -> None:
        if not (len(self.kernel_sizes) == len(self.strides) == len(self.filters)):
            raise ValueError("kernel_sizes, strides and filters must have one entry per resolution level")


#: Training augmentation levels (``TrainerPlan.augmentation``, ``segvol train --augmentation``).
AUGMENTATIONS = ("full", "mirror", "none")


@dataclass(frozen=True)
class TrainerPlan:
    """Training defaults (every one overridable from ``segvol train``)."""

    batch_size: int
    epochs: int
    iters_per_epoch: int
    lr: float = 1e-4
    # AdamW's peak for the U-Net baseline: 10-minute CPU runs on the phantom CT fold 0 reached validation Dice 0.09
    # at 3e-4 and 0.66 at 3e-3 (BENCHMARKS.md, "Training")
    unet_lr: float = 3e-3
    weight_decay: float = 1e-5
    warmup_epochs: int = 1
    grad_clip: float = 1.0
    oversample_foreground: float = 0.33
    zoom_out_probability: float = 0.25
    pseudo_mask_weight: float = 0.1
    max_prompts_per_sample: int = 8
    box_jitter_voxels: int = 5
    bf16_on_cuda: bool = True
    # bf16 autocast on CPUs that do it natively (AVX512-BF16, AMX); off elsewhere (segvolpipe.precision)
    bf16_on_cpu: bool = True
    # axes (z, y, x of the canonical grid) that augmentation mirrors, and the mirroring test-time augmentation
    # flips: only the left-right axis, since every case is reoriented before training and prediction, so a body
    # is never upside down or back to front; a U-Net trained 10 minutes with nnU-Net's all-axes mirroring reached
    # validation Dice 0.770, with this one 0.817 (BENCHMARKS.md, "Training"). [0, 1, 2] restores nnU-Net's.
    mirror_axes: tuple[int, ...] = (2,)
    # the same for the promptable variants: none. A mirror across the body moves the liver, spleen and stomach to
    # the other side, a body no scan shows; a text-prompted model must learn where each named organ lies, and ten
    # CPU minutes of segvol with nnU-Net's augmentation but no mirroring reached text-prompt Dice 0.773 against 0.660
    # (seed 0; BENCHMARKS.md, "Training"), where the U-Net loses nothing by mirroring.
    promptable_mirror_axes: tuple[int, ...] = ()
    # what training samples go through: "full" (nnU-Net's rotation, scaling, noise, brightness, contrast and gamma,
    # then the mirroring), "mirror" (the mirroring alone) or "none"; ten-minute CPU U-Nets fitted faster with less
    # (BENCHMARKS.md, "Training"), the default stays nnU-Net's
    augmentation: str = "full"
    # weight of the decoder image path's class head (multi-class Dice + cross-entropy beside the prompts' loss,
    # training only; segvol with the path, single-dataset runs): ten CPU minutes of segvol reached text-prompt
    # Dice 0.792 with it against 0.773 (seed 0; BENCHMARKS.md, "Training"). 0 trains the path through the prompts'
    # masks alone.
    detail_aux_weight: float = 0.5

    def __post_init__(self) -> None:
        if not (self.detail_aux_weight >= 0 and math.isfinite(self.detail_aux_weight)):
            raise ValueError(f"detail_aux_weight must be a number ≥ 0, got {self.detail_aux_weight}")
        check_mirror_axes(self.mirror_axes)
        check_mirror_axes(self.promptable_mirror_axes)
        check_augmentation(self.augmentation)


def check_augmentation(name: str) -> None:
    """``name`` is one of :data:`AUGMENTATIONS`; ValueError otherwise."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}; got {name!r}")


def check_mirror_axes(axes: tuple[int, ...]) -> None:
    """Mirror axes are distinct values among 0, 1, 2 (z, y, x); ValueError otherwise."""
    if len(set(axes)) != len(axes) or not set(axes) <= {0, 1, 2}:
        raise ValueError(f"mirror axes must be distinct values among 0, 1, 2; got {list(axes)}")


@dataclass(frozen=True)
class InferencePlan:
    """Sliding-window and zoom-out-zoom-in parameters."""

    roi_size: Shape3
    zoom_out_size: Shape3
    overlap: float = 0.5
    sigma_scale: float = 0.125
    threshold: float = 0.5
    mode_promptable: str = "zoom"
    mode_unet: str = "sliding"


@dataclass(frozen=True)
class ConfigurationPlan:
    """One configuration (``3d_lite``, ``3d_segvol``): data grid, model sizes, trainer and inference defaults."""

    name: str
    target_spacing: Spacing3
    median_shape: Shape3
    anisotropic_axis: int | None
    vit: ViTPlan
    decoder: DecoderPlan
    unet: UNetPlan
    trainer: TrainerPlan
    inference: InferencePlan
    image_order: int = 3
    label_order: int = 1
    estimated_memory_gb: float = 0.0
    estimated_gflop_per_sample: float = 0.0
    notes: str = ""

    def __post_init__(self) -> None:
        _positive("target_spacing", self.target_spacing)


@dataclass(frozen=True)
class Accelerator:
    """The compute the plans were made for."""

    kind: str  # "cpu" | "cuda"
    name: str
    memory_gb: float
    count: int = 1


@dataclass(frozen=True)
class Plans:
    """The content of ``plans.json``."""

    dataset: str
    channel_names: tuple[str, ...]
    labels: tuple[tuple[str, int], ...]
    normalization: tuple[ChannelNorm, ...]
    configurations: dict[str, ConfigurationPlan]
    default_configuration: str
    accelerator: Accelerator
    fingerprint_hash: str
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.default_configuration not in self.configurations:
            raise ValueError(f"default configuration {self.default_configuration!r} is not planned")
        if len(self.normalization) != len(self.channel_names):
            raise ValueError("one normalisation per channel is required")

    def configuration(self, name: str | None) -> ConfigurationPlan:
        """The named configuration (the default when None); unknown → UserError with the choices."""
        return self.configurations[check_choice(name or self.default_configuration, list(self.configurations),
                                                "configuration")]

    @property
    def label_names(self) -> dict[int, str]:
        return {i: n for n, i in self.labels}

    def to_json(self) -> dict[str, Any]:
        return to_jsonable(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plans:
        data = {k: v for k, v in data.items() if k != "provenance"}
        return from_jsonable(cls, data)


def save_plans(path: Path, plans: Plans) -> None:
    write_json(path, plans.to_json())


def load_plans(path: Path) -> Plans:
    """Read ``plans.json``; a missing or invalid file is a UserError naming it and the command to run."""
    if not path.exists():
        raise UserError("no plans; run `segvol plan-preprocess` first", path)
    try:
        return Plans.from_json(read_json(path))
    except (TypeError, ValueError, KeyError) as exc:
        raise UserError(f"invalid plans ({exc}); rerun `segvol plan-preprocess --overwrite`", path) from None
