"""Reference models: outputs, input conventions, declared topologies, configs."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from mmoe_inspect.data.schema import CategoricalFeature, FeatureSpec
from mmoe_inspect.models import (
    ARCHITECTURES,
    CGC,
    PLE,
    MMoE,
    ModelConfig,
    MultiTaskModel,
    OMoE,
    SharedBottom,
    build_model,
)
from mmoe_inspect.topology.spec import TaskSpec

FEATURES = FeatureSpec(
    dense=("d0", "d1", "d2"),
    categorical=(CategoricalFeature("user", 50, 4), CategoricalFeature("item", 20, 3)),
)
TASKS = ("click", ("purchase", "binary"), TaskSpec("dwell", "regression"))
BATCH = 16

BUILDERS = [
    pytest.param(
        lambda: SharedBottom(FEATURES, TASKS, bottom_hidden=(16, 8), tower_hidden=(4,)), id="shared_bottom"
    ),
    pytest.param(lambda: OMoE(FEATURES, TASKS, n_experts=3, expert_hidden=(8,)), id="omoe"),
    pytest.param(
        lambda: MMoE(FEATURES, TASKS, n_experts=4, expert_hidden=(8, 6), gate_hidden=(5,)), id="mmoe"
    ),
    pytest.param(
        lambda: PLE(FEATURES, TASKS, n_experts=2, n_specific=2, n_levels=2, expert_hidden=(8,)), id="ple"
    ),
    pytest.param(lambda: CGC(FEATURES, TASKS, n_experts=3, n_specific=1, expert_hidden=(8,)), id="cgc"),
]


def _inputs(seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = {name: torch.randn(BATCH, generator=g) for name in FEATURES.dense}
    x |= {c.name: torch.randint(0, c.cardinality, (BATCH,), generator=g) for c in FEATURES.categorical}
    return x


def _capture(model: nn.Module, paths: list[str], x: dict[str, Tensor]) -> dict[str, list[Tensor]]:
    """Outputs of the modules at `paths` during one forward, every call recorded."""
    modules = dict(model.named_modules())
    seen: dict[str, list[Tensor]] = {p: [] for p in paths}
    handles = [
        modules[p].register_forward_hook(lambda _m, _i, out, p=p: seen[p].append(out.detach().clone()))
        for p in paths
    ]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("build", BUILDERS)
def test_forward_returns_one_prediction_per_task(build: Callable[[], MultiTaskModel]) -> None:
    torch.manual_seed(0)
    out = build()(_inputs())
    assert list(out) == ["click", "purchase", "dwell"]
    assert all(v.shape == (BATCH,) for v in out.values())
    for name in ("click", "purchase"):
        assert ((out[name] > 0) & (out[name] < 1)).all(), "binary towers emit probabilities"
    assert torch.isfinite(out["dwell"]).all()


@pytest.mark.parametrize("build", BUILDERS)
def test_declared_topology_names_real_modules(build: Callable[[], MultiTaskModel]) -> None:
    model = build()
    topo = model.topology()
    modules = dict(model.named_modules())
    assert topo.source == "declared"
    assert topo.architecture == model.architecture == model.config.architecture
    assert [(t.name, t.kind, t.output) for t in topo.tasks] == [
        ("click", "binary", "click"),
        ("purchase", "binary", "purchase"),
        ("dwell", "regression", "dwell"),
    ]
    assert all(e.module in modules for e in topo.experts)
    assert all(g.module in modules for g in topo.gates)
    assert all(g.output == "probs" and g.dim == 1 and g.call is None for g in topo.gates)


@pytest.mark.parametrize("build", BUILDERS)
def test_gates_emit_distributions_and_experts_emit_features(build: Callable[[], MultiTaskModel]) -> None:
    torch.manual_seed(1)
    model = build()
    topo = model.topology()
    seen = _capture(model, [g.module for g in topo.gates] + [e.module for e in topo.experts], _inputs(1))
    for gate in topo.gates:
        (probs,) = seen[gate.module]  # exactly one call per forward
        assert probs.shape == (BATCH, gate.n_experts)
        assert (probs >= 0).all()
        torch.testing.assert_close(probs.sum(dim=1), torch.ones(BATCH))
    for expert in topo.experts:
        (out,) = seen[expert.module]
        assert out.shape == (BATCH, model.config.params["expert_hidden"][-1])


def test_mmoe_gates_and_experts() -> None:
    model = MMoE(FEATURES, TASKS, n_experts=5, expert_hidden=(8,))
    topo = model.topology()
    experts = tuple(f"e{i}" for i in range(5))
    assert [e.name for e in topo.experts] == list(experts)
    assert [e.module for e in topo.experts] == [f"experts.{i}" for i in range(5)]
    assert [(g.name, g.module, g.task, g.experts) for g in topo.gates] == [
        ("click", "gates.0", "click", experts),
        ("purchase", "gates.1", "purchase", experts),
        ("dwell", "gates.2", "dwell", experts),
    ]
    assert {e.owner for e in topo.experts} == {"shared"}


def test_omoe_has_one_shared_gate() -> None:
    topo = OMoE(FEATURES, TASKS, n_experts=3, expert_hidden=(8,)).topology()
    (gate,) = topo.gates
    assert (gate.name, gate.module, gate.task, gate.experts) == ("shared", "gate", None, ("e0", "e1", "e2"))


def test_shared_bottom_has_no_routing() -> None:
    topo = SharedBottom(FEATURES, TASKS).topology()
    assert topo.gates == () and topo.experts == ()
    assert topo.architecture == "shared_bottom"


def test_ple_levels_owners_and_gate_sets() -> None:
    model = PLE(FEATURES, ["a", "b"], n_experts=2, n_specific=3, n_levels=2, expert_hidden=(8,))
    topo = model.topology()
    assert topo.levels == (0, 1)
    assert len(topo.experts) == 2 * (2 * 3 + 2)
    assert {(e.owner, e.level) for e in topo.experts} == {
        (o, lv) for o in ("a", "b", "shared") for lv in (0, 1)
    }
    assert [g.name for g in topo.gates] == ["L0.a", "L0.b", "L0.shared", "L1.a", "L1.b"]
    for lv in (0, 1):
        shared = tuple(f"L{lv}.shared.{k}" for k in range(2))
        for task in ("a", "b"):
            gate = topo.gate(f"L{lv}.{task}")
            assert gate.task == task and gate.level == lv
            assert gate.experts == tuple(f"L{lv}.{task}.{k}" for k in range(3)) + shared
            assert {topo.expert(e).owner for e in gate.experts} == {task, "shared"}
    everything = topo.gate("L0.shared")
    assert everything.task is None and everything.module == "levels.0.gate_shared"
    assert set(everything.experts) == {e.name for e in topo.experts if e.level == 0}
    assert {t: g.name for t, g in topo.final_task_gates().items()} == {"a": "L1.a", "b": "L1.b"}


def test_cgc_is_one_level_without_shared_gate() -> None:
    model = CGC(FEATURES, ["a", "b"], n_experts=2, n_specific=1, expert_hidden=(8,))
    topo = model.topology()
    assert topo.architecture == "cgc" and topo.levels == (0,)
    assert [g.name for g in topo.gates] == ["L0.a", "L0.b"]
    assert "n_levels" not in model.config.params


def test_mixture_is_gate_weighted_sum_of_declared_experts() -> None:
    """What the topology declares is what the model computes: tower input = Σ gate · expert."""
    torch.manual_seed(2)
    model = MMoE(FEATURES, TASKS, n_experts=4, expert_hidden=(8,))
    topo = model.topology()
    tower_inputs: list[Tensor] = []
    handle = model.towers[1].register_forward_pre_hook(lambda _m, args: tower_inputs.append(args[0].detach()))
    try:
        seen = _capture(model, [g.module for g in topo.gates] + [e.module for e in topo.experts], _inputs(2))
    finally:
        handle.remove()
    gate = topo.gate("purchase")
    stacked = torch.stack([seen[topo.expert(e).module][0] for e in gate.experts], dim=1)
    expected = (seen[gate.module][0].unsqueeze(-1) * stacked).sum(dim=1)
    torch.testing.assert_close(tower_inputs[0], expected)


def test_dense_only_models_take_a_tensor_or_a_dict() -> None:
    torch.manual_seed(3)
    model = MMoE(4, ["a", ("b", "regression")], n_experts=2, expert_hidden=(8,))
    assert model.features.dense == ("x0", "x1", "x2", "x3")
    x = torch.randn(BATCH, 4)
    from_tensor = model(x)
    from_dict = model({f"x{j}": x[:, j] for j in range(4)})
    for name in ("a", "b"):
        torch.testing.assert_close(from_tensor[name], from_dict[name])


def test_models_with_categoricals_refuse_a_plain_tensor() -> None:
    with pytest.raises(TypeError, match="categorical"):
        MMoE(FEATURES, TASKS)(torch.randn(BATCH, 3))


@pytest.mark.parametrize("build", BUILDERS)
def test_config_round_trips_through_json_and_rebuilds(build: Callable[[], MultiTaskModel]) -> None:
    torch.manual_seed(4)
    model = build().eval()
    data = json.loads(json.dumps(model.config.to_dict()))
    config = ModelConfig.from_dict(data)
    assert config == model.config
    rebuilt = build_model(config).eval()
    assert type(rebuilt) is type(model)
    rebuilt.load_state_dict(model.state_dict())
    x = _inputs(4)
    with torch.no_grad():
        a, b = model(x), rebuilt(x)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_registry_covers_every_architecture() -> None:
    assert set(ARCHITECTURES) == {"shared_bottom", "omoe", "mmoe", "ple", "cgc"}
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model(ModelConfig("esmm", FEATURES, (TaskSpec("a"),)))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(lambda: MMoE(FEATURES, []), "at least one task", id="no-tasks"),
        pytest.param(lambda: MMoE(FEATURES, ["a", "a"]), "unique", id="duplicate-task"),
        pytest.param(lambda: MMoE(FEATURES, [("a", "ranking")]), "kind", id="bad-kind"),
        pytest.param(lambda: MMoE(FEATURES, ["a"], n_experts=0), "n_experts", id="no-experts"),
        pytest.param(lambda: MMoE(FEATURES, ["a"], expert_hidden=()), "expert_hidden", id="no-expert-layers"),
        pytest.param(lambda: PLE(FEATURES, ["a"], n_levels=0), "n_levels", id="no-levels"),
        pytest.param(lambda: PLE(FEATURES, ["a", "shared"]), "shared", id="reserved-task-name"),
        pytest.param(lambda: SharedBottom(FEATURES, ["a"], dropout=1.0), "dropout", id="bad-dropout"),
        pytest.param(lambda: SharedBottom(0, ["a"]), "features", id="no-features"),
    ],
)
def test_invalid_arguments_are_refused(make: Callable[[], nn.Module], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        make()
