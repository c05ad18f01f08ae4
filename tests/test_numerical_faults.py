"""Numerical faults: each gives the right numbers (checked against the gate outputs computed directly)
or a specific finding, never a crash and never an unexplained NaN in metrics.json or the report.

Faults: NaN/inf gate weights (some rows, every row), gates that do not sum to 1 (sigmoid, sparse
top-k with and without renormalization), one expert, one task, fp16 and bf16 models, zero-variance
features, a task whose labels are all one class, NaN in the data.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mmoe_inspect import FeatureSpec, inspect
from mmoe_inspect.analysis.findings import routing_findings
from mmoe_inspect.data.sources import DataError
from mmoe_inspect.inspector import InspectConfig
from mmoe_inspect.reports import write_report
from mmoe_inspect.results import InspectionResult
from mmoe_inspect.testing.planted import PlantedMMoE
from mmoe_inspect.topology.spec import ExpertSpec, GateSpec, TaskSpec, Topology

N_FEATURES = 6
FEATURES = FeatureSpec.dense_only(N_FEATURES)
COLS = list(FEATURES.dense)
N_ROWS = 800


class GateFn(nn.Module):
    """The last step of a gate, `[batch, E]` logits → weights, as real models write it."""

    def __init__(self, kind: str, k: int = 2) -> None:
        super().__init__()
        self.kind, self.k = kind, k

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind == "sigmoid":
            return torch.sigmoid(z)
        if self.kind == "topk":  # Switch/GShard style: softmax over all experts, keep the top k (sum < 1)
            p = torch.softmax(z, 1)
            v, i = p.topk(self.k, 1)
            return torch.zeros_like(p).scatter(1, i, v)
        if self.kind == "topk_renorm":  # top k renormalized: sparse and on the simplex
            v, i = z.topk(self.k, 1)
            return torch.zeros_like(z).scatter(1, i, torch.softmax(v, 1))
        p = torch.softmax(z, 1)
        if self.kind == "some_nonfinite":  # row r: NaN on every 7th, +inf on every 11th
            p = p.clone()
            p[::7, 0] = float("nan")
            p[3::11, 1] = float("inf")
        elif self.kind == "all_nan":
            p = torch.full_like(p, float("nan"))
        return p


class GatedMoE(nn.Module):
    """A small MMoE whose gates end in `GateFn(kind)`: `gates.<task>` = Linear → GateFn, output `[batch, T]`."""

    def __init__(
        self, kind: str = "softmax", n_experts: int = 4, tasks: tuple[str, ...] = ("ctr", "cvr")
    ) -> None:
        super().__init__()
        self.tasks = tasks
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(N_FEATURES, 5), nn.ReLU()) for _ in range(n_experts)
        )
        self.gates = nn.ModuleDict(
            {t: nn.Sequential(nn.Linear(N_FEATURES, n_experts), GateFn(kind)) for t in tasks}
        )
        self.towers = nn.ModuleList(nn.Linear(5, 1) for _ in tasks)
        with torch.no_grad():
            for g in self.gates.values():
                g[0].weight.mul_(4)  # input-dependent routing, clearly not uniform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = torch.stack([m(x) for m in self.experts], 1)  # [batch, E, 5]
        out = []
        for t, tower in zip(self.tasks, self.towers, strict=True):
            g = torch.nan_to_num(self.gates[t](x), nan=0.0, posinf=1.0)  # the model itself survives
            out.append(torch.sigmoid(tower((g.unsqueeze(2) * e).sum(1))).squeeze(1))
        return torch.stack(out, 1)

    def topology(self) -> Topology:
        experts = tuple(ExpertSpec(f"experts.{i}", module=f"experts.{i}") for i in range(len(self.experts)))
        names = tuple(e.name for e in experts)
        gates = tuple(GateSpec(t, module=f"gates.{t}", experts=names, task=t) for t in self.tasks)
        return Topology(tuple(TaskSpec(t, kind="binary") for t in self.tasks), experts, gates)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N_ROWS, N_FEATURES)).astype("float32")
    df = pd.DataFrame(x, columns=COLS)
    df["ctr"] = (x[:, 0] + rng.normal(size=N_ROWS) > 0).astype("float64")
    df["cvr"] = (rng.random(N_ROWS) < 0.1).astype("float64")
    return df


def run(model: nn.Module, frame: pd.DataFrame, **kw) -> InspectionResult:
    return inspect(model, frame, features=FEATURES, config=InspectConfig(batch_size=300), **kw)


def direct_gates(model: GatedMoE, frame: pd.DataFrame, task: str) -> torch.Tensor:
    """The gate's weights `[n, E]` from calling the gate module on the rows, in `run`'s batches (float64)."""
    x = torch.from_numpy(frame[COLS].to_numpy(dtype="float32", copy=True))
    with torch.no_grad():
        return torch.cat([model.gates[task](x[i : i + 300]) for i in range(0, len(x), 300)]).double()


def codes(result: InspectionResult) -> set[tuple[str, str]]:
    return {(f.code, f.subject) for f in routing_findings(result.findings)}  # task quality: test_review.py


def metrics_nulls(result: InspectionResult) -> list[str]:
    """Paths of every null (NaN/inf written as null) in metrics.json's tables, except the fields that do
    not apply to a task's kind (MSE of a binary task; AUC and positive rate of a regression task)."""
    metrics = json.loads(result.to_json())
    not_applicable = {"binary": {"mse"}, "regression": {"auc", "positive_rate"}}
    out = []
    for name, records in metrics["tables"].items():
        for i, rec in enumerate(records):
            skip = not_applicable.get(rec.get("kind"), set()) if name == "tasks" else set()
            out += [f"{name}[{i}].{k}" for k, v in rec.items() if v is None and k not in skip]
    return out


