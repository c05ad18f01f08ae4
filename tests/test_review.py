"""The review (issue 16): task quality and multi-task gains first, one diagnosis per story, severity
from measured impact, one exact AUC per task everywhere, and slides whose texts never overlap.

Cases (tests/review_cases.py, tiny planted models, no training): a planted at-chance 2%-positive task,
a gate collapsed onto an expert that outputs zero (its task at chance), and a harmless collapse onto an
exact duplicate expert. The demo is checked in test_report_browser.py (its module fixture).
"""

from __future__ import annotations

import csv
import itertools
import json

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from review_cases import CASES, inspect_case
from sklearn.metrics import roc_auc_score

from mmoe_inspect.reports import overview_figure, write_report


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """Each case inspected with causal analyses and written as a report (once for the module)."""
    out = {}
    for case in CASES:
        result, frame = inspect_case(case)
        folder = tmp_path_factory.mktemp(case) / "report"
        write_report(result, folder)
        out[case] = (result, frame, folder)
    return out


def test_one_exact_auc_per_task_everywhere(cases) -> None:
    """tasks table = tasks.csv = metrics.json = causal task metrics = sklearn on the same rows (1e-9),
    including the 2%-positive purchase task; the page and the slide show that value."""
    result, frame, folder = cases["at_chance"]
    metrics = json.loads((folder / "metrics.json").read_text())
    with open(folder / "tables" / "tasks.csv", newline="") as fh:
        rows = {r["task"]: r for r in csv.DictReader(fh)}
    html = (folder / "index.html").read_text()
    assert frame["purchase"].mean() < 0.03  # the sparse task really is sparse
    for task in ("click", "purchase"):
        exact = roc_auc_score(frame[task], result.causal.predictions[f"model:{task}"])
        table = float(result.table("tasks").set_index("task").at[task, "auc"])
        assert table == pytest.approx(exact, abs=1e-9)
        assert float(rows[task]["auc"]) == pytest.approx(exact, abs=1e-9)
        js = next(r for r in metrics["tables"]["tasks"] if r["task"] == task)
        assert js["auc"] == pytest.approx(exact, abs=1e-9)
        tm = result.causal.task_metrics
        causal_auc = tm[(tm["task"] == task) & (tm["metric"] == "auc")]["value"].iloc[0]
        assert causal_auc == pytest.approx(exact, abs=1e-9)
        assert f"AUC {exact:.3f}" in html
        assert f"AUC {exact:.3f}" in slide_text(result)
    assert "binned" not in html


def test_planted_at_chance_task_is_the_first_answer(cases) -> None:
    result, _, folder = cases["at_chance"]
    review = result.review
    assert review.answer("routing").status != "problem"  # task quality does not color the routing answer
    assert review.diagnoses[0].title == "Task purchase at chance"
    assert [a.key for a in review.answers] == ["tasks", "gains", "routing", "next"]
    tasks = review.answer("tasks")
    assert tasks.status == "problem" and tasks.answer.startswith("No: purchase is at chance")
    assert not any("click" in e and "AT CHANCE" in e for e in tasks.evidence)
    assert {(f.code, f.subject, f.severity) for f in result.findings} >= {
        ("task_at_chance", "purchase", "critical")
    }
    assert "at chance" not in result.verdict.lower()  # the routing verdict stays about routing
    gains = review.answer("gains")
    assert gains.status == "unknown" and "--baseline" in gains.answer  # how to get one
    html = (folder / "index.html").read_text()
    assert (
        html.index("Does every task work?")
        < html.index("Did multi-task training help?")
        < html.index("Do experts serve different tasks?")
        < html.index("What should we do next?")
        < html.index('id="findings"')
    )
    text = slide_text(result)
    assert "DOES EVERY TASK WORK?" in text and "No: purchase is at chance" in text


