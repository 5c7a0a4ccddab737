"""The early-convolution stem beside the ViT's patch embedding: strides, zero start, learning, plans."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from segvolpipe.config import from_jsonable, to_jsonable
from segvolpipe.models.conv_stem import ConvStem, stem_strides
from segvolpipe.models.registry import build_model
from segvolpipe.planning.plans import ViTPlan
from tests.models.conftest import TINY_VIT, mixed_prompts, tiny_spec


@pytest.mark.parametrize("patch", [(4, 8, 8), (4, 16, 16), (2, 2, 2), (3, 6, 6), (1, 4, 4)])
def test_stage_strides_multiply_to_the_patch_finest_axes_first(patch):
    stages = stem_strides(patch)
    assert tuple(int(np.prod([s[a] for s in stages])) for a in range(3)) == patch
    if patch == (4, 8, 8):
        assert stages == [(1, 2, 2), (2, 2, 2), (2, 2, 2)]


def test_stem_tokens_follow_the_patch_grid_in_z_major_order():
    stem = ConvStem(1, 4, (4, 8, 8), 8)
    torch.nn.init.normal_(stem.project.weight)
    x = torch.zeros(1, 1, 16, 32, 32)
    x[..., 12:16, 0:8, 24:32] = 5.0  # only the patch at grid (3, 0, 3) is bright
    tokens = stem.eval()(x)
    assert tokens.shape == (1, 4 * 4 * 4, 8)
    by_cell = tokens[0].norm(dim=1).reshape(4, 4, 4)
    assert by_cell.argmax() == 3 * 16 + 0 * 4 + 3


def test_a_model_with_a_stem_starts_as_the_model_without_it_and_then_learns_it(image):
    torch.manual_seed(0)
    spec = tiny_spec()
    model = build_model(replace(spec, vit=replace(spec.vit, conv_stem=4)))
    prompts = mixed_prompts()
    with torch.no_grad():
        with_stem = model(image, prompts)
        stem, model.image_encoder.conv_stem = model.image_encoder.conv_stem, None
        without = model(image, prompts)
        model.image_encoder.conv_stem = stem
    torch.testing.assert_close(with_stem, without, rtol=0, atol=0)
    model(image, prompts).sum().backward()
    assert stem.project.weight.grad.abs().sum() > 0


def test_plans_without_the_field_read_as_no_stem_and_bad_widths_are_refused():
    data = to_jsonable(TINY_VIT)
    data.pop("conv_stem")
    assert from_jsonable(ViTPlan, data).conv_stem == 0
    with pytest.raises(ValueError, match="conv_stem"):
        replace(TINY_VIT, conv_stem=-1)
