"""SegVol's mask decoder: two-way transformer, transposed-conv upscaling, hypernetwork MLPs, text similarity.

Output tokens are SAM's (one IoU token and ``num_multimask_outputs + 1`` mask tokens, kept so that SegVol's
checkpoints load with no shape mismatch); SegVol uses the first mask token only (``multimask=False``).
The low-resolution logits are at 4× the token grid; :class:`~segvolpipe.models.segvol.SegVolModel`
interpolates them to the input size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segvolpipe.models.transformer import MLP, TwoWayTransformer
from segvolpipe.planning.plans import DecoderPlan

Shape3 = tuple[int, int, int]


class MaskDecoder(nn.Module):
    """Prompt tokens + image embeddings → mask logits at 4× the token grid."""

    def __init__(self, plan: DecoderPlan, grid: Shape3, iou_head_hidden: int = 256) -> None:
        super().__init__()
        dim = plan.prompt_embed_dim
        c1, c2 = plan.upscale_channels
        self.transformer = TwoWayTransformer(plan.transformer_depth, dim, plan.transformer_heads,
                                             plan.transformer_mlp_dim)
        self.num_mask_tokens = plan.num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        up = tuple(2 * g for g in grid)
        # a LayerNorm over (channels, z, y, x) of the first upscaled grid, as SegVol's checkpoint has it
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose3d(dim, c1, kernel_size=2, stride=2),
            nn.LayerNorm((c1, *up)),
            nn.GELU(),
            nn.ConvTranspose3d(c1, c2, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(dim, dim, c2, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(dim, iou_head_hidden, self.num_mask_tokens, 3)
        self.txt_align_upscaled_embedding = nn.Linear(dim, c2)

    def forward(self, image: Tensor, image_pe: Tensor, dense: Tensor, sparse: Tensor,
                text_embedding: Tensor | None, text_mask: Tensor | None,
                multimask: bool = False, mask_token_offset: Tensor | None = None,
                detail: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Decode ``M`` prompts.

        Args:
            image: ``[M, C, gz, gy, gx]`` image embeddings (one row per prompt).
            image_pe: ``[1, C, gz, gy, gx]`` positional features of the grid.
            dense: Dense prompt embedding broadcastable to ``image``.
            sparse: ``[M, T, C]`` prompt tokens.
            text_embedding: ``[M, C]`` semantic embeddings for the text-similarity term, or None.
            text_mask: ``[M]`` bool, which rows have a text prompt (the term is added to those only).
            multimask: Return every mask token's logits instead of the first only.
            mask_token_offset: ``[M, num_mask_tokens, C]`` added to the mask tokens (``prior`` variant), or None.
            detail: ``[B, c2, 4gz, 4gy, 4gx]`` image features (:class:`~segvolpipe.models.detail.ImageDetail`) added
                to the upscaled embedding of each of the image's ``M / B`` rows (consecutive), or None.

        Returns:
            (logits ``[M, K, 4gz, 4gy, 4gx]`` with K = 1 or ``num_mask_tokens``, IoU predictions ``[M, K]``).
        """
        m = sparse.shape[0]
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        out_tokens = out_tokens.unsqueeze(0).expand(m, -1, -1).to(sparse.dtype)
        if mask_token_offset is not None:
            out_tokens = torch.cat([out_tokens[:, :1], out_tokens[:, 1:] + mask_token_offset], dim=1)
        tokens = torch.cat([out_tokens, sparse], dim=1)
        src = image + dense
        hs, src = self.transformer(src, image_pe, tokens)
        iou_out = hs[:, 0]
        mask_out = hs[:, 1 : 1 + self.num_mask_tokens]
        c, grid = image.shape[1], image.shape[2:]
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(m, c, *grid))
        k = self.num_mask_tokens if multimask else 1
        # one query per prompt and mask: its hypernetwork vector plus, on text rows, the text's projection
        query = torch.stack([self.output_hypernetworks_mlps[i](mask_out[:, i]) for i in range(k)], dim=1)
        if text_embedding is not None:
            text_down = self.txt_align_upscaled_embedding(text_embedding).unsqueeze(1)
            if text_mask is not None:
                text_down = text_down * text_mask.reshape(m, 1, 1).to(text_down.dtype)
            query = query + text_down
        up = upscaled.shape[2:]
        masks = (query @ upscaled.flatten(2)).reshape(m, k, *up)
        if detail is not None:
            # q·(U + D) = q·U + q·D with D dotted once per image: no per-prompt copy of the path's features
            if detail.shape[2:] != up:
                raise ValueError(f"the image path's features {tuple(detail.shape[2:])} are not on the decoder's "
                                 f"grid {tuple(up)}")
            per_image = query.reshape(detail.shape[0], (m // detail.shape[0]) * k, -1).to(detail.dtype)
            masks = masks + (per_image @ detail.flatten(2)).reshape(m, k, *up).to(masks.dtype)
        iou = self.iou_prediction_head(iou_out)[:, :k]
        return masks, iou
