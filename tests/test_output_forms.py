"""Output structures of hand-written multi-task MoE models, each with a planted gate behaviour: the click
gate collapsed onto expert 0, the buy gate uniform.

MoE code that trains with a load-balancing loss returns it next to the predictions:
`((p_click, p_buy), aux)`, `(torch.cat(preds, 1), aux)`, `(torch.stack(preds, 1), aux)`,
`{"preds": {...}, "aux": aux}`. The tasks are the per-task prediction tensors; the 0-d aux loss (or any
tensor without the batch axis) is never a task and is named in a topology note. Before, the trial
forwards found no per-row prediction in these outputs and the CLI stopped with "could not tell how
the model reads its inputs". A list of `[batch, 1]` logits, a single `[batch, T]` tensor and experts
that emit one value per task (`[B, E, T]` sliced per task, `[B, E]` scalars per task) are checked here
too: each comes out with its gates resolved and the planted verdicts.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import mmoe_inspect as mi
from mmoe_inspect.cli.main import app
from mmoe_inspect.data.outputs import find_predictions, select
from mmoe_inspect.errors import MmoeInspectError
from mmoe_inspect.loading.input_binding import TRIAL_ROWS
from mmoe_inspect.topology._tasks import GUESSED_KINDS_NOTE
from mmoe_inspect.topology.spec import Topology

FEATURES = [f"x{i}" for i in range(6)]
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# The user's training script (its classes end up in `__main__` when pickled from it).
SCRIPT = '''
from collections import namedtuple

import torch
import torch.nn.functional as F
from torch import nn

D, E = 6, 4


def _plant(gates):
    """Click's gate collapsed onto expert 0 (a large bias), buy's uniform (all zeros)."""
    with torch.no_grad():
        for g in gates:
            g.weight.zero_()
            g.bias.zero_()
        gates[0].bias[0] = 20.0


class Base(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(D, 8), nn.ReLU()) for _ in range(E))
        self.gates = nn.ModuleList(nn.Linear(D, E) for _ in range(2))
        self.towers = nn.ModuleList(nn.Linear(8, 1) for _ in range(2))
        _plant(self.gates)

    def heads(self, x, sigmoid=True):
        """Each task's prediction [B, 1] and the load-balancing loss (0-d)."""
        ex = torch.stack([e(x) for e in self.experts], dim=1)
        outs, aux = [], x.new_zeros(())
        for g, t in zip(self.gates, self.towers):
            w = F.softmax(g(x), dim=-1)
            aux = aux + E * (w.mean(0) ** 2).sum()
            y = t((w.unsqueeze(-1) * ex).sum(1))
            outs.append(torch.sigmoid(y) if sigmoid else y)
        return outs, aux


class TupleAux(Base):
    def forward(self, x):
        (a, b), aux = self.heads(x)
        return (a, b), aux


class CatAux(Base):
    def forward(self, x):
        outs, aux = self.heads(x)
        return torch.cat(outs, dim=1), aux


class StackAux(Base):
    def forward(self, x):
        outs, aux = self.heads(x)
        return torch.stack([o.squeeze(1) for o in outs], dim=1), aux


class DictAux(Base):
    def forward(self, x):
        (a, b), aux = self.heads(x)
        return {"preds": {"click": a.squeeze(1), "buy": b.squeeze(1)}, "aux": aux}


Output = namedtuple("Output", ["click", "buy", "aux"])


class NamedTupleAux(Base):
    """A namedtuple of the predictions and the loss: the fields name the tasks."""

    def forward(self, x):
        (a, b), aux = self.heads(x)
        return Output(a.squeeze(1), b.squeeze(1), aux)


class LoadVectorAux(Base):
    """Predictions next to a per-expert load vector [E] and a Python float: no batch axis, never tasks."""

    def forward(self, x):
        (a, b), aux = self.heads(x)
        return [a, b], {"load": torch.ones(E) / E, "loss": float(aux.detach())}


