"""A bank of 64 experts (the size of a common example batch) mixed by a hand-written softmax and `bmm`: the
expert axis must not be taken for a batch axis (discovery's example batch has a prime number of rows), so a
collapse is found, not a Shared-Bottom."""

from __future__ import annotations

import torch
from test_gate_forms import FEATURES, inspect  # the same 8 features, rows and labels
from torch import nn


class WideBank(nn.Module):
    """64 linear experts, two tasks, gates written by hand (exp / sum) and mixed with `bmm`."""

    def __init__(self, collapsed: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.bank = nn.ModuleList(nn.Linear(len(FEATURES), 4) for _ in range(64))
        self.logits = nn.ModuleList(nn.Linear(len(FEATURES), 64) for _ in range(2))
        self.heads = nn.ModuleList(nn.Linear(4, 1) for _ in range(2))
        if collapsed:
            with torch.no_grad():
                for lin in self.logits:
                    lin.bias.zero_()
                    lin.bias[5] = 30.0

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        stacked = torch.stack([e(x) for e in self.bank], dim=1)  # [B, 64, 4]
        out = {}
        for name, lin, head in zip(("click", "buy"), self.logits, self.heads, strict=True):
            z = lin(x)
            w = torch.exp(z - z.max(dim=1, keepdim=True).values)
            w = w / w.sum(dim=1, keepdim=True)
            mixed = torch.bmm(w.unsqueeze(1), stacked).squeeze(1)
            out[name] = torch.sigmoid(head(mixed)).squeeze(1)
        return out


def test_a_bank_of_64_experts_is_read_and_its_collapse_found() -> None:
    result = inspect(WideBank(collapsed=True).eval())
    assert [g.n_experts for g in result.topology.gates] == [64, 64]
    assert {f.subject for f in result.findings if f.code == "collapsed_gate"} == {"click", "buy"}
    healthy = inspect(WideBank(collapsed=False).eval())
    assert not any(f.code == "collapsed_gate" for f in healthy.findings)


class OneModuleExperts(nn.Module):
    """An MMoE whose expert list repeats one module (`[expert] * 4`): the gates route among copies."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        one = nn.Linear(len(FEATURES), 4)
        self.experts = nn.ModuleList([one] * 4)
        self.gates = nn.ModuleList(
            nn.Sequential(nn.Linear(len(FEATURES), 4), nn.Softmax(dim=1)) for _ in range(2)
        )
        self.heads = nn.ModuleList(nn.Linear(4, 1) for _ in range(2))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        stacked = torch.stack([e(x) for e in self.experts], dim=1)  # [B, 4, 4]
        out = {}
        for name, gate, head in zip(("click", "buy"), self.gates, self.heads, strict=True):
            mixed = (gate(x).unsqueeze(-1) * stacked).sum(1)
            out[name] = torch.sigmoid(head(mixed)).squeeze(1)
        return out


def test_experts_that_are_one_module_are_not_healthy_routing() -> None:
    result = inspect(OneModuleExperts().eval())
    found = {(f.code, f.subject, f.severity) for f in result.findings}
    assert {("one_expert_module", "click", "critical"), ("one_expert_module", "buy", "critical")} <= found
    assert result.verdict.startswith("Routing is unhealthy"), result.verdict
