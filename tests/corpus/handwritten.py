"""Hand-written multi-task MoE models, as users write them: dict in / tuple out, one concatenated
`[B, T]` output, a LightningModule, experts as one batched parameter or run through `bmm`, three tasks.

Every `forward(..., return_gates=True)` also returns the exact gate weights the mixture used,
`{gate key: [batch, E]}`. Only torch (and lightning for `LitMMoE`) is imported.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

TASKS = ("click", "like")
DENSE = tuple(f"f{i}" for i in range(10))


def _expert(n_in: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(0.1))


class DictInTupleOutMMoE(nn.Module):
    """`forward(batch)` takes `{column: [B]}`; experts run in a Python loop and are mixed by
    `sum(w[:, i:i+1] * experts[i](x) for i in range(E))`; returns a tuple `(p_click, p_like)`."""

    def __init__(self, n_experts: int = 4, hidden: int = 8):
        super().__init__()
        self.columns = DENSE
        self.experts = nn.ModuleList(_expert(len(DENSE), hidden) for _ in range(n_experts))
        self.click_gate = nn.Linear(len(DENSE), n_experts)
        self.like_gate = nn.Linear(len(DENSE), n_experts)
        self.click_head = nn.Linear(hidden, 1)
        self.like_head = nn.Linear(hidden, 1)

    def forward(self, batch: dict, return_gates: bool = False):
        x = torch.stack([batch[c].float() for c in self.columns], dim=1)
        n = len(self.experts)
        w_click = torch.softmax(self.click_gate(x), dim=1)
        w_like = torch.softmax(self.like_gate(x), dim=1)
        h_click = sum(w_click[:, i : i + 1] * self.experts[i](x) for i in range(n))
        h_like = sum(w_like[:, i : i + 1] * self.experts[i](x) for i in range(n))
        out = (
            torch.sigmoid(self.click_head(h_click)).squeeze(1),
            torch.sigmoid(self.like_head(h_like)).squeeze(1),
        )
        return (out, {"click": w_click, "like": w_like}) if return_gates else out


class ConcatOutputMMoE(nn.Module):
    """Inline temperature `softmax(gate(x) / T)`; mixture `torch.sum(torch.stack([w[:, i:i+1] * e_i]), 0)`;
    one concatenated output `[B, 2]` (columns click, like)."""

    def __init__(self, n_features: int = 10, n_experts: int = 4, hidden: int = 8, temperature: float = 2.0):
        super().__init__()
        self.temperature = temperature
        self.experts = nn.ModuleList(_expert(n_features, hidden) for _ in range(n_experts))
        self.gates = nn.ModuleList(nn.Linear(n_features, n_experts) for _ in range(2))
        self.heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(2))

    def forward(self, x: torch.Tensor, return_gates: bool = False):
        outs = [e(x) for e in self.experts]
        preds, used = [], {}
        for k, (gate, head) in enumerate(zip(self.gates, self.heads, strict=False)):
            w = torch.softmax(gate(x) / self.temperature, dim=-1)
            used[("click", "like")[k]] = w
            mixed = torch.sum(torch.stack([w[:, i : i + 1] * outs[i] for i in range(len(outs))]), 0)
            preds.append(torch.sigmoid(head(mixed)))
        out = torch.cat(preds, dim=1)
        return (out, used) if return_gates else out


class LitMMoE(L.LightningModule):
    """A LightningModule MMoE: each task may use only some experts (a boolean mask buffer), applied with
    `masked_fill(-inf)` before the softmax; mixture `torch.matmul([B, 1, E], [B, E, H])`."""

    def __init__(self, n_features: int = 10, n_experts: int = 4, hidden: int = 8, lr: float = 1e-3):
        super().__init__()
        self.lr = lr
        self.experts = nn.ModuleList(_expert(n_features, hidden) for _ in range(n_experts))
        self.gate_layers = nn.ModuleDict({t: nn.Linear(n_features, n_experts) for t in TASKS})
        allowed = torch.ones(len(TASKS), n_experts, dtype=torch.bool)
        allowed[1, 0] = False  # like may not use expert 0
        self.register_buffer("allowed", allowed)
        self.towers = nn.ModuleDict({t: nn.Linear(hidden, 1) for t in TASKS})

    def forward(self, x: torch.Tensor, return_gates: bool = False):
        ex = torch.stack([e(x) for e in self.experts], dim=1)
        out, used = {}, {}
        for i, t in enumerate(TASKS):
            logits = self.gate_layers[t](x).masked_fill(~self.allowed[i], float("-inf"))
            w = torch.softmax(logits, dim=-1)
            used[t] = w
            out[t] = torch.sigmoid(self.towers[t](torch.matmul(w.unsqueeze(1), ex).squeeze(1))).squeeze(-1)
        return (out, used) if return_gates else out

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        return sum(F.binary_cross_entropy(out[t], y[:, i]) for i, t in enumerate(TASKS))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class BatchedParamMMoE(nn.Module):
    """Experts are ONE parameter `[E, F, H]` applied by `einsum('bd,edh->beh')`; gates Linear + softmax;
    mixture `(w[..., None] * ex).sum(1)`."""

    def __init__(self, n_features: int = 10, n_experts: int = 4, hidden: int = 8):
        super().__init__()
        self.expert_w = nn.Parameter(torch.randn(n_experts, n_features, hidden) * 0.3)
        self.expert_b = nn.Parameter(torch.zeros(n_experts, hidden))
        self.gates = nn.ModuleDict({t: nn.Linear(n_features, n_experts) for t in TASKS})
        self.towers = nn.ModuleDict({t: nn.Linear(hidden, 1) for t in TASKS})

    def forward(self, x: torch.Tensor, return_gates: bool = False):
        ex = torch.relu(torch.einsum("bd,edh->beh", x, self.expert_w) + self.expert_b)  # [B, E, H]
        out, used = {}, {}
        for t in TASKS:
            w = self.gates[t](x).softmax(dim=-1)
            used[t] = w
            out[t] = torch.sigmoid(self.towers[t]((w[..., None] * ex).sum(1))).squeeze(-1)
        return (out, used) if return_gates else out


class BmmExpertsMMoE(nn.Module):
    """Three tasks, six experts run together by `torch.bmm` (`[E, B, F] x [E, F, H]` -> `[E, B, H]`,
    experts FIRST), mixed by `(w.t().unsqueeze(-1) * ex).sum(0)`."""

    tasks = ("click", "like", "share")

    def __init__(self, n_features: int = 12, n_experts: int = 6, hidden: int = 8):
        super().__init__()
        self.expert_w = nn.Parameter(torch.randn(n_experts, n_features, hidden) * 0.3)
        self.expert_b = nn.Parameter(torch.zeros(n_experts, 1, hidden))
        self.gates = nn.ModuleList(nn.Linear(n_features, n_experts) for _ in self.tasks)
        self.towers = nn.ModuleList(nn.Linear(hidden, 1) for _ in self.tasks)

    def forward(self, x: torch.Tensor, return_gates: bool = False):
        e = self.expert_w.shape[0]
        ex = torch.relu(torch.bmm(x.unsqueeze(0).expand(e, -1, -1), self.expert_w) + self.expert_b)
        out, used = {}, {}
        for t, gate, tower in zip(self.tasks, self.gates, self.towers, strict=False):
            w = F.softmax(gate(x), dim=1)
            used[t] = w
            out[t] = torch.sigmoid(tower((w.t().unsqueeze(-1) * ex).sum(0))).squeeze(-1)
        return (out, used) if return_gates else out


class ThreeTaskEinsumLastMMoE(nn.Module):
    """Three tasks, eight experts stacked LAST `[B, H, E]`, gates with a hidden layer, mixture
    `einsum('bhe,be->bh')`; output a dict."""

    tasks = ("click", "like", "share")

    def __init__(self, n_features: int = 12, n_experts: int = 8, hidden: int = 8):
        super().__init__()
        self.experts = nn.ModuleList(_expert(n_features, hidden) for _ in range(n_experts))
        self.gates = nn.ModuleDict(
            {
                t: nn.Sequential(nn.Linear(n_features, 8), nn.Tanh(), nn.Linear(8, n_experts))
                for t in self.tasks
            }
        )
        self.towers = nn.ModuleDict({t: nn.Linear(hidden, 1) for t in self.tasks})

    def forward(self, x: torch.Tensor, return_gates: bool = False):
        ex = torch.stack([e(x) for e in self.experts], dim=-1)
        out, used = {}, {}
        for t in self.tasks:
            w = torch.softmax(self.gates[t](x), dim=-1)
            used[t] = w
            out[t] = torch.sigmoid(self.towers[t](torch.einsum("bhe,be->bh", ex, w))).squeeze(-1)
        return (out, used) if return_gates else out


class HandCGC(nn.Module):
    """A one-level CGC written by hand: 1 specific expert per task + 2 shared, no shared gate; each task
    mixes `[own, shared...]` stacked on dim 1 with `(w.unsqueeze(-1) * ex).sum(-2)`."""

    def __init__(self, n_features: int = 10, hidden: int = 8):
        super().__init__()
        self.own = nn.ModuleDict({t: _expert(n_features, hidden) for t in TASKS})
        self.shared = nn.ModuleList(_expert(n_features, hidden) for _ in range(2))
        self.gates = nn.ModuleDict({t: nn.Linear(n_features, 3) for t in TASKS})
        self.towers = nn.ModuleDict({t: nn.Linear(hidden, 1) for t in TASKS})

    def forward(self, x: torch.Tensor, return_gates: bool = False):
        shared = [e(x) for e in self.shared]
        out, used = {}, {}
        for t in TASKS:
            ex = torch.stack([self.own[t](x), *shared], dim=1)
            w = torch.softmax(self.gates[t](x), dim=-1)
            used[t] = w
            out[t] = torch.sigmoid(self.towers[t]((w.unsqueeze(-1) * ex).sum(-2))).squeeze(-1)
        return (out, used) if return_gates else out
