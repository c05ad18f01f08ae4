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
    assert "its 4 slots hold 3 distinct expert outputs" in f.message, f.message
    assert not any(f.code == codes.INPUT_INDEPENDENT_GATE for f in result.findings)
    row = result.tables["gate_metrics"].set_index("gate").loc["click"]
    assert row["distinct_experts"] == 3 and row["top_expert"] == "experts.0"


@pytest.mark.parametrize("tie", ["module", "params"])
def test_healthy_gates_over_one_module_in_two_slots_get_a_note(tie: str) -> None:
    result = inspect(tie, "healthy")
    routing = {codes.COLLAPSED_GATE, codes.INPUT_INDEPENDENT_GATE, codes.DEAD_EXPERT, codes.ONE_EXPERT_MODULE}
    assert not [f for f in result.findings if f.code in routing], result.findings
    note = next(n for n in result.topology.notes if n.startswith("gate slots holding one expert output"))
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


class OneEncoderTwoInputs(nn.Module):
    """Gate slots `[enc(x[:, :4]), enc(x[:, 4:]), other(x)]`: one module on two feature groups holds two
    different outputs. Planted: each row goes to one of the two enc calls by the sign of x0 (input-dependent,
    polarized routing); `other` gets nothing. `chunks=True`: four slots, `enc` on each 2-column chunk."""

    def __init__(self, chunks: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.chunks = chunks
        self.enc = nn.Sequential(nn.Linear(2 if chunks else 4, 16), nn.ReLU())
        self.other = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        n = 4 if chunks else 3
        self.gates = nn.ModuleList(nn.Linear(8, n) for _ in TASKS)
        self.towers = nn.ModuleList(nn.Linear(16, 1) for _ in TASKS)
        with torch.no_grad():
            for g in self.gates:
                g.weight.zero_()
                g.bias.fill_(-20.0)
                g.bias[:2] = 0.0
                g.weight[0, 0], g.weight[1, 0] = 20.0, -20.0

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.chunks:
            ex = torch.stack([self.enc(c) for c in x.split(2, dim=1)], 1)
        else:
            ex = torch.stack([self.enc(x[:, :4]), self.enc(x[:, 4:]), self.other(x)], 1)
        return {
            t: torch.sigmoid(tw((torch.softmax(g(x), -1).unsqueeze(-1) * ex).sum(1))).squeeze(-1)
            for t, g, tw in zip(TASKS, self.gates, self.towers, strict=True)
        }


def inspect_model(model: nn.Module) -> mi.InspectionResult:
    rng = np.random.default_rng(0)
    data = pd.DataFrame(rng.normal(size=(1000, 8)).astype("float32"), columns=FEATURES)
    return mi.inspect(
        model.eval(),
        data,
        input_fn=lambda d: torch.tensor(d[FEATURES].to_numpy()),
        columns=FEATURES,
        tasks=list(TASKS),
        labels=False,
    )


def test_one_module_on_different_inputs_is_several_experts() -> None:
    """Slots count as one expert only when they hold one output: `enc` on two feature groups routed row by row
    was 'collapsed: 100% of its weight to expert enc' (distinct_experts 2); it is a polarized gate over 3."""
    result = inspect_model(OneEncoderTwoInputs())
    gm = result.tables["gate_metrics"].set_index("gate")
    assert list(gm["distinct_experts"]) == [3, 3]
    assert (gm["max_mean_weight"] < 0.6).all() and (gm["effective_experts"] > 1.9).all()
    found = {(f.code, f.subject) for f in result.findings}
    assert {(codes.POLARIZED_GATE, t) for t in TASKS} <= found
    assert not any(code in (codes.COLLAPSED_GATE, codes.ONE_EXPERT_MODULE) for code, _ in found), found
    assert not any(n.startswith("gate slots holding one expert") for n in result.topology.notes)
    assert [g.slot_outputs for g in result.topology.gates] == [(0, 1, 2), (0, 1, 2)]
    again = type(result.topology).from_toml(
        result.topology.to_toml()
    )  # the slots' outputs survive a spec file
    assert [g.slot_outputs for g in again.gates] == [(0, 1, 2), (0, 1, 2)]


def test_one_module_on_four_chunks_is_not_one_expert_module() -> None:
    """One encoder on four different column chunks: the routing picks between four different outputs, not a
    Shared-Bottom in disguise (`one_expert_module` was critical)."""
    result = inspect_model(OneEncoderTwoInputs(chunks=True))
    gm = result.tables["gate_metrics"].set_index("gate")
    assert list(gm["distinct_experts"]) == [4, 4]
    assert not any(f.code in (codes.ONE_EXPERT_MODULE, codes.COLLAPSED_GATE) for f in result.findings)


class RecomputedInput(nn.Module):
    """`nn.ModuleList([e] * 3)` (one expert module in three slots), each call fed the same input VALUES computed
    anew: `x.view(B, -1)`, `x.float() * 1.0`, or a LayerNorm run once per expert (`style`). A Shared-Bottom in
    disguise: the three slots hold one output whatever the gates do."""

    def __init__(self, style: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.style = style
        self.norm = nn.LayerNorm(8)
        self.experts = nn.ModuleList([nn.Sequential(nn.Linear(8, 16), nn.ReLU())] * 3)
        self.gates = nn.ModuleList(nn.Linear(8, 3) for _ in TASKS)
        self.towers = nn.ModuleList(nn.Linear(16, 1) for _ in TASKS)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        def fed(m: nn.Module) -> torch.Tensor:
            if self.style == "view":
                return m(x.view(x.shape[0], -1))
            if self.style == "float":
                return m(x.float() * 1.0)
            return m(self.norm(x))

        ex = torch.stack([fed(m) for m in self.experts], 1)  # [B, 3, 16]
        return {
            t: torch.sigmoid(tw((torch.softmax(g(x), -1).unsqueeze(-1) * ex).sum(1))).squeeze(-1)
            for t, g, tw in zip(TASKS, self.gates, self.towers, strict=True)
        }


@pytest.mark.parametrize("style", ["view", "float", "norm"])
def test_one_module_on_the_same_values_recomputed_per_call_is_one_expert_module(style: str) -> None:
    """The input of each call is a new tensor (a view, a cast, a per-call norm) with the same values: the slots
    were keyed by input node and counted as 3 experts, with no finding at all."""
    result = inspect_model(RecomputedInput(style))
    gm = result.tables["gate_metrics"].set_index("gate")
    assert list(gm["distinct_experts"]) == [1, 1]
    found = {(f.code, f.subject) for f in result.findings}
    assert {(codes.ONE_EXPERT_MODULE, t) for t in TASKS} <= found, found


class BatchedBank(nn.Module):
    """A genuine MMoE whose 3 experts are one batched module `W [3, 8, 16]`, expert k picked by an int argument
    (`experts(x, k)`) or shifted by a keyword tensor (`experts(x, cond=emb[k])`, `style="kwarg"`): the module's
    hooks see only the positional tensor `x`, the same in every call, yet the three outputs differ."""

    class Bank(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.W = nn.Parameter(torch.randn(3, 8, 16) * 0.5)

        def forward(self, x: torch.Tensor, k: int = 0, cond: torch.Tensor | None = None) -> torch.Tensor:
            h = x @ self.W[k]
            return torch.relu(h if cond is None else h + cond)

    def __init__(self, style: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.style = style
        self.experts = self.Bank()
        self.emb = nn.Parameter(torch.randn(3, 16))
        self.gates = nn.ModuleList(nn.Linear(8, 3) for _ in TASKS)
        self.towers = nn.ModuleList(nn.Linear(16, 1) for _ in TASKS)
        with torch.no_grad():
            for g in self.gates:
                g.weight.normal_(0, 1.5)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.style == "intarg":
            ex = torch.stack([self.experts(x, k) for k in range(3)], 1)
        else:
            ex = torch.stack([self.experts(x, cond=self.emb[k]) for k in range(3)], 1)
        return {
            t: torch.sigmoid(tw((torch.softmax(g(x), -1).unsqueeze(-1) * ex).sum(1))).squeeze(-1)
            for t, g, tw in zip(TASKS, self.gates, self.towers, strict=True)
        }


@pytest.mark.parametrize("style", ["intarg", "kwarg"])
def test_one_batched_module_picked_by_an_argument_is_several_experts(style: str) -> None:
    """Was critical one_expert_module ('Shared-Bottom in disguise') on both gates: the slots hold 3 outputs."""
    result = inspect_model(BatchedBank(style))
    gm = result.tables["gate_metrics"].set_index("gate")
    assert list(gm["distinct_experts"]) == [3, 3]
    assert not any(f.code in (codes.ONE_EXPERT_MODULE, codes.COLLAPSED_GATE) for f in result.findings)
    assert [g.slot_outputs for g in result.topology.gates] == [(0, 1, 2), (0, 1, 2)]