def utilization(result: InspectionResult, gate: str) -> np.ndarray:
    u = result.table("utilization")
    return u[u["gate"] == gate]["mean"].to_numpy()


# --------------------------------------------------------------------------- NaN/inf gate outputs
def test_nonfinite_gate_rows_are_counted_excluded_and_named(frame: pd.DataFrame, tmp_path: Path) -> None:
    model = GatedMoE("some_nonfinite").eval()
    result = run(model, frame)
    g = direct_gates(model, frame, "ctr")  # the same batches of 300 rows: NaN/inf rows per batch
    bad = ~torch.isfinite(g).all(1)
    gm = result.table("gate_metrics").set_index("gate")
    assert int(gm.loc["ctr", "nonfinite_rows"]) == int(bad.sum()) > 0
    assert int(gm.loc["ctr", "n_rows"]) == N_ROWS - int(bad.sum())
    reference = g[~bad].mean(0).numpy()
    np.testing.assert_allclose(utilization(result, "ctr"), reference, atol=1e-6)
    assert {("nonfinite_gate", "ctr"), ("nonfinite_gate", "cvr")} <= codes(result)
    assert metrics_nulls(result) == []  # finite rows still give every number
    html = write_report(result, tmp_path / "r").read_text(encoding="utf-8")
    assert "Gate produced NaN/inf" in html and ">nan<" not in html.lower()


def test_all_nan_gate_gets_only_the_nonfinite_finding(frame: pd.DataFrame) -> None:
    result = run(GatedMoE("all_nan").eval(), frame)
    assert codes(result) == {("nonfinite_gate", "ctr"), ("nonfinite_gate", "cvr")}  # no routing verdicts
    gm = result.table("gate_metrics")
    assert gm["n_rows"].tolist() == [0, 0] and gm["nonfinite_rows"].tolist() == [N_ROWS, N_ROWS]
    nulls = metrics_nulls(result)
    # gate-derived numbers have no finite row to come from (said by nonfinite_gate); the tasks' do
    assert nulls and not [n for n in nulls if n.startswith("tasks")]
    assert result.verdict.startswith("Routing is unhealthy")


