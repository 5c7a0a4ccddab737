"""One logger and one rich console for the whole package; progress bars that can be switched off."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console

# Redirected to a file (cluster logs), rich would assume 80 columns and squeeze the tables' names; give it room
# unless COLUMNS says otherwise.
console = Console(stderr=True, highlight=False,
                  width=None if sys.stderr.isatty() or os.environ.get("COLUMNS") else 140)
logger = logging.getLogger("segvolpipe")

def setup_logging(verbose: bool = False) -> None:
    """Route the package logger through rich (idempotent)."""
    from rich.logging import RichHandler

    level = logging.DEBUG if verbose else logging.INFO
    logger.setLevel(level)
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.propagate = False


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[object]:
    """A rich Progress (or a no-op stand-in when ``enabled`` is False, e.g. for cluster logs)."""
    if not enabled:
        yield _NoProgress()
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        yield progress


class _NoProgress:
    """Same surface as rich's Progress for the calls this package makes; logs milestones instead."""

    def add_task(self, description: str, total: float | None = None, **_: object) -> int:
        logger.info("%s (%s items)", description, "?" if total is None else int(total))
        return 0

    def advance(self, task_id: int, advance: float = 1) -> None:  # noqa: ARG002
        return None

    def update(self, task_id: int, **_: object) -> None:  # noqa: ARG002
        return None
