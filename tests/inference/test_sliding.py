"""Sliding-window stitching against known answers, prompts carried into windows, label merging."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segvolpipe.inference.sliding import (
    ABSENT_LOGIT,
    TargetPrompt,
    merge_targets,
    predict_targets,
    predict_unet,
)


class EchoPromptable(nn.Module):
    """Logits of prompt p = the image's first channel + its text index (a known answer for stitching)."""

    promptable = True
    input_size = (8, 12, 10)

    def forward(self, image, prompts):
        text = prompts.text.float()[..., None, None, None]
        return image[:, :1] + text


class DoubleUNet(nn.Module):
    input_size = (6, 8, 8)

    def forward(self, image):
        return torch.cat([2 * image, -image], dim=1)


def test_stitching_reproduces_a_pointwise_model_exactly():
    image = torch.randn(1, 13, 30, 17)
    out = predict_targets(EchoPromptable(), image, [TargetPrompt(0), TargetPrompt(3)], overlap=0.5)
    torch.testing.assert_close(out, torch.cat([image, image + 3]), rtol=1e-5, atol=1e-5)
    unet = predict_unet(DoubleUNet(), image)
    torch.testing.assert_close(unet, torch.cat([2 * image, -image]), rtol=1e-5, atol=1e-5)


def test_volumes_smaller_than_the_window_are_padded_and_cropped_back():
    image = torch.randn(1, 5, 7, 6)
    out = predict_targets(EchoPromptable(), image, [TargetPrompt(1)])
    assert out.shape == (1, 5, 7, 6)
    torch.testing.assert_close(out, image + 1, rtol=1e-5, atol=1e-5)


def test_a_box_far_from_a_window_marks_it_absent():
    image = torch.zeros(1, 8, 12, 40)
    # box in the first window's x range only: windows entirely beyond x = 11 predict "absent"
    out = predict_targets(EchoPromptable(), image, [TargetPrompt(2, (1, 1, 1, 6, 10, 4))], overlap=0.0)
    assert torch.allclose(out[0, :, :, :4], torch.full((8, 12, 4), 2.0))
    assert torch.allclose(out[0, :, :, -5:], torch.full((8, 12, 5), ABSENT_LOGIT))


def test_merge_takes_the_most_probable_target_above_threshold():
    logits = torch.tensor([[[[2.0, -3.0, 0.5]]], [[[1.0, -1.0, 3.0]]]])  # [P=2, 1, 1, 3]
    merged = merge_targets(logits, [4, 7])
    assert merged.tolist() == [[[4, 0, 7]]]


def test_target_needs_text_or_box():
    with pytest.raises(ValueError, match="needs a text, a box or a positive point"):
        TargetPrompt()
