"""Shared machinery of the streaming statistics: summary-returning metrics and key-ordered reservoirs."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric


class SummaryMetric(Metric):
    """A `torchmetrics.Metric` whose ``compute()`` returns a frozen summary dataclass.

    ``sync_free`` (None = auto) selects the update path, see `_sync_free`; other keyword arguments
    (``dist_sync_fn``, ``process_group``, ...) go to `torchmetrics.Metric`.

    The base class post-processes ``compute()`` output with ``apply_to_collection`` (rejects frozen
    dataclasses) and squeezes one-element tensors (a ``[1]`` per-label tensor would lose its dim).
    This keeps the base's distributed sync context and caching and returns the summary as built;
    ``compute()`` implementations must therefore return fresh tensors, never state aliases.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, *, sync_free: bool | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sync_free = sync_free

    def _sync_free(self, device: torch.device) -> bool:
        """Whether ``update`` must avoid host reads: ``sync_free`` if set, else True off CPU.

        On CPU a few small tensors are read on the host to skip masking when every row is finite
        and to pre-filter sampled rows (not a device sync); both paths give the same statistics.
        """
        return self.sync_free if self.sync_free is not None else device.type != "cpu"

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """Add another shard's state (a metric of the same class or its ``metric_state``) to this one.

        Same as `torchmetrics.Metric.merge_state`, and also drops a cached ``compute()`` result.
        """
        super().merge_state(incoming_state)
        self._computed = None

    def _wrap_compute(self, compute: Callable) -> Callable:
        @functools.wraps(compute)
        def wrapped_func(*args: Any, **kwargs: Any) -> Any:
            if self._computed is not None:
                return self._computed
            with self.sync_context(
                dist_sync_fn=self.dist_sync_fn,
                should_sync=self._to_sync,
                should_unsync=self._should_unsync,
            ):
                value = compute(*args, **kwargs)
            if self.compute_with_cache:
                self._computed = value
            return value

        return wrapped_func


def empty_reservoir(size: int, width: int) -> Tensor:
    """An empty reservoir state ``[2 * size, 2 + width]`` (key ``+inf``, row index ``-1``, values NaN).

    A reservoir of ``size`` rows keeps up to ``2 * size`` candidates: column 0 is the key, column 1
    the row index, the rest the row. Finite keys always form a prefix; after every compaction
    rows ``[0, size)`` hold the ``size`` smallest keys in order, so ``state[size - 1, 0]`` bounds the
    keys worth keeping. Only ``reservoir_rows`` (the ``size`` smallest) is meaningful.
    """
    state = torch.full((2 * size, 2 + width), float("nan"), dtype=torch.float64)
    state[:, 0] = float("inf")
    state[:, 1] = -1.0
    return state


