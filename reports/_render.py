"""Draw and save a list of report figures, on two processes when the machine has a core to spare.

A report's figures are independent, pure-Python matplotlib work (about 0.1-0.5 s each, 3-4 s for a
report) while the rest of the process is idle, so a forked helper process draws some of them while
this one draws the others. Both take the next figure from one shared counter (the slow ones do not
pile up on one side) and write `<folder>/<name>.png` themselves; the helper reports each figure it
finished through a pipe. The files are the same as a serial run writes (each figure is drawn from
the same result by the same code); only who draws which one changes.

Whether a core is free is measured while the first figure is drawn here (`cpu_sample` before and
after, at least `WINDOW_S`): what the machine's CPUs did in that window, less this process's own
drawing, is what other processes take now. The helper is forked only when a CPU and a half is left
(`helper_pays_off`), so it inherits the drawing caches the first figure filled (fonts, seaborn).
Not the load average: it follows this process's own compute threads of the minute before
(`inspect` on 2 torch threads leaves it at ~2 on a 2-core machine although they are idle now).

Falls back to drawing everything here: off Linux (no fork on Windows; macOS's system libraries
are not fork-safe), in a daemon process, on one CPU, for a few figures, without /proc/stat.
Whatever the helper does not deliver (it failed, died, or said nothing for `HELPER_SILENCE_S`) is
drawn here, so a figure that raises raises here with its own traceback, exactly as in a serial run.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, NamedTuple

from matplotlib.figure import Figure

from ._style import close, save_png

Draw = Callable[[Any], Figure | None]
Job = tuple[str, Draw, Path, int]
"""One figure to draw: key, drawing function, PNG path, dpi."""

MIN_PARALLEL_FIGURES = 4  # fewer left after the first: a helper process costs more than it saves
HELPER_SILENCE_S = 120.0  # no news from the helper for this long: stop it and draw its figures here
WINDOW_S = 0.08  # shortest window the CPUs are measured over (/proc/stat counts in 10 ms ticks)
MIN_FREE_CPUS = 1.5  # this process's CPU, and half a CPU at least for the helper
WORKERS_ENV = "MMOE_INSPECT_FIGURE_WORKERS"
last_window: dict[str, float] = {}
"""The measurement of the last `render_all` call (benchmarks read it): `free_cpus`, `seconds` (the
window), `workers` (what it chose); empty when that call measured nothing (workers forced, one CPU)."""


class CpuSample(NamedTuple):
    """CPU time counters at one moment, in clock ticks (`/proc/stat`'s unit, USER_HZ)."""

    busy: int  # the CPUs this process may run on: ticks not idle (all but idle and iowait), summed
    total: int  # the same CPUs: all ticks, summed
    own: int  # this process (every thread): user + system ticks
    cpus: int  # how many CPUs `busy` and `total` sum over


def forced_workers() -> int | None:
    """`MMOE_INSPECT_FIGURE_WORKERS=1` (or 2): that many processes (2 only where `can_fork_helper`);
    None when unset (measure the machine, `helper_pays_off`)."""
    forced = os.environ.get(WORKERS_ENV, "").strip()
    if not forced.isdigit():
        return None
    return 2 if int(forced) >= 2 and can_fork_helper() else 1


def parse_cpu_sample(proc_stat: str, self_stat: str, cpus: Collection[int]) -> CpuSample | None:
    """A `CpuSample` from the text of `/proc/stat` and `/proc/self/stat`, summed over the CPUs `cpus`
    (this process's affinity); None when a CPU is missing or the text is not what Linux writes.

    Per CPU: `cpuN user nice system idle iowait irq softirq steal [guest guest_nice]`; guest time is
    already in user/nice, so only the first eight count. Steal (taken by the hypervisor) is busy.
    """
    busy = total = 0
    seen = set()
    try:
        for line in proc_stat.splitlines():
            name, _, rest = line.partition(" ")
            if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
                continue
            ticks = [int(v) for v in rest.split()[:8]]
            idle = ticks[3] + ticks[4]
            total += sum(ticks)
            busy += sum(ticks) - idle
            seen.add(int(name[3:]))
        fields = self_stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
        own = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    except (ValueError, IndexError):
        return None
    if not seen or seen != set(cpus):
        return None
    return CpuSample(busy, total, own, len(seen))


def cpu_sample() -> CpuSample | None:
    """This moment's `CpuSample`; None off Linux or where /proc cannot be read."""
    try:
        with open("/proc/stat") as f:
            proc_stat = f.read()
        with open("/proc/self/stat") as f:
            self_stat = f.read()
    except OSError:
        return None
    return parse_cpu_sample(proc_stat, self_stat, _affinity())


def free_cpus(before: CpuSample, after: CpuSample, *, own_cpus: float | None = 1.0) -> float:
    """CPUs left free by other processes between two samples (0 to `cpus`): the window's busy ticks less
    this process's own, of which at most `own_cpus` CPUs' worth counts as ours (by default one: the thread
    that draws; more is other threads of ours, say torch's spinning, which a helper would compete with as
    well; None: all of them)."""
    total = after.total - before.total
    if total <= 0 or after.cpus != before.cpus:
        return 0.0
    window = total / after.cpus  # ticks one CPU had in the window
    busy = after.busy - before.busy
    own = max(after.own - before.own, 0)
    if own_cpus is not None:
        own = min(own, own_cpus * window)
    others = max(busy - own, 0) / window
    return float(min(max(after.cpus - others, 0.0), after.cpus))


def helper_pays_off(before: CpuSample | None, after: CpuSample | None) -> bool:
    """A helper process is worth forking: a CPU for this process and at least half a CPU more were free
    in the window (`MIN_FREE_CPUS`). Where other jobs take the other CPUs, a helper only competes with
    them (and under the scheduler's per-session fair share, `sched_autogroup`, this session gets no
    more CPU for it) while it adds its start and work of its own: measured on the 2-core machine with
    every CPU taken by other jobs, two processes took 12% longer than one. No samples: no helper."""
    if before is None or after is None:
        return False
    return free_cpus(before, after) >= MIN_FREE_CPUS


def can_fork_helper() -> bool:
    """Linux (fork), not a daemon process (which may not have children), not a rank of a torch.distributed
    process group, and two CPUs for this process."""
    import multiprocessing as mp

    if not sys.platform.startswith("linux") or mp.current_process().daemon:
        return False  # macOS lists fork but its system libraries are not fork-safe; Windows has no fork
    return _cpus() >= 2 and not _in_process_group()


def _in_process_group() -> bool:
    """An initialized torch.distributed group (rank 0 of `torchrun ... report` writes the report): its
    communication threads and sockets are not copied into a fork safely, so no helper is forked."""
    dist = sys.modules.get("torch.distributed")
    try:
        return bool(dist is not None and dist.is_available() and dist.is_initialized())
    except Exception:  # pragma: no cover - a torch without a working distributed package
        return False


def _affinity() -> set[int]:
    try:
        return os.sched_getaffinity(0)
    except AttributeError:  # pragma: no cover - platforms without sched_getaffinity
        return set(range(os.cpu_count() or 1))


def _cpus() -> int:
    return len(_affinity())


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
    meanwhile: Callable[[], None] | None = None,
) -> set[str]:
    """Draw every job in this order (a short one first, then slowest first, balances best); the keys of
    those written.

    `meanwhile()` (other work of the caller, independent of the figures) is called once: when this
    process has no figure left to take while the helper may still draw its last, else after the figures.

    `workers` 1 or 2 decides; None: `MMOE_INSPECT_FIGURE_WORKERS`, else the CPUs are measured over
    the first jobs drawn here (at least `WINDOW_S`) and a helper is forked for the rest when
    `helper_pays_off`. `tick(key)` is called once per job finished here or reported by the helper
    (for a progress bar).
    """
    workers = forced_workers() if workers is None else workers
    if not can_fork_helper() or len(jobs) < MIN_PARALLEL_FIGURES:
        workers = 1
    drawn: set[str] = set()
    last_window.clear()
    with one_blas_thread(), old_objects_frozen():  # both before the fork: the helper inherits them
        start = 0
        if workers is None:  # measure while the first jobs are drawn here
            before, t0 = cpu_sample(), time.monotonic()
            while start < len(jobs) and (start == 0 or time.monotonic() - t0 < WINDOW_S):
                _draw_here(jobs[start], result, drawn, tick)
                start += 1
            after = cpu_sample()
            workers = 2 if helper_pays_off(before, after) else 1
            last_window.update(
                free_cpus=free_cpus(before, after) if before and after else float("nan"),
                seconds=time.monotonic() - t0,
                workers=workers,
            )
        if workers >= 2 and len(jobs) - start >= MIN_PARALLEL_FIGURES - 1:
            return drawn | _render_two(result, jobs, tick, start, meanwhile)
        for job in jobs[start:]:
            _draw_here(job, result, drawn, tick)
    if meanwhile is not None:
        meanwhile()
    return drawn


