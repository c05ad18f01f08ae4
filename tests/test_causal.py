"""Causal analyses: metrics + bootstrap, gate-output interventions, ablation, counterfactuals, gains, segments."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import log_loss, mean_absolute_error, mean_squared_error, roc_auc_score
from torch import nn

from mmoe_inspect.binding import task_predictions
from mmoe_inspect.causal import (
    Ablate,
    Baseline,
    Evaluation,
    GateIntervention,
    Replace,
    SegmentRouting,
    edit_gate_output,
    paired_bootstrap,
    repeat_rows,
    roc_auc,
    run_causal,
)
from mmoe_inspect.causal._engine import PlannedVariant, collect
from mmoe_inspect.causal.ablation import ablation_variants
from mmoe_inspect.causal.counterfactual import counterfactual_variants
from mmoe_inspect.causal.metrics import bootstrap_counts
from mmoe_inspect.causal.remix import _fold
from mmoe_inspect.data.sources import TableSource
from mmoe_inspect.datasets import make_recsys, recsys_features, recsys_tasks
from mmoe_inspect.functional.routing import js_divergence
from mmoe_inspect.models import CGC, PLE, MMoE, OMoE, SharedBottom
from mmoe_inspect.recording.recorder import GateRecorder
from mmoe_inspect.testing.planted import EinsumMMoE, PlantedMMoE, PlantedOMoE
from mmoe_inspect.topology.spec import ExpertSpec, GateSpec, TaskSpec, Topology
from mmoe_inspect.train import fit, predict

# ----------------------------------------------------------------------------------------- helpers
P_COLUMNS = ["p_value", "p_adjusted"]


def assert_tables_equal(a: pd.DataFrame, b: pd.DataFrame, obj: str = "DataFrame") -> None:
    """Two strategies' tables agree to 1e-5, `significant` exactly. The ablation's p-values are compared
    to 1e-2: a 1e-5 change of a near-zero effect whose standard error is about as small moves its p-value
    by more than that (0.7099 vs 0.7098), far from any 0.05 threshold."""
    p = [c for c in P_COLUMNS if c in a.columns]
    pd.testing.assert_frame_equal(a.drop(columns=p), b.drop(columns=p), rtol=0, atol=1e-5, obj=obj)
    if p:
        pd.testing.assert_frame_equal(a[p], b[p], rtol=0, atol=1e-2, obj=obj)


def model_fingerprint(model: nn.Module) -> dict:
    """Hashes of every parameter, buffer and grad, every module's mode, and every hook dict's size."""
    h = hashlib.sha256()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return {
        "hash": h.hexdigest(),
        "grads": {
            n: (None if p.grad is None else hashlib.sha256(p.grad.numpy().tobytes()).hexdigest())
            for n, p in model.named_parameters()
        },
        "modes": [(n, m.training) for n, m in model.named_modules()],
        "hooks": [
            (n, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for n, m in model.named_modules()
        ],
    }


class MaskedSoftmaxGate(nn.Module):
    """Linear → softmax over the experts in `allowed` only: exact zeros elsewhere. `[b, in]` → `[b, E]`."""

    def __init__(self, n_features: int, n_experts: int, allowed: tuple[int, ...]) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, n_experts)
        mask = torch.zeros(n_experts, dtype=torch.bool)
        mask[list(allowed)] = True
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(x).masked_fill(~self.mask, float("-inf")), dim=1)


class SplitMMoE(nn.Module):
    """Task "a" mixes only experts 0, 1; task "b" only 2, 3. Expert k outputs feature x_k (`[b, 1]`).

    Prediction of a task = sigmoid(3 * its mixture) → `{task: [b]}`; gates are input-dependent.
    """

    def __init__(self, n_features: int = 6, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.experts = nn.ModuleList(nn.Linear(n_features, 1) for _ in range(4))
            self.gates = nn.ModuleDict(
                {"a": MaskedSoftmaxGate(n_features, 4, (0, 1)), "b": MaskedSoftmaxGate(n_features, 4, (2, 3))}
            )
        with torch.no_grad():
            for k, e in enumerate(self.experts):
                e.weight.zero_()
                e.weight[0, k] = 1.0
                e.bias.zero_()
            for g in self.gates.values():
                g.linear.weight.mul_(0.5)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        stacked = torch.stack([e(x) for e in self.experts], dim=1)  # [b, 4, 1]
        out = {}
        for t, gate in self.gates.items():
            mix = torch.bmm(gate(x).unsqueeze(1), stacked).reshape(-1)
            out[t] = torch.sigmoid(3.0 * mix)
        return out

    def topology(self) -> Topology:
        experts = tuple(ExpertSpec(f"e{k}", module=f"experts.{k}") for k in range(4))
        names = tuple(e.name for e in experts)
        gates = tuple(GateSpec(t, module=f"gates.{t}", experts=names, task=t) for t in ("a", "b"))
        return Topology((TaskSpec("a", output="a"), TaskSpec("b", output="b")), experts, gates)


def labelled_frame(model: nn.Module, n: int, n_features: int, seed: int = 0) -> pd.DataFrame:
    """Rows x0.. ~ N(0, 1) with each task's label drawn from the model's own predicted probability."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_features, generator=gen)
    with torch.no_grad():
        p = task_predictions(model.eval()(x), model.topology().tasks).numpy()
    frame = pd.DataFrame(x.numpy(), columns=[f"x{i}" for i in range(n_features)])
    rng = np.random.default_rng(seed)
    for j, t in enumerate(model.topology().tasks):
        frame[t.label_column] = (rng.random(n) < p[:, j]).astype(np.float32)
    return frame


