"""One rule for "too few", "at chance" and "significant" on labelled rows (`functional.evidence`): paired
differences (baseline gains, ablations, counterfactuals) on a handful of a class are "cannot tell"; a
baseline's AUC is judged like a task's; an ablation table's significance is Holm-adjusted across its cells;
loss intervals never go below 0 and a zero-width interval is not printed as certainty."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mmoe_inspect.analysis.review import fmt_interval, gains_answer
from mmoe_inspect.causal._engine import INTACT, PlannedVariant
from mmoe_inspect.causal.ablation import ablation_table
from mmoe_inspect.causal.counterfactual import counterfactual_table
from mmoe_inspect.causal.gains import baseline_gain_table
from mmoe_inspect.causal.metrics import Evaluation
from mmoe_inspect.functional.evidence import (
    auc_inverted,
    auc_verdict,
    holm_adjust,
    small_sample_auc_p,
    too_few_to_compare,
    two_sided_p,
)
from mmoe_inspect.topology.spec import TaskSpec

BUY = [TaskSpec("buy", kind="binary")]


def planted_gap(n_pos: int, n_neg: int, seed: int = 0) -> tuple[np.ndarray, dict]:
    """`buy` labels with a large planted gap: the multi-task model ranks positives low (AUC about 0.2), the
    single-task baseline ranks them high (about 0.8): the same per-row distributions at any size."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    model = np.where(y == 1, rng.normal(-1.2, 1, len(y)), rng.normal(0, 1, len(y)))
    base = np.where(y == 1, rng.normal(1.2, 1, len(y)), rng.normal(0, 1, len(y)))
    sig = lambda z: 1 / (1 + np.exp(-(z - 3)))  # noqa: E731  (probabilities near a 3% rate)
    return y[:, None], {INTACT: sig(model)[:, None], ("baseline", "single"): sig(base)[:, None]}


def test_a_large_gain_on_three_positives_is_cannot_tell_and_on_2000_stays_significant() -> None:
    labels, preds = planted_gap(3, 47)
    few = baseline_gain_table(Evaluation(labels, BUY, preds), ["single"]).set_index("metric")
    # the paired DeLong interval alone would call it: it lies below 0 on these 3 positives
    assert few.at["auc", "hi"] < 0 and few.at["auc", "gain"] < -0.3
    assert few["too_few_labels"].all() and not few["significant"].any()
    labels, preds = planted_gap(2000, 2000)
    many = baseline_gain_table(Evaluation(labels, BUY, preds), ["single"]).set_index("metric")
    assert not many["too_few_labels"].any()
    assert many.at["auc", "significant"] and many.at["auc", "hi"] < 0


def test_the_review_says_cannot_tell_not_negative_transfer_on_three_positives() -> None:
    labels, preds = planted_gap(3, 47)
    table = baseline_gain_table(Evaluation(labels, BUY, preds), ["single"])
    tasks = pd.DataFrame([{"task": "buy", "kind": "binary", "positive_rate": 3 / 50}])
    ans = gains_answer(SimpleNamespace(baseline_gains=table), tasks)
    assert ans.status == "unknown" and ans.answer.startswith("Cannot tell"), ans.answer
    assert "significantly worse" not in ans.answer
    assert "cannot tell: 3 positive / 47 negative rows, too few" in ans.evidence[0]
    labels, preds = planted_gap(2000, 2000)
    table = baseline_gain_table(Evaluation(labels, BUY, preds), ["single"])
    ans = gains_answer(SimpleNamespace(baseline_gains=table), tasks.assign(positive_rate=0.5))
    assert ans.answer.startswith("No: the multi-task model is significantly worse on buy vs single")


def test_ablation_and_counterfactual_differences_on_three_positives_are_never_significant() -> None:
    labels, preds = planted_gap(3, 47)
    ev = Evaluation(labels, BUY, {INTACT: preds[("baseline", "single")], ("x",): preds[INTACT]})
    abl = ablation_table(
        ev,
        [PlannedVariant(("x",), {}, {"mode": "renormalize", "expert": "e0", "owner": "shared", "level": 0})],
    )
    assert (abl["lo"] > 0).any()  # the raw interval excludes 0 ...
    assert abl["too_few_labels"].all() and not abl["significant"].any()  # ... on 3 positives
    assert abl["p_adjusted"].isna().all() and abl["p_value"].notna().all()
    cf = counterfactual_table(
        ev, [PlannedVariant(("x",), {}, {"name": "uniform", "tasks": ["buy"], "gates": ["g"]})]
    )
    assert (cf["hi"] < 0).any() and not cf["significant"].any()


