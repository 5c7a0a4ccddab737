"""Low-rank adapters that keep the base checkpoint's parameter names, and the modality gate that routes them.

:class:`LoRALinear` *is* the frozen ``nn.Linear`` it replaces (same ``weight``/``bias`` names, so a base
checkpoint still loads key for key) plus ``lora_A``/``lora_B``. ``lora_B`` starts at zero, so a freshly
adapted model computes exactly what the base model computes.

An :class:`AdapterRouter` is shared by every adapter of a model. Ungated (``so3``), adapters always apply.
Gated (``prior``'s mixture of adapters, a hard top-1 gate on the modality), they apply only to the rows of
the batch whose modality is not CT; CT rows take the identity expert and are bit-for-bit the base model's.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segvolpipe.models.spec import LoRAOptions

CT_INDEX = 0


class AdapterRouter:
    """The adapter gate of the current forward call."""

    def __init__(self, gated: bool = False) -> None:
        self.gated = gated
        self.active: Tensor | None = None  # [rows] bool; None = every row
        self.enabled = True

    @contextlib.contextmanager
    def route(self, modality: Tensor | None) -> Iterator[None]:
        """Route the rows of a call: ``modality`` ``[rows]`` (0 = CT), None meaning all CT."""
        saved = (self.active, self.enabled)
        if self.gated:
            if modality is None:
                self.enabled, self.active = False, None
            else:
                self.active = modality != CT_INDEX
                self.enabled = bool(self.active.any())
        try:
            yield
        finally:
            self.active, self.enabled = saved


class LoRALinear(nn.Linear):
    """``y = x Wᵀ + b + scale · dropout(x) Aᵀ Bᵀ`` on the rows the router lets through."""

    def __init__(self, base: nn.Linear, options: LoRAOptions, router: AdapterRouter) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        device, dtype = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(options.rank, self.in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, options.rank, device=device, dtype=dtype))
        if device.type != "meta":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scale = options.scale
        self.lora_dropout = nn.Dropout(options.dropout) if options.dropout > 0 else nn.Identity()
        self.router = router

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight, self.bias)
        if not self.router.enabled:
            return y
        delta = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scale
        active = self.router.active
        if active is None:
            return y + delta
        return torch.where(active.reshape(-1, *([1] * (x.dim() - 1))), y + delta, y)


# LoRA target → (module-name prefix, module-name suffixes) of the layers it adapts
_TARGETS = {
    "out_proj": ("image_encoder.blocks.", ("attn.out_proj",)),
    "qkv": ("image_encoder.blocks.", ("attn.qkv",)),
    "mlp": ("image_encoder.blocks.", ("mlp.linear1", "mlp.linear2")),
    "decoder_qv": ("mask_decoder.", ("q_proj", "v_proj")),
}


def _wanted(name: str, targets: tuple[str, ...]) -> bool:
    return any(name.startswith(_TARGETS[t][0]) and name.endswith(_TARGETS[t][1]) for t in targets)


def inject_lora(model: nn.Module, options: LoRAOptions, router: AdapterRouter) -> list[str]:
    """Replace every targeted ``nn.Linear`` of ``model`` by a :class:`LoRALinear`; returns their names."""
    names = [n for n, m in model.named_modules() if type(m) is nn.Linear and _wanted(n, options.targets)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), options, router))
    if not names:
        raise ValueError(f"no layer matches the LoRA targets {options.targets}")
    return names


def freeze(module: nn.Module) -> None:
    """No gradient for any parameter of ``module`` (the base of an adapted variant)."""
    for p in module.parameters():
        p.requires_grad_(False)

