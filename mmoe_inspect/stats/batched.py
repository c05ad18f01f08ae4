"""`update_gates`: every gate's `GateStats` and the `PairwiseRoutingStats` of a batch in one stacked pass.

Per gate, `GateStats.update` runs ~40 small tensor ops (~10-20 µs each on a CPU core, whatever the
size of a ``[4096, 8]`` gate), and `PairwiseRoutingStats.update` casts the same gates and takes their
entropies again. Stacking the ``G`` gates that share a configuration into ``[G, B, E]`` runs each op
once for all of them (one cast, one entropy pass shared with the pairwise statistics, one batched
``gᵀg``, one ``bincount`` with per-gate offsets), then adds each gate's slice to its own states. The
states, and so every summary, merge and sync, are the same as with one ``update`` per gate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mmoe_inspect.functional.routing import xlogx
from mmoe_inspect.stats._base import batch_row_index, reservoir_insert, row_keys
from mmoe_inspect.stats.gate import GateStats
from mmoe_inspect.stats.pairwise import PairwiseRoutingStats

__all__ = ["update_gates"]

_F64 = torch.float64


def _as_2d(g: Tensor) -> Tensor:
    return g.squeeze(-1) if g.ndim == 3 and g.shape[-1] == 1 else g


def update_gates(
    gate_stats: Mapping[str, GateStats],
    gates: Mapping[str, Tensor],
    labels: Tensor | None = None,
    row_index: Tensor | None = None,
    pairwise: Sequence[PairwiseRoutingStats] = (),
) -> None:
    """Add one batch to every gate's stats and to each pairwise stats; same states as separate updates.

    ``gates {name: [batch, E]}`` holds every gate of ``gate_stats`` (and of each ``pairwise``),
    ``labels [batch, L]`` and ``row_index [batch]`` are passed to each `GateStats` as in
    `GateStats.update`. Gates whose stats agree on experts, bins, labels, reservoir, seed, device
    and input dtype are stacked; on CPU a batch where every weight is finite takes the stacked pass
    (one host read of the total decides), otherwise, and on the sync-free accelerator path, each
    stat gets its own ``update``.
    """
    groups: dict[tuple, list[str]] = {}
    for name, st in gate_stats.items():
        g = _as_2d(gates[name])
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
            tuple(g.shape),
        )
        groups.setdefault(key, []).append(name)
    shared: dict[str, tuple[Tensor, Tensor, int]] = {}  # name -> (stack [G, B, E], Σ x log x [G, B], slot)
    for key, names in groups.items():
        sts = [gate_stats[n] for n in names]
        sync_free = key[7]
        g0 = _as_2d(gates[names[0]])
        if sync_free or len(names) == 1 or g0.ndim != 2 or g0.shape[1] != sts[0].n_experts:
            for n, st in zip(names, sts, strict=True):
                st.update(gates[n], labels, row_index)
            continue
        s = torch.stack([_as_2d(gates[n]).detach() for n in names]).to(device=sts[0].device, dtype=_F64)
        rsum = s.sum(2)  # [G, B]
        if not math.isfinite(float(rsum.sum())):  # a non-finite row: the masked per-gate path
            for n, st in zip(names, sts, strict=True):
                st.update(gates[n], labels, row_index)
            continue
        neg_h = _update_stacked(sts, s, rsum, g0.dtype, labels, row_index)
        for i, n in enumerate(names):
            shared[n] = (s, neg_h, i)
    for ps in pairwise:
        have = [shared.get(n) for n in ps.gate_names]
        if all(h is not None for h in have) and len({id(h[0]) for h in have}) == 1:  # type: ignore[index]
            s, neg_h, _ = have[0]  # type: ignore[misc]
            order = [h[2] for h in have]  # type: ignore[index]
            if order != list(range(s.shape[0])):  # a subset or another order of the stacked gates
                idx = torch.tensor(order, device=s.device)
                s, neg_h = s.index_select(0, idx), neg_h.index_select(0, idx)
            ps._computed = None
            ps._update_count += 1
            ps._accumulate(s, neg_h)
        else:
            ps.update({n: gates[n] for n in ps.gate_names})


def _update_stacked(
    sts: Sequence[GateStats],
    s: Tensor,
    rsum: Tensor,
    in_dtype: torch.dtype,
    labels: Tensor | None,
    row_index: Tensor | None,
) -> Tensor:
    """`GateStats.update` for ``G`` gates at once on finite ``s [G, B, E]`` float64; returns ``Σ x log x [G, B]``."""
    st0 = sts[0]
    g_n, b, e = s.shape
    nb, eb = st0.n_bins, st0.entropy_bins
    width = st0._dummy_slot + 1
    sum_w = s.sum(1)  # [G, E]
    outer = torch.bmm(s.transpose(1, 2), s)  # [G, E, E]
    neg_h = xlogx(s).sum(2)  # [G, B] = -entropy
    h = neg_h.neg()
    sum_h = h.sum(1)
    sum_h2 = (h * h).sum(1)
    not_normalized = ((rsum - 1.0).abs_() > GateStats.normalization_tolerance(in_dtype)).sum(1)
    # One bincount over [G, B, E + 2] slots, gate i's slots offset by i * width (see GateStats.update).
    slots = torch.empty(g_n, b, e + 2, dtype=torch.int64, device=s.device)
    slots[..., :e].copy_((s * nb).clamp_(0, nb - 1)).add_(st0._bin_offsets)
    slots[..., e].copy_((h * (eb / st0.entropy_max)).clamp_(0, eb - 1))
    slots[..., e].add_(st0._ent0)
    torch.add(s.max(2).indices, st0._top0, out=slots[..., e + 1])
    slots.add_((torch.arange(g_n, device=s.device) * width)[:, None, None])
    counts = torch.bincount(slots.view(-1), minlength=g_n * width).view(g_n, width)
    lab = None
    if labels is not None:
        nl = len(st0.label_names)
        lab = labels.detach().to(device=s.device, dtype=_F64)
        if lab.ndim == 1 and nl == 1:
            lab = lab[:, None]
        if lab.shape != (b, nl):
            raise ValueError(
                f"expected labels of shape [{b}, {nl}] for label_names {st0.label_names}, got {tuple(labels.shape)}"
            )
        fin = torch.isfinite(lab)
        pos = fin & (lab > 0.5)
        lab_all = torch.matmul(fin.to(_F64).T, s)  # [G, L, E]
        lab_pos = torch.matmul(pos.to(_F64).T, s)
        lab_n, lab_pos_n = fin.sum(0), pos.sum(0)
    given = None if row_index is None else batch_row_index(row_index, st0.rows_seen, b, s.device)
    for i, st in enumerate(sts):
        st._computed = None
        st._update_count += 1
        rows = given if given is not None else batch_row_index(None, st.rows_seen, b, s.device)
        st.rows_seen.add_(b)
        st.sum_w.add_(sum_w[i])
        st.sum_outer.add_(outer[i])
        st.sum_h.add_(sum_h[i])
        st.sum_h2.add_(sum_h2[i])
        st.not_normalized.add_(not_normalized[i])
        c = counts[i]
        st.hist.add_(c[: st._ent0].view(e, nb))
        st.entropy_hist.add_(c[st._ent0 : st._top0])
        st.top1.add_(c[st._top0 : st._dummy_slot])
        if lab is not None:
            st.lab_all_sum_w.add_(lab_all[i])
            st.lab_pos_sum_w.add_(lab_pos[i])
            st.lab_n.add_(lab_n)
            st.lab_pos_n.add_(lab_pos_n)
        if st.reservoir_size:
            keys = row_keys(rows, st.seed, False)
            st.reservoir = reservoir_insert(st.reservoir, keys, rows, s[i], False)
    return neg_h
