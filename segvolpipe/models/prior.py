"""The ``prior`` variant: context priors, a posterior prototype and a mixture of adapters (seed reports 002/003).

- Context priors: one learned token per task (vocabulary entry) and per modality. Each prompt's image
  tokens attend to its task and modality tokens (multi-head attention, then an FFN; pre-LayerNorm residual blocks).
- Posterior prototype: the task + modality tokens attend back to the fused image tokens; an MLP
  (width → ``prototype_dim`` → mask tokens × width) turns the result into offsets added to the decoder's
  mask tokens.
- Mixture of adapters with a hard top-1 gate on the modality: CT takes the identity expert (no prior, no
  prototype, no LoRA — its outputs are the base model's bit for bit), MRI the adapted expert (priors,
  prototype and LoRA on the layers ``PriorOptions.lora.targets`` names).

The last projection of the fusion and of the prototype start at zero, so at initialisation MRI outputs equal
the base model's as well; training moves them. The base model is frozen.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segvolpipe.models.lora import AdapterRouter, freeze, inject_lora
from segvolpipe.models.prompt_encoder import FlatPrompts
from segvolpipe.models.segvol import SegVolModel
from segvolpipe.models.spec import MODALITIES, ModelSpec


class ContextPrior(nn.Module):
    """Task and modality tokens fused into per-prompt image tokens, and the posterior prototype."""

    def __init__(self, dim: int, vocabulary_size: int, heads: int, prototype_dim: int, num_mask_tokens: int) -> None:
        super().__init__()
        self.task_tokens = nn.Embedding(vocabulary_size, dim)
        self.modality_tokens = nn.Embedding(len(MODALITIES), dim)
        nn.init.normal_(self.task_tokens.weight, std=0.02)
        nn.init.normal_(self.modality_tokens.weight, std=0.02)
        self.fusion = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.posterior = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.prototype = nn.Sequential(nn.Linear(dim, prototype_dim), nn.GELU(),
                                       nn.Linear(prototype_dim, num_mask_tokens * dim))
        for layer in (self.fusion.out_proj, self.ffn[2], self.prototype[2]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.num_mask_tokens = num_mask_tokens

    def priors(self, task: Tensor, modality: Tensor) -> Tensor:
        """``[M]`` task indices (−1 = no text → the modality token alone twice) → prior tokens ``[M, 2, C]``."""
        mod = self.modality_tokens(modality)
        tsk = torch.where((task >= 0).unsqueeze(-1), self.task_tokens(task.clamp(min=0)), mod)
        return torch.stack([tsk, mod], dim=1)

    def fuse(self, tokens: Tensor, priors: Tensor) -> Tensor:
        """Image tokens ``[M, N, C]`` attend to their priors ``[M, 2, C]`` (pre-norm residual blocks, so the
        zero-initialised output layers make the fusion an exact identity at initialisation)."""
        tokens = tokens + self.fusion(self.norm1(tokens), priors, priors, need_weights=False)[0]
        return tokens + self.ffn(self.norm2(tokens))

    def offsets(self, tokens: Tensor, priors: Tensor) -> Tensor:
        """Mask-token offsets ``[M, num_mask_tokens, C]`` from the priors' view of the fused tokens."""
        post = self.posterior(priors, tokens, tokens, need_weights=False)[0].mean(dim=1)
        return self.prototype(post).reshape(tokens.shape[0], self.num_mask_tokens, -1)


class PriorModel(SegVolModel):
    """SegVol with context priors and modality-gated adapters; CT rows are the base model's exactly."""

    def __init__(self, spec: ModelSpec, text_features: Tensor | None = None) -> None:
        super().__init__(spec, text_features)
        freeze(self)
        options = spec.prior
        self.router = AdapterRouter(gated=True)
        self.lora_layers = inject_lora(self, options.lora, self.router)
        self.context_prior = ContextPrior(spec.vit.hidden_size, len(spec.vocabulary), options.fusion_heads,
                                          options.prototype_dim, self.mask_decoder.num_mask_tokens)

    def adapt_image(self, rows: Tensor, prompts: FlatPrompts) -> Tensor:
        if not self.router.enabled:
            return rows
        m, c, *grid = rows.shape
        priors = self.context_prior.priors(prompts.text, prompts.modality)
        fused = self.context_prior.fuse(rows.flatten(2).transpose(1, 2), priors)
        fused_rows = fused.transpose(1, 2).reshape(m, c, *grid)
        return torch.where(self.router.active.reshape(m, 1, 1, 1, 1), fused_rows, rows)

    def mask_token_offset(self, rows: Tensor, prompts: FlatPrompts) -> Tensor | None:
        """Offsets from the (already fused) rows; zero on CT rows, None when the call has no MRI row."""
        if not self.router.enabled:
            return None
        priors = self.context_prior.priors(prompts.text, prompts.modality)
        offsets = self.context_prior.offsets(rows.flatten(2).transpose(1, 2), priors)
        return offsets * self.router.active.reshape(-1, 1, 1).to(offsets.dtype)
