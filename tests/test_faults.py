"""Fault tolerance: each stage, SIGKILLed mid-way through the real CLI, then rerun, ends as an uninterrupted run.

For plan-preprocess, pseudomask, train and predict: a ``segvol`` subprocess is killed (SIGKILL, its whole process
group) as soon as the stage's first per-case output appears; every file present right after the kill must load
(atomic writes: no half-written file under a final name); the same command is then rerun (train: with
``--resume``, the documented way to continue), which must recover the stale lock with no manual step, and the
outputs must equal those of an uninterrupted run of the same command in other roots: bit-identical arrays, the
same JSON apart from provenance and timings, the same label maps, the same final weights. No temporary file
(``.*.tmp*``) and no lock may remain after the rerun.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from segvolpipe.io.atomic import load_npy
from segvolpipe.io.nifti import read_volume
from tests.conftest import make_blob_dataset, shrink_plans_for_training

START_TIMEOUT_S = 300.0  # the killed run must produce its first output within this time
RUN_TIMEOUT_S = 600
POLL_S = 0.005
TIMING_KEYS = {"provenance", "seconds", "seconds_per_case", "timings", "time", "epoch_s", "elapsed_s", "samples_per_s",
               "peak_mib"}
TRAIN_ARGS = ["-d", "11", "--epochs", "3", "--iters-per-epoch", "2", "--batch-size", "1", "--np", "0",
              "--device", "cpu", "--no-progress"]


# -- running the CLI ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Roots:
    """The three data roots of one run (``SEGVOL_RAW`` / ``_PREPROCESSED`` / ``_RESULTS``) and its scratch folder."""

    base: Path
    raw: Path
    preprocessed: Path
    results: Path

    @classmethod
    def under(cls, base: Path, **shared: Path) -> Roots:
        base.mkdir(parents=True, exist_ok=True)
        paths = {k: shared.get(k, base / k) for k in ("raw", "preprocessed", "results")}
        return cls(base, **paths)

    def env(self) -> dict[str, str]:
        # one torch thread: the same arithmetic in every run, and no oversubscription of small CI machines
        return {**os.environ, "SEGVOL_RAW": str(self.raw), "SEGVOL_PREPROCESSED": str(self.preprocessed),
                "SEGVOL_RESULTS": str(self.results), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "COLUMNS": "200"}


class Run:
    """``python -m segvolpipe.cli ARGS`` in its own process group, output to a log file."""

    def __init__(self, roots: Roots, args: list[str], name: str) -> None:
        self.args = args
        self.log = roots.base / f"{name}.log"
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen([sys.executable, "-m", "segvolpipe.cli", *args], cwd=roots.base,
                                         env=roots.env(), stdout=fh, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def finish(self) -> str:
        """Wait for a successful exit; returns the output."""
        try:
            code = self.proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"segvol {' '.join(self.args)} ran over {RUN_TIMEOUT_S} s:\n{self.output()}")
        assert code == 0, f"segvol {' '.join(self.args)} exited with {code}:\n{self.output()}"
        return self.output()

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=60)  # reaped: its pid no longer runs, so its lock is stale

    def kill_when(self, ready: Callable[[], bool]) -> None:
        """SIGKILL the process group as soon as ``ready()``; fails unless the process was still running then."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            if self.proc.poll() is not None:
                pytest.fail(f"segvol {' '.join(self.args)} exited ({self.proc.returncode}) before its first "
                            f"output:\n{self.output()}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"no first output of segvol {' '.join(self.args)} after {START_TIMEOUT_S} s")
            time.sleep(POLL_S)
        running = self.proc.poll() is None
        self.kill()
        assert running, f"segvol {' '.join(self.args)} finished before it could be killed: make the data larger"
        assert self.proc.returncode == -signal.SIGKILL


def run(roots: Roots, args: list[str], name: str) -> str:
    return Run(roots, args, name).finish()


def first(folder: Path, pattern: str) -> Callable[[], bool]:
    """A readiness test: some file of ``folder`` matches ``pattern``."""
    return lambda: folder.is_dir() and any(True for _ in folder.glob(pattern))


# -- checking files ----------------------------------------------------------------------------------------
def final_files(folder: Path) -> dict[str, Path]:
    """Files under ``folder`` by relative path, without dot-files (locks, temporary names)."""
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def leftovers(folder: Path) -> list[str]:
    """Temporary files, locks and lock remnants under ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*")
                  if ".tmp" in p.name or ".lock" in p.name)


def load_any(path: Path) -> Any:
    """Read a stage output completely, whatever its kind; raises when it is truncated or malformed."""
    name = path.name
    if name.endswith(".npy"):
        return load_npy(path)
    if name.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    if name.endswith(".json"):
        return json.loads(path.read_text())
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in path.read_text().splitlines()]
    if name.endswith(".pt"):
        return torch.load(path, map_location="cpu", weights_only=True)
    if name.endswith((".nii.gz", ".nii")):
        return read_volume(path, dtype=None)
    if name.endswith(".png"):
        import matplotlib.image

        return matplotlib.image.imread(path)
    raise AssertionError(f"unexpected output file {path}")


def assert_all_load(folder: Path) -> None:
    for rel, path in final_files(folder).items():
        try:
            load_any(path)
        except Exception as exc:  # noqa: BLE001 - any failure is a half-written file
            pytest.fail(f"{rel} does not load right after the kill: {type(exc).__name__}: {exc}")


def without_timings(value: Any) -> Any:
    """A JSON value without provenance and wall-clock fields (the only parts two identical runs may differ in)."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def assert_same_outputs(got: Path, want: Path, normalise: Callable[[str, Any], Any] = lambda rel, v: v) -> None:
    """Same files; arrays bit-identical, JSON equal apart from timings, NIfTI voxels and affines equal."""
    a, b = final_files(got), final_files(want)
    assert sorted(a) == sorted(b)
    for rel in a:
        x, y = load_any(a[rel]), load_any(b[rel])
        name = Path(rel).name
        if name.endswith(".npy"):
            assert x.dtype == y.dtype and np.array_equal(x, y), rel
        elif name.endswith(".npz"):
            assert sorted(x) == sorted(y) and all(np.array_equal(x[k], y[k]) for k in x), rel
        elif name.endswith((".json", ".jsonl")):
            assert normalise(rel, without_timings(x)) == normalise(rel, without_timings(y)), rel
        elif name.endswith((".nii.gz", ".nii")):
            (xa, xg), (ya, yg) = x, y
            assert xg == yg and xa.dtype == ya.dtype and np.array_equal(xa, ya), rel
        # PNG figures: loaded above (complete files); their pixels are not part of the contract


def leave_dead_writers_temporary(final: Path) -> Path:
    """The temporary file a writer killed in the middle of writing ``final`` leaves (a helper process SIGKILLed
    inside :func:`~segvolpipe.io.atomic.atomic_path`): the kill of a stage lands mid-write only by chance."""
    code = ("import os, signal, sys\nfrom segvolpipe.io.atomic import atomic_path\n"
            "atomic_path(sys.argv[1]).__enter__().write_bytes(b'half')\nos.kill(os.getpid(), signal.SIGKILL)")
    done = subprocess.run([sys.executable, "-c", code, str(final)], timeout=120)
    assert done.returncode == -signal.SIGKILL
    (tmp,) = final.parent.glob(f".{final.name}.*.tmp*")
    return tmp


def copy_tree(src: Path, dst: Path) -> None:
    """Copy keeping modification times: input hashes (names, sizes, times) stay the same."""
    shutil.copytree(src, dst, copy_function=shutil.copy2)


# -- data ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def raw_blobs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A raw root with 8 blob cases large enough that preprocessing takes a noticeable time per case."""
    raw = tmp_path_factory.mktemp("raw_blobs")
    make_blob_dataset(raw, 500, n=8, shape=(64, 128, 128))
    return raw


@pytest.fixture(scope="module")
def preprocessed_blobs(raw_blobs: Path, tmp_path_factory: pytest.TempPathFactory) -> Roots:
    from segvolpipe.preprocessing.stage import PlanPreprocessOptions, run_plan_preprocess

    roots = Roots.under(tmp_path_factory.mktemp("preprocessed_blobs"), raw=raw_blobs)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in roots.env().items():
            if key.startswith("SEGVOL_"):
                mp.setenv(key, value)
        run_plan_preprocess("500", PlanPreprocessOptions(configurations=("3d_lite",), workers=1, progress=False))
    return roots


@pytest.fixture(scope="module")
def tiny_training_data(tmp_path_factory: pytest.TempPathFactory) -> Roots:
    """Raw and preprocessed roots of 8 small cases whose plans force a tiny 3d_lite model (see test_train_stage)."""
    from segvolpipe.preprocessing.stage import PlanPreprocessOptions, run_plan_preprocess

    roots = Roots.under(tmp_path_factory.mktemp("tiny_training_data"))
    make_blob_dataset(roots.raw, 11, n=8, shape=(16, 32, 28))
    with pytest.MonkeyPatch.context() as mp:
        for key, value in roots.env().items():
            if key.startswith("SEGVOL_"):
                mp.setenv(key, value)
        result = run_plan_preprocess("11", PlanPreprocessOptions(workers=1, progress=False))
    shrink_plans_for_training(result.folder / "plans.json")
    return roots


@pytest.fixture(scope="module")
def tiny_model(tiny_training_data: Roots) -> Path:
    """A results folder with one tiny segvol model trained on every case (fold 'all': no validation pass)."""
    from segvolpipe.training.stage import TrainOptions, run_train

    with pytest.MonkeyPatch.context() as mp:
        for key, value in tiny_training_data.env().items():
            if key.startswith("SEGVOL_"):
                mp.setenv(key, value)
        result = run_train("11", TrainOptions(folds=("all",), epochs=1, iters_per_epoch=2, batch_size=1,
                                              device="cpu", workers=0, progress=False))
    return result.folder


# -- the stages ------------------------------------------------------------------------------------------------
def _same_report(rel: str, value: Any) -> Any:
    """preprocess_report.json says what this run did: a case done before the kill is 'skipped' by the rerun."""
    if rel == "preprocess_report.json":
        statuses = value["configurations"]
        value = {**value, "configurations": {c: {k: "ok" if s in ("done", "skipped") else s for k, s in v.items()}
                                             for c, v in statuses.items()}}
    return value


def test_plan_preprocess_killed_then_rerun_equals_an_uninterrupted_run(raw_blobs: Path, tmp_path: Path) -> None:
    killed, straight = (Roots.under(tmp_path / n) for n in ("killed", "straight"))
    for roots in (killed, straight):
        copy_tree(raw_blobs, roots.raw)
    args = ["plan-preprocess", "-d", "500", "--np", "1", "--no-progress"]
    reference = Run(straight, args, "straight")
    out = killed.preprocessed / "Dataset500_Blobs"
    Run(killed, args, "killed").kill_when(first(out / "3d_lite", "*.npy"))
    assert not (out / "preprocess_report.json").exists()
    assert_all_load(killed.preprocessed)
    assert leftovers(out), "the killed run should have left its lock behind"
    leave_dead_writers_temporary(out / "3d_lite" / "blob_007.npy")
    rerun = run(killed, args, "rerun")
    assert "unchanged" in rerun
    reference.finish()
    assert leftovers(killed.preprocessed) == []
    assert_same_outputs(out, straight.preprocessed / "Dataset500_Blobs", _same_report)


def test_pseudomask_killed_then_rerun_equals_an_uninterrupted_run(preprocessed_blobs: Roots, tmp_path: Path) -> None:
    killed, straight = (Roots.under(tmp_path / n, raw=preprocessed_blobs.raw) for n in ("killed", "straight"))
    for roots in (killed, straight):
        copy_tree(preprocessed_blobs.preprocessed, roots.preprocessed)
    args = ["pseudomask", "-d", "500", "--np", "1", "--no-progress"]
    reference = Run(straight, args, "straight")
    out = killed.preprocessed / "Dataset500_Blobs" / "pseudomasks" / "3d_lite"
    Run(killed, args, "killed").kill_when(first(out, "*.npy"))
    assert not (out / "report.json").exists()
    assert_all_load(killed.preprocessed)
    assert leftovers(out)
    leave_dead_writers_temporary(out / "qc" / "blob_007.png")
    run(killed, args, "rerun")
    reference.finish()
    assert leftovers(killed.preprocessed) == []
    assert_same_outputs(killed.preprocessed, straight.preprocessed)


def test_train_killed_then_resumed_equals_an_uninterrupted_run(tiny_training_data: Roots, tmp_path: Path) -> None:
    shared = {"raw": tiny_training_data.raw, "preprocessed": tiny_training_data.preprocessed}
    killed, straight = (Roots.under(tmp_path / n, **shared) for n in ("killed", "straight"))
    reference = Run(straight, ["train", *TRAIN_ARGS], "straight")
    model = Path("Dataset011_Blobs") / "segvol__3d_lite"
    fold = killed.results / model / "fold_0"
    Run(killed, ["train", *TRAIN_ARGS], "killed").kill_when(first(fold, "checkpoint_latest.pt"))
    assert not (fold / "checkpoint_final.pt").exists()
    assert_all_load(killed.results)
    assert leftovers(killed.results / model)
    # a kill between logging an epoch and saving its checkpoint leaves that epoch's line: the resumed run redoes it
    log = fold / "training_log.jsonl"
    last = json.loads(log.read_text().splitlines()[-1])
    log.write_text(log.read_text() + json.dumps({**last, "epoch": last["epoch"] + 1}) + "\n")
    plain = subprocess.run([sys.executable, "-m", "segvolpipe.cli", "train", *TRAIN_ARGS], cwd=killed.base,
                           env=killed.env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert plain.returncode == 2 and "--resume continues it" in plain.stdout + plain.stderr
    leave_dead_writers_temporary(fold / "checkpoint_best.pt")
    run(killed, ["train", *TRAIN_ARGS, "--resume"], "resumed")
    reference.finish()
    assert leftovers(killed.results) == []
    got = torch.load(fold / "checkpoint_final.pt", weights_only=True)
    want = torch.load(straight.results / model / "fold_0" / "checkpoint_final.pt", weights_only=True)
    assert got["model"].keys() == want["model"].keys()
    assert all(torch.equal(got["model"][k], want["model"][k]) for k in want["model"])
    assert _tensors(got["optimizer"]) == _tensors(want["optimizer"])
    assert without_timings(got["state"]) == without_timings(want["state"])
    # the log, validation label maps and summary of the resumed run are the uninterrupted run's
    assert_same_outputs(fold, straight.results / model / "fold_0", lambda rel, v: v)


def _tensors(state: dict[str, Any]) -> list[float]:
    """Every number of an optimiser state dict, flattened in a fixed order."""
    out: list[float] = []
    for key in sorted(state["state"]):
        for name in sorted(state["state"][key]):
            out += torch.as_tensor(state["state"][key][name]).double().flatten().tolist()
    return out


def test_predict_killed_then_rerun_equals_an_uninterrupted_run(tiny_training_data: Roots, tiny_model: Path,
                                                              tmp_path: Path) -> None:
    images = tiny_training_data.raw / "Dataset011_Blobs" / "imagesTr"
    args = ["-m", str(tiny_model), "-i", str(images), "--mode", "sliding", "--save-probabilities", "--np", "1",
            "--device", "cpu", "--no-progress"]
    killed, straight = (Roots.under(tmp_path / n, raw=tiny_training_data.raw,
                                    preprocessed=tiny_training_data.preprocessed) for n in ("killed", "straight"))
    reference = Run(straight, ["predict", *args, "-o", str(straight.base / "pred")], "straight")
    out = killed.base / "pred"
    command = ["predict", *args, "-o", str(out)]
    Run(killed, command, "killed").kill_when(first(out, "*.nii.gz"))
    assert len(list(out.glob("*.nii.gz"))) < len(list(images.glob("*.nii.gz")))
    assert_all_load(out)
    assert leftovers(out)
    leave_dead_writers_temporary(out / "blob_007.nii.gz")
    run(killed, command, "rerun")
    reference.finish()
    assert leftovers(out) == []
    assert_same_outputs(out, straight.base / "pred")


def test_only_temporaries_of_writers_that_are_gone_are_removed(tmp_path: Path) -> None:
    from segvolpipe.io.atomic import ABANDONED_TMP_S, atomic_path, remove_stale_temporaries

    dead = leave_dead_writers_temporary(tmp_path / "sub" / "dead.npy")
    code = ("import sys, time\nfrom segvolpipe.io.atomic import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'x')\n    print('ready', flush=True)\n"
            "    time.sleep(600)")
    writer = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "live.npy")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        (live,) = tmp_path.glob(".live.npy.*.tmp*")
        foreign = tmp_path / ".editor-swap.abcdefgh.tmp"  # not ours by its name: never touched
        foreign.write_bytes(b"")
        elsewhere = tmp_path / ".old.npy.1@000000-abcd1234.tmp"  # another host's writer: removed once abandoned
        elsewhere.write_bytes(b"")
        with atomic_path(tmp_path / "mine.json") as mine:
            mine.write_bytes(b"{}")
            assert remove_stale_temporaries(tmp_path, recursive=False) == []
            assert remove_stale_temporaries(tmp_path) == [dead]
            assert live.exists() and mine.exists() and foreign.exists() and elsewhere.exists()
            for old in (elsewhere, foreign):
                os.utime(old, (time.time() - 2 * ABANDONED_TMP_S,) * 2)
            assert remove_stale_temporaries(tmp_path) == [elsewhere]
        assert json.loads((tmp_path / "mine.json").read_text()) == {}
    finally:
        writer.kill()
        writer.wait(timeout=60)
    assert remove_stale_temporaries(tmp_path) == [live]
    assert foreign.exists()
