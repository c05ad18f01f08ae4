"""Feature attributions (Captum): planted gates, reference IG, library models, fallback, budget, model hygiene."""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pandas as pd
import pytest
import torch
from captum.attr import IntegratedGradients
from torch import nn

from mmoe_inspect.attribution import (
    TABLE_DESCRIPTIONS,
    AttributionError,
    AttributionResult,
    Layout,
    Place,
    run_attribution,
    sample_frame,
)
from mmoe_inspect.data.inputs import InputColumn
from mmoe_inspect.data.schema import CategoricalFeature, FeatureSpec
from mmoe_inspect.data.sources import TableSource
from mmoe_inspect.models import MMoE, SharedBottom
from mmoe_inspect.testing.planted import AttentionMMoE, EinsumMMoE, PlantedOMoE, SharedSoftmaxMMoE
from mmoe_inspect.topology.spec import ExpertSpec, GateSpec, TaskSpec, Topology

N_ROWS = 400
MIXED = FeatureSpec(
    dense=("d0", "d1", "d2", "d3", "d4"),
    categorical=(CategoricalFeature("c0", 10, 4), CategoricalFeature("c1", 7, 3)),
)
DENSE = FeatureSpec.dense_only(8)


# ----------------------------------------------------------------------------------------- helpers
def frame_for(spec: FeatureSpec, n: int = N_ROWS, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cols: dict[str, np.ndarray] = {d: rng.normal(size=n).astype("float32") for d in spec.dense}
    cols |= {c.name: rng.integers(0, c.cardinality, n) for c in spec.categorical}
    return pd.DataFrame(cols)


def planted_mmoe(spec: FeatureSpec, keep: tuple[int, int] = (2, 5)) -> MMoE:
    """MMoE whose gate "a" reads only features `keep` (by feature index): its Linear is zero elsewhere."""
    torch.manual_seed(0)
    model = MMoE(spec, ["a", "b"], n_experts=3, expert_hidden=(16,), tower_hidden=(8,)).eval()
    starts = np.cumsum([0, *([1] * len(spec.dense)), *(c.embed_dim for c in spec.categorical)])
    kept = [c for i in keep for c in range(starts[i], starts[i + 1])]
    with torch.no_grad():
        linear = model.gates[0][0]
        mask = torch.zeros_like(linear.weight)
        mask[:, kept] = 1.0
        linear.weight.copy_(torch.randn_like(linear.weight) * 2.0 * mask)
    return model


def fingerprint(model: nn.Module) -> dict:
    """Hashes of every parameter, buffer, grad and requires_grad flag; every module's mode and hook count."""
    h = hashlib.sha256()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(name.encode() + str(t.requires_grad).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return {
        "hash": h.hexdigest(),
        "grads": {
            n: (None if p.grad is None else hashlib.sha256(p.grad.numpy().tobytes()).hexdigest())
            for n, p in model.named_parameters()
        },
        "modes": [(n, m.training) for n, m in model.named_modules()],
        "hooks": [
            (
                n,
                len(m._forward_hooks),
                len(m._forward_pre_hooks),
                len(m._backward_hooks),
                len(m._backward_pre_hooks),
            )
            for n, m in model.named_modules()
        ],
    }


def assert_no_hooks(model: nn.Module) -> None:
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
        assert not m._backward_hooks and not m._backward_pre_hooks


def gate_share(res: AttributionResult, gate: str, features: list[str]) -> float:
    gf = res.gate_features[res.gate_features["gate"] == gate].set_index("feature")
    return float(gf.loc[features, "mean_abs"].sum() / gf["mean_abs"].sum())


# ------------------------------------------------------------------------------------ planted gates
@pytest.mark.parametrize(
    "spec", [pytest.param(DENSE, id="dense-tensor"), pytest.param(MIXED, id="dict-categorical")]
)
def test_planted_gate_attributes_to_its_two_features(spec: FeatureSpec) -> None:
    model = planted_mmoe(spec)
    res = run_attribution(model, frame_for(spec), sample_rows=128, n_steps=8, targets=("gates",))
    names = list(spec.names)
    planted = [names[2], names[5]]
    assert res.meta["method"] == "integrated_gradients"
    assert res.features == spec.names
    assert gate_share(res, "a", planted) >= 0.9
    others = res.gate_attributions.query("gate == 'a' and feature not in @planted")
    assert others["mean_abs"].max() < 1e-6  # the gate cannot see them at all
    assert gate_share(res, "b", planted) < 0.9  # the unplanted gate looks elsewhere too
    assert res.top_features("a", 2) and set(res.top_features("a", 2)) == set(planted)
    assert res.flagged == [] and res.complete
    # per (gate, expert) shares sum to one
    sums = res.gate_attributions.groupby(["gate", "expert"])["share"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-9)


def test_gate_attributions_equal_captum_ig_on_the_input_layer() -> None:
    """Our hooks-and-slots IG equals plain Captum IG on the gate as a function of the input layer output
    (dense columns then embeddings), summed per feature, with the documented default baseline."""
    model = planted_mmoe(MIXED, keep=(0, 6))
    df = frame_for(MIXED)
    res = run_attribution(model, df, sample_rows=64, n_steps=12, targets=("gates", "tasks"))
    rows = df.iloc[res.rows]
    x = {d: torch.tensor(rows[d].to_numpy(), dtype=torch.float32) for d in MIXED.dense}
    x |= {c.name: torch.tensor(rows[c.name].to_numpy()) for c in MIXED.categorical}
    with torch.no_grad():
        h = model.inputs(x)
    base = torch.zeros_like(h)
    base[:, 5:] = h[:, 5:].mean(0, keepdim=True)  # default: zero dense, mean embedding of the sample
    groups = [[0], [1], [2], [3], [4], [5, 6, 7, 8], [9, 10, 11]]
    for gate_i, gate in enumerate(["a", "b"]):
        ig = IntegratedGradients(lambda inp, g=gate_i: model.gates[g](inp))
        got = res.per_row[f"gate:{gate}"]
        for e in range(3):
            ref = ig.attribute(h, baselines=base, target=e, n_steps=12, method="gausslegendre")
            per_feature = torch.stack([ref[:, g].sum(1) for g in groups], dim=1).numpy()
            np.testing.assert_allclose(got[:, e, :], per_feature, atol=2e-6)
    conv = res.convergence.set_index(["kind", "target", "output"])
    assert conv.loc[("gate", "a", "e0"), "delta_max_abs"] < 1e-4
    assert set(res.task_attributions["task"]) == {"a", "b"}
    assert not res.gate_task_agreement.empty


def test_ids_read_without_an_embedding_module_fall_back_to_ablation() -> None:
    class TableLookup(nn.Module):
        """Gate reads `d1` and the id `cat` through a raw parameter table (no nn.Embedding)."""

        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Parameter(torch.randn(6, 3))
            self.gate = nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1))
            self.expert = nn.Linear(3, 2)

        def forward(self, x: dict) -> torch.Tensor:
            dense = torch.stack([x["d0"], x["d1"], x["d2"]], dim=1)
            g = self.gate(torch.cat([x["d1"].unsqueeze(1), self.table[x["cat"]]], dim=1))
            return torch.sigmoid((g.unsqueeze(-1) * self.expert(dense).unsqueeze(1)).sum((1, 2))).unsqueeze(1)

    torch.manual_seed(0)
    model = TableLookup().eval()
    rng = np.random.default_rng(1)
    df = pd.DataFrame({f"d{i}": rng.normal(size=200).astype("float32") for i in range(3)})
    df["cat"] = rng.integers(0, 6, 200)
    names = ["d0", "d1", "d2", "cat"]

    def fn(f: pd.DataFrame) -> dict:
        out = {d: torch.tensor(f[d].to_numpy()) for d in ["d0", "d1", "d2"]}
        return out | {"cat": torch.tensor(f["cat"].to_numpy())}

    topo = Topology(
        (TaskSpec("y", output=0),),
        tuple(ExpertSpec(f"e{i}") for i in range(3)),
        (GateSpec("g", module="gate", experts=("e0", "e1", "e2"), task="y"),),
    )
    res = run_attribution(model, df, topology=topo, input_fn=fn, features=names, sample_rows=100)
    assert res.meta["method"] == "ablation" and res.meta["unreached_features"] == ["cat"]
    assert any("FeatureAblation" in n for n in res.notes)
    assert res.features == tuple(names)
    assert gate_share(res, "g", ["d1", "cat"]) >= 0.9
    assert res.gate_attributions.query("feature in ['d0', 'd2']")["mean_abs"].max() == 0.0
    assert res.convergence["delta_mean_abs"].isna().all() and not res.convergence["flagged"].any()
    assert any("computed inline" in n for n in res.notes)  # experts without modules are named

    forced = run_attribution(
        model, df, topology=topo, input_fn=fn, features=names, sample_rows=100, method="integrated_gradients"
    )
    assert forced.features == ("d0", "d1", "d2") and any("left out of the tables" in n for n in forced.notes)


