"""One frozen dataclass holds every hyper-parameter of a training run; it is written to ``fold_k/config.json``.

Defaults come from the plans (:func:`config_from_plans`); every command-line option overrides one field,
so changing an epoch count never needs a subclass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from segvolpipe.config import from_stamped_json, to_jsonable
from segvolpipe.models.spec import ModelSpec
from segvolpipe.planning.plans import Plans, check_augmentation
from segvolpipe.training.data import SamplingOptions
from segvolpipe.training.prompts import PromptOptions
from segvolpipe.training.universal import UniversalPlan

FOLDS = ("0", "1", "2", "3", "4", "all")


@dataclass(frozen=True)
class TrainConfig:
    """A training run.

    Attributes:
        dataset, configuration, variant, fold: What is trained (``fold`` ``"0"``–``"4"`` or ``"all"``).
        model: The model spec (sizes from the plans, variant options).
        epochs, iters_per_epoch, batch_size: Optimiser steps are ``epochs × iters_per_epoch`` (per process).
        lr, weight_decay, warmup_epochs, grad_clip: AdamW, linear warm-up then cosine to zero, clipping.
        detail_lr: Peak lr of the decoder's convolutional image path (:mod:`segvolpipe.models.detail`), on the
            same schedule; the plans' U-Net lr when the model has one (a U-Net learns at the U-Net's rate), else None.
        detail_aux_weight: Weight of the image path's class-head loss (multi-class Dice + cross-entropy against the
            label map) added to the prompts' loss; the plans' for ``segvol`` with the path on one dataset, else 0
            (so3 and prior freeze the path; a universal model's datasets label different classes).
        time_budget_s: Stop after this much training time; the cosine schedule is fitted to the epochs that
            fit in the budget, refitted after every epoch from the last epoch's length, and an epoch the budget
            runs out in stops after the step that spent it.
        seed: Seeds the weights, the data and the prompts (batches are a function of seed, epoch, step).
        device: ``cpu`` or ``cuda``; ``bf16``: autocast to bfloat16 (when the device does it natively:
            :mod:`segvolpipe.precision`).
        workers: Data-loading processes per training process.
        val_iters: Validation batches per epoch (fixed samples of the fold's validation cases); their Dice's
            exponential moving average (``ema_weight`` for the newest epoch) picks ``checkpoint_best.pt``.
        sampling, prompts: Data and prompt sampling.
        init: Results folder or checkpoint the model starts from (``so3``/``prior``: the trained ``segvol``).
        pretrained: SegVol checkpoint to start from.
        universal: The datasets of a universal model (``dataset`` is then its ``Universal_…`` name), else None.
        gpus: Processes (one per GPU; CPU processes with gloo when ``device`` is ``cpu``).
    """

    dataset: str
    configuration: str
    variant: str
    fold: str
    model: ModelSpec
    epochs: int
    iters_per_epoch: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_epochs: int
    grad_clip: float
    sampling: SamplingOptions
    prompts: PromptOptions
    time_budget_s: float | None = None
    seed: int = 0
    device: str = "cpu"
    bf16: bool = True
    workers: int = 2
    val_iters: int = 4
    ema_weight: float = 0.2
    init: str | None = None
    pretrained: str | None = None
    gpus: int = 1
    universal: UniversalPlan | None = None
    detail_lr: float | None = None
    detail_aux_weight: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.fold not in FOLDS:
            raise ValueError(f"fold must be one of {', '.join(FOLDS)}, got {self.fold!r}")
        for name in ("epochs", "iters_per_epoch", "batch_size", "gpus"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.detail_lr is not None and not (self.detail_lr > 0 and math.isfinite(self.detail_lr)):
            raise ValueError(f"detail_lr must be a positive number, got {self.detail_lr}")
        if not (self.detail_aux_weight >= 0 and math.isfinite(self.detail_aux_weight)):
            raise ValueError(f"detail_aux_weight must be a number ≥ 0, got {self.detail_aux_weight}")
        if self.detail_aux_weight and not (trains_class_head(self.model) and self.universal is None):
            raise ValueError("detail_aux_weight is for segvol with the decoder's image path, on one dataset")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"the time budget must be positive, got {self.time_budget_s} s")
        if self.prompts.num_points > self.model.point_tokens:
            raise ValueError(f"{self.prompts.num_points} points per prompt exceed the model's {self.model.point_tokens}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")

    @property
    def warmup_steps(self) -> int:
        return self.warmup_epochs * self.iters_per_epoch

    def to_json(self) -> dict[str, Any]:
        return to_jsonable(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        return from_stamped_json(cls, data)

    def resumable_from(self, other: TrainConfig) -> list[str]:
        """Fields that differ from a stored run in ways that forbid ``--resume`` (epochs, the time budget,
        the device, workers and init sources may change)."""
        free = {"epochs", "time_budget_s", "device", "workers", "init", "pretrained", "bf16", "extras"}
        changed = []
        for f in to_jsonable(self):
            mine, theirs = getattr(self, f), getattr(other, f)
            if f in free or mine == theirs:
                continue
            if f in ("sampling", "prompts"):  # name the option inside (e.g. sampling.mirror_axes after an upgrade)
                changed += [f"{f}.{g.name}" for g in fields(mine) if getattr(mine, g.name) != getattr(theirs, g.name)]
            else:
                changed.append(f)
        return changed

    def trains_like(self, other: TrainConfig) -> bool:
        """Whether a finished run with ``other``'s settings is what this config would train (the device and the
        loader workers aside)."""
        same = ("epochs", "time_budget_s", "init", "pretrained")
        return not self.resumable_from(other) and all(getattr(self, f) == getattr(other, f) for f in same)


def config_from_plans(plans: Plans, spec: ModelSpec, fold: str, **overrides: Any) -> TrainConfig:
    """The plans' defaults for ``spec``, with ``overrides`` (None values ignored) applied."""
    conf = plans.configuration(spec.configuration)
    trainer = conf.trainer
    unet = spec.variant == "unet"
    input_size = spec.unet.patch_size if unet else spec.vit.input_size
    sampling = SamplingOptions(input_size=input_size, batch_size=trainer.batch_size,
                               oversample_foreground=trainer.oversample_foreground,
                               zoom_out_probability=0.0 if unet else trainer.zoom_out_probability,
                               label_mirror=spec.label_mirror(),
                               mirror_axes=trainer.mirror_axes if unet else trainer.promptable_mirror_axes,
                               **augmentation_fields(trainer.augmentation))
    prompts = PromptOptions(max_prompts=trainer.max_prompts_per_sample + 2, box_jitter=trainer.box_jitter_voxels,
                            pseudo_weight=trainer.pseudo_mask_weight)
    config = TrainConfig(
        dataset=plans.dataset, configuration=conf.name, variant=spec.variant, fold=fold, model=spec,
        epochs=trainer.epochs, iters_per_epoch=trainer.iters_per_epoch, batch_size=trainer.batch_size,
        lr=trainer.unet_lr if unet else trainer.lr, weight_decay=trainer.weight_decay,
        warmup_epochs=trainer.warmup_epochs, grad_clip=trainer.grad_clip, sampling=sampling, prompts=prompts,
        bf16=trainer.bf16_on_cuda if overrides.get("device") == "cuda" else trainer.bf16_on_cpu,
        detail_lr=trainer.unet_lr if spec.decoder.image_detail_channels and not unet else None,
        detail_aux_weight=trainer.detail_aux_weight if trains_class_head(spec) else 0.0,
    )
    return apply_overrides(config, **overrides)


def trains_class_head(spec: ModelSpec) -> bool:
    """Whether a model of ``spec`` trains its image path's class head: ``segvol`` with the path, not the frozen-base
    LoRA baseline (``so3`` and ``prior`` freeze the path; a universal run is checked by :class:`TrainConfig`)."""
    return spec.variant == "segvol" and bool(spec.decoder.image_detail_channels) and spec.lora is None


def augmentation_fields(name: str) -> dict[str, bool]:
    """:class:`SamplingOptions` fields of an augmentation level (``full``, ``mirror``, ``none``)."""
    check_augmentation(name)
    return {"augment": name != "none", "transforms": name == "full"}


def apply_overrides(config: TrainConfig, **overrides: Any) -> TrainConfig:
    """Replace fields (``sampling_*`` / ``prompts_*`` reach into the nested options); None means keep."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    sampling = {k[len("sampling_"):]: overrides.pop(k) for k in list(overrides) if k.startswith("sampling_")}
    prompts = {k[len("prompts_"):]: overrides.pop(k) for k in list(overrides) if k.startswith("prompts_")}
    if "batch_size" in overrides:
        sampling["batch_size"] = overrides["batch_size"]
    return replace(config, sampling=replace(config.sampling, **sampling), prompts=replace(config.prompts, **prompts),
                   **overrides)
