"""Shared CLI plumbing: ONE definition of the loading and run options, exit codes, errors, progress bars.

Every command that reads a checkpoint takes the same loading options, spelled the same way: they are
the fields of `LoadOptions` (and `--quiet/--seed/--debug` those of `RunOptions`), and the `@command`
decorator puts them into the command's signature. A command body receives them as one object:

    @command
    def check_command(checkpoint: CheckpointArg, *, load: LoadOptions, run: RunOptions) -> None: ...

Exit codes: 0 fine; 1 a bug (or, for `check`, a finding listed in --fail-on); 2 bad input (one red
line, no traceback unless --debug); 3 `report --fail-on` findings; 4 `check` cannot judge the routing
(unresolved gate-like items; `--allow-unresolved` judges what was found) or cannot judge a task, and
nothing else matches --fail-on (no labels, one class, too few rows).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, get_type_hints

import typer
from rich.markup import escape

from mmoe_inspect._limits import MAX_BATCH_ROWS
from mmoe_inspect._text import printable
from mmoe_inspect.analysis.codes import REGISTRY, SEVERITIES
from mmoe_inspect.errors import MmoeInspectError, first_line

from ._console import CleanConsole

if TYPE_CHECKING:
    from mmoe_inspect.analysis.findings import Finding
    from mmoe_inspect.inspector import InspectConfig
    from mmoe_inspect.loading import LoadedModel

T = TypeVar("T")

out = CleanConsole(highlight=False, soft_wrap=True)  # strips control characters from file-borne text
err = CleanConsole(stderr=True, highlight=False, soft_wrap=True)

EXIT_INTERNAL = 1  # a bug: rerun with --debug and report it
EXIT_CHECK_FAILED = 1  # `check`: a finding listed in --fail-on is present
EXIT_BAD_INPUT = 2  # the checkpoint, data, spec, option or output folder cannot be used as given
EXIT_NEEDS_INPUT = 2
EXIT_FINDINGS = 3  # `report --fail-on`: a listed finding is present
EXIT_CANNOT_JUDGE = 4  # `check`: gate-like items discovery could not resolve (or low confidence); the
# routing was not verified, so no verdict is given (pass --spec, or --allow-unresolved to judge the rest).
# Also when the only findings matching --fail-on are tasks that cannot be judged (codes.UNJUDGED_TASK_CODES:
# no labels, one class, too few rows): not a pass, and not a model failure either

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

LOADING = "Loading the checkpoint"
DATA = "Evaluation data"
RUN = "Run"


class OptionError(MmoeInspectError, ValueError):
    """A command-line option value that cannot be used (one red line, exit code 2)."""


class InputKind(str, Enum):
    dict = "dict"
    tensor = "tensor"


# ----------------------------------------------------------------------------- the options, defined once
CheckpointArg = Annotated[
    Path,
    typer.Argument(
        resolve_path=True,
        show_default=False,
        metavar="CHECKPOINT",
        help="Model checkpoint: an mmoe-inspect checkpoint, a state_dict or training dict (with --builder), "
        "or a torch.save(model) file (with --trust-checkpoint).",
    ),
]
SpecOpt = Annotated[
    Path | None,
    typer.Option("--spec", exists=True, dir_okay=False, help="Topology spec (TOML) overriding discovery."),
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
        help="RUNS this Python file (with your privileges) before loading, only when the checkpoint needs "
        "code: a --builder, --import or a --trust-checkpoint pickle. Its classes also stand in for __main__.X.",
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
LimitOpt = Annotated[
    int | None,
    typer.Option(
        "--limit", "--max-rows", min=1, help="Inspect at most this many rows.", rich_help_panel=DATA
    ),
]
SampleOpt = Annotated[
    float | None,
    typer.Option(
        "--sample",
        metavar="FRACTION",
        help="Inspect this share of the rows, picked deterministically from --seed (before --limit).",
        rich_help_panel=DATA,
    ),
]
BatchSizeOpt = Annotated[
    int,
    typer.Option(
        "--batch-size", min=1, max=MAX_BATCH_ROWS, help="Rows per forward pass.", rich_help_panel=DATA
    ),
]
QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", help="No progress bars or notes: results and errors only.", rich_help_panel=RUN
    ),
]
SeedOpt = Annotated[
    int,
    typer.Option(
        "--seed",
        min=0,
        max=2**32 - 1,
        help="Seed for row sampling, reservoirs and bootstrap resamples (0 to 2**32-1).",
        rich_help_panel=RUN,
    ),
]
DebugOpt = Annotated[
    bool,
    typer.Option("--debug", help="Show full tracebacks instead of one-line errors.", rich_help_panel=RUN),
]


@dataclass(frozen=True)
class LoadOptions:
    """How to load a checkpoint and read rows into it: the same flags for every command."""

    trust_checkpoint: TrustOpt = False
    builder: BuilderOpt = None
    imports: ImportOpt = None
    model_code: ModelCodeOpt = None
    device: DeviceOpt = "cpu"
    data: DataOpt = None
    tasks: TasksOpt = None
    labels: LabelsOpt = None
    input_kind: InputOpt = None
    features: FeaturesOpt = None
    collate: CollateOpt = None
    limit: LimitOpt = None
    sample: SampleOpt = None
    batch_size: BatchSizeOpt = 4096

    @property
    def input(self) -> str | None:
        return self.input_kind.value if self.input_kind is not None else None

    def load(self, checkpoint: Path, *, quiet: bool = False) -> LoadedModel:
        """`mmoe_inspect.loading.load_model` with these flags; loading notes go to stderr unless quiet."""
        from mmoe_inspect.loading import load_model

        loaded = load_model(
            checkpoint,
            trust=self.trust_checkpoint,
            builder=self.builder,
            imports=tuple(self.imports or ()),
            model_code=self.model_code,
            device=self.device,
        )
        if not quiet:
            for note in loaded.notes:
                err.print(f"note: {escape(note)}")
        return loaded

    def config(self, seed: int) -> InspectConfig:
        """The `InspectConfig` of these flags; a value it refuses is a bad option (exit 2), named by its flag."""
        from mmoe_inspect import InspectConfig

        try:
            return InspectConfig(
                batch_size=self.batch_size, max_rows=self.limit, sample=self.sample, seed=seed
            )
        except (TypeError, ValueError) as exc:  # "InspectConfig.sample must be a number in (0, 1] ..."
            field = str(exc).split(" ", 1)[0].rpartition(".")[2]
            flags = {
                "batch_size": "--batch-size",
                "max_rows": "--limit",
                "sample": "--sample",
                "seed": "--seed",
            }
            flag = flags.get(field, field)
            raise OptionError(f"{flag}: {exc}") from None


@dataclass(frozen=True)
class RunOptions:
    """`--quiet`, `--seed`, `--debug`: the same on every command."""

    quiet: QuietOpt = False
    seed: SeedOpt = 0
    debug: DebugOpt = False


_GROUPS = {"load": LoadOptions, "run": RunOptions}


def _parameters(cls: type) -> list[inspect.Parameter]:
    hints = get_type_hints(cls, include_extras=True)
    return [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name], default=f.default)
        for f in fields(cls)
    ]


def _output_failed(exc: OSError) -> None:
    """One line for results that could not be written to the terminal or the file stdout goes to (a full
    disk under `> log.txt`: it was a rich traceback and exit 1); stdout then goes to /dev/null so that the
    interpreter's last flush does not fail again."""
    with contextlib.suppress(Exception):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    with contextlib.suppress(Exception):
        sys.stderr.write(
            f"error: writing the output failed ({exc.strerror or exc}); free space or write it elsewhere\n"
        )
        sys.stderr.flush()


