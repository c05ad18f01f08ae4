"""Shared CLI plumbing: one-line errors with exit codes, `--debug` tracebacks, consoles."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import typer
from rich.console import Console
from rich.markup import escape

T = TypeVar("T")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_INTERNAL = 1  # a bug: rerun with --debug and report it
EXIT_BAD_INPUT = 2  # the checkpoint, data, spec or output folder cannot be used as given
EXIT_NEEDS_INPUT = 2
EXIT_FINDINGS = 3  # --fail-on: findings reached the requested severity

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def version_callback(value: bool) -> None:
    if value:
        from mmoe_inspect import __version__

        out.print(f"mmoe-inspect {__version__}")
        raise typer.Exit()


def one_line(exc: BaseException) -> str:
    """The first meaningful line of an exception message, terminal colour codes stripped."""
    text = _ANSI.sub("", str(exc)).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return line


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input, shown as one line (anything else is a bug: traceback)."""
    from mmoe_inspect.checkpoint import CheckpointError
    from mmoe_inspect.data.sources import DataError
    from mmoe_inspect.recording.recorder import RecordingError
    from mmoe_inspect.topology.spec import TopologyError

    errors: list[type[BaseException]] = [CheckpointError, DataError, RecordingError, TopologyError]
    try:
        from mmoe_inspect.reports import ReportError

        errors.append(ReportError)
    except ImportError:  # pragma: no cover - reports always ships with the package
        pass
    return tuple(errors)


@contextmanager
def guarded(debug: bool) -> Iterator[None]:
    """Turn user errors into one red line + exit 2, bugs into one line + exit 1 (tracebacks with --debug)."""
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        err.print("[red]interrupted[/red]; nothing was written")
        raise typer.Exit(130) from None
    except Exception as exc:
        if debug:
            raise
        if isinstance(exc, user_errors()):
            err.print(f"[red]error:[/red] {escape(one_line(exc))}")
            raise typer.Exit(EXIT_BAD_INPUT) from None
        err.print(
            f"[red]internal error:[/red] {type(exc).__name__}: {escape(one_line(exc))} (rerun with --debug for "
            "the traceback)"
        )
        raise typer.Exit(EXIT_INTERNAL) from None


def run(debug: bool, fn: Callable[[], T]) -> T:
    with guarded(debug):
        return fn()