def test_a_baseline_on_18_positives_is_judged_by_the_task_tables_rule() -> None:
    """The demo's purchase_only baseline: AUC about 0.5 on 18 of 1,000 rows is "too few to judge" (as the
    model's own purchase on those rows), not "at chance"; on 2,000 positives the same AUC is at chance."""
    for n_pos, n_neg, expected in ((18, 982, (False, True)), (2000, 2000, (True, False))):
        rng = np.random.default_rng(3)  # baseline AUC 0.510 [0.382, 0.639] on 18 positives (the demo's 0.514)
        y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
        preds = {INTACT: rng.random(len(y))[:, None], ("baseline", "single"): rng.random(len(y))[:, None]}
        ev = Evaluation(y[:, None], BUY, preds)
        row = baseline_gain_table(ev, ["single"]).set_index("metric").loc["auc"]
        assert abs(row["baseline_value"] - 0.5) < 0.1
        assert (row["baseline_at_chance"], row["baseline_too_few"]) == expected
        # the rule the task table uses, on the baseline's own DeLong interval
        lo, hi = ev.interval(("baseline", "single"), "buy", "auc")
        assert (lo, hi) == (row["baseline_lo"], row["baseline_hi"])
        assert auc_verdict(row["baseline_value"], lo, hi, n_pos, n_neg) == expected
        tasks = pd.DataFrame([{"task": "buy", "kind": "binary", "positive_rate": n_pos / len(y)}])
        ans = gains_answer(SimpleNamespace(baseline_gains=baseline_gain_table(ev, ["single"])), tasks)
        assert ("baseline itself is at chance" in ans.evidence[0]) == expected[0], ans.evidence
        assert ("baseline itself cannot be judged" in ans.evidence[0]) == expected[1], ans.evidence


def test_the_review_reads_saved_rows_without_the_new_columns_by_the_same_rule() -> None:
    """A baseline-gains row saved before the verdict columns: Hanley-McNeil's interval, the same rule."""
    tasks = pd.DataFrame([{"task": "buy", "kind": "binary", "positive_rate": 0.018}])
    old = pd.DataFrame(
        [
            {
                "task": "buy",
                "positive_rate": 0.018,
                "sparse": True,
                "n_labelled": 1000,
                "baseline": "single",
                "metric": "auc",
                "model": 0.57,
                "baseline_value": 0.514,
                "gain": 0.056,
                "lo": -0.1,
                "hi": 0.2,
                "significant": False,
            }
        ]
    )
    ans = gains_answer(SimpleNamespace(baseline_gains=old), tasks)
    assert "at chance" not in ans.answer + " ".join(ans.evidence)
    assert "cannot be judged" in ans.evidence[0]


def planted_null_ablation(n_variants: int, seed: int) -> pd.DataFrame:
    """A regression task and `n_variants` ablations that change nothing but noise (the expert does not
    matter), plus one that doubles the error (it does)."""
    rng = np.random.default_rng(seed)
    n = 400
    y = rng.normal(size=n)
    intact = y + rng.normal(0, 1, n)
    preds = {INTACT: intact[:, None]}
    variants = []
    for k in range(n_variants + 1):
        noise = 0.05 * rng.normal(size=n)
        preds[("ab", k)] = (intact + noise if k < n_variants else y + 2 * rng.normal(0, 1, n))[:, None]
        variants.append(
            PlannedVariant(
                ("ab", k), {}, {"mode": "renormalize", "expert": f"e{k}", "owner": "shared", "level": 0}
            )
        )
    ev = Evaluation(y[:, None], [TaskSpec("dwell", kind="regression")], preds)
    return ablation_table(ev, variants)


def test_ablation_significance_is_holm_adjusted_across_the_table() -> None:
    table = planted_null_ablation(40, seed=1)
    null, real = table[table["expert"] != "e40"], table[table["expert"] == "e40"]
    raw = (null["lo"] > 0) | (null["hi"] < 0)
    assert raw.sum() >= 2  # by chance, as on chance_healthy: 2 of 12 cells
    assert not null["significant"].any()  # family-wise control: none survives
    assert real["significant"].all() and (real["importance"] > 0).all()
    # the raw p-values are kept; the adjusted ones are Holm's over every cell of the mode
    np.testing.assert_allclose(table["p_adjusted"], holm_adjust(table["p_value"].to_numpy()))
    assert (table["p_adjusted"] >= table["p_value"]).all()


