"""Multi-task models WITHOUT any expert mixture; some have softmaxes that only look like gates.

Shared-Bottom, an AutoInt-style model (multi-head self-attention over feature fields, softmax written
out), a DIN-style model (attention pooling over a behaviour sequence), a model whose tasks come from one
multi-class output softmax, and a small transformer-encoder multi-task model. No class or module is
named like a gate, expert or MoE. Only torch is imported.
"""

from __future__ import annotations

import torch
from torch import nn

TASKS = ("click", "like")


class SharedBottom(nn.Module):
    """One shared MLP, one tower per task; output `{task: P [B]}`."""

    def __init__(self, n_features: int = 10, hidden: int = 16):
        super().__init__()
        self.bottom = nn.Sequential(
            nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.towers = nn.ModuleDict(
            {t: nn.Sequential(nn.Linear(hidden, 4), nn.ReLU(), nn.Linear(4, 1)) for t in TASKS}
        )

    def forward(self, x):
        h = self.bottom(x)
        return {t: torch.sigmoid(self.towers[t](h)).squeeze(-1) for t in TASKS}


class AutoIntMTL(nn.Module):
    """AutoInt style: each dense feature scales its own field embedding `[B, F, d]`; one multi-head
    self-attention layer (QK^T / sqrt(d), softmax over fields, weighted sum of values) with a residual;
    flattened into two towers."""

    def __init__(self, n_features: int = 8, d: int = 4, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.field_emb = nn.Parameter(torch.randn(n_features, d) * 0.5)
        self.w_q = nn.Linear(d, d * heads, bias=False)
        self.w_k = nn.Linear(d, d * heads, bias=False)
        self.w_v = nn.Linear(d, d * heads, bias=False)
        self.w_res = nn.Linear(d, d * heads, bias=False)
        self.towers = nn.ModuleDict({t: nn.Linear(n_features * d * heads, 1) for t in TASKS})

    def forward(self, x):
        emb = x.unsqueeze(-1) * self.field_emb  # [B, F, d]
        b, f, d = emb.shape

        def split(t):
            return t.view(b, f, self.heads, d).transpose(1, 2)  # [B, h, F, d]

        q, k, v = split(self.w_q(emb)), split(self.w_k(emb)), split(self.w_v(emb))
        scores = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) / d**0.5, dim=-1)  # [B, h, F, F]
        att = torch.matmul(scores, v).transpose(1, 2).reshape(b, f, self.heads * d)
        h = torch.relu(att + self.w_res(emb)).flatten(1)
        return {t: torch.sigmoid(self.towers[t](h)).squeeze(-1) for t in TASKS}


class DINMTL(nn.Module):
    """DIN style: a target item and a behaviour sequence of 6 item ids (0 = padding); an attention MLP
    scores each behaviour against the target from `[q, k, q - k, q * k]`, masked softmax over the
    sequence, weighted sum pooling; dense features join before the towers. Input `{column: [B]}`."""

    seq_len = 6

    def __init__(self, n_items: int = 30, d: int = 8, n_dense: int = 4):
        super().__init__()
        self.item_emb = nn.Embedding(n_items, d, padding_idx=0)
        self.att_mlp = nn.Sequential(nn.Linear(4 * d, 8), nn.ReLU(), nn.Linear(8, 1))
        self.n_dense = n_dense
        self.towers = nn.ModuleDict(
            {t: nn.Sequential(nn.Linear(2 * d + n_dense, 8), nn.ReLU(), nn.Linear(8, 1)) for t in TASKS}
        )

    def forward(self, batch: dict):
        hist = torch.stack([batch[f"hist{i}"].long() for i in range(self.seq_len)], dim=1)  # [B, L]
        q = self.item_emb(batch["item"].long())  # [B, d]
        k = self.item_emb(hist)  # [B, L, d]
        qe = q.unsqueeze(1).expand_as(k)
        score = self.att_mlp(torch.cat([qe, k, qe - k, qe * k], dim=-1)).squeeze(-1)  # [B, L]
        score = score.masked_fill(hist == 0, float("-inf"))
        weights = torch.softmax(score, dim=-1)
        pooled = (weights.unsqueeze(-1) * k).sum(1)
        dense = torch.stack([batch[f"d{i}"].float() for i in range(self.n_dense)], dim=1)
        h = torch.cat([pooled, q, dense], dim=1)
        return {t: torch.sigmoid(self.towers[t](h)).squeeze(-1) for t in TASKS}


class MultiClassOutputMTL(nn.Module):
    """One softmax over 3 outcome classes (none / click only / click and like); the tasks are sums of its
    columns: `click = p1 + p2`, `like = p2`."""

    def __init__(self, n_features: int = 10, hidden: int = 16):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, 3))

    def forward(self, x):
        p = torch.softmax(self.body(x), dim=-1)
        return {"click": p[:, 1] + p[:, 2], "like": p[:, 2]}


class TransformerMTL(nn.Module):
    """Features as tokens (value x token embedding + position), one `nn.TransformerEncoder` layer, mean
    pooling, two heads; output `[B, 2]` (click, like)."""

    def __init__(self, n_features: int = 8, d: int = 8):
        super().__init__()
        self.token = nn.Parameter(torch.randn(n_features, d) * 0.5)
        layer = nn.TransformerEncoderLayer(
            d_model=d, nhead=2, dim_feedforward=16, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.heads = nn.Linear(d, 2)

    def forward(self, x):
        h = self.encoder(x.unsqueeze(-1) * self.token).mean(dim=1)
        return torch.sigmoid(self.heads(h))
