"""Re-mixing (`causal.remix.Remixer`): single-expert ablations by difference from the intact product.

Planted gates make the difference path's hard cases: rows whose largest gate is within 1e-6 of 1 but not 1
(the softmax's closest values are 1 - 3.6e-7, 1 - 7.2e-7: the renormalized difference cancels there), rows
with exact zeros (softmax underflow: nothing left to renormalize, exact ties that AUC counts), towers with and without hidden layers (folded first Linear / `out` folded), a 3-level PLE,
and edits that remove only some of a gate's experts or the same expert twice. The reference is one forward
per variant through the hook-based interventions (`collect(strategy="naive")`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mmoe_inspect.causal import Ablate, Replace
from mmoe_inspect.causal._engine import Collected, PlannedVariant, collect
from mmoe_inspect.causal.ablation import ablation_variants
from mmoe_inspect.causal.counterfactual import counterfactual_variants
from mmoe_inspect.causal.remix import DIFFERENCE_MIN_EXPERTS, Remixer
from mmoe_inspect.data.sources import TableSource
from mmoe_inspect.models import PLE, MMoE

N_FEATURES = 6


def _frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.standard_normal((n, N_FEATURES)).astype(np.float32), columns=_cols())


def _cols() -> list[str]:
    return [f"x{i}" for i in range(N_FEATURES)]


def _inputs(frame: pd.DataFrame) -> torch.Tensor:
    return torch.from_numpy(frame[_cols()].to_numpy(np.float32, copy=True))


def _plant(gate: nn.Module, expert: int, feature: int, slope: float, offset: float = 0.0) -> None:
    """The gate's logits: `offset + slope * input[feature]` for `expert`, 0 for the others."""
    linear = gate[-2]
    assert isinstance(linear, nn.Linear)
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
        linear.weight[expert, feature] = slope
        linear.bias[expert] = offset


def _report_variants(model: nn.Module) -> list[PlannedVariant]:
    """The report's variants: every expert ablation (both modes) and every gate counterfactual."""
    topo = model.topology()
    abl, _ = ablation_variants(topo)
    means = {g.name: [0.5, *[0.5 / (g.n_experts - 1)] * (g.n_experts - 1)] for g in topo.gates}
    cf, _ = counterfactual_variants(topo, means)
    return abl + cf


def _naive(model: nn.Module, frame: pd.DataFrame, variants: list[PlannedVariant]) -> Collected:
    """Every variant's predictions from one hook-based forward per variant, on `frame` as one batch."""
    return collect(
        model,
        model.topology(),
        TableSource.of(frame),
        _inputs,
        variants=variants,
        strategy="naive",
        batch_size=len(frame),
        columns=_cols(),
    )


def _check(
    model: nn.Module, frame: pd.DataFrame, variants: list[PlannedVariant], difference_from: int = 1
) -> Remixer:
    """Re-mixed predictions of every variant equal one forward per variant (atol 1e-6) on one batch; the
    difference path for gates of at least `difference_from` experts (1: every gate)."""
    topo = model.topology()
    naive = _naive(model, frame, variants)
    remixer = Remixer(model, topo, [v.edits for v in variants], difference_from=difference_from)
    with torch.no_grad():
        out = remixer.run(_inputs(frame))
    b = len(frame)
    for j, t in enumerate(topo.tasks):
        got = out[t.name].reshape(1 + len(variants), b).numpy()
        np.testing.assert_allclose(got[0], naive.preds["intact"][:, j], rtol=0, atol=1e-6, err_msg=t.name)
        for i, v in enumerate(variants, start=1):
            np.testing.assert_allclose(
                got[i], naive.preds[v.key][:, j], rtol=0, atol=1e-6, err_msg=str(v.key)
            )
    return remixer


def _kinds(remixer: Remixer) -> set[tuple[str, str]]:
    """(gate module, kind) pairs that went through the difference path."""
    return {(key[0], s.kind) for key, found in remixer.singles.items() for s in found}


