"""Gate look-alikes in gate-less multi-task models: AFM attention pooling over pairwise field interactions
computed inline (not experts), PEPNet/EPNet's GateNU feature scaling (not routing). Both came out of the
session-12 sweep as confident wrong verdicts (a 28-expert OMoE with a `uniform_gate` warning; a "cannot
judge" exit 4). Real MMoE/OMoE models with neutral names keep their gates.
"""

from __future__ import annotations

import itertools

import pandas as pd
import pytest
import torch
from torch import nn

import mmoe_inspect as mi
from mmoe_inspect.topology.discovery import NO_GATES_NOTE, discover_topology

N_FIELDS = 8
FEATURES = [f"f{i}" for i in range(N_FIELDS)]
TASKS = ("click", "purchase")


class AFMSharedBottom(nn.Module):
    """Shared-Bottom over AFM pooling: field embeddings `x_f * v_f` `[B, F, D]`, their 28 pairwise products
    `[B, P, D]` picked by index lists, softmax attention `[B, P]` scored from them, weighted sum."""

    def __init__(self, d: int = 4, hidden: int = 16) -> None:
        super().__init__()
        self.emb = nn.Parameter(torch.randn(N_FIELDS, d))
        self.att = nn.Sequential(nn.Linear(d, 8), nn.ReLU(), nn.Linear(8, 1))
        rows, cols = zip(*itertools.combinations(range(N_FIELDS), 2), strict=True)
        self.rows, self.cols = list(rows), list(cols)
        self.bottom = nn.Sequential(nn.Linear(d + N_FIELDS, hidden), nn.ReLU())
        self.towers = nn.ModuleList(nn.Linear(hidden, 1) for _ in TASKS)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        e = x.unsqueeze(-1) * self.emb  # [B, F, D]
        inter = e[:, self.rows] * e[:, self.cols]  # [B, P, D]
        a = torch.softmax(self.att(inter).squeeze(-1), dim=1)  # [B, P]
        pooled = (a.unsqueeze(-1) * inter).sum(1)  # [B, D]
        h = self.bottom(torch.cat([pooled, x], 1))
        return {n: torch.sigmoid(t(h)).squeeze(-1) for n, t in zip(TASKS, self.towers, strict=True)}


class AFMByBmm(AFMSharedBottom):
    """The same pooling as `a[:, None] @ inter`, the attention MLP's weights of a parameter, not a module."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Parameter(torch.randn(4, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        e = x.unsqueeze(-1) * self.emb
        inter = torch.index_select(e, 1, torch.tensor(self.rows)) * torch.index_select(
            e, 1, torch.tensor(self.cols)
        )
        a = torch.softmax((inter @ self.proj).squeeze(-1), dim=-1)  # [B, P]
        pooled = (a.unsqueeze(1) @ inter).squeeze(1)
        h = self.bottom(torch.cat([pooled, x], 1))
        return {n: torch.sigmoid(t(h)).squeeze(-1) for n, t in zip(TASKS, self.towers, strict=True)}


class PEPNetLike(nn.Module):
    """EPNet's GateNU `2 * sigmoid(gate_nu(x))` `[B, F]` scaling the field embeddings `[B, F, D]`, flattened
    into a shared bottom; PPNet's GateNU `[B, H]` scaling a tower's hidden units one by one."""

    def __init__(self, d: int = 4, hidden: int = 16, units: bool = False) -> None:
        super().__init__()
        self.units = units
        self.emb = nn.Parameter(torch.randn(N_FIELDS, d))
        self.gate_nu = nn.Sequential(nn.Linear(N_FIELDS, 16), nn.ReLU(), nn.Linear(16, N_FIELDS))
        self.ppnet_gate_nu = nn.Sequential(nn.Linear(N_FIELDS, 16), nn.ReLU(), nn.Linear(16, hidden))
        self.bottom = nn.Sequential(nn.Linear(N_FIELDS * d, hidden), nn.ReLU())
        self.towers = nn.ModuleList(nn.Linear(hidden, 1) for _ in TASKS)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        e = x.unsqueeze(-1) * self.emb
        s = 2 * torch.sigmoid(self.gate_nu(x))  # [B, F]
        h = self.bottom((s.unsqueeze(-1) * e).flatten(1))
        if self.units:
            h = h * (2 * torch.sigmoid(self.ppnet_gate_nu(x)))  # [B, H] * [B, H]
        return {n: torch.sigmoid(t(h)).squeeze(-1) for n, t in zip(TASKS, self.towers, strict=True)}


class NeutralMMoE(nn.Module):
    """An MMoE whose names say nothing (`blocks`, `mixers`): 8 experts over 8 input fields, so the expert
    axis has the size of the input's field axis."""

    def __init__(self, n_experts: int = N_FIELDS, hidden: int = 5) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(N_FIELDS, hidden), nn.ReLU()) for _ in range(n_experts)
        )
        self.mixers = nn.ModuleList(nn.Linear(N_FIELDS, n_experts) for _ in TASKS)
        self.heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in TASKS)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ex = torch.stack([b(x) for b in self.blocks], 1)  # [B, E, H]
        out = {}
        for n, m, h in zip(TASKS, self.mixers, self.heads, strict=True):
            w = torch.softmax(m(x), -1)
            out[n] = torch.sigmoid(h((w.unsqueeze(-1) * ex).sum(1))).squeeze(-1)
        return out


