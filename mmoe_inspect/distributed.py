"""Distributed inspection: process groups from torchrun's environment, row shards, and errors every rank sees.

A distributed run is the single-process inspection split by rows: each rank records its shard of the
rows (`mmoe_inspect.data.sources.shard_rows`), the statistics' states are combined with
`torch.distributed` collectives (torchmetrics' sync: sums add, reservoirs keep the smallest row-hash
keys), and every rank then holds the statistics of all rows. Rank 0 does what follows the recording
pass (causal analyses, attributions, the report).

Two groups: `group` syncs the statistics (the default group: gloo on CPU, nccl on CUDA) and `control`
(always gloo, CPU) exchanges small Python objects: row counts, and each rank's status. Errors follow
one protocol so that a failure on any rank ends every rank, with no hang: a rank that fails takes part
in exactly one status exchange (carrying its error) and stops; a healthy rank passes status
exchanges (`checkpoint`) before every collective that a failed rank would miss, and raises the
failed rank's error when one arrives. `agreed_errors` wraps a region so that an error raised in it is
exchanged once; the process group's timeout (`timeout_s`) ends a rank that dies without a word.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from mmoe_inspect.errors import MmoeInspectError, first_line

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DistContext",
    "DistributedError",
    "agreed_errors",
    "checkpoint",
    "current_context",
    "exchange",
    "init_from_env",
    "launched_by_torchrun",
    "shutdown",
]

DEFAULT_TIMEOUT_S = 1800.0  # a collective waits this long for a silent rank (rank 0 may run causal analyses)
_AGREED = "_mmoe_inspect_agreed"  # attribute set on an exception every rank has seen
T = TypeVar("T")


class DistributedError(MmoeInspectError, RuntimeError):
    """A distributed run cannot start or continue (no process group, a rank failed without a message)."""

    bad_input = False  # a rank that failed without a message may have hit a bug: exit 1, not 2


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a distributed run."""

    rank: int
    world_size: int
    local_rank: int
    group: Any  # the default process group (statistics sync)
    control: Any  # a gloo group over the same ranks (object exchange; the default group when it is gloo)
    backend: str
    owns_group: bool = False  # True when `init_from_env` created the default group (shutdown destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sync_group(self, device: torch.device) -> Any:
        """The group that syncs statistics held on `device` (nccl needs CUDA tensors; CPU states use gloo)."""
        return self.group if device.type != "cpu" or self.backend == "gloo" else self.control


def launched_by_torchrun() -> bool:
    """True when the environment names a world of several processes (torchrun sets WORLD_SIZE and RANK)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    except ValueError:
        return False


def init_from_env(device: str | torch.device = "cpu", timeout_s: float | None = None) -> DistContext:
    """Join the process group torchrun describes (`env://`: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE).

    The backend is nccl when `device` is CUDA (each rank then uses `cuda:LOCAL_RANK` unless an index
    is given), else gloo. An already initialized default group is reused (and not destroyed by
    `shutdown`). Raises `DistributedError` with one line when the environment or rendezvous fails.
    """
    if dist.is_available() and dist.is_initialized():
        return current_context()
    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed support")
    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise DistributedError(
            f"a distributed run needs torchrun's environment ({', '.join(missing)} not set): launch with "
            "`torchrun --nproc-per-node N -m mmoe_inspect.cli report ...`"
        )
    dev = torch.device(device)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    timeout = timedelta(seconds=timeout_s if timeout_s is not None else DEFAULT_TIMEOUT_S)
    if backend == "nccl":  # collectives run on this rank's GPU
        torch.cuda.set_device(dev if dev.index is not None else int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group(backend, init_method="env://", timeout=timeout)
    except Exception as exc:
        raise DistributedError(
            f"could not join the process group ({backend}, {os.environ.get('MASTER_ADDR')}:"
            f"{os.environ.get('MASTER_PORT')}): {first_line(exc)}"
        ) from None
    return replace(current_context(timeout_s=timeout.total_seconds()), owns_group=True)


@functools.cache
def _control_group(backend: str, world: int, timeout_s: float) -> Any:
    # one gloo group per default group (created collectively, the same way on every rank)
    if backend == "gloo":
        return dist.group.WORLD
    return dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))


def current_context(timeout_s: float | None = None) -> DistContext:
    """The context of an initialized default process group (as `inspect(..., distributed=True)` uses it)."""
    if not (dist.is_available() and dist.is_initialized()):
        raise DistributedError(
            "distributed=True needs an initialized torch.distributed process group "
            "(torch.distributed.init_process_group, or launch the CLI with torchrun)"
        )
    backend = str(dist.get_backend())
    world = dist.get_world_size()
    control = _control_group(backend, world, timeout_s if timeout_s is not None else DEFAULT_TIMEOUT_S)
    return DistContext(
        rank=dist.get_rank(),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        group=dist.group.WORLD,
        control=control,
        backend=backend,
    )


def shutdown(ctx: DistContext | None) -> None:
    """Destroy the process group if `init_from_env` created it."""
    if ctx is not None and ctx.owns_group and dist.is_initialized():
        # no rank tears the group down while another still talks on it (a peer already gone: no wait)
        with contextlib.suppress(Exception):
            dist.barrier(group=ctx.control)
        _control_group.cache_clear()
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- status exchanges
def exchange(ctx: DistContext, value: Any = None, error: BaseException | None = None) -> list[Any]:
    """Every rank's `value` (a status exchange, on the control group); raises if any rank sent an error.

    The raised error is the lowest failing rank's own exception (re-raised as is on that rank; on the
    others a copy whose message starts with "rank R:"), marked as seen by every rank.
    """
    payload = (rank_error_payload(ctx.rank, error) if error is not None else None, value)
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, payload, group=ctx.control)
    failures = [p[0] for p in gathered if p[0] is not None]
    if failures:
        rank, blob, text = failures[0]
        exc = error if error is not None and rank == ctx.rank else _peer_error(rank, blob, text)
        setattr(exc, _AGREED, True)
        raise exc
    return [p[1] for p in gathered]


def checkpoint(ctx: DistContext | None) -> None:
    """A status exchange: returns when every rank got here healthy, raises a failed rank's error."""
    if ctx is not None and ctx.world_size > 1:
        exchange(ctx)


