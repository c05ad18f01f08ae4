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
