"""The model registry: variant name → builder, parameter counts without allocating weights.

Builders are imported lazily so that asking for one variant never imports another's dependencies
(escnn for ``so3``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from segvolpipe.errors import check_choice
from segvolpipe.models.spec import ModelSpec

# name → (module, class, one-line description)
VARIANTS: dict[str, tuple[str, str, str]] = {
    "segvol": ("segvolpipe.models.segvol", "SegVolModel",
               "SegVol: ViT, SAM-style prompt encoder and mask decoder, text prompts"),
    "so3": ("segvolpipe.models.so3", "SO3Model",
            "segvol + SO(3)-steerable patch tokens + LoRA; base frozen"),
    "prior": ("segvolpipe.models.prior", "PriorModel",
              "segvol + context priors + MoA (CT: identity); base frozen"),
    "unet": ("segvolpipe.models.unet", "UNetModel",
             "nnU-Net-like DynUNet, multi-class baseline"),
}


def check_variant(name: str) -> str:
    """``name`` if it is a registered variant, else a :class:`UserError` suggesting the closest one."""
    return check_choice(name, list(VARIANTS), "model variant")


def model_class(name: str) -> type[nn.Module]:
    module, cls, _ = VARIANTS[check_variant(name)]
    return getattr(importlib.import_module(module), cls)


def build_model(spec: ModelSpec, text_features: Tensor | None = None) -> nn.Module:
    """A freshly initialised model of ``spec.variant``.

    With a frozen text tower (``spec.text.tower`` not ``learned``) and no ``text_features`` given, the tower
    is loaded and the vocabulary encoded once (not on the meta device, where the features stay zeros).
    """
    cls = model_class(spec.variant)
    if spec.variant == "unet":
        return cls(spec)
    on_meta = torch.empty(0).device.type == "meta"
    if text_features is None and spec.text.tower != "learned" and not on_meta:
        from segvolpipe.models.text import tower_features

        text_features = tower_features(spec)
    return cls(spec, text_features)


@dataclass(frozen=True)
class ParameterCount:
    total: int
    trainable: int

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0


def count_parameters(model: nn.Module) -> ParameterCount:
    params = list(model.parameters())
    return ParameterCount(sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad))


def parameter_counts(spec: ModelSpec) -> ParameterCount:
    """Parameter counts of ``spec``'s model, built on the meta device (no weight is allocated)."""
    with torch.device("meta"):
        model = build_model(spec)
    return count_parameters(model)


#: Parameters added after models were first trained, with the value at which a model computes exactly what it
#: computed without them (a checkpoint from before them loads as that model).
ADDED_AT_ZERO = ("prompt_encoder.dense_prompt_box", "prompt_encoder.dense_prompt_points")


def load_model_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """``model.load_state_dict(state, strict=True)``, a checkpoint that predates :data:`ADDED_AT_ZERO` included."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and k.endswith(ADDED_AT_ZERO)]
    if missing:
        state = {**state, **{k: torch.zeros_like(own[k]) for k in missing}}
    model.load_state_dict(state, strict=True)