# --------------------------------------------------------------------------- gates not on the simplex
@pytest.mark.parametrize(
    ("kind", "normalized"),
    [
        pytest.param("sigmoid", False, id="sigmoid"),
        pytest.param("topk", False, id="sparse-top2"),
        pytest.param("topk_renorm", True, id="sparse-top2-renormalized"),
    ],
)
def test_gates_that_do_not_sum_to_one(kind: str, normalized: bool, frame: pd.DataFrame) -> None:
    model = GatedMoE(kind).eval()
    result = run(model, frame)
    gm = result.table("gate_metrics").set_index("gate")
    for task in model.tasks:
        g = direct_gates(model, frame, task)
        off = int(((g.sum(1) - 1).abs() > 1e-3).sum())
        np.testing.assert_allclose(utilization(result, task), g.mean(0).numpy(), atol=1e-6)
        top1 = torch.bincount(g.argmax(1), minlength=g.shape[1]).double() / N_ROWS
        u = result.table("utilization")
        np.testing.assert_allclose(u[u["gate"] == task]["top1_share"].to_numpy(), top1.numpy(), atol=1e-9)
        if normalized:
            assert off == 0 and int(gm.loc[task, "not_normalized_rows"]) == 0
            assert ("gate_not_normalized", task) not in codes(result)
        else:
            assert off > 0 and int(gm.loc[task, "not_normalized_rows"]) == off
            assert ("gate_not_normalized", task) in codes(result)
        h = float(gm.loc[task, "normalized_entropy"])
        assert math.isfinite(h) and 0.0 <= h <= 1.0 + 1e-9
    assert metrics_nulls(result) == []


# --------------------------------------------------------------------------- degenerate shapes
def test_single_expert_gives_exact_numbers_and_no_routing_findings(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    result = run(GatedMoE(n_experts=1).eval(), frame)
    gm = result.table("gate_metrics")
    assert gm["effective_experts"].tolist() == pytest.approx([1.0, 1.0])
    assert gm["mean_entropy"].tolist() == pytest.approx([0.0, 0.0], abs=1e-12)
    assert result.table("utilization")["mean"].tolist() == pytest.approx([1.0, 1.0])
    assert codes(result) == set()  # [1.0] on every row is not "tasks route identically"
    assert (write_report(result, tmp_path / "r")).is_file()


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: GatedMoE(tasks=("ctr",)), id="dict-of-gates"),
        pytest.param(lambda: PlantedMMoE(N_FEATURES, tasks=("ctr",)), id="planted-mmoe"),
    ],
)
def test_single_task(make, frame: pd.DataFrame, tmp_path: Path) -> None:
    from sklearn.metrics import roc_auc_score

    model = make().eval()
    result = run(model, frame)
    tasks = result.table("tasks")
    assert tasks["task"].tolist() == ["ctr"] and int(tasks["n_rows"][0]) == N_ROWS
    with torch.no_grad():
        pred = model(torch.from_numpy(frame[COLS].to_numpy(copy=True)))[:, 0].numpy()
    assert float(tasks["auc"][0]) == pytest.approx(roc_auc_score(frame["ctr"], pred), abs=2e-3)
    assert "task_divergence" not in result.tables or result.table("task_divergence").empty
    assert write_report(result, tmp_path / "r").is_file()


# --------------------------------------------------------------------------- low precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_models_give_the_float32_numbers(dtype: torch.dtype, frame: pd.DataFrame) -> None:
    model = PlantedMMoE(N_FEATURES, tasks=("ctr", "cvr"), gate_modes={"ctr": "specialized"}).eval()
    ref = run(model, frame)
    low = run(
        model.to(dtype),
        frame,
        input_fn=lambda df: torch.from_numpy(df[COLS].to_numpy(copy=True)).to(dtype),
    )
    model.float()
    tol = 2e-3 if dtype == torch.float16 else 1.5e-2  # rounding of the gate itself (10 / 7 mantissa bits)
    np.testing.assert_allclose(low.table("utilization")["mean"], ref.table("utilization")["mean"], atol=tol)
    gm_low, gm_ref = low.table("gate_metrics"), ref.table("gate_metrics")
    assert gm_low["n_rows"].tolist() == [N_ROWS, N_ROWS] and gm_low["nonfinite_rows"].tolist() == [0, 0]
    np.testing.assert_allclose(gm_low["normalized_entropy"], gm_ref["normalized_entropy"], atol=5 * tol)
    assert codes(low) == codes(ref)
    assert metrics_nulls(low) == []