# ------------------------------------------------------------------------------------ library models
def _rechub(df: pd.DataFrame):
    from torch_rechub.basic.features import DenseFeature, SparseFeature
    from torch_rechub.models import multi_task as rechub

    feats = [
        SparseFeature("city", 12, embed_dim=4),
        SparseFeature("item", 9, embed_dim=4),
        SparseFeature("item_viewed", 9, embed_dim=4, shared_with="item"),
        DenseFeature("age"),
    ]
    return rechub.MMOE(feats, ["classification"] * 2, 3, {"dims": [8]}, [{"dims": [4]}] * 2)


def _deepctr(df: pd.DataFrame):
    from deepctr_torch.inputs import DenseFeat, SparseFeat
    from deepctr_torch.models import multitask as deepctr

    feats = [
        SparseFeat("city", 12, embedding_dim=4),
        SparseFeat("item", 9, embedding_dim=4),
        SparseFeat("item_viewed", 9, embedding_dim=4, embedding_name="item"),
        DenseFeat("age", 1),
    ]
    return deepctr.MMOE(
        feats,
        num_experts=3,
        expert_dnn_hidden_units=(8,),
        gate_dnn_hidden_units=(6,),
        tower_dnn_hidden_units=(4,),
        task_names=("click", "buy"),
    )


