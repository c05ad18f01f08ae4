"""Per-row routing differences between gates over the same experts (e.g. the task gates of an MMoE)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mmoe_inspect.functional.routing import js_divergence, xlogx
from mmoe_inspect.stats._base import SummaryMetric

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
            mats.append(x.detach().to(device=self.device, dtype=_F64))
        s = torch.stack(mats)  # [G, B, E]
        all_ok = not self._sync_free(s.device) and math.isfinite(float(s.sum()))  # one host read on CPU
        if not all_ok:
            ok = torch.isfinite(s.sum(2)).all(0)  # [B]
            s = torch.where(ok[None, :, None], s, 0.0)
            self.nonfinite.add_((~ok).sum())
        self._accumulate(s)

    def _accumulate(self, s: Tensor, neg_h: Tensor | None = None) -> None:
        """Add rows of ``s [G, B, E]`` (float64, masked rows zeroed); ``neg_h [G, B]`` = ``Σ_e x log x`` if known.

        `mmoe_inspect.stats.update_gates` calls this with the stacked gates and the per-row
        ``Σ x log x`` it already computed for the gates' `GateStats` (one cast and one entropy pass).
        """
        self.rows_seen.add_(s.shape[1])
        self.sum_w.add_(s.sum(1))
        if self._pair_i.numel() == 0:
            return
        p, q = s[self._pair_i], s[self._pair_j]  # [pairs, B, E]
        # JSD = H(m) - (H(p) + H(q)) / 2 with Σ x log x computed once per gate.
        if neg_h is None:
            neg_h = xlogx(s).sum(2)  # [G, B]
        jsd = (0.5 * (neg_h[self._pair_i] + neg_h[self._pair_j]) - xlogx((p + q) * 0.5).sum(2)).clamp_min(0)
        self.sum_jsd.add_(jsd.sum(1))
        self.sum_tv.add_(0.5 * (p - q).abs().sum((1, 2)))

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