@contextmanager
def agreed_errors(ctx: DistContext | None) -> Iterator[None]:
    """Exchange an error raised inside (once; an error already exchanged passes through), and pass a
    checkpoint on leaving normally. A no-op without a context or with one rank."""
    if ctx is None or ctx.world_size == 1:
        yield
        return
    try:
        yield
    except BaseException as exc:
        if getattr(exc, _AGREED, False) or isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        exchange(ctx, error=exc)
        raise
    checkpoint(ctx)


def with_agreed_errors(distributed_arg: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorate a function whose keyword `distributed_arg` turns a distributed run on: errors raised in it
    are exchanged (see `agreed_errors`)."""

    def wrap(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> T:
            if not kwargs.get(distributed_arg):
                return fn(*args, **kwargs)
            with agreed_errors(current_context()):
                return fn(*args, **kwargs)

        return inner

    return wrap


def rank_error_payload(rank: int, error: BaseException) -> tuple[int, bytes | None, str]:
    """`(rank, pickled exception or None, "Type: first line")`: what a failed rank sends."""
    text = f"{type(error).__name__}: {first_line(error)}"
    try:
        blob: bytes | None = pickle.dumps(error)
        pickle.loads(blob)
    except Exception:
        blob = None
    return rank, blob, text


def _peer_error(rank: int, blob: bytes | None, text: str) -> BaseException:
    """Another rank's error, same class where it unpickles (so the CLI maps it to the same exit code)."""
    if blob is not None:
        try:
            exc = pickle.loads(blob)
            if isinstance(exc, BaseException) and exc.args and isinstance(exc.args[0], str):
                exc.args = (f"rank {rank}: {exc.args[0]}", *exc.args[1:])
                return exc
        except Exception:
            pass
    return DistributedError(f"rank {rank} failed: {text}")


# ----------------------------------------------------------------------------- statistics
def _always() -> bool:
    return True


def _never() -> bool:
    return False


def sync_options(ctx: DistContext | None, device: torch.device) -> dict[str, Any]:
    """torchmetrics keyword arguments: sync on `compute()` over this run's group, or never sync.

    Without a context the statistics never sync, even when the caller has a process group of its own
    (inspecting on one rank of a training job must not wait for the other ranks).
    """
    if ctx is None:
        return {"distributed_available_fn": _never}
    return {"distributed_available_fn": _always, "process_group": ctx.sync_group(device)}


def configure_sync(metric: Any, ctx: DistContext | None, device: torch.device) -> Any:
    """Set `sync_options` on an already built torchmetrics Metric; returns it."""
    for key, value in sync_options(ctx, device).items():
        setattr(metric, key, value)
    return metric
