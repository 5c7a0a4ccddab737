"""Gaussian-weighted sliding-window prediction over a whole (preprocessed) volume, MONAI's inferer underneath.

Promptable models get the same prompts in every window: the semantic prompt as it is, a box in the volume's
voxel coordinates shifted into the window (and clipped to it); a prompt whose box misses a window predicts
"absent" there. The U-Net predicts its classes directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from torch import Tensor, nn

from segvolpipe.models.prompt_encoder import Prompts

ABSENT_LOGIT = -30.0


@dataclass(frozen=True)
class TargetPrompt:
    """One target: a vocabulary index (−1: none) and/or a box (z0, y0, x0, z1, y1, x1) in volume voxels."""

    text: int = -1
    box: tuple[int, int, int, int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.text < 0 and self.box is None:
            raise ValueError("a target needs a text or a box")


def _pad_to(image: Tensor, size: Sequence[int]) -> tuple[Tensor, list[int]]:
    """Pad ``[C, Z, Y, X]`` at the end of each axis to at least ``size``; returns the original shape."""
    shape = list(image.shape[1:])
    pad = [max(0, s - n) for s, n in zip(size, shape, strict=True)]
    if any(pad):
        image = F.pad(image, (0, pad[2], 0, pad[1], 0, pad[0]), value=float(image.min()))
    return image, shape


def _window_prompts(targets: Sequence[TargetPrompt], origin: Tensor, roi: Sequence[int], modality: int,
                    device: torch.device) -> tuple[Prompts, Tensor]:
    """Prompts of one window and a ``[P]`` mask of targets whose box misses the window."""
    text = torch.tensor([[t.text for t in targets]], device=device)
    has_box = any(t.box is not None for t in targets)
    misses = torch.zeros(len(targets), dtype=torch.bool, device=device)
    boxes = box_mask = None
    if has_box:
        hi = torch.tensor(roi, device=device) - 1
        rows, mask = [], []
        for i, t in enumerate(targets):
            if t.box is None:
                rows.append(torch.zeros(6, device=device))
                mask.append(False)
                continue
            box = torch.tensor(t.box, dtype=torch.float32, device=device).reshape(2, 3) - origin
            misses[i] = bool((box[1] < 0).any() or (box[0] > hi).any())
            rows.append(torch.minimum(torch.maximum(box, torch.zeros_like(box)), hi.float()).reshape(6))
            mask.append(True)
        boxes = torch.stack(rows).unsqueeze(0)
        box_mask = torch.tensor([mask], device=device)
    modality_t = torch.tensor([modality], device=device)
    return Prompts(text=text, boxes=boxes, box_mask=box_mask, modality=modality_t), misses


@torch.no_grad()
def predict_targets(model: nn.Module, image: Tensor, targets: Sequence[TargetPrompt], overlap: float = 0.5,
                    device: torch.device | str = "cpu", modality: int = 0, bf16: bool = False) -> Tensor:
    """Logits ``[P, Z, Y, X]`` (float32, CPU) of a promptable model for ``P`` targets over a whole volume.

    Args:
        model: A promptable model (``model.input_size`` is the window).
        image: ``[C, Z, Y, X]`` on the model's preprocessed grid.
        targets: One :class:`TargetPrompt` per output channel.
        overlap: Window overlap (fraction of the window).
        device: Where the windows are computed.
        modality: 0 CT, 1 MRI (the ``prior`` variant's gate).
        bf16: Autocast to bfloat16 (CUDA).
    """
    device = torch.device(device)
    roi = list(model.input_size)
    padded, shape = _pad_to(image.float(), roi)

    def predictor(window: Tensor, coords: list) -> Tensor:
        outs = []
        for b in range(window.shape[0]):
            origin = torch.tensor([s.start for s in coords[b][2:]], dtype=torch.float32, device=device)
            prompts, misses = _window_prompts(targets, origin, roi, modality, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(window[b : b + 1].to(device), prompts).float()
            outs.append(logits.masked_fill(misses.reshape(1, -1, 1, 1, 1), ABSENT_LOGIT))
        return torch.cat(outs)

    logits = sliding_window_inference(padded.unsqueeze(0), roi, 1, predictor, overlap=overlap, mode="gaussian",
                                      sw_device=device, device="cpu", with_coord=True)
    return logits[0, :, : shape[0], : shape[1], : shape[2]]


@torch.no_grad()
def predict_unet(model: nn.Module, image: Tensor, overlap: float = 0.5, device: torch.device | str = "cpu",
                 bf16: bool = False) -> Tensor:
    """Class logits ``[K, Z, Y, X]`` (float32, CPU) of the U-Net over a whole volume."""
    device = torch.device(device)
    roi = list(model.input_size)
    padded, shape = _pad_to(image.float(), roi)

    def predictor(window: Tensor) -> Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return model(window.to(device)).float()

    logits = sliding_window_inference(padded.unsqueeze(0), roi, 1, predictor, overlap=overlap, mode="gaussian",
                                      sw_device=device, device="cpu")
    return logits[0, :, : shape[0], : shape[1], : shape[2]]


def merge_targets(logits: Tensor, values: Sequence[int], threshold: float = 0.5) -> Tensor:
    """One label map ``[Z, Y, X]`` from per-target logits ``[P, Z, Y, X]``: the most probable target where its
    probability passes ``threshold``, else 0; target ``i`` is written as ``values[i]``."""
    prob = torch.sigmoid(logits)
    best, index = prob.max(dim=0)
    lut = torch.tensor(list(values), dtype=torch.int64)
    return torch.where(best > threshold, lut[index], torch.zeros_like(index))