@pytest.mark.parametrize(
    ("build", "embeddings"),
    [
        pytest.param(
            _rechub,
            {
                "city": "embedding.embed_dict.city[0]",
                "item": "embedding.embed_dict.item[0]",
                "item_viewed": "embedding.embed_dict.item[1]",
            },
            id="torch-rechub",
        ),
        pytest.param(
            _deepctr,
            {
                "city": "embedding_dict.city[0]",
                "item": "embedding_dict.item[0]",
                "item_viewed": "embedding_dict.item[1]",
            },
            id="deepctr-torch",
        ),
    ],
)
def test_library_mmoe_tables_use_the_dataset_feature_names(build, embeddings, tmp_path) -> None:
    from mmoe_inspect.loading import adapter_for

    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "city": rng.integers(0, 12, 300),
            "item": rng.integers(0, 9, 300),
            "item_viewed": rng.integers(0, 9, 300),
            "age": rng.normal(size=300).astype("float32"),
        }
    )
    path = tmp_path / "eval.parquet"
    df.to_parquet(path)
    torch.manual_seed(0)
    model = build(df).eval()
    adapter = adapter_for(model)
    fn = adapter.input_fn(model)
    before = fingerprint(model)
    with adapter.session(model):
        res = run_attribution(model, path, input_fn=fn, tasks=["click", "buy"], sample_rows=96, n_steps=8)
    assert fingerprint(model) == before
    names = set(fn.names)
    assert names == {"city", "item", "item_viewed", "age"}
    assert res.meta["method"] == "integrated_gradients"
    assert {f"{f}@{where}" for f, where in embeddings.items()} == set(res.meta["embedding_features"])
    assert res.meta["dense_features"] == ["age"]
    for table in (res.gate_attributions, res.expert_attributions, res.task_attributions, res.gate_features):
        assert set(table["feature"]) == names
    assert set(res.gate_attributions["gate"]) == {"click", "buy"}
    assert len(res.expert_attributions["expert"].unique()) == 3
    assert set(res.task_attributions["task"]) == {"click", "buy"}
    assert res.complete and res.covered[:2] == ["gate:click", "gate:buy"]
    assert res.convergence.query("kind == 'gate'")["relative_delta"].max() < 0.05


