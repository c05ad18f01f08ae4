"""Draw and save a list of report figures, on two processes when the machine has a core to spare.

A report's figures are independent, pure-Python matplotlib work (about 0.1-0.5 s each, 3-4 s for a
report) while the rest of the process is idle, so a forked helper process draws some of them while
this one draws the others. Both take the next figure from one shared counter (the slow ones do not
pile up on one side) and write `<folder>/<name>.png` themselves; the helper reports each figure it
finished through a pipe. The files are the same as a serial run writes (each figure is drawn from
the same result by the same code); only who draws which one changes.

Falls back to drawing everything here: off Linux (no fork on Windows; macOS's system libraries
are not fork-safe), in a daemon process, on one CPU, for a few figures. Whatever the helper does
not deliver (it failed, died, or said nothing for `HELPER_SILENCE_S`) is drawn here, so a figure
that raises raises here with its own traceback, exactly as in a serial run.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ._style import close, save_png

Draw = Callable[[Any], Figure | None]
Job = tuple[str, Draw, Path, int]
"""One figure to draw: key, drawing function, PNG path, dpi."""

MIN_PARALLEL_FIGURES = 4  # fewer: a helper process costs more than it saves
HELPER_SILENCE_S = 120.0  # no news from the helper for this long: stop it and draw its figures here


def figure_workers() -> int:
    """Processes that draw figures: 2 where a second one can fork (`can_fork_helper`) and a CPU is idle
    (1-minute load average under CPUs - 0.5, this process included), else 1.

    A helper costs about a tenth more CPU in all (its start, caches each process fills for itself),
    so it pays off only with a CPU to itself: measured on the 2-core machine at a load average of 5
    (every CPU taken by other jobs), two processes took 12% longer than one.
    `MMOE_INSPECT_FIGURE_WORKERS=1` (or 2) decides instead.
    """
    forced = os.environ.get("MMOE_INSPECT_FIGURE_WORKERS", "").strip()
    if forced.isdigit():
        return 2 if int(forced) >= 2 and can_fork_helper() else 1
    if not can_fork_helper():
        return 1
    try:
        busy = os.getloadavg()[0]
    except OSError:  # pragma: no cover - load average unavailable
        busy = 0.0
    return 2 if busy < _cpus() - 0.5 else 1


def can_fork_helper() -> bool:
    """Linux (fork), not a daemon process (which may not have children), and two CPUs for this process."""
    import multiprocessing as mp

    if not sys.platform.startswith("linux") or mp.current_process().daemon:
        return False  # macOS lists fork but its system libraries are not fork-safe; Windows has no fork
    return _cpus() >= 2


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - platforms without sched_getaffinity
        return os.cpu_count() or 1


def draw_one(job: Job, result: Any) -> bool:
    """Draw one figure and save it at its path; False when it has no data (nothing written)."""
    _key, draw, path, dpi = job
    fig = draw(result)
    if fig is None:
        return False
    try:
        save_png(fig, path, dpi)
    finally:
        close(fig)
    return True


def render_all(
    result: Any,
    jobs: Sequence[Job],
    tick: Callable[[str], None] | None = None,
    workers: int | None = None,
) -> set[str]:
    """Draw every job (in this order, slow ones first balances best); the keys of those written.

    `tick(key)` is called once per job finished here or reported by the helper (for a progress bar).
    """
    workers = figure_workers() if workers is None else workers
    if workers >= 2 and not can_fork_helper():
        workers = 1
    with one_blas_thread(), old_objects_frozen():  # both before the fork: the helper inherits them
        if workers >= 2 and len(jobs) >= MIN_PARALLEL_FIGURES:
            return _render_two(result, jobs, tick)
        drawn = set()
        for job in jobs:
            if draw_one(job, result):
                drawn.add(job[0])
            if tick is not None:
                tick(job[0])
        return drawn


@contextlib.contextmanager
def old_objects_frozen() -> Iterator[None]:
    """The objects that exist before the figures are drawn are left out of the garbage collector's full
    passes while they are drawn (`gc.freeze`): the figures make many short-lived cycles, and each full
    pass would walk the whole process again (torch, pandas, the result: ~300k objects after
    `inspect`), about 0.1-0.3 s a report. Python advises it before a fork as well (pages of frozen
    objects stay shared). Skipped when objects are already frozen (unfreezing would release those
    too) or the collector is off.
    """
    if gc.get_freeze_count() or not gc.isenabled():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def one_blas_thread() -> AbstractContextManager[object]:
    """BLAS (OpenBLAS, MKL) on one thread while figures are drawn (`threadpoolctl`).

    The only BLAS work in the figures is seaborn's violin densities (scipy's `gaussian_kde`: small
    triangular solves), which a BLAS pool of one thread per CPU runs 2-3x SLOWER than one thread, and
    more so with two processes drawing at once. One thread gives the same numbers (the solves split
    their columns between threads, each column computed alike).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a declared dependency; an install without it draws as before
        return nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _render_two(result: Any, jobs: Sequence[Job], tick: Callable[[str], None] | None) -> set[str]:
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    counter = ctx.Value("i", 0)  # index of the next job nobody has taken (its own lock)
    receive, send = ctx.Pipe(duplex=False)

    def take() -> int | None:
        with counter.get_lock():
            i = counter.value
            if i >= len(jobs):
                return None
            counter.value = i + 1
            return i

    def helper() -> None:  # runs in the forked process: no progress bar, no exceptions crossing
        with contextlib.suppress(ValueError):  # Ctrl-C reaches the parent, which stops this one
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        receive.close()
        while (i := take()) is not None:
            try:
                send.send((i, draw_one(jobs[i], result)))
            except Exception:
                send.send((i, None))  # drawn again in the parent, where it raises properly
        send.send(("done", None))
        send.close()
        # leave now: no flush of stdio buffers copied from the parent (a progress bar's half-written
        # line would be printed twice), no exit handlers of the parent's libraries
        os._exit(0)

    with warnings.catch_warnings():
        # Python >= 3.12 warns on fork() in a process with threads (torch's pool, a progress bar): the
        # helper only runs matplotlib on the inherited result, and a hung helper is replaced (below).
        warnings.filterwarnings(
            "ignore", message=r".*use of fork\(\) may lead to deadlocks", category=DeprecationWarning
        )
        proc = ctx.Process(target=helper, name="mmoe-inspect-figures", daemon=True)
        proc.start()
    send.close()
    drawn: set[str] = set()
    theirs: dict[int, bool | None] = {}
    mine: set[int] = set()
    finished = False
    try:
        while (i := take()) is not None:
            mine.add(i)
            if draw_one(jobs[i], result):
                drawn.add(jobs[i][0])
            if tick is not None:
                tick(jobs[i][0])
            _collect(receive, jobs, theirs, tick, wait=0.0)
        finished = _collect(receive, jobs, theirs, tick, wait=HELPER_SILENCE_S)
    finally:
        if not finished:  # interrupted, or the helper is silent or gone: never wait for it
            proc.kill()
        proc.join()
        receive.close()
    for i, job in enumerate(jobs):  # what the helper took but did not deliver: drawn here
        if i in mine:
            continue
        ok = theirs.get(i)
        if ok is None:
            ok = draw_one(job, result)
            if tick is not None and i not in theirs:
                tick(job[0])
        if ok:
            drawn.add(job[0])
    return drawn


def _collect(
    receive: Any,
    jobs: Sequence[Job],
    theirs: dict[int, bool | None],
    tick: Callable[[str], None] | None,
    wait: float,
) -> bool:
    """Read the helper's messages into `theirs` (job index → drawn, or None when it failed); True once it
    said it is done. With `wait` > 0, block until then, or until the helper is silent that long / gone."""
    while True:
        try:
            if not receive.poll(wait):
                return False
            key, ok = receive.recv()
        except (EOFError, OSError):  # the helper died: what it did not report is drawn here
            return False
        if key == "done":
            return True
        theirs[key] = ok
        if tick is not None:
            tick(jobs[key][0])