def dense_input(n_features: int):
    cols = [f"x{i}" for i in range(n_features)]
    return (lambda frame: torch.from_numpy(frame[cols].to_numpy(np.float32, copy=True))), cols


def causal(model: nn.Module, frame: pd.DataFrame, n_features: int, **kw) -> object:
    fn, cols = dense_input(n_features)
    return run_causal(model, frame, input_fn=fn, columns=cols, **kw)


# ---------------------------------------------------------------------------------------- metrics
def test_auc_and_weighted_auc_match_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(3000) < 0.1).astype(float)
    for scores in (rng.random(3000), np.round(rng.random(3000) * 10)):  # continuous, heavily tied
        assert roc_auc(scores, y) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
        w = next(bootstrap_counts(3000, 4, seed=1)).T  # [4, n] row counts
        expected = [roc_auc_score(y, scores, sample_weight=wi) for wi in w]
        np.testing.assert_allclose(roc_auc(scores, y, w), expected, atol=1e-9)
    assert np.isnan(roc_auc(np.arange(5.0), np.zeros(5)))


def test_evaluation_points_and_replicates_match_sklearn() -> None:
    rng = np.random.default_rng(1)
    n = 2000
    labels = np.stack([(rng.random(n) < 0.2).astype(float), rng.normal(size=n)], 1)
    labels[::7, 0] = np.nan  # missing labels are left out of that task only
    tasks = [TaskSpec("c"), TaskSpec("r", kind="regression")]
    preds = {"m": np.stack([rng.random(n), rng.normal(size=n)], 1)}
    ev = Evaluation(labels, tasks, preds, n_boot=40, seed=3, intervals="bootstrap")
    keep = ~np.isnan(labels[:, 0])
    y, p = labels[keep, 0], preds["m"][keep, 0]
    assert ev.value("m", "c", "auc") == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert ev.value("m", "c", "logloss") == pytest.approx(log_loss(y, p), abs=1e-9)
    assert ev.value("m", "r", "mse") == pytest.approx(mean_squared_error(labels[:, 1], preds["m"][:, 1]))
    assert ev.value("m", "r", "mae") == pytest.approx(mean_absolute_error(labels[:, 1], preds["m"][:, 1]))
    assert ev.n_labelled("c") == keep.sum() and ev.positive_rate("c") == pytest.approx(y.mean())
    # every replicate = the metric under that resample's row counts (one resample for all tasks)
    counts = next(bootstrap_counts(n, 40, seed=3)).T
    for r in (0, 17, 39):
        w = counts[r]
        assert ev.replicates("m", "c", "auc")[r] == pytest.approx(roc_auc_score(y, p, sample_weight=w[keep]))
        assert ev.replicates("m", "c", "logloss")[r] == pytest.approx(log_loss(y, p, sample_weight=w[keep]))
        assert ev.replicates("m", "r", "mae")[r] == pytest.approx(
            mean_absolute_error(labels[:, 1], preds["m"][:, 1], sample_weight=w)
        )
    lo, hi = ev.interval("m", "c", "auc")
    assert lo < ev.value("m", "c", "auc") < hi
    assert np.isnan(
        Evaluation(labels, tasks, preds, n_boot=0, intervals="bootstrap").interval("m", "c", "auc")
    ).all()


def test_paired_bootstrap_is_paired_and_seeded() -> None:
    rng = np.random.default_rng(2)
    y = (rng.random(4000) < 0.3).astype(float)
    good = np.clip(y * 0.3 + rng.random(4000) * 0.7, 0, 1)
    noisy = np.clip(good + rng.normal(0, 0.3, 4000), 0, 1)
    assert paired_bootstrap(good, good, y, "auc") == (0.0, 0.0, 0.0)
    delta, lo, hi = paired_bootstrap(good, noisy, y, "auc", n_boot=100, seed=5)
    assert delta == pytest.approx(roc_auc_score(y, good) - roc_auc_score(y, noisy))
    assert 0 < lo < delta < hi
    assert paired_bootstrap(good, noisy, y, "auc", n_boot=100, seed=5) == (delta, lo, hi)


