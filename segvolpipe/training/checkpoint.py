"""Checkpoints: everything needed to continue a run exactly, saved atomically, loaded with ``weights_only=True``.

A checkpoint holds the model's state dict, the optimiser's, the training state (epoch, step, schedule
length, validation EMA, best epoch, time used), every RNG state (torch CPU and CUDA, numpy's global,
Python's) and the run's config and model spec as JSON text, so a checkpoint from another configuration
is recognised before any weight is touched. Nothing is pickled: only tensors, numbers, strings, lists
and dicts, which ``torch.load(..., weights_only=True)`` accepts.
"""

from __future__ import annotations

import json
import random
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segvolpipe.errors import UserError
from segvolpipe.io.atomic import atomic_path

FORMAT = "segvolpipe-checkpoint-1"


@dataclass
class TrainState:
    """Where a run stands; ``epoch`` is the next epoch to run."""

    epoch: int = 0
    step: int = 0
    total_steps: int = 0
    ema_dice: float | None = None
    best_ema_dice: float | None = None
    best_epoch: int | None = None
    elapsed_s: float = 0.0
    epoch_s: float | None = None


def rng_state() -> dict[str, Any]:
    """Every RNG a training step draws from, in a ``weights_only``-loadable form."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, state: TrainState,
                    config_json: dict[str, Any], spec_json: dict[str, Any]) -> None:
    """Write a checkpoint atomically (temporary name, then rename)."""
    payload = {
        "format": FORMAT,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "state": asdict(state),
        "rng": rng_state(),
        "config": json.dumps(config_json),
        "spec": json.dumps(spec_json),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path, mmap: bool = False) -> dict[str, Any]:
    """Read one of our checkpoints (``weights_only=True``); any problem is one :class:`UserError` naming it.

    ``mmap``: map the tensors instead of reading them (cheap when only the spec or config is needed)."""
    if not path.is_file():
        raise UserError("no such checkpoint", path)
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; torch's own message would be misleading
        raise UserError("corrupted or unreadable checkpoint (not a complete PyTorch zip archive: truncated, or "
                        "another kind of file)", path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - truncated, corrupted or foreign files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"corrupted or unreadable checkpoint ({first})", path) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError("not a segvolpipe training checkpoint (use --pretrained for SegVol's files)", path)
    payload["config"] = json.loads(payload["config"])
    payload["spec"] = json.loads(payload["spec"])
    payload["state"] = TrainState(**payload["state"])
    return payload


def check_same_spec(payload: dict[str, Any], spec_json: dict[str, Any], path: Path) -> None:
    """A checkpoint made for another model (configuration, sizes, labels, variant) is refused by name; fields added
    to the spec since the checkpoint was written count as their defaults."""
    theirs, spec_json = _with_defaults(payload["spec"]), _with_defaults(spec_json)
    if theirs == spec_json:
        return
    diffs = [k for k in spec_json if theirs.get(k) != spec_json.get(k)]
    detail = ", ".join(f"{k}: {_short(theirs.get(k))} vs {_short(spec_json.get(k))}" for k in diffs[:2])
    raise UserError(f"checkpoint was made for another model ({detail})", path)


def _with_defaults(spec_json: dict[str, Any]) -> dict[str, Any]:
    """``spec_json`` through :class:`ModelSpec` (missing fields get their defaults), or as it is if unreadable."""
    from segvolpipe.models.spec import ModelSpec

    try:
        return ModelSpec.from_json(spec_json).to_json()
    except (TypeError, ValueError, KeyError, AttributeError):
        return spec_json


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
