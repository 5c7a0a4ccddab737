"""How the ``segvol`` command line reports errors: a user error is one ``error: <file>: <problem>`` line and exit
code 2 (``--verbose`` adds the traceback), whether it comes from a stage (:class:`~segvolpipe.errors.UserError`),
from a path the system refuses (``OSError``), or from click's own option parsing."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from enum import Enum
from typing import Any, TypeVar

import typer
from typer.core import TyperGroup

from segvolpipe.errors import did_you_mean

STATE = {"verbose": False}
F = TypeVar("F", bound=Callable[..., Any])

# click's UsageError (typer vendors click in recent versions, so it is found through BadParameter, its subclass)
_USAGE_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class Commands(TyperGroup):
    """A command's usage errors (an unknown option, a missing one, a value off a fixed list) are user errors too:
    one ``error:`` line and exit code 2, with "did you mean" for a misspelt choice, instead of click's panel."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _USAGE_ERROR as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":
                raise
            message = exc.format_message().replace("Value error, ", "")  # type: ignore[attr-defined]
            hint = _did_you_mean(message, getattr(exc, "param", None))
            sub = getattr(exc, "ctx", None) or ctx
            fail([message.rstrip(".") + hint], f"Try '{sub.command_path} {sub.help_option_names[0]}' for help.")


def _did_you_mean(message: str, param: Any) -> str:
    """``; did you mean 'so3'?`` when ``message`` rejects a value of ``param``'s fixed choices and one is close."""
    found = re.search(r"'([^']*)' is not one of", message)
    descriptor = getattr(getattr(param, "type_descriptor", None), "annotation", None)  # typer's enum options
    choices = getattr(getattr(param, "type", None), "choices", None) or (
        list(descriptor) if isinstance(descriptor, type) and issubclass(descriptor, Enum) else [])
    names = [str(c.value if isinstance(c, Enum) else c) for c in choices]
    return did_you_mean(found.group(1), names, cutoff=0.5) if found else ""


def fail(lines: list[str], hint: str | None = None) -> None:
    from rich.markup import escape

    from segvolpipe.log import console

    for line in lines:
        console.print(f"[red]error:[/red] {escape(line)}", markup=True, highlight=False, soft_wrap=True)
    if hint:
        console.print(hint, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def handles_errors(fn: F) -> F:
    """Turn :class:`~segvolpipe.errors.UserError`, and an ``OSError`` on a named path, into one line per problem and
    exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from segvolpipe.errors import Problems, UserError

        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            if STATE["verbose"]:
                from segvolpipe.log import console

                console.print_exception()
            fail(exc.lines() + [exc.line()] if isinstance(exc, Problems) else [exc.line()])
        except OSError as exc:  # a path the user gave cannot be used: a file where a folder goes, no permission, disk full
            if exc.filename is None:
                raise
            if STATE["verbose"]:
                from segvolpipe.log import console

                console.print_exception()
            problem = "permission denied" if isinstance(exc, PermissionError) else "cannot be used"
            fail([f"{exc.filename}: {problem} ({exc.strerror or type(exc).__name__})"])

    return wrapper  # type: ignore[return-value]
