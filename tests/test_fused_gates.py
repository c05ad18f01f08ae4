"""Gates discovery once missed: fused gates, and gates mixed by `baddbmm` or `torch.linalg.vecdot`.

Fused gates: one tensor `[B, T, E]` holding the gates of T tasks, mixed with the experts in one op.

A common vectorised MMoE writes every task's gate as ONE `Linear(d, T * E)` viewed `[B, T, E]`,
softmaxed, and mixes all tasks at once (`bmm` with the stacked experts `[B, E, D]`, or an `einsum`).
Gates are read as one `[batch, E]` tensor each, so these are not recorded; before, discovery called
such a model a Shared-Bottom and `check` passed it even with every gate collapsed (the worst thing
this tool can do). Now they are an unresolved item: the routing cannot be judged (exit 4), and the
message says how to make them readable (per-task slices before the mixing, which are found).
Attention scores (a product of two projections) and multi-head attention stay what they were.

Per-task gates mixed by `torch.baddbmm` (a bias added in the product) or `torch.linalg.vecdot` were not
mixtures to discovery either: with sigmoid gates nothing else flagged them, so a collapsed model passed
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
from mmoe_inspect.cli.main import app
from mmoe_inspect.recording.recorder import GateRecorder
from mmoe_inspect.topology.discovery import NO_GATES_NOTE, discover_topology

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


@pytest.mark.parametrize(
    ("cls", "shape", "op"),
    [
        (FusedBmm, [64, 2, 4], "bmm"),
        (FusedEinsum, [64, 2, 4], "einsum"),
        (StackedTaskGates, [2, 64, 4], "einsum"),
    ],
)
def test_fused_gates_are_unresolved_not_a_shared_bottom(
    cls: type[nn.Module], shape: list[int], op: str, x: torch.Tensor
) -> None:
    torch.manual_seed(0)
    topo = discover_topology(cls().eval(), x[:64])
    assert topo.gates == () and not topo.judgeable and topo.architecture is None
    assert NO_GATES_NOTE not in topo.notes
    fused = [u for u in topo.unresolved if u.what.startswith("2 gates in one tensor")]
    assert len(fused) == 1, [u.what for u in topo.unresolved]
    assert f"{shape}" in fused[0].what and f"4 experts in one {op}" in fused[0].what
    assert "w[:, t]" in fused[0].reason


def test_collapsed_fused_gates_do_not_pass(x: torch.Tensor) -> None:
    """The verdict says the routing could not be verified, never that there is nothing to route."""
    torch.manual_seed(0)
    model = FusedBmm().eval()
    with torch.no_grad():
        assert float(model.weights(x)[:, :, 1].min()) > 0.999  # planted: every gate on expert 1
    frame = pd.DataFrame(x.numpy(), columns=FEATURES)
    frame["t0"] = (x[:, 0] > 0).double().numpy()
    frame["t1"] = (x[:, 1] > 0).double().numpy()
    result = mi.inspect(
        model, frame, input_fn=lambda f: torch.tensor(f[FEATURES].to_numpy()), columns=FEATURES
    )
    assert result.verdict.startswith("Could not verify the routing"), result.verdict
    assert result.worst_severity() == "critical"


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


def test_check_exits_cannot_judge_on_fused_gates(tmp_path: Path, x: torch.Tensor) -> None:
    """`check` on a pickled fused-gate model with every gate collapsed: exit 4, not "check passed"; `summary`
    does not call it a Shared-Bottom."""
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
    assert result.exit_code == 4, result.output
    text = " ".join(result.output.split())
    assert "CANNOT JUDGE" in text and "2 gates in one tensor" in text
    assert "check passed" not in text and "Shared-Bottom" not in text
    # `summary` under its headline: no gates recorded, and why; never "a Shared-Bottom routes nothing"
    args[0] = "summary"
    result = CliRunner().invoke(app, [str(a) for a in args])
    text = " ".join(result.output.split())
    assert result.exit_code == 0 and "No gates recorded: no gate could be resolved" in text, result.output
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


@pytest.mark.parametrize(("cls", "output"), [(SigmoidBaddbmm, "weights"), (VecdotSoftmax, "probs")])
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


@pytest.mark.parametrize("cls", [SigmoidBaddbmm, VecdotSoftmax])
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
