"""`StatsWorker`: runs the statistics updates of chunk k in one background thread while the caller
runs the forward passes of the next batches.

Why: a statistics update is a few dozen small tensor ops (and, for the exact AUC, a sort now and
then) that do not parallelise; with two torch threads the forward halves but they do not, so their
share of the recording pass grows. Torch ops release the GIL, so one worker thread running them
beside the forward uses a core the forward leaves idle (one torch thread on two cores) and takes the
statistics off the caller's critical path.

Guarantees:
- **Same states.** Jobs run one at a time in submission order, on the tensors handed over (never
  modified by either side afterwards), under the caller's autograd modes (`torch.inference_mode`
  and grad mode are thread-local): the states are those of running the jobs in the caller.
- **Bounded memory.** At most `queued` jobs in flight (one by default): `submit` first waits for the
  oldest.
- **Errors surface in the caller.** An exception raised by a job is re-raised, as the same
  object (its type and message), by the next `submit`, `wait` or `close`; no job runs after it.
- **Interrupts.** A `KeyboardInterrupt` reaches the caller's thread (a wait on the worker can be
  interrupted); `close()` then lets the running job finish (a torch op cannot be stopped midway),
  drops nothing else (nothing else is queued) and joins the thread, so no thread outlives the pass.
- **Torch threads.** The worker runs its ops on one intra-op thread by default, so that with ``N``
  torch threads it does not start a second team of ``N`` threads against the forward's (`threads`
  sets another count: the riding causal work takes the caller's, for the caller's kernels and bits);
  the process-wide setting the caller sees is left as it was.

`StatsFeed` uses it only while the caller's torch threads leave a core spare (`spare_cores`): when
they fill the cores, a thread beside the forward slows its parallel ops more than the overlap saves
(measured: bench/results/recording_threads_session6.md), and the update runs in the caller.

It is CPU-only by design: on an accelerator the updates are asynchronous kernel launches already,
and the caller stays synchronous there (see `StatsFeed`).
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

__all__ = ["SWITCH_INTERVAL_S", "StatsWorker", "short_switch_interval", "spare_cores"]

SWITCH_INTERVAL_S = 0.0005
"""The interpreter's thread switch interval during a pass with worker threads (Python's default: 5 ms)."""


class StatsWorker:
    """One background thread running jobs in order, at most `queued` of them submitted and not done (one
    running, the others waiting)."""

    def __init__(self, queued: int = 1, threads: int = 1) -> None:
        if queued < 1 or threads < 1:
            raise ValueError(f"queued and threads must be >= 1, got {queued}, {threads}")
        self.queued = queued
        self.threads = threads  # intra-op threads of the worker's torch ops
        self._pool: ThreadPoolExecutor | None = None
        self._futures: collections.deque[Future[Any]] = collections.deque()
        self._failed = False  # a job raised: the jobs queued after it are skipped
        self._closed = False

    @property
    def started(self) -> bool:
        """Whether the thread was started (it is started by the first `submit`)."""
        return self._pool is not None

    def submit(self, job: Callable[[], None]) -> None:
        """Run `job()` in the worker after the jobs before it, once fewer than `queued` are pending (waiting
        for the oldest; a failed job's error is raised here instead, and `job` is not run). The job runs
        under the caller's autograd modes."""
        if self._closed:
            raise RuntimeError("StatsWorker.submit after close()")
        while len(self._futures) >= self.queued or (self._failed and self._futures):
            self._futures.popleft().result()
        if self._pool is None:
            self._pool = _start_pool(self.threads)
        modes = (torch.is_inference_mode_enabled(), torch.is_grad_enabled())
        self._futures.append(self._pool.submit(self._run_job, job, modes))

    def _run_job(self, job: Callable[[], None], modes: tuple[bool, bool]) -> None:
        """In the worker thread: `job()` under the caller's autograd modes (skipped after a failed job)."""
        if self._failed:
            return
        inference, grad = modes
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                job()
        except BaseException:
            self._failed = True
            raise

    def wait(self) -> None:
        """Block until every submitted job is done; re-raise the first error in the caller."""
        while self._futures:
            self._futures.popleft().result()

    def close(self, *, raise_errors: bool = True, cancel: bool = False) -> None:
        """Wait for the jobs in flight, stop the thread (idempotent). With ``raise_errors=False`` (an
        exception is already propagating) a failed job's error is dropped, not raised over it;
        ``cancel=True`` skips the jobs not yet started (the one running finishes: a torch op cannot be
        stopped)."""
        self._closed = True
        if cancel:
            self._failed = True
        try:
            if raise_errors:
                self.wait()
            else:
                while self._futures:
                    _wait_quietly(self._futures.popleft())
        finally:
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


def spare_cores() -> int:
    """Cores this process may run on beyond the torch threads of the caller (0 when they fill them)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    return max(0, cores - torch.get_num_threads())


_switch_lock = threading.Lock()
_switch_users = 0  # passes inside `short_switch_interval` now
_switch_saved = 0.005  # the interval before the first of them


@contextlib.contextmanager
def short_switch_interval(seconds: float = SWITCH_INTERVAL_S) -> Iterator[None]:
    """Inside: the thread switch interval (`sys.setswitchinterval`) at most `seconds`; restored after.

    A worker thread whose torch op has finished waits for the GIL before it can start its next op, up
    to the switch interval (5 ms by default) while the caller runs Python (the data conversion, the
    hooks); with ops of 0.1-1 ms that wait, not the work, set the worker's pace. Measured on the 2-core
    machine, 1M rows: `check` 3.89 -> 3.65 s at 1 torch thread (statistics worker), 3.42 -> 3.15 s at 2;
    `inspect` with the causal work riding along in its worker thread 7.6 -> 6.3 s.
    """
    global _switch_users, _switch_saved
    if not seconds > 0:
        raise ValueError(f"the switch interval must be > 0 seconds, got {seconds}")
    entered = False
    try:
        # nested or concurrent passes (two threads inspecting): the interval from before the first of them
        # comes back when the last one ends
        with _switch_lock:
            if _switch_users == 0:
                _switch_saved = sys.getswitchinterval()
            _switch_users += 1
            entered = True
            sys.setswitchinterval(min(sys.getswitchinterval(), seconds))
        yield
    finally:
        if entered:
            with _switch_lock:
                _switch_users -= 1
                if _switch_users == 0:
                    sys.setswitchinterval(_switch_saved)


def _start_pool(threads: int = 1) -> ThreadPoolExecutor:
    """A one-thread pool whose thread computes on `threads` intra-op threads (see the module doc)."""
    n = torch.get_num_threads()
    ready = threading.Event()

    def init() -> None:
        # `torch.set_num_threads` sets this thread's OpenMP team size, and also the process-wide
        # value that threads read on their first op; the caller restores the latter below
        torch.set_num_threads(threads)
        ready.set()

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmoe-stats", initializer=init)
    pool.submit(lambda: None).result()  # start the thread now, so its initializer ran
    ready.wait()
    torch.set_num_threads(n)  # this thread's own value is unchanged: the process-wide one back to it
    return pool


def _wait_quietly(fut: Future[Any] | None) -> None:
    """Wait for `fut` to finish, ignoring its outcome (a `KeyboardInterrupt` during the wait propagates)."""
    if fut is None:
        return
    with contextlib.suppress(Exception):  # the caller is already raising another exception
        fut.result()
