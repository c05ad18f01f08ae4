""" "Does every task work?" on broken tasks: a regression task that predicts no better than its label mean (a
constant output among them), a task that cannot be judged (no labelled rows, labels of one class) and a
baseline that does not work are never answered "Yes"; `check` does not pass them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import mmoe_inspect as mi
from mmoe_inspect.causal import Baseline, CausalOptions
from mmoe_inspect.checkpoint import save_checkpoint

FEATURES = [f"x{i}" for i in range(6)]


class ClickAndDwell(nn.Module):
    """A binary task (click, from x0) and a regression task (dwell, from x1); `dwell_scale` 0 makes the
    dwell output the constant `dwell_bias` (a zeroed output layer), and `click_scale` 0 makes click's
    output the constant 0.5; `click_noise` mixes the unrelated x2 into click's score (a weaker ranker)."""

    def __init__(
        self,
        dwell_scale: float = 2.0,
        dwell_bias: float = 3.0,
        click_scale: float = 3.0,
        click_noise: float = 0.0,
    ) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([click_scale, dwell_scale]))
        self.b = nn.Parameter(torch.tensor([0.0, dwell_bias]))
        self.noise = click_noise

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = x[:, :2] * self.w + self.b
        click = z[:, 0] + self.noise * self.w[0] * x[:, 2]
        return {"click": torch.sigmoid(click), "dwell": z[:, 1]}


