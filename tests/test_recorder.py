"""GateRecorder: captures the right gates, copies (never views), and leaves the model exactly as found."""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

from mmoe_inspect.binding import task_predictions
from mmoe_inspect.models import PLE, MMoE
from mmoe_inspect.recording.recorder import GateRecorder, RecordingError, gate_probabilities
from mmoe_inspect.topology.spec import ExpertSpec, GateSpec, TaskSpec, Topology, TopologyError


def model_fingerprint(model: nn.Module) -> dict:
    """Hashes of every parameter, buffer and grad, every module's mode, and every hook dict's size."""
    h = hashlib.sha256()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    grads = {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}
    return {
        "hash": h.hexdigest(),
        "grads": {
            n: (None if g is None else hashlib.sha256(g.numpy().tobytes()).hexdigest())
            for n, g in grads.items()
        },
        "modes": [(n, m.training) for n, m in model.named_modules()],
        "hooks": [
            (n, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for n, m in model.named_modules()
        ],
    }


@pytest.fixture
def mmoe() -> MMoE:
    torch.manual_seed(0)
    return MMoE(6, ["click", "like"], n_experts=4, expert_hidden=(8,), tower_hidden=(4,))


def test_captures_each_gate_as_probabilities(mmoe: MMoE) -> None:
    x = torch.randn(32, 6)
    topo = mmoe.topology()
    with GateRecorder(mmoe, topo, experts=True) as rec, torch.inference_mode():
        mmoe(x)
        cap = rec.take()
    assert set(cap.gates) == {"click", "like"}
    for g in cap.gates.values():
        assert g.shape == (32, 4)
        torch.testing.assert_close(g.sum(1), torch.ones(32))
    # the gate module's own output, computed independently
    expected = mmoe.get_submodule(topo.gate("click").module)(mmoe.inputs(x)).detach()
    torch.testing.assert_close(cap.gates["click"], expected)
    assert set(cap.experts) == {e.name for e in topo.experts}
    assert cap.experts["e0"].shape == (32, 8)


def test_model_untouched_and_modes_restored(mmoe: MMoE) -> None:
    x = torch.randn(16, 6)
    # a real gradient on the model before inspection must survive it bit for bit
    sum(v.sum() for v in mmoe(x).values()).backward()
    mmoe.train()
    mmoe.towers[0].eval()  # a mixed-mode model: each module's own flag must come back
    before = model_fingerprint(mmoe)
    with GateRecorder(mmoe, mmoe.topology(), experts=True) as rec, torch.inference_mode():
        assert not mmoe.training  # recording runs in eval mode
        mmoe(x)
        rec.take()
    assert model_fingerprint(mmoe) == before


def test_hooks_removed_when_forward_raises(mmoe: MMoE) -> None:
    before = model_fingerprint(mmoe)

    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    original = mmoe.towers[1]
    mmoe.towers[1] = Boom()
    try:
        with (
            pytest.raises(RuntimeError, match="boom"),
            GateRecorder(mmoe, mmoe.topology(), experts=True),
            torch.inference_mode(),
        ):
            mmoe(torch.randn(4, 6))
    finally:
        mmoe.towers[1] = original
    assert model_fingerprint(mmoe) == before


def test_in_place_change_after_hook_does_not_leak() -> None:
    """A parent that edits the gate output in place after the hook must not alter what was recorded."""

    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gate = nn.Sequential(nn.Linear(3, 2), nn.Softmax(dim=1))
            self.experts = nn.ModuleList(nn.Linear(3, 2) for _ in range(2))

        def forward(self, x):
            g = self.gate(x)
            snapshot = g.clone()
            g.mul_(0.0)  # the model's business: the recorder must have copied already
            stacked = torch.stack([e(x) for e in self.experts], 1)
            return {"t": (snapshot.unsqueeze(-1) * stacked).sum((1, 2))}, snapshot

    model = InPlace()
    topo = Topology(
        tasks=(TaskSpec("t", "regression"),),
        experts=(ExpertSpec("a", "experts.0"), ExpertSpec("b", "experts.1")),
        gates=(GateSpec("t", "gate", ("a", "b"), task="t"),),
    )
    with GateRecorder(model, topo) as rec, torch.inference_mode():
        _, snapshot = model(torch.randn(5, 3))
        cap = rec.take()
    torch.testing.assert_close(cap.gates["t"], snapshot)


def test_logit_gates_and_gate_shape_b_e_1() -> None:
    spec = GateSpec("g", "m", ("a", "b", "c"), output="logits", dim=1)
    logits = torch.randn(4, 3, 1)
    probs = gate_probabilities(logits, spec)
    torch.testing.assert_close(probs, torch.softmax(logits.squeeze(-1), dim=1))
    with pytest.raises(RecordingError, match="expected 3 experts"):
        gate_probabilities(torch.randn(4, 5), spec)


def test_module_called_twice_needs_call_index() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.logits = nn.ModuleList(nn.Linear(3, 2) for _ in range(2))
            self.softmax = nn.Softmax(dim=1)  # one module applied to every task's logits
            self.experts = nn.ModuleList(nn.Linear(3, 4) for _ in range(2))

        def forward(self, x):
            stacked = torch.stack([e(x) for e in self.experts], 1)
            return {
                f"t{i}": (self.softmax(lin(x)).unsqueeze(-1) * stacked).sum((1, 2))
                for i, lin in enumerate(self.logits)
            }

    model = Twice()
    experts = (ExpertSpec("a", "experts.0"), ExpertSpec("b", "experts.1"))
    tasks = (TaskSpec("t0", "regression"), TaskSpec("t1", "regression"))
    ambiguous = Topology(
        tasks=tasks, experts=experts, gates=(GateSpec("t0", "softmax", ("a", "b"), task="t0"),)
    )
    with (
        pytest.raises(RecordingError, match="more than once"),
        GateRecorder(model, ambiguous),
        torch.inference_mode(),
    ):
        model(torch.randn(3, 3))
    explicit = Topology(
        tasks=tasks,
        experts=experts,
        gates=(
            GateSpec("t0", "softmax", ("a", "b"), task="t0", call=0),
            GateSpec("t1", "softmax", ("a", "b"), task="t1", call=1),
        ),
    )
    x = torch.randn(3, 3)
    with GateRecorder(model, explicit) as rec, torch.inference_mode():
        model(x)
        cap = rec.take()
    torch.testing.assert_close(cap.gates["t1"], torch.softmax(model.logits[1](x), 1))


def test_wrong_module_path_is_a_clear_error(mmoe: MMoE) -> None:
    topo = mmoe.topology()
    bad = Topology(
        tasks=topo.tasks,
        experts=topo.experts,
        gates=(GateSpec("click", "gates.9", topo.gates[0].experts, task="click"),),
    )
    with pytest.raises(TopologyError, match=r"gates\.9"):
        GateRecorder(mmoe, bad)


def test_missing_gate_output_fails_loudly(mmoe: MMoE) -> None:
    with GateRecorder(mmoe, mmoe.topology()) as rec, pytest.raises(RecordingError, match="never produced"):
        rec.take()  # no forward ran


def test_ple_levels_recorded() -> None:
    torch.manual_seed(0)
    model = PLE(5, ["a", "b"], n_experts=2, n_specific=1, n_levels=2, expert_hidden=(8,), tower_hidden=(4,))
    topo = model.topology()
    with GateRecorder(model, topo, experts=True) as rec, torch.inference_mode():
        model(torch.randn(10, 5))
        cap = rec.take()
    assert set(cap.gates) == {g.name for g in topo.gates}
    for g in topo.gates:
        assert cap.gates[g.name].shape == (10, g.n_experts)


@pytest.mark.parametrize("grad", [False, True])
def test_sampled_expert_rows_are_copies_taken_before_in_place_edits(grad: bool) -> None:
    """With `expert_rows`, each expert hook keeps a copy of those rows only: float32, detached (also
    when the forward runs with autograd on), unchanged by the model's in-place edits after the hook
    (here ReLU(inplace=True) and a multiply on the expert outputs)."""

    class InPlaceExperts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gate = nn.Sequential(nn.Linear(3, 2), nn.Softmax(dim=1))
            self.experts = nn.ModuleList(nn.Linear(3, 4) for _ in range(2))
            self.act = nn.ReLU(inplace=True)

        def forward(self, x):
            outs = [e(x) for e in self.experts]
            snapshot = [o.detach().clone() for o in outs]
            for o in outs:
                self.act(o).mul_(3.0)
            mixed = torch.stack(outs, 1) * self.gate(x).unsqueeze(-1)
            return {"t": mixed.sum((1, 2))}, snapshot

    torch.manual_seed(0)
    model = InPlaceExperts()
    topo = Topology(
        tasks=(TaskSpec("t", "regression"),),
        experts=(ExpertSpec("a", "experts.0"), ExpertSpec("b", "experts.1")),
        gates=(GateSpec("t", "gate", ("a", "b"), task="t"),),
    )
    rows = torch.tensor([5, 0, 7], dtype=torch.int64)
    x = torch.randn(9, 3)
    with GateRecorder(model, topo, experts=True) as rec, torch.inference_mode(not grad):
        rec.expert_rows = rows
        _, snapshot = model(x)
        cap = rec.take()
    for name, full in zip(("a", "b"), snapshot, strict=True):
        got = cap.experts[name]
        assert got.dtype == torch.float32 and not got.requires_grad and got.shape == (3, 4)
        torch.testing.assert_close(got, full[rows])
    assert not cap.gates["t"].requires_grad


def test_task_predictions_from_each_output_layout() -> None:
    """`[batch]`, `[batch, 1]`, float64, autograd-tracked outputs, and a `[batch, T]` tensor: a fresh
    detached float32 `[batch, T]` in task order."""
    tasks = (TaskSpec("a", "binary"), TaskSpec("b", "regression"))
    a = torch.rand(5, requires_grad=True)
    b = torch.randn(5, 1, dtype=torch.float64)
    for out in ({"b": b, "a": a}, [a, b], torch.stack([a, b[:, 0].float()], 1)):
        pred = task_predictions(out, tasks)
        assert pred.dtype == torch.float32 and pred.shape == (5, 2) and not pred.requires_grad
        torch.testing.assert_close(pred, torch.stack([a.detach(), b[:, 0].float()], 1))
    pred.zero_()  # a copy: the model's outputs are untouched
    assert float(a.detach().abs().sum()) > 0