# ------------------------------------------------------------------------- topologies and discovery
@pytest.mark.parametrize(
    "model",
    [
        pytest.param(EinsumMMoE(expert_bank=True), id="einsum-logit-gates"),
        pytest.param(SharedSoftmaxMMoE(), id="shared-softmax-calls"),
        pytest.param(PlantedOMoE(), id="omoe-gate-E1"),
    ],
)
def test_declared_topologies_of_unusual_models(model: nn.Module) -> None:
    names = [f"f{i}" for i in range(model.n_features)]
    df = pd.DataFrame(model.example_input(300).numpy(), columns=names)
    topo = model.topology()

    def fn(f: pd.DataFrame) -> torch.Tensor:
        return torch.from_numpy(f[names].to_numpy(np.float32, copy=True))

    res = run_attribution(model, df, topology=topo, input_fn=fn, features=names, sample_rows=64, n_steps=8)
    assert res.complete and res.meta["input"] == "tensor"
    assert set(res.gate_attributions["gate"]) == {g.name for g in topo.gates}
    for g in topo.gates:
        assert set(res.gate_attributions.query("gate == @g.name")["expert"]) == set(g.experts)
    assert set(res.gate_attributions["feature"]) == set(names)
    assert res.gate_attributions["mean_abs"].sum() > 0
    assert not res.convergence.query("kind == 'gate'")["flagged"].any()


class UndeclaredAttentionMMoE(AttentionMMoE):
    """The same model without a declared topology: run_attribution must discover it."""

    topology = None  # type: ignore[assignment]


def test_discovered_model_with_blocks_of_dense_and_id_columns() -> None:
    """`{"dense": [b, 6], "cat": [b, 3]}` input: features take the block columns in order, each id column
    is found at its own embedding module, and the gates come from discovery."""
    model = UndeclaredAttentionMMoE()
    x = model.example_input(300)
    dense_names = [f"num{i}" for i in range(6)]
    cat_names = ["shop", "brand", "color"]
    df = pd.DataFrame(x["dense"].numpy(), columns=dense_names)
    for i, c in enumerate(cat_names):
        df[c] = x["cat"][:, i].numpy()

    def fn(f: pd.DataFrame) -> dict:
        return {
            "dense": torch.from_numpy(f[dense_names].to_numpy(np.float32, copy=True)),
            "cat": torch.from_numpy(f[cat_names].to_numpy(np.int64, copy=True)),
        }

    names = dense_names + cat_names
    res = run_attribution(model, df, input_fn=fn, features=names, sample_rows=64, n_steps=8)
    assert res.meta["method"] == "integrated_gradients" and res.meta["input"] == "dict"
    assert res.meta["embedding_features"] == [f"{c}@embeddings.{i}[0]" for i, c in enumerate(cat_names)]
    assert res.meta["dense_features"] == dense_names
    assert res.topology is not None and res.topology.source == "discovered"
    assert sorted(g.module for g in res.topology.gates) == ["gates.ctr", "gates.cvr"]
    assert set(res.gate_attributions["gate"]) == {g.name for g in res.topology.gates}
    assert set(res.gate_attributions["feature"]) == set(names)
    # without names, the features are named after the input's own entries and columns
    unnamed = run_attribution(model, df, input_fn=fn, sample_rows=32, n_steps=4, targets=("tasks",))
    assert unnamed.features == tuple(f"dense[{i}]" for i in range(6)) + tuple(f"cat[{i}]" for i in range(3))


