"""Gate layers wrapped in a parametrization (`torch.nn.utils.parametrizations.weight_norm`).

A parametrization's module is called with the model's Parameters as its arguments (`original0`, `original1`).
The tracer's module hooks read those arguments' shapes while its `TorchFunctionMode` was active; on a
Parameter each read is a torch function call, so the trace numbered calls the model never makes. The replay
that asks autograd which task each gate serves (no hooks) then put its leaves on the wrong calls: the
second task's gate "reached no task output" and was named `shared` (`tasks_route_identically click ~ shared`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from corpus._plant import GateParams, plant_logit_gates
from torch import nn
from torch.nn.utils import parametrizations

import mmoe_inspect as mi
from mmoe_inspect.topology.discovery import discover_topology

N_FEATURES = 8
N_EXPERTS = 4
TASKS = ("click", "buy")
FEATURES = [f"x{i}" for i in range(N_FEATURES)]


class NormedGateMMoE(nn.Module):
    """An MMoE (4 ReLU experts `[B, 16]`, a softmax gate per task, sigmoid towers) whose gate Linears are
    wrapped with `wrap` after `plant` set their weights (weight_norm derives g and v from the weight)."""

    def __init__(self, case: str, wrap: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(N_FEATURES, 16), nn.ReLU()) for _ in range(N_EXPERTS)
        )
        self.gates = nn.ModuleDict({t: nn.Linear(N_FEATURES, N_EXPERTS) for t in TASKS})
        self.towers = nn.ModuleDict({t: nn.Linear(16, 1) for t in TASKS})
        plant_logit_gates(
            {t: GateParams(self.gates[t].weight, self.gates[t].bias) for t in TASKS},
            case,
            expert_names={t: [str(e) for e in range(N_EXPERTS)] for t in TASKS},
            collapse=("buy", "1"),
            dead="3",
            identical=TASKS,
            scale=4.0,
        )
        if case == "collapsed":  # weight_norm of an all-zero weight is 0/0
            with torch.no_grad():
                self.gates["buy"].weight.fill_(1e-6)
        for t in TASKS:
            self.gates[t] = getattr(parametrizations, wrap)(self.gates[t])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ex = torch.stack([e(x) for e in self.experts], dim=1)  # [B, E, 16]
        out = {}
        for t in TASKS:
            g = torch.softmax(self.gates[t](x), dim=-1)  # [B, E]
            out[t] = torch.sigmoid(self.towers[t]((g.unsqueeze(-1) * ex).sum(1))).squeeze(-1)
        return out


def frame(rows: int = 800) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    f = pd.DataFrame(rng.normal(size=(rows, N_FEATURES)).astype("float32"), columns=FEATURES)
    f["click"] = (f["x0"] > 0).astype("float64")
    f["buy"] = (f["x1"] > 0.5).astype("float64")
    return f


@pytest.mark.parametrize("wrap", ["weight_norm", "spectral_norm"])
def test_parametrized_gates_are_named_by_their_task(wrap: str) -> None:
    model = NormedGateMMoE("specialized", wrap).eval()
    topo = discover_topology(model, torch.randn(61, N_FEATURES, generator=torch.Generator().manual_seed(1)))
    assert [(g.name, g.task) for g in topo.gates] == [("click", "click"), ("buy", "buy")], topo.notes
    assert not any("reaches no task output" in n for n in topo.notes), topo.notes
    assert topo.architecture == "mmoe"


@pytest.mark.parametrize(
    ("case", "code", "subject"),
    [("identical", "tasks_route_identically", "click ~ buy"), ("collapsed", "collapsed_gate", "buy")],
)
def test_planted_routing_of_weight_normed_gates_is_reported_by_task(
    case: str, code: str, subject: str
) -> None:
    result = mi.inspect(
        NormedGateMMoE(case, "weight_norm").eval(),
        frame(),
        input_fn=lambda d: torch.tensor(d[FEATURES].to_numpy()),
        columns=FEATURES,
    )
    found = {f.subject for f in result.findings if f.code == code}
    assert found == {subject}, [(f.code, f.subject) for f in result.findings]
    assert not any("shared" in f.subject for f in result.findings)
