"""Progress bars for the library's stages (`mmoe_inspect.progress.Progress`): one rich bar per stage on
stderr, updated once per batch, or one line per finished stage where stderr is not a terminal."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from ._common import err

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress


class Passes:
    """Rich progress bars on stderr, one per stage or pass over the data, updated once per batch (never per
    row): done/total, rate (rows/s, or the stage's unit), elapsed time and ETA.

    Disabled with --quiet; on a non-terminal stderr (CI logs, tests) no bar is drawn, and each finished
    stage prints one line instead (what it did, how long it took, at what rate): a CI log shows where
    the time went.
    """

    def __init__(self, quiet: bool, console: Console | None = None) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        target = console if console is not None else err
        self.quiet = quiet
        self.console = target
        self.progress: Progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            _rate_column(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=target,
            transient=True,
            disable=quiet or not target.is_terminal,  # CI logs and pipes get no bar (and no stray lines)
        )

    def __enter__(self) -> Passes:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start(self, label: str, total: int | None, unit: str = "rows") -> Callable[..., None]:
        """A new bar; the returned callback takes the units (rows) done so far, and the total once known."""
        task = self.progress.add_task(label, total=total, unit=unit)

        def tick(done: int, total: int | None = None) -> None:
            if total is None:
                self.progress.update(task, completed=done)
            else:
                self.progress.update(task, completed=done, total=total)

        return tick

    bar = start  # the name the commands use for a stage of their own (writing the figures)

    def finish(self, label: str) -> None:
        """Mark the bar `label` complete at what it actually saw (totals are estimates when sampling) and
        print its one-line summary (not with --quiet)."""
        for task in self.progress.tasks:
            if task.description == label:
                self.progress.update(task.id, total=task.completed)
                if not self.quiet:
                    self.console.print(stage_line(label, task.completed, task.elapsed, task.fields["unit"]))


def stage_line(label: str, done: float, seconds: float | None, unit: str) -> str:
    """`"  inspecting mmoe.pt: 20,000 rows in 1.2 s (16,667 rows/s)"`: one finished stage, markup-free."""
    seconds = seconds or 0.0
    per_s = done / seconds if seconds > 0 else 0.0
    rate = f" ({per_s:,.0f} {unit}/s)" if per_s >= 10 else (f" ({per_s:.2g} {unit}/s)" if per_s > 0 else "")
    return escape(f"  {label}: {done:,.0f} {unit} in {seconds:.1f} s{rate}")


@functools.cache
def _rate_column_class() -> type:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Units per second of a bar (rich's own speed column counts bytes)."""

        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            unit = task.fields.get("unit", "rows")
            return Text(f"{speed:,.0f} {unit}/s" if speed else f"- {unit}/s", style="progress.data.speed")

    return RateColumn


def _rate_column() -> Any:
    return _rate_column_class()()