def frame(rows: int = 3000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    f = pd.DataFrame(rng.normal(size=(rows, len(FEATURES))).astype("float32"), columns=FEATURES)
    f["click"] = (f["x0"] + rng.normal(scale=0.5, size=rows) > 0).astype("float64")
    f["dwell"] = 3.0 + 2.0 * f["x1"] + rng.normal(scale=0.3, size=rows)  # label variance ~4.1
    return f


def _inputs(f: pd.DataFrame) -> torch.Tensor:
    return torch.tensor(f[FEATURES].to_numpy())


def inspect(model: nn.Module, data: pd.DataFrame, **kw) -> mi.InspectionResult:
    return mi.inspect(model, data, input_fn=_inputs, columns=FEATURES, **kw)


def _answer(result: mi.InspectionResult, key: str):
    return next(a for a in result.review.answers if a.key == key)


def test_constant_regression_output_is_no_better_than_the_label_mean() -> None:
    data = frame()
    result = inspect(ClickAndDwell(dwell_scale=0.0), data)
    row = result.tables["tasks"].set_index("task").loc["dwell"]
    var = float(np.var(data["dwell"]))
    assert abs(row["label_var"] - var) < 1e-9 * var  # the labels' population variance, streamed
    assert row["mse"] > row["label_var"] and row["r2"] < 0 and row["beats_label_mean"] is False
    found = [f for f in result.findings if f.code == "task_no_better_than_mean"]
    assert [(f.subject, f.severity) for f in found] == [("dwell", "critical")]
    assert "constant" in found[0].message  # a zeroed output layer is named as such
    answer = _answer(result, "tasks")
    assert answer.status == "problem"
    assert answer.answer == "No: dwell is no better than predicting the label mean (R² <= 0).", answer.answer
    assert any("CONSTANT" in line and "dwell" in line for line in answer.evidence)
    # the routing answer is not about task quality: no "unhealthy routing" from it
    assert not any(
        f.code == "task_no_better_than_mean" for f in mi.analysis.findings.routing_findings(result.findings)
    )


def test_a_working_regression_task_beats_its_label_mean() -> None:
    result = inspect(ClickAndDwell(), frame())
    row = result.tables["tasks"].set_index("task").loc["dwell"]
    assert row["r2"] > 0.9 and row["beats_label_mean"] is True
    assert not any(f.code == "task_no_better_than_mean" for f in result.findings)
    answer = _answer(result, "tasks")
    assert answer.answer == "Yes: every labelled task ranks rows above chance and beats its label mean."
    assert answer.status == "ok"


def test_a_task_that_cannot_be_judged_is_never_a_yes() -> None:
    data = frame()
    data["click"] = 0.0  # the sparse task without a positive in this sample
    result = inspect(ClickAndDwell(), data)
    found = {(f.code, f.subject, f.severity) for f in result.findings}
    assert ("single_class_labels", "click", "warning") in found
    answer = _answer(result, "tasks")
    assert answer.status == "unknown" and not answer.answer.startswith("Yes"), answer.answer
    assert "click cannot be judged" in answer.answer
    # a label column that is NaN on every row: the task is not judged either
    data = frame()
    data["dwell"] = np.nan
    result = inspect(ClickAndDwell(), data)
    assert ("task_unlabelled", "dwell", "warning") in {
        (f.code, f.subject, f.severity) for f in result.findings
    }
    assert "dwell cannot be judged" in _answer(result, "tasks").answer


@pytest.mark.parametrize("value", [3.7, 0.1, 2.0, -1e6])  # (all 0: 0/1 labels, read as binary logits)
def test_regression_labels_that_never_vary_are_named_and_not_judged(value: float) -> None:
    data = frame(2999)
    data["dwell"] = value  # Σy²/n - (Σy/n)² leaves ±1e-14 of rounding for most values: still constant
    result = inspect(ClickAndDwell(), data)
    row = result.tables["tasks"].set_index("task").loc["dwell"]
    assert row["label_var"] == 0.0 and np.isnan(row["r2"]) and pd.isna(row["beats_label_mean"])
    found = {(f.code, f.subject, f.severity): f for f in result.findings}
    assert ("single_class_labels", "dwell", "warning") in found
    assert f"same label ({value:.6g})" in found[("single_class_labels", "dwell", "warning")].message
    assert not any(f.code == "task_no_better_than_mean" for f in result.findings)  # no false critical
    answer = _answer(result, "tasks")
    assert answer.status == "unknown" and "dwell cannot be judged" in answer.answer, answer.answer


def test_a_label_column_spelt_in_another_case_is_named_with_the_fix(tmp_path) -> None:
    from mmoe_inspect.cli.main import app

    data = frame(2000).rename(columns={"click": "Click"})
    result = inspect(ClickAndDwell(), data)
    f = next(f for f in result.findings if f.code == "task_unlabelled")
    assert f.subject == "click" and "the data has 'Click'" in f.message
    assert f.remedy == "Pass the label column (--labels click=Click)."
    assert result.tables["tasks"].set_index("task")["label_hint"].dropna().to_dict() == {"click": "Click"}
    # without a close column, no hint (and no `label_hint` column: nothing to say)
    result = inspect(ClickAndDwell(), frame(2000).rename(columns={"click": "zzz"}))
    f = next(f for f in result.findings if f.code == "task_unlabelled")
    assert "the data has" not in f.message and "label_hint" not in result.tables["tasks"]
    # a feature column or another task's label column is never offered as the label
    data2 = frame(2000).rename(columns={"click": "clicks"})
    result = mi.inspect(ClickAndDwell(), data2, input_fn=_inputs, columns=[*FEATURES, "clicks"])
    f = next(f for f in result.findings if f.code == "task_unlabelled")
    assert "the data has" not in f.message and "clicks" not in f.remedy
    # the CLI's check says it first and fails
    torch.manual_seed(0)
    from mmoe_inspect.models import MMoE
    from mmoe_inspect.topology.spec import TaskSpec

    model = MMoE(6, [TaskSpec("click", "binary"), TaskSpec("dwell", "regression")], n_experts=3).eval()
    data.to_parquet(tmp_path / "eval.parquet")
    ckpt = save_checkpoint(tmp_path / "m.pt", model)
    res = CliRunner().invoke(app, ["check", str(ckpt), "--data", str(tmp_path / "eval.parquet")])
    assert res.exit_code != 0 and "--labels click=Click" in res.output, res.output


def test_check_does_not_pass_a_constant_regression_task(tmp_path) -> None:
    from mmoe_inspect.cli.main import app
    from mmoe_inspect.models import MMoE
    from mmoe_inspect.topology.spec import TaskSpec

    torch.manual_seed(0)
    model = MMoE(6, [TaskSpec("click", "binary"), TaskSpec("dwell", "regression")], n_experts=3).eval()
    with torch.no_grad():  # the dwell tower's output layer zeroed: its output is the constant bias
        last = [m for m in model.towers[1].modules() if isinstance(m, nn.Linear)][-1]
        last.weight.zero_()
        last.bias.fill_(3.0)
    data = frame(2000)
    data.to_parquet(tmp_path / "eval.parquet")
    ckpt = save_checkpoint(tmp_path / "m.pt", model)
    res = CliRunner().invoke(app, ["check", str(ckpt), "--data", str(tmp_path / "eval.parquet")])
    assert res.exit_code == 1, res.output
    assert "task_no_better_than_mean" in res.output and "dwell" in res.output


def test_a_gain_over_a_baseline_at_chance_is_not_a_yes() -> None:
    data = frame()
    broken = ClickAndDwell(click_scale=0.0, dwell_scale=0.0)  # click constant 0.5: AUC exactly 0.5
    opts = CausalOptions(baselines={"single": Baseline(broken, input_fn=_inputs, tasks=["click"])}, n_boot=0)
    result = inspect(ClickAndDwell(), data, causal=opts)
    gains = result.causal.baseline_gains
    auc = gains[(gains["metric"] == "auc") & (gains["task"] == "click")].iloc[0]
    assert auc["baseline_value"] == 0.5 and auc["significant"] and auc["gain"] > 0.2  # planted
    answer = _answer(result, "gains")
    assert not answer.answer.startswith("Yes"), answer.answer
    assert answer.answer.startswith("Cannot tell: every baseline is at chance") and answer.status == "unknown"
    assert any("the baseline itself is at chance" in line for line in answer.evidence)
    # a working baseline that is measurably worse: the gain is a "Yes"
    weak = ClickAndDwell(click_noise=1.0)
    opts = CausalOptions(baselines={"single": Baseline(weak, input_fn=_inputs, tasks=["click"])}, n_boot=0)
    answer = _answer(inspect(ClickAndDwell(), data, causal=opts), "gains")
    assert answer.answer.startswith("Yes: a significant gain on click vs single"), answer.answer


def test_a_collapse_whose_impact_interval_is_wide_keeps_its_severity() -> None:
    """ "Not significant" is not "small": a collapse is downgraded to a warning only when the whole interval
    of its measured impact is small; a wide interval (few rows, few positives) leaves it critical."""
    from types import SimpleNamespace

    from mmoe_inspect.analysis import codes
    from mmoe_inspect.analysis.findings import Finding
    from mmoe_inspect.analysis.review import rescale_by_impact

    collapsed = Finding.of(codes.COLLAPSED_GATE, "g", "collapsed", "fix", {})

    def severity(lo: float, hi: float, task: str | None = "click") -> tuple[str, str]:
        tables = {
            "gate_metrics": pd.DataFrame([{"gate": "g", "task": task, "top_expert": "e1"}]),
            "tasks": pd.DataFrame([{"task": "click", "kind": "binary", "at_chance": False}]),
        }
        abl = pd.DataFrame(
            [
                {
                    "task": "click",
                    "expert": "e1",
                    "mode": "renormalize",
                    "metric": "auc",
                    "importance": (lo + hi) / 2,
                    "lo": lo,
                    "hi": hi,
                    "significant": lo > 0 or hi < 0,
                }
            ]
        )
        (f,) = rescale_by_impact([collapsed], tables, SimpleNamespace(ablation=abl))
        return f.severity, f.evidence["impact"]

    sev, impact = severity(-0.135, 0.044)  # not significant, but as wide as 0.18 AUC
    assert sev == "critical" and "too wide to tell" in impact and "small" not in impact
    sev, impact = severity(-0.002, 0.003)  # measured: within ±0.005 AUC either way
    assert sev == "warning" and "measured impact small" in impact
    # the task needs the expert its gate collapsed onto (significant, narrow): not "too wide to tell"
    sev, impact = severity(0.008, 0.032)
    assert sev == "critical" and "too wide" not in impact and "the task depends on that expert" in impact
    # a gate with no task of its own: not "run report with labelled data"
    sev, impact = severity(0.008, 0.032, task=None)
    assert "this gate has no task of its own" in impact and "labelled data" not in impact


def test_an_all_zero_expert_that_gates_weight_is_not_called_harmless() -> None:
    """An expert whose outputs are zero but which a gate gives a third of its weight shrinks that task's
    mixture by a third: the finding must not say it "contributes little"."""
    from mmoe_inspect.analysis.findings import diagnose

    def inactive_message(weight: float) -> str:
        experts = pd.DataFrame(
            [
                {
                    "expert": "e2",
                    "owner": "shared",
                    "n_gates": 2,
                    "zero_fraction": 1.0,
                    "max_mean_weight": weight,
                    "max_relative_weight": weight * 4,
                    "max_top1_share": 0.3,
                }
            ]
        )
        (f,) = [f for f in diagnose({"experts": experts}) if f.code == "inactive_expert"]
        return f.message

    heavy = inactive_message(0.33)
    assert "33% of its weight" in heavy and "contributes little" not in heavy
    assert "contributes little" in inactive_message(0.03)


def test_no_finding_but_a_better_gate_counterfactual_is_not_nothing_urgent() -> None:
    """A task whose AUC rises significantly with another task's gate is routed worse by its own gate: the
    review's next step says so instead of "Nothing urgent"."""
    from types import SimpleNamespace

    from mmoe_inspect.analysis.review import build_review

    tasks = pd.DataFrame([{"task": "click", "kind": "binary"}, {"task": "purchase", "kind": "binary"}])
    row = {"task": "purchase", "gates": "purchase", "metric": "auc", "intact": 0.64}

    def next_answer(lo: float, hi: float):
        cf = pd.DataFrame(
            [
                {
                    **row,
                    "counterfactual": "gate_of:click",
                    "value": 0.64 + (lo + hi) / 2,
                    "change": (lo + hi) / 2,
                    "lo": lo,
                    "hi": hi,
                    "significant": lo > 0 or hi < 0,
                    "worse": (lo + hi) / 2 < 0,
                }
            ]
        )
        causal = SimpleNamespace(counterfactuals=cf, baseline_gains=None)
        review = build_review({"tasks": tasks}, [], "Routing is healthy.", causal)
        return next(a for a in review.answers if a.key == "next")

    hurt = next_answer(0.026, 0.115)
    assert hurt.status == "unknown" and "Nothing urgent" not in hurt.answer
    assert "purchase gets a better AUC with the gate of click (+0.071 [+0.026, +0.115]" in hurt.answer
    assert next_answer(-0.02, 0.03).answer == "Nothing urgent: no findings."  # within noise


class Esmm(nn.Module):
    """ESMM's outputs: pCTR, and pCTCVR = pCTR x pCVR (a product of two sigmoids, itself a probability)."""

    def __init__(self) -> None:
        super().__init__()
        self.ctr = nn.Linear(len(FEATURES), 1)
        self.cvr = nn.Linear(len(FEATURES), 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ctr = torch.sigmoid(self.ctr(x)).squeeze(1)
        return {"ctr": ctr, "ctcvr": ctr * torch.sigmoid(self.cvr(x)).squeeze(1)}


def test_an_esmm_product_of_probabilities_is_a_binary_task() -> None:
    torch.manual_seed(0)
    data = frame()
    data["ctr"] = data["click"]
    data["ctcvr"] = data["click"] * (data["x2"] > 1.0)
    result = inspect(Esmm().eval(), data)
    kinds = {t.name: t.kind for t in result.topology.tasks}
    assert kinds == {"ctr": "binary", "ctcvr": "binary"}
    assert not any(f.code == "task_no_better_than_mean" for f in result.findings)


def test_log_loss_against_the_base_rate_is_judged_with_a_paired_interval() -> None:
    """The per-row (log loss - base rate's) interval, from streamed sums, equals the one computed on the rows;
    "miscalibrated" needs it above 0 (a difference within noise flipped the verdict between runs)."""
    data = frame(4000)
    overconfident = ClickAndDwell(click_scale=40.0)  # ranks well, probabilities pushed to 0 and 1
    result = inspect(overconfident, data)
    row = result.tables["tasks"].set_index("task").loc["click"]
    with torch.no_grad():
        p = overconfident(_inputs(data))["click"].double().clamp(1e-7, 1 - 1e-7).numpy()
    y = data["click"].to_numpy()
    rate = y.mean()
    d = -(y * np.log(p) + (1 - y) * np.log1p(-p)) + (y * np.log(rate) + (1 - y) * np.log1p(-rate))
    se = d.std(ddof=1) / np.sqrt(len(d))
    assert abs(row["logloss_vs_base_lo"] - (d.mean() - 1.959964 * se)) < 1e-9
    assert abs(row["logloss_vs_base_hi"] - (d.mean() + 1.959964 * se)) < 1e-9
    assert row["logloss_vs_base_lo"] > 0 and row["worse_than_base_rate"] is True  # planted: worse
    assert any(f.code == "task_worse_than_base_rate" for f in result.findings)
    good = inspect(ClickAndDwell(), data).tables["tasks"].set_index("task").loc["click"]
    assert good["logloss_vs_base_hi"] < 0 and good["worse_than_base_rate"] is False


def test_the_streamed_delong_interval_is_delongs_on_the_rows() -> None:
    from mmoe_inspect.functional.delong import delong_interval
    from mmoe_inspect.stats.outputs import TaskOutputStats

    rng = np.random.default_rng(3)
    y = (rng.random(4000) < 0.05).astype("float64")
    p = np.round(1 / (1 + np.exp(-(rng.normal(size=4000) + 1.2 * y))), 3)  # ties on purpose
    stats = TaskOutputStats(["binary"])
    for part in np.array_split(np.arange(4000), 7):  # batching does not matter
        stats.update(torch.tensor(p[part])[:, None], torch.tensor(y[part])[:, None])
    s = stats.compute()
    auc, lo, hi = delong_interval(p, y)
    se = float(s.auc_se[0])
    assert abs(float(s.auc[0]) - auc) < 1e-12
    assert abs(auc - 1.959964 * se - lo) < 1e-9 and abs(auc + 1.959964 * se - hi) < 1e-9


def _mlp_click(frame_: pd.DataFrame, rows: list[int]) -> mi.InspectionResult:
    return inspect(ClickAndDwell(), frame_.iloc[rows].reset_index(drop=True))


def test_one_positive_scored_lowest_is_not_ranked_in_reverse() -> None:
    data = frame(20_000)
    data["click"] = 0.0
    # 49 negatives and one positive whose score is the lowest of all: AUC 0 on one row
    order = np.argsort(data["x0"].to_numpy())
    data.loc[order[0], "click"] = 1.0
    rows = [int(order[0]), *map(int, order[1000:1049])]
    result = _mlp_click(data, rows)
    row = result.tables["tasks"].set_index("task").loc["click"]
    assert row["auc"] == 0.0 and bool(row["too_few_labels"])
    codes_ = {(f.code, f.subject) for f in result.findings}
    assert ("task_ranks_inverted", "click") not in codes_ and ("task_at_chance", "click") not in codes_
    assert ("too_few_labels", "click") in codes_
    answer = _answer(result, "tasks")
    assert answer.status == "unknown" and "click cannot be judged" in answer.answer, answer.answer


def test_few_positives_are_not_at_chance_and_many_are() -> None:
    # a weak ranker (AUC ~0.6) on 3 positives: the interval holds 0.5 but is far too wide for "at chance"
    data = frame(400, seed=5)
    data["click"] = 0.0
    pos = data.sort_values("x0").index[[-1, -150, -300]]
    data.loc[pos, "click"] = 1.0
    result = inspect(ClickAndDwell(), data)
    assert ("too_few_labels", "click") in {(f.code, f.subject) for f in result.findings}
    assert not any(f.code == "task_at_chance" for f in result.findings)
    # a coin on many rows: the interval holds 0.5 and is narrow: at chance (critical)
    data = frame(20_000, seed=6)
    data["click"] = (np.random.default_rng(6).random(20_000) < 0.3).astype("float64")
    result = inspect(ClickAndDwell(), data)
    found = {(f.code, f.subject, f.severity) for f in result.findings}
    assert ("task_at_chance", "click", "critical") in found
    assert not any(f.code == "too_few_labels" for f in result.findings)


def test_a_regression_task_on_few_rows_is_not_called_no_better_than_the_mean() -> None:
    # a weak regressor (population R² ~0.05) on 60 rows: R² may come out <= 0, its interval reaches well above
    class Weak(ClickAndDwell):
        def forward(self, x):
            out = super().forward(x)
            out["dwell"] = 3.0 + 0.45 * x[:, 1]
            return out

    rng = np.random.default_rng(11)
    r2s = []
    for seed in range(6):
        data = frame(60, seed=100 + seed)
        data["dwell"] = 3.0 + 2.0 * data["x1"] + rng.normal(scale=8.0, size=60)
        result = inspect(Weak(), data)
        row = result.tables["tasks"].set_index("task").loc["dwell"]
        assert row["r2_lo"] < row["r2"] < row["r2_hi"]
        assert not any(f.code == "task_no_better_than_mean" for f in result.findings), row["r2"]
        r2s.append(row["r2"])
    assert min(r2s) <= 0  # some draws come out at or below the mean: judged on R² alone, they were critical
    # the streamed paired interval is the CLT interval of the per-row differences
    data = frame(3000)
    result = inspect(Weak(), data)
    row = result.tables["tasks"].set_index("task").loc["dwell"]
    y = data["dwell"].to_numpy()
    yhat = 3.0 + 0.45 * data["x1"].to_numpy(dtype="float32").astype("float64")
    d = (y - yhat) ** 2 - (y - y.mean()) ** 2
    half = 1.959964 * d.std(ddof=1) / np.sqrt(len(d)) / y.var()
    assert abs((row["r2_hi"] - row["r2_lo"]) / 2 - half) < 1e-6 * half


def _task_codes(preds: np.ndarray, labels: np.ndarray, kind: str = "binary") -> set[str]:
    from mmoe_inspect.analysis.findings import diagnose
    from mmoe_inspect.analysis.tables import task_table
    from mmoe_inspect.stats.outputs import TaskOutputStats
    from mmoe_inspect.topology.spec import ExpertSpec, TaskSpec, Topology

    stats = TaskOutputStats([kind])
    stats.update(
        torch.tensor(preds, dtype=torch.float64)[:, None], torch.tensor(labels, dtype=torch.float64)[:, None]
    )
    topo = Topology((TaskSpec("t", kind),), (ExpertSpec("e", "m"),), ())
    return {f.code for f in diagnose({"tasks": task_table(topo, stats.compute())})}


def test_a_handful_of_positives_still_gives_clear_verdicts() -> None:
    """Few rows of a class are judged by the AUC's null distribution, not refused: 9 positives all below
    4,991 negatives rank in reverse, all above work, a constant output is at chance; one positive scored
    lowest among 49 negatives is within chance (too few to judge)."""
    rng = np.random.default_rng(0)
    y = np.zeros(5000)
    y[:9] = 1
    p = rng.uniform(0.1, 0.9, 5000)
    assert "task_ranks_inverted" in _task_codes(np.where(y == 1, 0.01, p), y)
    assert not _task_codes(np.where(y == 1, 0.99, p), y) & {"too_few_labels", "task_at_chance"}
    assert "task_at_chance" in _task_codes(np.full(5000, 0.3), y)  # every prediction tied: ranks nothing
    y50 = np.zeros(50)
    y50[0] = 1
    codes_ = _task_codes(np.where(y50 == 1, 0.01, rng.uniform(0.1, 0.9, 50)), y50)
    assert "too_few_labels" in codes_ and "task_ranks_inverted" not in codes_
    # exactly 10 negatives is not "fewer than 10" (n · rate is 9.999... in floating point)
    y10 = np.r_[np.ones(40), np.zeros(10)]
    assert "too_few_labels" not in _task_codes(np.r_[np.full(40, 0.9), np.full(10, 0.1)] + 0, y10)
    # a regression output far from every label on 25 rows: clearly no better than the mean
    yr = rng.normal(0, 1, 25)
    assert "task_no_better_than_mean" in _task_codes(np.full(25, 10.0), yr, "regression")


def test_labels_whose_mean_dwarfs_their_spread_get_no_made_up_interval() -> None:
    """The paired R² interval is built from raw sums of size ȳ⁴: for labels around 1e4 with a spread of 1
    float64 cannot hold it, so no interval (NaN) and the verdict reads the point estimate."""
    from mmoe_inspect.analysis.tables import task_table
    from mmoe_inspect.stats.outputs import TaskOutputStats
    from mmoe_inspect.topology.spec import ExpertSpec, TaskSpec, Topology

    rng = np.random.default_rng(2)
    for mean, finite in ((0.0, True), (1e4, False)):
        x = rng.normal(size=5000)
        y = mean + x + rng.normal(scale=0.5, size=5000)
        stats = TaskOutputStats(["regression"])
        stats.update(torch.tensor(mean + x)[:, None], torch.tensor(y)[:, None])
        topo = Topology((TaskSpec("t", "regression"),), (ExpertSpec("e", "m"),), ())
        row = task_table(topo, stats.compute()).iloc[0]
        assert bool(np.isfinite(row["r2_lo"])) == finite and row["r2"] > 0.7 and bool(row["beats_label_mean"])