# ---------------------------------------------------------------------------------- interventions
def test_edit_gate_output_probs_logits_and_b_e_1_layout() -> None:
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.0, 0.5, 0.5, 0.0]])
    gate = GateSpec("g", "m", ("a", "b", "c", "d"))
    keep = (True, False, True, True)
    renorm = edit_gate_output(probs, gate, Ablate(keep))
    torch.testing.assert_close(renorm, torch.tensor([[0.125, 0.0, 0.375, 0.5], [0.0, 0.0, 1.0, 0.0]]))
    zero = edit_gate_output(probs, gate, Ablate(keep, "zero"))
    torch.testing.assert_close(zero, torch.tensor([[0.1, 0.0, 0.3, 0.4], [0.0, 0.0, 0.5, 0.0]]))
    logits = probs.clamp_min(1e-6).log() + torch.randn(2, 1)  # any per-row shift: same softmax
    lgate = GateSpec("g", "m", gate.experts, output="logits")
    edited = edit_gate_output(logits, lgate, Ablate(keep))
    torch.testing.assert_close(torch.softmax(edited, 1), renorm, atol=1e-5, rtol=0)
    swapped = edit_gate_output(logits, lgate, Replace(source="h"), source=probs.flip(1))
    torch.testing.assert_close(torch.softmax(swapped, 1), probs.flip(1), atol=1e-6, rtol=0)
    column = probs.unsqueeze(-1)  # [b, E, 1] gate (DeepCTR-Torch PLE)
    got = edit_gate_output(column, gate, Replace(probs=(0.25,) * 4))
    assert got.shape == (2, 4, 1) and torch.equal(got, torch.full((2, 4, 1), 0.25))


def test_ablation_matches_manual_on_probs_gate() -> None:
    model = PlantedMMoE(n_features=6, n_experts=4, seed=3).eval()
    topo = model.topology()
    x = model.example_input(256)
    keep = (True, True, False, True)
    with torch.no_grad():
        stacked = torch.stack([e(x) for e in model.experts], 1)
        manual = []
        for i, t in enumerate(model.task_names):
            g = model.gates[t](x) * torch.tensor(keep)
            g = g / g.sum(1, keepdim=True)
            manual.append(torch.sigmoid(model.towers[i](torch.bmm(g.unsqueeze(1), stacked).squeeze(1))))
        manual = torch.cat(manual, 1)
    edits = {t: Ablate(keep) for t in model.task_names}
    with GateIntervention(model, topo) as iv, torch.inference_mode():
        iv.plan([edits], 256)
        torch.testing.assert_close(model(x), manual)
        iv.plan([{}, edits], 256, capture=True)  # stacked: intact block + ablated block in one forward
        both = model(repeat_rows(x, 2))
    torch.testing.assert_close(both[256:], manual)
    with torch.no_grad():
        torch.testing.assert_close(both[:256], model(x))
    # through run_causal: the ablated metric is the AUC of the manual predictions
    frame = labelled_frame(model, 3000, 6)
    res = causal(model, frame, 6, analyses=("ablation",), n_boot=0)
    fn, _ = dense_input(6)
    with torch.no_grad():
        x_all = fn(frame)
        stacked = torch.stack([e(x_all) for e in model.experts], 1)
        g = model.gates["ctr"](x_all) * torch.tensor(keep)
        g = g / g.sum(1, keepdim=True)
        p = torch.sigmoid(model.towers[0](torch.bmm(g.unsqueeze(1), stacked).squeeze(1))).squeeze(1)
    row = res.ablation.query(
        "mode == 'renormalize' and expert == 'experts.2' and task == 'ctr' and metric == 'auc'"
    )
    assert row["ablated"].item() == pytest.approx(roc_auc_score(frame["ctr"], p.numpy()), abs=1e-9)


