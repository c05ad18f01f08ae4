"""The `mmoe-inspect` entry point: check what would break the imports, then import the commands (`_app`).

Kept light (no torch, no typer) so that what goes wrong while the commands are imported is one line, not a
traceback: Ctrl-C during the seconds torch takes to import (exit 130), an environment torchmetrics cannot
read at import (`LOCAL_RANK=abc`: exit 2). `app` (the Typer app) is still importable from here.

It also tunes glibc's malloc for this process before torch allocates (`mmoe_inspect.allocator`: the
recording pass's freed temporaries stay in the heap instead of being faulted in again every batch);
`MMOE_INSPECT_ALLOCATOR=system` leaves the allocator as it is.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

from mmoe_inspect.allocator import tune_allocator  # stdlib only: keeps this module light

_EXIT_BAD_INPUT = 2  # as cli._common.EXIT_BAD_INPUT, which this module must not import (typer, rich)
_EXIT_INTERRUPTED = 130


def environment_problem() -> str | None:
    """One line for an environment variable that breaks the imports (torchmetrics reads `int(LOCAL_RANK)`
    when imported), or None."""
    value = os.environ.get("LOCAL_RANK")
    if value is None:
        return None
    try:
        int(value)
    except ValueError:
        return (
            f"LOCAL_RANK={value[:40]!r} in the environment is not a whole number (torchrun sets it to the "
            "process's rank on its machine); unset it, or set it to 0 for a single process"
        )
    return None


def tolerant_streams() -> None:
    """Characters stdout's or stderr's encoding cannot write (PYTHONIOENCODING=ascii, a latin-1 pipe; the
    output holds "—", "≥", "²", names from the checkpoint) are written as "?" instead of ending the command
    with a UnicodeEncodeError traceback and exit 1."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and getattr(stream, "errors", "strict") == "strict":
            with contextlib.suppress(ValueError, OSError):  # closed or detached: nothing to write to anyway
                reconfigure(errors="replace")


def main() -> None:
    tolerant_streams()
    problem = environment_problem()
    if problem is not None:
        sys.stderr.write(f"error: {problem}\n")
        sys.exit(_EXIT_BAD_INPUT)
    try:
        tune_allocator()  # process-wide, once, before the imports below allocate: the command owns its process
        from ._app import app
    except KeyboardInterrupt:  # Ctrl-C while torch & co are imported: nothing has started
        sys.stderr.write("interrupted; nothing was written\n")
        sys.exit(_EXIT_INTERRUPTED)
    app()


def __getattr__(name: str) -> Any:
    if name == "app":  # `from mmoe_inspect.cli.main import app`, imported on first use
        from ._app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    main()
