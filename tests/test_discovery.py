"""Topology discovery on real library models, planted models and our reference models.

Also: the model is left exactly as found (parameters, buffers, `.grad`, training flags, hooks),
also when its forward raises; `validate_topology`; and the planted behaviours are what they claim.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from mmoe_inspect.testing.planted import (
    DEAD_LOGIT,
    AttentionMMoE,
    EinsumMMoE,
    PlantedMMoE,
    PlantedOMoE,
    PlantedSharedBottom,
    SharedSoftmaxMMoE,
)
from mmoe_inspect.topology.discovery import NO_GATES_NOTE, discover_topology, validate_topology
from mmoe_inspect.topology.spec import GateSpec, Topology, TopologyError

BATCH = 64


# ----------------------------------------------------------------------------- helpers
def gate_table(topo: Topology) -> dict[str, tuple]:
    """module -> (experts' module/index, task, level, output, dim, call): what a recorder needs."""
    return {
        g.module if g.call is None else f"{g.module}#{g.call}": (
            tuple((topo.expert(e).module, topo.expert(e).index) for e in g.experts),
            g.task,
            g.level,
            g.output,
            g.dim,
        )
        for g in topo.gates
    }


def fingerprint(model: nn.Module) -> dict[str, object]:
    """Hashes of every parameter, buffer and `.grad`, every training flag, every hook dict."""

    def digest(t: torch.Tensor | None) -> str | None:
        if t is None:
            return None
        return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()

    return {
        "params": {n: digest(p) for n, p in model.named_parameters()},
        "grads": {n: digest(p.grad) for n, p in model.named_parameters()},
        "buffers": {n: digest(b) for n, b in model.named_buffers()},
        "training": {n: m.training for n, m in model.named_modules()},
        "hooks": {
            n: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for n, m in model.named_modules()
        },
    }


def no_hooks(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules()
    )


# --------------------------------------------------------------------------- torch-rechub
@pytest.fixture(scope="module")
def rechub():
    from torch_rechub.basic.features import DenseFeature, SparseFeature
    from torch_rechub.models import multi_task

    feats = [
        SparseFeature("city", 12, embed_dim=4),
        SparseFeature("item", 9, embed_dim=4),
        DenseFeature("age"),
    ]
    gen = torch.Generator().manual_seed(0)
    x = {
        "city": torch.randint(0, 12, (BATCH,), generator=gen),
        "item": torch.randint(0, 9, (BATCH,), generator=gen),
        "age": torch.randn(BATCH, generator=gen),
    }
    return multi_task, feats, x


def test_rechub_mmoe(rechub):
    mt, feats, x = rechub
    torch.manual_seed(0)
    model = mt.MMOE(feats, ["classification", "regression"], 3, {"dims": [8]}, [{"dims": [4]}, {"dims": [4]}])
    topo = discover_topology(model, x, task_names=["ctr", "watch"])
    experts = tuple((f"experts.{i}", None) for i in range(3))
    assert gate_table(topo) == {
        "gates.0": (experts, "ctr", 0, "probs", 1),
        "gates.1": (experts, "watch", 0, "probs", 1),
    }
    assert [g.name for g in topo.gates] == ["ctr", "watch"]
    assert [(t.name, t.kind, t.output, t.probability) for t in topo.tasks] == [
        ("ctr", "binary", 0, True),
        ("watch", "regression", 1, False),
    ]
    assert topo.source == "discovered" and topo.architecture == "mmoe"
    assert topo.confidence == 1.0
    assert all(e.owner == "shared" and e.level == 0 for e in topo.experts)


def test_rechub_ple_two_levels(rechub):
    mt, feats, x = rechub
    torch.manual_seed(0)
    model = mt.PLE(feats, ["classification", "classification"], 2, 2, 1, {"dims": [8]}, [{"dims": [4]}] * 2)
    topo = discover_topology(model, x, task_names=["ctr", "cvr"])

    def ex(level: int, specific: list[int], shared: list[int]) -> tuple:
        return tuple((f"cgc_layers.{level}.experts_specific.{i}", None) for i in specific) + tuple(
            (f"cgc_layers.{level}.experts_shared.{i}", None) for i in shared
        )

    assert gate_table(topo) == {
        "cgc_layers.0.gates_specific.0": (ex(0, [0, 1], [0]), "ctr", 0, "probs", 1),
        "cgc_layers.0.gates_specific.1": (ex(0, [2, 3], [0]), "cvr", 0, "probs", 1),
        "cgc_layers.0.gate_shared": (ex(0, [0, 1, 2, 3], [0]), None, 0, "probs", 1),
        "cgc_layers.1.gates_specific.0": (ex(1, [0, 1], [0]), "ctr", 1, "probs", 1),
        "cgc_layers.1.gates_specific.1": (ex(1, [2, 3], [0]), "cvr", 1, "probs", 1),
    }
    assert [g.name for g in topo.gates] == ["L0.ctr", "L0.cvr", "L0.shared", "L1.ctr", "L1.cvr"]
    owners = {e.module: (e.owner, e.level) for e in topo.experts}
    assert owners["cgc_layers.0.experts_specific.1"] == ("ctr", 0)
    assert owners["cgc_layers.1.experts_specific.2"] == ("cvr", 1)
    assert owners["cgc_layers.1.experts_shared.0"] == ("shared", 1)
    assert topo.architecture == "ple" and topo.levels == (0, 1) and topo.confidence == 1.0
    assert {t: g.module for t, g in topo.final_task_gates().items()} == {
        "ctr": "cgc_layers.1.gates_specific.0",
        "cvr": "cgc_layers.1.gates_specific.1",
    }


def test_rechub_ple_three_levels_assigns_lower_task_gates(rechub):
    """On 3 levels a level-0 task gate reaches every task through the level-1 shared gate."""
    mt, feats, x = rechub
    torch.manual_seed(0)
    model = mt.PLE(feats, ["classification", "classification"], 3, 1, 1, {"dims": [8]}, [{"dims": [4]}] * 2)
    topo = discover_topology(model, x, task_names=["ctr", "cvr"])
    by_name = {g.name: (g.module, g.task) for g in topo.gates}
    assert by_name["L0.ctr"] == ("cgc_layers.0.gates_specific.0", "ctr")
    assert by_name["L1.shared"] == ("cgc_layers.1.gate_shared", None)
    assert by_name["L2.cvr"] == ("cgc_layers.2.gates_specific.1", "cvr")
    assert len(topo.gates) == 8
    assert any("reaches several tasks only through shared gates" in n for n in topo.notes)


def test_rechub_shared_bottom_has_no_gates(rechub):
    mt, feats, x = rechub
    model = mt.SharedBottom(feats, ["classification", "classification"], {"dims": [8]}, [{"dims": [4]}] * 2)
    topo = discover_topology(model, x)
    assert topo.gates == () and topo.experts == ()
    assert topo.notes[0] == NO_GATES_NOTE
    assert topo.architecture == "shared_bottom"
    assert topo.task_names == ("task_0", "task_1")
    assert any("task names not given" in n for n in topo.notes)


# -------------------------------------------------------------------------- DeepCTR-Torch
@pytest.fixture(scope="module")
def deepctr():
    from deepctr_torch.inputs import DenseFeat, SparseFeat
    from deepctr_torch.models import multitask

    feats = [
        SparseFeat("city", 12, embedding_dim=4),
        SparseFeat("item", 9, embedding_dim=4),
        DenseFeat("age", 1),
    ]

    def inputs(model: nn.Module) -> torch.Tensor:
        gen = torch.Generator().manual_seed(0)
        cols = []
        for name in model.feature_index:
            if name == "age":
                cols.append(torch.randn(BATCH, 1, generator=gen))
            else:
                cols.append(torch.randint(0, 9, (BATCH, 1), generator=gen).float())
        return torch.cat(cols, dim=1)

    return multitask, feats, inputs


@pytest.mark.parametrize("gate_hidden", [(), (6,)], ids=["linear-gate", "dnn-gate"])
def test_deepctr_mmoe(deepctr, gate_hidden):
    mt, feats, inputs = deepctr
    model = mt.MMOE(
        feats,
        num_experts=3,
        expert_dnn_hidden_units=(8,),
        gate_dnn_hidden_units=gate_hidden,
        tower_dnn_hidden_units=(4,),
        task_types=("binary", "regression"),
        task_names=("ctr", "duration"),
    )
    topo = discover_topology(model, inputs(model))
    experts = tuple((f"expert_dnn.{i}", None) for i in range(3))
    assert gate_table(topo) == {
        "gate_dnn_final_layer.0": (experts, "ctr", 0, "logits", 1),
        "gate_dnn_final_layer.1": (experts, "duration", 0, "logits", 1),
    }
    # DeepCTR-Torch keeps no task_types: the final sigmoid tells binary from regression
    assert [(t.name, t.kind, t.output) for t in topo.tasks] == [
        ("ctr", "binary", 0),
        ("duration", "regression", 1),
    ]
    assert topo.confidence == 1.0


def test_deepctr_ple_reads_sizes_from_the_forward(deepctr):
    """DeepCTR-Torch's PLE builds shared experts with the specific count; only the used ones count."""
    mt, feats, inputs = deepctr
    model = mt.PLE(
        feats,
        shared_expert_num=1,
        specific_expert_num=2,
        num_levels=2,
        expert_dnn_hidden_units=(8,),
        gate_dnn_hidden_units=(6,),
        tower_dnn_hidden_units=(4,),
    )
    assert len(model.shared_experts[0][0]) == 2  # the library bug: 2 built, 1 used
    topo = discover_topology(model, inputs(model))

    def ex(level: int, specific: list[tuple[int, int]]) -> tuple:
        own = [(f"specific_experts.{level}.{t}.{k}", None) for t, k in specific]
        return (*own, (f"shared_experts.{level}.0.0", None))

    assert gate_table(topo) == {
        "specific_gate_dnn_final_layer.0.0": (ex(0, [(0, 0), (0, 1)]), "ctr", 0, "logits", 1),
        "specific_gate_dnn_final_layer.0.1": (ex(0, [(1, 0), (1, 1)]), "ctcvr", 0, "logits", 1),
        "shared_gate_dnn_final_layer.0": (ex(0, [(0, 0), (0, 1), (1, 0), (1, 1)]), None, 0, "logits", 1),
        "specific_gate_dnn_final_layer.1.0": (ex(1, [(0, 0), (0, 1)]), "ctr", 1, "logits", 1),
        "specific_gate_dnn_final_layer.1.1": (ex(1, [(1, 0), (1, 1)]), "ctcvr", 1, "logits", 1),
        "shared_gate_dnn_final_layer.1": (ex(1, [(0, 0), (0, 1), (1, 0), (1, 1)]), None, 1, "logits", 1),
    }
    assert "shared_experts.0.0.1" not in {e.module for e in topo.experts}
    # the last level's shared gate is computed but its mixture is never used
    assert any("reaches no task output" in n and "L1.shared" in n for n in topo.notes)
    assert topo.confidence < 1.0


def test_deepctr_ple_library_bug_raises_cleanly(deepctr):
    """More shared than specific experts: DeepCTR-Torch's own forward fails with an IndexError."""
    mt, feats, inputs = deepctr
    model = mt.PLE(feats, shared_expert_num=2, specific_expert_num=1, expert_dnn_hidden_units=(8,))
    before = fingerprint(model)
    with pytest.raises(TopologyError, match=r"could not run the model.*IndexError"):
        discover_topology(model, inputs(model))
    assert fingerprint(model) == before


def test_deepctr_shared_bottom_has_no_gates(deepctr):
    mt, feats, inputs = deepctr
    model = mt.SharedBottom(feats, bottom_dnn_hidden_units=(8,), tower_dnn_hidden_units=(4,))
    topo = discover_topology(model, inputs(model))
    assert topo.gates == () and NO_GATES_NOTE in topo.notes
    assert topo.task_names == ("ctr", "ctcvr")  # from model.task_names


# ---------------------------------------------------------------------- planted models
PLANTED = [
    pytest.param(lambda: EinsumMMoE(), id="einsum-inline"),
    pytest.param(lambda: EinsumMMoE(expert_bank=True), id="einsum-bank"),
    pytest.param(lambda: SharedSoftmaxMMoE(), id="shared-softmax"),
    pytest.param(lambda: SharedSoftmaxMMoE(per_task_logits=False), id="shared-softmax-and-linear"),
    pytest.param(lambda: AttentionMMoE(), id="attention"),
    pytest.param(
        lambda: PlantedMMoE(
            gate_modes={"ctr": "specialized", "cvr": "copy:ctr"},
            task_types=["binary", "regression"],
            dead_experts=[3],
        ),
        id="planted",
    ),
    pytest.param(lambda: PlantedOMoE(), id="omoe"),
    pytest.param(lambda: PlantedSharedBottom(), id="shared-bottom"),
]


@pytest.mark.parametrize("make", PLANTED)
def test_planted_models_match_their_declared_topology(make):
    model = make()
    topo = discover_topology(model, model.example_input(BATCH))
    declared = model.topology()
    assert topo.tasks == declared.tasks
    assert topo.experts == declared.experts
    strip = [replace(g, name="") for g in topo.gates]
    assert strip == [replace(g, name="") for g in declared.gates]
    assert [g.name for g in topo.gates] == [g.name for g in declared.gates]
    assert topo.architecture == declared.architecture
    validate_topology(model, topo)


def test_einsum_inline_experts_lower_confidence():
    model = EinsumMMoE()
    topo = discover_topology(model, model.example_input())
    assert [e.name for e in topo.experts] == [f"moe.expert[{i}]" for i in range(4)]
    assert all(e.module is None for e in topo.experts)
    assert 0.5 <= topo.confidence < 1.0
    assert any("computed inline" in n for n in topo.notes)
    assert all(g.output == "logits" and g.dim == 1 for g in topo.gates)


def test_expert_bank_module_gives_indexed_experts():
    model = EinsumMMoE(expert_bank=True)
    topo = discover_topology(model, model.example_input())
    assert [(e.module, e.index) for e in topo.experts] == [("moe.bank", i) for i in range(4)]
    assert topo.confidence == 1.0


def test_shared_softmax_module_traced_to_per_task_logits():
    model = SharedSoftmaxMMoE(n_tasks=3)
    topo = discover_topology(model, model.example_input(), task_names=["a", "b", "c"])
    assert [(g.module, g.output, g.call, g.task) for g in topo.gates] == [
        (f"gate_logits.{i}", "logits", None, t) for i, t in enumerate("abc")
    ]
    assert any("softmax module softmax runs 3 times" in n for n in topo.notes)


def test_module_called_several_times_is_pinned_by_call_index():
    model = SharedSoftmaxMMoE(per_task_logits=False)
    topo = discover_topology(model, model.example_input())
    assert [(g.module, g.output, g.call) for g in topo.gates] == [
        ("softmax", "probs", 0),
        ("softmax", "probs", 1),
    ]
    assert topo.confidence < 0.9
    assert any("runs 2 times per forward; this gate is its call 1" in n for n in topo.notes)


def test_softmaxes_that_are_not_gates_are_not_gates():
    model = AttentionMMoE()
    topo = discover_topology(model, model.example_input())
    assert [g.module for g in topo.gates] == ["gates.ctr", "gates.cvr"]
    assert topo.task_names == ("ctr", "cvr")  # the "topic" distribution is no task
    assert any("embedding lookups (embeddings.0): attention over features" in n for n in topo.notes)
    assert any("3 softmax outputs are not gates" in n for n in topo.notes)
    assert any("[64, 6] in the model's forward (re-weights values" in n for n in topo.notes)
    assert any("[64, 4] in the model's forward (an output distribution)" in n for n in topo.notes)
    assert any("'topic'" in n for n in topo.notes)
    assert topo.unresolved == ()


def test_omoe_gate_with_trailing_axis():
    model = PlantedOMoE()
    topo = discover_topology(model, model.example_input())
    (gate,) = topo.gates
    assert (gate.name, gate.module, gate.task, gate.output, gate.dim) == ("shared", "gate", None, "probs", 1)
    assert topo.architecture == "omoe"


def test_selection_of_experts_by_slicing_and_unbind():
    """Hand-written CGC-like wiring: gates over slices / picks of one stacked expert tensor."""

    class Picky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.experts = nn.ModuleList(nn.Linear(5, 4) for _ in range(4))
            self.g1, self.g2, self.g3 = nn.Linear(5, 2), nn.Linear(5, 3), nn.Linear(5, 2)
            self.heads = nn.ModuleList(nn.Linear(4, 1) for _ in range(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            st = torch.stack([e(x) for e in self.experts], dim=1)
            a = (torch.softmax(self.g1(x), 1).unsqueeze(-1) * st[:, :2]).sum(1)
            b = torch.einsum("be,bed->bd", torch.softmax(self.g2(x), -1), st[:, [1, 2, 3]])
            parts = st.unbind(1)
            pair = torch.stack([parts[3], parts[0]], dim=1)
            c = torch.bmm(torch.softmax(self.g3(x), 1).unsqueeze(1), pair).squeeze(1)
            return torch.cat([torch.sigmoid(h(m)) for h, m in zip(self.heads, (a, b, c), strict=True)], dim=1)

    torch.manual_seed(0)
    topo = discover_topology(Picky(), torch.randn(BATCH, 5), task_names=["a", "b", "c"])
    assert [(g.module, g.experts) for g in topo.gates] == [
        ("g1", ("experts.0", "experts.1")),
        ("g2", ("experts.1", "experts.2", "experts.3")),
        ("g3", ("experts.3", "experts.0")),
    ]
    assert topo.expert("experts.2").owner == "b"
    assert topo.expert("experts.0").owner == "shared"


def test_temperature_softmax_is_a_function_level_gate():
    """A softmax over `logits / tau` computed inline is no module's output: it is read at the function level."""

    class Tempered(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.experts = nn.ModuleList(nn.Linear(5, 4) for _ in range(3))
            self.gate = nn.Linear(5, 3)
            self.head = nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            st = torch.stack([e(x) for e in self.experts], dim=1)
            g = torch.softmax(self.gate(x) / 0.5, dim=1)
            return torch.sigmoid(self.head(torch.bmm(g.unsqueeze(1), st).squeeze(1)))

    torch.manual_seed(0)
    topo = discover_topology(Tempered(), torch.randn(BATCH, 5))
    (gate,) = topo.gates
    assert (gate.module, gate.op, gate.occurrence, gate.arg, gate.output, gate.dim, gate.batch_dim) == (
        "",
        "softmax",
        0,
        -1,
        "probs",
        1,
        0,
    )
    assert gate.experts == ("experts.0", "experts.1", "experts.2") and gate.task == "task_0"
    assert topo.unresolved == () and topo.judgeable and topo.architecture == "mmoe"  # one task, its own gate
    assert any("read at the function level" in n for n in topo.notes)


# ------------------------------------------------------------------- reference models
def test_reference_models_agree_with_their_declared_topology():
    from mmoe_inspect import models

    tasks = ["ctr", ("watch", "regression")]
    for cls in (models.MMoE, models.OMoE, models.PLE, models.CGC, models.SharedBottom):
        torch.manual_seed(0)
        model = cls(6, tasks)
        x = torch.randn(BATCH, 6)
        topo = discover_topology(model, x)
        declared = model.topology()

        def modules(t: Topology, g: GateSpec) -> tuple:
            return tuple((t.expert(e).module, t.expert(e).index) for e in g.experts)

        got = {(g.module, g.call): (modules(topo, g), g.task, g.level, g.output) for g in topo.gates}
        want = {(g.module, g.call): (modules(declared, g), g.task, g.level, g.output) for g in declared.gates}
        assert got == want, cls.__name__
        assert [(t.name, t.kind) for t in topo.tasks] == [(t.name, t.kind) for t in declared.tasks]
        assert topo.architecture == declared.architecture
        owners = {e.module: (e.owner, e.level) for e in topo.experts}
        assert owners == {e.module: (e.owner, e.level) for e in declared.experts}, cls.__name__


# -------------------------------------------------------------------- model untouched
def _mixed_mode_rechub(rechub):
    mt, feats, x = rechub
    torch.manual_seed(1)
    model = mt.MMOE(feats, ["classification", "classification"], 2, {"dims": [8]}, [{"dims": [4]}] * 2)
    model.train()
    model.towers[1].eval()  # mixed flags must come back exactly
    model.gates[0].register_forward_hook(lambda module, args, out: None)  # the user's own hook stays
    # some .grad set, some None
    first = next(model.parameters())
    first.grad = torch.full_like(first, 0.5)
    # running stats that differ from init, so an accidental train-mode forward would show
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.add_(0.3)
    return model, x


def test_model_left_untouched(rechub):
    model, x = _mixed_mode_rechub(rechub)
    before = fingerprint(model)
    topo = discover_topology(model, x)
    assert topo.has_gates
    assert fingerprint(model) == before
    assert len(model.gates[0]._forward_hooks) == 1
    assert model.training and not model.towers[1].training and model.gates[0].training


def test_model_left_untouched_when_forward_raises(rechub):
    model, x = _mixed_mode_rechub(rechub)
    before = fingerprint(model)
    missing = {k: v for k, v in x.items() if k != "item"}
    with pytest.raises(TopologyError, match="could not run the model on the example input: KeyError"):
        discover_topology(model, missing)
    assert fingerprint(model) == before  # includes every module's hook counts


def test_model_left_untouched_when_a_submodule_raises():
    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom inside an expert")

    model = PlantedMMoE()
    model.experts[2] = Boom()
    model.train()
    before = fingerprint(model)
    with pytest.raises(TopologyError, match="boom inside an expert"):
        discover_topology(model, model.example_input())
    assert fingerprint(model) == before
    assert no_hooks(model)


def test_discovery_works_under_no_grad_and_inference_mode():
    model = PlantedMMoE()
    x = model.example_input()
    with torch.no_grad():
        a = discover_topology(model, x)
    with torch.inference_mode():
        b = discover_topology(model, model.example_input())
    assert a == b
    assert [g.task for g in a.gates] == ["ctr", "cvr"]


def test_global_rng_untouched_by_planted_models():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    PlantedMMoE(gate_modes={"ctr": "polarized"}, seed=7)
    assert torch.equal(torch.get_rng_state(), state)


# -------------------------------------------------------------- task arguments, validation
def test_task_kinds_and_names_arguments():
    model = PlantedMMoE(task_types=["binary", "regression"])
    x = model.example_input()
    topo = discover_topology(
        model, x, task_names=["click", "dwell"], task_kinds={"click": "binary", "dwell": "binary"}
    )
    assert [(t.name, t.kind) for t in topo.tasks] == [("click", "binary"), ("dwell", "binary")]
    assert [g.task for g in topo.gates] == ["click", "dwell"]
    with pytest.raises(TopologyError, match="task_names has 3 names but the model output holds 2 tasks"):
        discover_topology(model, x, task_names=["a", "b", "c"])
    with pytest.raises(TopologyError, match="unknown task kind 'multiclass'"):
        discover_topology(model, x, task_kinds=["binary", "multiclass"])


def test_list_output_tasks_by_position():
    model = SharedSoftmaxMMoE()
    topo = discover_topology(model, model.example_input())
    # a list of sigmoid outputs: kinds from the sigmoid, positions as outputs, names invented
    assert [(t.name, t.kind, t.output) for t in topo.tasks] == [
        ("task_0", "binary", 0),
        ("task_1", "binary", 1),
    ]
    assert topo.confidence == pytest.approx(0.95)


def test_task_kinds_guessed_from_range_are_noted():
    class NoSigmoid(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.body(x)
            return h[:, 0].clamp(0, 1), h[:, 1] * 10 + 5

    torch.manual_seed(0)
    topo = discover_topology(NoSigmoid(), torch.randn(BATCH, 4), task_names=["p", "y"])
    assert [(t.kind, t.probability) for t in topo.tasks] == [("binary", True), ("regression", False)]
    assert any("guessed from output ranges" in n and "p=binary" in n for n in topo.notes)
    assert topo.notes[0] == NO_GATES_NOTE


def test_validate_topology_names_the_bad_path():
    model = PlantedMMoE()
    topo = discover_topology(model, model.example_input())
    validate_topology(model, topo)
    bad_gate = replace(topo, gates=(replace(topo.gates[0], module="gates.clickk"), *topo.gates[1:]))
    with pytest.raises(TopologyError) as err:
        validate_topology(model, bad_gate)
    msg = str(err.value)
    assert "'gates.clickk'" in msg and "mmoe-inspect topology" in msg and "\n" not in msg
    bad_expert = replace(topo, experts=(replace(topo.experts[0], module="expert.0"), *topo.experts[1:]))
    with pytest.raises(
        TopologyError, match=r"expert 'experts.0' names module 'expert.0'.*closest: 'experts.0'"
    ):
        validate_topology(model, bad_expert)


@pytest.mark.parametrize("make", PLANTED[:4])
def test_discovered_topology_round_trips_through_toml(make):
    model = make()
    topo = discover_topology(model, model.example_input())
    again = Topology.from_toml(topo.to_toml())
    assert again == replace(topo, source="spec")


# ------------------------------------------------------------ planted behaviour is as claimed
@pytest.fixture(scope="module")
def planted_x() -> torch.Tensor:
    return torch.randn(512, 8, generator=torch.Generator().manual_seed(3))


def test_planted_collapsed_uniform_constant(planted_x):
    model = PlantedMMoE(
        tasks=("a", "b", "c"), gate_modes={"a": "collapsed:2", "b": "uniform", "c": "constant"}
    )
    g = model.gate_probs(planted_x)
    assert bool((g["a"][:, 2] > 0.999).all())
    assert torch.allclose(g["b"], torch.full_like(g["b"], 0.25))
    p = torch.tensor([2.0**-i for i in range(4)])
    assert torch.allclose(g["c"], (p / p.sum()).expand_as(g["c"]), atol=1e-6)


def test_planted_specialized_routes_by_sign(planted_x):
    model = PlantedMMoE(gate_modes={"ctr": "specialized"})
    g = model.gate_probs(planted_x)["ctr"]
    pos, neg = planted_x[:, 0] > 0.1, planted_x[:, 0] < -0.1
    assert bool((g[pos][:, :2].sum(1) > 0.99).all()) and bool((g[neg][:, 2:].sum(1) > 0.99).all())


def test_planted_copy_and_polarized(planted_x):
    model = PlantedMMoE(tasks=("a", "b", "c"), gate_modes={"a": "polarized", "b": "copy:a", "c": "learned"})
    g = model.gate_probs(planted_x)
    assert torch.equal(g["a"], g["b"])
    top = g["a"].max(dim=1)
    assert float((top.values > 0.99).float().mean()) > 0.95
    assert len(set(top.indices.tolist())) == 4  # hard but row-dependent
    assert float(g["c"].std(dim=0).mean()) > 0.01  # the learned gate depends on the input
    with pytest.raises(ValueError, match="cycle"):
        PlantedMMoE(gate_modes={"ctr": "copy:cvr", "cvr": "copy:ctr"})
    with pytest.raises(ValueError, match="unknown mode"):
        PlantedMMoE(gate_modes={"ctr": "sleepy"})


def test_planted_dead_inactive_redundant(planted_x):
    model = PlantedMMoE(
        tasks=("a", "b"),
        gate_modes={"a": "learned", "b": "uniform"},
        dead_experts=[1],
        inactive_experts=[2],
        redundant_experts=(0, 3),
    )
    g = model.gate_probs(planted_x)
    bound = 10 * math.exp(DEAD_LOGIT)
    assert all(float(p[:, 1].max()) < bound for p in g.values())
    assert torch.allclose(g["b"][:, [0, 2, 3]], torch.full((512, 3), 1 / 3))
    with torch.no_grad():
        outs = [e(planted_x) for e in model.experts]
    assert bool((outs[2] == 0).all())
    assert torch.equal(outs[0], outs[3])
    assert float(outs[0].abs().sum()) > 0


def test_tuple_input_is_passed_as_positional_arguments():
    class TwoArgs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = PlantedMMoE(n_features=8)

        def forward(self, dense: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
            return self.inner(torch.cat([dense, extra], dim=1))

    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(BATCH, 5, generator=gen), torch.randn(BATCH, 3, generator=gen))
    topo = discover_topology(TwoArgs(), x)
    assert [g.module for g in topo.gates] == ["inner.gates.ctr", "inner.gates.cvr"]
    assert topo.task_names == ("task_0", "task_1")  # the wrapper has no task_names
