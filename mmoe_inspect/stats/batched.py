"""`update_gates`: every gate's `GateStats` and the `PairwiseRoutingStats` of a batch in one stacked pass.

Per gate, a statistics update runs a few dozen tensor ops whose fixed cost rivals their work on a
``[4096, 8]`` gate (measured in `bench/results/small_ops.md`), and `PairwiseRoutingStats.update` would cast
the same gates and take their entropies again. Stacking the ``G`` gates that share a configuration
into one ``[G, E, B]`` tensor (`stack_gates`) runs each op once for all of them
(`accumulate_gates`) and hands the per-row entropies to the pairwise statistics. The states, and
so every summary, merge and sync, are the same as with one ``update`` per gate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mmoe_inspect.functional.sampling import row_hash
from mmoe_inspect.stats._base import batch_row_index, stack_gates
from mmoe_inspect.stats.gate import GateStats, accumulate_gates
from mmoe_inspect.stats.pairwise import PairwiseRoutingStats

__all__ = ["update_gates"]


def _as_2d(g: Tensor) -> Tensor:
    return g.squeeze(-1) if g.ndim == 3 and g.shape[-1] == 1 else g


def _blocks(g: Tensor | Sequence[Tensor]) -> list[Tensor]:
    """A gate's row blocks ``[b_k, E]``: one tensor, or the blocks given (joined when their dtypes or
    widths differ, so the blocks of one gate always share them)."""
    if isinstance(g, Tensor):
        return [_as_2d(g)]
    blocks = [_as_2d(b) for b in g]
    if len({(b.dtype, b.shape[1:]) for b in blocks}) > 1:
        return [torch.cat(blocks)]
    return blocks


def _joined(blocks: list[Tensor]) -> Tensor:
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks)


def update_gates(
    gate_stats: Mapping[str, GateStats],
    gates: Mapping[str, Tensor | Sequence[Tensor]],
    labels: Tensor | None = None,
    row_index: Tensor | None = None,
    pairwise: Sequence[PairwiseRoutingStats] = (),
) -> None:
    """Add one batch to every gate's stats and to each pairwise stats; same states as separate updates.

    ``gates {name: [batch, E]}`` holds every gate of ``gate_stats`` (and of each ``pairwise``), each
    a tensor or a sequence of row blocks ``[b_k, E]`` whose concatenation is the batch (a chunk's
    batches, stacked without concatenating them first: `stack_gates`),
    ``labels [batch, L]`` and ``row_index [batch]`` are passed to each `GateStats` as in
    `GateStats.update`. Gates whose stats agree on experts, bins, labels, reservoir, seed, device
    and input dtype are stacked. A pairwise stats whose gates were stacked together, all finite,
    reuses their per-row entropies; otherwise it gets its own ``update``.
    """
    groups: dict[tuple, list[str]] = {}
    blocks = {name: _blocks(gates[name]) for name in gate_stats}
    for name, st in gate_stats.items():
        g = blocks[name][0]
        if g.ndim != 2 or g.shape[1] != st.n_experts:  # let `update` raise its error
            st.update(_joined(blocks[name]), labels, row_index)
        key = (
            st.n_experts,
            st.n_bins,
            st.entropy_bins,
            st.label_names,
            st.reservoir_size,
            st.seed,
            st.device,
            st._sync_free(st.device),
            g.dtype,
            (sum(b.shape[0] for b in blocks[name]), *g.shape[1:]),
        )
        groups.setdefault(key, []).append(name)
    shared: dict[str, tuple[Tensor, Tensor, Tensor, int]] = {}  # name -> (t, Σ x log x, Σ g, slot)
    keys: dict[tuple[int, torch.device], Tensor] = {}  # the rows' reservoir keys by seed (given row_index)
    for key, names in groups.items():
        sts = [gate_stats[n] for n in names]
        st0 = sts[0]
        t = stack_gates([blocks[n] for n in names], st0.device, st0._workspace)  # [G, E, B]
        k = None
        if row_index is not None and st0.reservoir_size:
            kk = (st0.seed, t.device)
            if kk not in keys:
                keys[kk] = row_hash(batch_row_index(row_index, st0.rows_seen, t.shape[2], t.device), st0.seed)
            k = keys[kk]
        finite = accumulate_gates(sts, t, key[8], labels, row_index, k)
        if finite is not None:
            for i, n in enumerate(names):
                shared[n] = (t, *finite, i)
    for ps in pairwise:
        have = [shared.get(n) for n in ps.gate_names]
        if all(h is not None for h in have) and len({id(h[0]) for h in have}) == 1:  # type: ignore[index]
            t, neg_h, sum_w, _ = have[0]  # type: ignore[misc]
            order = [h[3] for h in have]  # type: ignore[index]
            if order != list(range(t.shape[0])):  # a subset or another order of the stacked gates
                t, neg_h, sum_w = t[order], neg_h[order], sum_w[order]
            ps._computed = None
            ps._update_count += 1
            ps._accumulate(t, neg_h, sum_w)
        else:
            ps.update({n: _joined(_blocks(gates[n])) for n in ps.gate_names})
