"""What a model is built from: the plans' sizes plus the variant's options, as one frozen dataclass.

A :class:`ModelSpec` is everything a builder needs and is written next to every checkpoint, so a model can
be rebuilt from its results folder without the plans (and a checkpoint from another configuration is
recognised before any weight is loaded).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from segvolpipe.config import from_stamped_json, to_jsonable
from segvolpipe.planning.plans import DecoderPlan, Plans, UNetPlan, ViTPlan

CT = "ct"
MRI = "mri"
MODALITIES = (CT, MRI)


def normalise_label_name(name: str) -> str:
    """One spelling per structure: ``"Left Kidney"``, ``"left_kidney"`` and ``"left-kidney"`` → ``"left kidney"``."""
    return re.sub(r"[\s_\-]+", " ", name.strip().lower()).strip()


#: The array axis that runs across the body in the canonical (S, A, R) layout: mirroring it swaps left and right.
LEFT_RIGHT_AXIS = 2
_SIDES = {"left": "right", "right": "left", "l": "r", "r": "l"}


def _words(name: str) -> tuple[str, ...]:
    return tuple(re.findall(r"[a-z0-9]+", name.lower()))


def lateral_partner(name: str) -> str | None:
    """The same structure on the other side of the body (as lower-case words), or None for a name with no side.

    A side is a whole word ``left``/``right`` (``"Left Kidney"``, ``"kidney_right"``, ``"Lung (left)"``) or a
    trailing ``l``/``r`` (``"kidney_l"``, ``"Lung (L)"``), as public datasets spell them.
    """
    words = _words(name)
    for i, word in enumerate(words):
        if word in ("left", "right") or (word in ("l", "r") and i == len(words) - 1 and len(words) > 1):
            return " ".join((*words[:i], _SIDES[word], *words[i + 1 :]))
    return None


def lateral_permutation(names: Sequence[str]) -> tuple[int, ...] | None:
    """For names ``n_0 … n_{k-1}``: the index of each one's partner on the other side of the body (itself when it
    has none among ``names``), or None when no pair exists. Mirroring an image across the body's left–right axis
    turns structure ``i`` into structure ``perm[i]``."""
    index = {" ".join(_words(n)): i for i, n in enumerate(names)}
    perm = tuple(index.get(lateral_partner(n) or "", i) for i, n in enumerate(names))
    return None if perm == tuple(range(len(names))) else perm


def plans_modality(plans: Plans) -> str:
    """``ct`` when every channel of a dataset is named CT, else ``mri`` (a multi-channel MRI study stays MRI)."""
    return CT if {modality_of_channel(c) for c in plans.channel_names} == {CT} else MRI


def label_mirror(labels: Sequence[str]) -> tuple[int, ...] | None:
    """For a label map whose value ``v`` names ``labels[v - 1]``: the values ``0..K`` after mirroring across the
    left–right axis (``"left kidney"`` ↔ ``"right kidney"``; background and unpaired classes keep theirs), or None
    when no class has a partner."""
    perm = lateral_permutation(labels)
    return None if perm is None else (0, *(p + 1 for p in perm))


def modality_of_channel(channel_name: str) -> str:
    """``ct`` for a channel named CT (any case), ``mri`` for every other channel name (T1, T2, FLAIR, ADC …)."""
    return CT if channel_name.strip().lower() == "ct" else MRI


@dataclass(frozen=True)
class LoRAOptions:
    """Low-rank adapters on frozen linear layers (Hu et al.); ``targets`` name the layers that get one.

    Targets: ``out_proj`` (ViT attention output), ``qkv`` (ViT attention input), ``mlp`` (ViT MLP),
    ``decoder_qv`` (q and v projections of the mask decoder's attentions).
    """

    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    rslora: bool = False
    targets: tuple[str, ...] = ("out_proj",)

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be ≥ 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        unknown = set(self.targets) - set(LORA_TARGETS)
        if unknown:
            raise ValueError(f"unknown LoRA targets {sorted(unknown)} (choose from {', '.join(LORA_TARGETS)})")

    @property
    def scale(self) -> float:
        return self.alpha / (self.rank**0.5 if self.rslora else self.rank)


LORA_TARGETS = ("out_proj", "qkv", "mlp", "decoder_qv")


@dataclass(frozen=True)
class SO3Options:
    """The steerable branch of the ``so3`` variant (seed reports 000/001)."""

    field_type: str = "scalar"
    channels: int = 16
    max_frequency: int = 1
    adapter_dim: int = 64
    lora: LoRAOptions = field(default_factory=LoRAOptions)


@dataclass(frozen=True)
class PriorOptions:
    """Context priors, posterior prototype and the modality-gated mixture of adapters (seed reports 002/003)."""

    prototype_dim: int = 48
    fusion_heads: int = 8
    lora: LoRAOptions = field(
        default_factory=lambda: LoRAOptions(rank=8, alpha=16.0, rslora=True, targets=("qkv", "mlp", "decoder_qv"))
    )


@dataclass(frozen=True)
class TextOptions:
    """Semantic prompts: learned label embeddings (``learned``) or features of a frozen tower (``minilm``, a path)."""

    tower: str = "learned"
    dim: int = 512


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build one model.

    Attributes:
        variant: Registry name (``segvol``, ``so3``, ``prior``, ``unet``).
        configuration: Plans configuration the sizes come from (``3d_lite``, ``3d_segvol``).
        in_channels: Image channels.
        vit: Image encoder sizes; ``vit.input_size`` is the model input in (z, y, x).
        decoder: Prompt encoder / mask decoder sizes.
        unet: The U-Net's topology (used by ``unet`` only).
        labels: Foreground class names in label order (label value i+1 ↔ ``labels[i]``).
        vocabulary: Normalised names the learned text embeddings know (the labels' names, plus more for
            universal models); semantic prompts index into it.
        modality: Modality of the training data (``ct`` / ``mri``), from the dataset's channel names.
        point_tokens: Point tokens per prompt (the fixed prompt layout; fewer points are padded).
        text, so3, prior: The variant options.
        lora: ``segvol`` only: LoRA adapters, always on, on a frozen base (the plain-LoRA baseline of a transfer,
            ``segvol train --init CT_MODEL --lora``); None (default) for the plain model.
    """

    variant: str
    configuration: str
    in_channels: int
    vit: ViTPlan
    decoder: DecoderPlan
    unet: UNetPlan
    labels: tuple[str, ...]
    vocabulary: tuple[str, ...]
    modality: str = CT
    point_tokens: int = 20
    text: TextOptions = field(default_factory=TextOptions)
    so3: SO3Options = field(default_factory=SO3Options)
    prior: PriorOptions = field(default_factory=PriorOptions)
    lora: LoRAOptions | None = None

    def __post_init__(self) -> None:
        if self.lora is not None and self.variant != "segvol":
            raise ValueError(f"spec.lora is for the segvol variant ({self.variant} has its own adapters)")
        if self.in_channels < 1:
            raise ValueError("a model needs at least one input channel")
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if len(set(self.vocabulary)) != len(self.vocabulary):
            raise ValueError("the text vocabulary has duplicate names")
        missing = [n for n in self.labels if normalise_label_name(n) not in self.vocabulary]
        if missing:
            raise ValueError(f"labels missing from the vocabulary: {missing}")

    @property
    def num_classes(self) -> int:
        """Output channels of the multi-class U-Net (background included)."""
        return len(self.labels) + 1

    def text_index(self, name: str) -> int | None:
        """Index of a label name in the vocabulary (any spelling), or None."""
        key = normalise_label_name(name)
        return self.vocabulary.index(key) if key in self.vocabulary else None

    def label_mirror(self) -> tuple[int, ...] | None:
        """Label values ``0..K`` after mirroring across the left–right axis (see :func:`label_mirror`)."""
        return label_mirror(self.labels)

    def vocabulary_mirror(self) -> tuple[int, ...] | None:
        """The same for vocabulary indices (text prompts), or None."""
        return lateral_permutation(self.vocabulary)

    @property
    def run_name(self) -> str:
        """The results folder name of this model: ``{variant}__{configuration}``, and ``segvol-lora__…`` for the
        plain-LoRA baseline (which must not share a folder with a fully fine-tuned ``segvol``)."""
        return f"{self.variant}{'-lora' if self.lora is not None else ''}__{self.configuration}"

    def with_variant(self, variant: str, **options: Any) -> ModelSpec:
        return replace(self, variant=variant, **options)

    def to_json(self) -> dict[str, Any]:
        return to_jsonable(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelSpec:
        return from_stamped_json(cls, data)


def spec_from_plans(plans: Plans, configuration: str | None, variant: str = "segvol", **options: Any) -> ModelSpec:
    """The spec of ``variant`` for one configuration of a dataset's plans.

    The modality is CT when every channel is named CT, else MRI (a multi-channel MRI study stays MRI).
    """
    conf = plans.configuration(configuration)
    labels = tuple(name for name, value in sorted(plans.labels, key=lambda t: t[1]) if value > 0)
    vocabulary = tuple(dict.fromkeys(normalise_label_name(n) for n in labels))
    modality = plans_modality(plans)
    return ModelSpec(variant=variant, configuration=conf.name, in_channels=len(plans.channel_names),
                     vit=conf.vit, decoder=conf.decoder, unet=conf.unet, labels=labels, vocabulary=vocabulary,
                     modality=modality, **options)
