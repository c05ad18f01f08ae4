"""Hint and remedy texts the s13 sweep found misleading (problem 8): a gate that is a parameter (it reads no
input) was told to "feed the gate informative features"; a model reading a nested dict was told to name its
columns with --features first, which cannot build a nested batch (--collate can)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import mmoe_inspect as mi
from mmoe_inspect.loading import InputMappingError, bind_inputs

FEATURES = [f"x{i}" for i in range(8)]
E, H = 4, 8


class ParamGateRanker(nn.Module):
    """Two tasks, four MLPs; each task's mix is `softmax(nn.Parameter[E])` for every row (reads no input)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(len(FEATURES), H), nn.ReLU()) for _ in range(E))
        self.logits = nn.Parameter(torch.tensor([[1.5, -0.5, 0.3, -1.0], [-1.0, 1.2, -0.2, 0.8]]))
        self.heads = nn.ModuleList(nn.Linear(H, 1) for _ in range(2))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ex = torch.stack([m(x) for m in self.mlps], 1)
        out = {}
        for t, name in enumerate(("click", "buy")):
            w = torch.softmax(self.logits[t], -1).expand(x.shape[0], -1)
            out[name] = torch.sigmoid(self.heads[t]((w.unsqueeze(-1) * ex).sum(1))).squeeze(-1)
        return out


def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    f = pd.DataFrame(rng.normal(size=(800, len(FEATURES))).astype("float32"), columns=FEATURES)
    return f.assign(click=(f["x0"] > 0).astype("float64"), buy=(f["x1"] > 1).astype("float64"))


def test_a_parameter_gate_is_told_it_reads_no_input() -> None:
    model = ParamGateRanker().eval()
    result = mi.inspect(
        model, frame(), input_fn=lambda d: torch.tensor(d[FEATURES].to_numpy()), columns=FEATURES
    )
    found = [f for f in result.findings if f.code == "input_independent_gate"]
    assert {f.subject for f in found} == {"click", "buy"}
    assert all("reads no input" in f.remedy and "informative features" not in f.remedy for f in found)


class NestedReader(nn.Module):
    """`forward(batch)` reads a nested dict `{"user": {"age": [B]}, "item": {"price": [B]}}`."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, batch):
        z = torch.stack([batch["user"]["age"], batch["item"]["price"]], 1)
        p = torch.sigmoid(self.lin(z))
        return {"click": p[:, 0], "buy": p[:, 1]}


def test_a_key_missing_from_the_columns_points_to_collate_first() -> None:
    rng = np.random.default_rng(1)
    df = pd.DataFrame(
        {
            "age": rng.normal(size=20),
            "price": rng.normal(size=20),
            "click": rng.integers(0, 2, 20),
            "buy": rng.integers(0, 2, 20),
        }
    )
    with pytest.raises(InputMappingError) as err:
        bind_inputs(NestedReader(), df, input="dict")
    text = str(err.value)
    assert "'user'" in text and "--collate" in text
    assert text.index("--collate") < text.index("--features")
