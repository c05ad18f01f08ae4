"""What a gate means, whatever its weights happen to be on the example rows.

* A collapsed softmax saturates: in float32 its weights are exactly `[1, 0, 0, 0]`. Mixed by Python's builtin
  `sum(w[:, i:i+1] * expert_i(x) for i ...)`, the column `w[:, 0:1]` then "sums to 1" on every row; it must not
  be taken for the gate (that left the per-slot products unreadable and the collapse unjudged, exit 4).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from corpus._plant import GateParams, plant_logit_gates
from torch import nn

import mmoe_inspect as mi

FEATURES = [f"x{i}" for i in range(8)]
TASKS = ("click", "buy")


def frame(n: int = 800) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    f = pd.DataFrame(rng.normal(size=(n, len(FEATURES))).astype("float32"), columns=FEATURES)
    f["click"] = (f["x0"] > 0).astype("float64")
    f["buy"] = (f["x1"] > 1).astype("float64")
    return f


def inspect(model: nn.Module) -> mi.InspectionResult:
    return mi.inspect(
        model.eval(), frame(), input_fn=lambda d: torch.tensor(d[FEATURES].to_numpy()), columns=FEATURES
    )


def routing(result: mi.InspectionResult) -> set[tuple[str, str]]:
    return {(f.code, f.subject) for f in result.findings if not f.code.startswith("task_")}


def plant(gates: dict[str, nn.Linear], case: str, n_experts: int) -> None:
    plant_logit_gates(
        {t: GateParams(lin.weight, lin.bias) for t, lin in gates.items()},
        case,
        expert_names={t: tuple(str(i) for i in range(n_experts)) for t in gates},
        collapse=("click", "0"),
        dead=str(n_experts - 1),
        identical=tuple(gates),
    )


# ------------------------------------------------------------------ builtin sum of per-slot products
class BuiltinSumMMoE(nn.Module):
    """MMoE whose mixture is `sum(w[:, i:i+1] * experts[i](x) for i ...)` (Python's `sum`, starting from 0)."""

    def __init__(self, n_experts: int = 4, hidden: int = 8) -> None:
        super().__init__()
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(len(FEATURES), hidden), nn.ReLU()) for _ in range(n_experts)
        )
        self.gates = nn.ModuleDict({t: nn.Linear(len(FEATURES), n_experts) for t in TASKS})
        self.towers = nn.ModuleDict({t: nn.Linear(hidden, 1) for t in TASKS})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for t in TASKS:
            w = self.gates[t](x).softmax(-1)
            h = sum(w[:, i : i + 1] * e(x) for i, e in enumerate(self.experts))
            out[t] = torch.sigmoid(self.towers[t](h)).squeeze(-1)
        return out


@pytest.mark.parametrize("case", ["collapsed", "specialized"])
def test_a_saturated_softmax_mixed_by_builtin_sum_is_judged(case: str) -> None:
    torch.manual_seed(0)
    model = BuiltinSumMMoE()
    plant(dict(model.gates.items()), case, 4)
    with torch.no_grad():  # the plant saturates float32: click's weights are exactly one-hot
        w = model.gates["click"](torch.randn(64, len(FEATURES))).softmax(-1)
    assert bool((w[:, 0] == 1).all()) == (case == "collapsed")
    result = inspect(model)
    assert not result.topology.unresolved
    assert [(g.name, len(g.experts)) for g in result.topology.gates] == [("click", 4), ("buy", 4)]
    expected = {("collapsed_gate", "click")} if case == "collapsed" else set()
    assert routing(result) == expected
