"""Issue 16, figures that cannot mislead, on the planted collapsed-onto-a-dead-expert model: no text box
covers data or a legend in any report figure or the slide; co-activation masks experts with ~0 weight
(their ratio divides by almost nothing); effective experts stop at E; two tasks get bars, not a 2 x 2
heatmap; the attribution heatmaps show the features in one order in every panel; no "(s)", no "-0.000",
no absolute path in the page, slide, summary lines or verdict."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from figure_checks import text_overlaps
from matplotlib.collections import QuadMesh
from review_cases import _model, inspect_case

import mmoe_inspect as mi
from mmoe_inspect.reports.figures import FIGURES, coactivation_lift, negligible_experts
from mmoe_inspect.reports.overview import overview_figure


@pytest.fixture(scope="module")
def collapsed() -> mi.InspectionResult:
    result, frame = inspect_case("collapsed_dead")
    model = _model("collapsed_dead")
    cols = [f"x{i}" for i in range(model.n_features)]
    result.attribution = mi.run_attribution(
        model,
        frame,
        input_fn=lambda f: torch.tensor(f[cols].to_numpy(np.float32)),
        features=cols,
        sample_rows=48,
        n_steps=4,
        budget_seconds=None,
    )
    return result


def test_no_text_covers_data_in_any_figure_or_the_slide(collapsed: mi.InspectionResult) -> None:
    drawn = 0
    for name, spec in FIGURES.items():
        fig = spec.draw(collapsed)
        if fig is None:
            continue
        drawn += 1
        assert text_overlaps(fig) == [], name
    assert drawn >= 12
    assert text_overlaps(overview_figure(collapsed)) == []


def _trained_like_collapse(n_experts: int, seed: int = 0) -> np.ndarray:
    """Mean outer product `[E, E]` of a gate collapsed the way training collapses one: expert 0 gets
    nearly everything, experts 2.. get ~0 weight whose tiny values rise and fall together per row."""
    rng = np.random.default_rng(seed)
    logits = np.zeros((4000, n_experts))
    logits[:, 0] = 6.0 + rng.normal(0, 0.5, 4000)
    logits[:, 1] = 3.0 + rng.normal(0, 0.5, 4000)
    logits[:, 2:] = -12.0 + 3.0 * rng.normal(0, 1, (4000, 1))  # shared noise: they move together
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    return w.T @ w / len(w)


def test_coactivation_masks_experts_with_negligible_weight(collapsed: mi.InspectionResult) -> None:
    import copy

    n_experts = next(g.n_experts for g in collapsed.topology.gates if g.name == "purchase")
    m = _trained_like_collapse(n_experts)
    collapsed = copy.copy(collapsed)
    collapsed.arrays = {
        **collapsed.arrays,
        "coactivation": {**collapsed.arrays["coactivation"], "purchase": m},
    }
    idle = negligible_experts(m)
    lift = coactivation_lift(m)
    assert idle.sum() >= 2  # the collapsed gate gives ~0 weight to several experts
    assert np.nanmax(lift[np.ix_(idle, idle)]) > 10  # the ratio that used to dominate the panel
    fig = FIGURES["coactivation"].draw(collapsed)
    ax = next(a for a in fig.axes if a.get_title(loc="left").startswith("purchase"))
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert [lab.endswith("(~0)") for lab in labels] == list(idle)
    shown = [float(t.get_text()) for t in ax.texts if t.get_text()]
    assert shown and max(shown) < 10  # no annotated ratio of a masked expert
    assert len(shown) == int((~idle).sum() * ((~idle).sum() - 1))  # off-diagonal pairs of used experts


def test_effective_experts_axis_ends_at_e_and_two_tasks_get_bars(collapsed: mi.InspectionResult) -> None:
    fig = FIGURES["effective_experts"].draw(collapsed)
    ax = fig.axes[0]
    n_experts = max(g.n_experts for g in collapsed.topology.gates)
    assert ax.get_xlim()[1] == n_experts
    side = [t.get_text() for a in ax.child_axes for t in a.get_yticklabels()]
    assert all(re.fullmatch(rf"\d\.\d\d of {n_experts}", s) for s in side) and len(side) == 2

    fig = FIGURES["task_divergence"].draw(collapsed)
    assert not any(isinstance(c, QuadMesh) for a in fig.axes for c in a.collections)  # no heatmap
    bars = [p for a in fig.axes for p in a.patches]
    n_measures = sum(1 for a in fig.axes if a.get_xlabel())
    assert len(bars) == n_measures == len([a for a in fig.axes if a.patches])
    tv = collapsed.table("task_divergence")["tv_per_row"].iloc[0]
    assert any(abs(p.get_width() - tv) < 1e-12 for p in bars)


def test_attribution_panels_share_one_feature_order(collapsed: mi.InspectionResult) -> None:
    fig = FIGURES["attribution_gates"].draw(collapsed)
    panels = [a for a in fig.axes if a.get_visible() and a.get_ylabel() == "feature"]
    assert len(panels) == 2
    orders = [[t.get_text() for t in a.get_yticklabels()] for a in panels]
    assert orders[0] == orders[1]
    ga = collapsed.attribution.gate_attributions
    mean = ga.groupby("feature")["share"].mean()
    assert list(mean.loc[orders[0]]) == sorted(mean.loc[orders[0]], reverse=True)


def test_words_and_numbers_read_right(collapsed: mi.InspectionResult, tmp_path: Path) -> None:
    from mmoe_inspect.reports import write_report

    index = write_report(collapsed, tmp_path / "r")
    text = re.sub(r"<[^>]+>", " ", index.read_text(encoding="utf-8"))
    slide = " ".join(t.get_text() for t in overview_figure(collapsed).texts)
    lines = " ".join([collapsed.verdict, collapsed.summary(), *collapsed.review.lines()])
    for where, body in (("page", text), ("slide", slide), ("summary", lines)):
        assert not re.search(r"\w\(s\)", body), where
        assert not re.search(r"-0\.0+(?![0-9])", body), where
        assert str(tmp_path) not in body, where
    assert "1 critical finding)" in collapsed.verdict or "critical findings)" in collapsed.verdict