def _collapsed_mmoe(tower_hidden: tuple[int, ...]) -> MMoE:
    """4 experts; gate 0 puts between 1 - 1e-6 and 1 (exclusive: the softmax's values closest to 1 are
    1 - 3.6e-7, 1 - 7.2e-7) on expert 0 where x0 ~ 0.48-0.52 and exactly 1 beyond; gate 1 has exact zeros
    (underflow) where |x1| > 0.6."""
    torch.manual_seed(0)
    model = MMoE(
        N_FEATURES, ["ctr", "cvr"], n_experts=4, expert_hidden=(8,), tower_hidden=tower_hidden
    ).eval()
    _plant(model.gates[0], expert=0, feature=0, slope=30.0)
    _plant(model.gates[1], expert=1, feature=1, slope=200.0)
    return model


@pytest.mark.parametrize("tower_hidden", [(5,), (5, 4), ()])
def test_difference_ablations_equal_one_forward_per_variant_on_collapsed_gates(tower_hidden) -> None:
    model = _collapsed_mmoe(tower_hidden)
    frame = _frame(3000)
    x = _inputs(frame)
    with torch.no_grad():
        h = model.inputs(x)
        g0, g1 = model.gates[0](h), model.gates[1](h)
    top = g0.max(-1).values
    assert ((top > 1 - 1e-6) & (top < 1)).sum() > 10  # the planted near-collapse (cancellation) rows
    assert (top == 1).sum() > 100 and (g1 == 0).all(-1).sum() == 0 and ((g1 == 0).sum(-1) == 3).sum() > 100
    variants = _report_variants(model)
    remixer = _check(model, frame, variants)
    assert _kinds(remixer) == {(p, k) for p in ("gates.0", "gates.1") for k in ("zero", "renormalize")}
    general = _check(model, frame, variants, difference_from=DIFFERENCE_MIN_EXPERTS)  # 4 experts: not used
    assert _kinds(general) == set()
    # the renormalized ablation of expert 0 matters on the collapsed rows: an error there would show
    naive = _naive(model, frame, variants)
    key = ("ablation", "renormalize", model.topology().gates[0].experts[0])
    rows = ((top > 1 - 1e-6) & (top < 1)).numpy()
    assert np.abs(naive.preds[key][rows, 0] - naive.preds["intact"][rows, 0]).max() > 1e-3


def test_partial_and_repeated_single_ablations() -> None:
    """Edits removing some of a gate's experts (the largest gate's column absent on some rows), the same
    expert removed twice by one kind, a two-expert removal and a fixed gate, next to each other."""
    model = _collapsed_mmoe((5,))
    topo = model.topology()
    g0, g1 = (g.name for g in topo.gates)

    def keep(*removed: int) -> tuple[bool, ...]:
        return tuple(i not in removed for i in range(4))

    variants = [
        PlannedVariant(("z", 1), {g0: Ablate(keep(1), "zero")}),
        PlannedVariant(("z", 2), {g0: Ablate(keep(2), "zero"), g1: Ablate(keep(2), "zero")}),
        PlannedVariant(("z", 2, "again"), {g0: Ablate(keep(2), "zero")}),  # expert 2 a second time
        PlannedVariant(("r", 0), {g0: Ablate(keep(0)), g1: Ablate(keep(0))}),
        PlannedVariant(("r", 2), {g0: Ablate(keep(2)), g1: Ablate(keep(2))}),
        PlannedVariant(("r", 1, 3), {g0: Ablate(keep(1, 3)), g1: Ablate(keep(1, 3))}),  # two experts
        PlannedVariant(("u",), {g0: Replace(probs=(0.25,) * 4)}),
        PlannedVariant(("swap",), {g1: Replace(source=g0)}),
    ]
    remixer = _check(model, _frame(2000, seed=1), variants)
    found = {key[0]: found for key, found in remixer.singles.items() if found}
    by_kind = {s.kind: s for s in found["gates.0"]}
    assert by_kind["zero"].experts == [1, 2] and by_kind["renormalize"].experts == [0, 2]
    assert [s.experts for s in found.get("gates.1", [])] in ([], [[2], [0, 2]])


