"""Sliding-window prediction over a whole volume (the ``sliding`` mode, and the fine pass of ``zoom``).

Promptable models run on :mod:`segvolpipe.inference.windows` (MONAI's lattice and Gaussian weights, prompts
carried into every window, each window encoded once for all targets); the U-Net runs on MONAI's
``sliding_window_inference`` directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.inferers import sliding_window_inference
from torch import Tensor, nn

from segvolpipe.inference.windows import (
    ABSENT_LOGIT,
    TargetPrompt,
    lattice,
    mirror_combinations,
    pad_to,
    run_windows,
)
from segvolpipe.models.spec import LEFT_RIGHT_AXIS

__all__ = ["ABSENT_LOGIT", "TargetPrompt", "merge_targets", "predict_targets", "predict_unet"]


@torch.no_grad()
def predict_targets(model: nn.Module, image: Tensor, targets: Sequence[TargetPrompt], overlap: float = 0.5,
                    device: torch.device | str = "cpu", modality: int = 0, bf16: bool = False,
                    mirror_axes: Sequence[int] = (), sigma_scale: float = 0.125,
                    on_window: Callable[[], None] | None = None) -> Tensor:
    """Logits ``[P, Z, Y, X]`` (float32, CPU) of a promptable model for ``P`` targets over a whole volume.

    Args:
        model: A promptable model (``model.input_size`` is the window).
        image: ``[C, Z, Y, X]`` on the model's preprocessed grid.
        targets: One :class:`TargetPrompt` per output channel, in volume voxels.
        overlap: Window overlap (fraction of the window).
        device: Where the windows are computed.
        modality: 0 CT, 1 MRI (the ``prior`` variant's gate).
        bf16: Autocast to bfloat16 (see :mod:`segvolpipe.precision`).
        mirror_axes: Mirroring test-time augmentation along these axes (0, 1, 2 = z, y, x).
    """
    roi = list(model.input_size)
    padded, shape = pad_to(image.float(), roi)
    origins = lattice(padded.shape[1:], roi, overlap)
    everyone = list(range(len(targets)))
    blended = run_windows(model, padded, targets, origins, [everyone] * len(origins), roi, device, modality, bf16,
                          mirror_axes, sigma_scale, on_window)
    out = torch.stack([blended[t][1] for t in everyone])
    return out[:, : shape[0], : shape[1], : shape[2]]


@torch.no_grad()
def predict_unet(model: nn.Module, image: Tensor, overlap: float = 0.5, device: torch.device | str = "cpu",
                 bf16: bool = False, mirror_axes: Sequence[int] = (), sigma_scale: float = 0.125) -> Tensor:
    """Class logits ``[K, Z, Y, X]`` (float32, CPU) of the U-Net over a whole volume (MONAI's inferer)."""
    device = torch.device(device)
    roi = list(model.input_size)
    padded, shape = pad_to(image.float(), roi)
    flips = [tuple(d + 2 for d in c) for c in mirror_combinations(mirror_axes)]
    spec = getattr(model, "spec", None)
    # mirrored across the body, channel c of the output is the structure's partner on the other side
    sides = spec.label_mirror() if spec is not None else None

    def predictor(window: Tensor) -> Tensor:
        total = None
        for dims in flips:
            x = window.to(device).flip(dims) if dims else window.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                y = model(x).float()
            y = y.flip(dims) if dims else y
            if sides is not None and LEFT_RIGHT_AXIS + 2 in dims:
                y = y[:, list(sides)]
            total = y if total is None else total + y
        return total / len(flips)

    logits = sliding_window_inference(padded.unsqueeze(0), roi, 1, predictor, overlap=overlap, mode="gaussian",
                                      sigma_scale=sigma_scale, sw_device=device, device="cpu")
    return logits[0, :, : shape[0], : shape[1], : shape[2]]


def merge_targets(logits: Tensor, values: Sequence[int], threshold: float = 0.5) -> Tensor:
    """One label map ``[Z, Y, X]`` from per-target logits ``[P, Z, Y, X]``: the most probable target where its
    probability passes ``threshold``, else 0; target ``i`` is written as ``values[i]``."""
    prob = torch.sigmoid(logits)
    best, index = prob.max(dim=0)
    lut = torch.tensor(list(values), dtype=torch.int64)
    return torch.where(best > threshold, lut[index], torch.zeros_like(index))
