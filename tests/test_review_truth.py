"""The review's sentences on models other than a two-task MMoE say what the numbers say (a second
truthfulness review, session 12; the collapse-impact wording is in test_task_quality.py): a pair of
identical gates among tasks that route apart, one far pair among several, a one-gate MoE, a measured loss
against a single-task baseline, a Shared-Bottom's baseline hint, and regression outputs' [0, 1] range."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import mmoe_inspect as mi
from mmoe_inspect.analysis import codes
from mmoe_inspect.analysis.findings import Finding, diagnose
from mmoe_inspect.analysis.review import build_review
from mmoe_inspect.analysis.verdict import verdict
from mmoe_inspect.models import CGC, MMoE, OMoE
from mmoe_inspect.topology.spec import ExpertSpec, GateSpec, TaskSpec, Topology


def _pairs(tvs: dict[tuple[str, str], float]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"task_a": a, "task_b": b, "gate_a": a, "gate_b": b, "level": 0, "tv_per_row": tv}
            | {"jsd_per_row": tv / 2, "jsd_mean_gates": tv / 4}
            for (a, b), tv in tvs.items()
        ]
    )


def test_one_identical_pair_among_tasks_that_route_apart_is_not_a_one_gate_moe() -> None:
    div = _pairs({("click", "like"): 0.0, ("click", "buy"): 0.35, ("like", "buy"): 0.35})
    (f,) = [f for f in diagnose({"task_divergence": div}) if f.code == "tasks_route_identically"]
    assert "for these two tasks the MMoE is behaving as a one-gate MoE" in f.message and "0.350" in f.message
    div = _pairs({("click", "like"): 0.0})
    (f,) = [f for f in diagnose({"task_divergence": div}) if f.code == "tasks_route_identically"]
    assert f.message.endswith("and the MMoE is behaving as a one-gate MoE.")


def _mmoe_topology(tasks: list[str], shared_gate: bool = False) -> Topology:
    experts = tuple(ExpertSpec(f"e{i}", f"experts.{i}") for i in range(3))
    names = tuple(e.name for e in experts)
    gates = (
        (GateSpec("shared", "gate", names, None),)
        if shared_gate
        else tuple(GateSpec(t, f"gates.{i}", names, t) for i, t in enumerate(tasks))
    )
    return Topology(tuple(TaskSpec(t) for t in tasks), experts, gates)


def test_one_far_pair_among_several_is_partly_not_yes() -> None:
    topo = _mmoe_topology(["a", "b", "c"])
    mi_table = pd.DataFrame([{"level": 0, "normalized": 0.05}])
    div = _pairs({("a", "b"): 0.55, ("a", "c"): 0.3, ("b", "c"): 0.32})
    text = verdict(topo, {"mutual_information": mi_table, "task_divergence": div}, [])
    assert text.startswith("Partly: 1 of 3 task pairs route rows to clearly different experts (a ~ b)"), text
    div = _pairs({("a", "b"): 0.55, ("a", "c"): 0.6, ("b", "c"): 0.52})
    text = verdict(topo, {"mutual_information": mi_table, "task_divergence": div}, [])
    assert text.startswith("Yes: the tasks route rows to clearly different experts"), text


def test_a_one_gate_moe_is_told_it_cannot_route_tasks_differently() -> None:
    torch.manual_seed(0)
    model = OMoE(4, [TaskSpec("click"), TaskSpec("buy")], n_experts=3).eval()
    rng = np.random.default_rng(0)
    data = pd.DataFrame(rng.normal(size=(600, 4)).astype("float32"), columns=[f"x{i}" for i in range(4)])
    data["click"] = (rng.random(600) < 0.3).astype(float)
    data["buy"] = (rng.random(600) < 0.3).astype(float)
    result = mi.inspect(model, data)
    routing = next(a for a in result.review.answers if a.key == "routing")
    assert routing.answer.startswith("No, by design: one gate per level serves every task"), routing.answer
    assert routing.status == "unknown"


def test_a_significant_loss_against_a_single_task_model_comes_first_in_next_steps() -> None:
    tasks = pd.DataFrame([{"task": "buy", "kind": "binary", "positive_rate": 0.03}])
    gains = pd.DataFrame(
        [
            {
                "task": "buy",
                "baseline": "single",
                "metric": "auc",
                "gain": -0.33,
                "lo": -0.36,
                "hi": -0.30,
                "significant": True,
                "sparse": True,
                "baseline_value": 0.92,
            }
        ]
    )
    warn = Finding.of(codes.TASK_WORSE_THAN_BASE_RATE, "buy", "miscalibrated", "Recalibrate.", {})
    review = build_review({"tasks": tasks}, [warn], "Partly: ...", SimpleNamespace(baseline_gains=gains))
    nxt = next(a for a in review.answers if a.key == "next")
    assert nxt.answer.startswith(
        "Negative transfer: the multi-task model is significantly worse than a single-task model on buy vs single"
    ), nxt.answer
    assert nxt.status == "problem" and "Recalibrate" not in nxt.answer
    # a loss against a multi-task baseline (a Shared-Bottom predicting both tasks) weighs architectures: the
    # next step stays the warning's
    sb = pd.concat([gains.assign(baseline="sb"), gains.assign(baseline="sb", task="click", sparse=False)])
    tasks2 = pd.concat([tasks, pd.DataFrame([{"task": "click", "kind": "binary", "positive_rate": 0.3}])])
    review = build_review({"tasks": tasks2}, [warn], "Partly: ...", SimpleNamespace(baseline_gains=sb))
    nxt = next(a for a in review.answers if a.key == "next")
    assert not nxt.answer.startswith("Negative transfer"), nxt.answer


def test_a_shared_bottom_is_not_told_to_compare_with_a_shared_bottom() -> None:
    review = build_review({"tasks": pd.DataFrame()}, [], "No gates found: this is a Shared-Bottom ...", None)
    gains = next(a for a in review.answers if a.key == "gains")
    assert "single=" in gains.answer and "SHARED_BOTTOM" not in gains.answer
    review = build_review({"tasks": pd.DataFrame()}, [], "Yes: ...", None)
    assert "SHARED_BOTTOM" in next(a for a in review.answers if a.key == "gains").answer


def test_regression_outputs_have_no_share_outside_0_1() -> None:
    torch.manual_seed(0)
    model = MMoE(4, [TaskSpec("click"), TaskSpec("dwell", "regression")], n_experts=3).eval()
    rng = np.random.default_rng(1)
    data = pd.DataFrame(rng.normal(size=(400, 4)).astype("float32"), columns=[f"x{i}" for i in range(4)])
    data["click"] = (rng.random(400) < 0.3).astype(float)
    data["dwell"] = rng.normal(5, 2, size=400)
    row = mi.inspect(model, data).tables["tasks"].set_index("task")["predictions_outside_0_1"]
    assert row["click"] == 0.0 and math.isnan(row["dwell"])


def test_every_task_at_chance_points_at_the_labels_and_names_each_rate() -> None:
    rates = {"buy": 0.028, "click": 0.246, "like": 0.42}
    tasks = pd.DataFrame([{"task": t, "kind": "binary", "positive_rate": r} for t, r in rates.items()])
    chance = [Finding.of(codes.TASK_AT_CHANCE, t, f"Task {t} at chance.", "fix", {}) for t in rates]
    (story,) = [
        d for d in build_review({"tasks": tasks}, chance, "Partly: ...").diagnoses if "chance" in d.title
    ]
    assert story.causes[0].startswith("labels out of line with the rows")
    assert "buy 2.8%, click 24.6%, like 42.0% (too few for buy)" in story.causes[1]
    # one of two tasks at chance: its own rate, training causes first
    (story,) = [
        d for d in build_review({"tasks": tasks}, chance[2:], "Partly: ...").diagnoses if "chance" in d.title
    ]
    assert story.causes[0].startswith("learning rate") and "42.0%" in story.causes[1]


def test_summary_marks_a_task_it_cannot_judge(tmp_path) -> None:
    from typer.testing import CliRunner

    from mmoe_inspect.checkpoint import save_checkpoint
    from mmoe_inspect.cli.main import app

    torch.manual_seed(0)
    model = MMoE(4, [TaskSpec("click"), TaskSpec("buy")], n_experts=3).eval()
    rng = np.random.default_rng(3)
    data = pd.DataFrame(rng.normal(size=(400, 4)).astype("float32"), columns=[f"x{i}" for i in range(4)])
    data["click"] = (rng.random(400) < 0.3).astype(float)
    data["buy"] = 0.0
    data.loc[:2, "buy"] = 1.0  # 3 positives
    data.to_parquet(tmp_path / "eval.parquet")
    ckpt = save_checkpoint(tmp_path / "m.pt", model)
    res = CliRunner().invoke(app, ["summary", str(ckpt), "--data", str(tmp_path / "eval.parquet")])
    assert res.exit_code == 0, res.output
    table = res.output[res.output.index("Tasks") :]
    assert "NOT" in table[table.index("│ buy") :].split("└")[0], res.output  # (rich wraps the cell)


class _Layer(nn.Module):
    """One MMoE layer (4 experts, a click and a buy gate) that the model runs twice per forward."""

    def __init__(self) -> None:
        super().__init__()
        self.experts = nn.ModuleList([nn.Sequential(nn.Linear(4, 8), nn.ReLU()) for _ in range(4)])
        self.gates = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        ex = torch.stack([m(x) for m in self.experts], 1)  # [B, E, H]
        return [(torch.softmax(g(x), -1).unsqueeze(-1) * ex).sum(1) for g in self.gates]


class _TwoSides(nn.Module):
    """The layer on the user half and on the item half of the features; each task multiplies its two mixtures."""

    def __init__(self) -> None:
        super().__init__()
        self.mmoe = _Layer()
        self.towers = nn.ModuleList([nn.Linear(8, 1) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        hu, hi = self.mmoe(x[:, :4]), self.mmoe(x[:, 4:])
        return {
            n: torch.sigmoid(t(a * b)).squeeze(-1)
            for n, t, a, b in zip(("click", "buy"), self.towers, hu, hi, strict=True)
        }


def test_a_layer_called_twice_compares_gates_of_one_call_and_names_the_call() -> None:
    """Plant: sharp gates, buy's = click's plus noise, so on either call the two tasks weight the experts
    differently but share most (per-row TV ~0.38), while gates of different calls read different inputs
    (user vs item half: TV ~0.72). Only same-call pairs are two tasks' routing; the answer names the call."""
    torch.manual_seed(0)
    model = _TwoSides().eval()
    with torch.no_grad():
        click, buy = model.mmoe.gates
        click.weight.mul_(6)
        buy.weight.copy_(click.weight + 1.5 * torch.randn_like(click.weight))
        buy.bias.copy_(click.bias)
    rng = np.random.default_rng(0)
    cols = [f"f{i}" for i in range(8)]
    data = pd.DataFrame(rng.normal(size=(2000, 8)).astype("float32"), columns=cols)
    data["click"] = (rng.random(2000) < 0.3).astype(float)
    data["buy"] = (rng.random(2000) < 0.3).astype(float)
    result = mi.inspect(model, data, input_fn=lambda c: torch.tensor(c[cols].to_numpy()), columns=cols)
    div = result.tables["task_divergence"]
    assert sorted(zip(div["gate_a"], div["gate_b"], strict=True)) == [("click", "buy"), ("click#1", "buy#1")]
    assert div["tv_per_row"].between(0.2, 0.5).all(), div
    assert len(result.tables["mutual_information"]) == 2  # one row per call
    routing = result.review.answer("routing").answer
    assert routing.startswith("Partly: the tasks share most experts but weight them differently"), routing
    assert "(click#1 ~ buy#1 on the 2nd call)" in routing, routing
    assert "clearly different" not in routing, routing


