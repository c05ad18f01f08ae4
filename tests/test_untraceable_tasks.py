"""Gates whose task discovery cannot tell (the path from gate to outputs is not differentiable: a serving
wrapper's `@torch.no_grad()` forward, detached outputs) are still compared with each other: two such gates
that route alike are an MMoE collapsed into a one-gate MoE, which `check` must not pass."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import mmoe_inspect as mi
from mmoe_inspect.models import MMoE
from mmoe_inspect.topology.spec import TaskSpec

FEATURES = [f"x{i}" for i in range(6)]


class NoGradServing(nn.Module):
    """A serving wrapper: the forward runs without autograd."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net(x)


class DetachedOutputs(nn.Module):
    """A wrapper that detaches every output."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.net(x).items()}


def mmoe(identical: bool) -> MMoE:
    torch.manual_seed(0)
    model = MMoE(len(FEATURES), [TaskSpec("click"), TaskSpec("buy")], n_experts=4, expert_hidden=(8,)).eval()
    with torch.no_grad():
        for g in model.gates:  # input-dependent gates with a clear preference per task
            for p in g.parameters():
                p.mul_(4.0)
        if identical:
            model.gates[1].load_state_dict(model.gates[0].state_dict())
    return model


def frame(rows: int = 2000) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    f = pd.DataFrame(rng.normal(size=(rows, len(FEATURES))).astype("float32"), columns=FEATURES)
    f["click"] = (f["x0"] > 0).astype("float64")
    f["buy"] = (f["x1"] > 1.5).astype("float64")
    return f


def inspect(model: nn.Module) -> mi.InspectionResult:
    return mi.inspect(
        model, frame(), input_fn=lambda f: torch.tensor(f[FEATURES].to_numpy()), columns=FEATURES
    )


@pytest.mark.parametrize("wrapper", [NoGradServing, DetachedOutputs])
def test_identical_gates_behind_a_non_differentiable_path_are_found(wrapper) -> None:
    result = inspect(wrapper(mmoe(identical=True)))
    assert len(result.topology.gates) == 2
    found = [f for f in result.findings if f.code == "tasks_route_identically"]
    assert len(found) == 1 and found[0].severity == "critical", [f.code for f in result.findings]
    assert result.verdict.startswith("Routing is unhealthy")
    healthy = inspect(wrapper(mmoe(identical=False)))
    assert not any(f.code == "tasks_route_identically" for f in healthy.findings)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch._dynamo's import warns about torch.jit
def test_a_torch_compile_wrapper_is_inspected_as_its_eager_module() -> None:
    """An `OptimizedModule` (torch.compile) runs compiled graphs that hooks and taps do not see: its eager
    module (the same parameters) is inspected, so the gates get their tasks (they came out mislabelled)."""
    model = mmoe(identical=True)
    result = inspect(torch.compile(model))
    assert {g.task for g in result.topology.gates} == {"click", "buy"}
    found = [f for f in result.findings if f.code == "tasks_route_identically"]
    assert [f.subject for f in found] == ["click ~ buy"]


class SharedGatePLE(nn.Module):
    """A PLE level without task-specific experts: the task gates and the shared gate mix the same experts,
    and the shared gate happens to route like task a's (it is not a task's gate, so that is no finding)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        d, e, h = len(FEATURES), 4, 8
        self.l0_experts = nn.ModuleList(nn.Sequential(nn.Linear(d, h), nn.ReLU()) for _ in range(e))
        self.l0_gate_a, self.l0_gate_b, self.l0_gate_shared = (nn.Linear(d, e) for _ in range(3))
        with torch.no_grad():
            self.l0_gate_a.weight.mul_(4.0)
            self.l0_gate_b.weight.copy_(-self.l0_gate_a.weight)
        self.l0_gate_shared.load_state_dict(self.l0_gate_a.state_dict())
        self.l1_spec = nn.ModuleList(nn.Sequential(nn.Linear(h, h), nn.ReLU()) for _ in range(2))
        self.l1_shared = nn.Sequential(nn.Linear(h, h), nn.ReLU())
        self.l1_gates = nn.ModuleList(nn.Linear(h, 2) for _ in range(2))
        self.towers = nn.ModuleList(nn.Linear(h, 1) for _ in range(2))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ex = torch.stack([e(x) for e in self.l0_experts], 1)

        def mix(logits: torch.Tensor) -> torch.Tensor:
            return torch.bmm(torch.softmax(logits, -1).unsqueeze(1), ex).squeeze(1)

        ma, mb, ms = mix(self.l0_gate_a(x)), mix(self.l0_gate_b(x)), mix(self.l0_gate_shared(x))
        shared, out = self.l1_shared(ms), {}
        for i, (task, m) in enumerate((("click", ma), ("buy", mb))):
            e1 = torch.stack([self.l1_spec[i](m), shared], 1)
            g = torch.softmax(self.l1_gates[i](m), -1)
            out[task] = torch.sigmoid(self.towers[i](torch.bmm(g.unsqueeze(1), e1).squeeze(1))).squeeze(-1)
        return out


