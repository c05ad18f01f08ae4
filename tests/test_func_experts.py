"""Experts batched the `torch.func` way (PyTorch's model-ensembling tutorial): parameters stacked with
`stack_module_state`, run by `vmap(functional_call(base, ...))` over a `base` module kept on the meta
device. Loading moved the model with `model.to(device)`, which refuses meta tensors: exit 1 (internal
error). Now the meta base stays where it is and the routing, which no tracer can see inside `vmap`, is
"cannot judge" (exit 4), never a crash or a pass."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.func import functional_call, stack_module_state
from typer.testing import CliRunner

from mmoe_inspect._move import move_module

FEATURES = [f"f{i}" for i in range(8)]
MODEL_CODE = """
import copy
import torch
from torch import nn
from torch.func import functional_call, stack_module_state


class VmapMMoE(nn.Module):
    def __init__(self, d=8, n_experts=4, hidden=16):
        super().__init__()
        members = [nn.Sequential(nn.Linear(d, hidden), nn.ReLU()) for _ in range(n_experts)]
        params, _ = stack_module_state(members)
        self.expert_params = nn.ParameterDict({k.replace(".", "_"): nn.Parameter(v) for k, v in params.items()})
        self._keys = list(params)
        self.base = copy.deepcopy(members[0]).to("meta")
        self.gates = nn.ModuleList([nn.Linear(d, n_experts) for _ in range(2)])
        self.towers = nn.ModuleList([nn.Linear(hidden, 1) for _ in range(2)])

    def _one(self, params, x):
        return functional_call(self.base, params, (x,))

    def forward(self, x):
        params = {k: self.expert_params[k.replace(".", "_")] for k in self._keys}
        ex = torch.vmap(self._one, in_dims=(0, None))(params, x)  # [E, B, H]
        return {
            n: torch.sigmoid(tw(torch.einsum("be,ebh->bh", torch.softmax(g(x), -1), ex))).squeeze(-1)
            for n, g, tw in zip(("click", "purchase"), self.gates, self.towers)
        }
"""


def test_moving_a_model_leaves_its_meta_base_module_alone() -> None:
    members = [nn.Linear(3, 2) for _ in range(2)]
    params, _ = stack_module_state(members)
    holder = nn.Module()
    holder.stacked = nn.Parameter(params["weight"])
    holder.base = copy.deepcopy(members[0]).to("meta")
    with np.testing.assert_raises(NotImplementedError):
        copy.deepcopy(holder).to("cpu", dtype=torch.float64)  # what loading did
    move_module(holder, "cpu")
    assert holder.base.weight.is_meta and holder.stacked.device.type == "cpu"
    assert torch.allclose(
        functional_call(
            holder.base, {"weight": holder.stacked[0], "bias": params["bias"][0]}, (torch.ones(1, 3),)
        ),
        members[0](torch.ones(1, 3)),
    )


def test_vmap_experts_are_cannot_judge_not_an_internal_error(tmp_path: Path, monkeypatch) -> None:
    from mmoe_inspect.cli.main import app

    code = tmp_path / "vmap_model.py"
    code.write_text(MODEL_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import vmap_model

    torch.manual_seed(0)
    model = vmap_model.VmapMMoE().eval()
    torch.save(model, tmp_path / "model.pt")
    rng = np.random.default_rng(0)
    data = pd.DataFrame(rng.normal(size=(800, 8)).astype("float32"), columns=FEATURES)
    data["click"] = (rng.random(800) < 0.3).astype(float)
    data["purchase"] = (rng.random(800) < 0.3).astype(float)
    data.to_parquet(tmp_path / "eval.parquet")
    sys.modules.pop("vmap_model", None)  # the CLI imports it from --model-code
    args = ["check", str(tmp_path / "model.pt"), "--trust-checkpoint", "--model-code", str(code)]
    res = CliRunner().invoke(app, [*args, "--data", str(tmp_path / "eval.parquet"), "--fail-on", "critical"])
    sys.modules.pop("vmap_model", None)
    assert res.exit_code == 4, res.output
    assert "CANNOT JUDGE" in res.output and "internal error" not in res.output
