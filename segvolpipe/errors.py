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


def did_you_mean(value: object, choices: Sequence[str], cutoff: float = 0.6) -> str:
    """``; did you mean 'x'?`` for the choice closest to ``value`` (difflib's ratio at least ``cutoff``), else ``""``.

    The one hint every "unknown value" message of the package (options, CLI choices, prompt names) carries."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=cutoff)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_choice(value: str, allowed: Sequence[str], what: str) -> str:
    """Return ``value`` when it is one of ``allowed``, else raise a "did you mean" :class:`UserError`.

    The match is exact; callers that accept other spellings normalise ``value`` first.
    """
    if value in allowed:
        return value
    hint = did_you_mean(str(value).lower(), allowed, cutoff=0.4)
    raise UserError(f"unknown {what} {value!r} (choose from {', '.join(allowed)}){hint}")
