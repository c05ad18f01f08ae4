"""Expert outputs transformed on their way to the gate-weighted sum: a module applied position-wise to the
stacked `[B, E, H]` experts (shared LayerNorm / Linear / ReLU, a per-task LayerNorm) keeps the E rows as E
experts, so the gates are found and a planted collapsed or identical gate is reported, while attention over a
set (values that rows of one computation, mixed across positions) stays gate-less. Attribute and class names
avoid the MoE vocabulary on purpose: discovery must not lean on names."""

from __future__ import annotations

import pytest
import torch
from eight_feature_frames import FEATURES, codes, frame, inspect
from torch import nn

import mmoe_inspect as mi

E, H = 4, 16


def collapse(lin: nn.Linear, expert: int) -> None:
    """The gate layer ignores its input and puts all weight on `expert`."""
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.fill_(0.0)
        lin.bias[expert] = 20.0


def plant_gates(gates: nn.ModuleList, plant: str) -> None:
    """Sharpen the task gates (weights x 4), then plant: "collapsed" puts the first gate on expert 0,
    "identical" copies the first gate into the second; anything else leaves them healthy."""
    with torch.no_grad():
        for g in gates:
            g.weight.mul_(4)
    if plant == "collapsed":
        collapse(gates[0], 0)
    elif plant == "identical":
        gates[1].load_state_dict(gates[0].state_dict())


class StackOpRanker(nn.Module):
    """Two-task MMoE whose stacked experts pass through `op` (a module) before the weighted sum."""

    def __init__(self, op: str, plant: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.op = op
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(len(FEATURES), H), nn.ReLU()) for _ in range(E))
        self.norm = nn.LayerNorm(H)
        self.proj = nn.Linear(H, H)
        self.act = nn.ReLU()
        self.task_norm = nn.ModuleList(nn.LayerNorm(H) for _ in range(2))
        self.mix_w = nn.ModuleList(nn.Linear(len(FEATURES), E) for _ in range(2))
        self.heads = nn.ModuleList(nn.Linear(H, 1) for _ in range(2))
        plant_gates(self.mix_w, plant)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ex = torch.stack([m(x) for m in self.mlps], 1)
        shared = {"layernorm": self.norm, "proj": self.proj, "relu": self.act}.get(self.op)
        if shared is not None:
            ex = shared(ex)
        out = {}
        for t, (name, g, head) in enumerate(zip(("click", "buy"), self.mix_w, self.heads, strict=True)):
            rows = self.task_norm[t](ex) if self.op == "task_norm" else ex
            w = torch.softmax(g(x), -1).unsqueeze(-1)
            out[name] = torch.sigmoid(head((w * rows).sum(1))).squeeze(-1)
        return out


@pytest.mark.parametrize("op", ["layernorm", "proj", "relu", "task_norm"])
def test_a_position_wise_module_on_the_stacked_experts_keeps_the_gates(op: str) -> None:
    result = inspect(StackOpRanker(op, "collapsed"))
    gates = result.topology.gates
    assert len(gates) == 2
    assert all(len(g.experts) == E for g in gates)
    assert codes(result).get("collapsed_gate") == {"click"}


def test_identical_gates_over_per_task_normalized_experts_are_compared() -> None:
    result = inspect(StackOpRanker("task_norm", "identical"))
    assert "tasks_route_identically" in codes(result)


class FieldAttention(nn.Module):
    """Self-attention over the fields: every output row mixes all rows (not position-wise)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(s).chunk(3, -1)
        return torch.softmax(q @ k.transpose(1, 2) / 4.0, -1) @ v


class FieldPooling(nn.Module):
    """Shared-Bottom: per-field projections stacked `[B, F, D]`, self-attention over the fields, then a
    softmax attention pooling over the fields; the pooling is attention, not a gate."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fields = nn.ModuleList(nn.Linear(1, H) for _ in FEATURES)
        self.attn = FieldAttention(H)
        self.score = nn.Linear(H, 1)
        self.heads = nn.ModuleList(nn.Linear(H, 1) for _ in range(2))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        s = self.attn(torch.stack([f(x[:, i : i + 1]) for i, f in enumerate(self.fields)], 1))
        pooled = (torch.softmax(self.score(s).squeeze(-1), -1).unsqueeze(-1) * s).sum(1)
        return {
            n: torch.sigmoid(h(pooled)).squeeze(-1) for n, h in zip(("click", "buy"), self.heads, strict=True)
        }