def command(fn: Callable[..., T]) -> Callable[..., T]:
    """Expand `load: LoadOptions` / `run: RunOptions` parameters of `fn` into the shared CLI options.

    Typer reads the signature of the returned function (the command's own parameters, then every
    field of each group as an option); the body gets the groups back as objects.
    """
    sig = inspect.signature(fn, eval_str=True)
    groups = {name: cls for name, cls in _GROUPS.items() if name in sig.parameters}
    own = [p for p in sig.parameters.values() if p.name not in groups]
    added = [p for cls in groups.values() for p in _parameters(cls)]
    clash = {p.name for p in own} & {p.name for p in added}
    if clash:
        raise TypeError(f"{fn.__name__}: parameters {sorted(clash)} clash with the shared options")

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> T:
        for name, cls in groups.items():
            kwargs[name] = cls(**{f.name: kwargs.pop(f.name) for f in fields(cls)})
        try:
            return fn(**kwargs)
        except (
            OSError
        ) as exc:  # `guarded` ends everything inside it: this is printing the results that failed
            _output_failed(exc)
            raise typer.Exit(EXIT_BAD_INPUT) from None

    new = sig.replace(parameters=[*own, *added])
    wrapper.__signature__ = new  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in new.parameters.values()}
    return wrapper


# ----------------------------------------------------------------------------- --fail-on
FAIL_ON_HELP = (
    "Comma-separated finding codes (collapsed_gate, dead-expert, ...; a unique prefix is enough) and/or "
    "severities (critical, warning, info = that severity or worse), or 'never'."
)


