"""Multi-task MoE models after papers and their public reference code (re-implemented at toy size).

Noisy top-k gating with sparse dispatch (Shazeer et al. 2017; the `SparseDispatcher` pattern of
davidmrau/mixture-of-experts), Switch/tutel-style top-2 dispatch with `scatter_add_`, Mixtral-style top-k
renormalisation with `gather`, DSelect-k (Hazimeh et al. 2021, google-research/dselect_k_moe) with a
per-example selector, PLE (Tang et al. 2020) with two extraction levels, sparsemax gates (Martins &
Astudillo 2016), sigmoid gates, gumbel-softmax gates and cross-stitch-like learned scalar mixtures.

Every `forward(..., return_gates=True)` also returns the exact per-row weights the mixture used,
`{gate key: [batch, E]}` (zeros for experts a row was not dispatched to). Only torch is imported.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

TASKS = ("click", "like")


def _expert(n_in: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU())


def _towers(tasks, hidden: int) -> nn.ModuleDict:
    return nn.ModuleDict({t: nn.Linear(hidden, 1) for t in tasks})


class NoisyTopKMMoE(nn.Module):
    """Shazeer-style noisy top-k gating per task: `logits = x @ w_gate + b_gate (+ randn * softplus(x @
    w_noise) in training)`, softmax over the top-k logits, experts run only on the rows dispatched to them
    and their weighted outputs are combined with `index_add_` (the SparseDispatcher's `combine`)."""

    def __init__(self, n_features: int = 10, n_experts: int = 4, hidden: int = 8, k: int = 2, tasks=TASKS):
        super().__init__()
        self.tasks = list(tasks)
        self.k = k
        self.hidden = hidden
        self.experts = nn.ModuleList(_expert(n_features, hidden) for _ in range(n_experts))
        self.w_gate = nn.ParameterDict({t: nn.Parameter(torch.zeros(n_features, n_experts)) for t in tasks})
        self.b_gate = nn.ParameterDict({t: nn.Parameter(torch.zeros(n_experts)) for t in tasks})
        self.w_noise = nn.ParameterDict({t: nn.Parameter(torch.zeros(n_features, n_experts)) for t in tasks})
        self.towers = _towers(tasks, hidden)

    def noisy_top_k_gating(self, x: torch.Tensor, task: str) -> torch.Tensor:
        clean_logits = x @ self.w_gate[task] + self.b_gate[task]
        if self.training:
            noise_stddev = F.softplus(x @ self.w_noise[task]) + 1e-2
            logits = clean_logits + torch.randn_like(clean_logits) * noise_stddev
        else:
            logits = clean_logits
        top_logits, top_indices = logits.topk(self.k, dim=1)
        top_k_gates = torch.softmax(top_logits, dim=1)
        zeros = torch.zeros_like(logits)
        return zeros.scatter(1, top_indices, top_k_gates)  # [B, E], k non-zeros per row

    def forward(self, x: torch.Tensor, return_gates: bool = False):
        out, gates_used = {}, {}
        for task in self.tasks:
            gates = self.noisy_top_k_gating(x, task)
            gates_used[task] = gates
            combined = torch.zeros(x.shape[0], self.hidden, dtype=x.dtype)
            for e, expert in enumerate(self.experts):
                batch_index = torch.nonzero(gates[:, e] > 0).squeeze(1)
                if batch_index.numel() == 0:
                    continue
                stitched = expert(x[batch_index]) * gates[batch_index, e].unsqueeze(1)
                combined.index_add_(0, batch_index, stitched)
            out[task] = torch.sigmoid(self.towers[task](combined)).squeeze(-1)
        return (out, gates_used) if return_gates else out


class SwitchTop2MMoE(nn.Module):
    """tutel/fastmoe-style dispatch: a Linear router per task, softmax, top-2 renormalised, rows sorted by
    expert, each expert runs on its rows, contributions summed back with `scatter_add_`."""

    def __init__(self, n_features: int = 10, n_experts: int = 4, hidden: int = 8, tasks=TASKS):
        super().__init__()
        self.tasks = list(tasks)
        self.hidden = hidden
        self.experts = nn.ModuleList(_expert(n_features, hidden) for _ in range(n_experts))
        self.router = nn.ModuleDict({t: nn.Linear(n_features, n_experts) for t in tasks})
        self.towers = _towers(tasks, hidden)

    def forward(self, x: torch.Tensor, return_gates: bool = False):
        out, used = {}, {}
        n = x.shape[0]
        for task in self.tasks:
            probs = torch.softmax(self.router[task](x), dim=-1)
            top_w, top_i = probs.topk(2, dim=-1)
            top_w = top_w / top_w.sum(dim=-1, keepdim=True)
            used[task] = torch.zeros_like(probs).scatter(1, top_i, top_w)
            rows = torch.arange(n).repeat_interleave(2)
            flat_e, flat_w = top_i.reshape(-1), top_w.reshape(-1)
            y = torch.zeros(n, self.hidden, dtype=x.dtype)
            for e, expert in enumerate(self.experts):
                sel = (flat_e == e).nonzero().squeeze(1)
                if sel.numel() == 0:
                    continue
                r = rows[sel]
                contrib = expert(x[r]) * flat_w[sel].unsqueeze(1)
                y.scatter_add_(0, r.unsqueeze(1).expand(-1, self.hidden), contrib)
            out[task] = torch.sigmoid(self.towers[task](y)).squeeze(-1)
        return (out, used) if return_gates else out


class TopKGatherMMoE(nn.Module):
    """Mixtral-style: dense experts stacked `[B, E, H]`, router softmax, top-2 renormalised, the chosen
    experts' outputs taken with `gather` and weighted."""

    def __init__(self, n_features: int = 10, n_experts: int = 6, hidden: int = 8, tasks=TASKS):
        super().__init__()
        self.tasks = list(tasks)
        self.experts = nn.ModuleList(_expert(n_features, hidden) for _ in range(n_experts))
        self.routers = nn.ModuleList(nn.Linear(n_features, n_experts) for _ in tasks)
        self.towers = _towers(tasks, hidden)

    def forward(self, x: torch.Tensor, return_gates: bool = False):
        ex = torch.stack([e(x) for e in self.experts], dim=1)  # [B, E, H]
        out, used = {}, {}
        for router, task in zip(self.routers, self.tasks, strict=False):
            routing = F.softmax(router(x), dim=1)
            w, idx = torch.topk(routing, 2, dim=-1)
            w = w / w.sum(dim=-1, keepdim=True)
            used[task] = torch.zeros_like(routing).scatter(1, idx, w)
            chosen = ex.gather(1, idx.unsqueeze(-1).expand(-1, -1, ex.shape[-1]))  # [B, 2, H]
            mixed = (w.unsqueeze(-1) * chosen).sum(dim=1)
            out[task] = torch.sigmoid(self.towers[task](mixed)).squeeze(-1)
        return (out, used) if return_gates else out


def smooth_step(t: torch.Tensor, gamma: float) -> torch.Tensor:
    """DSelect-k's smooth-step: 0 below -gamma/2, 1 above gamma/2, a cubic in between."""
    cubic = -2.0 / gamma**3 * t**3 + 3.0 / (2.0 * gamma) * t + 0.5
    return torch.where(
        t <= -gamma / 2, torch.zeros_like(t), torch.where(t >= gamma / 2, torch.ones_like(t), cubic)
    )


class DSelectKMMoE(nn.Module):
    """DSelect-k, per-example variant: per task, `n_selectors` selectors each map the row to `m = log2(E)`
    scalars, smooth-stepped and combined with the experts' binary codes into a one-hot-ish `[B, E]`;
    the selectors are mixed by a per-row softmax. Weights sum to 1 and are often exactly 0."""

    def __init__(
        self,
        n_features: int = 10,
        n_experts: int = 4,
        hidden: int = 8,
        n_selectors: int = 2,
        gamma: float = 6.0,
        tasks=TASKS,
    ):
        super().__init__()
        self.tasks = list(tasks)
        self.gamma = gamma
        m = int(math.log2(n_experts))
        codes = torch.tensor(
            [[(j >> b) & 1 for b in range(m)] for j in range(n_experts)], dtype=torch.float32
        )
        self.register_buffer("binary_codes", codes)  # [E, m]
        self.experts = nn.ModuleList(_expert(n_features, hidden) for _ in range(n_experts))
        self.z_weight = nn.ParameterDict(
            {t: nn.Parameter(torch.randn(n_selectors, m, n_features) * 0.3) for t in tasks}
        )
        self.z_bias = nn.ParameterDict({t: nn.Parameter(torch.zeros(n_selectors, m)) for t in tasks})
        self.w_weight = nn.ParameterDict(
            {t: nn.Parameter(torch.randn(n_selectors, n_features) * 0.3) for t in tasks}
        )
        self.w_bias = nn.ParameterDict({t: nn.Parameter(torch.zeros(n_selectors)) for t in tasks})
        self.towers = _towers(tasks, hidden)

    def _selector(self, x: torch.Tensor, task: str) -> torch.Tensor:
        z = torch.einsum("bf,smf->bsm", x, self.z_weight[task]) + self.z_bias[task]  # [B, S, m]
        s = smooth_step(z, self.gamma).unsqueeze(2)  # [B, S, 1, m]
        codes = self.binary_codes  # [E, m]
        r = torch.prod(codes * s + (1 - codes) * (1 - s), dim=-1)  # [B, S, E]
        alpha = torch.softmax(x @ self.w_weight[task].t() + self.w_bias[task], dim=-1)  # [B, S]
        return torch.einsum("bs,bse->be", alpha, r)

    def forward(self, x: torch.Tensor, return_gates: bool = False):
        ex = [e(x) for e in self.experts]
        out, used = {}, {}
        for task in self.tasks:
            w = self._selector(x, task)
            used[task] = w
            mixed = sum(w[:, j : j + 1] * ex[j] for j in range(len(ex)))
            out[task] = torch.sigmoid(self.towers[task](mixed)).squeeze(-1)
        return (out, used) if return_gates else out


class CGCLevel(nn.Module):
    """One PLE extraction level: task-specific and shared experts, a gate per task over (own + shared),
    and on non-final levels a shared gate over all experts. Gates are Linear logits softmaxed inline."""

    def __init__(self, n_in: int, tasks, n_specific: int, n_shared: int, hidden: int, shared_gate: bool):
        super().__init__()
        self.tasks = list(tasks)
        self.specific = nn.ModuleDict(
            {t: nn.ModuleList(_expert(n_in, hidden) for _ in range(n_specific)) for t in tasks}
        )
        self.shared = nn.ModuleList(_expert(n_in, hidden) for _ in range(n_shared))
        self.gates = nn.ModuleDict({t: nn.Linear(n_in, n_specific + n_shared) for t in tasks})
        n_all = n_specific * len(self.tasks) + n_shared
        self.gate_shared = nn.Linear(n_in, n_all) if shared_gate else None

    def forward(self, task_inputs, shared_input):
        shared_out = [e(shared_input) for e in self.shared]
        outs, gates, all_specific = [], {}, []
        for t, xt in zip(self.tasks, task_inputs, strict=False):
            own = [e(xt) for e in self.specific[t]]
            all_specific += own
            stacked = torch.stack(own + shared_out, dim=1)  # [B, E_t, H]
            g = F.softmax(self.gates[t](xt), dim=-1)
            gates[t] = g
            outs.append(torch.matmul(g.unsqueeze(1), stacked).squeeze(1))
        shared_mix = None
        if self.gate_shared is not None:
            stacked = torch.stack(all_specific + shared_out, dim=1)
            g = F.softmax(self.gate_shared(shared_input), dim=-1)
            gates["shared"] = g
            shared_mix = torch.matmul(g.unsqueeze(1), stacked).squeeze(1)
        return outs, shared_mix, gates


class PLETwoLevel(nn.Module):
    """PLE with two extraction levels (2 specific experts per task, 2 shared), a shared gate on level 0;
    level 1's task gates read level 0's task outputs. Output `{task: P [B]}`."""

    def __init__(self, n_features: int = 10, hidden: int = 8, tasks=TASKS):
        super().__init__()
        self.tasks = list(tasks)
        self.levels = nn.ModuleList(
            [CGCLevel(n_features, tasks, 2, 2, hidden, True), CGCLevel(hidden, tasks, 2, 2, hidden, False)]
        )
        self.towers = _towers(tasks, hidden)

    def forward(self, x: torch.Tensor, return_gates: bool = False):
        task_in, shared_in = [x] * len(self.tasks), x
        all_gates = {}
        for lv, level in enumerate(self.levels):
            task_in, shared_mix, gates = level(task_in, shared_in)
            all_gates.update({f"L{lv}.{k}": v for k, v in gates.items()})
            shared_in = shared_mix
        out = {
            t: torch.sigmoid(self.towers[t](h)).squeeze(-1) for t, h in zip(self.tasks, task_in, strict=False)
        }
        return (out, all_gates) if return_gates else out


def sparsemax(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Sparsemax (Martins & Astudillo 2016): Euclidean projection onto the simplex, exact zeros."""
    z = z.transpose(dim, -1)
    zs, _ = torch.sort(z, dim=-1, descending=True)
    k = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype)
    cssv = zs.cumsum(-1) - 1
    support = (zs - cssv / k) > 0
    k_z = support.sum(-1, keepdim=True)
    tau = cssv.gather(-1, k_z - 1) / k_z.to(z.dtype)
    return torch.clamp(z - tau, min=0).transpose(dim, -1)


class SparsemaxMMoE(nn.Module):
    """Gates are sparsemax of Linear logits (hand-written); experts stacked `[B, E, H]`, mixed by
    `(w.unsqueeze(-1) * ex).sum(-2)`."""

    def __init__(self, n_features: int = 10, n_experts: int = 4, hidden: int = 8, tasks=TASKS):
        super().__init__()
        self.tasks = list(tasks)
        self.experts = nn.ModuleList(_expert(n_features, hidden) for _ in range(n_experts))
        self.gate_logits = nn.ModuleDict({t: nn.Linear(n_features, n_experts) for t in tasks})
        self.towers = _towers(tasks, hidden)

    def forward(self, x: torch.Tensor, return_gates: bool = False):
        ex = torch.stack([e(x) for e in self.experts], dim=1)
        out, used = {}, {}
        for t in self.tasks:
            w = sparsemax(self.gate_logits[t](x), dim=-1)
            used[t] = w
            out[t] = torch.sigmoid(self.towers[t]((w.unsqueeze(-1) * ex).sum(-2))).squeeze(-1)
        return (out, used) if return_gates else out


class SigmoidGateMMoE(nn.Module):
    """Independent sigmoid gates (weights not normalised); experts stacked LAST `[B, H, E]`, mixed by
    `(ex * w[:, None, :]).sum(-1)`."""

    def __init__(self, n_features: int = 10, n_experts: int = 4, hidden: int = 8, tasks=TASKS):
        super().__init__()
        self.tasks = list(tasks)
        self.experts = nn.ModuleList(_expert(n_features, hidden) for _ in range(n_experts))
        self.gate = nn.ModuleDict({t: nn.Linear(n_features, n_experts) for t in tasks})
        self.towers = _towers(tasks, hidden)

    def forward(self, x: torch.Tensor, return_gates: bool = False):
        ex = torch.stack([e(x) for e in self.experts], dim=-1)  # [B, H, E]
        out, used = {}, {}
        for t in self.tasks:
            w = torch.sigmoid(self.gate[t](x))
            used[t] = w
            out[t] = torch.sigmoid(self.towers[t]((ex * w[:, None, :]).sum(-1))).squeeze(-1)
        return (out, used) if return_gates else out


class GumbelGateMMoE(nn.Module):
    """Gumbel-softmax gates in training (`F.gumbel_softmax(logits, tau)`), `softmax(logits / tau)` in
    eval; experts stacked on dim 1 and mixed by `torch.bmm`."""

    def __init__(
        self, n_features: int = 10, n_experts: int = 4, hidden: int = 8, tau: float = 0.5, tasks=TASKS
    ):
        super().__init__()
        self.tasks = list(tasks)
        self.tau = tau
        self.experts = nn.ModuleList(_expert(n_features, hidden) for _ in range(n_experts))
        self.gate = nn.ModuleList(nn.Linear(n_features, n_experts) for _ in tasks)
        self.towers = _towers(tasks, hidden)

    def forward(self, x: torch.Tensor, return_gates: bool = False):
        ex = torch.stack([e(x) for e in self.experts], dim=1)
        out, used = {}, {}
        for gate, t in zip(self.gate, self.tasks, strict=False):
            logits = gate(x)
            w = (
                F.gumbel_softmax(logits, tau=self.tau)
                if self.training
                else torch.softmax(logits / self.tau, dim=-1)
            )
            used[t] = w
            out[t] = torch.sigmoid(self.towers[t](torch.bmm(w.unsqueeze(1), ex).squeeze(1))).squeeze(-1)
        return (out, used) if return_gates else out


class ScalarMixtureMTL(nn.Module):
    """Cross-stitch/sluice-like learned scalars: task t mixes the experts with a learned vector
    `alpha[t]` `[E]` (the same for every row; no softmax), experts stacked first, `einsum('e,ebh->bh')`."""

    def __init__(self, n_features: int = 10, n_experts: int = 4, hidden: int = 8, tasks=TASKS):
        super().__init__()
        self.tasks = list(tasks)
        self.experts = nn.ModuleList(_expert(n_features, hidden) for _ in range(n_experts))
        self.alpha = nn.Parameter(torch.full((len(tasks), n_experts), 1.0 / n_experts))
        self.towers = _towers(tasks, hidden)

    def forward(self, x: torch.Tensor, return_gates: bool = False):
        ex = torch.stack([e(x) for e in self.experts])  # [E, B, H]
        out, used = {}, {}
        for i, t in enumerate(self.tasks):
            used[t] = self.alpha[i].unsqueeze(0).expand(x.shape[0], -1)
            out[t] = torch.sigmoid(self.towers[t](torch.einsum("e,ebh->bh", self.alpha[i], ex))).squeeze(-1)
        return (out, used) if return_gates else out