def test_attention_over_a_set_of_field_rows_stays_gate_less() -> None:
    result = inspect(FieldPooling())
    assert not result.topology.gates


class FlatRanker(nn.Module):
    """TensorFlow-style flat mixing: experts concatenated `[B, E*H]`, each gate widened to `[B, E*H]` by
    `unsqueeze(-1).expand(B, E, H).reshape(B, E*H)`, multiplied, viewed `[B, E, H]` and summed over E
    (`.sum(1)`, or the rows added up in a loop, in place or not)."""

    def __init__(self, total: str, plant: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.total = total
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(len(FEATURES), H), nn.ReLU()) for _ in range(E))
        self.mix_w = nn.ModuleList(nn.Linear(len(FEATURES), E) for _ in range(2))
        self.towers = nn.ModuleList(nn.Linear(H, 1) for _ in range(2))
        plant_gates(self.mix_w, plant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = torch.cat([m(x) for m in self.mlps], 1)
        outs = []
        for g, tower in zip(self.mix_w, self.towers, strict=True):
            w = torch.softmax(g(x), 1).unsqueeze(-1).expand(-1, E, H).reshape(x.shape[0], -1)
            weighted = (flat * w).view(-1, E, H)
            if self.total == "sum":
                h = weighted.sum(1)
            elif self.total == "loop":
                h = weighted[:, 0]
                for i in range(1, E):
                    h = h + weighted[:, i]
            else:
                h = torch.zeros(x.shape[0], H)
                for i in range(E):
                    h += weighted[:, i]
            outs.append(torch.sigmoid(tower(h)))
        return torch.cat(outs, 1)


@pytest.mark.parametrize("total", ["sum", "loop", "inplace_loop"])
def test_flat_mixing_with_an_expanded_gate_is_a_mixture(total: str) -> None:
    model = FlatRanker(total, "collapsed").eval()
    result = mi.inspect(
        model,
        frame(),
        input_fn=lambda d: torch.tensor(d[FEATURES].to_numpy()),
        columns=FEATURES,
        tasks=["click", "buy"],
    )
    assert len(result.topology.gates) == 2
    assert codes(result).get("collapsed_gate") == {"click"}


class TwiceLayer(nn.Module):
    """One MMoE layer: four experts, a gate per task."""

    def __init__(self) -> None:
        super().__init__()
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(4, H), nn.ReLU()) for _ in range(E))
        self.gates = nn.ModuleList(nn.Linear(4, E) for _ in range(2))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        ex = torch.stack([m(x) for m in self.experts], 1)
        return [(torch.softmax(g(x), -1).unsqueeze(-1) * ex).sum(1) for g in self.gates]


class TwoSides(nn.Module):
    """The same MMoE layer applied to both halves of the features; per task the two outputs multiplied."""

    def __init__(self, plant: str = "collapsed") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mmoe = TwiceLayer()
        self.towers = nn.ModuleList(nn.Linear(H, 1) for _ in range(2))
        with torch.no_grad():
            for g in self.mmoe.gates:
                g.weight.mul_(4)
        if plant == "collapsed":
            collapse(self.mmoe.gates[0], 0)
        else:
            self.mmoe.gates[1].load_state_dict(self.mmoe.gates[0].state_dict())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        left, right = self.mmoe(x[:, :4]), self.mmoe(x[:, 4:])
        return {
            n: torch.sigmoid(t(a * b)).squeeze(-1)
            for n, t, a, b in zip(("click", "buy"), self.towers, left, right, strict=True)
        }


