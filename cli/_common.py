"""Shared CLI plumbing: one-line errors with exit codes, `--debug` tracebacks, consoles."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, TypeVar

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


LOADING = "Loading the checkpoint"
DATA = "Evaluation data"


class InputKind(str, Enum):
    dict = "dict"
    tensor = "tensor"


CheckpointArg = Annotated[
    Path,
    typer.Argument(
        resolve_path=True,
        show_default=False,
        help="Model checkpoint: an mmoe-inspect checkpoint, a state_dict or training dict (with --builder), "
        "or a torch.save(model) file (with --trust-checkpoint).",
    ),
]
TrustOpt = Annotated[
    bool,
    typer.Option(
        "--trust-checkpoint",
        help="Allow full unpickling of a torch.save(model) file. Unpickling can run code: only for files you trust.",
        rich_help_panel=LOADING,
    ),
]
BuilderOpt = Annotated[
    str | None,
    typer.Option(
        "--builder",
        metavar="MODULE:FUNCTION",
        help="Factory building the model for a state_dict: takes no arguments or the checkpoint's config.",
        rich_help_panel=LOADING,
    ),
]
ImportOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--import",
        metavar="MODULE",
        help="Import this module first (repeatable): where the model's classes live.",
        rich_help_panel=LOADING,
    ),
]
ModelCodeOpt = Annotated[
    Path | None,
    typer.Option(
        "--model-code",
        metavar="FILE.py",
        help="Load this Python file first; its classes also stand in for __main__.X of a script-saved pickle.",
        rich_help_panel=LOADING,
    ),
]
DeviceOpt = Annotated[
    str,
    typer.Option("--device", help="Device for the model (cpu, cuda, cuda:1, ...).", rich_help_panel=LOADING),
]
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        resolve_path=True,
        help="Evaluation rows: .parquet, .csv, or a folder of .parquet files (default: rows stored in the checkpoint).",
        rich_help_panel=DATA,
    ),
]
InputOpt = Annotated[
    InputKind | None,
    typer.Option(
        "--input",
        help="Override the input convention: dict {column: tensor} or one float tensor.",
        rich_help_panel=DATA,
    ),
]
FeaturesOpt = Annotated[
    str | None,
    typer.Option(
        "--features",
        metavar="A,B,C",
        help="Input columns, in model order (default: from the model's library adapter).",
        rich_help_panel=DATA,
    ),
]
CollateOpt = Annotated[
    str | None,
    typer.Option(
        "--collate",
        metavar="MODULE:FUNCTION",
        help="Function turning a pandas chunk of rows into the model input (replaces the adapter).",
        rich_help_panel=DATA,
    ),
]
TasksOpt = Annotated[
    str | None,
    typer.Option(
        "--tasks",
        metavar="A,B",
        help="Names of the model's outputs, in order (for models that do not name them, e.g. torch-rechub).",
        rich_help_panel=DATA,
    ),
]
LabelsOpt = Annotated[
    str | None,
    typer.Option(
        "--labels",
        metavar="TASK=COLUMN,...",
        help="Label column per task (default: a column named like the task).",
        rich_help_panel=DATA,
    ),
]


def load_for_cli(
    checkpoint: Path,
    trust: bool,
    builder: str | None,
    imports: list[str] | None,
    model_code: Path | None,
    device: str,
):
    """`mmoe_inspect.loading.load_model` with the CLI's flags; loading notes go to stderr."""
    from mmoe_inspect.loading import load_model

    loaded = load_model(
        checkpoint,
        trust=trust,
        builder=builder,
        imports=tuple(imports or ()),
        model_code=model_code,
        device=device,
    )
    for note in loaded.notes:
        err.print(f"note: {escape(note)}")
    return loaded


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