def test_holm_and_p_values_by_hand() -> None:
    np.testing.assert_allclose(holm_adjust([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    out = holm_adjust([0.01, np.nan, 0.5])
    assert np.isnan(out[1]) and out[0] == pytest.approx(0.02) and out[2] == pytest.approx(0.5)
    assert two_sided_p(1.959964, 0.0, 2 * 1.959964) == pytest.approx(0.05, abs=1e-6)
    assert two_sided_p(0.0, 0.0, 0.0) == 1.0 and two_sided_p(0.2, 0.2, 0.2) == 0.0
    assert too_few_to_compare("binary", 50, 9) and not too_few_to_compare("binary", 50, 10)
    assert too_few_to_compare("binary", 15, 10)  # 5 negatives
    assert too_few_to_compare("regression", 9) and not too_few_to_compare("regression", 10)


def test_a_loss_interval_never_goes_below_zero() -> None:
    """tiny_onepos: one positive scored near 0 carries the log loss; the CLT interval reached -0.135."""
    y = np.r_[1.0, np.zeros(49)]
    p = np.r_[1e-4, np.full(49, 0.01)]
    ev = Evaluation(y[:, None], BUY, {INTACT: p[:, None]})
    mean = ev.value(INTACT, "buy", "logloss")
    sd = np.std(-(y * np.log(p) + (1 - y) * np.log(1 - p)), ddof=1) / np.sqrt(50)
    assert mean - 1.96 * sd < 0  # the plain interval would go below 0
    lo, hi = ev.interval(INTACT, "buy", "logloss")
    assert lo == 0.0 and hi == pytest.approx(mean + 1.959964 * sd, rel=1e-6)


def test_a_zero_width_interval_prints_as_not_available() -> None:
    assert fmt_interval(0.0, 0.0, 0.0) == "0.000 [n/a]"
    assert fmt_interval(0.7, 0.6, 0.8) == "0.700 [0.600, 0.800]"
    assert fmt_interval(0.7, float("nan"), float("nan")) == "0.700"


def test_a_collapse_impact_off_zero_but_not_significant_after_holm_says_so() -> None:
    """The diagnosis quotes the ablation cell's own interval; when Holm leaves it not significant although
    that interval excludes 0, the sentence says why instead of contradicting its numbers."""
    from mmoe_inspect.analysis.review import _collapse_impact

    tables = {
        "gate_metrics": pd.DataFrame([{"gate": "g_click", "task": "click", "top_expert": "e1"}]),
        "tasks": pd.DataFrame([{"task": "click", "kind": "binary", "at_chance": False}]),
    }
    cell = {"mode": "renormalize", "task": "click", "expert": "e1", "metric": "auc", "importance": 0.03}
    abl = pd.DataFrame([{**cell, "lo": 0.01, "hi": 0.05, "significant": False}])
    text, _ = _collapse_impact(tables, SimpleNamespace(ablation=abl), "g_click")
    assert "not significant once adjusted for the ablation table's many cells" in text, text
    abl = pd.DataFrame([{**cell, "lo": -0.01, "hi": 0.07, "significant": False}])
    text, _ = _collapse_impact(tables, SimpleNamespace(ablation=abl), "g_click")
    assert text.endswith(
        "not significant: the interval is too wide to tell whether the collapse costs quality"
    )


def test_the_demos_sparse_task_claim_is_not_shown_on_three_positives() -> None:
    """`mmoe-inspect demo`'s "MMoE helps the sparse task" claim rests on the same paired AUC difference:
    on 3 positives it is "not shown" however its interval lies; on 2,000 the same gap is "supported"."""
    from mmoe_inspect.demo import SINGLE_TASK, compare_models

    for n_pos, status in ((3, "not shown"), (2000, "supported")):
        labels, preds = planted_gap(n_pos, max(47, n_pos))
        mmoe, single = preds[("baseline", "single")][:, 0], preds[INTACT][:, 0]  # mmoe ranks buy well
        frame = pd.DataFrame({"purchase": labels[:, 0]})
        tasks = [TaskSpec("purchase", kind="binary")]
        out = compare_models({"mmoe": {"purchase": mmoe}, SINGLE_TASK: {"purchase": single}}, frame, tasks)
        (claim,) = out.claims
        assert claim.status == status, claim
        assert ("cannot tell" in claim.sentence) == (n_pos == 3), claim.sentence
        if n_pos == 3:
            assert "[+" in claim.sentence  # the interval alone lies above 0


def test_a_streamed_loss_interval_never_goes_below_zero_either() -> None:
    """The every-row path (`StreamedEvaluation`) clips the same interval the same way."""
    from mmoe_inspect.causal.streamed import EvaluationStream

    y = np.r_[1.0, np.zeros(49)]
    p = np.r_[1e-4, np.full(49, 0.01)]
    with EvaluationStream(BUY, {INTACT: 0}) as stream:
        stream.update(y[:, None], p[None, :, None])
        ev = stream.finish()
    lo, hi = ev.interval(INTACT, "buy", "logloss")
    in_memory = Evaluation(y[:, None], BUY, {INTACT: p[:, None]}).interval(INTACT, "buy", "logloss")
    assert lo == 0.0 and hi == pytest.approx(in_memory[1], rel=1e-12)


def test_an_auc_of_080_on_five_positives_ranks_and_is_never_at_chance() -> None:
    """5 positives among 1,995 negatives, 4 scored highest and 1 lowest: AUC 0.80. DeLong's interval on 5
    rows holds 0.5 (about [0.41, 1.0]) but Mann-Whitney tells 0.80 from 0.5 (|0.30| > 1.96 x 0.129): the task
    ranks. It was called "at chance" (critical task_at_chance)."""
    n_pos, n_neg = 5, 1995
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    score = np.r_[[0.99, 0.98, 0.97, 0.96, 0.0001], np.linspace(0.01, 0.9, n_neg)]
    ev = Evaluation(y[:, None], BUY, {INTACT: score[:, None], ("baseline", "single"): score[:, None]})
    row = baseline_gain_table(ev, ["single"]).set_index("metric").loc["auc"]
    lo, hi = ev.interval(("baseline", "single"), "buy", "auc")
    assert abs(row["baseline_value"] - 0.8) < 0.001 and lo < 0.5 < hi  # the interval alone would hold 0.5
    assert auc_verdict(row["baseline_value"], lo, hi, n_pos, n_neg) == (False, False)
    assert (row["baseline_at_chance"], row["baseline_too_few"]) == (False, False)


@pytest.mark.parametrize(
    ("auc", "lo", "hi", "expected"),
    [
        (0.80, 0.41, 1.00, (False, False)),  # Mann-Whitney rejects 0.5: ranks
        (0.20, 0.00, 0.59, (False, False)),  # rejects, the other way round: ranks inverted, not at chance
        (0.60, 0.30, 0.90, (False, True)),  # not rejected, the interval reaches far above 0.5: too few
        (
            0.52,
            0.46,
            0.58,
            (False, True),
        ),  # not rejected, a narrow interval on 5 rows is no evidence: too few
        (0.55, 0.52, 0.58, (False, True)),  # not rejected, the interval misses 0.5: too few to say it ranks
    ],
)
def test_under_ten_positives_mann_whitney_decides_ranks_or_too_few(auc, lo, hi, expected) -> None:
    """Fewer than 10 rows of a class (5 of 2,000; Mann-Whitney's 95% bound is 0.5 ± 0.253): never "at chance"
    from DeLong's interval on 5 rows (only a constant output is, on any rows)."""
    assert auc_verdict(auc, lo, hi, 5, 1995) == expected


def _brute_p(u: float, m: int, n: int) -> float:
    """Two-sided exact Mann-Whitney p of U by enumerating every placement of m positives among m + n rows."""
    from itertools import combinations

    us = [sum(r - i for i, r in enumerate(c)) for c in combinations(range(m + n), m)]
    lower = sum(x <= u for x in us) / len(us)
    upper = sum(x >= u for x in us) / len(us)
    return min(1.0, 2.0 * min(lower, upper))


@pytest.mark.parametrize(("m", "n"), [(3, 3), (2, 7), (4, 6), (5, 9), (3, 12)])
def test_the_small_sample_p_is_the_exact_mann_whitney_p(m, n) -> None:
    """The exact null distribution, not the normal approximation: 3 v 3 perfect separation has p = 0.1 (the
    normal approximation said < 0.05 and called it "ranks")."""
    for u in range(m * n + 1):
        assert small_sample_auc_p(u / (m * n), m, n) == pytest.approx(_brute_p(u, m, n), abs=1e-12), u


def test_three_v_three_perfect_separation_is_too_few_either_way() -> None:
    assert small_sample_auc_p(1.0, 3, 3) == pytest.approx(0.1)
    assert auc_verdict(1.0, 1.0, 1.0, 3, 3) == (False, True)
    assert auc_verdict(0.0, 0.0, 0.0, 3, 3) == (False, True)
    assert not auc_inverted(0.0, 0.0, 3, 3)


def test_an_auc_of_020_on_five_positives_ranks_inverted() -> None:
    """5 positives of 2,000 at AUC 0.2: Mann-Whitney p = 0.017 (scipy's exact value); DeLong's interval on 5 rows
    reaches above 0.5, yet the task is ranked in reverse (it got no finding at all)."""
    assert small_sample_auc_p(0.2, 5, 1995) == pytest.approx(0.016876, abs=1e-5)
    assert auc_inverted(0.2, 0.545, 5, 1995) and not auc_inverted(0.35, 0.7, 5, 1995)
    assert not auc_inverted(0.8, 1.0, 5, 1995)
