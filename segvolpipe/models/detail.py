"""A convolutional image path into the mask decoder (off in SegVol's reference configuration).

SegVol's decoder draws every mask from the ViT's tokens alone: each token is upscaled by two transposed
convolutions into a 4×4×4 block of the output grid, so every boundary inside a patch (4×8×8 voxels on the CPU
tier) must be encoded in that token's features. Trained for weeks that works; trained for minutes the masks stay
blocky. This path reads the image itself with a convolutional encoder-decoder (a U-Net of five levels from the
decoder's output grid down, 16 to 256 channels on the CPU tier) and adds its features to the decoder's upscaled
embedding, the per-voxel features every prompt's hypernetwork vector (and the text-similarity term) is dotted
with: the tokens say where a target lies, the convolutions say where its edges are — the role of UNETR's and
HQ-SAM's early-feature paths. Its last convolution starts at zero, so a model with the path computes exactly what
the same weights compute without it until training moves it.

A 1×1×1 class head on the path's last features (one output per label value, background included) is for
training only: its multi-class Dice + cross-entropy (``TrainConfig.detail_aux_weight``, deep supervision as in
UNETR-style hybrids) teaches the path the organs' boundaries directly, where the prompts' masks reach it only
through each prompt's query vector. Predictions never use it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Shape3 = tuple[int, int, int]

# five levels: from 48×24×24 down to 3×3×3 on the CPU tier, a receptive field over most of the input; three
# (down to 12×6×6) reached text-prompt Dice 0.792 in ten CPU minutes, five 0.801 (BENCHMARKS.md, "Training")
LEVELS = 5


def _block(cin: int, cout: int, stride: Shape3 | int = 1) -> nn.Sequential:
    """3×3×3 convolution (strided to go down a level), instance norm, leaky ReLU: nnU-Net's unit."""
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1), nn.InstanceNorm3d(cout, affine=True),
                         nn.LeakyReLU(0.01, inplace=True))


def level_strides(grid: Shape3, levels: int = LEVELS) -> list[Shape3]:
    """Per-axis strides between levels: 2 along an axis while it is even and at least 6 there, else 1; fewer than
    ``levels - 1`` when no axis can be halved any more. No level is smaller than 3 voxels along an axis it was
    halved on: on 2×2×2 maps oneDNN's bfloat16 convolution weight gradient is sometimes non-finite (up to 1 call in
    10; torch 2.13 on this project's CPU; 3×3×3 and larger never, ``benchmarks/repro_bf16_conv_grad.py``)."""
    strides, size = [], list(grid)
    for _ in range(levels - 1):
        s = tuple(2 if n % 2 == 0 and n >= 6 else 1 for n in size)
        if s == (1, 1, 1):
            break
        strides.append(s)
        size = [n // k for n, k in zip(size, s, strict=True)]
    return strides  # type: ignore[return-value]


class ImageDetail(nn.Module):
    """Image ``[B, C, *input_size]`` → features ``[B, out_channels, *output_grid]`` (zero at initialisation).

    A 3×3×3 convolution at the input's resolution, then to the decoder's output grid (a strided convolution where
    the grid divides the input, else trilinear resampling), a U-Net of up to :data:`LEVELS` levels there
    (``channels``, 2×, 4×, …, one block per level each way, skip connections) and a zero-initialised 1×1×1
    projection to the decoder's channels; with ``classes``, the training-only class head beside the projection.
    """

    def __init__(self, in_channels: int, channels: int, out_channels: int, input_size: Shape3,
                 output_grid: Shape3, classes: int = 0) -> None:
        super().__init__()
        self.output_grid = tuple(int(g) for g in output_grid)
        self.stem = _block(in_channels, channels)
        stride = tuple(i // o for i, o in zip(input_size, output_grid, strict=True))
        divisible = all(o * s == i for i, o, s in zip(input_size, output_grid, stride, strict=True))
        self.down = _block(channels, channels, stride) if divisible else None
        strides = level_strides(self.output_grid)
        widths = [channels * 2**k for k in range(len(strides) + 1)]
        self.encoder = nn.ModuleList(_block(widths[k], widths[k + 1], s) for k, s in enumerate(strides))
        self.up = nn.ModuleList(nn.ConvTranspose3d(widths[k + 1], widths[k], s, stride=s)
                                for k, s in enumerate(strides))
        self.decoder = nn.ModuleList(_block(2 * widths[k], widths[k]) for k in range(len(strides)))
        self.proj = nn.Conv3d(channels, out_channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.classes = nn.Conv3d(channels, classes, 1) if classes else None

    def forward(self, image: Tensor, with_classes: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Features ``[B, out_channels, *output_grid]``; with ``with_classes`` also the class head's logits
        ``[B, classes, *output_grid]``."""
        if with_classes and self.classes is None:
            raise ValueError("this image path has no class head")
        x = self.stem(image)
        if self.down is not None:
            x = self.down(x)
        else:
            x = F.interpolate(x, size=self.output_grid, mode="trilinear", align_corners=False)
        skips = []
        for block in self.encoder:
            skips.append(x)
            x = block(x)
        for k in reversed(range(len(self.decoder))):
            x = self.decoder[k](torch.cat([self.up[k](x), skips[k]], dim=1))
        return (self.proj(x), self.classes(x)) if with_classes else self.proj(x)
