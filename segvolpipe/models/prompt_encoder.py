"""SegVol's prompt encoder (SAM's, in 3D) and the batched prompt container.

Coordinates are voxel indices (z, y, x) of the model input; the random Fourier features map them to the
embedding width. Each prompt becomes a set of sparse tokens: its points (label 1 positive, 0 negative,
−1 padding), its box as two corner tokens, and its semantic (text) embedding as one more token.

Every call uses one fixed token layout — ``point_tokens`` point tokens (padding −1 where a prompt has fewer),
two box-corner tokens, one text token; absent parts are SAM's "not a point" embedding — so a model sees
the same layout in training (where prompts mix kinds in one batch) and at inference (one kind at a time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

Shape3 = tuple[int, int, int]


@dataclass
class Prompts:
    """``P`` prompts for each of ``B`` images; the model returns one mask per prompt.

    Attributes:
        text: ``[B, P]`` long, vocabulary index of the semantic prompt, −1 for none.
        points: ``[B, P, N, 3]`` float voxel coordinates (z, y, x) in the model input, or None.
        point_labels: ``[B, P, N]`` long: 1 positive, 0 negative, −1 padding (None with ``points``).
        boxes: ``[B, P, 6]`` float (z0, y0, x0, z1, y1, x1) inclusive voxel corners, or None.
        box_mask: ``[B, P]`` bool, which prompts have a box (None = all, when ``boxes`` is given).
        modality: ``[B]`` long, 0 for CT and 1 for MRI (used by the ``prior`` variant's gate), or None = CT.
    """

    text: Tensor
    points: Tensor | None = None
    point_labels: Tensor | None = None
    boxes: Tensor | None = None
    box_mask: Tensor | None = None
    modality: Tensor | None = None

    def __post_init__(self) -> None:
        if self.text.dim() != 2:
            raise ValueError(f"text must be [B, P], got {tuple(self.text.shape)}")
        b, p = self.text.shape
        if (self.points is None) != (self.point_labels is None):
            raise ValueError("points and point_labels go together")
        if self.points is not None and (self.points.shape[:2] != (b, p) or self.points.shape[-1] != 3):
            raise ValueError(f"points must be [B, P, N, 3] with B, P = {b}, {p}; got {tuple(self.points.shape)}")
        if self.boxes is not None and self.boxes.shape != (b, p, 6):
            raise ValueError(f"boxes must be [B, P, 6] = [{b}, {p}, 6]; got {tuple(self.boxes.shape)}")
        if self.box_mask is not None and self.boxes is None:
            raise ValueError("box_mask without boxes")

    @property
    def batch_size(self) -> int:
        return int(self.text.shape[0])

    @property
    def per_image(self) -> int:
        return int(self.text.shape[1])

    def flat(self) -> FlatPrompts:
        """All prompts of the batch in one row each (``M = B·P``)."""
        m = self.text.numel()
        box_mask = None
        if self.boxes is not None:
            box_mask = self.box_mask if self.box_mask is not None else torch.ones_like(self.text, dtype=torch.bool)
            box_mask = box_mask.reshape(m)
        modality = self.modality if self.modality is not None else torch.zeros(self.batch_size, dtype=torch.long,
                                                                               device=self.text.device)
        return FlatPrompts(
            text=self.text.reshape(m),
            points=None if self.points is None else self.points.reshape(m, -1, 3),
            point_labels=None if self.point_labels is None else self.point_labels.reshape(m, -1),
            boxes=None if self.boxes is None else self.boxes.reshape(m, 6),
            box_mask=box_mask,
            modality=modality.repeat_interleave(self.per_image),
        )


@dataclass
class FlatPrompts:
    """Prompts flattened to one row per mask (see :class:`Prompts` for the meaning of each field)."""

    text: Tensor
    points: Tensor | None
    point_labels: Tensor | None
    boxes: Tensor | None
    box_mask: Tensor | None
    modality: Tensor


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of normalised coordinates (the Gaussian matrix is a persistent buffer)."""

    def __init__(self, num_pos_feats: int, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn(3, num_pos_feats))

    def _encode(self, coords: Tensor) -> Tensor:
        """coords ``[..., 3]`` in [0, 1] → ``[..., 2·num_pos_feats]``."""
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix.to(coords.dtype)
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def grid(self, size: Shape3) -> Tensor:
        """Features of every cell centre of a ``size`` grid → ``[2·num_pos_feats, *size]``."""
        device = self.positional_encoding_gaussian_matrix.device
        axes = [(torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n for n in size]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
        return self._encode(coords).permute(3, 0, 1, 2)

    def coords(self, points: Tensor, input_size: Shape3) -> Tensor:
        """Voxel coordinates ``[..., 3]`` (z, y, x) of an ``input_size`` volume → features ``[..., C]``."""
        size = torch.tensor(input_size, dtype=torch.float32, device=points.device)
        return self._encode((points.float() + 0.5) / size)


def box_share(boxes: Tensor, input_size: Shape3, grid: Shape3) -> Tensor:
    """For boxes ``[M, 6]`` (inclusive voxel corners lo, hi of an ``input_size`` volume): the share of each cell of
    ``grid`` that lies inside the box, ``[M, *grid]`` in [0, 1]."""
    share = None
    for a, (n, g) in enumerate(zip(input_size, grid, strict=True)):
        edges = torch.arange(g + 1, device=boxes.device, dtype=torch.float32) * (n / g)  # cell bounds in voxels
        lo = boxes[:, a].float().clamp(0, n).unsqueeze(1)
        hi = (boxes[:, a + 3].float() + 1).clamp(0, n).unsqueeze(1)
        overlap = (torch.minimum(edges[1:], hi) - torch.maximum(edges[:-1], lo)).clamp(min=0) / (n / g)  # [M, g]
        shape = [boxes.shape[0], 1, 1, 1]
        shape[a + 1] = g
        overlap = overlap.reshape(shape)
        share = overlap if share is None else share * overlap
    assert share is not None
    return share


def point_counts(points: Tensor, labels: Tensor, input_size: Shape3, grid: Shape3) -> Tensor:
    """Negative and positive points per cell of ``grid``: ``[M, 2, *grid]`` from points ``[M, N, 3]`` (voxels of an
    ``input_size`` volume) and labels ``[M, N]`` (0 negative, 1 positive, −1 padding)."""
    m, device = points.shape[0], points.device
    size = torch.tensor(input_size, dtype=torch.float32, device=device)
    g = torch.tensor(grid, dtype=torch.long, device=device)
    cell = torch.minimum((points.float().clamp(min=0) * g / size).long(), g - 1)  # [M, N, 3]
    flat = (cell[..., 0] * g[1] + cell[..., 1]) * g[2] + cell[..., 2]
    counts = torch.zeros(m, 2, int(g.prod()), device=device)
    for kind in (0, 1):
        counts[:, kind].scatter_add_(1, flat, (labels == kind).float())
    return counts.reshape(m, 2, *grid)


class PromptEncoder(nn.Module):
    """Sparse prompt tokens and the dense (no-mask) embedding, SegVol's ``prompt_encoder``."""

    def __init__(self, embed_dim: int, image_embedding_size: Shape3, input_image_size: Shape3,
                 point_tokens: int = 20) -> None:
        super().__init__()
        self.point_tokens = point_tokens
        if embed_dim % 2:
            raise ValueError(f"the prompt embedding width must be even, got {embed_dim}")
        self.embed_dim = embed_dim
        self.image_embedding_size = image_embedding_size
        self.input_image_size = input_image_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # 0 negative point, 1 positive point, 2 first box corner, 3 second box corner
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        # Not in SegVol: the box and the points also drawn on the embedding grid (the share of each cell inside
        # the box; the negative and positive points in each cell), each times a learned vector added to the dense
        # embedding. Zero at initialisation, so a SegVol checkpoint computes exactly what it computes in SegVol;
        # trained from scratch, the decoder can use a box from its first steps instead of first learning to read
        # corner coordinates from Fourier features (box-only Dice stayed at 0.006 after 650 steps without it).
        self.dense_prompt_box = nn.Parameter(torch.zeros(embed_dim))
        self.dense_prompt_points = nn.Parameter(torch.zeros(2, embed_dim))

    def dense_pe(self) -> Tensor:
        """Positional features of the image-embedding grid ``[1, C, gz, gy, gx]``."""
        return self.pe_layer.grid(self.image_embedding_size).unsqueeze(0)

    def dense_embedding(self) -> Tensor:
        """SAM's "no mask" dense prompt, broadcastable to ``[M, C, gz, gy, gx]``."""
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1, 1)

    def dense_prompts(self, prompts: FlatPrompts) -> Tensor:
        """The dense embedding of each prompt ``[M, C, gz, gy, gx]``: "no mask" plus its drawn box and points."""
        m, grid = prompts.text.shape[0], self.image_embedding_size
        dense = self.dense_embedding().expand(m, -1, *grid)
        if prompts.boxes is not None and prompts.box_mask is not None and bool(prompts.box_mask.any()):
            share = box_share(prompts.boxes, self.input_image_size, grid) * prompts.box_mask.reshape(m, 1, 1, 1)
            dense = dense + share.unsqueeze(1).to(dense.dtype) * self.dense_prompt_box.reshape(1, -1, 1, 1, 1)
        if prompts.points is not None and prompts.point_labels is not None and prompts.points.shape[1]:
            counts = point_counts(prompts.points, prompts.point_labels, self.input_image_size, grid)  # [M, 2, *grid]
            dense = dense + torch.einsum("mk...,kc->mc...", counts.to(dense.dtype), self.dense_prompt_points)
        return dense

    def _points(self, points: Tensor, labels: Tensor) -> Tensor:
        n = points.shape[1]
        if n > self.point_tokens:
            raise ValueError(f"{n} points per prompt, the model takes at most {self.point_tokens}")
        if n < self.point_tokens:
            pad = self.point_tokens - n
            points = torch.cat([points, points.new_zeros(points.shape[0], pad, 3)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], pad), -1)], dim=1)
        emb = self.pe_layer.coords(points, self.input_image_size)
        lab = labels.unsqueeze(-1)
        emb = torch.where(lab == -1, self.not_a_point_embed.weight.to(emb.dtype), emb)
        emb = emb + torch.where(lab == 0, self.point_embeddings[0].weight, 0.0)
        emb = emb + torch.where(lab == 1, self.point_embeddings[1].weight, 0.0)
        return emb

    def _boxes(self, boxes: Tensor, box_mask: Tensor) -> Tensor:
        corners = self.pe_layer.coords(boxes.reshape(-1, 2, 3), self.input_image_size)
        corners = corners + torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])
        absent = self.not_a_point_embed.weight.expand(2, -1)
        return torch.where(box_mask.reshape(-1, 1, 1), corners, absent.to(corners.dtype))

    def forward(self, prompts: FlatPrompts, text_embedding: Tensor | None) -> Tensor:
        """Sparse tokens ``[M, point_tokens + 3, C]`` for ``M`` flat prompts; ``text_embedding`` ``[M, C]`` (rows
        of prompts without text are ignored) or None when no prompt of the call has text. A row with nothing
        visible (a training batch's padding row) is all "not a point" tokens."""
        m = prompts.text.shape[0]
        device = self.not_a_point_embed.weight.device
        points, labels = prompts.points, prompts.point_labels
        if points is None:
            points = torch.zeros(m, 0, 3, device=device)
            labels = torch.zeros(m, 0, dtype=torch.long, device=device)
        has_box = prompts.box_mask if prompts.boxes is not None else torch.zeros(m, dtype=torch.bool, device=device)
        boxes = prompts.boxes if prompts.boxes is not None else torch.zeros(m, 6, device=device)
        absent = self.not_a_point_embed.weight
        has_text = (prompts.text >= 0).reshape(m, 1)
        if text_embedding is None:
            text_embedding = absent.expand(m, -1)
        text = torch.where(has_text, text_embedding, absent.to(text_embedding.dtype))
        return torch.cat([self._points(points, labels), self._boxes(boxes, has_box), text.unsqueeze(1)], dim=1)