def _draw_here(job: Job, result: Any, drawn: set[str], tick: Callable[[str], None] | None) -> None:
    if draw_one(job, result):
        drawn.add(job[0])
    if tick is not None:
        tick(job[0])


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


def take_next(counter: Any, n: int) -> int | None:
    """The index of the next of `n` jobs nobody has taken yet from the shared `counter` (a
    `multiprocessing.Value` both processes take from), or None when every job is taken."""
    with counter.get_lock():
        i = counter.value
        if i >= n:
            return None
        counter.value = i + 1
        return i


def serve_jobs(
    jobs: Sequence[Job],
    result: Any,
    counter: Any,
    send: Any,
    receive: Any,
    setup: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> None:
    """A forked helper's whole life: take jobs from `counter`, draw them, report `(index, drawn)` through
    `send` (`(index, None)` when a figure raised: it is drawn again in the parent, where it raises
    properly), then `("done", None)`, and leave with `os._exit` (no exceptions crossing, no flush of
    stdio buffers copied from the parent, no exit handlers of the parent's libraries). `setup()` is a
    context the drawing runs in, entered once the helper ignores Ctrl-C and has its own stdio."""
    with contextlib.suppress(ValueError):  # Ctrl-C reaches the parent, which stops this one
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    # never touch the parent's stdio objects (a progress bar's thread may have held their locks at the
    # fork): a warning or a log line goes nowhere
    # (warnings keep their filters: one that is an error fails the figure here, which the parent then
    # draws again and raises, as a serial run does)
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives until os._exit
    receive.close()
    with setup():
        while (i := take_next(counter, len(jobs))) is not None:
            try:
                send.send((i, draw_one(jobs[i], result)))
            except Exception:
                send.send((i, None))
    send.send(("done", None))
    send.close()
    os._exit(0)


def fork_helper(ctx: Any, target: Callable[[], None], name: str) -> Any:
    """Start `target` in a forked daemon process of the fork context `ctx` (a `multiprocessing.Process`)."""
    with warnings.catch_warnings():
        # Python >= 3.12 warns on fork() in a process with threads (torch's pool, a progress bar): the
        # helper only runs matplotlib on the inherited result, and a hung helper is replaced
        warnings.filterwarnings(
            "ignore", message=r".*use of fork\(\) may lead to deadlocks", category=DeprecationWarning
        )
        proc = ctx.Process(target=target, name=name, daemon=True)
        proc.start()
    return proc


def _render_two(
    result: Any,
    jobs: Sequence[Job],
    tick: Callable[[str], None] | None,
    start: int = 0,
    meanwhile: Callable[[], None] | None = None,
) -> set[str]:
    """Draw `jobs[start:]` on this process and a forked helper (those before `start` are done);
    `meanwhile()` runs here once no job is left to take, while the helper finishes its own."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    try:  # a helper only saves time: where it cannot start (no shared memory, the fork refused), draw here
        counter = ctx.Value("i", start)  # index of the next job nobody has taken (its own lock)
        receive, send = ctx.Pipe(duplex=False)
    except OSError:
        return _draw_rest_here(result, jobs, tick, start, meanwhile)
    try:
        proc = fork_helper(
            ctx, lambda: serve_jobs(jobs, result, counter, send, receive), "mmoe-inspect-figures"
        )
    except OSError:
        send.close()
        receive.close()
        return _draw_rest_here(result, jobs, tick, start, meanwhile)

    send.close()
    return share_jobs(result, jobs, tick, counter, receive, proc, start=start, meanwhile=meanwhile)


def share_jobs(
    result: Any,
    jobs: Sequence[Job],
    tick: Callable[[str], None] | None,
    counter: Any,
    receive: Any,
    proc: Any,
    *,
    start: int = 0,
    meanwhile: Callable[[], None] | None = None,
    here: Callable[[Job], Job] = lambda job: job,
    delivered: Callable[[Job], None] | None = None,
) -> set[str]:
    """This process's half of drawing `jobs[start:]` beside the helper `proc` (`serve_jobs` on the same
    `counter`, reporting through `receive`): take and draw jobs here (as `here(job)`), call `meanwhile()`
    once none is left, wait for the helper (a silent or gone one is stopped), then `delivered(job)` for each
    figure it drew and draw here what it did not deliver, where an error raises. The keys written; `tick(key)`
    once per job."""
    drawn: set[str] = set()
    theirs: dict[int, bool | None] = {}
    mine: set[int] = set()
    finished = False
    try:
        while (i := take_next(counter, len(jobs))) is not None:
            mine.add(i)
            if draw_one(here(jobs[i]), result):
                drawn.add(jobs[i][0])
            if tick is not None:
                tick(jobs[i][0])
            _collect(receive, jobs, theirs, tick, wait=0.0)
        if meanwhile is not None:
            meanwhile()
        finished = _collect(receive, jobs, theirs, tick, wait=HELPER_SILENCE_S)
    finally:
        if not finished:  # interrupted, or the helper is silent or gone: never wait for it
            proc.kill()
        proc.join()
        receive.close()
    for i, job in enumerate(jobs):  # what the helper took but did not deliver: drawn here
        if i < start or i in mine:
            continue
        ok = theirs.get(i)
        if ok and delivered is not None:
            delivered(job)
        elif ok is None:
            ok = draw_one(here(job), result)
            if tick is not None and i not in theirs:
                tick(job[0])
        if ok:
            drawn.add(job[0])
    return drawn


def _draw_rest_here(
    result: Any,
    jobs: Sequence[Job],
    tick: Callable[[str], None] | None,
    start: int,
    meanwhile: Callable[[], None] | None,
) -> set[str]:
    """`jobs[start:]` drawn in this process, then `meanwhile()` (a helper could not be started)."""
    drawn: set[str] = set()
    for job in jobs[start:]:
        _draw_here(job, result, drawn, tick)
    if meanwhile is not None:
        meanwhile()
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
