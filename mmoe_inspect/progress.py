"""Progress of long passes, reported stage by stage to whoever shows it (the CLI's bars, a notebook).

The library names the stages ("inspecting mmoe.pt", "causal analyses of mmoe.pt (pass 2)",
"attributions (gates, experts, tasks)") and reports units done once per batch (never per row); a
`Progress` shows them. A plain callable `f(rows_done)` is accepted where a `Progress` is, and sees the
recording pass only (the API before stages existed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

__all__ = ["NO_PROGRESS", "RECORDING", "Progress", "Stage", "as_progress"]

Tick = Callable[..., None]  # tick(done) or tick(done, total) once the total is known

RECORDING = "inspecting"  # stage names of the recording pass start with this word


@runtime_checkable
class Progress(Protocol):
    """Receives the stages of a run: `start` returns the stage's tick, `finish` closes it."""

    def start(self, stage: str, total: int | None, unit: str = "rows") -> Tick: ...

    def finish(self, stage: str) -> None: ...


class _Silent:
    def start(self, stage: str, total: int | None, unit: str = "rows") -> Tick:
        return _ignore

    def finish(self, stage: str) -> None:
        return None


class _RowsCallback:
    """A `Progress` that passes the recording pass's rows to a one-argument callback."""

    def __init__(self, fn: Callable[[int], None]) -> None:
        self.fn = fn

    def start(self, stage: str, total: int | None, unit: str = "rows") -> Tick:
        if not stage.startswith(RECORDING):
            return _ignore
        fn = self.fn
        return lambda done, total=None: fn(done)

    def finish(self, stage: str) -> None:
        return None


def _ignore(*_args: Any) -> None:
    return None


NO_PROGRESS: Progress = _Silent()


def as_progress(progress: Progress | Callable[[int], None] | None) -> Progress:
    """`progress` as a `Progress`: None shows nothing, a plain callable sees the recording pass's rows."""
    if progress is None:
        return NO_PROGRESS
    if isinstance(progress, Progress):
        return progress
    if callable(progress):
        return _RowsCallback(progress)
    raise TypeError(f"progress must be a Progress or a callable, not {type(progress).__name__}")


class Stage:
    """One stage of a run, opened on its first tick (so a pass that reads nothing shows nothing).

    `stage(done)` reports units done so far (`stage(done, total)` once the total is known, before the
    first tick); `stage.finish()` closes it (idempotent).
    """

    def __init__(self, progress: Progress, name: str, total: int | None, unit: str = "rows") -> None:
        self.progress, self.name, self.total, self.unit = progress, name, total, unit
        self._tick: Tick | None = None

    def __call__(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self.total = total
        if self._tick is None:
            self._tick = self.progress.start(self.name, self.total, self.unit)
        elif total is not None:
            self._tick(done, total)
            return
        self._tick(done)

    def finish(self) -> None:
        if self._tick is not None:
            self.progress.finish(self.name)
            self._tick = None
