"""Which accelerator the plans are made for, detected without importing torch when there is no GPU."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from segvolpipe.planning.plans import Accelerator


def _ram_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 8.0


def _nvidia_present() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None


def cpu_accelerator() -> Accelerator:
    import platform

    return Accelerator("cpu", platform.processor() or platform.machine(), round(_ram_gb(), 1), os.cpu_count() or 1)


def detect_accelerator(gpu_memory_gb: float | None = None) -> Accelerator:
    """The accelerator to plan for.

    Args:
        gpu_memory_gb: None → detect; 0 → plan for the CPU; > 0 → plan for a CUDA GPU of that memory
            (e.g. to plan on a login node for a GPU cluster).
    """
    if gpu_memory_gb is not None:
        if gpu_memory_gb <= 0:
            return cpu_accelerator()
        return Accelerator("cuda", "as requested (--gpu-memory-gb)", float(gpu_memory_gb), 1)
    if "torch" not in sys.modules and not _nvidia_present():
        return cpu_accelerator()  # importing torch costs seconds; skip it when no GPU can be there
    import torch

    if not torch.cuda.is_available():
        return cpu_accelerator()
    props = torch.cuda.get_device_properties(0)
    return Accelerator("cuda", props.name, round(props.total_memory / 1024**3, 1), torch.cuda.device_count())


__all__ = ["cpu_accelerator", "detect_accelerator"]
