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
- **Bounded memory.** At most one job in flight: `submit` first waits for the previous job.
- **Errors surface in the caller.** An exception raised by a job is re-raised, as the same
  object (its type and message), by the next `submit`, `wait` or `close`; no job runs after it.
- **Interrupts.** A `KeyboardInterrupt` reaches the caller's thread (a wait on the worker can be
  interrupted); `close()` then lets the running job finish (a torch op cannot be stopped midway),
  drops nothing else (nothing else is queued) and joins the thread, so no thread outlives the pass.
- **Torch threads.** The worker runs its ops on one intra-op thread, so that with ``N`` torch
  threads it does not start a second team of ``N`` threads against the forward's; the process-wide
  setting the caller sees is left as it was.

`StatsFeed` uses it only while the caller's torch threads leave a core spare (`spare_cores`): when
they fill the cores, a thread beside the forward slows its parallel ops more than the overlap saves
(measured: bench/results/recording_threads_session6.md), and the update runs in the caller.

It is CPU-only by design: on an accelerator the updates are asynchronous kernel launches already,
and the caller stays synchronous there (see `StatsFeed`).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

__all__ = ["StatsWorker", "spare_cores"]


class StatsWorker:
    """One background thread running statistics jobs in order, at most one at a time."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._future: Future[Any] | None = None
        self._closed = False

    @property
    def started(self) -> bool:
        """Whether the thread was started (it is started by the first `submit`)."""
        return self._pool is not None

    def submit(self, job: Callable[[], None]) -> None:
        """Run `job()` in the worker once the previous job is done (whose error, if any, is raised
        here instead, and `job` is not run). The job runs under the caller's autograd modes."""
        if self._closed:
            raise RuntimeError("StatsWorker.submit after close()")
        self.wait()
        if self._pool is None:
            self._pool = _start_pool()
        modes = (torch.is_inference_mode_enabled(), torch.is_grad_enabled())
        self._future = self._pool.submit(self._run_job, job, modes)

    def _run_job(self, job: Callable[[], None], modes: tuple[bool, bool]) -> None:
        """In the worker thread: `job()` under the caller's autograd modes."""
        inference, grad = modes
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            job()

    def wait(self) -> None:
        """Block until the job in flight is done; re-raise its exception in the caller."""
        fut, self._future = self._future, None
        if fut is not None:
            fut.result()

    def close(self, *, raise_errors: bool = True) -> None:
        """Wait for the job in flight, stop the thread (idempotent). With ``raise_errors=False`` (an
        exception is already propagating) a failed job's error is dropped, not raised over it."""
        self._closed = True
        try:
            if raise_errors:
                self.wait()
            else:
                _wait_quietly(self._future)
                self._future = None
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


def _start_pool() -> ThreadPoolExecutor:
    """A one-thread pool whose thread computes on one intra-op thread (see the module doc)."""
    n = torch.get_num_threads()
    ready = threading.Event()

    def init() -> None:
        # `torch.set_num_threads` sets this thread's OpenMP team size, and also the process-wide
        # value that threads read on their first op; the caller restores the latter below
        torch.set_num_threads(1)
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