def test_difference_path_on_a_three_level_ple_with_collapsed_last_gates() -> None:
    torch.manual_seed(2)
    model = PLE(
        N_FEATURES,
        ["ctr", "cvr"],
        n_experts=2,
        n_specific=1,
        n_levels=3,
        expert_hidden=(8,),
        tower_hidden=(4,),
    ).eval()
    last = model.levels[-1]
    for i, gate in enumerate(last.gates):  # inputs are the previous level's mixtures (ReLU outputs, >= 0)
        _plant(gate, expert=i % 3, feature=0, slope=40.0, offset=14.0)
    frame = _frame(2000, seed=3)
    variants = _report_variants(model)
    remixer = _check(model, frame, variants)
    paths = {p for p, _ in _kinds(remixer)}
    assert paths == {"levels.2.gates.0", "levels.2.gates.1"}
    with torch.no_grad():  # the last gates are collapsed on some rows, not all
        captured = remixer.captured
    tops = [captured[g.name].max(-1).values for g in model.topology().gates if g.module in paths]
    assert all(((t > 1 - 1e-5) & (t < 1)).any() for t in tops)


def test_difference_path_is_the_default_for_many_experts() -> None:
    """A 16-expert MMoE (at least `DIFFERENCE_MIN_EXPERTS`) takes the difference path by default, one gate
    collapsed on some rows; the engine's first-batch check accepts it and the tables equal naive ones."""
    assert DIFFERENCE_MIN_EXPERTS <= 16
    torch.manual_seed(4)
    model = MMoE(N_FEATURES, ["ctr", "cvr"], n_experts=16, expert_hidden=(8,), tower_hidden=(6,)).eval()
    _plant(model.gates[0], expert=3, feature=2, slope=30.0)
    frame = _frame(1500, seed=5)
    variants = _report_variants(model)
    remixer = _check(model, frame, variants, difference_from=DIFFERENCE_MIN_EXPERTS)
    assert _kinds(remixer) == {(p, k) for p in ("gates.0", "gates.1") for k in ("zero", "renormalize")}
    runs = {
        s: collect(
            model,
            model.topology(),
            TableSource.of(frame),
            _inputs,
            variants=variants,
            strategy=s,
            batch_size=500,
            columns=_cols(),
        )
        for s in ("naive", "cached")
    }
    assert runs["cached"].remixed and runs["cached"].notes == []
    for key, p in runs["naive"].preds.items():
        np.testing.assert_allclose(runs["cached"].preds[key], p, rtol=0, atol=1e-6, err_msg=str(key))


def test_one_hot_gate_rows_keep_their_exact_ties() -> None:
    """Where a gate is exactly one-hot (the others underflow to 0), removing its expert leaves the tower's
    bias alone: one forward per variant gives ONE value on all those rows (ties that AUC counts). The
    difference `z - 1 * Y_j` would leave rounding noise of the order of `|Y_j|` there: with the tower's first
    layer scaled up, that noise shows in the predictions, so only the exact product keeps the tie."""
    model = _collapsed_mmoe((5,))
    with torch.no_grad():
        model.towers[1].body[0].weight.mul_(1000.0)  # Y = W X large; the bias (what remains) unchanged
    frame = _frame(3000)
    x = _inputs(frame)
    with torch.no_grad():
        g1 = model.gates[1](model.inputs(x))
    onehot = (((g1 == 0).sum(-1) == 3) & (g1.argmax(-1) == 1)).numpy()
    assert onehot.sum() > 100
    variants = _report_variants(model)
    remixer = Remixer(model, model.topology(), [v.edits for v in variants], difference_from=1)
    with torch.no_grad():
        out = remixer.run(x)["cvr"].reshape(1 + len(variants), -1).numpy()
    assert ("gates.1", "zero") in _kinds(remixer)
    keys = [v.key for v in variants]
    naive = _naive(model, frame, variants)
    for mode in ("zero", "renormalize"):
        key = ("ablation", mode, model.topology().gates[1].experts[1])
        got, ref = out[1 + keys.index(key)][onehot], naive.preds[key][onehot, 1]
        assert np.unique(ref).size == 1 and np.unique(got).size == 1
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
