"""What the report says about broken models must be true (reviewer's session-11 cases, rebuilt small).

Each test plants the broken behaviour in a small real model and checks the statement the tool makes:

* NaN rows: a model whose output is NaN on the rows of one item id (a NaN embedding row) gets its
  report written; those rows are left out of the attribution tables, and counted (not a crash on
  casting a NaN rank to int, and not every row lost to a NaN mean baseline).
* A constant task (its tower's output weights zeroed: every attribution 0) has no top features: the
  gate-vs-task agreement is empty with a note, not an overlap of 1.000 with the gate's own order.
* The "high only because gate X collapsed" note is attached only to a headline value that is high.
* The sparse-target table names a top expert (and a shared dependence) only from a significant
  importance; otherwise none, with the reason.
* A 3-row segment is not ranked as routing most differently, and is marked too small to judge.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import mmoe_inspect as mi
from mmoe_inspect.causal.segments import SegmentRouting
from mmoe_inspect.checkpoint import save_checkpoint
from mmoe_inspect.cli.main import app
from mmoe_inspect.datasets import make_recsys, recsys_features, recsys_tasks
from mmoe_inspect.models import ModelConfig, build_model
from mmoe_inspect.reports import headline_cards
from mmoe_inspect.reports.causal_figures import causal_segments
from mmoe_inspect.reports.causal_section import sparse_view
from mmoe_inspect.topology.spec import GateSpec


def _mmoe(frame: pd.DataFrame, seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = ModelConfig("mmoe", recsys_features(frame), tuple(recsys_tasks()), {"n_experts": 3})
    return build_model(config).eval()


# ------------------------------------------------------------------------------------ NaN rows
def test_report_on_a_model_with_nan_rows_completes_and_counts_the_rows_it_left_out(tmp_path: Path) -> None:
    frame = make_recsys(400, seed=3)
    model = _mmoe(frame)
    item = int(frame["item_id"].value_counts().index[0])  # the most frequent item: sure to be sampled
    with torch.no_grad():
        model.inputs.embeddings[1].weight[item] = float("nan")  # embeddings in feature order: item_id second
    nan_rows = int((frame["item_id"] == item).sum())
    data = tmp_path / "eval.parquet"
    frame.to_parquet(data)
    ckpt = tmp_path / "nan.pt"
    save_checkpoint(ckpt, model, eval_frame=frame)
    out = tmp_path / "report"
    args = ["report", str(ckpt), "--data", str(data), "--out", str(out), "--no-causal"]
    result = CliRunner().invoke(app, [*args, "--attribution-rows", "400"])
    assert result.exit_code == 0, result.output  # as for other findings (no --fail-on)
    assert "internal error" not in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    attribution = metrics["attribution"]
    # every sampled row with the NaN item is left out, and only those
    assert attribution["meta"]["nonfinite_rows"] == nan_rows
    assert any(f"{nan_rows} of 400 sampled rows have NaN/inf attributions" in n for n in attribution["notes"])
    for gate in ("click", "purchase"):  # the other rows still rank every feature of each gate
        ranks = [r["rank"] for r in attribution["tables"]["gate_features"] if r["gate"] == gate]
        assert sorted(ranks) == list(range(1, 13))
    html = (out / "index.html").read_text()
    assert f"{nan_rows} of 400 sampled rows have NaN/inf attributions" in html


def test_one_nan_row_does_not_poison_the_mean_baseline() -> None:
    """The default baseline of an embedding is the mean over the sampled rows: taken over the finite rows."""
    frame = make_recsys(200, seed=4)
    model = _mmoe(frame)
    item = int(frame["item_id"].iloc[0])
    with torch.no_grad():
        model.inputs.embeddings[1].weight[item] = float("nan")
    res = mi.attribution.run_attribution(model, frame, sample_rows=200, n_steps=4, budget_seconds=None)
    bad = frame["item_id"].to_numpy() == item
    values = res.per_row["task:click"]
    assert not np.isfinite(values[bad]).all() and np.isfinite(values[~bad]).all()
    assert res.meta["nonfinite_rows"] == int(bad.sum())
    assert res.task_attributions["mean_abs"].notna().all()
    # the NaN rows do not leak into the other rows' outputs: their convergence check is measured
    assert (
        res.convergence["relative_delta"].notna().all() and (res.convergence["n_rows"] == (~bad).sum()).all()
    )


def test_a_task_that_is_nan_everywhere_does_not_erase_the_gates_attributions() -> None:
    """Rows are left out per target: click's NaN tower empties click's rows, not the gates'."""
    from mmoe_inspect.reports.attribution_figures import (
        attribution_experts,
        attribution_gate_heatmaps,
        attribution_gate_vs_task,
    )

    frame = make_recsys(200, seed=10)
    model = _mmoe(frame)
    with torch.no_grad():
        model.towers[0].out.bias.fill_(float("nan"))
    result = mi.inspect(model, frame, attribution={"sample_rows": 32, "n_steps": 4})
    res = result.attribution
    assert res.meta["nonfinite_rows"] == 32
    assert any(
        n.startswith("32 of 32 sampled rows have NaN/inf attributions in task:click") for n in res.notes
    )
    assert res.gate_attributions["mean_abs"].notna().all() and len(res.top_features("click")) == 5
    tasks = res.task_attributions.set_index("task")
    assert tasks.loc["click", "mean_abs"].isna().all() and tasks.loc["purchase", "mean_abs"].notna().all()
    assert res.gate_task_agreement.set_index("task").at["click", "task_top"] == ""
    for draw in (attribution_experts, attribution_gate_heatmaps, attribution_gate_vs_task):
        assert draw(result) is not None