class LoadOfTrialSize(nn.Module):
    """5 experts (as many as the binding's trial rows) and their mean load [5] returned after the
    predictions: on the 5 trial rows the load vector is [batch]-shaped, yet it is not a task."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(D, 8), nn.ReLU()) for _ in range(5))
        self.gates = nn.ModuleList(nn.Linear(D, 5) for _ in range(2))
        self.towers = nn.ModuleList(nn.Linear(8, 1) for _ in range(2))
        _plant(self.gates)

    def forward(self, x):
        ex = torch.stack([e(x) for e in self.experts], dim=1)
        ws = [F.softmax(g(x), dim=-1) for g in self.gates]
        outs = [torch.sigmoid(t((w.unsqueeze(-1) * ex).sum(1))).squeeze(1) for w, t in zip(ws, self.towers)]
        return outs[0], outs[1], ws[0].mean(0) + ws[1].mean(0)


class SigmoidColumns(Base):
    """One sigmoid over the [B, T] logits, its columns returned one by one next to the loss."""

    def forward(self, x):
        outs, aux = self.heads(x, sigmoid=False)
        y = torch.sigmoid(torch.cat(outs, dim=1))
        return y[:, 0], y[:, 1], aux


class TasksFirst(Base):
    """`torch.stack(preds)` on dim 0: [T, B], the rows second (not read: said so, with the fix)."""

    def forward(self, x):
        outs, aux = self.heads(x)
        return torch.stack([o.squeeze(1) for o in outs]), aux


class LogitAndProb(Base):
    """Each task's logit and probability: `({task: {"logit", "prob"}}, aux)`: two tasks, not four."""

    def forward(self, x):
        outs, aux = self.heads(x, sigmoid=False)
        return {n: {"logit": o, "prob": torch.sigmoid(o)} for n, o in zip(("click", "buy"), outs)}, aux


class ListLogits(Base):
    """A list of [B, 1] logits, no sigmoid (trained with BCEWithLogitsLoss)."""

    def forward(self, x):
        outs, _ = self.heads(x, sigmoid=False)
        return outs


class TaskMatrix(Base):
    """One [B, T] tensor."""

    def forward(self, x):
        outs, _ = self.heads(x)
        return torch.cat(outs, dim=1)


class ScalarExpertsBET(nn.Module):
    """Every expert emits one value per task, stacked [B, E, T]; gate t mixes [:, :, t]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.experts = nn.ModuleList(nn.Linear(D, 2) for _ in range(E))
        self.gates = nn.ModuleList(nn.Linear(D, E) for _ in range(2))
        _plant(self.gates)

    def forward(self, x):
        ex = torch.stack([e(x) for e in self.experts], dim=1)
        outs = [torch.sigmoid((F.softmax(g(x), -1) * ex[:, :, t]).sum(1)) for t, g in enumerate(self.gates)]
        return {"click": outs[0], "buy": outs[1]}


class ScalarExpertsUnbind(ScalarExpertsBET):
    """The same experts, each task's slice taken with `unbind` on the task axis."""

    def forward(self, x):
        ex = torch.stack([e(x) for e in self.experts], dim=1)
        outs = [torch.sigmoid((F.softmax(g(x), -1) * part).sum(1)) for g, part in zip(self.gates, ex.unbind(2))]
        return {"click": outs[0], "buy": outs[1]}


class ScalarExpertsEllipsis(ScalarExpertsBET):
    """The experts stacked first `[E, B, T]`, each task's slice taken as `ex[..., t]`."""

    def forward(self, x):
        ex = torch.stack([e(x) for e in self.experts], dim=0)
        outs = [torch.sigmoid((F.softmax(g(x), -1).t() * ex[..., t]).sum(0)) for t, g in enumerate(self.gates)]
        return {"click": outs[0], "buy": outs[1]}


