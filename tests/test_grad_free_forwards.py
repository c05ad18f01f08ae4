"""Serving forwards that turn autograd off themselves (`@torch.inference_mode()`, `with torch.no_grad()`).

Discovery asks autograd which task outputs each gate's mixture moves (a replay of the forward with zero grad
leaves added to the mixtures). A forward that turns autograd off cut every leaf from the outputs: each gate
served "no task", was named `shared` / `shared#1`, the architecture came out `moe`, and identical task gates
were reported as `tasks_route_identically shared ~ shared#1`. The replay now runs the model's calls with
autograd on, so the gates are named by their tasks as for the plain forward.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from corpus._plant import GateParams, plant_logit_gates
from torch import nn

import mmoe_inspect as mi
from mmoe_inspect.topology.discovery import discover_topology

N_FEATURES = 8
N_EXPERTS = 4
TASKS = ("click", "buy")
FEATURES = [f"x{i}" for i in range(N_FEATURES)]
MODES = ("plain", "no_grad", "inference_mode", "decorated")


class ServingMMoE(nn.Module):
    """A plain MMoE (4 ReLU experts `[B, 16]`, one softmax gate per task, sigmoid towers) whose forward runs
    as `mode` says: as written, inside `torch.no_grad()`, inside `torch.inference_mode()`, or decorated with
    `@torch.inference_mode()`. The expert bank is scaled in place by a parameter that the forward clamps in
    place (writes autograd refuses on a parameter), and the mixture goes through an in-place ReLU."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mode = mode
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(N_FEATURES, 16), nn.ReLU()) for _ in range(N_EXPERTS)
        )
        self.gates = nn.ModuleDict({t: nn.Linear(N_FEATURES, N_EXPERTS) for t in TASKS})
        self.towers = nn.ModuleDict({t: nn.Linear(16, 1) for t in TASKS})
        self.scale = nn.Parameter(torch.ones(1))

    def mix(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ex = torch.stack([e(x) for e in self.experts], dim=1)  # [B, E, 16]
        if not torch.is_grad_enabled():
            self.scale.clamp_(0.0, 2.0)
            ex.mul_(self.scale)
        out = {}
        for t in TASKS:
            g = torch.softmax(self.gates[t](x), dim=-1)  # [B, E]
            h = (g.unsqueeze(-1) * ex).sum(1).relu_()  # [B, 16]
            out[t] = torch.sigmoid(self.towers[t](h)).squeeze(-1)
        return out

    @torch.inference_mode()
    def decorated(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.mix(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.mode == "decorated":
            return self.decorated(x)
        if self.mode == "no_grad":
            with torch.no_grad():
                return self.mix(x)
        if self.mode == "inference_mode":
            with torch.inference_mode():
                return self.mix(x)
        return self.mix(x)


def planted(mode: str, case: str) -> ServingMMoE:
    model = ServingMMoE(mode)
    gates = {t: GateParams(model.gates[t].weight, model.gates[t].bias) for t in TASKS}
    names = {t: [str(e) for e in range(N_EXPERTS)] for t in TASKS}
    plant_logit_gates(
        gates, case, expert_names=names, collapse=("click", "1"), dead="3", identical=TASKS, scale=4.0
    )
    return model.eval()


def frame(rows: int = 800) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    f = pd.DataFrame(rng.normal(size=(rows, N_FEATURES)).astype("float32"), columns=FEATURES)
    f["click"] = (f["x0"] > 0).astype("float64")
    f["buy"] = (f["x1"] > 0.5).astype("float64")
    return f


def inspect(model: nn.Module) -> mi.InspectionResult:
    return mi.inspect(
        model, frame(), input_fn=lambda d: torch.tensor(d[FEATURES].to_numpy()), columns=FEATURES
    )


@pytest.mark.parametrize("mode", MODES)
def test_gates_are_named_by_their_task_when_the_forward_turns_autograd_off(mode: str) -> None:
    model = planted(mode, "specialized")
    topo = discover_topology(model, torch.randn(61, N_FEATURES, generator=torch.Generator().manual_seed(1)))
    assert topo.architecture == "mmoe", topo.notes
    assert [(g.name, g.task) for g in topo.gates] == [("click", "click"), ("buy", "buy")]
    assert not any("reaches no task output" in n for n in topo.notes), topo.notes
    assert model.scale.requires_grad and model.scale.grad is None  # the model is left as found
    assert math.isclose(float(model.scale.detach()), 1.0)


@pytest.mark.parametrize("mode", ["no_grad", "decorated"])
@pytest.mark.parametrize(
    ("case", "code", "subject"),
    [("identical", "tasks_route_identically", "click ~ buy"), ("collapsed", "collapsed_gate", "click")],
)
def test_planted_routing_is_reported_by_task(mode: str, case: str, code: str, subject: str) -> None:
    result = inspect(planted(mode, case))
    found = {f.subject for f in result.findings if f.code == code}
    assert found == {subject}, [(f.code, f.subject) for f in result.findings]
    assert not any("shared" in f.subject for f in result.findings)


# ------------------------------------------------------------------------ one task, several outputs
class ManyOutputs(nn.Module):
    """The same MMoE with EasyRec's outputs (`logits_t`, `probs_t = sigmoid(logits_t)`, `y_t = probs_t` per
    task), or ESMM's (`click` = pCTR, `ctcvr` = pCTR * pCVR, with one gate per tower), or that ESMM with
    one gate's mixture under both towers (`esmm_one_gate`, an OMoE)."""

    def __init__(self, style: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.style = style
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(N_FEATURES, 16), nn.ReLU()) for _ in range(N_EXPERTS)
        )
        self.gates = nn.ModuleDict({t: nn.Linear(N_FEATURES, N_EXPERTS) for t in TASKS})
        self.towers = nn.ModuleDict({t: nn.Linear(16, 1) for t in TASKS})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ex = torch.stack([e(x) for e in self.experts], dim=1)  # [B, E, 16]
        one = self.style == "esmm_one_gate"  # one mixture [B, 16] (click's gate) under both towers
        mixed = {}
        for t in TASKS[:1] if one else TASKS:
            mixed[t] = (torch.softmax(self.gates[t](x), dim=-1).unsqueeze(-1) * ex).sum(1)
        if one:
            mixed["buy"] = mixed["click"]
        logits = {t: self.towers[t](mixed[t]).squeeze(-1) for t in TASKS}  # [B]
        if self.style != "easyrec":
            ctr = torch.sigmoid(logits["click"])
            return {"click": ctr, "ctcvr": ctr * torch.sigmoid(logits["buy"])}
        out = {}
        for t in TASKS:
            out[f"logits_{t}"] = logits[t]
            out[f"probs_{t}"] = torch.sigmoid(logits[t])
            out[f"y_{t}"] = out[f"probs_{t}"]
        return out


def test_a_gate_feeding_several_outputs_of_one_task_is_named_by_the_first() -> None:
    model = ManyOutputs("easyrec").eval()
    gates = {t: GateParams(model.gates[t].weight, model.gates[t].bias) for t in TASKS}
    names = {t: [str(e) for e in range(N_EXPERTS)] for t in TASKS}
    plant_logit_gates(
        gates, "identical", expert_names=names, collapse=("click", "1"), dead="3", identical=TASKS
    )
    data = frame().rename(columns={"click": "logits_click", "buy": "logits_buy"})
    result = mi.inspect(
        model,
        data,
        input_fn=lambda d: torch.tensor(d[FEATURES].to_numpy()),
        columns=FEATURES,
        labels={"logits_click": "logits_click", "logits_buy": "logits_buy"},
    )
    assert [(g.name, g.task) for g in result.topology.gates] == [
        ("logits_click", "logits_click"),
        ("logits_buy", "logits_buy"),
    ]
    found = {f.subject for f in result.findings if f.code == "tasks_route_identically"}
    assert found == {"logits_click ~ logits_buy"}, [(f.code, f.subject) for f in result.findings]


def test_esmm_gates_are_named_by_the_tower_they_feed() -> None:
    """pCTCVR = pCTR * pCVR: the CTR gate reaches pCTCVR only through pCTR (its task is click); a gate
    under both towers reaches pCTCVR by two paths and stays shared."""
    x = torch.randn(61, N_FEATURES, generator=torch.Generator().manual_seed(1))
    topo = discover_topology(ManyOutputs("esmm").eval(), x)
    assert [(g.name, g.task) for g in topo.gates] == [("click", "click"), ("ctcvr", "ctcvr")], topo.notes
    topo = discover_topology(ManyOutputs("esmm_one_gate").eval(), x)
    assert [(g.name, g.task) for g in topo.gates] == [("shared", None)], topo.notes
    assert topo.architecture == "omoe"


class LoadTrackingMMoE(nn.Module):
    """A serving MMoE (`@torch.no_grad()` forward) that keeps model state up to date as load-balancing code
    does: a running per-expert load buffer `[E]` updated in place from the gate weights, a frozen
    parameter `[E]` nudged in place, a views-of-a-buffer write (`calls[0] += 1`) and a buffer reassigned
    (`self.last = w.mean(0)`), and a plain tensor attribute `tally` updated like `load`. The replay with forced autograd attached such tensors to its graph
    (`load.requires_grad` True with `grad_fn`, `copy.deepcopy(model)` raised)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(N_FEATURES, 8), nn.ReLU()) for _ in range(N_EXPERTS)
        )
        self.gates = nn.ModuleDict({t: nn.Linear(N_FEATURES, N_EXPERTS) for t in TASKS})
        self.towers = nn.ModuleDict({t: nn.Linear(8, 1) for t in TASKS})
        self.frozen = nn.Parameter(torch.zeros(N_EXPERTS), requires_grad=False)
        self.register_buffer("load", torch.zeros(N_EXPERTS))
        self.register_buffer("calls", torch.zeros(2))
        self.register_buffer("last", torch.zeros(N_EXPERTS))
        self.tally = torch.zeros(N_EXPERTS)  # a plain tensor attribute, no register_buffer

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ex = torch.stack([e(x) for e in self.experts], 1)  # [B, E, 8]
        out = {}
        for t in TASKS:
            w = torch.softmax(self.gates[t](x), -1)  # [B, E]
            self.load.mul_(0.99).add_(0.01 * w.mean(0))
            self.tally.mul_(0.99).add_(0.01 * w.mean(0))
            self.frozen.add_(0.001 * w.mean(0))
            self.calls[:1] += 1
            self.last = w.mean(0)
            out[t] = torch.sigmoid(self.towers[t]((w.unsqueeze(-1) * ex).sum(1))).squeeze(1)
        return out


def test_state_written_in_a_grad_free_forward_is_left_as_one_forward_leaves_it() -> None:
    """After discovery (one traced forward + the task replay) every parameter and buffer is what ONE plain
    forward leaves: the replay's writes are undone, and no tensor is attached to a graph."""
    x = torch.randn(61, N_FEATURES, generator=torch.Generator().manual_seed(1))
    model = LoadTrackingMMoE().eval()
    model.towers["click"].weight.grad = torch.full_like(model.towers["click"].weight, 0.5)
    expected = copy.deepcopy(model)
    expected(x)  # the one forward the trace runs, as written
    topo = discover_topology(model, x)
    assert [(g.name, g.task) for g in topo.gates] == [("click", "click"), ("buy", "buy")], topo.notes
    for (name, t), (_, e) in zip(
        [*model.named_parameters(), *model.named_buffers()],
        [*expected.named_parameters(), *expected.named_buffers()],
        strict=True,
    ):
        assert t.is_leaf and t.grad_fn is None, name
        assert t.requires_grad == e.requires_grad, name
        assert torch.equal(t, e), name
    assert torch.equal(model.towers["click"].weight.grad, torch.full_like(model.towers["click"].weight, 0.5))
    assert model.towers["buy"].weight.grad is None
    assert model.tally.is_leaf and model.tally.grad_fn is None and not model.tally.requires_grad
    assert torch.equal(model.tally, expected.tally)  # AddBackward0 and a second update, before
    copy.deepcopy(model)  # raised "Only Tensors created explicitly by the user (graph leaves)"


def test_inspect_leaves_a_grad_free_load_buffer_out_of_any_graph() -> None:
    """The whole inspection: the buffer writes of the recording pass are the model's own (reported as
    model_changed_itself), but no tensor of the model is left on a graph, and it inspects again."""
    model = LoadTrackingMMoE().eval()
    result = inspect(model)
    assert "model_changed_itself" in {f.code for f in result.findings}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        assert t.is_leaf and t.grad_fn is None and t.grad is None, name
    assert not model.load.requires_grad and not model.frozen.requires_grad
    assert model.tally.grad_fn is None and not model.tally.requires_grad
    inspect(copy.deepcopy(model))