# ------------------------------------------------------------------------------- constant task
def test_constant_task_has_no_top_features_and_no_invented_agreement() -> None:
    frame = make_recsys(300, seed=5)
    model = _mmoe(frame)
    with torch.no_grad():
        model.towers[1].out.weight.zero_()  # purchase: one constant prediction, every attribution 0
    res = mi.attribution.run_attribution(model, frame, sample_rows=48, n_steps=4, budget_seconds=None)
    agree = res.gate_task_agreement.set_index("task")
    assert agree.at["purchase", "task_top"] == ""
    assert np.isnan(agree.at["purchase", "top_overlap"]) and np.isnan(
        agree.at["purchase", "rank_correlation"]
    )
    assert agree.at["purchase", "gate_top"] != ""  # the gate still moves: its own top list stays
    assert agree.at["click", "task_top"] != "" and not np.isnan(agree.at["click", "top_overlap"])
    assert any("agreement of gate 'purchase' with task 'purchase' left empty" in n for n in res.notes)
    assert any("every attribution of task:purchase is 0" in n for n in res.notes)


def test_a_gate_whose_attributions_are_all_zero_ranks_no_feature() -> None:
    frame = make_recsys(300, seed=6)
    model = _mmoe(frame)
    with torch.no_grad():  # the purchase gate ignores its input: one fixed mix for every row
        model.gates[1][0].weight.zero_()
    res = mi.attribution.run_attribution(model, frame, sample_rows=48, n_steps=4, budget_seconds=None)
    gf = res.gate_features
    assert gf.loc[gf["gate"] == "purchase", "rank"].isna().all()
    assert res.top_features("purchase") == [] and len(res.top_features("click")) == 5
    row = res.gate_task_agreement.set_index("gate").loc["purchase"]
    assert row["gate_top"] == "" and np.isnan(row["top_overlap"])


# ----------------------------------------------------------------------- specialisation headline
def _collapsed(frame: pd.DataFrame, onto: dict[str, int]) -> mi.InspectionResult:
    model = _mmoe(frame, seed=2)
    with torch.no_grad():
        for g, e in onto.items():
            gate = model.gates[["click", "purchase"].index(g)][0]
            gate.weight.zero_()
            gate.bias.zero_()
            gate.bias[e] = 20.0
    return mi.inspect(model, frame, causal=False)


