"""Losses and a metric for training.

- Promptable models (SegVol): per prompt, soft Dice + BCE-with-logits on the sigmoid mask; prompts are
  averaged with their weights (1 class prompts, 0.1 pseudo-mask prompts, 0 padding).
- The U-Net baseline (nnU-Net): Dice + cross-entropy on the softmax over classes, with deep-supervision heads
  weighted 1, 1/2, 1/4, … normalised to sum 1, each scored at its own resolution against the label resized there.
  The Dice is nnU-Net's batch Dice (``batch_dice``): each class's overlap summed over the whole batch, so a class
  missing from one crop does not pull its own term to 1 (a 10-minute CPU run: validation Dice 0.829 against 0.817
  per sample, within the ~0.025 spread between seeds; BENCHMARKS.md, "Training").

Everything is computed in float32, also under autocast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import Tensor

DICE_SMOOTH = 1.0  # SegVol's BinaryDiceLoss smoothing: an empty target with an empty prediction costs 0


def _check(logits: Tensor, targets: Tensor) -> None:
    if logits.dim() != 5 or logits.shape != targets.shape:
        raise ValueError(f"logits and targets must both be [B, P, Z, Y, X], got {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}")


def prompt_loss(logits: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
    """Weighted mean over prompts of soft Dice loss + BCE-with-logits.

    Args:
        logits: ``[B, P, Z, Y, X]`` mask logits.
        targets: ``[B, P, Z, Y, X]`` 0/1 masks.
        weights: ``[B, P]`` prompt weights; rows with weight 0 (padding) do not take part at all.

    Returns:
        A float32 scalar: ``Σ w·(dice + bce) / Σ w`` over rows with ``w > 0`` (BCE averaged over voxels);
        0, still attached to ``logits``' graph, when every weight is 0.
    """
    _check(logits, targets)
    if weights.shape != logits.shape[:2]:
        raise ValueError(f"weights must be [B, P] = {tuple(logits.shape[:2])}, got {tuple(weights.shape)}")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        x = logits.float().flatten(2)
        t = targets.float().flatten(2)
        w = weights.float()
        prob = torch.sigmoid(x)
        inter = (prob * t).sum(-1)
        dice = 1 - (2 * inter + DICE_SMOOTH) / (prob.sum(-1) + t.sum(-1) + DICE_SMOOTH)
        bce = F.binary_cross_entropy_with_logits(x, t, reduction="none").mean(-1)
        active = w > 0
        per_prompt = torch.where(active, dice + bce, torch.zeros_like(dice))
        total = (per_prompt * torch.where(active, w, torch.zeros_like(w))).sum()
        return total / w.clamp(min=0).sum().clamp(min=torch.finfo(torch.float32).tiny)


def prompt_dice(logits: Tensor, targets: Tensor, threshold: float = 0.5) -> Tensor:
    """Hard Dice of each prompt's mask ``sigmoid(logits) > threshold`` against its target.

    Args:
        logits: ``[B, P, Z, Y, X]`` mask logits.
        targets: ``[B, P, Z, Y, X]`` 0/1 masks.
        threshold: Probability threshold.

    Returns:
        ``[B, P]`` float32 Dice, NaN where target and prediction are both empty.
    """
    _check(logits, targets)
    with torch.no_grad():
        pred = (torch.sigmoid(logits.detach().float()) > threshold).flatten(2)
        t = targets.detach().flatten(2) > 0.5
        inter = (pred & t).sum(-1).float()
        size = (pred.sum(-1) + t.sum(-1)).float()
        return 2 * inter / size  # 0/0 = NaN where both are empty


def unet_loss(output: Tensor | Sequence[Tensor], label: Tensor, num_classes: int) -> Tensor:
    """nnU-Net's Dice + cross-entropy, over the deep-supervision heads when there are several.

    Args:
        output: ``[B, K, Z, Y, X]`` class logits, or the U-Net's training output: the full-resolution logits, then
            ``D`` heads ``[B, K, z, y, x]`` at their own, lower resolutions.
        label: ``[B, Z, Y, X]`` or ``[B, 1, Z, Y, X]`` class map with values ``0..K-1``; each lower-resolution head
            is scored against it resized by nearest neighbour (``nearest-exact``, as nnU-Net's
            ``DownsampleSegForDSTransform``).
        num_classes: ``K``, classes including the background (checked against ``output``).

    Returns:
        A float32 scalar: ``Σ_h w_h · (Dice_h + CE_h)`` with ``w_h ∝ 2^{-h}`` summing to 1. Dice is MONAI's
        soft Dice over the foreground classes (``include_background=False``, as nnU-Net), each class's sums taken
        over the whole batch (``batch=True``): the batch scores as one image laid side by side.
    """
    heads = [output] if isinstance(output, Tensor) else list(output)
    if label.dim() == 4:
        label = label.unsqueeze(1)
    for h in heads:
        if h.dim() != 5 or h.shape[:2] != (label.shape[0], num_classes):
            raise ValueError(f"every output must be [B={label.shape[0]}, K={num_classes}, Z, Y, X], got {tuple(h.shape)}")
    if label.shape[1] != 1 or label.shape[2:] != heads[0].shape[2:]:
        raise ValueError(f"label {tuple(label.shape)} does not match the output {tuple(heads[0].shape)}")
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=num_classes == 1, batch=True)
    scale = torch.tensor([0.5**h for h in range(len(heads))])
    scale = (scale / scale.sum()).tolist()
    with torch.autocast(device_type=label.device.type, enabled=False):
        total = heads[0].new_zeros((), dtype=torch.float32)
        for h, s in zip(heads, scale, strict=True):
            target = label if h.shape[2:] == label.shape[2:] else F.interpolate(
                label.float(), size=h.shape[2:], mode="nearest-exact")
            total = total + s * loss_fn(h.float(), target.long())
        return total
