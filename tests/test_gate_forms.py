"""Gate forms that are softmaxes in all but name: `log_softmax(z).exp()` is a distribution (a uniform one is a
uniform gate), and a softmax over the wrong axis (`dim=0`, the batch) is read as one so that its rows, which
do not sum to 1, are reported with the hint to check the `dim`."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mmoe_inspect as mi

FEATURES = [f"x{i}" for i in range(8)]


class HandGates(nn.Module):
    """Four experts, two task gates computed as `how` says; `uniform` zeroes the gates' weights."""

    def __init__(self, how: str, uniform: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.how = how
        self.experts = nn.ModuleList(nn.Linear(len(FEATURES), 4) for _ in range(4))
        self.logits = nn.ModuleList(nn.Linear(len(FEATURES), 4) for _ in range(2))
        self.heads = nn.ModuleList(nn.Linear(4, 1) for _ in range(2))
        if uniform:
            with torch.no_grad():
                for lin in self.logits:
                    lin.weight.zero_()
                    lin.bias.zero_()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        stacked = torch.stack([e(x) for e in self.experts], dim=1)
        out = {}
        for name, lin, head in zip(("click", "buy"), self.logits, self.heads, strict=True):
            z = lin(x)
            w = F.log_softmax(z, dim=-1).exp() if self.how == "exp_log_softmax" else F.softmax(z, dim=0)
            out[name] = torch.sigmoid(head((w.unsqueeze(-1) * stacked).sum(1))).squeeze(1)
        return out


def inspect(model: nn.Module) -> mi.InspectionResult:
    rng = np.random.default_rng(0)
    f = pd.DataFrame(rng.normal(size=(1000, len(FEATURES))).astype("float32"), columns=FEATURES)
    f["click"] = (f["x0"] > 0).astype("float64")
    f["buy"] = (f["x1"] > 1).astype("float64")
    return mi.inspect(model, f, input_fn=lambda d: torch.tensor(d[FEATURES].to_numpy()), columns=FEATURES)


def test_exp_of_log_softmax_is_a_distribution() -> None:
    result = inspect(HandGates("exp_log_softmax", uniform=True).eval())
    assert {g.output for g in result.topology.gates} == {"probs"}
    assert {f.subject for f in result.findings if f.code == "uniform_gate"} == {"click", "buy"}


@pytest.mark.parametrize("uniform", [False, True])
def test_a_softmax_over_the_batch_axis_is_reported_as_not_normalized(uniform: bool) -> None:
    result = inspect(HandGates("softmax_dim0", uniform=uniform).eval())
    found = [f for f in result.findings if f.code == "gate_not_normalized"]
    assert {f.subject for f in found} == {"click", "buy"}
    assert "`dim`" in found[0].remedy


class NoisyGates(HandGates):
    """Gate logits with Gaussian noise added in every mode (noisy gating that ignores `self.training`)."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        stacked = torch.stack([e(x) for e in self.experts], dim=1)
        out = {}
        for name, lin, head in zip(("click", "buy"), self.logits, self.heads, strict=True):
            w = F.softmax(lin(x) + torch.randn(x.shape[0], 4), dim=-1)
            out[name] = torch.sigmoid(head((w.unsqueeze(-1) * stacked).sum(1))).squeeze(1)
        return out


def test_a_random_eval_forward_is_reported_and_the_random_state_is_restored() -> None:
    torch.manual_seed(123)
    noisy = NoisyGates("exp_log_softmax", uniform=True).eval()
    torch.manual_seed(7)
    state = torch.get_rng_state()
    from mmoe_inspect.recording.determinism import forward_variation

    x = torch.randn(16, len(FEATURES))
    torch.set_rng_state(state)
    assert forward_variation(noisy, x) > 0
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is left as found
    result = inspect(noisy)
    found = [f for f in result.findings if f.code == "nondeterministic_forward"]
    assert (
        len(found) == 1 and found[0].severity == "warning" and found[0].evidence["max_output_difference"] > 0
    )
    steady = inspect(HandGates("exp_log_softmax", uniform=True).eval())
    assert not any(f.code == "nondeterministic_forward" for f in steady.findings)


@dataclasses.dataclass
class TaskOutputs:
    """A hand-written model's outputs as a dataclass of per-task tensors."""

    click: torch.Tensor
    buy: torch.Tensor


class DataclassOutputs(HandGates):
    def forward(self, x: torch.Tensor) -> TaskOutputs:  # type: ignore[override]
        return TaskOutputs(**super().forward(x))


def test_a_dataclass_output_is_read_by_field() -> None:
    """Its outputs were not found at all (the input binding blamed the inputs); now they are read by field,
    the gates get their tasks, and the causal analyses and attributions run on them."""
    model = DataclassOutputs("exp_log_softmax", uniform=False).eval()
    rng = np.random.default_rng(0)
    f = pd.DataFrame(rng.normal(size=(600, len(FEATURES))).astype("float32"), columns=FEATURES)
    f["click"] = (f["x0"] > 0).astype("float64")
    f["buy"] = (f["x1"] > 1).astype("float64")
    result = mi.inspect(
        model,
        f,
        input_fn=lambda d: torch.tensor(d[FEATURES].to_numpy()),
        columns=FEATURES,
        causal=True,
        attribution=True,
    )
    assert [t.name for t in result.topology.tasks] == ["click", "buy"]
    assert {g.task for g in result.topology.gates} == {"click", "buy"}
    assert result.causal is not None and not result.causal.ablation.empty
    assert result.attribution is not None


def test_rounding_noise_between_forwards_is_not_randomness() -> None:
    """Outputs that differ by a few ULPs (a GPU's atomics sum in any order) are not a random forward."""
    from mmoe_inspect.recording.determinism import forward_variation

    class Jitter(nn.Module):
        def __init__(self, scale: float) -> None:
            super().__init__()
            self.lin, self.scale = nn.Linear(4, 2), scale

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.lin(x)
            return y + self.scale * torch.randn_like(y) * y.abs()

    x = torch.randn(32, 4)
    assert forward_variation(Jitter(1e-7).eval(), x) == 0.0
    assert forward_variation(Jitter(1e-2).eval(), x) > 0.0