def test_collapse_note_is_not_attached_to_a_value_of_zero() -> None:
    """Both gates collapsed onto e0: MI and TV are 0; no 'high only because ... collapsed' on them."""
    result = _collapsed(make_recsys(400, seed=7), {"click": 0, "purchase": 0})
    assert any(f.code == "collapsed_gate" for f in result.findings)
    cards = {c.label: c for c in headline_cards(result)}
    assert cards["task routing difference"].value == "TV 0.000"
    assert "collapsed" not in cards["task routing difference"].hint
    assert "collapsed" not in cards["normalized task-expert MI"].hint


def test_collapse_note_stays_on_a_high_value() -> None:
    """The gates collapsed onto different experts: TV is 1, high only because of the collapse."""
    result = _collapsed(make_recsys(400, seed=7), {"click": 0, "purchase": 1})
    cards = {c.label: c for c in headline_cards(result)}
    assert cards["task routing difference"].value == "TV 1.000"
    assert "high only because gate" in cards["task routing difference"].hint


# --------------------------------------------------------------------------- sparse top expert
def _top_expert(imp: pd.DataFrame, dense: list[str]) -> dict:
    from mmoe_inspect.causal.gains import _top_expert

    return _top_expert(imp, dense)


def _ablation(importance, lo, hi, significant=None) -> pd.DataFrame:
    """AUC ablation rows of one task; `significant` as the table marks it (default: the interval excludes 0,
    i.e. Holm's adjustment does not bind)."""
    if significant is None:
        significant = [a > 0 or b < 0 for a, b in zip(lo, hi, strict=True)]
    return pd.DataFrame(
        {
            "expert": ["e0", "e1", "e2"],
            "importance": importance,
            "lo": lo,
            "hi": hi,
            "significant": significant,
            "too_few_labels": False,
        },
    )


def test_no_top_expert_when_every_importance_is_zero() -> None:
    out = _top_expert(_ablation([0.0, -0.0, 0.0], [0.0, -0.0, 0.0], [0.0, -0.0, 0.0]), ["e0"])
    assert out.get("top_expert") is None and "shared_dependence" not in out
    assert "every importance is 0" in out["note"]


def test_no_top_expert_when_the_largest_importance_holds_zero() -> None:
    out = _top_expert(_ablation([0.002, 0.016, 0.011], [-0.004, -0.034, -0.03], [0.008, 0.066, 0.05]), ["e0"])
    assert out.get("top_expert") is None and "shared_dependence" not in out
    assert "e1 0.016 [-0.034, 0.066]" in out["note"]
    view = sparse_view(
        pd.DataFrame(
            [
                {
                    "task": "purchase",
                    "positive_rate": 0.02,
                    "auc": 0.6,
                    "dense_experts": "e0",
                    "top_expert": None,
                    "swap_source": None,
                    "shared_dependence": np.nan,
                    **{
                        k: np.nan
                        for k in (
                            "top_importance",
                            "top_lo",
                            "top_hi",
                            "uniform_change",
                            "uniform_lo",
                            "uniform_hi",
                            "mean_gate_change",
                            "mean_gate_lo",
                            "mean_gate_hi",
                            "swap_change",
                            "swap_lo",
                            "swap_hi",
                        )
                    },
                    "note": out["note"],
                }
            ]
        )
    )
    assert view.at[0, "top_importance"] == "—" and view.at[0, "note"] == out["note"]


def test_top_expert_and_shared_dependence_from_significant_importances_only() -> None:
    out = _top_expert(_ablation([0.03, 0.05, 0.04], [0.01, -0.01, 0.02], [0.05, 0.11, 0.06]), ["e0"])
    assert out["top_expert"] == "e2"  # e1 is larger, but its interval holds 0
    assert (out["top_lo"], out["top_hi"]) == (0.02, 0.06)
    assert out["shared_dependence"] == pytest.approx(0.03 / 0.07)  # e0 of the significant e0 + e2
    assert "note" not in out
    # the ablation table's Holm adjustment left e2 not significant: e0 alone counts
    out = _top_expert(
        _ablation([0.03, 0.05, 0.04], [0.01, -0.01, 0.02], [0.05, 0.11, 0.06], [True, False, False]), ["e0"]
    )
    assert out["top_expert"] == "e0" and out["shared_dependence"] == 1.0


