"""What a gate means, whatever its weights happen to be on the example rows.

* A collapsed softmax saturates: in float32 its weights are exactly `[1, 0, 0, 0]`. Mixed by Python's builtin
  `sum(w[:, i:i+1] * expert_i(x) for i ...)`, the column `w[:, 0:1]` then "sums to 1" on every row; it must not
  be taken for the gate (that left the per-slot products unreadable and the collapse unjudged, exit 4).
* One weight vector for every row (no batch axis) is a gate only on the simplex: `softmax(param)` is one
  (input-independent by construction, and discovery says so); a learned linear combination (`[1.3, 0.4]`, or
  AdaTT's native-expert residual next to the real fusion gate, even at its `[0.5, 0.5]` initialisation) is a
  linear layer: a collapsed or uniform "gate" there was a false finding on a healthy model.
* Top-1 routing with capacity (Switch style): the overflow of an over-full expert gets no expert (an all-zero gate
  row). Those rows are counted (`rows_without_expert`, critical when most rows are dropped) and are nobody's top-1,
  and collapse is judged on the rows that get an expert: a router that sends every row to one expert is
  collapsed although capacity keeps its mean weight on that expert near C / B.
"""

from __future__ import annotations

import math

import eight_feature_frames
import pandas as pd
import pytest
import torch
from corpus._plant import GateParams, plant_logit_gates
from torch import nn

import mmoe_inspect as mi

FEATURES, TASKS = eight_feature_frames.FEATURES, eight_feature_frames.TASKS


def frame(n: int = 800) -> pd.DataFrame:
    return eight_feature_frames.frame(n)


def inspect(model: nn.Module) -> mi.InspectionResult:
    return eight_feature_frames.inspect(model, 800)


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