def test_ablation_matches_manual_on_logits_gate_and_zero_falls_back() -> None:
    model = EinsumMMoE(n_features=8, n_experts=4, seed=1).eval()  # Linear logits, functional softmax
    x = model.example_input(200)
    keep = (False, True, True, True)
    with torch.no_grad():
        moe = model.moe
        h = torch.relu(torch.einsum("bi,eid->bed", x, moe.expert_weight) + moe.expert_bias)
        manual = {}
        for t in model.task_list:
            g = torch.softmax(moe.gates[t](x), -1) * torch.tensor(keep)
            g = g / g.sum(1, keepdim=True)
            mix = torch.einsum("be,bed->bd", g, h)
            manual[t] = torch.sigmoid(model.towers[t](mix)).squeeze(-1)
    for mode in ("renormalize", "zero"):  # zero is not expressible through the model's softmax
        with GateIntervention(model, model.topology()) as iv, torch.inference_mode():
            iv.plan([{t: Ablate(keep, mode) for t in model.task_list}], 200)
            out = model(x)
        for t in model.task_list:
            torch.testing.assert_close(out[t], manual[t], atol=1e-6, rtol=1e-5)
    frame = labelled_frame(model, 2000, 8)
    res = causal(model, frame, 8, analyses=("ablation",), n_boot=0)
    assert any("'zero' ablation is exact only on probability gates" in n for n in res.notes)
    renorm = res.ablation[res.ablation["mode"] == "renormalize"].reset_index(drop=True)
    zero = res.ablation[res.ablation["mode"] == "zero"].reset_index(drop=True)
    pd.testing.assert_series_equal(renorm["importance"], zero["importance"])


def test_model_untouched_including_when_forward_raises() -> None:
    model = PlantedMMoE(n_features=6, n_experts=4, seed=2)
    frame = labelled_frame(model, 600, 6)
    x = model.example_input(8)
    model(x).sum().backward()  # a gradient that must survive bit for bit
    model.train()
    model.towers[0].eval()  # mixed modes must come back module by module
    baseline = PlantedMMoE(n_features=6, n_experts=4, seed=9).train()
    before, before_base = model_fingerprint(model), model_fingerprint(baseline)
    fn, cols = dense_input(6)
    res = run_causal(
        model,
        frame,
        input_fn=fn,
        columns=cols,
        baselines={"other": Baseline(baseline, input_fn=fn, tasks=["ctr", "cvr"])},
        segment_by="x0",
        n_boot=20,
    )
    assert len(res.ablation) and len(res.baseline_gains)
    assert model_fingerprint(model) == before and model_fingerprint(baseline) == before_base

    class BoomAfter(nn.Module):
        """Runs `inner`, but raises from its `after`-th call on (mid-way through the analyses)."""

        def __init__(self, inner: nn.Module, after: int) -> None:
            super().__init__()
            self.inner, self.after, self.calls = inner, after, 0

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls > self.after:
                raise RuntimeError("boom")
            return self.inner(h)

    for strategy, after in (("naive", 4), ("cached", 2), ("batched", 1)):
        model.towers[1] = BoomAfter(model.towers[1], after)
        before = model_fingerprint(model)
        with pytest.raises(RuntimeError, match="boom"):
            run_causal(model, frame, input_fn=fn, columns=cols, strategy=strategy, n_boot=0)
        assert model_fingerprint(model) == before
        model.towers[1] = model.towers[1].inner


# --------------------------------------------------------------------------------------- ablation
def test_planted_split_model_importance_matrix() -> None:
    model = SplitMMoE()
    frame = labelled_frame(model, 4000, 6)
    res = causal(model, frame, 6, n_boot=200, seed=0)
    for mode in ("renormalize", "zero"):
        imp = res.importance(mode)
        assert list(imp.index) == ["a", "b"] and list(imp.columns) == ["e0", "e1", "e2", "e3"]
        for task, used in (("a", ("e0", "e1")), ("b", ("e2", "e3"))):
            rows = res.ablation.query("mode == @mode and task == @task and metric == 'auc'").set_index(
                "expert"
            )
            for e in ("e0", "e1", "e2", "e3"):
                if e in used:  # removing a used expert hurts, and the CI excludes zero
                    assert rows.at[e, "importance"] > 0.02 and rows.at[e, "lo"] > 0, (mode, task, e)
                    assert rows.at[e, "significant"]
                else:  # an unused expert: no effect, the CI includes zero
                    assert rows.at[e, "lo"] <= 0 <= rows.at[e, "hi"], (mode, task, e)
                    assert rows.at[e, "importance"] == 0 and not rows.at[e, "significant"]
    loss = res.ablation.query("mode == 'renormalize' and metric == 'logloss'").set_index(["task", "expert"])
    assert loss.loc[("a", "e0"), "lo"] > 0 and loss.loc[("b", "e0"), "importance"] == 0


