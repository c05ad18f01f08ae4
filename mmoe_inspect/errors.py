"""`MmoeInspectError`, the base of every error mmoe-inspect raises on purpose, and `first_line`.

Each layer keeps its own error classes (`DataError`, `CheckpointError`, `TopologyError`,
`RecordingError`, ...) with their builtin bases (`ValueError`, `RuntimeError`), so callers that catch
those keep working; all of them also derive from `MmoeInspectError`, so one `except` catches
everything the library raises deliberately, and anything else is a bug. `bad_input` says which side
of the CLI's exit codes an error falls on.

This module imports nothing of the project, so every layer can import it.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = ["CheckpointError", "MmoeInspectError", "first_line"]


class MmoeInspectError(Exception):
    """Base of every error mmoe-inspect raises on purpose; its message is one line that says what to fix.

    `bad_input` True (the default): the checkpoint, data, spec, option or output cannot be used as
    given; the CLI prints the line and exits with 2. False: the tool could not do what was asked for
    a reason that need not lie in the input (another rank's failure, an intervention the model's
    layout does not allow); the CLI reports it as an internal error, exit 1, unless the command
    catches it first.
    """

    bad_input: ClassVar[bool] = True


def first_line(message: BaseException | str, default: str | None = None) -> str:
    """The first non-blank line of an exception's message (or of a text), stripped.

    When there is none: `default` if given, else the exception's type name (for a text: "").
    """
    text = str(message)
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), None)
    if line is not None:
        return line
    if default is not None:
        return default
    return type(message).__name__ if isinstance(message, BaseException) else ""


class CheckpointError(MmoeInspectError, ValueError):
    """A file is not an mmoe-inspect checkpoint this version can read; the message is one line.

    Here, not in `mmoe_inspect.checkpoint`, because the payload checks in `loading` raise it too."""
