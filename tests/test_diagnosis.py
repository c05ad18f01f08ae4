"""Planted-truth diagnosis: models with known gate behaviour get exactly the expected findings, no others."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mmoe_inspect import FeatureSpec, inspect
from mmoe_inspect.analysis.findings import routing_findings
from mmoe_inspect.inspector import InspectConfig
from mmoe_inspect.testing.planted import EinsumMMoE, PlantedMMoE, PlantedSharedBottom

N_FEATURES = 8
FEATURES = FeatureSpec.dense_only(N_FEATURES)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6000, N_FEATURES)).astype("float32")
    df = pd.DataFrame(x, columns=list(FEATURES.dense))
    # labels: ctr depends on x0 (so positives route differently from negatives), cvr is sparse
    df["ctr"] = (x[:, 0] + 0.5 * rng.normal(size=len(df)) > 0.8).astype("float64")
    df["cvr"] = (rng.random(len(df)) < 0.03).astype("float64")
    return df


def reverse_specialized(model: PlantedMMoE, task: str) -> None:
    """Plant the mirror image of 'specialized': rows with x0 < 0 go to the first half of the experts."""
    with torch.no_grad():
        model.gates[task][0].weight.neg_()


def findings_of(model, frame, **kw) -> set[tuple[str, str]]:
    result = inspect(model, frame, features=FEATURES, config=InspectConfig(batch_size=1000), **kw)
    return {(f.code, f.subject) for f in routing_findings(result.findings)}  # task quality: test_review.py


CASES = [
    pytest.param(
        dict(gate_modes={"ctr": "collapsed", "cvr": "specialized"}),
        {("collapsed_gate", "ctr")},
        id="collapsed",
    ),
    pytest.param(
        dict(gate_modes={"ctr": "uniform", "cvr": "specialized"}), {("uniform_gate", "ctr")}, id="uniform"
    ),
    pytest.param(
        dict(gate_modes={"ctr": "constant", "cvr": "specialized"}),
        {("input_independent_gate", "ctr")},
        id="constant",
    ),
    pytest.param(
        dict(gate_modes={"ctr": "specialized", "cvr": "copy:ctr"}),
        {("tasks_route_identically", "ctr ~ cvr")},
        id="shared-gate",
    ),
    pytest.param(
        dict(gate_modes={"ctr": "specialized", "cvr": "collapsed:1"}, dead_experts=(3,)),
        {("collapsed_gate", "cvr"), ("dead_expert", "experts.3")},
        id="dead-expert",
    ),
    pytest.param(
        dict(gate_modes={"ctr": "polarized", "cvr": "specialized"}),
        {("polarized_gate", "ctr")},
        id="polarized",
    ),
]


@pytest.mark.parametrize(("kwargs", "expected"), CASES)
def test_planted_behaviour_gets_exactly_its_findings(frame, kwargs, expected) -> None:
    model = PlantedMMoE(N_FEATURES, n_experts=4, tasks=("ctr", "cvr"), **kwargs)
    assert findings_of(model, frame) == expected


def test_cleanly_specialized_gates_get_no_findings_and_a_yes(frame) -> None:
    """Equal mean weights, opposite routing row by row: no alarm, and the verdict must see the difference."""
    model = PlantedMMoE(
        N_FEATURES, n_experts=4, tasks=("ctr", "cvr"), gate_modes={"ctr": "specialized", "cvr": "specialized"}
    )
    reverse_specialized(model, "cvr")
    result = inspect(model, frame, features=FEATURES)
    assert routing_findings(result.findings) == []
    div = result.table("task_divergence").iloc[0]
    assert div["tv_per_row"] > 0.98  # every row (but those with x0 ~ 0) routed to disjoint experts
    assert div["jsd_mean_gates"] == pytest.approx(0.0, abs=1e-6)  # yet the mean gates agree
    assert result.verdict.startswith("Yes")
    # label-conditioned routing: ctr positives have x0 > 0, so the ctr gate sends them to experts 0 and 1
    lr = result.table("label_routing")
    pos = lr[(lr.gate == "ctr") & (lr.label == "ctr")].set_index("expert")["mean_positive"]
    assert pos["experts.0"] > 0.45 and pos["experts.3"] < 0.05


def test_inactive_and_redundant_experts(frame) -> None:
    model = PlantedMMoE(
        N_FEATURES,
        n_experts=4,
        tasks=("ctr", "cvr"),
        gate_modes={"ctr": "specialized", "cvr": "specialized"},
        inactive_experts=(1,),
        redundant_experts=(2, 3),
    )
    reverse_specialized(model, "cvr")
    assert findings_of(model, frame) == {
        ("inactive_expert", "experts.1"),
        ("redundant_experts", "experts.2 ~ experts.3"),
    }


def test_einsum_model_through_discovery(frame) -> None:
    """A model unlike ours (batched einsum experts, functional softmax, dict output), topology discovered."""
    model = EinsumMMoE(N_FEATURES, n_experts=4, tasks=("ctr", "cvr"))
    from mmoe_inspect.topology.discovery import discover_topology

    topo = discover_topology(model, torch.randn(64, N_FEATURES))
    assert topo.source == "discovered"
    assert {g.task for g in topo.gates} == {"ctr", "cvr"}
    result = inspect(model, frame, features=FEATURES, topology=topo)
    util = result.table("utilization")
    assert len(util) == 8
    sums = util.groupby("gate")["mean"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-6)
    # the recorded means are the model's own softmax, averaged
    x = torch.from_numpy(frame[list(FEATURES.dense)].to_numpy(copy=True))
    with torch.no_grad():
        expected = torch.softmax(model.moe.gates["ctr"](x), dim=1).mean(0)
    got = util[util.gate == topo.final_task_gates()["ctr"].name]["mean"].to_numpy()
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)


def test_shared_bottom_says_no_gates(frame) -> None:
    model = PlantedSharedBottom(N_FEATURES, tasks=("ctr", "cvr"))
    result = inspect(model, frame, features=FEATURES)
    assert not result.topology.has_gates
    assert routing_findings(result.findings) == []
    assert "No gates" in result.verdict
    tasks = result.table("tasks").set_index("task")
    assert tasks.loc["ctr", "positive_rate"] == pytest.approx(frame["ctr"].mean())
    assert "gate_metrics" not in result.tables


def test_thresholds_are_configurable(frame) -> None:
    from mmoe_inspect import Thresholds

    model = PlantedMMoE(
        N_FEATURES, n_experts=4, tasks=("ctr", "cvr"), gate_modes={"ctr": "constant", "cvr": "specialized"}
    )
    assert findings_of(model, frame, thresholds=Thresholds(input_dependence_min=0.0)) == set()
