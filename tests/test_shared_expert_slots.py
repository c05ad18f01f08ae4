"""One expert module in several gate slots: `nn.ModuleList([a, b, a, c])` (a copy-paste bug, or weight tying on
purpose), or a slot whose module is a different object holding the same parameters (tied weights).

A gate that splits every row 50/50 between two slots of one module sends every row to that one module: a
collapsed gate. The per-slot statistics saw two experts at 50% (`effective_experts` 2) and reported only
`input_independent_gate`; a slot of a tied module that no gate weights was a `dead_expert`, though its
parameters do all the work through the other slot. The gate statistics now count slots that hold one module
(same object, or the same parameters: `ExpertSpec.same_as`) as one expert, and discovery says so in a note.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import mmoe_inspect as mi
from mmoe_inspect.analysis import codes

FEATURES = [f"x{i}" for i in range(8)]
TASKS = ("click", "buy")


class SlotMMoE(nn.Module):
    """An MMoE over 4 expert slots `[a, b, a', c]`: slot 2 is module `a` itself (`tie="module"`) or a new
    `Sequential(Linear, ReLU)` whose Linear holds a's weight and bias (`tie="params"`). Gates `Linear(8, 4)`
    with softmax, sigmoid towers. `plant`: healthy (random gates), split (click's gate 50/50 on slots 0 and 2
    for every row), slot2_unused (every gate gives slot 2 nothing; slot 0 carries a's traffic)."""

    def __init__(self, tie: str, plant: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        a, b, c = (nn.Sequential(nn.Linear(8, 16), nn.ReLU()) for _ in range(3))
        if tie == "module":
            tied = a
        else:
            tied = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
            tied[0].weight, tied[0].bias = a[0].weight, a[0].bias
        self.experts = nn.ModuleList([a, b, tied, c])
        self.gates = nn.ModuleList(nn.Linear(8, 4) for _ in TASKS)
        self.towers = nn.ModuleList(nn.Linear(16, 1) for _ in TASKS)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for g in self.gates:
                g.weight.copy_(torch.randn(4, 8, generator=gen) * 1.5)
                g.bias.zero_()
            if plant == "split":
                self.gates[0].weight.zero_()
                self.gates[0].bias.copy_(torch.tensor([20.0, 0.0, 20.0, 0.0]))
            elif plant == "slot2_unused":
                for g in self.gates:
                    g.weight[2].zero_()
                    g.bias[2] = -40.0

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ex = torch.stack([e(x) for e in self.experts], 1)  # [B, 4, 16]
        return {
            t: torch.sigmoid(tw((torch.softmax(g(x), -1).unsqueeze(-1) * ex).sum(1))).squeeze(-1)
            for t, g, tw in zip(TASKS, self.gates, self.towers, strict=True)
        }


def inspect(tie: str, plant: str) -> mi.InspectionResult:
    rng = np.random.default_rng(0)
    data = pd.DataFrame(rng.normal(size=(1000, 8)).astype("float32"), columns=FEATURES)
    return mi.inspect(
        SlotMMoE(tie, plant).eval(),
        data,
        input_fn=lambda d: torch.tensor(d[FEATURES].to_numpy()),
        columns=FEATURES,
        tasks=list(TASKS),
        labels=False,
    )


@pytest.mark.parametrize("tie", ["module", "params"])
def test_a_gate_split_between_two_slots_of_one_module_is_collapsed(tie: str) -> None:
    result = inspect(tie, "split")
    (f,) = [f for f in result.findings if f.code == codes.COLLAPSED_GATE]
    assert f.subject == "click"
    assert f.evidence["effective_experts"] < 1.01 and f.evidence["max_mean_weight"] > 0.99
    assert "its 4 slots hold 3 distinct expert modules" in f.message, f.message
    assert not any(f.code == codes.INPUT_INDEPENDENT_GATE for f in result.findings)
    row = result.tables["gate_metrics"].set_index("gate").loc["click"]
    assert row["distinct_experts"] == 3 and row["top_expert"] == "experts.0"


@pytest.mark.parametrize("tie", ["module", "params"])
def test_healthy_gates_over_one_module_in_two_slots_get_a_note(tie: str) -> None:
    result = inspect(tie, "healthy")
    routing = {codes.COLLAPSED_GATE, codes.INPUT_INDEPENDENT_GATE, codes.DEAD_EXPERT, codes.ONE_EXPERT_MODULE}
    assert not [f for f in result.findings if f.code in routing], result.findings
    note = next(n for n in result.topology.notes if n.startswith("gate slots holding one expert module"))
    assert "click: experts.0 in 2 slots" in note, note
    if tie == "params":
        assert [e.same_as for e in result.topology.experts] == [None, None, "experts.0", None]
        assert "(experts.0, experts.2)" in note, note


def test_a_tied_slot_no_gate_weights_is_not_a_dead_expert() -> None:
    """Slot 2 (experts.2, a's parameters) gets no weight, slot 0 (a) all of a's share: a's parameters are used."""
    result = inspect("params", "slot2_unused")
    dead = {f.subject for f in result.findings if f.code == codes.DEAD_EXPERT}
    assert not dead, [(f.code, f.subject) for f in result.findings]


def test_tied_experts_round_trip_through_a_spec_file() -> None:
    from mmoe_inspect.topology.discovery import discover_topology
    from mmoe_inspect.topology.spec import Topology, TopologyError

    topo = discover_topology(SlotMMoE("params", "healthy").eval(), torch.randn(61, 8))
    again = Topology.from_toml(topo.to_toml())
    assert [e.same_as for e in again.experts] == [None, None, "experts.0", None]
    bad = topo.to_dict()
    bad["experts"][2]["same_as"] = "experts.9"
    with pytest.raises(TopologyError, match="same_as names no other expert"):
        Topology.from_dict(bad)