class FusedScalarExperts(nn.Module):
    """Experts [B, E, T] and one fused gate [B, T, E] (`Linear(D, T * E)` viewed and softmaxed), mixed at once
    as `(w * ex.transpose(1, 2)).sum(-1)`: one [B, T] output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.experts = nn.ModuleList(nn.Linear(D, 2) for _ in range(E))
        self.gate = nn.Linear(D, 2 * E)
        with torch.no_grad():
            self.gate.weight.zero_()
            self.gate.bias.zero_()
            self.gate.bias[0] = 20.0  # task 0 (click) on expert 0; task 1 (buy) uniform

    def weights(self, x):
        ex = torch.stack([e(x) for e in self.experts], dim=1)
        return F.softmax(self.gate(x).view(-1, 2, E), -1), ex

    def forward(self, x):
        w, ex = self.weights(x)
        return torch.sigmoid((w * ex.transpose(1, 2)).sum(-1))


class FusedScalarExpertsT(FusedScalarExperts):
    def forward(self, x):
        w, ex = self.weights(x)
        return torch.sigmoid((w.transpose(1, 2) * ex).sum(1))


class FusedScalarExpertsEinsum(FusedScalarExperts):
    def forward(self, x):
        w, ex = self.weights(x)
        return torch.sigmoid(torch.einsum("bte,bet->bt", w, ex))


class ScalarExpertsBE(nn.Module):
    """Each task has its own scalar experts (Linear(D, 1)), concatenated [B, E] and mixed by its gate."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.experts = nn.ModuleList(nn.ModuleList(nn.Linear(D, 1) for _ in range(E)) for _ in range(2))
        self.gates = nn.ModuleList(nn.Linear(D, E) for _ in range(2))
        _plant(self.gates)

    def forward(self, x):
        outs = []
        for t, g in enumerate(self.gates):
            ex = torch.cat([e(x) for e in self.experts[t]], dim=1)
            outs.append(torch.sigmoid((F.softmax(g(x), -1) * ex).sum(1)))
        return outs[0], outs[1]


