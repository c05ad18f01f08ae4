"""`StatsFeed`: hands each forward's captures to the inspection statistics in chunks of several batches.

Every statistics update costs a fixed few dozen small tensor ops, each with a fixed cost whatever
the number of rows (measured in `bench/results/small_ops.md`); on small models (the MMoE paper's 8 experts of 16 units) that fixed
cost rivals the forward pass itself. The statistics are batch-invariant (their states do not
depend on where the batches are cut: property-tested), so coalescing consecutive batches into
chunks of at least ``chunk_rows`` rows gives the same states for a fraction of the per-update
cost. Memory: at most ``chunk_rows`` plus one batch of captured rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmoe_inspect.functional.sampling import row_hash
from mmoe_inspect.stats.batched import update_gates
from mmoe_inspect.stats.expert import ExpertStats
from mmoe_inspect.stats.gate import GateStats
from mmoe_inspect.stats.outputs import TaskOutputStats
from mmoe_inspect.stats.pairwise import PairwiseRoutingStats
from mmoe_inspect.stats.worker import StatsWorker, spare_cores

__all__ = ["SampledRows", "StatsFeed", "sampled_positions"]


def sampled_positions(row_index: Tensor, rate: float, seed: int) -> Tensor | None:
    """Positions ``int64 [k]`` in the batch of the rows with ``row_hash(row_index, seed) < rate`` (the
    expert sample: the same rows for any batching or sharding); None when ``rate >= 1`` (every row).
    Call it on host row indices: the selection then needs no device sync."""
    if rate >= 1.0:
        return None
    return torch.nonzero(row_hash(row_index, seed) < rate).squeeze(1)


class SampledRows:
    """The expert sample's rows of each batch, as `sampled_positions`, cheaper on consecutive rows.

    Hashing a batch's row indices takes about 20 small tensor ops; on a small model that fixed
    cost rivals the forward pass. For a batch of consecutive rows ``start, start + 1, ...`` (a
    DataFrame's or a file's batches without ``sample=``), the rows are hashed ``block`` at a time
    and each batch only looks its rows up (two binary searches on the host). Any other batch is
    hashed on its own. Either way the rows are exactly those of `sampled_positions`.
    """

    def __init__(self, rate: float, seed: int, *, block: int = 65_536) -> None:
        self.rate = float(rate)
        self.seed = int(seed)
        self.block = int(block)
        self._lo = self._hi = 0
        self._sampled = np.empty(0, dtype=np.int64)  # sampled rows in [_lo, _hi), ascending

    def take(self, row_index: Tensor, start: int | None = None) -> tuple[Tensor, Tensor] | None:
        """``(positions, rows)``: positions ``int64 [k]`` in the batch of its rows in the sample and
        their row indices ``row_index[positions]`` (host tensors); None when ``rate >= 1`` (every row).

        ``start`` says that ``row_index`` is ``start, start + 1, ..., start + batch - 1`` (not checked);
        None for any other batch. Call it on host row indices: the selection then needs no device sync.
        """
        if self.rate >= 1.0:
            return None
        if start is None:
            pos = sampled_positions(row_index, self.rate, self.seed)
            assert pos is not None
            return pos, row_index[pos]
        stop = start + int(row_index.shape[0])
        if start < self._lo or stop > self._hi:
            self._lo, self._hi = start, start + max(self.block, stop - start)
            keys = row_hash(torch.arange(self._lo, self._hi, dtype=torch.int64), self.seed)
            self._sampled = torch.nonzero(keys < self.rate).squeeze(1).numpy() + self._lo
        i, j = np.searchsorted(self._sampled, (start, stop))
        rows = self._sampled[i:j]
        return torch.from_numpy(rows - start), torch.from_numpy(rows.copy())


def _cat(parts: list[Any]) -> Any:
    """Concatenate along rows (dim 0) a list of like-structured items: tensors, None, lists, dicts.

    The result is a fresh contiguous tensor unless a single contiguous part is returned as it is.
    """
    first = parts[0]
    if first is None:
        return None
    if isinstance(first, Tensor):
        if len(parts) == 1:
            return first if first.is_contiguous() else first.contiguous()
        return torch.cat(parts, dim=0)
    if isinstance(first, Mapping):
        return {k: _cat([p[k] for p in parts]) for k in first}
    return [_cat([p[i] for p in parts]) for i in range(len(first))]


class _Chunk:
    """Items waiting for one update, and how many batch rows they hold."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.rows = 0

    def add(self, item: Any, rows: int) -> None:
        self.items.append(item)
        self.rows += rows

    def take(self) -> list[Any]:
        """The items added since the last take (concatenate them with `_cat`), and start anew."""
        out = self.items
        self.items, self.rows = [], 0
        return out


