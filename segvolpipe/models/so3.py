"""The ``so3`` variant: SegVol with an SO(3)-steerable patch embedding beside its frozen one (seed reports 000/001).

The published attempt concatenated the two token sets and mapped them back through a randomly initialised
MLP over the token axis, which destroyed the base model's tokens (0.8 → 0.25 Dice). Here the branch is a
*residual correction*: ``tokens = base_tokens + merge([base_tokens, steerable_tokens])`` with ``merge``'s last
layer zero-initialised, so at step 0 the model computes exactly what the base model computes and training
can only add rotation-invariant evidence to each token. The base is frozen; LoRA (zero-initialised too) on
the attention output projections (options: qkv, MLP) lets the transformer use the new evidence.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segvolpipe.models.lora import freeze, inject_lora
from segvolpipe.models.segvol import SegVolModel
from segvolpipe.models.spec import ModelSpec
from segvolpipe.models.steerable import SteerablePatchEmbedding


class SteerableTokenAdapter(nn.Module):
    """``(image, base tokens [B, N, C]) → base tokens + zero-initialised merge of both token sets``."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        vit, options = spec.vit, spec.so3
        hidden = vit.hidden_size
        self.steerable = SteerablePatchEmbedding(spec.in_channels, vit.input_size, vit.patch_size, hidden,
                                                 field_type=options.field_type, channels=options.channels,
                                                 max_frequency=options.max_frequency)
        self.merge = nn.Sequential(nn.LayerNorm(2 * hidden), nn.Linear(2 * hidden, options.adapter_dim), nn.GELU(),
                                   nn.Linear(options.adapter_dim, hidden))
        nn.init.zeros_(self.merge[3].weight)
        nn.init.zeros_(self.merge[3].bias)

    def forward(self, image: Tensor, tokens: Tensor) -> Tensor:
        steer = self.steerable(image).to(tokens.dtype)
        return tokens + self.merge(torch.cat([tokens, steer], dim=-1))


class SO3Model(SegVolModel):
    """SegVol + steerable token adapter + LoRA; only the adapter and LoRA train."""

    def __init__(self, spec: ModelSpec, text_features: Tensor | None = None) -> None:
        super().__init__(spec, text_features)
        freeze(self)
        self.lora_layers = inject_lora(self, spec.so3.lora, self.router)
        self.image_encoder.token_adapter = SteerableTokenAdapter(spec)