def test_naive_batched_and_cached_give_identical_tables() -> None:
    model = PlantedMMoE(tasks=("ctr", "cvr", "like"), n_features=6, n_experts=4, seed=4)
    frame = labelled_frame(model, 1500, 6)
    frame["seg"] = (frame["x1"] > 0).astype(int)
    results = {
        s: causal(model, frame, 6, strategy=s, n_boot=30, batch_size=500, segment_by="seg")
        for s in ("naive", "batched", "cached")
    }
    results["small_stack"] = causal(
        model, frame, 6, strategy="cached", n_boot=30, batch_size=500, segment_by="seg", max_stack_rows=1200
    )
    ref = results["naive"]
    assert ref.meta["forwards"] > results["cached"].meta["forwards"]
    assert results["cached"].meta["cached_calls"] > 0 and results["batched"].meta["cached_calls"] == 0
    # CPU matmul kernels may round a row differently when the batch is taller (1 float32 ulp on a
    # prediction), which can flip near-tied ranks: numbers agree to 1e-5, far inside any CI
    for name, res in results.items():
        for table in ("task_metrics", "ablation", "counterfactuals", "segments", "sparse_gains"):
            assert_tables_equal(getattr(res, table), getattr(ref, table), obj=f"{name}.{table}")
    einsum = EinsumMMoE(n_features=8, seed=0)  # logit gates, experts inline in one einsum
    frame = labelled_frame(einsum, 1500, 8)
    a, b = (causal(einsum, frame, 8, strategy=s, n_boot=30) for s in ("naive", "cached"))
    assert_tables_equal(a.ablation, b.ablation)


def _package_model(arch: str) -> nn.Module:
    torch.manual_seed(3)
    kw = {"n_experts": 3, "expert_hidden": (8,), "tower_hidden": (4,)}
    tasks = ("ctr", "cvr")
    if arch == "omoe":
        return OMoE(6, tasks, **kw)
    if arch == "mmoe":
        return MMoE(6, tasks, **kw)
    if arch == "ple":  # three levels: level 1 and 2 see dirty inputs only for some variants
        return PLE(6, tasks, n_specific=1, n_levels=3, **kw)
    return CGC(6, tasks, n_specific=2, **kw)


def _all_variants(model: nn.Module) -> list:
    topo = model.topology()
    abl, _ = ablation_variants(topo)
    means = {
        g.name: [(k + 1.0) / sum(range(1, g.n_experts + 1)) for k in range(g.n_experts)] for g in topo.gates
    }
    cf, _ = counterfactual_variants(topo, means)
    swaps = any(isinstance(e, Replace) and e.source for v in cf for e in v.edits.values())
    assert swaps == (topo.architecture == "mmoe")  # gate swaps: only MMoE's gates share their experts
    return abl + cf


@pytest.mark.parametrize("arch", ["omoe", "mmoe", "ple", "cgc"])
def test_remixed_variants_equal_one_forward_per_variant(arch: str) -> None:
    model = _package_model(arch)
    frame = labelled_frame(model, 900, 6)
    fn, cols = dense_input(6)
    topo, variants = model.topology(), _all_variants(model)
    before = model_fingerprint(model)
    runs = {
        s: collect(
            model,
            topo,
            TableSource.of(frame),
            fn,
            variants=variants,
            strategy=s,
            batch_size=400,
            columns=cols,
        )
        for s in ("naive", "cached")
    }
    naive, cached = runs["naive"], runs["cached"]
    assert cached.remixed and not naive.remixed and cached.notes == []
    assert cached.forwards < naive.forwards
    assert set(cached.preds) == set(naive.preds) and len(cached.preds) == 1 + len(variants)
    for key, p in naive.preds.items():
        np.testing.assert_allclose(cached.preds[key], p, rtol=0, atol=1e-6, err_msg=str(key))
    for gate, total in naive.gate_sums.items():
        np.testing.assert_allclose(cached.gate_sums[gate], total, rtol=1e-9)
    assert model_fingerprint(model) == before


def test_remixed_edits_on_several_levels_equal_one_forward_per_variant() -> None:
    """Edits of a later level's gate whose rows already differ (an earlier level was edited too), towers with
    two hidden layers and none (the folded first Linear is then `out`): re-mixed = one forward per variant."""
    torch.manual_seed(5)
    kw = {"n_experts": 2, "expert_hidden": (8, 6), "n_specific": 1, "n_levels": 3}
    for tower_hidden in ((5, 4), ()):
        model = PLE(6, ("ctr", "cvr"), tower_hidden=tower_hidden, **kw)
        topo = model.topology()
        drop_first = {g.name: (False,) + (True,) * (g.n_experts - 1) for g in topo.gates}
        uniform = {g.name: Replace(probs=(1.0 / g.n_experts,) * g.n_experts) for g in topo.gates}
        level = {g.name: g.module.split(".")[1] for g in topo.gates}
        variants = [
            PlannedVariant(("zero",), {g: Ablate(k, "zero") for g, k in drop_first.items()}),
            PlannedVariant(("renormalize",), {g: Ablate(k) for g, k in drop_first.items()}),
            PlannedVariant(  # level 0 fixed, later levels ablated on rows that already differ
                ("mixed",),
                {g: uniform[g] if level[g] == "0" else Ablate(drop_first[g]) for g in drop_first},
            ),
            PlannedVariant(("last",), {g: uniform[g] for g in drop_first if level[g] == "2"}),
        ]
        assert _fold(model.towers[0]) is not None  # the folded path is the one under test
        rng = np.random.default_rng(1)
        cols = [f"x{i}" for i in range(6)]
        frame = pd.DataFrame(rng.standard_normal((700, 6)), columns=cols)
        for t in topo.tasks:
            frame[t.label_column] = (rng.random(700) < 0.3).astype(np.float32)
        runs = {
            s: collect(
                model,
                topo,
                TableSource.of(frame),
                lambda f, cols=cols: torch.from_numpy(f[cols].to_numpy(np.float32, copy=True)),
                variants=variants,
                strategy=s,
                batch_size=300,
                columns=cols,
            )
            for s in ("naive", "cached")
        }
        assert runs["cached"].remixed and runs["cached"].notes == []
        for key, p in runs["naive"].preds.items():
            np.testing.assert_allclose(runs["cached"].preds[key], p, rtol=0, atol=1e-6, err_msg=str(key))
            if key != "intact":
                assert np.abs(p - runs["naive"].preds["intact"]).max() > 1e-4, (
                    key
                )  # the edit changed something


