"""Process-parallel map over cases with per-case error capture and a progress bar."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Generic, TypeVar

from segvolpipe.errors import UserError
from segvolpipe.log import progress_bar

A = TypeVar("A")
R = TypeVar("R")


@dataclass(frozen=True)
class Outcome(Generic[A, R]):
    """The result of one item: ``value`` on success, else ``error`` (one line for the user)."""

    item: A
    value: R | None
    error: str | None


def default_workers() -> int:
    """The number of CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _context() -> mp.context.BaseContext:
    # fork is cheapest; once torch is loaded its thread pools make fork unsafe, so use forkserver.
    if sys.platform.startswith("linux") and "torch" not in sys.modules:
        return mp.get_context("fork")
    return mp.get_context("forkserver" if sys.platform != "win32" else "spawn")


def _call(fn: Callable[[A], R], item: A) -> tuple[R | None, str | None]:
    try:
        return fn(item), None
    except UserError as exc:
        return None, exc.line()


def map_cases(
    fn: Callable[[A], R],
    items: Sequence[A],
    workers: int = 1,
    description: str = "working",
    progress: bool = True,
) -> Iterator[Outcome[A, R]]:
    """Apply ``fn`` to every item, in worker processes when ``workers > 1``.

    A :class:`UserError` raised for one item is captured in its :class:`Outcome` and the other items go
    on; any other exception is a bug and propagates. Results are yielded in completion order with at most
    ``2 × workers`` items in flight, so memory stays bounded.
    """
    with progress_bar(progress) as bar:
        task = bar.add_task(description, total=len(items))
        if workers <= 1 or len(items) <= 1:
            for item in items:
                value, error = _call(fn, item)
                bar.advance(task)
                yield Outcome(item, value, error)
            return
        with ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=_context()) as pool:
            pending: dict[Future, A] = {}
            queue = list(items)
            while queue or pending:
                while queue and len(pending) < 2 * workers:
                    item = queue.pop(0)
                    pending[pool.submit(_call, fn, item)] = item
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    item = pending.pop(future)
                    value, error = future.result()
                    bar.advance(task)
                    yield Outcome(item, value, error)
