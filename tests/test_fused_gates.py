"""Gates discovery once missed: fused gates, and gates mixed by `baddbmm` or `torch.linalg.vecdot`.

Fused gates: one tensor `[B, T, E]` holding the gates of T tasks, mixed with the experts in one op.

A common vectorised MMoE writes every task's gate as ONE `Linear(d, T * E)` viewed `[B, T, E]`,
softmaxed, and mixes all tasks at once (`bmm` with the stacked experts `[B, E, D]`, or an `einsum`).
Discovery called such a model a Shared-Bottom and `check` passed it even with every gate collapsed
(the worst thing this tool can do). Now each task's gate is read as its slice of that tensor
(`GateSpec.part_dim` / `part`): recorded exactly, edited alone by the causal interventions, judged.
Attention scores (a product of two projections) and multi-head attention stay what they were.

Per-task gates mixed by `torch.baddbmm` (a bias added in the product), `torch.linalg.vecdot` or an
`addcmul` loop over the experts were not mixtures to discovery either: with sigmoid gates nothing else flagged them, so a collapsed model passed
as a Shared-Bottom. They are gates now, and their collapse is found.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

import mmoe_inspect as mi
from mmoe_inspect.causal.interventions import Ablate, GateIntervention, repeat_rows
from mmoe_inspect.cli.main import app
from mmoe_inspect.recording.recorder import GateRecorder
from mmoe_inspect.topology.discovery import discover_topology
from mmoe_inspect.topology.spec import Topology

N_FEATURES, N_EXPERTS, WIDTH, N_TASKS = 8, 4, 16, 2
FEATURES = [f"f{i}" for i in range(N_FEATURES)]


class FusedBmm(nn.Module):
    """One Linear gives every task's gate logits; one bmm mixes all tasks (gates collapsed onto expert 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(N_FEATURES, WIDTH), nn.ReLU()) for _ in range(N_EXPERTS)
        )
        self.mixer = nn.Linear(N_FEATURES, N_TASKS * N_EXPERTS)
        self.heads = nn.ModuleList(nn.Linear(WIDTH, 1) for _ in range(N_TASKS))
        with torch.no_grad():  # every task's gate collapsed onto expert 1
            self.mixer.weight.zero_()
            self.mixer.bias.zero_()
            self.mixer.bias.view(N_TASKS, N_EXPERTS)[:, 1] = 40.0

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixer(x).view(-1, N_TASKS, N_EXPERTS).softmax(-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ex = torch.stack([b(x) for b in self.blocks], 1)  # [B, E, D]
        mixed = torch.bmm(self.weights(x), ex)  # [B, T, D]
        return tuple(torch.sigmoid(h(mixed[:, i])).squeeze(-1) for i, h in enumerate(self.heads))


class FusedEinsum(FusedBmm):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ex = torch.stack([b(x) for b in self.blocks], 1)
        mixed = torch.einsum("bte,bed->btd", self.weights(x), ex)
        return tuple(torch.sigmoid(h(mixed[:, i])).squeeze(-1) for i, h in enumerate(self.heads))


class StackedTaskGates(FusedBmm):
    """Per-task softmax modules, stacked `[T, B, E]` and mixed with experts-first `[E, B, D]` by one einsum."""

    def __init__(self) -> None:
        super().__init__()
        self.gates = nn.ModuleList(nn.Linear(N_FEATURES, N_EXPERTS) for _ in range(N_TASKS))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ex = torch.stack([b(x) for b in self.blocks], 0)
        w = torch.stack([F.softmax(g(x), -1) for g in self.gates], 0)
        mixed = torch.einsum("tbe,ebh->tbh", w, ex)
        return tuple(torch.sigmoid(h(mixed[i])).squeeze(-1) for i, h in enumerate(self.heads))


class FusedBroadcast(FusedBmm):
    """The fused gates broadcast over the experts and summed: `(w[..., None] * ex[:, None]).sum(2)`."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ex = torch.stack([b(x) for b in self.blocks], 1)
        mixed = (self.weights(x).unsqueeze(-1) * ex.unsqueeze(1)).sum(2)
        return tuple(torch.sigmoid(h(mixed[:, i])).squeeze(-1) for i, h in enumerate(self.heads))


class FusedRight(FusedBmm):
    """The fused gates on the right of the product: `[B, D, E] @ [B, E, T]`."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ex = torch.stack([b(x) for b in self.blocks], 1)
        mixed = torch.bmm(ex.transpose(1, 2), self.weights(x).transpose(1, 2))  # [B, D, T]
        return tuple(torch.sigmoid(h(mixed[:, :, i])).squeeze(-1) for i, h in enumerate(self.heads))


class TaskGates(nn.Module):
    """One module returning every task's gate, stacked tasks first `[T, B, E]`."""

    def __init__(self) -> None:
        super().__init__()
        self.gates = nn.ModuleList(nn.Linear(N_FEATURES, N_EXPERTS) for _ in range(N_TASKS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([F.softmax(g(x), -1) for g in self.gates], 0)


class ModuleStacked(FusedBmm):
    """The `[T, B, E]` gates are a module's output (read there, batch on axis 1), mixed experts-first."""

    def __init__(self) -> None:
        super().__init__()
        self.task_gates = TaskGates()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ex = torch.stack([b(x) for b in self.blocks], 0)
        mixed = torch.einsum("tbe,ebh->tbh", self.task_gates(x), ex)
        return tuple(torch.sigmoid(h(mixed[i])).squeeze(-1) for i, h in enumerate(self.heads))


class FusedSliced(FusedBmm):
    """The same fused gate tensor, sliced per task before the mixing: what the message advises."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ex = torch.stack([b(x) for b in self.blocks], 1)
        w = self.weights(x)
        return tuple(
            torch.sigmoid(h(torch.bmm(w[:, i : i + 1], ex).squeeze(1))).squeeze(-1)
            for i, h in enumerate(self.heads)
        )


class MultiHeadAttentionBottom(nn.Module):
    """A Shared-Bottom with two-head target attention over a short sequence: no gates, nothing unresolved."""

    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Linear(1, WIDTH)
        self.query = nn.Linear(N_FEATURES, 2 * WIDTH)
        self.bottom = nn.Linear(N_FEATURES + WIDTH, WIDTH)
        self.heads = nn.ModuleList(nn.Linear(WIDTH, 1) for _ in range(N_TASKS))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s = self.seq(x[:, :5, None])  # [B, 5, D]
        q = self.query(x).view(-1, 2, WIDTH)  # [B, heads, D]
        att = torch.softmax(q @ s.transpose(1, 2), -1)  # [B, heads, 5]
        pooled = (att @ s).mean(1)
        z = torch.relu(self.bottom(torch.cat([x, pooled], 1)))
        return tuple(torch.sigmoid(h(z)).squeeze(-1) for h in self.heads)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(256, N_FEATURES, generator=torch.Generator().manual_seed(0))


def healthy(cls: type[FusedBmm]) -> FusedBmm:
    """`cls` with input-dependent gates (random gate weights)."""
    torch.manual_seed(0)
    model = cls().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2 and p.shape[1] == N_FEATURES and p.shape[0] != WIDTH:  # the gates' weights
                p.normal_()
        model.mixer.bias.normal_()
    return model


def fused_weights(model: FusedBmm, x: torch.Tensor) -> torch.Tensor:
    """`[B, T, E]`: every task's gate rows, computed apart from the forward."""
    if isinstance(model, StackedTaskGates):
        return torch.stack([F.softmax(g(x), -1) for g in model.gates], 1)
    if isinstance(model, ModuleStacked):
        return model.task_gates(x).transpose(0, 1)
    return model.weights(x)


@pytest.mark.parametrize(
    ("cls", "where"),
    [
        (FusedBmm, "<model>:softmax#0 [{t} on dim 1]"),
        (FusedEinsum, "<model>:softmax#0 [{t} on dim 1]"),
        (StackedTaskGates, "<model>:stack#1 [{t} on dim 0]"),
        (FusedBroadcast, "<model>:softmax#0 [{t} on dim 1]"),
        (FusedRight, "<model>:softmax#0 [{t} on dim 1]"),
        (ModuleStacked, "task_gates [{t} on dim 0]"),
    ],
)
def test_fused_gates_are_one_gate_per_task_recorded_exactly(
    cls: type[FusedBmm], where: str, x: torch.Tensor
) -> None:
    model = healthy(cls)
    topo = discover_topology(model, x[:64])
    assert topo.unresolved == () and topo.architecture == "mmoe" and topo.judgeable, topo.notes
    assert [(g.task, g.locator, g.n_experts) for g in topo.gates] == [
        (f"task_{t}", where.format(t=t), N_EXPERTS) for t in range(N_TASKS)
    ]
    assert len(topo.experts) == N_EXPERTS
    with GateRecorder(model, topo) as rec, torch.inference_mode():
        model(x[:7])  # another batch size first
        rec.take()
        model(x)
        got = rec.take().gates
    with torch.no_grad():
        truth = fused_weights(model, x)
    for t, gate in enumerate(topo.gates):
        torch.testing.assert_close(got[gate.name], truth[:, t], rtol=0, atol=0)


def test_fused_gate_spec_round_trip(x: torch.Tensor, tmp_path: Path) -> None:
    topo = discover_topology(healthy(FusedBmm), x[:64])
    path = tmp_path / "spec.toml"
    path.write_text(topo.to_toml())
    assert "part_dim = 1" in path.read_text()
    back = Topology.load(path)
    assert back.gates == topo.gates
    # a gate read whole has no part fields (the golden metrics of the demo stay as they were)
    assert "part" not in discover_topology(FusedSliced(), x[:64]).to_dict()["gates"][0]


def test_an_ablation_edits_only_its_own_slice(x: torch.Tensor) -> None:
    """Interventions edit one fused gate's slice, or both in one variant: equal to the model run on the edited
    gate tensor by hand."""
    model = healthy(FusedBmm)
    topo = discover_topology(model, x[:64])
    keep = (True, False, True, True)
    variants = [{}, {"task_0": Ablate(keep)}, {"task_0": Ablate(keep), "task_1": Ablate(keep, mode="zero")}]
    b = x.shape[0]
    with GateIntervention(model, topo) as iv, torch.inference_mode():
        iv.plan(variants, block_rows=b)
        out = model(repeat_rows(x, len(variants)))

    def by_hand(w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ex = torch.stack([blk(x) for blk in model.blocks], 1)
        mixed = torch.bmm(w, ex)
        return tuple(torch.sigmoid(h(mixed[:, i])).squeeze(-1) for i, h in enumerate(model.heads))

    mask = torch.tensor(keep, dtype=torch.float32)
    with torch.no_grad():
        w = model.weights(x)
        w1 = w.clone()
        w1[:, 0] = w[:, 0] * mask / (w[:, 0] * mask).sum(-1, keepdim=True)
        w2 = w1.clone()
        w2[:, 1] = w[:, 1] * mask
        for block, weights in enumerate((w, w1, w2)):
            for task, want in enumerate(by_hand(weights)):
                torch.testing.assert_close(out[task][block * b : (block + 1) * b], want, rtol=1e-5, atol=1e-6)


def test_as_many_tasks_as_experts(x: torch.Tensor) -> None:
    """T == E is not ambiguous: the experts' axis is the one the product contracts."""

    class Square(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(
                nn.Sequential(nn.Linear(N_FEATURES, WIDTH), nn.ReLU()) for _ in range(3)
            )
            self.mixer = nn.Linear(N_FEATURES, 9)
            self.heads = nn.ModuleList(nn.Linear(WIDTH, 1) for _ in range(3))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            ex = torch.stack([b(x) for b in self.blocks], 1)
            mixed = torch.bmm(self.mixer(x).view(-1, 3, 3).softmax(-1), ex)
            return tuple(torch.sigmoid(h(mixed[:, i])).squeeze(-1) for i, h in enumerate(self.heads))

    torch.manual_seed(0)
    topo = discover_topology(Square().eval(), x[:64])
    assert [(g.task, g.part) for g in topo.gates] == [("task_0", 0), ("task_1", 1), ("task_2", 2)]


def test_causal_analyses_on_a_tasks_first_gate_module(x: torch.Tensor) -> None:
    """The cached strategy runs a module's output once for identical blocks and tiles it: along the gates'
    batch axis (1 here), not the first."""
    model = healthy(ModuleStacked)
    frame = pd.DataFrame(x.numpy(), columns=FEATURES)
    frame["task_0"] = (x[:, 0] > 0).double().numpy()
    frame["task_1"] = (x[:, 1] > 0).double().numpy()
    result = mi.inspect(
        model, frame, input_fn=lambda f: torch.tensor(f[FEATURES].to_numpy()), columns=FEATURES, causal=True
    )
    assert "causal" not in result.skipped, result.skipped
    ablation = result.causal.tables["ablation"]
    assert set(ablation["task"]) == {"task_0", "task_1"} and ablation["importance"].abs().sum() > 0


def test_collapsed_fused_gates_are_found_collapsed(x: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = FusedBmm().eval()
    with torch.no_grad():
        assert float(model.weights(x)[:, :, 1].min()) > 0.999  # planted: every gate on expert 1
    frame = pd.DataFrame(x.numpy(), columns=FEATURES)
    frame["task_0"] = (x[:, 0] > 0).double().numpy()
    frame["task_1"] = (x[:, 1] > 0).double().numpy()
    result = mi.inspect(
        model, frame, input_fn=lambda f: torch.tensor(f[FEATURES].to_numpy()), columns=FEATURES, causal=True
    )
    codes = {f.code for f in result.findings if f.severity == "critical"}
    assert {"collapsed_gate", "tasks_route_identically"} <= codes, codes
    assert result.verdict.startswith("Routing is unhealthy"), result.verdict
    # the causal analyses ran on the fused gates: only the expert every gate sits on matters
    ablation = result.causal.tables["ablation"]
    loss = ablation[ablation["metric"] == "logloss"].set_index(["mode", "expert", "task"])["importance"]
    assert set(loss.index.get_level_values("task")) == {"task_0", "task_1"}
    for (_mode, expert, _task), value in loss.items():
        assert (value != 0) == (expert == "blocks.1"), loss


def test_per_task_slices_of_a_fused_tensor_are_found(x: torch.Tensor) -> None:
    """The advice in the message holds: slicing each task's gate before the mixing makes it a gate."""
    torch.manual_seed(0)
    model = FusedSliced().eval()
    topo = discover_topology(model, x[:64])
    assert len(topo.gates) == 2 and topo.unresolved == () and topo.architecture == "mmoe"
    assert {g.task for g in topo.gates} == {"task_0", "task_1"}


def test_attention_heads_stay_gateless(x: torch.Tensor) -> None:
    """Attention scores are a product of two projections, not distributions: no false alarm."""
    torch.manual_seed(0)
    topo = discover_topology(MultiHeadAttentionBottom().eval(), x[:64])
    assert topo.gates == () and topo.unresolved == () and topo.judgeable
    assert topo.architecture == "shared_bottom"


def test_check_fails_on_collapsed_fused_gates(tmp_path: Path, x: torch.Tensor) -> None:
    """`check` on a pickled fused-gate model with every gate collapsed: exit 1 on the collapse (it passed as a
    Shared-Bottom before)."""
    script = tmp_path / "train_fused.py"
    script.write_text(
        "import torch\nfrom torch import nn\n\n"
        + f"N_FEATURES, N_EXPERTS, WIDTH, N_TASKS = {N_FEATURES}, {N_EXPERTS}, {WIDTH}, {N_TASKS}\n\n\n"
        + inspect.getsource(FusedBmm)
    )
    namespace: dict = {"__name__": "__main__"}
    exec(compile(script.read_text(), str(script), "exec"), namespace)
    main = sys.modules["__main__"]
    main.FusedBmm = namespace["FusedBmm"]  # type: ignore[attr-defined]
    try:
        torch.manual_seed(0)
        torch.save(namespace["FusedBmm"]().eval(), tmp_path / "fused.pt")
    finally:
        delattr(main, "FusedBmm")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(400, N_FEATURES)).astype("float32"), columns=FEATURES)
    frame["click"] = (rng.random(400) < 0.3).astype("float64")
    frame["like"] = (rng.random(400) < 0.1).astype("float64")
    frame.to_parquet(tmp_path / "rows.parquet", index=False)
    args = ["check", tmp_path / "fused.pt", "--data", tmp_path / "rows.parquet", "--trust-checkpoint"]
    args += ["--model-code", script]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "collapsed_gate" in text and "check failed" in text
    assert "Shared-Bottom" not in text


# ------------------------------------------------------------------------------ baddbmm, vecdot
class SigmoidBaddbmm(nn.Module):
    """Sigmoid gates (weights, not distributions), each task's mixture a `baddbmm` with a bias."""

    def __init__(self, collapsed: bool = True) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(N_FEATURES, WIDTH), nn.ReLU()) for _ in range(N_EXPERTS)
        )
        self.mixers = nn.ModuleList(nn.Linear(N_FEATURES, N_EXPERTS) for _ in range(N_TASKS))
        self.heads = nn.ModuleList(nn.Linear(WIDTH, 1) for _ in range(N_TASKS))
        self.bias = nn.Parameter(torch.zeros(1, 1, WIDTH))
        if collapsed:  # every gate: expert 1 fully on, the others off
            with torch.no_grad():
                for m in self.mixers:
                    m.weight.zero_()
                    m.bias.fill_(-40.0)
                    m.bias[1] = 40.0

    def weights(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return torch.sigmoid(self.mixers[task](x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ex = torch.stack([b(x) for b in self.blocks], 1)  # [B, E, D]
        outs = []
        for t, h in enumerate(self.heads):
            w = self.weights(x, t).unsqueeze(1)  # [B, 1, E]
            mixed = torch.baddbmm(self.bias.expand(x.shape[0], 1, WIDTH), w, ex).squeeze(1)
            outs.append(torch.sigmoid(h(mixed)).squeeze(-1))
        return tuple(outs)


class VecdotSoftmax(SigmoidBaddbmm):
    """A hand-written softmax (exp / sum), mixed by `torch.linalg.vecdot` with experts last `[B, D, E]`."""

    def weights(self, x: torch.Tensor, task: int) -> torch.Tensor:
        z = self.mixers[task](x)
        e = (z - z.amax(-1, keepdim=True)).exp()
        return e / e.sum(-1, keepdim=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ex = torch.stack([b(x) for b in self.blocks], -1)  # [B, D, E]
        return tuple(
            torch.sigmoid(h(torch.linalg.vecdot(ex, self.weights(x, t).unsqueeze(1)))).squeeze(-1)
            for t, h in enumerate(self.heads)
        )


class AddcmulLoop(SigmoidBaddbmm):
    """Softmax gates, each task's mixture accumulated expert by expert with `torch.addcmul`."""

    def weights(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return torch.softmax(self.mixers[task](x), dim=-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = [b(x) for b in self.blocks]
        preds = []
        for t, h in enumerate(self.heads):
            w = self.weights(x, t)
            acc = torch.zeros_like(outs[0])
            for i, e in enumerate(outs):
                acc = torch.addcmul(acc, w[:, i : i + 1], e)
            preds.append(torch.sigmoid(h(acc)).squeeze(-1))
        return tuple(preds)


@pytest.mark.parametrize(
    ("cls", "output"), [(SigmoidBaddbmm, "weights"), (VecdotSoftmax, "probs"), (AddcmulLoop, "logits")]
)
def test_baddbmm_and_vecdot_mixtures_are_gates(
    cls: type[SigmoidBaddbmm], output: str, x: torch.Tensor
) -> None:
    torch.manual_seed(0)
    model = cls(collapsed=False).eval()
    topo = discover_topology(model, x[:64])
    assert topo.unresolved == () and topo.architecture == "mmoe", topo.notes
    assert [(g.task, g.output, g.n_experts) for g in topo.gates] == [
        ("task_0", output, N_EXPERTS),
        ("task_1", output, N_EXPERTS),
    ]
    assert len(topo.experts) == N_EXPERTS
    # what is recorded is each task's gate, bit for bit
    with GateRecorder(model, topo) as rec, torch.inference_mode():
        model(x)
        got = rec.take().gates
    with torch.no_grad():
        for t, gate in enumerate(topo.gates):
            torch.testing.assert_close(got[gate.name], model.weights(x, t), rtol=0, atol=0)


@pytest.mark.parametrize("cls", [SigmoidBaddbmm, VecdotSoftmax, AddcmulLoop])
def test_collapsed_baddbmm_and_vecdot_gates_are_found_collapsed(
    cls: type[SigmoidBaddbmm], x: torch.Tensor
) -> None:
    torch.manual_seed(0)
    model = cls().eval()
    frame = pd.DataFrame(x.numpy(), columns=FEATURES)
    frame["t0"] = (x[:, 0] > 0).double().numpy()
    result = mi.inspect(
        model, frame, input_fn=lambda f: torch.tensor(f[FEATURES].to_numpy()), columns=FEATURES
    )
    codes = {f.code for f in result.findings if f.severity == "critical"}
    assert "collapsed_gate" in codes, [(f.code, f.severity) for f in result.findings]
    assert result.verdict.startswith("Routing is unhealthy"), result.verdict


class TwoTowerDot(nn.Module):
    """A Shared-Bottom-like model whose first task is a two-tower dot product: `(u * i).sum(-1)` or `vecdot`."""

    def __init__(self, vecdot: bool) -> None:
        super().__init__()
        self.vecdot = vecdot
        self.user = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
        self.item = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
        self.cvr = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, i = self.user(x[:, :4]), self.item(x[:, 4:])
        score = torch.linalg.vecdot(u, i) if self.vecdot else (u * i).sum(-1)
        return torch.sigmoid(score), torch.sigmoid(self.cvr(u * i)).squeeze(-1)


@pytest.mark.parametrize("vecdot", [True, False])
def test_a_dot_product_of_two_towers_is_not_a_gate(vecdot: bool, x: torch.Tensor) -> None:
    """Signed per-row weights subtract what they weight: a dot product, not a gate (it was a one-gate MoE)."""
    torch.manual_seed(0)
    topo = discover_topology(TwoTowerDot(vecdot).eval(), x[:64])
    assert topo.gates == () and topo.unresolved == () and topo.architecture == "shared_bottom", topo.notes
    assert any("negative values" in n for n in topo.notes)


def test_a_deduped_gate_with_its_batch_on_axis_1_is_tiled_along_it(x: torch.Tensor) -> None:
    """The cached strategy runs a gate module once for identical blocks; where no variant edits it, its output is
    repeated for every block along its own batch axis (an experts-first `[E, B]` gate: axis 1), not axis 0."""
    from mmoe_inspect.topology.spec import ExpertSpec, GateSpec, TaskSpec

    class ExpertsFirstGate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(N_FEATURES, N_EXPERTS)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.softmax(self.lin(x), -1).T  # [E, B]

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(nn.Linear(N_FEATURES, WIDTH) for _ in range(N_EXPERTS))
            self.gates = nn.ModuleList(
                [ExpertsFirstGate(), nn.Sequential(nn.Linear(N_FEATURES, N_EXPERTS), nn.Softmax(-1))]
            )
            self.heads = nn.ModuleList(nn.Linear(WIDTH, 1) for _ in range(N_TASKS))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            ex = torch.stack([b(x) for b in self.blocks], 0)  # [E, B, D]
            w0 = self.gates[0](x)  # [E, B]
            w1 = self.gates[1](x).T
            mixes = [torch.einsum("eb,ebd->bd", w, ex) for w in (w0, w1)]
            return tuple(torch.sigmoid(h(m)).squeeze(-1) for h, m in zip(self.heads, mixes, strict=True))

    torch.manual_seed(0)
    model = Model().eval()
    names = tuple(f"blocks.{i}" for i in range(N_EXPERTS))
    topo = Topology(
        tasks=(TaskSpec("task_0"), TaskSpec("task_1")),
        experts=tuple(ExpertSpec(n, module=n) for n in names),
        gates=(
            GateSpec("task_0", module="gates.0", experts=names, task="task_0", dim=0, batch_dim=1),
            GateSpec("task_1", module="gates.1", experts=names, task="task_1"),
        ),
    )
    variants = [{}, {"task_1": Ablate((True, False, True, True))}]  # gate task_0 is not edited
    b = x.shape[0]
    outs = []
    for dedupe in (False, True):
        with GateIntervention(model, topo, dedupe=dedupe) as iv, torch.inference_mode():
            iv.plan(variants, block_rows=b)
            outs.append(model(repeat_rows(x, len(variants))))
    for plain, deduped in zip(*outs, strict=True):
        torch.testing.assert_close(deduped, plain, rtol=0, atol=0)