def test_sparse_table_of_a_constant_task_names_no_expert() -> None:
    """End to end: purchase's tower outputs one constant, so removing an expert changes nothing."""
    frame = make_recsys(1500, seed=8, purchase_rate=0.03)
    model = _mmoe(frame, seed=3)
    with torch.no_grad():
        model.towers[1].out.weight.zero_()
    res = mi.causal.run_causal(model, frame, analyses=("ablation", "gains"), n_boot=0)
    row = res.sparse_gains.set_index("task").loc["purchase"]
    assert (
        row["top_expert"] is None and np.isnan(row["shared_dependence"]) and np.isnan(row["top_importance"])
    )
    assert "every importance is 0" in row["note"]
    json.dumps(res.to_dict(), allow_nan=False)


def _own_labels(model: torch.nn.Module, frame: pd.DataFrame) -> pd.DataFrame:
    """Plant: purchase labels = the model's own top-3% purchase scores, so it ranks them (AUC 1) and the
    experts it reads matter for it (significant importances where there are experts)."""
    score = mi.causal.run_causal(model, frame, analyses=("gains",), n_boot=0).predictions["model:purchase"]
    out = frame.copy()
    out["purchase"] = (score.to_numpy() >= np.quantile(score.to_numpy(), 0.97)).astype(float)
    return out


def test_a_one_gate_moe_has_no_shared_dependence_and_says_why() -> None:
    """OMoE: one gate serves every task, so the sparse task uses the dense tasks' experts by construction:
    a "shared dependence" (0.842 in the truth review) measures nothing; "—" with the reason."""
    frame = make_recsys(3000, seed=8, purchase_rate=0.03)
    torch.manual_seed(3)
    config = ModelConfig("omoe", recsys_features(frame), tuple(recsys_tasks()), {"n_experts": 3})
    model = build_model(config).eval()
    res = mi.causal.run_causal(model, _own_labels(model, frame), analyses=("ablation", "gains"), n_boot=0)
    row = res.sparse_gains.set_index("task").loc["purchase"]
    assert row["top_expert"] is not None  # a significant importance exists: the share was computed before
    assert np.isnan(row["shared_dependence"]), row["shared_dependence"]
    assert "one gate serves every task (a one-gate MoE)" in row["note"]
    assert sparse_view(res.sparse_gains).at[0, "note"] == row["note"]


def test_a_shared_bottom_sparse_row_says_why_it_is_empty_and_no_shared_bottom_baseline_is_suggested() -> None:
    """Shared-Bottom: no experts to ablate, so the sparse row's expert columns are empty: its note says why
    (it was blank), and the causal section suggests a single-task baseline only, not a Shared-Bottom."""
    from mmoe_inspect.reports import get_report_structure, render_html

    frame = make_recsys(1500, seed=8, purchase_rate=0.03)
    torch.manual_seed(3)
    model = build_model(ModelConfig("shared_bottom", recsys_features(frame), tuple(recsys_tasks()))).eval()
    result = mi.inspect(model, frame, causal={"n_boot": 0})
    row = result.causal.sparse_gains.set_index("task").loc["purchase"]
    assert np.isnan(row["shared_dependence"]) and row["top_expert"] is None
    assert "the model has no gates (Shared-Bottom or dense)" in row["note"], row["note"]
    html = render_html(get_report_structure(result, {}))
    assert "No baseline model was given" in html and "compare against a single-task model" in html
    assert "or a Shared-Bottom trained" not in html