def test_remixed_tables_equal_naive_and_a_hooked_model_is_not_remixed() -> None:
    model = _package_model("ple")
    frame = labelled_frame(model, 900, 6)
    naive, cached = (
        causal(model, frame, 6, strategy=s, n_boot=0, batch_size=400) for s in ("naive", "cached")
    )
    assert cached.meta["remixed"] and not naive.meta["remixed"]
    for table in ("task_metrics", "ablation", "counterfactuals"):
        assert_tables_equal(getattr(cached, table), getattr(naive, table))
    # a user's forward hook changes what the tower returns: re-mixing (which calls modules' forward
    # directly) would miss it, so its first-batch check fails and the hook-based cache runs instead
    handle = model.towers[0].register_forward_hook(lambda _m, _a, out: out * 0.5)
    try:
        naive, cached = (
            causal(model, frame, 6, strategy=s, n_boot=0, batch_size=400) for s in ("naive", "cached")
        )
    finally:
        handle.remove()
    assert not cached.meta["remixed"] and cached.meta["cached_calls"] > 0
    assert any("re-mixing cached expert outputs was not used" in n for n in cached.notes)
    assert_tables_equal(cached.ablation, naive.ablation)


def test_row_mixing_model_falls_back_to_naive() -> None:
    class BatchCentered(PlantedMMoE):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # each row depends on the batch mean
            z = torch.logit(super().forward(x), eps=1e-6)
            return torch.sigmoid(z - z.mean(0, keepdim=True))

    model = BatchCentered(n_features=6, n_experts=3, seed=0)
    frame = labelled_frame(model, 800, 6)
    naive = causal(model, frame, 6, strategy="naive", n_boot=0, batch_size=400)
    cached = causal(model, frame, 6, strategy="cached", n_boot=0, batch_size=400)
    assert cached.meta["strategy"] == "naive" and any("fell back to 'naive'" in n for n in cached.notes)
    pd.testing.assert_frame_equal(naive.ablation, cached.ablation)


# ---------------------------------------------------------------------------------- counterfactuals
def test_counterfactuals_are_exact_where_routing_is_unchanged() -> None:
    model = PlantedMMoE(
        tasks=("ctr", "cvr", "like"),
        gate_modes={"cvr": "copy:ctr", "like": "uniform"},
        n_features=6,
        n_experts=4,
        seed=5,
    )
    frame = labelled_frame(model, 2000, 6)
    res = causal(model, frame, 6, analyses=("counterfactuals",), n_boot=50)
    cf = res.counterfactuals.query("metric == 'auc'").set_index(["task", "counterfactual"])
    assert cf.loc[("cvr", "gate_of:ctr"), "change"] == 0  # identical gates: the swap changes nothing
    assert cf.loc[("ctr", "gate_of:cvr"), "change"] == 0
    assert cf.loc[("like", "uniform"), "change"] == 0  # already uniform
    assert cf.loc[("like", "mean_gate"), "change"] == 0  # constant gate: its mean is itself
    assert cf.loc[("ctr", "uniform"), "change"] != 0
    assert cf.loc[("ctr", "uniform"), "gates"] == "ctr"
    assert set(cf.loc["ctr"].index) == {"gate_of:cvr", "gate_of:like", "uniform", "mean_gate"}
    assert res.ablation.empty


