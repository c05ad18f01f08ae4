"""Per-row routing differences between gates over the same experts (e.g. the task gates of an MMoE)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mmoe_inspect.functional.routing import js_divergence, xlogx
from mmoe_inspect.stats._base import SummaryMetric, Workspace, stack_gates

__all__ = ["PairwiseRoutingStats", "PairwiseRoutingSummary"]

_F64 = torch.float64


@dataclass(frozen=True, eq=False)
class PairwiseRoutingSummary:
    """What `PairwiseRoutingStats.compute` returns for ``G`` gates; matrices are symmetric, zero diagonal.

    ``jsd``/``tv`` average the per-row divergence over rows (tells gates that route each row
    differently even when their mean weights agree); ``mean_gate_jsd`` compares mean gates.
    """

    gate_names: tuple[str, ...]
    n: int  # rows where every gate was finite
    nonfinite_rows: int
    jsd: Tensor  # [G, G] mean per-row Jensen-Shannon divergence (nats, <= log 2)
    tv: Tensor  # [G, G] mean per-row total-variation distance (<= 1)
    mean_gate_jsd: Tensor  # [G, G] JSD between the gates' mean weights
    mean_gates: Tensor  # [G, E]


class PairwiseRoutingStats(SummaryMetric):
    """Streaming mean per-row JSD and total variation between every pair of ``G`` gates over ``E`` experts.

    ``update({name: gates [batch, E]})`` takes every gate on the same rows, casts each to float64
    once, computes ``Σ_e g log g`` once per gate and the mixture term once per pair (``G(G-1)/2``
    pairs, batched), and adds row sums to ``[pairs]`` states. Rows where any gate is non-finite are
    counted and skipped. All states are SUM states, so merging and DDP sync are exact.
    For per-row scatter plots, give each gate's `GateStats` the same ``seed`` and ``row_index``:
    their reservoirs then hold the same rows.

    Example::

        >>> stats = PairwiseRoutingStats(["ctr", "cvr"], 4)
        >>> g = torch.softmax(torch.randn(64, 4), dim=1)
        >>> stats.update({"ctr": g, "cvr": g})
        >>> float(stats.compute().jsd[0, 1])
        0.0
    """

    def __init__(
        self, gate_names: Sequence[str], n_experts: int, *, sync_free: bool | None = None, **kwargs: Any
    ) -> None:
        super().__init__(sync_free=sync_free, **kwargs)
        self.gate_names = tuple(str(x) for x in gate_names)
        if len(set(self.gate_names)) != len(self.gate_names) or not self.gate_names:
            raise ValueError(f"gate_names must be non-empty and unique, got {self.gate_names}")
        if n_experts < 1:
            raise ValueError(f"n_experts must be >= 1, got {n_experts}")
        self.n_experts = int(n_experts)
        g = len(self.gate_names)
        pairs = torch.triu_indices(g, g, offset=1)
        self._workspace = Workspace()  # scratch tensors of `_accumulate`
        self.register_buffer("_pair_i", pairs[0], persistent=False)
        self.register_buffer("_pair_j", pairs[1], persistent=False)
        n_pairs = pairs.shape[1]
        self.add_state("rows_seen", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("nonfinite", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("sum_jsd", torch.zeros(n_pairs, dtype=_F64), dist_reduce_fx="sum")
        self.add_state("sum_tv", torch.zeros(n_pairs, dtype=_F64), dist_reduce_fx="sum")
        self.add_state("sum_w", torch.zeros(g, self.n_experts, dtype=_F64), dist_reduce_fx="sum")

    def update(self, gates: Mapping[str, Tensor]) -> None:
        """Add a batch: ``{gate name: weights [batch, E] (or [batch, E, 1])}`` for every gate, same rows."""
        if set(gates) != set(self.gate_names):
            raise ValueError(f"expected gates {self.gate_names}, got {tuple(gates)}")
        mats = []
        for name in self.gate_names:
            x = gates[name]
            if x.ndim == 3 and x.shape[-1] == 1:
                x = x.squeeze(-1)
            if x.ndim != 2 or x.shape[1] != self.n_experts or (mats and x.shape[0] != mats[0].shape[0]):
                raise ValueError(f"gate {name!r}: expected [batch, {self.n_experts}], got {tuple(x.shape)}")
            mats.append(x)
        t = stack_gates(mats, self.device, self._workspace)  # [G, E, B] float64
        all_ok = not self._sync_free(t.device) and math.isfinite(float(t.sum()))  # one host read on CPU
        if not all_ok:
            ok = torch.isfinite(t.sum(1)).all(0)  # [B]
            t = torch.where(ok, t, 0.0)
            self.nonfinite.add_((~ok).sum())
        self._accumulate(t)

    def _accumulate(self, t: Tensor, neg_h: Tensor | None = None, sum_w: Tensor | None = None) -> None:
        """Add the rows of ``t [G, E, B]`` (float64, masked rows zeroed); ``neg_h [G, B]`` = ``Σ_e x log x``
        and ``sum_w [G, E]`` = ``Σ_rows x`` if known.

        `mmoe_inspect.stats.update_gates` calls this with the stacked gates, their per-row
        ``Σ x log x`` and their sums, already computed for the gates' `GateStats`.
        """
        self.rows_seen.add_(t.shape[2])
        self.sum_w.add_(t.sum(2) if sum_w is None else sum_w)
        if self._pair_i.numel() == 0:
            return
        ws = self._workspace
        if neg_h is None:
            neg_h = xlogx(t).sum(1)  # [G, B]
        shape = (self._pair_i.shape[0], *t.shape[1:])  # [pairs, E, B]
        m = ws.get("m", shape, t.dtype, t.device)  # p + q, then the mixture (p + q) / 2
        d = ws.get("d", shape, t.dtype, t.device)  # p - q
        k = 0
        for i in range(t.shape[0] - 1):  # pairs (i, i + 1), ..., (i, G - 1): triu_indices order, no gather
            n = t.shape[0] - 1 - i
            torch.add(t[i : i + 1], t[i + 1 :], out=m[k : k + n])
            torch.sub(t[i : i + 1], t[i + 1 :], out=d[k : k + n])
            k += n
        # JSD = H(m) - (H(p) + H(q)) / 2 with Σ x log x computed once per gate.
        m.mul_(0.5)
        tmp = torch.clamp_min(m, torch.finfo(m.dtype).tiny, out=ws.get("tmp", shape, t.dtype, t.device))
        mix = tmp.log_().mul_(m).sum(1)  # [pairs, B]
        jsd = (neg_h[self._pair_i] + neg_h[self._pair_j]).mul_(0.5).sub_(mix).clamp_min_(0)
        self.sum_jsd.add_(jsd.sum(1))
        self.sum_tv.add_(d.abs_().sum((1, 2)).mul_(0.5))

    def compute(self) -> PairwiseRoutingSummary:
        """Mean per-row divergences as ``[G, G]`` matrices (NaN before any finite row)."""
        n_int = int(self.rows_seen - self.nonfinite)
        n = float(n_int)
        g = len(self.gate_names)
        jsd = torch.zeros(g, g, dtype=_F64, device=self.sum_jsd.device)
        tv = torch.zeros_like(jsd)
        jsd[self._pair_i, self._pair_j] = self.sum_jsd / n
        tv[self._pair_i, self._pair_j] = self.sum_tv / n
        mean_gates = self.sum_w / n
        return PairwiseRoutingSummary(
            gate_names=self.gate_names,
            n=n_int,
            nonfinite_rows=int(self.nonfinite),
            jsd=jsd + jsd.T,
            tv=tv + tv.T,
            mean_gate_jsd=js_divergence(mean_gates[:, None, :], mean_gates[None, :, :]),
            mean_gates=mean_gates,
        )