@dataclass(frozen=True)
class FailRule:
    """Which findings fail a run: any at `severity` or worse, or any whose code is in `codes`."""

    severity: str | None
    codes: frozenset[str]

    def failing(self, findings: Iterable[Finding]) -> list[Finding]:
        rank = {s: i for i, s in enumerate(SEVERITIES)}
        limit = rank[self.severity] if self.severity is not None else -1
        return [f for f in findings if f.code in self.codes or rank.get(f.severity, 9) <= limit]

    def describe(self) -> str:
        parts = [f"{self.severity} or worse"] if self.severity is not None else []
        parts += sorted(self.codes)
        return ", ".join(parts) if parts else "never"


def parse_fail_on(text: str) -> FailRule:
    """`"warning"`, `"critical,dead_expert"`, `"collapsed,dead-expert"`, `"never"` → a `FailRule`."""
    tokens = [t.strip().lower().replace("-", "_") for t in text.split(",") if t.strip()]
    if not tokens:
        raise OptionError("--fail-on needs finding codes, a severity or 'never'")
    if tokens in (["never"], ["none"]):
        return FailRule(None, frozenset())
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    severity: str | None = None
    codes: set[str] = set()
    for tok in tokens:
        if tok in rank:
            severity = tok if severity is None or rank[tok] > rank[severity] else severity
            continue
        if tok in REGISTRY:
            codes.add(tok)
            continue
        hits = [c for c in REGISTRY if c.startswith(tok)]
        if len(hits) == 1:
            codes.add(hits[0])
            continue
        near = difflib.get_close_matches(tok, [*REGISTRY, *SEVERITIES, "never"], n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        which = f"matches {', '.join(hits)}" if hits else "is not a finding code or severity"
        raise OptionError(f"--fail-on {tok!r} {which}{hint}; codes: {', '.join(REGISTRY)}")
    return FailRule(severity, frozenset(codes))


# ----------------------------------------------------------------------------- errors
def version_callback(value: bool) -> None:
    if value:
        from mmoe_inspect import __version__

        out.print(f"mmoe-inspect {__version__}")
        raise typer.Exit()


def one_line(exc: BaseException) -> str:
    """The first meaningful line of an exception message, control characters stripped, cut at 600 characters."""
    line = printable(first_line(_ANSI.sub("", str(exc)), default=type(exc).__name__))
    return line if len(line) <= 600 else line[:560] + f" ... ({len(line) - 560:,} more characters)"


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (`timeout`, a CI cancel, `docker stop`, a closed terminal) during a command: unwound like
    Ctrl-C, so that temp folders go and nothing is left half-written."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, _frame: object) -> None:
    raise Terminated(signum)


@contextmanager
def _terminations_unwind() -> Iterator[None]:
    """Inside: SIGTERM and SIGHUP raise `Terminated` in the main thread (elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    saved = {}
    for sig in wanted:
        with contextlib.suppress(ValueError, OSError):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):  # a handler the user installed is kept
                saved[sig] = signal.signal(sig, _raise_terminated)
    try:
        yield
    finally:
        for sig, old in saved.items():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, old)


@contextmanager
def guarded(debug: bool) -> Iterator[None]:
    """Turn user errors into one red line + exit 2, bugs into one line + exit 1 (tracebacks with --debug);
    Ctrl-C, SIGTERM and SIGHUP unwind (temp folders removed) and exit 130 / 128 + the signal's number."""
    try:
        with _terminations_unwind():
            yield
    except typer.Exit:
        raise
    except Terminated as exc:
        err.print(f"[red]terminated[/red] ({signal.Signals(exc.signum).name}); nothing was written")
        raise typer.Exit(128 + exc.signum) from None
    except KeyboardInterrupt:
        err.print("[red]interrupted[/red]; nothing was written")
        raise typer.Exit(130) from None
    # only code the user trusted exits this way (a model, a trusted pickle, a collate)
    except SystemExit as exc:
        if debug or exc.code not in (0, None):  # a failing code (rich's 1 on a broken pipe) stays as it is
            raise
        err.print(
            f"[red]error:[/red] code you trusted (the model, --model-code, --import, --collate or a "
            f"--trust-checkpoint pickle) called sys.exit({escape(repr(exc.code))}) during the command; "
            "nothing was written"
        )
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except Exception as exc:
        if debug:
            raise
        # Free the failed run's frames now, while the interpreter is alive: what they hold (a process
        # group's native threads above all) must not be torn down during interpreter finalization.
        traceback.clear_frames(exc.__traceback__)
        if isinstance(exc, MmoeInspectError) and exc.bad_input:
            err.print(f"[red]error:[/red] {escape(one_line(exc))}")
            raise typer.Exit(EXIT_BAD_INPUT) from None
        err.print(
            f"[red]internal error:[/red] {type(exc).__name__}: {escape(one_line(exc))} (rerun with --debug for "
            "the traceback)"
        )
        raise typer.Exit(EXIT_INTERNAL) from None


def print_findings(findings: Iterable[Finding]) -> None:
    for f in findings:
        out.print(f"  {f.severity:<8} {escape(f.title)}: {escape(f.subject)}")
