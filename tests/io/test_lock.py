"""Stage locks: a live holder is refused with one clear line, a stale lock is recovered, the file never lingers."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from segvolpipe.cli import app
from segvolpipe.errors import UserError
from segvolpipe.io.lock import lock_path, stage_lock
from segvolpipe.log import logger
from tests.conftest import make_blob_dataset


@pytest.fixture()
def holder() -> Iterator[subprocess.Popen]:
    """A live process that is not us (its pid goes into hand-written lock files)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    yield proc
    _kill(proc)


@pytest.fixture()
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The package logger's records (it does not propagate once the CLI has set it up)."""
    logger.addHandler(caplog.handler)
    with caplog.at_level(logging.INFO, logger="segvolpipe"):
        yield caplog
    logger.removeHandler(caplog.handler)


def _kill(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()  # reaped: a zombie would still answer os.kill(pid, 0)


def _write_lock(path: Path, pid: int, host: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                "started": "2024-05-01T12:00:00+0000", "command": "segvol predict -i a -o b"}))


def test_a_live_holder_is_refused_then_recovered_once_it_is_gone(tmp_path, holder, logs):
    path = lock_path(tmp_path, "predict")
    _write_lock(path, holder.pid)
    with pytest.raises(UserError) as info:
        with stage_lock(tmp_path, "predict"):
            pytest.fail("entered a lock another live process holds")
    line = info.value.line()
    assert info.value.path == str(path.resolve())
    assert f"another 'segvol predict' (pid {holder.pid} on {socket.gethostname()}, started 2024-05-01" in line
    assert "delete the lock file if that process is gone" in line and "\n" not in line
    assert json.loads(path.read_text())["pid"] == holder.pid  # a refused process leaves the lock alone

    _kill(holder)
    with stage_lock(tmp_path, "predict") as held:
        record = json.loads(held.read_text())
        assert record["pid"] == os.getpid() and set(record) == {"pid", "host", "started", "command"}
    assert f"recovered a stale lock of pid {holder.pid}" in logs.text
    assert not path.exists()


def test_an_old_unreadable_lock_is_recovered_a_young_one_refused(tmp_path, logs):
    path = lock_path(tmp_path, "evaluate")
    path.write_bytes(b"")
    old = time.time() - 10
    os.utime(path, (old, old))  # past the moment its writer needs, not yet a crash
    with pytest.raises(UserError, match="another 'segvol evaluate' is starting on this folder"):
        with stage_lock(tmp_path, "evaluate"):
            pass
    path.write_bytes(b'{"pid": ')
    old = time.time() - 120
    os.utime(path, (old, old))
    with stage_lock(tmp_path, "evaluate"):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert "recovered a stale lock (unreadable" in logs.text and not path.exists()


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    path = lock_path(tmp_path, "train", "fold_0")
    assert path.name == ".train_fold_0.lock"
    _write_lock(path, 999_999_999, host="node-elsewhere")  # no such pid here, but it is not ours to check
    with pytest.raises(UserError) as info:
        with stage_lock(tmp_path, "train", "fold_0"):
            pass
    assert "another 'segvol train' (pid 999999999 on node-elsewhere" in info.value.message
    assert "another host is never cleared automatically" in info.value.message
    assert path.exists()


def test_a_leftover_with_our_own_pid_is_stale(tmp_path):
    """Containers reuse pids: a lock naming our pid that this process does not hold is an earlier run's."""
    path = lock_path(tmp_path, "pseudomask")
    _write_lock(path, os.getpid())
    with stage_lock(tmp_path, "pseudomask"):
        assert "2024-05-01" not in path.read_text()
    assert not path.exists()


def test_the_lock_is_removed_after_the_block_and_after_an_error(tmp_path):
    folder = tmp_path / "made" / "on" / "demand"
    with stage_lock(folder, "predict") as path:
        assert path.is_file() and path.parent == folder.resolve()
    assert not (tmp_path / "made").exists()  # the folders it made are removed when nothing was written
    with stage_lock(folder, "predict"):
        (folder / "out.txt").write_text("kept")
    assert not path.exists() and (folder / "out.txt").is_file()
    with pytest.raises(RuntimeError, match="boom"):
        with stage_lock(folder, "predict"):
            raise RuntimeError("boom")
    assert not path.exists()
    with pytest.raises(KeyboardInterrupt):
        with stage_lock(folder, "predict"):
            raise KeyboardInterrupt
    assert not path.exists()


def test_nested_acquisition_in_one_process_is_allowed(tmp_path):
    with stage_lock(tmp_path, "predict") as outer:
        with stage_lock(tmp_path, "predict") as inner:
            assert inner == outer
        assert outer.exists()  # the outermost block owns the file
    assert not outer.exists()


def test_a_lock_replaced_by_hand_is_left_alone(tmp_path, holder):
    with stage_lock(tmp_path, "predict") as path:
        path.unlink()
        _write_lock(path, holder.pid)  # someone deleted ours and another run took the folder
    assert json.loads(path.read_text())["pid"] == holder.pid


def test_plan_preprocess_is_refused_while_another_runs(roots, holder):
    make_blob_dataset(roots["raw"], 500, n=3)
    path = roots["preprocessed"] / "Dataset500_Blobs" / ".plan-preprocess.lock"
    _write_lock(path, holder.pid)
    command = ["plan-preprocess", "-d", "500", "-c", "3d_lite", "--np", "1", "--no-progress"]
    refused = CliRunner().invoke(app, command)
    assert refused.exit_code == 2, refused.output
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in refused.output
    assert lines[0].startswith(f"error: {path.resolve()}: another 'segvol plan-preprocess' (pid {holder.pid}")
    assert not (path.parent / "fingerprint.json").exists()

    _kill(holder)
    done = CliRunner().invoke(app, command)
    assert done.exit_code == 0, done.output
    assert (path.parent / "3d_lite" / "blob_000.npy").is_file() and not path.exists()
