"""Streaming statistics of one gate: weights, co-activation, top-1 load, entropy, histograms, reservoir."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mmoe_inspect.functional.routing import (
    cv_squared,
    effective_experts,
    gate_entropy,
    input_dependence,
    switch_balance,
)
from mmoe_inspect.functional.sampling import row_hash
from mmoe_inspect.stats._base import (
    SummaryMetric,
    Workspace,
    batch_row_index,
    empty_reservoir,
    reservoir_insert,
    reservoir_reduce,
    reservoir_rows,
    stack_gates,
)

__all__ = ["GateStats", "GateSummary", "accumulate_gates"]

_F64 = torch.float64
_TINY = torch.finfo(_F64).tiny
_VAR_NOISE = 1e-12  # relative variance treated as rounding noise (see `GateStats.compute`)


@dataclass(frozen=True, eq=False)
class GateSummary:
    """What `GateStats.compute` returns for one gate with ``E`` experts and ``L`` labels.

    Means/variances are over the ``n`` finite rows (population variance). Histogram counts are
    int64; ``*_edges`` hold the bin edges (last bin closed). Label means are NaN where a label
    has no positive (or no negative) rows. The reservoir holds the rows with the smallest
    ``row_hash(row_index, seed)`` keys, ordered by key.
    """

    n: int  # finite rows
    n_experts: int
    mean: Tensor  # [E] mean weight per expert (utilization)
    var: Tensor  # [E] population variance of the weight per expert
    std: Tensor  # [E]
    top1_share: Tensor  # [E] share of rows whose argmax is e (load; rows with no expert count for none)
    coactivation: Tensor  # [E, E] mean outer product E[g gᵀ]
    hist: Tensor  # [E, n_bins] counts of each expert's weight over [0, 1]
    hist_edges: Tensor  # [n_bins + 1]
    entropy_mean: float  # mean per-row entropy (nats)
    entropy_std: float
    entropy_hist: Tensor  # [entropy_bins] counts over [0, log E]
    entropy_edges: Tensor  # [entropy_bins + 1]
    normalized_entropy: float  # entropy_mean / log E (0 when E == 1)
    entropy_of_mean: float  # H(mean gate)
    effective_experts: float  # exp(H(mean gate)) in [1, E]
    importance_cv2: float  # CV² over experts of the summed weights
    load_cv2: float  # CV² over experts of the top-1 counts
    switch_balance: float  # E · Σ f·P, 1 = balanced
    input_dependence: float  # Σ Var / (1 - Σ mean²): 0 constant gate, 1 row-varying one-hot
    polarized_share: float  # share of weights in the first or last histogram bin
    nonfinite_rows: int  # rows with a NaN/inf weight (excluded from everything else)
    not_normalized_rows: int  # finite rows summing to 1 ± max(1e-3, eps(input dtype)) not (included)
    zero_rows: (
        int  # finite rows whose weights are all 0: no expert (dropped by capacity, masked out; included)
    )
    label_names: tuple[str, ...]
    label_n: Tensor  # [L] finite rows with a finite label
    label_pos_n: Tensor  # [L] of which positive (label > 0.5)
    label_pos_mean: Tensor  # [L, E] mean gate over positive rows
    label_neg_mean: Tensor  # [L, E] mean gate over negative rows
    reservoir: Tensor  # [k', E] sampled gate rows (k' <= reservoir_size), float64
    reservoir_index: Tensor  # [k'] their row indices

    def label_means(self, name: str) -> tuple[Tensor, Tensor]:
        """Mean gate ``([E], [E])`` over the positive and the negative rows of label ``name``."""
        i = self.label_names.index(name)
        return self.label_pos_mean[i], self.label_neg_mean[i]


class GateStats(SummaryMetric):
    """Streaming statistics of one gate's weights ``[batch, E]``; all states are exact SUM states.

    Per update, on the float64 cast of the batch (laid out ``[E, batch]``, see `stack_gates`):
    ``Σg`` and ``gᵀg`` (one matmul; its diagonal gives ``Σg²``), per-row entropy, and a single
    ``bincount`` filling the weight histogram ``[E, n_bins]``, the entropy histogram and the top-1
    counts (`accumulate_gates`, which `update_gates` runs once for several gates). Rows with a
    NaN/inf weight are counted and excluded from everything else; finite rows whose weights do
    not sum to 1 within ``max(1e-3, eps(dtype))`` (see `normalization_tolerance`) are counted and
    kept, and so are rows whose weights are all 0 (no expert: a top-1 router's overflow dropped by
    capacity), which are nobody's top-1. With ``labels [batch, L]`` (binary, NaN = missing) it also sums the gate over each
    label's finite and positive rows.

    A reservoir keeps the ``reservoir_size`` rows with the smallest ``row_hash(row_index, seed)``
    keys; it merges exactly (same rows whatever the batching, sharding or merge order). Without
    ``row_index`` a running row counter is used, so a single stream is still batch-invariant, but
    shards (and ``forward``, which restarts the counter per batch) must pass global row indices.

    On CPU, ``update`` reads two small CPU tensors to skip masking when every row is finite and to
    pre-filter reservoir candidates (not a device sync); on accelerators (or with
    ``sync_free=True``) it makes no host reads. Both paths give the same summary.

    Example::

        >>> stats = GateStats(4)
        >>> stats.update(torch.softmax(torch.randn(256, 4), dim=1))
        >>> s = stats.compute()
        >>> s.n, tuple(s.mean.shape), tuple(s.reservoir.shape)
        (256, (4,), (256, 4))
    """

    def __init__(
        self,
        n_experts: int,
        *,
        n_bins: int = 100,
        entropy_bins: int = 50,
        label_names: Sequence[str] = (),
        reservoir_size: int = 2048,
        seed: int = 0,
        sync_free: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(sync_free=sync_free, **kwargs)
        if n_experts < 1 or n_bins < 2 or entropy_bins < 1 or reservoir_size < 0:
            raise ValueError(
                "need n_experts >= 1, n_bins >= 2, entropy_bins >= 1 and reservoir_size >= 0, got "
                f"{n_experts}, {n_bins}, {entropy_bins}, {reservoir_size}"
            )
        self.n_experts = int(n_experts)
        self.n_bins = int(n_bins)
        self.entropy_bins = int(entropy_bins)
        self.label_names = tuple(str(x) for x in label_names)
        self.reservoir_size = int(reservoir_size)
        self.seed = int(seed)
        self.entropy_max = math.log(self.n_experts) if self.n_experts > 1 else 1.0

        e, nl = self.n_experts, len(self.label_names)
        # Layout of the single per-update bincount (see `update`).
        self._ent0 = e * self.n_bins
        self._top0 = self._ent0 + self.entropy_bins
        self._dummy_slot = self._top0 + e
        self._workspace = Workspace()  # scratch tensors of `accumulate_gates`
        self.register_buffer(
            "_bin_offsets", torch.arange(e, dtype=torch.int32) * self.n_bins, persistent=False
        )
        # [E, 1] E - e: picks each row's first maximum (see `accumulate_gates`)
        rank_dtype = torch.uint8 if e < 256 else torch.int32
        self.register_buffer(
            "_rank_weights", torch.arange(e, 0, -1, dtype=rank_dtype)[:, None], persistent=False
        )

        self.add_state("rows_seen", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("nonfinite", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("not_normalized", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("zero_rows", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("sum_w", torch.zeros(e, dtype=_F64), dist_reduce_fx="sum")
        self.add_state("sum_outer", torch.zeros(e, e, dtype=_F64), dist_reduce_fx="sum")
        self.add_state("top1", torch.zeros(e, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("hist", torch.zeros(e, self.n_bins, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("sum_h", torch.tensor(0.0, dtype=_F64), dist_reduce_fx="sum")
        self.add_state("sum_h2", torch.tensor(0.0, dtype=_F64), dist_reduce_fx="sum")
        self.add_state(
            "entropy_hist", torch.zeros(self.entropy_bins, dtype=torch.int64), dist_reduce_fx="sum"
        )
        self.add_state("lab_n", torch.zeros(nl, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("lab_pos_n", torch.zeros(nl, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("lab_pos_sum_w", torch.zeros(nl, e, dtype=_F64), dist_reduce_fx="sum")
        self.add_state("lab_all_sum_w", torch.zeros(nl, e, dtype=_F64), dist_reduce_fx="sum")
        # [2k, 2 + E] candidate buffer: key, row index, gate row (see `empty_reservoir`).
        self.add_state("reservoir", empty_reservoir(self.reservoir_size, e), dist_reduce_fx=reservoir_reduce)

    @staticmethod
    def normalization_tolerance(dtype: torch.dtype) -> float:
        """How far from 1 a row sum may be before the row counts as not normalized.

        ``max(1e-3, eps(dtype))``: a correct bf16 (fp16) softmax misses 1 by up to ~0.4 eps
        (measured: 3.4e-3 for bf16, 4e-4 for fp16), so 1e-3 alone would flag every bf16 gate.
        """
        return max(1e-3, torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-3

    def update(self, gates: Tensor, labels: Tensor | None = None, row_index: Tensor | None = None) -> None:
        """Add a batch: ``gates [batch, E]`` (or ``[batch, E, 1]``), ``labels [batch, L]``, ``row_index [batch]``."""
        if gates.ndim == 3 and gates.shape[-1] == 1:
            gates = gates.squeeze(-1)
        if gates.ndim != 2 or gates.shape[1] != self.n_experts:
            raise ValueError(f"expected gates of shape [batch, {self.n_experts}], got {tuple(gates.shape)}")
        t = stack_gates([gates], self.device, self._workspace)  # [1, E, batch] float64
        accumulate_gates([self], t, gates.dtype, labels, row_index)

    def compute(self) -> GateSummary:
        """Summarize the accumulated rows (NaN means when no finite row was seen)."""
        n_int = int(self.rows_seen - self.nonfinite)
        n = torch.tensor(float(n_int), dtype=_F64, device=self.sum_w.device)
        mean = self.sum_w / n
        ex2 = self.sum_outer.diagonal() / n
        # E[g²] - E[g]² of a weight constant up to rounding is float64 cancellation noise (±1e-20,
        # and unequal across shardings): a variance below 1e-12 E[g²] (std below 1e-6 of the
        # weight, a few float32 ulps) is 0.
        var = ex2 - mean.square()
        var = var.masked_fill(var <= _VAR_NOISE * ex2, 0.0)  # NaN (no rows) stays NaN
        top1_share = self.top1.to(_F64) / n
        h_mean = self.sum_h / n
        h_std = (self.sum_h2 / n - h_mean.square()).clamp_min(0).sqrt()
        hist = self.hist.clone()
        lab_n = self.lab_n.to(_F64)[:, None]
        lab_pos_n = self.lab_pos_n.to(_F64)[:, None]
        h_mean_f = float(h_mean)
        res_rows, res_index = reservoir_rows(self.reservoir)
        return GateSummary(
            n=n_int,
            n_experts=self.n_experts,
            mean=mean,
            var=var,
            std=var.sqrt(),
            top1_share=top1_share,
            coactivation=self.sum_outer / n,
            hist=hist,
            hist_edges=torch.linspace(0.0, 1.0, self.n_bins + 1, dtype=_F64, device=n.device),
            entropy_mean=h_mean_f,
            entropy_std=float(h_std),
            entropy_hist=self.entropy_hist.clone(),
            entropy_edges=torch.linspace(
                0.0, self.entropy_max, self.entropy_bins + 1, dtype=_F64, device=n.device
            ),
            normalized_entropy=h_mean_f / math.log(self.n_experts) if self.n_experts > 1 else 0.0,
            entropy_of_mean=float(gate_entropy(mean)),
            effective_experts=float(effective_experts(mean)),
            importance_cv2=float(cv_squared(self.sum_w)),
            load_cv2=float(cv_squared(self.top1.to(_F64))),
            switch_balance=float(switch_balance(top1_share, mean)),
            input_dependence=float(input_dependence(mean, var)),
            polarized_share=float((hist[:, 0].sum() + hist[:, -1].sum()) / (n * self.n_experts)),
            nonfinite_rows=int(self.nonfinite),
            not_normalized_rows=int(self.not_normalized),
            zero_rows=int(self.zero_rows),
            label_names=self.label_names,
            label_n=self.lab_n.clone(),
            label_pos_n=self.lab_pos_n.clone(),
            label_pos_mean=self.lab_pos_sum_w / lab_pos_n,
            label_neg_mean=(self.lab_all_sum_w - self.lab_pos_sum_w) / (lab_n - lab_pos_n),
            reservoir=res_rows,
            reservoir_index=res_index,
        )


def accumulate_gates(
    stats: Sequence[GateStats],
    t: Tensor,
    in_dtype: torch.dtype,
    labels: Tensor | None = None,
    row_index: Tensor | None = None,
    keys: Tensor | None = None,
) -> tuple[Tensor, Tensor] | None:
    """Add the rows of ``G`` gates ``t [G, E, batch]`` (float64, `stack_gates`) to their like-configured stats.

    One pass for all ``G`` (each op runs once for the stack): ``Σg``, ``g gᵀ`` (one ``bmm``), per-row
    entropies, the label sums (one matmul) and one ``bincount`` with per-gate offsets filling every
    gate's weight histogram, entropy histogram and top-1 counts. ``in_dtype`` is the gates' own dtype
    (for the normalization tolerance). On CPU one host read of the total skips masking when every
    weight is finite; otherwise (and always on the sync-free path) rows with a NaN/inf weight are
    masked per gate. Returns ``(Σ_e g log g [G, batch], Σ_rows g [G, E])`` when every row was
    finite (for `PairwiseRoutingStats` on the same gates), else None. ``keys [batch]`` are the rows'
    ``row_hash(row_index, seed)`` if the caller already has them (several groups of stats hash the same rows).
    """
    st0 = stats[0]
    g_n, e, b = t.shape
    nb, eb = st0.n_bins, st0.entropy_bins
    sync_free = st0._sync_free(t.device)
    rsum = t.sum(1)  # [G, B]
    ok = None if not sync_free and math.isfinite(float(rsum.sum())) else torch.isfinite(rsum)
    if ok is not None:  # None: every row of every gate is finite
        t = torch.where(ok[:, None, :], t, 0.0)
    sum_w = t.sum(2)  # [G, E]
    outer = torch.bmm(t, t.transpose(1, 2))  # [G, E, E]
    ws = st0._workspace
    tmp = ws.get("tmp", t.shape, _F64, t.device)
    neg_h = torch.clamp_min(t, _TINY, out=tmp).log_().mul_(t).sum(1)  # [G, B] Σ_e g log g (0 on masked rows)
    h = neg_h.neg()
    sum_h = h.sum(1)
    sum_h2 = torch.linalg.vecdot(h, h)
    not_normalized = (rsum - 1.0).abs_() > GateStats.normalization_tolerance(in_dtype)
    if ok is not None:
        not_normalized &= ok
    not_normalized = not_normalized.sum(1)

    # One bincount over [G, E + 2, B] int32 slots (int32 converts faster than int64:
    # bench/results/small_ops.md), gate i's
    # offset by i * width: each expert's weight bin, the row's entropy bin and its top-1 expert
    # (the first maximum, like argmax: the maxima of expert e get weight E - e, the largest wins).
    # Masked rows go to the dummy slot.
    width = st0._dummy_slot + 1
    slots = ws.get("slots", (g_n, e + 2, b), torch.int32, t.device)
    slots[:, :e].copy_(torch.mul(t, nb, out=tmp).clamp_(0, nb - 1)).add_(st0._bin_offsets[:, None])
    slots[:, e].copy_((h * (eb / st0.entropy_max)).clamp_(0, eb - 1)).add_(st0._ent0)
    amax = t.amax(1, keepdim=True)  # [G, 1, B]
    is_max = torch.eq(t, amax, out=ws.get("is_max", t.shape, torch.bool, t.device))
    rank = st0._rank_weights
    first_max = (is_max.view(torch.uint8) if rank.dtype == torch.uint8 else is_max.to(rank.dtype)).mul_(rank)
    slots[:, e + 1].copy_(first_max.amax(1)).neg_().add_(st0._top0 + e)
    # a row of zeros (max 0, sum 0: every weight 0) gave no expert any weight (a top-1 router over capacity
    # drops it): it is counted, and is no expert's top-1 (argmax would say expert 0)
    zero = (amax.squeeze(1) == 0) & (rsum == 0)  # [G, B] (masked non-finite rows are zeros too)
    if ok is not None:
        zero &= ok
    slots[:, e + 1].masked_fill_(zero, st0._dummy_slot)
    zero_rows = zero.sum(1)
    if ok is not None:
        slots.masked_fill_(~ok[:, None, :], st0._dummy_slot)
    slots.add_((torch.arange(g_n, dtype=torch.int32, device=t.device) * width)[:, None, None])
    counts = torch.bincount(slots.view(-1), minlength=g_n * width).view(g_n, width)

    lab_sums = lab_counts = None
    if labels is not None:
        nl = len(st0.label_names)
        lab = labels.detach().to(device=t.device, dtype=_F64)
        if lab.ndim == 1 and nl == 1:
            lab = lab[:, None]
        if lab.shape != (b, nl):
            raise ValueError(
                f"expected labels of shape [{b}, {nl}] for label_names {st0.label_names}, "
                f"got {tuple(labels.shape)}"
            )
        fin = torch.isfinite(lab)
        sel = torch.cat([fin, fin & (lab > 0.5)], dim=1)  # [B, 2L]: finite label, positive label
        # [2L, B] @ [B, G·E]: each gate summed over each label's finite rows, then its positive rows
        # (masked rows are zero in t, so they add nothing)
        lab_sums = (sel.T.to(_F64) @ t.view(g_n * e, b).T).view(2, nl, g_n, e).permute(2, 0, 1, 3)
        if ok is None:
            lab_counts = sel.sum(0).expand(g_n, 2 * nl)  # [G, 2L]
        else:
            lab_counts = (ok.to(_F64) @ sel.to(_F64)).round_().long()

    rows = batch_row_index(row_index, st0.rows_seen, b, t.device)
    if keys is None and st0.reservoir_size:
        keys = row_hash(rows, st0.seed)
    nonfinite = None if ok is None else b - ok.sum(1)
    for i, st in enumerate(stats):
        st._computed = None
        st._update_count += 1
        if st.reservoir_size:
            k = keys if ok is None else torch.where(ok[i], keys, torch.inf)
            st.reservoir = reservoir_insert(st.reservoir, k, rows, t[i].T, sync_free)
        st.rows_seen.add_(b)
        if nonfinite is not None:
            st.nonfinite.add_(nonfinite[i])
        st.sum_w.add_(sum_w[i])
        st.sum_outer.add_(outer[i])
        st.sum_h.add_(sum_h[i])
        st.sum_h2.add_(sum_h2[i])
        st.not_normalized.add_(not_normalized[i])
        st.zero_rows.add_(zero_rows[i])
        c = counts[i]
        st.hist.add_(c[: st._ent0].view(e, nb))
        st.entropy_hist.add_(c[st._ent0 : st._top0])
        st.top1.add_(c[st._top0 : st._dummy_slot])
        if lab_sums is not None:
            st.lab_all_sum_w.add_(lab_sums[i, 0])
            st.lab_pos_sum_w.add_(lab_sums[i, 1])
            st.lab_n.add_(lab_counts[i, :nl])
            st.lab_pos_n.add_(lab_counts[i, nl:])
    return (neg_h, sum_w) if ok is None else None
