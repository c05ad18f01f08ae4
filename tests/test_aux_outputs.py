"""Per-row auxiliary outputs next to the predictions: a load-balancing or regularisation term computed per
row (`[batch]`) and returned with the task heads. Named like one (`aux_loss`, `lbLoss`, `reg`) and with
no label column, it is not a task: before, it was taken for a third task, unlabelled, and `check` failed
its default `--fail-on warning` on `task_unlabelled`. With a label column, or without a name, it stays a
task (the note says why). The planted gates (click collapsed onto expert 0, buy uniform) are found either way.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mmoe_inspect as mi
from mmoe_inspect.aux_tasks import looks_auxiliary

FEATURES = [f"x{i}" for i in range(6)]
E = 4
Heads = namedtuple("Heads", ["click", "buy", "lbLoss"])


class AuxMMoE(nn.Module):
    """Click's gate collapsed onto expert 0 (a large bias), buy's uniform; a per-row balance term `[B]`."""

    def __init__(self, form: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.form = form
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(6, 8), nn.ReLU()) for _ in range(E))
        self.gates = nn.ModuleList(nn.Linear(6, E) for _ in range(2))
        self.towers = nn.ModuleList(nn.Linear(8, 1) for _ in range(2))
        with torch.no_grad():
            for g in self.gates:
                g.weight.zero_()
                g.bias.zero_()
            self.gates[0].bias[0] = 20.0

    def forward(self, x: torch.Tensor):
        ex = torch.stack([e(x) for e in self.experts], 1)
        outs, term = [], x.new_zeros(x.shape[0])
        for g, t in zip(self.gates, self.towers, strict=True):
            w = F.softmax(g(x), -1)
            term = term + E * (w**2).sum(-1)  # per row: large when the row's weight sits on few experts
            outs.append(torch.sigmoid(t((w.unsqueeze(-1) * ex).sum(1))).squeeze(1))
        click, buy = outs
        if self.form == "dict":
            return {"click": click, "buy": buy, "aux_loss": term}
        if self.form == "nested":
            return {"preds": {"click": click, "buy": buy}, "reg": term}
        if self.form == "namedtuple":
            return Heads(click, buy, term)
        return click, buy, term  # "tuple": no names


def _rows(n: int = 600) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    f = pd.DataFrame(rng.normal(size=(n, 6)).astype("float32"), columns=FEATURES)
    f["click"] = (f["x0"] > 0).astype("int64")
    f["buy"] = (f["x1"] > 0.5).astype("int64")
    return f


def _inspect(model: nn.Module, rows: pd.DataFrame, **kw) -> mi.InspectionResult:
    return mi.inspect(
        model.eval(), rows, input_fn=lambda d: torch.tensor(d[FEATURES].to_numpy()), columns=FEATURES, **kw
    )


def _planted(result: mi.InspectionResult, click: str = "click", buy: str = "buy") -> set[tuple[str, str]]:
    found = {(f.code, f.subject) for f in result.findings}
    assert (("collapsed_gate", click) in found) and (("uniform_gate", buy) in found), found
    return found


@pytest.mark.parametrize(
    ("form", "term"), [("dict", "aux_loss"), ("nested", "reg"), ("namedtuple", "lbLoss")]
)
def test_a_per_row_term_named_like_one_is_not_a_task(form: str, term: str) -> None:
    result = _inspect(AuxMMoE(form), _rows())
    assert [t.name for t in result.topology.tasks] == ["click", "buy"], result.topology.notes
    found = _planted(result)
    assert not [c for c, s in found if c == "task_unlabelled"], found
    assert any(
        n.startswith(f"output(s) {term}: named like an auxiliary per-row term") for n in result.topology.notes
    )
    assert set(result.table("tasks")["task"]) == {"click", "buy"}


def test_a_term_with_a_label_column_stays_a_task() -> None:
    rows = _rows()
    rows["aux_loss"] = rows["x2"]  # the data labels it: a regression task after all
    result = _inspect(AuxMMoE("dict"), rows)
    assert [t.name for t in result.topology.tasks] == ["click", "buy", "aux_loss"]
    assert result.table("tasks").set_index("task").loc["aux_loss", "n_labelled"] == len(rows)
    assert not any("named like an auxiliary" in n for n in result.topology.notes)


def test_an_unnamed_term_stays_a_task_and_a_spec_leaves_it_out(tmp_path) -> None:
    """`(click, buy, term)`: no name to go by; kept as task_2 with one note saying it may be a term and how to
    leave it out; a spec without it judges the two tasks alone."""
    model = AuxMMoE("tuple")
    rows = _rows().rename(columns={"click": "task_0", "buy": "task_1"})
    result = _inspect(model, rows)
    assert [t.name for t in result.topology.tasks] == ["task_0", "task_1", "task_2"]
    doubt = [n for n in result.topology.notes if n.startswith("output(s) task_2: no name, no label")]
    assert len(doubt) == 1, result.topology.notes
    assert ("task_unlabelled", "task_2") in _planted(result, "task_0", "task_1")
    topo = result.topology
    spec = mi.Topology(
        tasks=topo.tasks[:2], gates=topo.gates, experts=topo.experts, architecture=topo.architecture
    )
    path = tmp_path / "spec.toml"
    path.write_text(spec.to_toml())
    again = _inspect(model, rows, topology=path)
    assert [t.name for t in again.topology.tasks] == ["task_0", "task_1"]
    assert not [f for f in again.findings if f.code == "task_unlabelled"]
    _planted(again, "task_0", "task_1")


class BalanceHead(nn.Module):
    """A Shared-Bottom whose second task is a real regression head named `balance` (an account balance)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.bottom = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
        self.click, self.balance = nn.Linear(8, 1), nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.bottom(x)
        return {"click": torch.sigmoid(self.click(h)).squeeze(1), "balance": self.balance(h).squeeze(1)}


