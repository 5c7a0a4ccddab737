"""Early convolutions beside the ViT's perceptron patch embedding (not in SegVol).

A ViT trained from scratch learns local image structure slowly from flattened patches; a few strided
convolutions before the tokens make it learn much faster (Xiao et al., "Early convolutions help transformers
see better", 2021). :class:`ConvStem` reduces the image by the patch size with 3×3×3 convolutions (instance
norm, leaky ReLU; stride 2 along every axis whose remaining factor is even), then projects to the ViT width with
a 1×1×1 convolution that starts at zero, so a model with a stem computes exactly what it computes without one
until training moves that projection (SegVol's released weights keep their output).
"""

from __future__ import annotations

from torch import Tensor, nn

Shape3 = tuple[int, int, int]


def stem_strides(patch: Shape3) -> list[Shape3]:
    """Per-stage strides whose product is ``patch``: 2 along each axis with an even remaining factor, the finest
    axes (largest factors) first as nnU-Net pools them, then one stage with the odd remainders (if any)."""
    remaining, stages = list(patch), []
    while any(r % 2 == 0 for r in remaining):
        stride = tuple(2 if r % 2 == 0 else 1 for r in remaining)
        stages.append(stride)
        remaining = [r // s for r, s in zip(remaining, stride, strict=True)]
    stages.reverse()  # the last stages found halve only the axes with the largest factors
    if any(r > 1 for r in remaining):
        stages.append(tuple(remaining))
    return stages  # type: ignore[return-value]


class ConvStem(nn.Module):
    """Image ``[B, C, Z, Y, X]`` → token offsets ``[B, gz·gy·gx, hidden]`` (z-major, as MONAI's patch tokens).

    Args:
        in_channels: Image channels.
        width: Channels of the first stage; each later stage doubles them (at most ``hidden``).
        patch: The ViT's patch size (z, y, x): the stem's total stride.
        hidden: The ViT width.
    """

    def __init__(self, in_channels: int, width: int, patch: Shape3, hidden: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i, stride in enumerate(stem_strides(patch)):
            out = min(width * 2**i, hidden)
            kernel = tuple(3 if s <= 2 else s for s in stride)
            padding = tuple(1 if s <= 2 else 0 for s in stride)
            layers += [nn.Conv3d(channels, out, kernel, stride, padding, bias=False),
                       nn.InstanceNorm3d(out, affine=True), nn.LeakyReLU(0.01, inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.project = nn.Conv3d(channels, hidden, 1)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(self.features(x)).flatten(2).transpose(1, 2)