class NeutralInlineOMoE(nn.Module):
    """One shared gate over 8 experts held as one batched parameter, computed inline
    `relu(einsum('bd,edh->beh', x, W) + b)` (E == F again), mixed by a bmm."""

    def __init__(self, n_experts: int = N_FIELDS, hidden: int = 5) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(n_experts, N_FIELDS, hidden) * 0.3)
        self.b = nn.Parameter(torch.zeros(n_experts, hidden))
        self.mix = nn.Linear(N_FIELDS, n_experts)
        self.heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in TASKS)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ex = torch.relu(torch.einsum("bd,edh->beh", x, self.w) + self.b)  # [B, E, H]
        w = torch.softmax(self.mix(x), -1)
        h = torch.bmm(w.unsqueeze(1), ex).squeeze(1)
        return {n: torch.sigmoid(head(h)).squeeze(-1) for n, head in zip(TASKS, self.heads, strict=True)}


class ScaledExpertsNoSum(nn.Module):
    """A module named `gate` whose `[B, E]` weights scale a stack of expert modules' outputs, which are then
    flattened, never summed: not features, so not a feature-scaling gate; it stays unresolved."""

    def __init__(self, n_experts: int = 3, hidden: int = 5) -> None:
        super().__init__()
        self.scalars = hidden == 1  # experts of one value each, `cat` `[B, E]`: scaled unit by unit
        self.experts = nn.ModuleList(nn.Linear(N_FIELDS, hidden) for _ in range(n_experts))
        self.gate = nn.Linear(N_FIELDS, n_experts)
        self.heads = nn.ModuleList(nn.Linear(n_experts * hidden, 1) for _ in TASKS)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.scalars:
            h = torch.sigmoid(self.gate(x)) * torch.cat([e(x) for e in self.experts], 1)
        else:
            ex = torch.stack([e(x) for e in self.experts], 1)
            h = (torch.sigmoid(self.gate(x)).unsqueeze(-1) * ex).flatten(1)
        return {n: torch.sigmoid(head(h)).squeeze(-1) for n, head in zip(TASKS, self.heads, strict=True)}


class FieldGateNet(nn.Module):
    """Shared-Bottom with per-task FIELD gates (s13 sweep, exit 4 "named like a gate"): an embedding module per
    input field reading only its column `x[:, i:i+1]`, stacked `[B, F, D]`; each task's `field_gate[t]` weights
    the fields (softmax or sigmoid over F) and its tower reads them flattened, never summed. `plant`
    "identical" copies task 0's field gate into task 1 (which must not read as `tasks_route_identically`)."""

    def __init__(self, mode: str, plant: str = "healthy", d: int = 4) -> None:
        super().__init__()
        self.mode = mode
        self.emb = nn.ModuleList(nn.Linear(1, d) for _ in range(6))
        self.field_gate = nn.ModuleList(nn.Linear(2, 6) for _ in TASKS)
        self.towers = nn.ModuleList(nn.Linear(6 * d, 1) for _ in TASKS)
        with torch.no_grad():
            for g in self.field_gate:
                g.weight.mul_(4)
        if plant == "identical":
            self.field_gate[1].load_state_dict(self.field_gate[0].state_dict())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        fields = torch.stack([e(x[:, i : i + 1]) for i, e in enumerate(self.emb)], 1)  # [B, F, D]
        out = {}
        for n, g, tower in zip(TASKS, self.field_gate, self.towers, strict=True):
            z = g(x[:, 6:8])
            w = torch.softmax(z, -1) if self.mode == "softmax" else torch.sigmoid(z)
            out[n] = torch.sigmoid(tower((fields * w.unsqueeze(-1)).flatten(1))).squeeze(-1)
        return out


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, N_FIELDS, generator=gen)
    labels = {t: (x[:, i] > 0).double().numpy() for i, t in enumerate(TASKS)}
    return pd.DataFrame(x.numpy(), columns=FEATURES).assign(**labels)