def test_a_task_named_like_a_term_is_kept_when_only_its_name_says_so() -> None:
    """A task head called `balance` whose label column the data lacks: its name is the only sign of a training
    term (nothing is mixed, it is a head like click's). It was dropped and `check` passed judging click alone;
    it stays a task, unjudged (task_unlabelled), with a note on how to leave it out if it is a term."""
    result = _inspect(BalanceHead(), _rows().drop(columns=["buy"]))
    assert [t.name for t in result.topology.tasks] == ["click", "balance"], result.topology.notes
    assert ("task_unlabelled", "balance") in {(f.code, f.subject) for f in result.findings}
    kept = [n for n in result.topology.notes if n.startswith("output balance: named like an auxiliary")]
    assert len(kept) == 1 and "only its name" in kept[0] and "--spec spec.toml" in kept[0], (
        result.topology.notes
    )


def test_auxiliary_words() -> None:
    for name in ("aux", "aux_loss", "lbLoss", "l2_reg", "moe.balance", "gate_entropy", "AuxLoss", "penalty2"):
        assert looks_auxiliary(name), name
    for name in (
        "click",
        "regression",
        "region",
        "ctr",
        "buy_prob",
        "logits_purchase",
        "task_2",
        "lossless_rate",
    ):
        assert not looks_auxiliary(name), name


class RegOffExperts(nn.Module):
    """An MMoE (click, buy) with a third head `reg` (no label column) that reads the experts another way: their
    plain mean (`mean`), its own gate's mixture through `.detach()` (`detached`); or a z-loss of the gate
    logits per row (`zloss`: a real training term)."""

    def __init__(self, form: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.form = form
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(6, 8), nn.ReLU()) for _ in range(3))
        self.gates = nn.ModuleDict({t: nn.Linear(6, 3) for t in ("click", "buy", "reg")})
        self.towers = nn.ModuleDict({t: nn.Linear(8, 1) for t in ("click", "buy", "reg")})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        e = torch.stack([m(x) for m in self.experts], 1)
        mix = {t: (F.softmax(self.gates[t](x), -1).unsqueeze(-1) * e).sum(1) for t in ("click", "buy", "reg")}
        out = {t: torch.sigmoid(self.towers[t](mix[t])).squeeze(1) for t in ("click", "buy")}
        if self.form == "zloss":
            out["reg"] = torch.logsumexp(self.gates["click"](x), -1) ** 2
        else:
            out["reg"] = self.towers["reg"](
                e.mean(1) if self.form == "mean" else mix["reg"].detach()
            ).squeeze(1)
        return out


@pytest.mark.parametrize("form", ["mean", "detached"])
def test_a_term_named_head_that_reads_the_experts_is_kept(form: str) -> None:
    """`reg` is no expert mixture's output for autograd (a mean, a detach), but its traced inputs hold the
    experts: it was dropped with a note saying it was "made from the gate weights". It stays a task, unjudged."""
    result = _inspect(RegOffExperts(form), _rows())
    notes = result.topology.notes
    assert "reg" in [t.name for t in result.topology.tasks], notes
    assert ("task_unlabelled", "reg") in {(f.code, f.subject) for f in result.findings}
    assert any(
        n.startswith("output reg: named like an auxiliary") and "not computed from gate" in n for n in notes
    )


def test_a_term_computed_from_the_gate_logits_is_dropped() -> None:
    """A per-row z-loss of click's gate logits, named `reg`: made from gate logits and no expert output."""
    result = _inspect(RegOffExperts("zloss"), _rows())
    assert [t.name for t in result.topology.tasks] == ["click", "buy"], result.topology.notes
    assert any("computed from gate weights and no expert output" in n for n in result.topology.notes)
