"""`EarlyFigures`: the figures of the recording pass, drawn by a helper process while the analyses run.

Most of a report's figures (routing, experts, tasks: `figures.RECORDING_FIGURES`) read only what the
recording pass measured, yet they were drawn after the attributions and the causal analyses, while one
CPU sat idle under a one-thread torch run. Given to `inspect(..., on_recorded=early.start)`, this forks a
helper process as soon as the recording pass is done; it draws those figures into a private temp folder
while this process runs the analyses. `render_figures(..., early=early)` (or `write_report`) then draws
the other figures, draws here whatever recording figure the helper has not begun (both take the next
job from one shared counter), waits for the helper and moves its files into the report.

The files are the ones a serial run writes: the same drawing code on the same result. What the figures
read is checked at the end; when the result's topology, tables or arrays were replaced after the start,
the helper's files are thrown away and the figures are drawn here. A helper that fails, dies or stays
silent is handled as in `_render`: what it did not deliver is drawn here, where an error raises with
its own traceback.

Whether to fork is decided at `start`: not where `_render` would not fork (off Linux, one CPU, a process
group, `MMOE_INSPECT_FIGURE_WORKERS=1`), and only when, over the time since this object was made
(loading and the recording pass), other processes left half a CPU free beyond this process's torch
threads, which the analyses use meanwhile (`free_cpus_over`, `MIN_SPARE_CPUS`): one torch thread on two
cores. On two threads of two cores the helper slowed the attributions as much as it saved on the figures
(measured on the 1M-row report: attributions 0.45 -> 0.85 s, figures 1.8-2.0 -> 1.4 s), so the figures
are drawn afterwards as before.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmoe_inspect.results import InspectionResult

from ._render import (
    MIN_FREE_CPUS,
    CpuSample,
    Job,
    can_fork_helper,
    cpu_sample,
    forced_workers,
    fork_helper,
    free_cpus,
    old_objects_frozen,
    one_blas_thread,
    serve_jobs,
    share_jobs,
)
from ._style import DPI

__all__ = ["EarlyFigures", "free_cpus_over"]

MIN_SPARE_CPUS = 0.5
"""CPUs left for the helper beside this process's torch threads (which the analyses use meanwhile)."""


def free_cpus_over(before: CpuSample, after: CpuSample) -> float:
    """CPUs other processes left free between the two samples (0 to `cpus`): `_render.free_cpus` with all of
    this process's ticks its own (the window covers its compute on every torch thread and the statistics
    worker, not one drawing thread)."""
    return free_cpus(before, after, own_cpus=None)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _state(result: InspectionResult) -> tuple[tuple[Any, ...], list[Any]]:
    """What the recording figures read: by value the topology's tasks, experts and gates (not its notes,
    which callers add afterwards) and the table and array names; the objects themselves (the result, its
    tables and arrays), held so that an identity check cannot meet a reused id."""
    topo = result.topology
    values = (topo.tasks, topo.experts, topo.gates, tuple(result.tables), tuple(result.arrays))
    return values, [result, result.tables, *result.tables.values(), result.arrays, *result.arrays.values()]


def _same_state(a: tuple[tuple[Any, ...], list[Any]], b: tuple[tuple[Any, ...], list[Any]]) -> bool:
    return a[0] == b[0] and len(a[1]) == len(b[1]) and all(x is y for x, y in zip(a[1], b[1], strict=True))