class StatsFeed:
    """Feeds gate, pairwise, task-output and expert statistics, coalescing batches into chunks.

    ``add`` one forward's captures; an update runs once at least ``chunk_rows`` rows have been
    added (``chunk_rows <= batch`` updates on every batch); ``flush`` runs the pending updates,
    and must be called once after the last batch. The expert statistics are built on the first
    expert chunk by ``new_expert_stats(dims)`` (their widths are known only then).

    ``background=True`` runs each full chunk's updates (concatenation included) in a `StatsWorker`
    thread while the caller adds the next batches: the same updates on the same chunks in the same
    order, so the same states; at most one chunk is in flight (an ``add`` that fills the next chunk
    first waits for it), so memory stays at two chunks. ``flush``/``wait`` wait for it and raise its
    error, ``close`` stops the thread.
    """

    def __init__(
        self,
        gate_stats: Mapping[str, GateStats],
        pair_stats: Sequence[PairwiseRoutingStats],
        outputs: TaskOutputStats | None,
        new_expert_stats: Callable[[Sequence[int]], ExpertStats] | None = None,
        *,
        chunk_rows: int = 16_384,
        background: bool = False,
    ) -> None:
        self.gate_stats = gate_stats
        self.pair_stats = list(pair_stats)
        self.outputs = outputs
        self.new_expert_stats = new_expert_stats
        self.expert_stats: ExpertStats | None = None
        self.chunk_rows = int(chunk_rows)
        self._main = _Chunk()
        self._experts = _Chunk()
        # chunk updates in a worker thread, overlapping the caller's next forwards (CPU states only)
        self._worker = StatsWorker() if background else None

    def add(
        self,
        gates: Mapping[str, Tensor],
        row_index: Tensor,
        *,
        labels_binary: Tensor | None = None,
        predictions: Tensor | None = None,
        labels: Tensor | None = None,
        experts: Sequence[Tensor] | None = None,
        expert_rows: Tensor | None = None,
        expert_row_index: Tensor | None = None,
    ) -> None:
        """One batch: gates ``{name: [batch, E]}``, ``row_index`` int64 ``[batch]``, binary labels
        ``[batch, L]``, task predictions and labels ``[batch, T]``, expert outputs ``E x [k, d_e]``
        for the rows ``expert_rows`` ``[k]`` of the expert sample (all rows when None), whose row
        indices ``row_index[expert_rows]`` the caller may pass as ``expert_row_index`` (saves an op).

        The tensors are kept until the chunk's update: they must not be modified in place meanwhile
        (views such as a column slice of the labels are fine: the update sees a concatenated copy)."""
        b = int(row_index.shape[0])
        self._main.add(
            {"g": dict(gates), "r": row_index, "lb": labels_binary, "p": predictions, "l": labels}, b
        )
        if experts is not None and self.new_expert_stats is not None:
            if expert_row_index is not None:
                kept = expert_row_index
            else:
                kept = row_index if expert_rows is None else row_index[expert_rows]
            self._experts.add({"x": list(experts), "r": kept}, b)
        main = self._main.take() if self._main.rows >= self.chunk_rows else None
        experts = self._experts.take() if self._experts.rows >= self.chunk_rows else None
        if main is not None or experts is not None:
            self._run(main, experts)

    def flush(self) -> None:
        """Run the pending updates and wait for them (after the last batch; idempotent). An error of
        an update run in the worker is raised here (or by the `add` after it)."""
        main = self._main.take() if self._main.items else None
        experts = self._experts.take() if self._experts.items else None
        if main is not None or experts is not None:
            self._run(main, experts)
        self.wait()

    def wait(self) -> None:
        """Wait for the update in flight in the worker, if any, and raise its error (pending rows stay
        pending: `flush` runs them)."""
        if self._worker is not None:
            self._worker.wait()

    def close(self, *, raise_errors: bool = True) -> None:
        """Stop the worker thread, if any, after the update in flight (idempotent); later updates run
        in the caller. ``raise_errors=False``: an exception is already propagating, drop the worker's."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.close(raise_errors=raise_errors)

    @property
    def background(self) -> bool:
        """Whether chunk updates run in the worker thread."""
        return self._worker is not None

    def _run(self, main: list[Any] | None, experts: list[Any] | None) -> None:
        """The updates of a full chunk. With a worker and a core the caller's torch threads leave spare,
        the whole update goes to the worker and overlaps the next forwards; otherwise (no worker, or
        the torch threads fill the cores: a thread beside them would slow every parallel op of the
        forward, measured in bench/results/recording_threads_session6.md) it runs now in the caller,
        after the update in flight. The same updates on the same rows either way."""
        parts = self._parts(main, experts)
        if self._worker is not None and spare_cores() > 0:
            self._worker.submit(lambda: [part() for part in parts])
            return
        if self._worker is not None:
            self._worker.wait()  # the previous chunk's update first: updates stay in order
        for part in parts:
            part()

    def _parts(self, main: list[Any] | None, experts: list[Any] | None) -> list[Callable[[], None]]:
        """The chunk's updates as independent calls (disjoint states), the costliest first."""
        parts: list[Callable[[], None]] = []
        if main is not None:
            parts.append(lambda: self._update_gates(main))
            if self.outputs is not None and main[0]["p"] is not None:
                parts.append(lambda: self._update_outputs(main))
        if experts is not None:
            parts.append(lambda: self._update_experts(experts))
        return parts

    def _update_gates(self, items: list[dict[str, Any]]) -> None:
        # one stacked pass over the gates (same states as one update per gate and per group); each
        # gate's batches are copied into the stack as they are, not concatenated first (`stack_gates`)
        c = _cat([{k: it[k] for k in ("lb", "r")} for it in items])
        gates = {name: [it["g"][name] for it in items] for name in items[0]["g"]}
        update_gates(self.gate_stats, gates, c["lb"], c["r"], pairwise=self.pair_stats)

    def _update_outputs(self, items: list[dict[str, Any]]) -> None:
        assert self.outputs is not None
        self.outputs.update(_cat([it["p"] for it in items]), _cat([it["l"] for it in items]))

    def _update_experts(self, items: list[dict[str, Any]]) -> None:
        c = _cat(items)
        if c["r"].shape[0] == 0:
            return
        if self.expert_stats is None and self.new_expert_stats is not None:
            self.expert_stats = self.new_expert_stats([x.shape[1] for x in c["x"]])
        if self.expert_stats is not None:
            self.expert_stats.update(c["x"], c["r"])