def test_collapse_onto_dead_expert_is_one_critical_story(cases) -> None:
    result, _, folder = cases["collapsed_dead"]
    top = result.review.diagnoses[0]
    assert top.severity == "critical" and top.title.startswith("Gate purchase collapsed")
    assert set(top.findings) == {
        "collapsed_gate: purchase",
        "inactive_expert: experts.1",
        "task_at_chance: purchase",
    }
    assert top.causes[0].startswith("learning rate") and top.causes[1].startswith("input scale")
    assert "at chance" in top.impact and "100.0%" in top.summary
    # every finding is in exactly one story, and still in JSON / CSV with its code and evidence
    keys = [k for d in result.review.diagnoses for k in d.findings]
    assert sorted(keys) == sorted(f"{f.code}: {f.subject}" for f in result.findings)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert {f["code"] for f in metrics["findings"]} >= {"collapsed_gate", "inactive_expert", "task_at_chance"}
    assert metrics["review"]["diagnoses"][0]["findings"] == list(top.findings)
    assert result.review.answer("next").answer.startswith("Critical: Gate purchase collapsed")


def test_harmless_collapse_onto_a_duplicate_is_not_critical(cases) -> None:
    result, _, _ = cases["harmless_duplicate"]
    collapsed = next(f for f in result.findings if f.code == "collapsed_gate")
    assert collapsed.severity == "warning"  # measured: removing the expert changes nothing
    assert "not significant" in str(collapsed.evidence["impact"])
    assert not any(d.severity == "critical" for d in result.review.diagnoses)
    assert not result.verdict.startswith("Routing is unhealthy")
    story = next(d for d in result.review.diagnoses if d.title.startswith("Gate purchase collapsed"))
    assert "redundant_experts: experts.0 ~ experts.1" in story.findings
    assert story.causes[0].startswith("initialisation")
    # the dead-expert case ranks above the harmless one: severity follows the measured impact
    dead, _, _ = cases["collapsed_dead"]
    assert dead.review.diagnoses[0].severity == "critical"


def test_specialisation_headline_is_not_shown_as_fully_split_after_a_collapse(cases) -> None:
    from mmoe_inspect.reports import headline_cards

    result, _, _ = cases["collapsed_dead"]
    cards = {c.label: c for c in headline_cards(result)}
    assert "most similar task pair" not in cards  # one pair: named for what it is
    assert "not specialisation" in cards["task routing difference"].hint
    if "normalized task-expert MI" in cards:
        assert "fully split" not in cards["normalized task-expert MI"].hint


def slide_text(result) -> str:
    fig = overview_figure(result)
    return "\n".join(t.get_text() for t in fig.texts)


@pytest.mark.parametrize("case", CASES)
def test_slide_texts_do_not_overlap(cases, case: str) -> None:
    """No two texts of the slide overlap, and none overlaps the heatmap (checked on drawn text boxes)."""
    result, _, _ = cases[case]
    fig = overview_figure(result)
    renderer = FigureCanvasAgg(fig).get_renderer()
    boxes = [t.get_window_extent(renderer) for t in fig.texts if t.get_text().strip()]
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), (a, b)
    heat = fig.axes[0].get_tightbbox(renderer)
    for box in boxes:
        assert not box.overlaps(heat) or box.y0 > heat.y1, box
    assert min(b.y0 for b in boxes) >= 0 and max(b.x1 for b in boxes) <= fig.bbox.width  # nothing cut off


def test_table_typo_raises_with_close_names(cases) -> None:
    result, _, _ = cases["at_chance"]
    with pytest.raises(KeyError, match="did you mean 'utilization'"):
        result.table("utilisation")
    assert result.table("redundant_experts") is not None


def test_jupyter_view_has_task_quality_diagnosis_and_heatmap(cases) -> None:
    result, _, _ = cases["collapsed_dead"]
    html = result._repr_html_()
    assert "Does every task work?" in html and "purchase is at chance" in html
    assert "Diagnosis" in html and "Mean gate weight" in html and "<table>" in html
    assert "<ul></ul>" not in html


def test_a_significant_difference_never_prints_a_bound_of_zero():
    """`-0.003 [-0.006, 0.000] (significant)` reads as an interval touching 0: more digits until the
    bound that excludes 0 shows it, the same digits for the value and both bounds."""
    from mmoe_inspect.analysis.review import fmt_signed_interval

    assert fmt_signed_interval(-0.003, -0.006, -0.0003) == "-0.0030 [-0.0060, -0.0003]"
    assert fmt_signed_interval(2e-5, 1e-6, 4e-5) == "+0.000020 [+0.000001, +0.000040]"
    # an interval holding 0 keeps three digits, and the unit sits between value and interval
    assert fmt_signed_interval(0.01, -0.0001, 0.02, unit="AUC") == "+0.010 AUC [0.000, +0.020]"
