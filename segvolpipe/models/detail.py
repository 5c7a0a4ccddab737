"""A convolutional image path into the mask decoder (off in SegVol's reference configuration).

SegVol's decoder draws every mask from the ViT's tokens alone: each token is upscaled by two transposed
convolutions into a 4×4×4 block of the output grid, so every boundary inside a patch (4×8×8 voxels on the CPU
tier) must be encoded in that token's features. Trained for weeks that works; trained for minutes the masks stay
blocky. This path reads the image itself with a small convolutional encoder-decoder (a U-Net of three levels at
the decoder's output grid) and adds its features to the decoder's upscaled embedding, the per-voxel features
every prompt's hypernetwork vector (and the text-similarity term) is dotted with: the tokens say where a target
lies, the convolutions say where its edges are — the role of UNETR's and HQ-SAM's early-feature paths. Its last
convolution starts at zero, so a model with the path computes exactly what the same weights compute without it
until training moves it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Shape3 = tuple[int, int, int]

LEVELS = 3


def _block(cin: int, cout: int, stride: Shape3 | int = 1) -> nn.Sequential:
    """3×3×3 convolution (strided to go down a level), instance norm, leaky ReLU: nnU-Net's unit."""
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1), nn.InstanceNorm3d(cout, affine=True),
                         nn.LeakyReLU(0.01, inplace=True))


def level_strides(grid: Shape3, levels: int = LEVELS) -> list[Shape3]:
    """Per-axis strides between levels: 2 along an axis while it is even and at least 4 there, else 1."""
    strides, size = [], list(grid)
    for _ in range(levels - 1):
        s = tuple(2 if n % 2 == 0 and n >= 4 else 1 for n in size)
        strides.append(s)
        size = [n // k for n, k in zip(size, s, strict=True)]
    return strides  # type: ignore[return-value]


class ImageDetail(nn.Module):
    """Image ``[B, C, *input_size]`` → features ``[B, out_channels, *output_grid]`` (zero at initialisation).

    A 3×3×3 convolution at the input's resolution, then to the decoder's output grid (a strided convolution where
    the grid divides the input, else trilinear resampling), a three-level U-Net there (``channels``, 2×, 4×, one
    block per level each way, skip connections) and a zero-initialised 1×1×1 projection to the decoder's channels.
    """

    def __init__(self, in_channels: int, channels: int, out_channels: int, input_size: Shape3,
                 output_grid: Shape3) -> None:
        super().__init__()
        self.output_grid = tuple(int(g) for g in output_grid)
        self.stem = _block(in_channels, channels)
        stride = tuple(i // o for i, o in zip(input_size, output_grid, strict=True))
        divisible = all(o * s == i for i, o, s in zip(input_size, output_grid, stride, strict=True))
        self.down = _block(channels, channels, stride) if divisible else None
        widths = [channels * 2**k for k in range(LEVELS)]
        strides = level_strides(self.output_grid)
        self.encoder = nn.ModuleList(_block(widths[k], widths[k + 1], strides[k]) for k in range(LEVELS - 1))
        self.up = nn.ModuleList(nn.ConvTranspose3d(widths[k + 1], widths[k], strides[k], stride=strides[k])
                                for k in range(LEVELS - 1))
        self.decoder = nn.ModuleList(_block(2 * widths[k], widths[k]) for k in range(LEVELS - 1))
        self.proj = nn.Conv3d(channels, out_channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, image: Tensor) -> Tensor:
        x = self.stem(image)
        if self.down is not None:
            x = self.down(x)
        else:
            x = F.interpolate(x, size=self.output_grid, mode="trilinear", align_corners=False)
        skips = []
        for block in self.encoder:
            skips.append(x)
            x = block(x)
        for k in reversed(range(LEVELS - 1)):
            x = self.decoder[k](torch.cat([self.up[k](x), skips[k]], dim=1))
        return self.proj(x)