class SharedScalarExperts(nn.Module):
    """Scalar experts [B, E] shared by both tasks' gates."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.experts = nn.ModuleList(nn.Linear(D, 1) for _ in range(E))
        self.gates = nn.ModuleList(nn.Linear(D, E) for _ in range(2))
        _plant(self.gates)

    def forward(self, x):
        ex = torch.cat([e(x) for e in self.experts], dim=1)
        return [torch.sigmoid((F.softmax(g(x), -1) * ex).sum(1, keepdim=True)) for g in self.gates]
'''

AUX_FORMS = [
    "TupleAux",
    "CatAux",
    "StackAux",
    "DictAux",
    "NamedTupleAux",
    "SigmoidColumns",
    "LogitAndProb",
    "LoadVectorAux",
    "LoadOfTrialSize",
]
OTHER_FORMS = [
    "ListLogits",
    "TaskMatrix",
    "ScalarExpertsBET",
    "ScalarExpertsUnbind",
    "ScalarExpertsEllipsis",
    "FusedScalarExperts",
    "FusedScalarExpertsT",
    "FusedScalarExpertsEinsum",
    "ScalarExpertsBE",
    "SharedScalarExperts",
]


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("script") / "train_moe.py"
    path.write_text(SCRIPT)
    namespace: dict = {"__name__": "__main__"}
    exec(compile(SCRIPT, str(path), "exec"), namespace)
    return path, namespace


def _rows(n: int = 600) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    f = pd.DataFrame(rng.normal(size=(n, len(FEATURES))).astype("float32"), columns=FEATURES)
    f["click"] = (f["x0"] > 0).astype("int64")
    f["buy"] = (f["x1"] > 0.5).astype("int64")
    return f


def _inspect(model: torch.nn.Module) -> mi.InspectionResult:
    return mi.inspect(
        model.eval(),
        _rows(),
        input_fn=lambda d: torch.tensor(d[FEATURES].to_numpy()),
        columns=FEATURES,
        tasks=["click", "buy"],
    )


def _planted(result: mi.InspectionResult) -> None:
    """The planted behaviour: click's gate collapsed, buy's uniform; nothing unresolved."""
    assert [t.name for t in result.topology.tasks] == ["click", "buy"]
    assert not result.topology.unresolved
    assert {g.name for g in result.topology.gates} == {"click", "buy"}
    found = {(f.code, f.subject) for f in result.findings}
    assert ("collapsed_gate", "click") in found
    assert ("uniform_gate", "buy") in found
    assert not {s for c, s in found if c in ("collapsed_gate", "uniform_gate")} - {"click", "buy"}


@pytest.mark.parametrize("name", AUX_FORMS + OTHER_FORMS)
def test_inspect_finds_the_planted_gates_whatever_the_output_form(name: str, script) -> None:
    result = _inspect(script[1][name]())
    _planted(result)
    guessed = [n for n in result.topology.notes if n.startswith(GUESSED_KINDS_NOTE)]
    assert not guessed or name == "ListLogits", guessed  # each form but the logits ends in a sigmoid
    if name in AUX_FORMS:
        notes = [n for n in result.topology.notes if n.startswith("ignored")]
        assert notes and "without the batch axis" in notes[0], result.topology.notes


@pytest.mark.parametrize("name", AUX_FORMS)
def test_check_binds_and_judges_a_whole_pickled_model_returning_an_aux_loss(
    name: str, script, tmp_path, monkeypatch
) -> None:
    """`check CKPT --trust-checkpoint --model-code FILE --data ROWS` with no other flag: the trial forwards
    find the two predictions (they found none before), the labels follow the outputs, the verdicts hold.
    A `[E]` load vector as long as the trial is rows is not taken for a third output."""
    assert TRIAL_ROWS == 5  # LoadOfTrialSize has as many experts
    cls = script[1][name]
    monkeypatch.setattr(sys.modules["__main__"], name, cls, raising=False)
    ckpt = tmp_path / f"{name}.pt"
    torch.save(cls().eval(), ckpt)
    monkeypatch.delattr(sys.modules["__main__"], name)
    data = tmp_path / "rows.parquet"
    _rows().to_parquet(data, index=False)
    result = CliRunner().invoke(
        app,
        ["check", str(ckpt), "--trust-checkpoint", "--model-code", str(script[0]), "--data", str(data)],
    )
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    text = ANSI.sub("", result.output)
    assert result.exit_code == 1, text  # findings, not a binding error (2) nor "cannot judge" (4)
    assert re.search(r"collapsed_gate click\b", text), text
    assert re.search(r"uniform_gate buy\b", text), text
    assert "task_0" not in text


@pytest.mark.parametrize("name", ["ScalarExpertsBET", "ScalarExpertsUnbind", "ScalarExpertsEllipsis"])
def test_experts_emitting_one_value_per_task_are_shared_by_the_task_gates(name: str, script) -> None:
    """Experts `[B, E, T]` whose gate t mixes `[:, :, t]`: the experts are the 4 expert modules, shared by
    both gates (an MMoE), not 8 inline experts of a CGC. Before, each task's slice was taken for experts
    of its own (`expert[0]` ... `expert[7]`), and click's unused slices were reported as dead experts
    although buy's gate uses those modules."""
    result = _inspect(script[1][name]())
    _planted(result)
    topo = result.topology
    assert [e.module for e in topo.experts] == [f"experts.{i}" for i in range(4)]
    assert all(g.experts == ("experts.0", "experts.1", "experts.2", "experts.3") for g in topo.gates)
    assert topo.architecture == "mmoe"
    assert not [f for f in result.findings if f.code == "dead_expert"]


@pytest.mark.parametrize("name", ["FusedScalarExperts", "FusedScalarExpertsT", "FusedScalarExpertsEinsum"])
def test_a_fused_gate_over_experts_emitting_one_value_per_task(name: str, script) -> None:
    """One `[B, T, E]` softmax holding both gates, gate t mixing the experts' slice t: each task's gate is its
    slice of that softmax, over the 4 shared expert modules. Before, no mixture was found and `check`
    could not judge (exit 4); and a found fused softmax is not also listed as "not a gate"."""
    result = _inspect(script[1][name]())
    _planted(result)
    topo = result.topology
    assert sorted(g.part for g in topo.gates) == [0, 1]
    assert [e.module for e in topo.experts] == [f"experts.{i}" for i in range(4)]
    assert not [n for n in topo.notes if "not a gate" in n], topo.notes
    # `sigmoid([B, T])` makes every column: the kinds come from that sigmoid, not from the value range
    assert not [n for n in topo.notes if n.startswith(GUESSED_KINDS_NOTE)], topo.notes