# ------------------------------------------------------------------ weights with no batch axis
class AdaTTFusion(nn.Module):
    """AdaTT (Li et al., KDD 2023) at toy size: per task 2 own experts + 2 shared ones; per task a fusion gate
    (softmax over all 6) plus a residual `einsum("k,bkh->bh", self_weights[t], own experts)` (a learned linear
    combination, no softmax)."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()

        def mlp() -> nn.Module:
            return nn.Sequential(nn.Linear(len(FEATURES), hidden), nn.ReLU())

        self.own = nn.ModuleList(nn.ModuleList(mlp() for _ in range(2)) for _ in TASKS)
        self.shared = nn.ModuleList(mlp() for _ in range(2))
        self.gates = nn.ModuleDict({t: nn.Linear(len(FEATURES), 6) for t in TASKS})
        self.self_weights = nn.Parameter(torch.full((len(TASKS), 2), 0.5))
        self.towers = nn.ModuleDict({t: nn.Linear(hidden, 1) for t in TASKS})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        own = [[e(x) for e in group] for group in self.own]
        every = torch.stack([h for group in own for h in group] + [e(x) for e in self.shared], 1)  # [B, 6, H]
        out = {}
        for t, task in enumerate(TASKS):
            fused = torch.einsum("be,beh->bh", self.gates[task](x).softmax(-1), every)
            resid = torch.einsum("k,bkh->bh", self.self_weights[t], torch.stack(own[t], 1))
            out[task] = torch.sigmoid(self.towers[task](fused + resid)).squeeze(-1)
        return out


@pytest.mark.parametrize("self_weights", ["init", "trained"])
@pytest.mark.parametrize("case", ["specialized", "collapsed"])
def test_adatt_native_expert_residual_is_not_a_gate(case: str, self_weights: str) -> None:
    torch.manual_seed(0)
    model = AdaTTFusion()
    plant(dict(model.gates.items()), case, 6)
    if self_weights == "trained":  # off the simplex, as after training
        with torch.no_grad():
            model.self_weights.copy_(torch.tensor([[1.3, 0.4], [0.2, 0.9]]))
    result = inspect(model)
    assert [(g.name, len(g.experts)) for g in result.topology.gates] == [("click", 6), ("buy", 6)]
    expected = {("collapsed_gate", "click")} if case == "collapsed" else set()
    assert routing(result) == expected


class WeightedBranches(nn.Module):
    """Every task mixes the experts by one weight vector for every row: `softmax(logits[t])` ("softmax") or the
    parameter as it is ("raw"), by `mixing`: `einsum("e,ebh->bh")` over experts stacked first, `w @ [B, E, H]`,
    `(w[:, None] * [B, E, H]).sum(1)` or `sum(w[i] * x_i)` (named `branches`: modules named `experts` that feed
    no gate are reported as unresolved, which is not what this tests)."""

    def __init__(self, how: str, rows: list[list[float]], hidden: int = 8, mixing: str = "einsum") -> None:
        super().__init__()
        self.how = how
        self.mixing = mixing
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Linear(len(FEATURES), hidden), nn.ReLU()) for _ in range(len(rows[0]))
        )
        self.mix = nn.Parameter(torch.tensor(rows))
        self.towers = nn.ModuleDict({t: nn.Linear(hidden, 1) for t in TASKS})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = [e(x) for e in self.branches]
        ex = torch.stack(parts)  # [E, B, H]
        out = {}
        for t, task in enumerate(TASKS):
            w = self.mix[t].softmax(-1) if self.how == "softmax" else self.mix[t]
            if self.mixing == "einsum":
                h = torch.einsum("e,ebh->bh", w, ex)
            elif self.mixing == "matmul":
                h = w @ ex.transpose(0, 1)  # [E] @ [B, E, H]
            elif self.mixing == "mul_sum":
                h = (w[:, None] * ex.transpose(0, 1)).sum(1)
            else:
                h = sum(w[i] * p for i, p in enumerate(parts))
            out[task] = torch.sigmoid(self.towers[task](h)).squeeze(-1)
        return out


def test_a_softmax_of_a_parameter_is_an_input_independent_gate() -> None:
    result = inspect(WeightedBranches("softmax", [[20.0, 0.0, 0.0, 0.0], [1.0, -0.5, 0.3, 0.2]]))
    topo = result.topology
    assert [(g.name, g.output, g.batch_dim) for g in topo.gates] == [
        ("click", "probs", -1),
        ("buy", "probs", -1),
    ]
    assert any("input-independent by construction" in n for n in topo.notes)
    assert routing(result) == {("collapsed_gate", "click"), ("input_independent_gate", "buy")}


@pytest.mark.parametrize("mixing", ["einsum", "matmul", "mul_sum", "per_expert"])
def test_a_learned_linear_combination_is_not_a_gate(mixing: str) -> None:
    """The same evidence whichever op mixes: off the simplex, a learned vector is a linear layer."""
    rows = [[1.3, 0.4, -0.2, 0.1], [0.3, 0.2, 0.1, 0.1]]
    result = inspect(WeightedBranches("raw", rows, mixing=mixing))
    topo = result.topology
    assert not topo.gates and not topo.unresolved and topo.architecture == "shared_bottom"
    assert any("outside [0, 1]" in n and "not normalized" in n for n in topo.notes)
    assert not routing(result)
    on_simplex = inspect(WeightedBranches("raw", [[0.7, 0.1, 0.1, 0.1], [0.1, 0.2, 0.3, 0.4]], mixing=mixing))
    assert [g.name for g in on_simplex.topology.gates] == ["click", "buy"]  # a fixed average is still judged
    assert routing(on_simplex) == {("input_independent_gate", "click"), ("input_independent_gate", "buy")}


# ------------------------------------------------------------------ top-1 routing with capacity dropping
class CapacityTop1(nn.Module):
    """Per task a top-1 router with capacity `ceil(1.25 * B / E)` per expert (batch order decides who overflows):
    `combine = keep * one_hot(argmax) * max prob`, `einsum("be,ebh->bh", combine, experts) + skip(x)`."""

    def __init__(self, n_experts: int = 4, hidden: int = 8) -> None:
        super().__init__()
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(len(FEATURES), hidden), nn.ReLU()) for _ in range(n_experts)
        )
        self.routers = nn.ModuleDict({t: nn.Linear(len(FEATURES), n_experts) for t in TASKS})
        self.skip = nn.Linear(len(FEATURES), hidden)
        self.towers = nn.ModuleDict({t: nn.Linear(hidden, 1) for t in TASKS})

    def combine(self, x: torch.Tensor, task: str) -> torch.Tensor:
        n_experts = len(self.experts)
        gate, idx = self.routers[task](x).softmax(-1).max(-1)
        mask = nn.functional.one_hot(idx, n_experts).to(x.dtype)
        keep = (torch.cumsum(mask, 0) * mask <= math.ceil(1.25 * x.shape[0] / n_experts)).to(x.dtype) * mask
        return keep * gate.unsqueeze(-1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ex = torch.stack([e(x) for e in self.experts], 0)  # [E, B, H]
        out = {}
        for t in TASKS:
            h = torch.einsum("be,ebh->bh", self.combine(x, t), ex) + self.skip(x)
            out[t] = torch.sigmoid(self.towers[t](h)).squeeze(-1)
        return out


@pytest.mark.parametrize("case", ["collapsed", "specialized"])
def test_top1_capacity_dropped_rows_are_counted_and_collapse_judged(case: str) -> None:
    torch.manual_seed(0)
    model = CapacityTop1()
    plant(dict(model.routers.items()), case, 4)
    x = torch.tensor(frame()[FEATURES].to_numpy())  # one batch of 800 rows, as inspect reads it
    with torch.no_grad():
        dropped = {t: float((model.combine(x, t).sum(1) == 0).double().mean()) for t in TASKS}
    result = inspect(model)
    assert [g.name for g in result.topology.gates] == ["click", "buy"]
    found = {f.subject: f for f in result.findings if f.code == "rows_without_expert"}
    for t in TASKS:  # every dropped row counted, exactly
        assert found[t].evidence["no_expert_share"] == pytest.approx(dropped[t], abs=1e-12)
    if case == "collapsed":  # every click row picks expert 0; capacity keeps 250 of 800
        assert dropped["click"] == pytest.approx(550 / 800)
        assert found["click"].severity == "critical"
        collapsed = [f for f in result.findings if f.code == "collapsed_gate"]
        assert [f.subject for f in collapsed] == ["click"]
        assert collapsed[0].evidence["top1_share"] == 1.0
        assert "rows get no expert" in result.verdict and "collapsed gate" in result.verdict
    else:  # a few rows overflow by design: noted, not a failure
        assert all(0 < dropped[t] < 0.2 and found[t].severity == "info" for t in TASKS)
        assert {f.severity for f in result.findings if not f.code.startswith("task_")} == {"info"}
        assert result.verdict.startswith("Yes")
    util = result.table("utilization")  # a dropped row is nobody's top-1 (argmax of zeros would say expert 0)
    for t in TASKS:
        assert util[util.gate == t]["top1_share"].sum() == pytest.approx(1 - dropped[t], abs=1e-12)


# ------------------------------------------------------------------ a sigmoid gate with a masked row
class MaskedSigmoid(nn.Module):
    """Per task `w = sigmoid(router(x)) * (x7 < 50)`: weights need not sum to 1, and a row with an out-of-range
    feature gets no expert. Planted: expert 0 weighted `sigmoid(2 * x_t)` (mean 0.5, top on ~97% of rows),
    experts 1 and 2 `sigmoid(-4)` (~0.018): a strong preference, not a collapse."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(len(FEATURES), hidden), nn.ReLU()) for _ in range(3)
        )
        self.routers = nn.ModuleDict({t: nn.Linear(len(FEATURES), 3) for t in TASKS})
        self.towers = nn.ModuleDict({t: nn.Linear(hidden, 1) for t in TASKS})
        with torch.no_grad():
            for i, lin in enumerate(self.routers.values()):
                lin.weight.zero_()
                lin.bias.copy_(torch.tensor([0.0, -4.0, -4.0]))
                lin.weight[0, i] = 2.0

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ex = torch.stack([e(x) for e in self.experts], 1)
        keep = (x[:, 7:8] < 50).to(x.dtype)
        out = {}
        for t in TASKS:
            w = torch.sigmoid(self.routers[t](x)) * keep
            out[t] = torch.sigmoid(self.towers[t]((w.unsqueeze(-1) * ex).sum(1))).squeeze(-1)
        return out


