"""Atomic writes: every file is written under a temporary name in its folder, then renamed.

An interrupted stage therefore never leaves a half-written file under a final name.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

SCHEMA_VERSION = 1


@contextmanager
def atomic_path(final: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` when the block succeeds.

    Args:
        final: The destination.
        suffix: Suffix of the temporary name (libraries such as nibabel choose the format from it).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write(final: str | Path, writer: Callable[[IO[bytes]], None]) -> None:
    """Call ``writer`` on a binary file object opened on a temporary name, then rename."""
    with atomic_path(final) as tmp, open(tmp, "wb") as fh:
        writer(fh)


def save_npy(final: str | Path, array: np.ndarray) -> None:
    """``np.save`` atomically (never pickles: object arrays are refused)."""
    if array.dtype == object:
        raise TypeError("object arrays would need pickle; refusing to save")
    atomic_write(final, lambda fh: np.save(fh, array, allow_pickle=False))


def load_npy(path: str | Path, mmap: bool = False) -> np.ndarray:
    """``np.load`` without pickle, optionally memory-mapped."""
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def provenance() -> dict[str, Any]:
    """Package version, command line and time, recorded in every JSON file."""
    from segvolpipe import __version__

    return {
        "package": "segvolpipe",
        "version": __version__,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, inf) replaced by None, recursively, numpy scalars unwrapped."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    return None if isinstance(obj, float) and not np.isfinite(obj) else obj


def write_json(final: str | Path, payload: dict[str, Any], stamp: bool = True) -> None:
    """Write ``payload`` as JSON atomically, adding ``schema_version`` and ``provenance`` when ``stamp``.

    Standard JSON has no NaN or infinity: they are written as ``null`` (NaN means "undefined" everywhere here,
    e.g. the Dice of a class absent from both reference and prediction)."""
    data = json_safe(dict(payload))
    if stamp:
        data.setdefault("schema_version", SCHEMA_VERSION)
        data["provenance"] = provenance()
    text = json.dumps(data, indent=2, sort_keys=False, allow_nan=False, default=_json_default)
    atomic_write(final, lambda fh: fh.write((text + "\n").encode()))


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON object; a malformed file is a :class:`~segvolpipe.errors.UserError` naming it."""
    from segvolpipe.errors import UserError

    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise UserError("file not found", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"not valid JSON ({exc})", path) from None
    if not isinstance(data, dict):
        raise UserError("expected a JSON object at the top level", path)
    return data


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
