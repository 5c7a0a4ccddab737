"""The ``unet`` variant: an nnU-Net-like 3D U-Net (MONAI's DynUNet) configured from the plans.

Kernel sizes, strides and filters are the plans' (:func:`segvolpipe.planning.planner.plan_unet`, nnU-Net's
rules on the target spacing and patch size); instance norm and leaky ReLU as in nnU-Net; multi-class softmax
logits with deep supervision in training. The supervision heads stay at their own resolution and the loss
downsamples the label to them, as nnU-Net does: MONAI's DynUNet would upsample every head to the full patch, and
zero-filling, copying and scoring those full-size copies made a CPU training step 1.18× as long
(``benchmarks/bench_unet_step.py``).
"""

from __future__ import annotations

from monai.networks.nets import DynUNet
from torch import Tensor, nn

from segvolpipe.models.spec import ModelSpec


class UNetModel(nn.Module):
    """Image ``[B, C, Z, Y, X]`` → class logits ``[B, K, Z, Y, X]`` (K = classes + background).

    In training mode with deep supervision the output is a tuple: the full-resolution logits, then ``D`` heads
    ``[B, K, z, y, x]`` at ½, ¼, … of the resolution (each stride of the decoder), finest first.
    """

    promptable = False

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        plan = spec.unet
        levels = len(plan.strides)
        self.deep_supervision_heads = max(0, min(levels - 2, 3)) if plan.deep_supervision else 0
        self.net = DynUNet(
            spatial_dims=3,
            in_channels=spec.in_channels,
            out_channels=spec.num_classes,
            kernel_size=[list(k) for k in plan.kernel_sizes],
            strides=[list(s) for s in plan.strides],
            upsample_kernel_size=[list(s) for s in plan.strides[1:]],
            filters=list(plan.filters),
            norm_name=("INSTANCE", {"affine": True}),
            act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
            deep_supervision=self.deep_supervision_heads > 0,
            deep_supr_num=max(1, self.deep_supervision_heads),
        )

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.spec.unet.patch_size

    def forward(self, image: Tensor) -> Tensor | tuple[Tensor, ...]:
        if not (self.training and self.deep_supervision_heads):
            return self.net(image)
        # DynUNet.forward without its last step (every head interpolated to the full size and stacked): the skip
        # layers fill net.heads with the supervision heads' outputs as they run
        out = self.net.output_block(self.net.skip_layers(image))
        return (out, *self.net.heads)
