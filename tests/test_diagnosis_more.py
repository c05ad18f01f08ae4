"""More planted truths: PLE-specific findings, healthy-but-shared info, batch/shard invariance, low precision."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mmoe_inspect import FeatureSpec, inspect
from mmoe_inspect.analysis.findings import routing_findings
from mmoe_inspect.inspector import InspectConfig
from mmoe_inspect.models import CGC
from mmoe_inspect.testing.planted import PlantedMMoE

N = 8
FEATURES = FeatureSpec.dense_only(N)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5000, N)).astype("float32")
    df = pd.DataFrame(x, columns=list(FEATURES.dense))
    df["ctr"] = (x[:, 0] > 0.8).astype("float64")
    df["cvr"] = (rng.random(len(df)) < 0.03).astype("float64")  # sparse: 3% positives
    return df


def plant_gate(model: CGC, task_index: int, rows: list[tuple[float, float]]) -> None:
    """Set gate logits per expert to `bias + w0 * x0` ([own specific, shared 0, shared 1] order)."""
    linear = model.levels[0].gates[task_index][0]
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
        for e, (bias, w0) in enumerate(rows):
            linear.bias[e] = bias
            linear.weight[e, 0] = w0


def cgc() -> CGC:
    torch.manual_seed(3)
    return CGC(N, ["ctr", "cvr"], n_experts=2, n_specific=1, expert_hidden=(16,), tower_hidden=(4,))


def codes(result) -> set[tuple[str, str]]:
    return {(f.code, f.subject) for f in routing_findings(result.findings)}  # task quality: test_review.py


def test_ple_shared_expert_used_by_one_task(frame) -> None:
    model = cgc()
    plant_gate(
        model, 0, [(0.0, 2.0), (0.0, -2.0), (0.0, 0.0)]
    )  # ctr: own / shared0 by sign of x0, some shared1
    plant_gate(model, 1, [(0.0, 2.0), (-6.0, 0.0), (0.0, -2.0)])  # cvr: never shared0
    result = inspect(model, frame)
    assert codes(result) == {("shared_expert_single_task", "L0.shared.0")}


def test_ple_sparse_task_ignores_its_own_experts(frame) -> None:
    model = cgc()
    plant_gate(model, 0, [(0.0, 2.0), (0.0, -2.0), (0.0, 0.0)])
    plant_gate(model, 1, [(-1.5, 0.0), (0.0, 2.0), (0.0, -2.0)])  # cvr: ~5% on its own expert
    result = inspect(model, frame)
    assert codes(result) == {("sparse_task_ignores_own_experts", "cvr")}
    f = routing_findings(result.findings)[0]
    assert f.evidence["positive_rate"] == pytest.approx(frame["cvr"].mean())
    assert 0.03 < f.evidence["own_expert_weight"] < 0.1


def similar_mmoe(scale: float) -> PlantedMMoE:
    model = PlantedMMoE(
        N, n_experts=4, tasks=("ctr", "cvr"), gate_modes={"ctr": "specialized", "cvr": "specialized"}
    )
    with torch.no_grad():
        model.gates["cvr"][0].weight[:, 1] = torch.tensor([scale, -scale, scale, -scale])
    return model


def test_healthy_but_shared_routing_is_info_not_alarm(frame) -> None:
    result = inspect(similar_mmoe(0.3), frame, features=FEATURES)
    assert codes(result) == {("tasks_route_similarly", "ctr ~ cvr")}
    found = routing_findings(result.findings)[0]
    assert found.severity == "info"
    assert 0.05 < found.evidence["tv_per_row"] < 0.2
    assert result.verdict.startswith("Mostly shared")


def test_batch_size_and_shards_do_not_change_the_numbers(frame) -> None:
    model = similar_mmoe(1.0)
    whole = inspect(model, frame, features=FEATURES, config=InspectConfig(batch_size=5000))
    split = inspect(model, frame, features=FEATURES, config=InspectConfig(batch_size=333))
    # float32 forward passes differ in the last bits between batch sizes (BLAS blocking); the statistics
    # themselves merge exactly (tests/test_stats.py), so tables agree to float32 precision
    for name, table in whole.tables.items():
        pd.testing.assert_frame_equal(table, split.tables[name], check_exact=False, rtol=1e-5, atol=1e-7)
    for gate, rows in whole.arrays["reservoir"].items():
        np.testing.assert_allclose(rows, split.arrays["reservoir"][gate], rtol=1e-6)  # same sampled rows


def test_bf16_model_is_accumulated_in_float64(frame) -> None:
    model = similar_mmoe(1.0)
    ref = inspect(model, frame, features=FEATURES)
    low = inspect(
        model.to(torch.bfloat16),
        frame,
        input_fn=lambda df: torch.from_numpy(df[list(FEATURES.dense)].to_numpy(copy=True)).to(torch.bfloat16),
    )
    a = ref.table("utilization")["mean"].to_numpy()
    b = low.table("utilization")["mean"].to_numpy()
    np.testing.assert_allclose(a, b, atol=0.01)  # bf16 rounding of the gate itself, not of the statistics
    assert low.table("gate_metrics")["n_rows"].tolist() == [len(frame)] * 2
    assert codes(low) == codes(ref)


def test_result_repr_and_jupyter_summary_escape_names(frame) -> None:
    model = PlantedMMoE(N, n_experts=4, tasks=("<b>ctr</b>", "cvr"), gate_modes={"<b>ctr</b>": "collapsed"})
    result = inspect(model, frame.drop(columns=["ctr"]), features=FEATURES)
    assert "Collapsed gate: <b>ctr</b>" in repr(result)
    html = result._repr_html_()
    assert "&lt;b&gt;ctr&lt;/b&gt;" in html and "<b>ctr</b>" not in html
    assert "Routing is unhealthy" in html


def test_failing_forward_is_a_one_line_input_error(frame) -> None:
    from mmoe_inspect.recording.recorder import RecordingError

    model = PlantedMMoE(N, n_experts=4, tasks=("ctr", "cvr"))
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(RecordingError, match=r"forward failed on rows 0\.\.999 \(RuntimeError: "):
        inspect(
            model,
            frame,
            topology=model.topology(),
            input_fn=lambda df: torch.zeros(len(df), 3),  # wrong width: the model's matmul fails
            config=InspectConfig(batch_size=1000),
        )
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(not m._forward_hooks for m in model.modules())