def test_layout_places_features_by_key_by_column_or_by_position() -> None:
    b = 5
    x = {"cat": torch.randint(0, 4, (b, 3)), "age": torch.randn(b), "seq": torch.randint(0, 4, (b, 2))}
    # by key (any order) and `key[i]`; "seq" is not a feature: held at its values
    layout = Layout(x, [InputColumn("age"), InputColumn("cat[2]"), InputColumn("cat[0]")])
    assert layout.places["age"] == Place("age") and layout.places["cat[2]"] == Place("cat", (2, 3))
    assert layout.extra == ("seq",)
    torch.testing.assert_close(layout.column(x, "cat[2]"), x["cat"][:, 2:3])
    new = layout.assemble(x, {"cat[2]": torch.full((b, 1), 9), "age": torch.zeros(b)})
    assert (new["cat"][:, 2] == 9).all() and (new["cat"][:, :2] == x["cat"][:, :2]).all()
    assert (new["age"] == 0).all() and new["seq"] is x["seq"] and not (x["cat"] == 9).any()
    # by position over the entries in dict order, widths from the columns
    pos = Layout(x, [*(InputColumn(n) for n in ("a", "b", "c", "age_")), InputColumn("s", width=2)])
    assert [pos.places[n] for n in ("a", "c", "age_", "s")] == [
        Place("cat", (0, 1)),
        Place("cat", (2, 3)),
        Place("age"),
        Place("seq"),
    ]
    with pytest.raises(AttributionError, match="not entries of the model input"):
        Layout(x, [InputColumn("age"), InputColumn("agee")])
    with pytest.raises(AttributionError, match="do not fit"):
        Layout(torch.zeros(b, 4), [InputColumn("p", width=3), InputColumn("q", width=2)])


# ------------------------------------------------------------------------------------ model hygiene
class Boom(nn.Module):
    """Wraps a module and raises from the `after`-th forward on (the probe forward is the first)."""

    def __init__(self, inner: nn.Module, after: int) -> None:
        super().__init__()
        self.inner, self.after, self.calls = inner, after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls >= self.after:
            raise RuntimeError("expert exploded")
        return self.inner(x)


def _messy_state(model: nn.Module) -> None:
    """Mixed modes and existing gradients, as a user's half-trained model might have."""
    model.train()
    model.gates[1].eval()
    for i, p in enumerate(model.parameters()):
        if i % 2 == 0:
            p.grad = torch.full_like(p, 0.5)


@pytest.mark.parametrize("method", ["integrated_gradients", "ablation"])
@pytest.mark.parametrize("failure", ["none", "forward-raises", "bad-gate-shape", "inference-mode"])
def test_model_is_left_exactly_as_found(method: str, failure: str) -> None:
    model = planted_mmoe(MIXED)
    df = frame_for(MIXED, 120)
    topo = model.topology()
    if failure == "forward-raises":
        model.experts[1] = Boom(model.experts[1], after=2)
    if failure == "bad-gate-shape":  # a layer inside an expert passed off as a gate: wrong width
        topo = Topology(topo.tasks, topo.experts, (GateSpec("a", "experts.0.0", ("e0", "e1", "e2"), "a"),))
    _messy_state(model)
    before = fingerprint(model)
    kwargs = {"topology": topo, "sample_rows": 32, "n_steps": 4, "method": method}
    if failure == "forward-raises":
        with pytest.raises(RuntimeError, match="expert exploded"):
            run_attribution(model, df, **kwargs)
    elif failure == "bad-gate-shape":
        with pytest.raises(AttributionError, match="expected 3 experts"):
            run_attribution(model, df, **kwargs)
    elif failure == "inference-mode":
        with torch.inference_mode():
            res = run_attribution(model, df, **kwargs)
        assert res.complete
    else:
        res = run_attribution(model, df, **kwargs)
        assert res.complete and res.meta["method"] == method
    assert fingerprint(model) == before
    assert_no_hooks(model)
    assert not torch.nn.modules.module._global_forward_hooks
    assert torch.is_grad_enabled()


def test_budget_stops_in_order_and_says_what_it_covered() -> None:
    model = planted_mmoe(DENSE)
    df = frame_for(DENSE, 100)
    none = run_attribution(model, df, sample_rows=32, n_steps=4, budget_seconds=0)
    assert none.covered == [] and none.gate_attributions.empty and none.convergence.empty
    assert none.skipped == ["gate:a", "gate:b", "expert:e0", "expert:e1", "expert:e2", "task:a", "task:b"]
    assert not none.complete and any("time budget of 0s" in n for n in none.notes)
    every = run_attribution(
        model, df, sample_rows=32, n_steps=4, budget_seconds=None, targets=("tasks", "gates")
    )
    assert every.covered == ["task:a", "task:b", "gate:a", "gate:b"] and every.skipped == []
    assert every.expert_attributions.empty and len(every.convergence) == 2 + 2 * 3