def _inspect(model: nn.Module, frame: pd.DataFrame) -> mi.InspectionResult:
    return mi.inspect(model, frame, input_fn=lambda f: torch.tensor(f[FEATURES].to_numpy()), columns=FEATURES)


def _gateless(model: nn.Module, frame: pd.DataFrame) -> list[str]:
    """Asserts the gate-less verdict on discovery and on a whole inspection; returns the topology notes."""
    torch.manual_seed(0)
    topo = discover_topology(model.eval(), torch.tensor(frame[FEATURES].to_numpy()[:61]))
    assert topo.gates == () and topo.unresolved == () and topo.judgeable, (topo.gates, topo.unresolved)
    assert topo.notes[0] == NO_GATES_NOTE and topo.architecture == "shared_bottom"
    result = _inspect(model, frame)
    assert result.topology.gates == () and result.topology.unresolved == ()
    assert not result.verdict.startswith("Could not verify the routing"), result.verdict
    assert not any(f.code == "uniform_gate" for f in result.findings)
    return list(topo.notes)


@pytest.mark.parametrize("model_cls", [AFMSharedBottom, AFMByBmm])
def test_afm_pooling_over_inline_interactions_is_no_gate(
    model_cls: type[nn.Module], frame: pd.DataFrame
) -> None:
    torch.manual_seed(0)
    notes = _gateless(model_cls(), frame)
    assert any("28 values made slot by slot from the input's fields or parameters" in n for n in notes), notes


@pytest.mark.parametrize("units", [False, True], ids=["epnet-fields", "ppnet-units"])
def test_pepnet_gate_nu_is_feature_scaling_not_unresolved(units: bool, frame: pd.DataFrame) -> None:
    torch.manual_seed(0)
    notes = _gateless(PEPNetLike(units=units), frame)
    scaling = [n for n in notes if "feature-scaling gate, not routing" in n]
    assert any(n.startswith("module gate_nu (Sequential)") and "the input's 8 fields" in n for n in scaling)
    assert (
        any(n.startswith("module ppnet_gate_nu (Sequential)") and "16 units" in n for n in scaling) == units
    )
    assert not any("gate_nu." in n for n in scaling)  # its layers are not named one by one


@pytest.mark.parametrize(
    ("mode", "plant"), [("softmax", "healthy"), ("sigmoid", "healthy"), ("softmax", "identical")]
)
def test_per_task_field_gates_are_feature_scaling(mode: str, plant: str, frame: pd.DataFrame) -> None:
    """Field gates over an embedding module per column are feature gating, not expert routing: "No gates
    found" naming them (they were exit 4, "named like a gate")."""
    torch.manual_seed(0)
    notes = _gateless(FieldGateNet(mode, plant), frame)
    scaling = [n for n in notes if "feature-scaling gate, not routing" in n]
    assert [n.split(" (")[0] for n in scaling] == ["module field_gate.0", "module field_gate.1"], notes
    assert all("the input's 6 fields" in n for n in scaling)
    torch.manual_seed(0)
    result = _inspect(FieldGateNet(mode, plant), frame)
    assert result.verdict.startswith("No gates found")
    assert "Modules field_gate.0, field_gate.1 are feature gates" in result.verdict
    assert not any(f.code == "tasks_route_identically" for f in result.findings)


@pytest.mark.parametrize("hidden", [5, 1], ids=["stacked", "scalars-side-by-side"])
def test_weights_on_expert_outputs_never_summed_stay_unresolved(hidden: int) -> None:
    """Scaling expert modules' outputs is not feature scaling: never a silent "no gates"."""
    torch.manual_seed(0)
    topo = discover_topology(ScaledExpertsNoSum(hidden=hidden).eval(), torch.randn(61, N_FIELDS))
    assert topo.gates == () and not topo.judgeable
    assert any(u.where == "gate" for u in topo.unresolved), topo.unresolved
    assert not any("feature-scaling" in n for n in topo.notes)


@pytest.mark.parametrize(
    ("model_cls", "n_gates"), [(NeutralMMoE, 2), (NeutralInlineOMoE, 1)], ids=["mmoe", "omoe-inline"]
)
def test_real_moe_with_neutral_names_keeps_its_gates(
    model_cls: type[nn.Module], n_gates: int, frame: pd.DataFrame
) -> None:
    torch.manual_seed(0)
    model = model_cls().eval()
    topo = discover_topology(model, torch.tensor(frame[FEATURES].to_numpy()[:61]))
    assert len(topo.gates) == n_gates and topo.unresolved == ()
    assert all(len(g.experts) == N_FIELDS for g in topo.gates)
    assert topo.architecture == ("mmoe" if n_gates == 2 else "omoe")
    result = _inspect(model, frame)
    assert len(result.topology.gates) == n_gates
