"""Atomic writes: every file is written under a temporary name in its folder, then renamed.

An interrupted stage therefore never leaves a half-written file under a final name. A writer killed outright
(SIGKILL, power loss) leaves its temporary file behind: ``.{name}.{pid}@{host}-XXXXXXXX.tmp[suffix]``, where
``host`` is a short hash of the host name. :func:`remove_stale_temporaries`, called by each stage on the
folders it holds the lock of, removes those whose writer no longer runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

SCHEMA_VERSION = 1
# a temporary file nobody has modified for this long is abandoned, whoever wrote it (writes take seconds)
ABANDONED_TMP_S = 3600.0
_TMP_NAME = re.compile(r"^\..+\.(?P<pid>\d+)@(?P<host>[0-9a-f]{6})-[a-z0-9_]{8}\.tmp(?:\.[^/]*)?$")
_LIVE: set[Path] = set()  # this process's open temporary files


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(final: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` when the block succeeds.

    Args:
        final: The destination.
        suffix: Suffix of the temporary name (libraries such as nibabel choose the format from it).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.{os.getpid()}@{_host_tag()}-", suffix=f".tmp{suffix}",
                               dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    live = Path(os.path.abspath(tmp_path))
    _LIVE.add(live)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes owner-only files; a result gets the usual umask-based mode
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, final)
    finally:
        _LIVE.discard(live)
        if tmp_path.exists():
            tmp_path.unlink()


def remove_stale_temporaries(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Remove the temporary files of :func:`atomic_path` left in ``folder`` by writers that no longer run.

    A temporary file is stale when its writer ran on this host and that process is gone (or is this process
    but the file is not one of its open ones: an earlier process had this pid, as happens in containers), or,
    on any host, when nobody has modified it for :data:`ABANDONED_TMP_S`. Other files (other programs'
    temporaries included) are never touched. Call it on a folder whose stage lock is held, so no process of
    another host writes there.

    Returns:
        The removed files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    host, removed = _host_tag(), []
    for path in folder.rglob(".*.tmp*") if recursive else folder.glob(".*.tmp*"):
        m = _TMP_NAME.match(path.name)
        if m is None or Path(os.path.abspath(path)) in _LIVE or not path.is_file():
            continue
        try:
            idle = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            continue
        dead = m["host"] == host and not _running(int(m["pid"]))
        if dead or idle > ABANDONED_TMP_S:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (this process counts only for its open files, checked above)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone; or a pid beyond this system's range
        return False
    except PermissionError:  # another user's process
        return True
    return True


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
