"""Shared helpers for the benchmarks: process-tree memory sampling, timing, machine facts, tables.

Standard library only (no psutil): memory is read from ``/proc``. Every measured command runs in a
session of its own; every ``SAMPLE_INTERVAL_S`` the sampler sums, over the whole process tree,

* ``VmRSS`` of ``/proc/<pid>/status`` (what the benchmarks report as "peak RSS, tree"; pages shared
  between forked workers are counted once per process, so this over-counts sharing), and
* ``Pss`` of ``/proc/<pid>/smaps_rollup`` (proportional set size: shared pages split between their
  users, so the sum is what the tree really occupies),

and keeps the largest sum seen. The tree is every live process whose parent chain leads to the
started process, plus every process of its session (which also catches workers re-parented to init).
The tree and RSS are read every sample, PSS every 10th (see ``TreeMemorySampler``), which keeps the
sampler's own CPU use to a few per cent of one core.
``os.wait4`` adds the largest single process of the tree (``ru_maxrss``, exact, no sampling).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

SAMPLE_INTERVAL_S = 0.02
MIB = 1024 * 1024


# ----------------------------------------------------------------------------------------------------------
# /proc reading


def _read_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, session id) of ``pid`` from ``/proc/<pid>/stat``, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    rest = data[data.rfind(b")") + 2 :].split()
    try:
        return int(rest[1]), int(rest[3])  # fields 4 (ppid) and 6 (session)
    except (IndexError, ValueError):
        return None


def _read_kib(path: str, key: bytes) -> int:
    """The ``key:  N kB`` value of a /proc file in KiB, 0 when missing or gone."""
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class ProcessTree:
    """Incremental view of the process tree under ``root_pid`` (plus members of ``session_id``).

    Each :meth:`pids` lists /proc (about 0.15 ms) and reads ``/proc/<pid>/stat`` only of pids it has not
    seen before, so it can run every few milliseconds. A process's session never changes and its parent
    only changes to init on re-parenting, which the session test covers.
    """

    def __init__(self, root_pid: int, session_id: int | None = None) -> None:
        self.root_pid, self.session_id = root_pid, session_id
        self._info: dict[int, tuple[int, int]] = {}  # pid -> (ppid, sid)

    def pids(self) -> list[int]:
        current = {int(n) for n in os.listdir("/proc") if n.isdigit()}
        for pid in list(self._info):
            if pid not in current:
                del self._info[pid]
        for pid in current - self._info.keys():
            st = _read_stat(pid)
            if st is not None:
                self._info[pid] = st
        children: dict[int, list[int]] = {}
        members = set()
        for pid, (ppid, sid) in self._info.items():
            children.setdefault(ppid, []).append(pid)
            if self.session_id is not None and sid == self.session_id:
                members.add(pid)
        tree: set[int] = set()
        stack = [self.root_pid] if self.root_pid in self._info else []
        while stack:
            pid = stack.pop()
            if pid not in tree:
                tree.add(pid)
                stack.extend(children.get(pid, ()))
        return sorted(tree | members)


def process_tree(root_pid: int, session_id: int | None = None) -> list[int]:
    """Live pids descending from ``root_pid`` (itself included), plus members of ``session_id``."""
    return ProcessTree(root_pid, session_id).pids()


def tree_memory_kib(pids: list[int], with_pss: bool = True) -> tuple[int, int]:
    """(sum of VmRSS, sum of Pss) over ``pids`` in KiB; processes that vanished count 0."""
    rss = pss = 0
    for pid in pids:
        rss += _read_kib(f"/proc/{pid}/status", b"VmRSS:")
        if with_pss:
            pss += _read_kib(f"/proc/{pid}/smaps_rollup", b"Pss:")
    return rss, pss


class TreeMemorySampler(threading.Thread):
    """Polls the tree of ``pid`` until :meth:`stop`; keeps the peaks of the summed RSS and PSS.

    Cost control (the machines have 2 cores, and the sampler must not slow what it measures): the tree
    (incremental, see :class:`ProcessTree`) and VmRSS are read every ``interval_s``; PSS only every
    ``slow_every`` samples, because smaps_rollup walks the page tables (about 0.8 ms per 1.5 GB
    process). ``cpu_s`` is the sampler thread's own CPU time.
    """

    def __init__(
        self, pid: int, session_id: int | None, interval_s: float = SAMPLE_INTERVAL_S, slow_every: int = 10
    ) -> None:
        super().__init__(daemon=True)
        self.pid, self.session_id, self.interval_s, self.slow_every = pid, session_id, interval_s, slow_every
        self.peak_rss_kib = self.peak_pss_kib = 0
        self.max_procs = 0
        self.samples = 0
        self.cpu_s = 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        import resource

        tree = ProcessTree(self.pid, self.session_id)
        i = 0
        while not self._stop_event.is_set():
            slow = i % self.slow_every == 0
            pids = tree.pids()
            if pids:
                rss, pss = tree_memory_kib(pids, with_pss=slow)
                self.peak_rss_kib = max(self.peak_rss_kib, rss)
                if slow:
                    self.peak_pss_kib = max(self.peak_pss_kib, pss)
                self.max_procs = max(self.max_procs, len(pids))
                self.samples += 1
            i += 1
            self._stop_event.wait(self.interval_s)
        usage = resource.getrusage(resource.RUSAGE_THREAD)
        self.cpu_s = usage.ru_utime + usage.ru_stime

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


# ----------------------------------------------------------------------------------------------------------
# Measured runs


@dataclass
class RunResult:
    """One measured command."""

    returncode: int
    wall_s: float
    peak_rss_mib: float
    peak_pss_mib: float
    max_single_rss_mib: float
    max_procs: int
    samples: int
    log: str
    log_tail: str = ""
    cpu_s: float = 0.0  # user+system CPU of the tree (wait4: the command and its waited-for children)
    other_cpu_s: float = 0.0  # CPU the rest of the machine used meanwhile (interference), sampler excluded
    sampler_cpu_s: float = 0.0  # CPU of the memory sampler itself
    loadavg_before: float = 0.0  # 1-minute load average when the run started
    outputs: dict = field(default_factory=dict)  # filled by the caller: what the command wrote

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run_measured(
    cmd: list[str],
    env: dict[str, str] | None,
    log_path: Path,
    cwd: Path | None = None,
    timeout_s: float | None = None,
) -> RunResult:
    """Run ``cmd`` (stdout+stderr to ``log_path``), timing it and sampling its tree's memory.

    Past ``timeout_s`` the whole session is killed and the run reports return code -9 (timed out).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        log.write(("$ " + shlex.join(cmd) + "\n").encode())
        log.flush()
        load_before = os.getloadavg()[0]
        busy0 = _busy_cpu_s()
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own session: the sampler counts all of it and nothing else
        )
        sampler = TreeMemorySampler(proc.pid, session_id=proc.pid)
        sampler.start()
        timer = threading.Timer(timeout_s, _kill_session_leftovers, args=(proc.pid,)) if timeout_s else None
        if timer:
            timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            _kill_session_leftovers(proc.pid)
            proc.wait()
            sampler.stop()
            raise
        finally:
            if timer:
                timer.cancel()
        wall = time.perf_counter() - t0
        busy1 = _busy_cpu_s()
        sampler.stop()
        proc.returncode = os.waitstatus_to_exitcode(status)
    # Workers left behind by the command (they should not be) would still be counted: end them.
    _kill_session_leftovers(proc.pid)
    tail = _tail(log_path, 40) if proc.returncode != 0 else ""
    return RunResult(
        returncode=proc.returncode,
        wall_s=wall,
        peak_rss_mib=sampler.peak_rss_kib / 1024,
        peak_pss_mib=sampler.peak_pss_kib / 1024,
        max_single_rss_mib=usage.ru_maxrss / 1024,  # KiB on Linux; the largest process of the tree
        max_procs=sampler.max_procs,
        samples=sampler.samples,
        log=str(log_path),
        log_tail=tail,
        cpu_s=usage.ru_utime + usage.ru_stime,
        other_cpu_s=max(0.0, busy1 - busy0 - usage.ru_utime - usage.ru_stime - sampler.cpu_s),
        sampler_cpu_s=sampler.cpu_s,
        loadavg_before=load_before,
    )