def test_all_zero_rows_do_not_make_a_sigmoid_gate_collapsed() -> None:
    """Judging collapse on the rows that get an expert is for a real share of such rows, and on a "weights" gate
    by the mean weight over them: one masked row of 800 made both sigmoid gates 'collapsed' (their top expert's
    93% share of the weight stood in for its 0.5 mean weight); 30% masked rows leave the mean weight at 0.5."""
    torch.manual_seed(0)
    model = MaskedSigmoid().eval()
    clean = frame()
    one = clean.copy()
    one.loc[5, "x7"] = 100.0
    many = clean.copy()
    many.loc[many["x7"] > 0.5, "x7"] = 100.0
    got = {}
    for name, rows in (("clean", clean), ("one", one), ("many", many)):
        result = mi.inspect(
            model, rows, input_fn=lambda d: torch.tensor(d[FEATURES].to_numpy()), columns=FEATURES
        )
        gm = result.table("gate_metrics").set_index("gate")
        assert not gm["simplex"].any()
        zero = float((rows["x7"] >= 50).sum())
        assert list(gm["zero_rows"]) == [zero, zero]
        assert (gm["max_mean_weight"] < 0.6).all() and (gm["top_expert_weight_share"] > 0.9).all()
        got[name] = {(code, subject) for code, subject in routing(result) if subject in TASKS}
    assert got["one"] == got["clean"]
    assert not any(code == "collapsed_gate" for code, _ in got["clean"])
    assert got["many"] == got["clean"] | {("rows_without_expert", t) for t in TASKS}