def _compact(rows: Tensor, capacity: int) -> Tensor:
    """The ``capacity // 2`` smallest-key rows of ``rows [m, C]``, sorted, padded to ``[capacity, C]``."""
    keep = torch.sort(rows[:, 0], stable=True).indices[: capacity // 2]
    out = torch.empty(capacity, rows.shape[1], dtype=rows.dtype, device=rows.device)
    out[: keep.shape[0]] = rows[keep]
    out[keep.shape[0] :, 0] = float("inf")
    out[keep.shape[0] :, 1] = -1.0
    out[keep.shape[0] :, 2:] = float("nan")
    return out


def reservoir_reduce(stacked: Tensor) -> Tensor:
    """Merge stacked reservoir states ``[P, 2k, C] -> [2k, C]`` keeping the k smallest keys of the union.

    Used as ``dist_reduce_fx``: `merge_state` passes ``stack([incoming, local])`` and the distributed
    sync passes ``stack(per-rank states)``, so both paths give the same rows as one pass.
    """
    return _compact(stacked.reshape(-1, stacked.shape[-1]), stacked.shape[-2])


def reservoir_insert(state: Tensor, keys: Tensor, index: Tensor, rows: Tensor, sync_free: bool) -> Tensor:
    """Offer rows to a reservoir state ``[2k, 2 + W]``; returns the new (possibly in-place updated) state.

    ``keys [b]`` (``+inf`` = never keep), ``index [b]`` int64 row indices, ``rows [b, W]`` float64.
    CPU (``sync_free=False``): rows with a key below ``state[k - 1, 0]`` (few, once the stream is
    long) are appended after the filled prefix; a sort-and-compact runs only when the buffer
    overflows or is not yet full. Accelerators (``sync_free=True``): fixed-size ``topk`` + sort
    every call, no host reads. Both keep the same k smallest keys.
    """
    cap = state.shape[0]
    k = cap // 2
    if k == 0 or keys.numel() == 0:
        return state
    if sync_free:
        sel = torch.topk(keys, min(k, keys.shape[0]), largest=False, sorted=False).indices
    else:
        sel = torch.nonzero(keys < state[k - 1, 0]).squeeze(1)
        if sel.numel() == 0:
            return state
    cand = torch.cat([keys[sel, None], index[sel, None].to(torch.float64), rows[sel]], dim=1)
    if not sync_free and bool(torch.isfinite(state[k - 1, 0])):
        # The first k slots are a compacted prefix: only the append buffer [k, 2k) needs counting.
        fill = k + int(torch.isfinite(state[k:, 0]).sum())
        if fill + cand.shape[0] <= cap:
            state[fill : fill + cand.shape[0]] = cand
            return state
    return _compact(torch.cat([state, cand], dim=0), cap)


def reservoir_rows(state: Tensor) -> tuple[Tensor, Tensor]:
    """The sample held by a reservoir state: ``(rows [k', W] float64, row_index [k'] int64)`` by key."""
    rows = _compact(state, state.shape[0])[: state.shape[0] // 2]
    filled = torch.isfinite(rows[:, 0])
    return rows[filled, 2:].clone(), rows[filled, 1].to(torch.int64)


def batch_row_index(row_index: Tensor | None, rows_seen: Tensor, batch: int, device: torch.device) -> Tensor:
    """Row indices ``int64 [batch]``: the given ones, or ``rows_seen + arange(batch)`` (running counter)."""
    if row_index is None:
        return rows_seen + torch.arange(batch, device=device)
    row_index = row_index.reshape(-1).to(device=device, dtype=torch.int64)
    if row_index.shape[0] != batch:
        raise ValueError(f"row_index has {row_index.shape[0]} entries for a batch of {batch} rows")
    return row_index


def capped_sample(keys: Tensor, cap: int, sync_free: bool) -> tuple[Tensor, Tensor | None]:
    """Rows with a finite key, at most ``cap`` (smallest keys): ``(indices [m], 0/1 weights [m] | None)``.

    CPU: exact selection (``weights`` None). Accelerators: fixed-size ``topk(cap)`` with 0/1
    weights marking the selected rows that really have a finite key (no host reads).
    """
    if sync_free:
        sel = torch.topk(keys, cap, largest=False, sorted=False).indices
        return sel, torch.isfinite(keys[sel]).to(torch.float64)
    sel = torch.nonzero(torch.isfinite(keys)).squeeze(1)
    if sel.numel() > cap:
        sel = sel[torch.topk(keys[sel], cap, largest=False, sorted=False).indices]
    return sel, None


class Workspace:
    """Scratch tensors reused across updates by name; reallocated only when shape, dtype or device change.

    A stacked statistics pass makes several temporaries of a chunk's size (MBs); allocated afresh
    on every update, the allocator hands each back to the OS and the next update page-faults it
    in again (fresh vs reused: `bench/results/small_ops.md`).
    A tensor taken from here is valid until the next ``get`` of the same name.
    """

    def __init__(self) -> None:
        self._bufs: dict[str, Tensor] = {}

    def get(self, name: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialized ``[*shape]`` tensor of ``dtype`` on ``device``, the same one as last time if it fits."""
        buf = self._bufs.get(name)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype or buf.device != device:
            buf = torch.empty(tuple(shape), dtype=dtype, device=device)
            self._bufs[name] = buf
        return buf


def stack_gates(
    gates: Sequence[Tensor | Sequence[Tensor]],
    device: torch.device | str | None = None,
    workspace: Workspace | None = None,
) -> Tensor:
    """``G`` gates ``[batch, E]`` (same shape) as one float64 ``[G, E, batch]`` tensor (the one cast).

    Experts-by-rows layout: reductions over the experts of each row (row sums, entropies, the top-1
    expert) run over ``E`` contiguous row vectors, several times faster on CPU than over ``batch``
    short rows of ``E``. A gate may also come as a sequence of row blocks ``[b_k, E]`` (the batches of
    a chunk, `StatsFeed`): each block is copied to its columns, the same tensor as stacking their
    concatenation, without making it (one pass over the rows less: two gates of 4 x 4096 rows, 144 us
    against 184 us at 2 threads, 142 against 151 at 1). With ``workspace`` the result lives there
    (valid until the next stack).
    """
    blocks = [[g] if isinstance(g, Tensor) else list(g) for g in gates]
    g0 = blocks[0][0]
    shape = (len(blocks), g0.shape[1], sum(b.shape[0] for b in blocks[0]))
    dev = torch.device(device) if device is not None else g0.device
    if workspace is not None:
        out = workspace.get("stack", shape, torch.float64, dev)
    else:
        out = torch.empty(shape, dtype=torch.float64, device=dev)
    for i, parts in enumerate(blocks):
        if len(parts) == 1:
            out[i].copy_(parts[0].detach().T)
            continue
        off = 0
        for b in parts:
            n = b.shape[0]
            out[i, :, off : off + n].copy_(b.detach().T)
            off += n
    return out
