"""User-facing errors: one clear line naming the file and the problem, exit code 2 in the CLI."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input or arguments (not a bug): reported as one line, exit code 2.

    Args:
        message: What is wrong, phrased for the user.
        path: The file or folder concerned, when there is one.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = None if path is None else str(path)

    def line(self) -> str:
        """The one-line form: ``<file>: <problem>`` or ``<problem>``."""
        return f"{self.path}: {self.message}" if self.path else self.message


class Problems(UserError):
    """Several user errors found at once (e.g. the integrity check of a raw dataset).

    Each problem is printed on its own line; the exit code is still 2.
    """

    def __init__(self, summary: str, problems: Sequence[UserError]) -> None:
        super().__init__(summary)
        self.problems = list(problems)

    def lines(self) -> list[str]:
        return [p.line() for p in self.problems]


def check_choice(value: str, allowed: Sequence[str], what: str) -> str:
    """Return ``value`` when it is one of ``allowed``, else raise a "did you mean" :class:`UserError`.

    The match is exact; callers that accept other spellings normalise ``value`` first.
    """
    if value in allowed:
        return value
    choices = ", ".join(allowed)
    close = difflib.get_close_matches(str(value).lower(), list(allowed), n=1, cutoff=0.4)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UserError(f"unknown {what} {value!r} (choose from {choices}){hint}")