class _TaskConditioned(nn.Module):
    """ONE gate module for every task, fed the features and a task embedding, called once per task:
    `w_t = softmax(gate([x, emb[t]]))` over 4 shared experts. `experts` says what the gates mix: one stack
    computed once (`shared`), the stack recomputed inside the task loop on the same rows (`recomputed`), or
    the experts run per task on a task-shifted input `x + shift[t]` (`per_task`: outputs of their own)."""

    def __init__(self, experts: str = "shared") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mode = experts
        self.experts = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(4)])
        self.task_emb = nn.Embedding(2, 4)
        self.shift = nn.Parameter(torch.randn(2, 8, generator=torch.Generator().manual_seed(5)))
        self.gate = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
        self.towers = nn.ModuleList([nn.Linear(8, 1) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ex = torch.stack([m(x) for m in self.experts], 1)  # [B, E, H]
        out = {}
        for t, name in enumerate(("click", "buy")):
            if self.mode != "shared":
                xt = x + self.shift[t] if self.mode == "per_task" else x
                ex = torch.stack([m(xt) for m in self.experts], 1)
            w = torch.softmax(self.gate(torch.cat([x, self.task_emb.weight[t].expand(len(x), -1)], 1)), -1)
            out[name] = torch.sigmoid(self.towers[t]((w.unsqueeze(-1) * ex).sum(1))).squeeze(-1)
        return out


def _conditioned(plant: str, experts: str) -> _TaskConditioned:
    """Plant through the task embeddings: far apart (each task routes its own way) or equal (identical)."""
    model = _TaskConditioned(experts).eval()
    with torch.no_grad():
        model.gate[0].weight.mul_(3)
        model.gate[2].weight.mul_(3)
        model.task_emb.weight.copy_(torch.randn(2, 4, generator=torch.Generator().manual_seed(2)) * 3)
        if plant == "identical":
            model.task_emb.weight[1] = model.task_emb.weight[0]
    return model


@pytest.mark.parametrize("experts", ["shared", "recomputed", "per_task"])
def test_one_gate_module_called_per_task_compares_the_tasks(experts: str) -> None:
    """The gate module's two calls are two tasks' gates, each task with one gate (not a layer run twice, which
    gives every task a gate per run): identical task embeddings are `tasks_route_identically`; distinct ones
    get a routing answer, not 'no task gates share one expert set to compare directly'."""
    rng = np.random.default_rng(0)
    cols = [f"f{i}" for i in range(8)]
    data = pd.DataFrame(rng.normal(size=(1500, 8)).astype("float32"), columns=cols)
    data["click"] = (rng.random(1500) < 0.3).astype(float)
    data["buy"] = (rng.random(1500) < 0.3).astype(float)
    found = {}
    for plant in ("identical", "distinct"):
        result = mi.inspect(
            _conditioned(plant, experts),
            data,
            input_fn=lambda c: torch.tensor(c[cols].to_numpy()),
            columns=cols,
        )
        assert [(g.module, g.call, g.task, g.layer_call) for g in result.topology.gates] == [
            ("gate", 0, "click", None),
            ("gate", 1, "buy", None),
        ]
        found[plant] = result
    identical = {f.subject for f in found["identical"].findings if f.code == codes.TASKS_ROUTE_IDENTICALLY}
    assert identical == {"click ~ buy"}, [(f.code, f.subject) for f in found["identical"].findings]
    routing = found["distinct"].review.answer("routing").answer
    assert routing.startswith("Yes: the tasks route rows to clearly different experts"), routing
    div = found["distinct"].tables["task_divergence"]
    assert list(zip(div["gate_a"], div["gate_b"], strict=True)) == [("click", "buy")]
    assert len(found["distinct"].tables["mutual_information"]) == 1


class _PerTaskExpertInput(nn.Module):
    """A gate module per task; the shared experts run once per task on that task's input `x + shift[t]`."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shift = nn.Parameter(torch.randn(2, 8))
        self.experts = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(4)])
        self.gates = nn.ModuleList([nn.Linear(8, 4) for _ in range(2)])
        self.towers = nn.ModuleList([nn.Linear(8, 1) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for t, name in enumerate(("click", "buy")):
            ex = torch.stack([m(x + self.shift[t]) for m in self.experts], 1)
            w = torch.softmax(self.gates[t](x), -1)
            out[name] = torch.sigmoid(self.towers[t]((w.unsqueeze(-1) * ex).sum(1))).squeeze(-1)
        return out


def test_gates_over_per_task_expert_outputs_are_compared() -> None:
    """Each task's gate mixes the experts' outputs on its own input, one gate per task: not two runs of a
    layer (those give every task a gate per run), so the two tasks' identical gates are compared and found."""
    model = _PerTaskExpertInput().eval()
    with torch.no_grad():
        model.gates[0].weight.mul_(4)
        model.gates[1].load_state_dict(model.gates[0].state_dict())
    rng = np.random.default_rng(0)
    cols = [f"f{i}" for i in range(8)]
    data = pd.DataFrame(rng.normal(size=(800, 8)).astype("float32"), columns=cols)
    result = mi.inspect(
        model, data, input_fn=lambda c: torch.tensor(c[cols].to_numpy()), columns=cols, labels=False
    )
    assert [g.layer_call for g in result.topology.gates] == [None, None]
    found = {f.subject for f in result.findings if f.code == codes.TASKS_ROUTE_IDENTICALLY}
    assert found == {"click ~ buy"}, [(f.code, f.subject) for f in result.findings]


class _OneGateListedTwice(nn.Module):
    """`nn.ModuleList([gate] * 2)`: both tasks' gates are one Linear (a common bug), called once per task."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.experts = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(4)])
        gate = nn.Linear(8, 4)
        self.gates = nn.ModuleList([gate] * 2)
        self.towers = nn.ModuleList([nn.Linear(8, 1) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ex = torch.stack([m(x) for m in self.experts], 1)
        return tuple(
            torch.sigmoid(t((torch.softmax(g(x), -1).unsqueeze(-1) * ex).sum(1))).squeeze(-1)
            for g, t in zip(self.gates, self.towers, strict=True)
        )


def test_one_gate_listed_for_both_tasks_routes_identically() -> None:
    """The listed-twice gate runs once per task (`call` 0 and 1) over one set of expert outputs: its two calls
    are the two tasks' routing, identical by construction (it passed as 'no task gates share one expert set')."""
    rng = np.random.default_rng(0)
    cols = [f"f{i}" for i in range(8)]
    data = pd.DataFrame(rng.normal(size=(800, 8)).astype("float32"), columns=cols)
    result = mi.inspect(
        _OneGateListedTwice().eval(),
        data,
        input_fn=lambda c: torch.tensor(c[cols].to_numpy()),
        columns=cols,
        tasks=["click", "buy"],
        labels=False,
    )
    found = {f.subject for f in result.findings if f.code == codes.TASKS_ROUTE_IDENTICALLY}
    assert found == {"click ~ buy"}, [(f.code, f.subject) for f in result.findings]


class _OwnTasksPerRun(nn.Module):
    """One MMoE layer (`_Layer`: gates 0 and 1) run on the user half for click/buy and on the item half for
    like/share: the gate modules' calls serve four tasks, each run over its own expert outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.mmoe = _Layer()
        self.towers = nn.ModuleList([nn.Linear(8, 1) for _ in range(4)])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mixed = self.mmoe(x[:, :4]) + self.mmoe(x[:, 4:])
        names = ("click", "buy", "like", "share")
        return {n: torch.sigmoid(t(h)).squeeze(-1) for n, t, h in zip(names, self.towers, mixed, strict=True)}


def test_a_layer_run_twice_for_its_own_tasks_compares_tasks_of_one_run() -> None:
    """Each task has one gate, yet click/like (and buy/share) read different inputs: only the tasks of one run
    are compared, because their expert outputs differ (not because the gate module has a call per task)."""
    torch.manual_seed(0)
    model = _OwnTasksPerRun().eval()
    with torch.no_grad():
        for g in model.mmoe.gates:
            g.weight.mul_(6)
    rng = np.random.default_rng(0)
    cols = [f"f{i}" for i in range(8)]
    data = pd.DataFrame(rng.normal(size=(1000, 8)).astype("float32"), columns=cols)
    for t in ("click", "buy", "like", "share"):
        data[t] = (rng.random(1000) < 0.3).astype(float)
    result = mi.inspect(model, data, input_fn=lambda c: torch.tensor(c[cols].to_numpy()), columns=cols)
    assert {g.name: g.layer_call for g in result.topology.gates} == {
        "click": 0,
        "buy": 0,
        "like": 1,
        "share": 1,
    }
    div = result.tables["task_divergence"]
    assert sorted(zip(div["gate_a"], div["gate_b"], strict=True)) == [("click", "buy"), ("like", "share")]


def test_gates_per_expert_group_are_named_with_their_group() -> None:
    """A hierarchical MMoE: each task has one gate per expert group (`L0.click`, `L0.click#1`); the pair
    list says which group each far pair is over, not `click ~ buy` twice."""
    experts = tuple(ExpertSpec(f"groups.{k}.{i}", f"groups.{k}.{i}") for k in range(2) for i in range(3))
    group = [tuple(e.name for e in experts[3 * k : 3 * k + 3]) for k in range(2)]
    gates = tuple(
        GateSpec(f"L0.{t}{'#1' if k else ''}", f"inner.{t}.{k}", group[k], t)
        for t in ("click", "buy")
        for k in range(2)
    )
    topo = Topology((TaskSpec("click"), TaskSpec("buy")), experts, gates)
    div = _pairs({("click", "buy"): 0.55}).assign(gate_a="L0.click", gate_b="L0.buy")
    div = pd.concat([div, _pairs({("click", "buy"): 0.3}).assign(gate_a="L0.click#1", gate_b="L0.buy#1")])
    mi_table = pd.DataFrame([{"level": 0, "normalized": 0.05}])
    text = verdict(topo, {"mutual_information": mi_table, "task_divergence": div}, [])
    assert (
        "1 of 2 task pairs route rows to clearly different experts (L0.click ~ L0.buy over groups.0.*)"
        in text
    )


def _cgc_frame() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4000, 8)).astype("float32")
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(8)])
    frame["ctr"] = (x[:, 0] > 0.5).astype("float64")
    frame["cvr"] = (rng.random(len(frame)) < 0.2).astype("float64")  # not sparse: the general findings
    return frame


def _cgc(ctr: list[tuple[float, float]], cvr: list[tuple[float, float]]) -> CGC:
    """A CGC (2 tasks, 2 specific experts each, 2 shared) whose gate logits are `bias + w * x0` per expert,
    in the gate's order [own 0, own 1, shared 0, shared 1]."""
    torch.manual_seed(3)
    model = CGC(8, ["ctr", "cvr"], n_experts=2, n_specific=2, expert_hidden=(16,), tower_hidden=(4,))
    with torch.no_grad():
        for gate, rows in zip(model.levels[0].gates, (ctr, cvr), strict=True):
            linear = gate[0]
            linear.weight.zero_()
            linear.bias.zero_()
            for e, (bias, w) in enumerate(rows):
                linear.bias[e], linear.weight[e, 0] = bias, w
    return model.eval()


def test_ple_answer_says_which_task_ignores_its_own_and_which_the_shared_experts() -> None:
    """Plant: ctr's gate puts ~all weight on its own experts (input-dependent between them, so not collapsed),
    cvr's on the shared ones. The PLE gets a routing answer (it had none: 'no task gates share one expert set')
    and the findings name both failure modes on the right gate."""
    model = _cgc(
        [(6.0, 2.0), (6.0, -2.0), (0.0, 1.0), (0.0, -1.0)],
        [(-6.0, 0.0), (-6.0, 0.0), (0.0, 2.0), (0.0, -2.0)],
    )
    result = mi.inspect(model, _cgc_frame())
    flagged = {(f.code, f.subject) for f in result.findings}
    assert {
        (codes.TASK_IGNORES_SHARED_EXPERTS, "L0.ctr"),
        (codes.TASK_IGNORES_OWN_EXPERTS, "L0.cvr"),
    } <= flagged
    assert not any(f.code == codes.COLLAPSED_GATE for f in result.findings)
    routing = result.review.answer("routing")
    assert routing.answer.startswith("Partly (PLE/CGC): "), routing.answer
    assert "cvr's gate ignores its own experts and lives on the shared ones (0% own" in routing.answer
    assert "ctr's gate ignores the shared experts and learns alone (0% shared" in routing.answer
    assert "ctr 100% own / 0% shared, cvr 0% own / 100% shared" in routing.answer
    assert any(
        e.startswith("L0.cvr (task cvr, level 0): 0% on its own experts, 100%") for e in routing.evidence
    )
    # one story each: cvr's gate with its two dead experts, ctr's gate with the shared experts left to cvr
    stories = {d.title: d.findings for d in result.review.diagnoses}
    assert set(stories["Gate L0.cvr ignores task cvr's own experts"]) == {
        "task_ignores_own_experts: L0.cvr",
        "dead_expert: L0.cvr.0",
        "dead_expert: L0.cvr.1",
    }
    assert set(stories["Gate L0.ctr ignores the shared experts (task ctr learns alone)"]) == {
        "task_ignores_shared_experts: L0.ctr",
        "shared_expert_single_task: L0.shared.0",
        "shared_expert_single_task: L0.shared.1",
    }


def test_ple_answer_compares_how_the_tasks_use_the_shared_experts() -> None:
    """Plant: both gates use own and shared experts; over the shared ones ctr leans on shared 0 (by the sign of
    x0) and cvr on shared 1: the answer says yes, and that the shared experts are used differently."""
    model = _cgc(
        [(0.0, 2.0), (0.0, 1.0), (0.0, -2.0), (0.0, 0.0)], [(0.0, -2.0), (0.0, 0.0), (-1.0, 0.0), (0.5, 2.0)]
    )
    result = mi.inspect(model, _cgc_frame())
    assert not {codes.TASK_IGNORES_OWN_EXPERTS, codes.TASK_IGNORES_SHARED_EXPERTS} & {
        f.code for f in result.findings
    }
    text = result.review.answer("routing").answer
    assert text.startswith("Yes (PLE/CGC): every task's gate uses its own experts beside the shared ones"), (
        text
    )
    assert "the tasks use the shared experts differently (total variation 0.6" in text, text
    # cvr's gate the same as ctr's: alike over the shared experts, said as an average (per-row not claimed)
    same = [(0.0, 2.0), (0.0, 1.0), (0.0, -2.0), (0.0, 0.0)]
    text = mi.inspect(_cgc(same, same), _cgc_frame()).review.answer("routing").answer
    assert "on average the tasks weight the shared experts alike (total variation at most 0.00" in text, text
    assert "per-row routing over the shared experts is not compared" in text


def test_a_ple_gate_that_routes_no_row_is_not_a_yes() -> None:
    """Plant: cvr's gate reads no input (every weight 0: uniform over its 4 experts), ctr's routes by x0. The
    split per task is still reported, but the answer is not "Yes": one gate routes nothing (the demo's
    under-trained PLE said "Yes" beside its uniform_gate and input_independent_gate warnings)."""
    model = _cgc([(0.0, 2.0), (0.0, 1.0), (0.0, -2.0), (0.0, 0.0)], [(0.0, 0.0)] * 4)
    result = mi.inspect(model, _cgc_frame())
    assert (codes.UNIFORM_GATE, "L0.cvr") in {(f.code, f.subject) for f in result.findings}
    text = result.review.answer("routing").answer
    assert text.startswith(
        "Partly (PLE/CGC): L0.cvr is almost uniform: its split is fixed, it routes no row"
    ), text
    assert "ctr " in text and "own /" in text