def test_counterfactual_of_shared_gate_reports_every_task() -> None:
    model = PlantedOMoE(n_features=8, n_experts=3, seed=0)  # one shared [b, E, 1] gate
    frame = labelled_frame(model, 1000, 8)
    res = causal(model, frame, 8, analyses=("counterfactuals",), n_boot=0)
    cf = res.counterfactuals.query("metric == 'auc'")
    assert set(zip(cf["task"], cf["counterfactual"], strict=True)) == {
        (t, c) for t in ("ctr", "cvr") for c in ("uniform", "mean_gate")
    }
    assert (cf["gates"] == "shared").all()


# ------------------------------------------------------------------------------------------ gains
@pytest.mark.slow
def test_recsys_sparse_gains_against_single_task_and_shared_bottom() -> None:
    frame = make_recsys(24_000, seed=0)
    features, tasks = recsys_features(frame), recsys_tasks()
    train, test = frame.iloc[6000:].reset_index(drop=True), frame.iloc[:6000].reset_index(drop=True)
    mmoe = MMoE(features, tasks, n_experts=4, expert_hidden=(16,), tower_hidden=(8,))
    single = SharedBottom(features, [tasks[1]], bottom_hidden=(16,), tower_hidden=(8,))
    shared_bottom = SharedBottom(features, tasks, bottom_hidden=(16,), tower_hidden=(8,))
    for m in (mmoe, single, shared_bottom):
        fit(m, train, tasks=m.tasks, features=features, epochs=2, batch_size=1024, lr=3e-3, val_fraction=0.0)
    res = run_causal(
        mmoe,
        test,
        baselines={"single": single, "shared_bottom": (shared_bottom, features)},
        segment_by="device",
        n_boot=100,
    )
    gains = res.baseline_gains
    assert set(zip(gains["task"], gains["baseline"], strict=True)) == {
        ("click", "shared_bottom"),
        ("purchase", "single"),
        ("purchase", "shared_bottom"),
    }
    # independent predictions and scikit-learn metrics on the same rows
    preds = {
        "model": predict(mmoe, test, features),
        "single": predict(single, test, features),
        "shared_bottom": predict(shared_bottom, test, features),
    }
    for row in gains.itertuples():
        y = test[row.task].to_numpy()
        ours, theirs = preds["model"][row.task].numpy(), preds[row.baseline][row.task].numpy()
        if row.metric == "auc":
            m, b = roc_auc_score(y, ours), roc_auc_score(y, theirs)
            expected_gain = m - b
        else:
            m, b = log_loss(y, ours), log_loss(y, theirs)
            expected_gain = b - m  # lower is better: the sign flips
        assert row.model == pytest.approx(m, abs=1e-6) and row.baseline_value == pytest.approx(b, abs=1e-6)
        assert row.gain == pytest.approx(expected_gain, abs=1e-6)
        assert row.lo <= row.hi and row.positive_rate == pytest.approx(y.mean())
        assert row.sparse == (row.task == "purchase")
    np.testing.assert_allclose(res.predictions["single:purchase"], preds["single"]["purchase"].numpy())
    assert "single:click" not in res.predictions
    sparse = res.sparse_gains.set_index("task")
    assert list(sparse.index) == ["purchase"] and sparse.at["purchase", "positive_rate"] < 0.05
    assert sparse.at["purchase", "auc"] == pytest.approx(
        roc_auc_score(test["purchase"], preds["model"]["purchase"])
    )
    assert sparse.at["purchase", "swap_source"] == "click"
    auc_imp = res.ablation[
        (res.ablation["task"] == "purchase")
        & (res.ablation["metric"] == "auc")
        & (res.ablation["mode"] == "renormalize")
    ]
    # significant: above 0 after the table's Holm adjustment (its interval alone is not enough)
    sig = auc_imp["significant"].astype(bool) & (auc_imp["importance"] > 0)
    if sig.any():  # a significant importance: a top expert among those, and a share
        assert 0.0 <= sparse.at["purchase", "shared_dependence"] <= 1.0
        assert sparse.at["purchase", "top_expert"] in set(auc_imp.loc[sig, "expert"])
    else:  # none (few positives): no expert named, no share read off noise, and the note says so
        assert (
            np.isnan(sparse.at["purchase", "shared_dependence"])
            and sparse.at["purchase", "top_expert"] is None
        )
        assert "no expert's importance is significant" in sparse.at["purchase", "note"]
    metrics = res.task_metrics.set_index(["task", "metric"])
    assert metrics.at[("click", "auc"), "value"] == pytest.approx(
        roc_auc_score(test["click"], preds["model"]["click"])
    )
    assert set(res.segments["segment"]) == {"0", "1", "2", "3"}
    json.dumps(res.to_dict(), allow_nan=False)


