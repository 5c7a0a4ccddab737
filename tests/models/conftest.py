"""Tiny model specs shared by the model tests."""

from __future__ import annotations

import pytest
import torch

from segvolpipe.models.prompt_encoder import Prompts
from segvolpipe.models.spec import ModelSpec
from segvolpipe.planning.plans import DecoderPlan, UNetPlan, ViTPlan

TINY_VIT = ViTPlan((16, 32, 32), (4, 8, 8), 64, 128, 2, 4)
TINY_DECODER = DecoderPlan(64, 2, 128, 4, (16, 8))
TINY_UNET = UNetPlan((16, 32, 32), ((1, 3, 3), (3, 3, 3), (3, 3, 3)), ((1, 1, 1), (1, 2, 2), (2, 2, 2)), (8, 16, 32))


def tiny_spec(variant: str = "segvol", **options) -> ModelSpec:
    labels = ("liver", "spleen", "Left Kidney")
    return ModelSpec(variant, "3d_lite", 1, TINY_VIT, TINY_DECODER, TINY_UNET, labels,
                     ("liver", "spleen", "left kidney"), **options)


def mixed_prompts(modality: list[int] | None = None) -> Prompts:
    """Two images, two prompts each: text+box, text only / box only, text+points."""
    g = torch.Generator().manual_seed(1)
    boxes = torch.tensor([[[1, 2, 3, 8, 9, 10], [0, 0, 0, 5, 5, 5]], [[2, 4, 4, 12, 20, 20], [3, 3, 3, 9, 9, 9]]]).float()
    return Prompts(
        text=torch.tensor([[0, 1], [-1, 2]]),
        boxes=boxes,
        box_mask=torch.tensor([[True, False], [True, False]]),
        points=torch.rand(2, 2, 3, 3, generator=g) * 15,
        point_labels=torch.tensor([[[-1, -1, -1], [-1, -1, -1]], [[-1, -1, -1], [1, 0, -1]]]),
        modality=None if modality is None else torch.tensor(modality),
    )


@pytest.fixture()
def image() -> torch.Tensor:
    return torch.randn(2, 1, *TINY_VIT.input_size, generator=torch.Generator().manual_seed(0))
