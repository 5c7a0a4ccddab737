"""bfloat16 autocast where the hardware does it natively.

On CUDA GPUs with bf16 (Ampere and later) and on CPUs with AVX512-BF16 or AMX, autocast runs convolutions and
matrix products in bfloat16 with float32 weights, optimiser state and losses. On this project's 2-core
AVX512-BF16 machine it makes a 3d_lite U-Net training step 2.6× and its inference 2.7× faster, the ViT
variants' steps about as fast as in float32 (``BENCHMARKS.md``, model zoo section, "bf16 autocast on this CPU").
A CPU without native bf16 would only emulate it, slower than float32: there autocast stays off whatever the plans
say.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bfloat16 natively (CUDA with bf16; oneDNN's check on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def use_bf16(device: torch.device | str, on_cuda: bool, on_cpu: bool) -> bool:
    """The plans' wish for this device type (``on_cuda``/``on_cpu``), where the device does bf16 natively."""
    device = torch.device(device)
    wanted = on_cuda if device.type == "cuda" else on_cpu if device.type == "cpu" else False
    return wanted and native_bf16(device)


def autocast(device: torch.device | str, enabled: bool) -> Callable[[], AbstractContextManager]:
    """A factory of bf16 autocast contexts for ``device`` (null contexts when not ``enabled``)."""
    device = torch.device(device)
    if not enabled:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
