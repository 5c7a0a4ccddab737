"""SegVol's image encoder: MONAI's ViT (perceptron patch embedding, learned position embedding, no class token).

Parameter names are MONAI's, which are SegVol's checkpoint names (``patch_embedding.patch_embeddings.1``,
``blocks.N.attn.qkv``, ``norm`` …). Variants add a ``token_adapter`` that may change the patch tokens
before the transformer blocks (the ``so3`` branch).
"""

from __future__ import annotations

from monai.networks.nets import ViT
from torch import Tensor, nn

from segvolpipe.planning.plans import ViTPlan


class ImageEncoder(ViT):
    """Image ``[B, C, Z, Y, X]`` (the plan's input size) → embeddings ``[B, hidden, gz, gy, gx]``."""

    def __init__(self, in_channels: int, plan: ViTPlan) -> None:
        super().__init__(in_channels, plan.input_size, plan.patch_size, hidden_size=plan.hidden_size,
                         mlp_dim=plan.mlp_dim, num_layers=plan.num_layers, num_heads=plan.num_heads,
                         proj_type="perceptron", pos_embed_type="learnable", classification=False,
                         dropout_rate=plan.dropout, qkv_bias=False)
        self.grid = plan.grid
        for block in self.blocks:
            # MONAI ≥ 1.4 builds a LayerNorm for cross-attention even when there is none: it is never used,
            # is not in SegVol's checkpoints and would be an unused parameter under DDP.
            block.norm_cross_attn = nn.Identity()
            # torch's fused attention (flash / memory-efficient kernels on CUDA); MONAI applies dropout_p
            # even in eval mode, so only without dropout.
            block.attn.use_flash_attention = plan.dropout == 0.0
        self.token_adapter: nn.Module | None = None

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        tokens = self.patch_embedding(x)
        if self.token_adapter is not None:
            tokens = self.token_adapter(x, tokens)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        b, _, c = tokens.shape
        return tokens.transpose(1, 2).reshape(b, c, *self.grid)