class EarlyFigures:
    """Draws `figures.RECORDING_FIGURES` in a forked helper from the recording pass's result on.

    Use as a context manager around the inspection and the report (the helper is stopped and its temp
    folder removed on exit, also on errors)::

        >>> with EarlyFigures() as early:
        ...     result = inspect(model, data, causal=True, on_recorded=early.start)
        ...     write_report(result, "out", early=early)

    `workers=1` never forks, 2 forks wherever a helper can be forked; None decides (see the module).
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers
        self._before = cpu_sample()
        self._proc: Any = None
        self._receive: Any = None
        self._counter: Any = None
        self._folder: Path | None = None
        self._jobs: list[Job] = []
        self._state: tuple[tuple[Any, ...], list[Any]] | None = None
        self._tried = False
        self.free: float | None = None
        """CPUs other processes left free from construction to `start` (None when not measured)."""

    @property
    def started(self) -> bool:
        """Whether a helper was forked (and not yet stopped)."""
        return self._proc is not None

    def __enter__(self) -> EarlyFigures:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _should_fork(self) -> bool:
        workers = forced_workers() if self.workers is None else self.workers
        if workers == 1 or not can_fork_helper():
            return False
        if workers is not None:
            return True
        after = cpu_sample()
        if self._before is None or after is None:
            return False
        self.free = free_cpus_over(self._before, after)
        return self.free - _torch_threads() >= MIN_SPARE_CPUS

    def start(self, result: InspectionResult) -> None:
        """Fork the helper on `result` (the recording pass's, before the analyses attach theirs): pass this
        method as `inspect(on_recorded=...)`. Once; a no-op where a helper does not pay off."""
        if self._tried:
            return
        self._tried = True
        if not self._should_fork():
            return
        import multiprocessing as mp

        from .figures import FIGURES, RECORDING_FIGURES, drawing_order

        keys = drawing_order([k for k in FIGURES if k in RECORDING_FIGURES])
        try:  # the helper only saves time: where it cannot start (no temp folder, no shared memory, the
            # fork refused), the figures are drawn afterwards as without it
            self._folder = Path(tempfile.mkdtemp(prefix="mmoe-inspect-figures-"))
            ctx = mp.get_context("fork")
            counter = ctx.Value("i", 0)  # the next job nobody has taken (its own lock)
            receive, send = ctx.Pipe(duplex=False)
        except OSError:
            self.close()
            return
        jobs = [(k, FIGURES[k].draw, self._folder / f"{k}.png", DPI) for k in keys]

        def helper() -> None:  # in the forked process: BLAS on one thread there, as `render_all` draws
            serve_jobs(jobs, result, counter, send, receive, setup=one_blas_thread)

        try:
            with old_objects_frozen():  # frozen: the helper inherits it
                proc = fork_helper(ctx, helper, "mmoe-inspect-early-figures")
        except OSError:
            send.close()
            receive.close()
            self.close()
            return
        send.close()
        self._proc, self._receive, self._counter, self._jobs = proc, receive, counter, jobs
        self._state = _state(result)

    def workers_beside(self, workers: int | None) -> int | None:
        """The `workers` for the other figures: as given; else, while this helper still draws its last, 2 (a
        second helper) when it was forked because other processes left the CPUs free (measured on the 1M-row
        report at one thread: figures 1.65-1.8 s with one process beside the helper, 1.2-1.45 s with two);
        else None: `_render` measures the machine now."""
        if workers is not None:
            return workers
        alive = self._proc is not None and self._proc.is_alive()
        return 2 if alive and self.free is not None and self.free >= MIN_FREE_CPUS else None

    def claim(self, result: InspectionResult) -> frozenset[str]:
        """The figure keys the helper draws for `result`: none when no helper runs, or when `result` is
        another object or what the figures read changed since `start` (then the helper is stopped)."""
        if self._proc is None:
            return frozenset()
        if self._state is None or not _same_state(_state(result), self._state):
            self.close()
            return frozenset()
        return frozenset(job[0] for job in self._jobs)

    def finish(
        self,
        result: InspectionResult,
        folder: Path,
        tick: Callable[[str], None] | None = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> set[str]:
        """The claimed figures, in `folder`: draw here the ones the helper has not begun, call
        `meanwhile()`, wait for the helper, move its files in, draw here what it did not deliver; the
        keys written (a figure without data writes nothing). `tick(key)` once per figure."""
        with one_blas_thread(), old_objects_frozen():  # as `_render.render_all` draws
            drawn = share_jobs(
                result,
                self._jobs,
                tick,
                self._counter,
                self._receive,
                self._proc,
                meanwhile=meanwhile,
                here=lambda job: _into(job, folder),  # drawn here: straight into the report's folder
                delivered=lambda job: shutil.move(job[2], folder / job[2].name),
            )
        self.close()
        return drawn

    def close(self) -> None:
        """Stop the helper (if it still runs) and remove its temp folder; idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.is_alive():
                proc.kill()
            proc.join()
        if self._receive is not None:
            self._receive.close()
            self._receive = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        self._jobs = []
        self._state = None


def _into(job: Job, folder: Path) -> Job:
    key, draw, path, dpi = job
    return key, draw, folder / path.name, dpi