def test_a_layer_called_twice_never_compares_a_task_with_itself() -> None:
    result = inspect(TwoSides())
    assert len(result.topology.gates) == 4
    found = codes(result)
    assert "click" in found.get("collapsed_gate", set())
    for subject in found.get("tasks_route_identically", set()) | found.get("tasks_route_similarly", set()):
        a, b = (s.strip() for s in subject.split("~"))
        assert a != b, subject


class LogitsPlusScore(nn.Module):
    """Binary tasks emitting logits (trained with BCEWithLogitsLoss) beside one extra output that ends in a
    sigmoid (a combined score): the logits leave [0, 1] and their labels are 0/1."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(len(FEATURES), H), nn.ReLU()) for _ in range(E))
        self.mix_w = nn.ModuleList(nn.Linear(len(FEATURES), E) for _ in range(2))
        self.heads = nn.ModuleList(nn.Linear(H, 1) for _ in range(2))
        with torch.no_grad():
            self.heads[0].bias.fill_(-1.5)
            self.heads[1].bias.fill_(-4.0)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ex = torch.stack([m(x) for m in self.mlps], 1)
        out = {}
        for name, g, head in zip(("click", "buy"), self.mix_w, self.heads, strict=True):
            out[name] = head((torch.softmax(g(x), -1).unsqueeze(-1) * ex).sum(1)).squeeze(-1)
        out["score"] = torch.sigmoid(out["click"]) * torch.sigmoid(out["buy"])
        return out


def test_logits_beside_a_sigmoid_output_are_read_as_binary_with_0_1_labels() -> None:
    result = inspect(LogitsPlusScore())
    kinds = {t.name: (t.kind, t.probability) for t in result.topology.tasks}
    assert kinds["click"] == ("binary", False)
    assert kinds["buy"] == ("binary", False)
    assert "task_no_better_than_mean" not in codes(result)


def test_explicit_task_kinds_keep_a_logit_output_a_regression() -> None:
    result = mi.inspect(
        LogitsPlusScore().eval(),
        frame(),
        input_fn=lambda d: torch.tensor(d[FEATURES].to_numpy()),
        columns=FEATURES,
        task_kinds={"click": "regression", "buy": "regression", "score": "binary"},
    )
    assert {t.name: t.kind for t in result.topology.tasks}["click"] == "regression"


class ScaledViews(nn.Module):
    """MMoE whose tasks each rescale the shared experts inline (`ex * task_scale[t]`, a Parameter `[E, H]`)."""

    def __init__(self, plant: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(len(FEATURES), H), nn.ReLU()) for _ in range(E))
        self.task_scale = nn.Parameter(torch.empty(2, E, H).uniform_(0.5, 1.5))
        self.mix_w = nn.ModuleList(nn.Linear(len(FEATURES), E) for _ in range(2))
        self.heads = nn.ModuleList(nn.Linear(H, 1) for _ in range(2))
        plant_gates(self.mix_w, plant)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ex = torch.stack([m(x) for m in self.mlps], 1)
        out = {}
        for t, (name, g, head) in enumerate(zip(("click", "buy"), self.mix_w, self.heads, strict=True)):
            rows = ex * self.task_scale[t]
            out[name] = torch.sigmoid(head((torch.softmax(g(x), -1).unsqueeze(-1) * rows).sum(1))).squeeze(-1)
        return out


def test_per_task_scaled_shared_experts_stay_shared() -> None:
    identical = inspect(ScaledViews("identical"))
    assert identical.topology.architecture == "mmoe"
    assert all(g.experts == identical.topology.gates[0].experts for g in identical.topology.gates)
    assert "tasks_route_identically" in codes(identical)
    collapsed = codes(inspect(ScaledViews("collapsed")))
    assert collapsed.get("collapsed_gate") == {"click"}
    assert "dead_expert" not in collapsed


class PredictionMixture(nn.Module):
    """Mixture of expert predictions: each expert scores both tasks (`[B, 2]`); task t mixes the experts'
    probabilities for t, `softmax(g_t(x)) * sigmoid(stack(experts))[:, :, t]`."""

    def __init__(self, plant: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.scorers = nn.ModuleList(
            nn.Sequential(nn.Linear(len(FEATURES), H), nn.ReLU(), nn.Linear(H, 2)) for _ in range(E)
        )
        self.mix_w = nn.ModuleList(nn.Linear(len(FEATURES), E) for _ in range(2))
        plant_gates(self.mix_w, plant)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        probs = torch.sigmoid(torch.stack([m(x) for m in self.scorers], 1))
        return {
            n: (torch.softmax(g(x), -1) * probs[:, :, t]).sum(-1)
            for t, (n, g) in enumerate(zip(("click", "buy"), self.mix_w, strict=True))
        }


def test_each_task_reading_its_column_of_shared_scorers_is_an_mmoe() -> None:
    assert "tasks_route_identically" in codes(inspect(PredictionMixture("identical")))
    collapsed = codes(inspect(PredictionMixture("collapsed")))
    assert collapsed.get("collapsed_gate") == {"click"}
    assert "dead_expert" not in collapsed


class PairAttention(nn.Module):
    """AITM's attention: softmax over the 2 stacked vectors of <Q(u), K(u)>, the values V(u) row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(H, H), nn.Linear(H, H), nn.Linear(H, H)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        a = torch.softmax((self.q(u) * self.k(u)).sum(-1) / 4.0, dim=1)
        return (a.unsqueeze(-1) * self.v(u)).sum(1)