def test_a_ple_shared_gate_is_not_compared_as_a_task_gate() -> None:
    result = inspect(SharedGatePLE().eval())
    shared = [g for g in result.topology.gates if g.task is None]
    assert len(shared) == 1  # discovery: the level-0 shared gate reaches both tasks
    assert not any(f.code == "tasks_route_identically" for f in result.findings), [
        (f.code, f.subject) for f in result.findings
    ]


class GateHiddenLayers(nn.Module):
    """DeepCTR-Torch's MMOE layout: each gate has hidden layers (`gate_dnn`) before its logits
    (`gate_dnn_final_layer`), softmaxed in the forward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        d = len(FEATURES)
        self.expert_dnn = nn.ModuleList(nn.Sequential(nn.Linear(d, 8), nn.ReLU()) for _ in range(4))
        self.gate_dnn = nn.ModuleList(nn.Sequential(nn.Linear(d, 8), nn.ReLU()) for _ in range(2))
        self.gate_dnn_final_layer = nn.ModuleList(nn.Linear(8, 4, bias=False) for _ in range(2))
        self.tower_dnn_final_layer = nn.ModuleList(nn.Linear(8, 1) for _ in range(2))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ex = torch.stack([e(x) for e in self.expert_dnn], 1)
        out = {}
        for i, task in enumerate(("click", "buy")):
            g = self.gate_dnn_final_layer[i](self.gate_dnn[i](x)).softmax(1)
            out[task] = torch.sigmoid(
                self.tower_dnn_final_layer[i](torch.matmul(g.unsqueeze(1), ex).squeeze(1))
            )
        return {k: v.squeeze(-1) for k, v in out.items()}


def test_a_spec_written_for_gates_with_hidden_layers_judges_them(tmp_path) -> None:
    """The spec the tool writes for a model whose gates have hidden layers is judged (it was "cannot judge":
    the gate's hidden layers are named like gates and the spec declares no gate there)."""
    model = GateHiddenLayers().eval()
    first = inspect(model)
    assert len(first.topology.gates) == 2 and first.topology.judgeable
    spec = tmp_path / "spec.toml"
    first.topology.save(spec)
    again = mi.inspect(
        model,
        frame(),
        input_fn=lambda f: torch.tensor(f[FEATURES].to_numpy()),
        columns=FEATURES,
        topology=spec,
    )
    assert again.topology.judgeable, [u.what for u in again.topology.unresolved]


def test_nan_predictions_are_not_reported_as_missing_labels() -> None:
    class NanBuy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = mmoe(identical=False)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            out = self.net(x)
            return {"click": out["click"], "buy": out["buy"] * float("nan")}

    result = inspect(NanBuy().eval())
    codes = {(f.code, f.subject) for f in result.findings}
    assert ("nonfinite_predictions", "buy") in codes and ("task_unlabelled", "buy") not in codes