def test_shared_bottom_has_task_attributions_only() -> None:
    torch.manual_seed(0)
    model = SharedBottom(MIXED, ["a", "b"]).eval()
    res = run_attribution(model, frame_for(MIXED, 100), sample_rows=32, n_steps=4)
    assert res.gate_attributions.empty and res.gate_task_agreement.empty
    assert set(res.task_attributions["task"]) == {"a", "b"}
    assert any("no gates" in n for n in res.notes)


def test_result_round_trips_through_json_and_csv(tmp_path) -> None:
    model = planted_mmoe(MIXED)
    res = run_attribution(model, frame_for(MIXED, 100), sample_rows=40, n_steps=4)
    data = json.loads(json.dumps(res.to_dict()))
    assert set(data["tables"]) == set(TABLE_DESCRIPTIONS)
    assert (
        data["n_rows"] == 40
        and data["covered"] == res.covered
        and data["meta"]["method"] == res.meta["method"]
    )
    assert len(data["tables"]["gate_attributions"]) == len(res.gate_attributions) == 2 * 3 * 7
    paths = res.save_tables(tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"attribution_{n}.csv" for n in TABLE_DESCRIPTIONS)
    back = pd.read_csv(tmp_path / "attribution_gate_attributions.csv")
    pd.testing.assert_frame_equal(back, res.gate_attributions, check_dtype=False)
    assert res.per_row["gate:a"].shape == (40, 3, 7)


def test_sample_is_uniform_seeded_and_sorted(tmp_path) -> None:
    df = pd.DataFrame({"v": np.arange(20_000, dtype="float32")})
    path = tmp_path / "rows.parquet"
    df.to_parquet(path, row_group_size=3000)
    a = sample_frame(TableSource.of(path), ["v"], 500, seed=3, max_scan_rows=None)
    b = sample_frame(TableSource.of(df), ["v"], 500, seed=3, max_scan_rows=None)
    c = sample_frame(TableSource.of(df), ["v"], 500, seed=4, max_scan_rows=None)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 500 and a.index.is_monotonic_increasing and (a["v"].to_numpy() == a.index).all()
    assert not a.index.equals(c.index)
    assert 0.4 < a.index.to_numpy().mean() / 20_000 < 0.6 and a.index.max() > 15_000  # spread over the file
    head = sample_frame(TableSource.of(df), ["v"], 500, seed=3, max_scan_rows=1000)
    assert head.index.max() < 1000
    small = sample_frame(TableSource.of(df.iloc[:10]), ["v"], 500, seed=0, max_scan_rows=None)
    assert len(small) == 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sample_rows": 0}, "sample_rows"),
        ({"n_steps": 0}, "n_steps"),
        ({"budget_seconds": -1}, "budget_seconds"),
        ({"targets": ("gates", "routers")}, "targets"),
        ({"targets": "gates"}, "targets"),
        ({"baseline": "median"}, "baseline"),
        ({"method": "shap"}, "method"),
        ({"features": ["d0", "nope"]}, "nope"),
    ],
)
def test_bad_options_are_refused(kwargs: dict, message: str) -> None:
    model = planted_mmoe(MIXED)
    with pytest.raises(Exception, match=message):
        run_attribution(model, frame_for(MIXED, 50), **kwargs)


@pytest.mark.slow
def test_default_run_on_the_demo_model_is_fast(tmp_path) -> None:
    """The demo MMoE (20k rows), default options: well under the 30 s budget on one thread."""
    from mmoe_inspect.checkpoint import load_checkpoint
    from mmoe_inspect.demo import run_demo

    demo = run_demo(tmp_path, n_rows=20_000, architectures=("mmoe",), single_task=False)
    loaded = load_checkpoint(demo.checkpoints["mmoe"])
    started = time.perf_counter()
    res = run_attribution(loaded.model, demo.eval_path)
    seconds = time.perf_counter() - started
    assert res.complete and res.meta["method"] == "integrated_gradients"
    assert seconds < 30 and res.meta["seconds"] < 30
    assert set(res.features) == set(loaded.features.names)
    assert res.meta["embedding_features"] and res.meta["dense_features"]
    assert set(res.gate_attributions["gate"]) == {t.name for t in loaded.tasks}
    assert not res.flagged