class KeptGate(nn.Module):
    """Per task `w = softmax(router(x)) * (x7 < 50)` ("keep", top expert ~0.9 of the weight and top-1 on every
    routed row) or `w = sigmoid(router(x))` ("allon": every expert ~0.95, expert 0 a little more: top-1 on every
    row, yet all three are used at nearly full weight)."""

    def __init__(self, style: str, hidden: int = 8) -> None:
        super().__init__()
        self.style = style
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(len(FEATURES), hidden), nn.ReLU()) for _ in range(3)
        )
        self.routers = nn.ModuleDict({t: nn.Linear(len(FEATURES), 3) for t in TASKS})
        self.towers = nn.ModuleDict({t: nn.Linear(hidden, 1) for t in TASKS})
        bias = [3.5, 2.9, 2.9] if style == "allon" else [2.97, 0.0, 0.0]
        with torch.no_grad():
            for i, lin in enumerate(self.routers.values()):
                lin.weight.zero_()
                lin.bias.copy_(torch.tensor(bias))
                lin.weight[0, i] = 0.3

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ex = torch.stack([e(x) for e in self.experts], 1)
        out = {}
        for t in TASKS:
            z = self.routers[t](x)
            w = (
                torch.sigmoid(z)
                if self.style == "allon"
                else torch.softmax(z, -1) * (x[:, 7:8] < 50).to(x.dtype)
            )
            out[t] = torch.sigmoid(self.towers[t]((w.unsqueeze(-1) * ex).sum(1))).squeeze(-1)
        return out


def _collapsed(model: nn.Module, rows: pd.DataFrame) -> set[str]:
    result = mi.inspect(
        model.eval(), rows, input_fn=lambda d: torch.tensor(d[FEATURES].to_numpy()), columns=FEATURES
    )
    return {f.subject for f in result.findings if f.code == "collapsed_gate"}


def test_collapse_does_not_flip_around_one_percent_of_masked_rows() -> None:
    """0, 19 (0.95%) and 20 (1%) masked rows of 2,000: the top expert holds ~0.9 of the weight on the routed rows
    each time, so the gate is collapsed each time (19 rows diluted the mean weight below 0.9 and said nothing)."""
    torch.manual_seed(0)
    model = KeptGate("keep")
    for k in (0, 19, 20):
        rows = frame(2000)
        rows.loc[: k - 1, "x7"] = 100.0
        assert _collapsed(model, rows) == set(TASKS), k


def test_a_sigmoid_gate_that_uses_every_expert_is_not_collapsed() -> None:
    """Every expert at ~0.95 (expert 0 top-1 on every row, mean weight 0.97): all three are used, not collapsed."""
    torch.manual_seed(0)
    assert _collapsed(KeptGate("allon"), frame(2000)) == set()