# --------------------------------------------------------------------------- data faults
def test_zero_variance_features(frame: pd.DataFrame) -> None:
    flat = frame.assign(x1=0.0, x2=3.5, x5=-1.0)  # three constant columns
    model = GatedMoE().eval()
    result = run(model, flat, attribution={"sample_rows": 64, "budget_seconds": 30})
    for task in model.tasks:
        np.testing.assert_allclose(
            utilization(result, task), direct_gates(model, flat, task).mean(0), atol=1e-6
        )
    assert metrics_nulls(result) == []
    attr = result.attribution
    assert attr is not None
    for name, table in attr.tables.items():
        num = table.select_dtypes("number")
        if name == "gate_features":  # a feature no gate reads (attribution 0) has no rank: ties at nothing
            assert (num["rank"].isna() == (num["mean_abs"] == 0)).all()
            num = num.drop(columns="rank")
        assert np.isfinite(num.to_numpy(dtype=float)).all() or num.empty, name


def test_all_features_constant_gives_no_expert_similarity(frame: pd.DataFrame) -> None:
    """Every row equal: every expert is constant, so CKA is undefined (NaN, not the cancellation noise
    of float64 moments, which read 0.6-2.5 and fired `redundant_experts` before) and the gates, which
    cannot depend on the input, are input-independent."""
    flat = frame.assign(**{c: 0.7 for c in COLS})
    result = run(GatedMoE().eval(), flat)
    assert result.table("redundant_experts")["cka"].isna().all()
    assert {f.code for f in routing_findings(result.findings)} == {"input_independent_gate"}


def test_one_class_labels_say_auc_is_undefined(frame: pd.DataFrame, tmp_path: Path) -> None:
    one_class = frame.assign(ctr=1.0, cvr=0.0)
    result = run(GatedMoE().eval(), one_class, causal={"n_boot": 20})
    tasks = result.table("tasks").set_index("task")
    assert tasks["positive_rate"].tolist() == [1.0, 0.0]
    assert tasks["auc"].isna().all()  # undefined, not 0.5 and not 0
    found = {f.subject: f for f in result.findings if f.code == "single_class_labels"}
    assert set(found) == {"ctr", "cvr"}
    assert "positive" in found["ctr"].message and "negative" in found["cvr"].message
    nulls = [n for n in metrics_nulls(result) if n.startswith("tasks")]
    undefined = (
        "auc",
        "auc_hi",
        "auc_lo",
        "base_rate_logloss",
        "beats_base_rate",
        "logloss_vs_base_hi",
        "logloss_vs_base_lo",
        "worse_than_base_rate",
    )  # explained by the findings
    assert sorted(nulls) == [f"tasks[{i}].{k}" for i in (0, 1) for k in undefined]
    html = write_report(result, tmp_path / "r").read_text(encoding="utf-8")
    assert (
        "Labels all one class or value" in html
        and "its AUC (and AUC-based causal effects) is undefined" in html
    )


def test_nan_in_the_data_is_a_bad_input_naming_the_column_and_row(frame: pd.DataFrame) -> None:
    bad = frame.copy()
    bad.loc[417, "x3"] = np.nan
    with pytest.raises(DataError, match=r"'x3' .* 1 NaN/inf .*first at row 417"):
        run(GatedMoE().eval(), bad)
    bad.loc[417, "x3"] = np.inf
    with pytest.raises(DataError, match=r"'x3'"):
        run(GatedMoE().eval(), bad)