# ------------------------------------------------------------------------------------ segments
def _segments(n_tiny: int, shift: float) -> pd.DataFrame:
    """One gate over 3 experts, 2,000 rows with noisy weights; the first `n_tiny` rows form segment
    "tiny", rows n_tiny..n_tiny+400 segment "moved" whose weights lean on e2 by `shift`."""
    rng = np.random.default_rng(0)
    n = 2000
    logits = rng.normal(0.0, 1.0, size=(n, 3))
    labels = np.array(["big"] * n, dtype=object)
    labels[:n_tiny] = "tiny"
    labels[n_tiny : n_tiny + 400] = "moved"
    logits[n_tiny : n_tiny + 400, 2] += shift
    logits[:n_tiny, 0] += 3.0  # the tiny segment sits far from the mean, by its few rows
    probs = torch.softmax(torch.tensor(logits), dim=1)
    seg = SegmentRouting("seg", (GateSpec("g", "m", ("e0", "e1", "e2")),))
    seg.update(pd.Series(labels), {"g": probs})
    return seg.table()


def test_a_three_row_segment_is_not_ranked_first_and_is_marked_too_small() -> None:
    from mmoe_inspect.causal.segments import MIN_SEGMENT_ROWS
    from mmoe_inspect.reports.causal_figures import ranked_segments, too_small_text

    table = _segments(3, 0.6).set_index("segment")
    assert table.at["tiny", "jsd"] > table.at["moved", "jsd"]  # by JSD alone it would rank first
    assert not table.at["tiny", "beyond_noise"] and table.at["moved", "beyond_noise"]
    ranked = ranked_segments(_segments(3, 0.6), 10)
    assert ranked["segment"].iloc[0] == "moved"
    assert (
        too_small_text(table.loc["tiny"].to_dict() | {"rows": 3})
        == f"too few rows to judge (3 < {MIN_SEGMENT_ROWS})"
    )
    assert too_small_text(table.loc["moved"].to_dict()) == ""


def test_segment_noise_test_needs_a_real_difference() -> None:
    """No planted difference: neither the big nor a 400-row random segment is beyond noise."""
    from mmoe_inspect.reports.causal_figures import too_small_text

    table = _segments(3, 0.0).set_index("segment")
    assert not table["beyond_noise"].any()
    assert table.at["moved", "min_rows"] > 400
    assert too_small_text(table.loc["moved"].to_dict()).startswith("within noise for 400 rows")


def test_segment_figure_draws_the_tiny_segment_grey() -> None:
    frame = make_recsys(600, seed=9)
    frame["seg"] = "big"
    frame.loc[frame.index[:3], "seg"] = "tiny"
    model = _mmoe(frame)
    result = mi.inspect(model, frame, causal={"analyses": ("segments",), "segment_by": "seg", "n_boot": 0})
    seg = result.causal.segments
    assert not seg.loc[seg["segment"] == "tiny", "beyond_noise"].any()
    fig = causal_segments(result)
    texts = [t.get_text() for ax in fig.axes for t in ax.get_yticklabels()]
    assert any(t.startswith("tiny") and "within noise" in t for t in texts)
    legend = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert any("within sampling noise" in t for t in legend)


def test_the_segment_caption_does_not_promise_segments_beyond_noise_when_none_is() -> None:
    from mmoe_inspect.reports.causal_section import causal_section

    def caption(frame: pd.DataFrame) -> str:
        result = mi.inspect(
            _mmoe(frame), frame, causal={"analyses": ("segments",), "segment_by": "seg", "n_boot": 0}
        )
        section = causal_section(result, {}, set())
        (table,) = [i for i in section.items if getattr(i, "title", "").startswith("Segments of seg")]
        return table.description

    frame = make_recsys(600, seed=9)
    frame["seg"] = np.where(np.arange(600) % 2 == 0, "even", "odd")  # random halves: routed alike
    text = caption(frame)
    assert text.startswith("No segment routes differently beyond the sampling noise"), text
    assert "among those whose difference is beyond" not in text