def _busy_cpu_s() -> float:
    """Non-idle CPU seconds of the whole machine so far (first line of /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    # user nice system idle iowait irq softirq steal (guest is already inside user)
    busy = sum(fields[:3]) + sum(fields[5:8])
    return busy / os.sysconf("SC_CLK_TCK")


def _kill_session_leftovers(session_id: int) -> None:
    for pid in process_tree(-1, session_id):
        try:
            os.kill(pid, 9)
        except OSError:
            pass


def _tail(path: Path, n: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# ----------------------------------------------------------------------------------------------------------
# Statistics and facts


def median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass
class Summary:
    """Medians over the successful runs of one measured step."""

    runs: list[dict] = field(default_factory=list)
    n_ok: int = 0
    wall_s: float | None = None
    peak_rss_mib: float | None = None
    peak_pss_mib: float | None = None
    max_single_rss_mib: float | None = None
    wall_min_s: float | None = None
    wall_max_s: float | None = None
    cpu_s: float | None = None
    other_cpu_s: float | None = None


def summarize(results: list[RunResult]) -> Summary:
    ok = [r for r in results if r.ok]
    walls = [r.wall_s for r in ok]
    return Summary(
        runs=[asdict(r) for r in results],
        n_ok=len(ok),
        wall_s=median_or_none(walls),
        peak_rss_mib=median_or_none([r.peak_rss_mib for r in ok]),
        peak_pss_mib=median_or_none([r.peak_pss_mib for r in ok]),
        max_single_rss_mib=median_or_none([r.max_single_rss_mib for r in ok]),
        wall_min_s=min(walls) if walls else None,
        wall_max_s=max(walls) if walls else None,
        cpu_s=median_or_none([r.cpu_s for r in ok]),
        other_cpu_s=median_or_none([r.other_cpu_s for r in ok]),
    )


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def machine_info() -> dict:
    """CPU model, cores, RAM, kernel, Python."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = _read_kib("/proc/meminfo", b"MemTotal:")
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "cpu_model": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "ram_gib": round(mem_kib / MIB, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def package_versions(python: Path, packages: list[str]) -> dict[str, str | None]:
    """Installed versions of ``packages`` in the environment of ``python`` (None when absent)."""
    code = (
        "import json, importlib.metadata as m, sys\n"
        "out = {}\n"
        "for p in sys.argv[1:]:\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: out[p] = None\n"
        "print(json.dumps(out))\n"
    )
    try:
        res = subprocess.run([str(python), "-c", code, *packages], capture_output=True, text=True, check=True)
        return json.loads(res.stdout)
    except (OSError, subprocess.CalledProcessError, json.JSONDecodeError):
        return {p: None for p in packages}


def git_revision(repo: Path) -> str | None:
    try:
        rev = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