class HandAITM(nn.Module):
    """Hand-written AITM: two task towers, the click information transferred into the buy tower by
    self-attention over {tower output, transferred vector}: weights scored from the rows, not a gate."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.towers = nn.ModuleList(nn.Sequential(nn.Linear(len(FEATURES), H), nn.ReLU()) for _ in range(2))
        self.info = nn.Linear(H, H)
        self.ait = PairAttention()
        self.heads = nn.ModuleList(nn.Linear(H, 1) for _ in range(2))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h_click, h_buy = self.towers[0](x), self.towers[1](x)
        fused = self.ait(torch.stack([h_buy, self.info(h_click)], 1))
        return {
            "click": torch.sigmoid(self.heads[0](h_click)).squeeze(-1),
            "buy": torch.sigmoid(self.heads[1](fused)).squeeze(-1),
        }


def test_self_attention_over_stacked_module_outputs_stays_gate_less() -> None:
    assert not inspect(HandAITM()).topology.gates


def test_identical_gates_of_a_layer_called_twice_are_named_by_call() -> None:
    found = [
        f.subject for f in inspect(TwoSides("identical")).findings if f.code == "tasks_route_identically"
    ]
    assert sorted(found) == ["click ~ buy", "click#1 ~ buy#1"]


class RowGain(nn.Module):
    """Scales the stacked rows by a per-row gain given as a second tensor (cannot be re-run on the rows alone)."""

    def forward(self, rows: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        return rows * gain


class GainRanker(StackOpRanker):
    """StackOpRanker whose stacked experts go through a two-input module before the weighted sum."""

    def __init__(self) -> None:
        super().__init__("none", "collapsed")
        self.gain = RowGain()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ex = self.gain(torch.stack([m(x) for m in self.mlps], 1), torch.sigmoid(x[:, :1]).unsqueeze(-1))
        out = {}
        for name, g, head in zip(("click", "buy"), self.mix_w, self.heads, strict=True):
            out[name] = torch.sigmoid(head((torch.softmax(g(x), -1).unsqueeze(-1) * ex).sum(1))).squeeze(-1)
        return out


def test_a_module_on_the_stacked_experts_that_cannot_be_probed_is_unresolved() -> None:
    topo = inspect(GainRanker()).topology
    assert not topo.gates
    assert topo.unresolved
    assert "could not be probed" in topo.unresolved[0].reason