def test_predictions_stacked_tasks_first_are_read_row_by_row(script, tmp_path, monkeypatch) -> None:
    """`(torch.stack(preds), aux)` is `[T, batch]`: row t is task t (said in a note), the planted verdicts hold.
    The orientation is decided once, on discovery's 61 rows (T != 61), and kept in each task's `rows_second`:
    a last chunk of 2 rows (`[2, 2]`, which alone reads either way) is read as the other chunks, so each task's
    mean prediction equals a direct forward's. Before, exit 2 with the fix (`stack(preds, dim=1)`)."""
    model = script[1]["TasksFirst"]().eval()
    rows = _rows(602)
    result = mi.inspect(
        model,
        rows,
        input_fn=lambda d: torch.tensor(d[FEATURES].to_numpy()),
        columns=FEATURES,
        tasks=["click", "buy"],
        config=mi.InspectConfig(batch_size=600),  # 600 + 2 rows: the last chunk is [2, 2]
    )
    _planted(result)
    assert [(t.output, t.column, t.rows_second) for t in result.topology.tasks] == [
        (0, 0, True),
        (0, 1, True),
    ]
    assert any("tasks first and the rows second" in n for n in result.topology.notes), result.topology.notes
    assert not [
        n for n in result.topology.notes if n.startswith(GUESSED_KINDS_NOTE)
    ]  # each row's sigmoid seen
    with torch.no_grad():
        direct = model(torch.tensor(rows[FEATURES].to_numpy()))[0].double().mean(1).numpy()
    got = result.table("tasks").set_index("task").loc[["click", "buy"], "mean_prediction"].to_numpy()
    np.testing.assert_allclose(got, direct, rtol=1e-6)
    path = tmp_path / "spec.toml"
    path.write_text(result.topology.to_toml())
    assert Topology.load(path).tasks == result.topology.tasks
    monkeypatch.setattr(sys.modules["__main__"], "TasksFirst", script[1]["TasksFirst"], raising=False)
    ckpt = tmp_path / "tasks_first.pt"
    torch.save(model, ckpt)
    monkeypatch.delattr(sys.modules["__main__"], "TasksFirst")
    data = tmp_path / "rows.parquet"
    _rows().to_parquet(data, index=False)
    args = ["check", str(ckpt), "--trust-checkpoint", "--model-code", str(script[0]), "--data", str(data)]
    cli = CliRunner().invoke(app, args)
    text = " ".join(ANSI.sub("", cli.output).split())
    assert cli.exit_code == 1, text  # findings, not a binding error
    assert re.search(r"collapsed_gate click\b", text) and re.search(r"uniform_gate buy\b", text), text


def test_predictions_stacked_tasks_first_next_to_other_predictions_are_not_tasks() -> None:
    """A `[T, batch]` entry beside per-row predictions may be anything (experts first, say): not read, named
    with the fix, as before."""
    b = 7
    res = find_predictions((torch.rand(b), torch.rand(3, b)), b)
    assert [x.loc for x in res.found] == [0]
    assert len(res.skipped) == 1 and "tasks first and the rows second" in res.skipped[0]
    with pytest.raises(
        MmoeInspectError, match=r"expected \[batch\], \[batch, n_tasks\] or \[n_tasks, batch\]"
    ):
        mi.inspect(
            torch.nn.Flatten(0),  # [7, 6] -> [42]: no axis of 7 rows
            _rows(7),
            input_fn=lambda d: torch.tensor(d[FEATURES].to_numpy()),
            columns=FEATURES,
        )


