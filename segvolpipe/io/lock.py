"""Per-folder stage locks: a second process running the same stage on the same folder is refused, not interleaved.

``with stage_lock(folder, "predict"):`` creates ``folder/.predict.lock`` with ``O_CREAT | O_EXCL`` (atomic on
local and NFSv3+ file systems) holding ``{"pid", "host", "started", "command"}``, and removes it on the way out,
also after an exception or Ctrl-C, when the file is still the one it wrote. A lock already there is:

* **ours** (this process holds it, e.g. a stage calling another on the same folder): nested acquisition is
  allowed and counted; the outermost block removes the file;
* **stale**, recovered with an info line: taken on this host by a process that no longer runs (a killed
  ``segvol``, or a leftover from an earlier process that had our pid, as happens in containers), or unreadable
  and older than :data:`UNREADABLE_STALE_S`;
* otherwise **live**: :class:`~segvolpipe.errors.UserError` naming the lock file, the stage, the pid, the host
  and the start time. A lock taken on another host is never cleared automatically: its process cannot be checked
  from here (shared file systems).

The file name starts with a dot, so stages that list a folder skip it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from segvolpipe.errors import UserError
from segvolpipe.io.atomic import provenance
from segvolpipe.log import logger

UNREADABLE_STALE_S = 60.0  # an empty or malformed lock this old is a crash between creating and writing it
_WRITING_GRACE_S = 2.0  # a younger unreadable lock is re-read a few times: its owner may be writing it now
_HELD: dict[tuple[int, Path], int] = {}  # (pid, lock path) → nesting depth, for this process's own locks


@dataclass(frozen=True)
class LockHolder:
    """What a lock file records about the process that took it."""

    pid: int
    host: str
    started: str
    command: str

    @classmethod
    def parse(cls, data: bytes) -> LockHolder | None:
        """The holder recorded in ``data``; None when it is empty or not a valid lock record."""
        try:
            raw = json.loads(data)
            holder = cls(int(raw["pid"]), str(raw["host"]), str(raw["started"]), str(raw["command"]))
        except (ValueError, TypeError, KeyError):
            return None
        return holder if holder.pid > 0 else None


def lock_path(folder: Path, stage: str, scope: str | None = None) -> Path:
    """``folder/.{stage}.lock``, or ``folder/.{stage}_{scope}.lock`` (e.g. one lock per fold)."""
    return Path(folder) / (f".{stage}_{scope}.lock" if scope else f".{stage}.lock")


@contextmanager
def stage_lock(folder: Path, stage: str, scope: str | None = None) -> Iterator[Path]:
    """Hold the lock of ``stage`` on ``folder`` for the block; yields the lock file.

    ``folder`` is created if missing, and removed again when the block leaves it empty (a stage that fails before
    writing anything leaves no folder behind).

    Args:
        folder: The folder the stage writes to. A stage that may delete that folder locks its parent instead,
            with a ``scope`` naming the child (``stage_lock(fold.parent, "train", "fold_0")``).
        stage: The ``segvol`` command, as shown in the message to a second process.
        scope: Distinguishes several locks of one stage in one folder.

    Raises:
        UserError: another live process holds the lock (or one on another host, or one still being written).
    """
    folder = Path(folder).absolute()
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # removed again if left empty
    folder.mkdir(parents=True, exist_ok=True)
    path = lock_path(folder.resolve(), stage, scope)
    key = (os.getpid(), path)
    if key in _HELD:  # nested in this process: the outer block owns the file
        _HELD[key] += 1
        try:
            yield path
        finally:
            _HELD[key] -= 1
        return
    content = _acquire(path, stage)
    _HELD[key] = 1
    try:
        yield path
    finally:
        del _HELD[key]
        _release(path, content)
        _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders the lock created (deepest first) that the stage left empty (e.g. it failed early)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty, or gone: stop at the first one that stays
            return


def _record() -> bytes:
    stamp = provenance()
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": stamp["time"],
                       "command": stamp["command"]}).encode() + b"\n"


def _acquire(path: Path, stage: str) -> bytes:
    """Create ``path`` exclusively and write our record; take over one stale lock on the way."""
    content = _record()
    took_over = False
    for _ in range(3):  # a lock released or taken over between our attempts costs one more try
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileNotFoundError:  # another run's lock removed the empty folder it had made
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        except FileExistsError:
            found = _read(path)
            if found is None:  # released since
                continue
            holder, data, age = found
            stale = None if took_over else _stale(holder, age)
            if stale is None:
                raise _refusal(path, stage, holder) from None
            if _take_over(path, data):
                logger.info("%s: recovered a stale lock %s", path, stale)
                took_over = True
            continue
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(content)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return content
    found = _read(path)
    raise _refusal(path, stage, found[0] if found else None)


def _release(path: Path, content: bytes) -> None:
    """Remove ``path`` when it still holds ``content`` (a lock removed or replaced by hand is left alone)."""
    try:
        if path.read_bytes() == content:
            path.unlink()
    except FileNotFoundError:
        pass


def _read(path: Path) -> tuple[LockHolder | None, bytes, float] | None:
    """``(holder, raw bytes, age in s)``, holder None when unreadable; None when the file is gone.

    A young unreadable lock is re-read for a moment: its owner may be between creating and writing it."""
    deadline = time.monotonic() + _WRITING_GRACE_S
    while True:
        try:
            data = path.read_bytes()
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return None
        holder = LockHolder.parse(data)
        if holder is not None or age > _WRITING_GRACE_S or time.monotonic() > deadline:
            return holder, data, age
        time.sleep(0.05)


def _stale(holder: LockHolder | None, age: float) -> str | None:
    """Why the lock is stale (for the log), or None when it must be respected."""
    if holder is None:
        return f"(unreadable, {age:.0f} s old)" if age > UNREADABLE_STALE_S else None
    if holder.host != socket.gethostname():
        return None
    if holder.pid == os.getpid():  # we do not hold it (nesting is handled before): an earlier process had our pid
        return f"of pid {holder.pid} (an earlier process with this process's pid)"
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return f"of pid {holder.pid}"
    except PermissionError:  # alive, another user's
        return None
    return None


def _take_over(path: Path, judged: bytes) -> bool:
    """Remove the stale lock ``path`` if it still holds ``judged``; False when another process replaced it first.

    The file is renamed aside before it is checked, so two processes recovering the same stale lock at once
    cannot delete the fresh lock one of them has just made."""
    aside = path.with_name(f"{path.name}.stale-{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True
    if aside.read_bytes() == judged:
        aside.unlink()
        return True
    try:  # it was a fresh lock: put it back
        os.link(aside, path)
    except OSError:
        pass
    aside.unlink()
    return False


def _refusal(path: Path, stage: str, holder: LockHolder | None) -> UserError:
    advice = "wait for it, or delete the lock file if that process is gone"
    if holder is None:
        return UserError(f"another 'segvol {stage}' is starting on this folder (its lock file is not written yet); "
                         f"wait for it, or delete the lock file if no 'segvol {stage}' is running", path)
    who = f"another 'segvol {stage}' (pid {holder.pid} on {holder.host}, started {holder.started})"
    if holder.host != socket.gethostname():
        return UserError(f"{who} is working on this folder; a lock from another host is never cleared "
                         f"automatically (shared file systems): {advice}", path)
    return UserError(f"{who} is working on this folder; {advice}", path)