def test_shared_dependence_counts_importance_on_dense_experts() -> None:
    model = SplitMMoE()
    frame = labelled_frame(model, 3000, 6)
    frame.loc[frame.index % 20 != 0, "b"] = 0.0  # "b" becomes sparse (about 2.5% positives)
    res = causal(model, frame, 6, n_boot=50)
    row = res.sparse_gains.set_index("task").loc["b"]
    assert row["positive_rate"] < 0.05
    assert row["dense_experts"] in ("e0, e1", "e0", "e1")  # the dense task "a" uses only e0, e1
    assert row["shared_dependence"] == 0.0  # "b" relies on e2, e3 only
    assert row["top_expert"] in ("e2", "e3")
    assert row["swap_source"] == "a" and row["swap_hi"] < 0  # a's routing (over the same experts) hurts b
    assert res.baseline_gains.empty


# --------------------------------------------------------------------------------------- segments
def test_segment_routing_bounded_and_matches_groupby() -> None:
    gates = (GateSpec("g", "m", ("a", "b")),)
    seg = SegmentRouting("col", gates, max_tracked=2)
    values = np.array([1, 1, 2, 3, 4, 2, np.nan, 1])
    probs = torch.tensor(
        [[0.9, 0.1], [0.7, 0.3], [0.2, 0.8], [0.5, 0.5], [0.4, 0.6], [0.0, 1.0], [1.0, 0.0], [0.8, 0.2]]
    )
    seg.update(values[:4], {"g": probs[:4]})
    seg.update(values[4:], {"g": probs[4:]})
    table = seg.table(max_segments=50).set_index("segment")
    assert seg.overflowed and set(table.index) == {"1.0", "2.0", "other"}
    np.testing.assert_allclose(table.loc["1.0", ["a", "b"]].to_numpy(float), [0.8, 0.2])
    np.testing.assert_allclose(
        table.loc["other", ["a", "b"]].to_numpy(float), [(0.5 + 0.4 + 1.0) / 3, (0.5 + 0.6 + 0.0) / 3]
    )
    assert table["rows"].sum() == 8
    overall = probs.double().mean(0)
    assert table.loc["2.0", "jsd"] == pytest.approx(
        float(js_divergence(torch.tensor([0.1, 0.9]).double(), overall))
    )
    folded = seg.table(max_segments=1).set_index("segment")
    assert set(folded.index) == {"1.0", "other"} and folded.loc["other", "rows"] == 5


def test_segments_follow_a_specialized_gate() -> None:
    model = PlantedMMoE(gate_modes={"ctr": "specialized"}, n_features=6, n_experts=4, seed=0)
    frame = labelled_frame(model, 2000, 6)
    frame["side"] = np.where(frame["x0"] > 0, "pos", "neg")
    res = causal(model, frame, 6, analyses=("segments",), segment_by="side", n_boot=0)
    table = res.segments.set_index(["gate", "segment"])
    assert table.at[("ctr", "pos"), "top_expert"] in ("experts.0", "experts.1")
    assert table.at[("ctr", "neg"), "top_expert"] in ("experts.2", "experts.3")
    assert table.at[("ctr", "pos"), "jsd"] > 0.15  # [.5, .5, 0, 0] vs about uniform: 0.216 nats
    fn, _ = dense_input(6)
    with GateRecorder(model, model.topology()) as rec, torch.no_grad():
        model(fn(frame))
        g = pd.DataFrame(rec.take().gates["cvr"].numpy(), columns=[f"experts.{i}" for i in range(4)])
    expected = g.groupby(frame["side"]).mean()
    got = res.segments[res.segments["gate"] == "cvr"].set_index("segment")[expected.columns]
    pd.testing.assert_frame_equal(
        got.loc[expected.index], expected, check_names=False, check_dtype=False, atol=1e-6
    )
    assert res.ablation.empty and res.counterfactuals.empty


# -------------------------------------------------------------------------------------- edge cases
def test_no_gates_and_result_serialization(tmp_path) -> None:
    frame = make_recsys(2000, seed=1)
    features, tasks = recsys_features(frame), recsys_tasks()
    sb = SharedBottom(features, tasks, bottom_hidden=(8,), tower_hidden=())
    res = run_causal(sb, frame, n_boot=10, segment_by="device")
    assert res.ablation.empty and res.counterfactuals.empty and res.segments.empty
    assert any("no gates" in n for n in res.notes)
    assert len(res.task_metrics) == 4
    json.dumps(res.to_dict(), allow_nan=False)
    paths = res.save_tables(tmp_path)
    assert [p.name for p in paths] == ["causal_task_metrics.csv", "causal_sparse_gains.csv"]
    with pytest.raises(ValueError, match="analyses"):
        run_causal(sb, frame, analyses=("nope",))
    with pytest.raises(ValueError, match="strategy"):
        run_causal(sb, frame, strategy="fast")