def test_a_nested_output_round_trips_through_a_spec_file(script, tmp_path) -> None:
    """A nested prediction's locator is the list of steps in the spec file (`output = ["preds", "click"]`),
    and inspecting with that spec reads the same predictions."""
    model = script[1]["DictAux"]().eval()
    found = _inspect(model)
    assert [t.output for t in found.topology.tasks] == [("preds", "click"), ("preds", "buy")]
    path = tmp_path / "spec.toml"
    path.write_text(found.topology.to_toml())
    assert 'output = [\n    "preds",\n    "click",\n]' in path.read_text()
    assert Topology.load(path).tasks == found.topology.tasks
    again = mi.inspect(
        model,
        _rows(),
        topology=path,
        input_fn=lambda d: torch.tensor(d[FEATURES].to_numpy()),
        columns=FEATURES,
    )
    _planted(again)
    assert [t.output for t in again.topology.tasks] == [("preds", "click"), ("preds", "buy")]


def test_namedtuple_fields_name_the_tasks(script) -> None:
    """The fields of a namedtuple output are the task names (no `--tasks` needed) and its locators."""
    model = script[1]["NamedTupleAux"]().eval()
    result = mi.inspect(
        model, _rows(), input_fn=lambda d: torch.tensor(d[FEATURES].to_numpy()), columns=FEATURES
    )
    _planted(result)
    assert [t.output for t in result.topology.tasks] == ["click", "buy"]


def test_several_readings_of_each_task_are_one_task(script) -> None:
    """`{task: {"logit": ..., "prob": ...}}` holds two tasks read two ways: the probability is taken (said in
    the notes), so the tasks are click and buy, each served by its own gate. Walked as four tasks,
    `click.logit` ... `buy.prob`, both gates came out shared by two tasks each (a plain MoE)."""
    result = _inspect(script[1]["LogitAndProb"]())
    assert [t.output for t in result.topology.tasks] == [(0, "click", "prob"), (0, "buy", "prob")]
    assert result.topology.architecture == "mmoe"
    assert any("2 readings ('logit', 'prob')" in n and "took 'prob'" in n for n in result.topology.notes)


def test_stacked_predictions_keep_their_sigmoid() -> None:
    """`torch.stack(preds, 1)` is read column by column back to each task's sigmoid, as `torch.cat` is: the
    task kinds are not guessed from the value range."""
    namespace: dict = {"__name__": "outputs_script"}
    exec(compile(SCRIPT, "train_moe.py", "exec"), namespace)
    result = _inspect(namespace["StackAux"]())
    assert not [n for n in result.topology.notes if n.startswith(GUESSED_KINDS_NOTE)], result.topology.notes


def test_find_predictions_reads_nested_outputs_and_leaves_out_what_has_no_batch_axis() -> None:
    b = 7
    p, q, gate = torch.rand(b), torch.rand(b, 1), torch.softmax(torch.randn(b, 4), 1)
    res = find_predictions({"out": (p, {"buy": q}), "gates": gate, "aux": torch.tensor(0.3), "n": 3}, b)
    assert [x.loc for x in res.found] == [("out", 0), ("out", 1, "buy")]
    assert [x.name for x in res.found] == [None, "buy"]
    assert res.ignored == ["output ['aux'] (shape [])", "output ['n'] (int)"]
    assert res.skipped == ["output ['gates'] (shape [7, 4])"]
    assert torch.equal(select({"out": (p, {"buy": q})}, ("out", 1, "buy")), q)
    # a lone prediction next to a loss keeps its key; a [batch, T] next to it is split into columns
    assert [x.loc for x in find_predictions({"click": p, "aux": torch.tensor(1.0)}, b).found] == ["click"]
    m = torch.rand(b, 3)
    res = find_predictions((m, torch.tensor(1.0), torch.ones(4)), b)
    assert [x.loc for x in res.found] == [(0, 0), (0, 1), (0, 2)]
    assert torch.equal(select((m, 0.1), (0, 2)), m[:, 2])
    assert find_predictions((torch.tensor(1.0), torch.ones(4)), b).found == []
