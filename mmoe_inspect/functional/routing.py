"""Routing kernels: entropy, divergences, balance and specialization measures of gate weights.

Every function is tensor in → tensor out, works on any floating dtype and device, and computes in
the dtype it is given (the stats classes pass float64). Logarithms are natural (nats).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "cv_squared",
    "effective_experts",
    "gate_entropy",
    "input_dependence",
    "js_divergence",
    "switch_balance",
    "task_expert_mutual_information",
    "total_variation",
    "xlogx",
]


def xlogx(p: Tensor) -> Tensor:
    """Elementwise ``p * log(p)`` with ``0 * log 0 = 0``; same shape as ``p``.

    Uses ``p * log(max(p, tiny))``, which is several times cheaper than ``torch.special.entr``.
    """
    return p * p.clamp_min(torch.finfo(p.dtype).tiny).log()


def gate_entropy(g: Tensor) -> Tensor:
    """Per-row entropy ``H(g) = -Σ_e g_e log g_e`` in nats, ``[..., E] -> [...]``, in ``[0, log E]``."""
    return -xlogx(g).sum(-1)


def effective_experts(mean_gate: Tensor) -> Tensor:
    """Effective number of experts ``exp(H(mean gate))``, ``[..., E] -> [...]``, in ``[1, E]``."""
    return gate_entropy(mean_gate).exp()


def cv_squared(x: Tensor) -> Tensor:
    """Squared coefficient of variation ``Var(x) / mean(x)²`` over the last dim, ``[..., E] -> [...]``.

    Shazeer et al. (2017) importance/load loss, with the population variance; 0 when ``mean(x) = 0``.
    """
    mean = x.mean(-1)
    var = (x - mean.unsqueeze(-1)).square().mean(-1)
    mean2 = mean.square()
    return torch.where(mean2 > 0, var / torch.where(mean2 > 0, mean2, 1), torch.zeros_like(var))


def switch_balance(top1_share: Tensor, mean_prob: Tensor) -> Tensor:
    """Switch-Transformer balance ``E · Σ_e f_e P_e``, ``[..., E] x [..., E] -> [...]``; 1 = balanced.

    ``f_e`` is the share of rows whose top-1 expert is ``e``, ``P_e`` the mean gate weight of ``e``.
    """
    return top1_share.shape[-1] * (top1_share * mean_prob).sum(-1)


def js_divergence(p: Tensor, q: Tensor) -> Tensor:
    """Jensen-Shannon divergence in nats, rowwise ``[..., E] x [..., E] -> [...]``, in ``[0, log 2]``.

    ``JSD(p, q) = H(m) - (H(p) + H(q)) / 2`` with ``m = (p + q) / 2``; exactly 0 for ``p == q``.
    """
    m = (p + q) * 0.5
    return (gate_entropy(m) - 0.5 * (gate_entropy(p) + gate_entropy(q))).clamp_min(0)


def total_variation(p: Tensor, q: Tensor) -> Tensor:
    """Total-variation distance ``½ Σ_e |p_e - q_e|``, rowwise ``[..., E] x [..., E] -> [...]``, in ``[0, 1]``."""
    return 0.5 * (p - q).abs().sum(-1)


def task_expert_mutual_information(u: Tensor, prior: Tensor | None = None) -> Tensor:
    """Mutual information ``I(T; E)`` in nats between task and expert, ``u [T, E] -> []``.

    ``I = Σ_t P(t) Σ_e P(e|t) log(P(e|t) / P(e))`` with ``P(e|t) = u[t] / Σ u[t]`` (rows renormalized),
    ``P(e) = Σ_t P(t) P(e|t)`` and ``prior`` ``P(t)`` (uniform when ``None``, else renormalized).
    0 when every task routes alike; ``log T`` for disjoint one-hot tasks; at most ``min(log T, log E)``.
    """
    p_e_t = u / u.sum(-1, keepdim=True)
    if prior is None:
        prior = torch.full(u.shape[:1], 1.0 / u.shape[0], dtype=u.dtype, device=u.device)
    else:
        prior = prior.to(u) / prior.sum()
    p_e = prior @ p_e_t
    # Σ_t P(t) Σ_e P(e|t) log P(e|t) - Σ_e P(e) log P(e) = H(E) - H(E|T).
    mi = prior @ xlogx(p_e_t).sum(-1) - xlogx(p_e).sum(-1)
    return mi.clamp_min(0)


def input_dependence(mean: Tensor, var: Tensor) -> Tensor:
    """Input dependence ``Σ_e Var(g_e) / (1 - Σ_e mean_e²)`` of a gate, ``[..., E] x [..., E] -> [...]``.

    ``mean``/``var`` are the per-expert mean and population variance of the gate weights over rows.
    0 when the gate is the same vector for every row, 1 for one-hot routing that varies with the
    row (the largest ``Σ Var`` a simplex-valued gate can have given its mean). A constant one-hot
    gate (``Σ mean² = 1``, a 0/0 case) gives 0.
    """
    num = var.sum(-1)
    den = 1.0 - mean.square().sum(-1)
    ok = den > 1e-12
    return torch.where(ok, num / torch.where(ok, den, 1.0), torch.zeros_like(num))
