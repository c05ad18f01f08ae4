"""Property-based tests (hypothesis) of the streaming statistics, through their public API only
(constructor, `update`, `compute`, `merge_state`, `reset`).

For `GateStats`, `PairwiseRoutingStats`, `ExpertStats` and `TaskOutputStats`, on generated data
(1-6 experts, 1-80 rows, sharp to flat gates, exact one-hot and uniform rows mixed in):

* merge is commutative and associative: every grouping and order of three shards gives one summary;
* results do not depend on batch boundaries, nor on the order of the rows;
* permuting the experts (tasks, for `TaskOutputStats`) permutes every per-expert output accordingly
  and leaves every scalar unchanged;
* entropies stay within [0, log E] (normalized within [0, 1]), effective experts within [1, E],
  per-row JSD within [0, log 2] and total variation within [0, 1];
* `reset` returns a metric to its freshly constructed summary.

"Same summary" means equal to 1e-9 (sums in another order round differently in the last bits);
integer counts and the reservoir's rows are compared exactly.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmoe_inspect.stats import ExpertStats, GateStats, PairwiseRoutingStats
from mmoe_inspect.stats.outputs import TaskOutputStats

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ATOL = 1e-9


# --------------------------------------------------------------------------- data
@st.composite
def gate_batches(draw, max_rows: int = 80, min_experts: int = 1):
    """`(g [n, E] float64 on the simplex, seed)`: softmax rows at a drawn temperature, some rows replaced
    by exact one-hot or uniform rows (the edges of the simplex)."""
    n = draw(st.integers(1, max_rows))
    e = draw(st.integers(min_experts, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    temperature = draw(st.sampled_from([0.05, 0.5, 1.0, 5.0, 100.0]))
    gen = torch.Generator().manual_seed(seed)
    g = torch.softmax(torch.randn(n, e, generator=gen, dtype=torch.float64) / temperature, dim=1)
    special = torch.rand(n, generator=gen)
    hot = torch.randint(0, e, (n,), generator=gen)
    g[special < 0.15] = torch.nn.functional.one_hot(hot, e).double()[special < 0.15]
    g[special > 0.9] = 1.0 / e
    return g, seed


def cuts(draw, n: int, parts: int) -> list[int]:
    """`parts - 1` sorted cut points in [0, n] (empty shards allowed)."""
    inner = sorted(draw(st.lists(st.integers(0, n), min_size=parts - 1, max_size=parts - 1)))
    return [0, *inner, n]


def close(a, b, path: str = "summary") -> None:
    """Two summaries (dataclasses of tensors, floats, ints, tuples) are the same, to `ATOL` for floats."""
    if dataclasses.is_dataclass(a):
        assert type(a) is type(b), path
        for f in dataclasses.fields(a):
            close(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, torch.Tensor):
        assert a.shape == b.shape and a.dtype == b.dtype, (path, a.shape, b.shape)
        if a.dtype.is_floating_point:
            torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-9, equal_nan=True, msg=path)
        else:
            assert torch.equal(a, b), path
    elif isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=ATOL, rel=1e-9), (path, a, b)
    else:
        assert a == b, (path, a, b)


def merged(make: Callable[[], object], feed: Callable[[object, slice], None], shards: Sequence[slice], order):
    """Build one metric per shard, then merge them in `order`: a nested tuple of shard positions,
    e.g. `((0, 1), 2)` merges shard 1 into 0, then 2 into that."""

    def build(node):
        if isinstance(node, int):
            m = make()
            feed(m, shards[node])
            return m
        left, right = (build(x) for x in node)
        left.merge_state(right)
        return left

    return build(order).compute()


ORDERS = [((0, 1), 2), (0, (1, 2)), ((2, 0), 1), (2, (1, 0)), ((1, 2), 0)]


def shards_of(draw, n: int, parts: int = 3) -> list[slice]:
    """`parts` consecutive row slices covering [0, n), cut at drawn points (empty shards allowed)."""
    c = cuts(draw, n, parts)
    return [slice(c[i], c[i + 1]) for i in range(parts)]


def check_merge_orders(make, feed, shards: Sequence[slice], one_pass, orders=ORDERS[:3], same=None) -> None:
    """Shard metrics merged in each of `orders` summarize like `one_pass` (compared by `same`, default `close`)."""
    for order in orders:
        got = merged(make, feed, shards, order)
        if same is None:
            close(got, one_pass, f"order {order}")
        else:
            same(got, one_pass)


# --------------------------------------------------------------------------- GateStats
def gate_feed(g: torch.Tensor, labels: torch.Tensor) -> Callable[[GateStats, slice], None]:
    index = torch.arange(len(g))

    def feed(m: GateStats, rows: slice) -> None:
        if rows.stop > rows.start:
            m.update(g[rows], labels[rows], index[rows])

    return feed


def make_gate(e: int) -> Callable[[], GateStats]:
    return lambda: GateStats(e, label_names=("y",), reservoir_size=16, seed=7)


def labels_for(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 1)
    y = (torch.rand(n, 1, generator=gen) < 0.4).double()
    y[torch.rand(n, 1, generator=gen) < 0.1] = float("nan")  # missing labels
    return y


@SETTINGS
@given(data=st.data(), batch=gate_batches())
def test_gate_stats_merge_is_commutative_and_associative(data, batch) -> None:
    g, seed = batch
    feed = gate_feed(g, labels_for(len(g), seed))
    shards = shards_of(data.draw, len(g))
    one_pass = merged(make_gate(g.shape[1]), feed, [slice(0, len(g))], 0)
    check_merge_orders(make_gate(g.shape[1]), feed, shards, one_pass, ORDERS)


@SETTINGS
@given(data=st.data(), batch=gate_batches())
def test_gate_stats_ignore_batch_boundaries_and_row_order(data, batch) -> None:
    g, seed = batch
    n, e = g.shape
    y = labels_for(n, seed)
    whole = make_gate(e)()
    whole.update(g, y, torch.arange(n))
    reference = whole.compute()
    c = cuts(data.draw, n, data.draw(st.integers(2, 6)))
    batched = make_gate(e)()
    for a, b in itertools.pairwise(c):
        if b > a:
            batched.update(g[a:b], y[a:b], torch.arange(a, b))
    close(batched.compute(), reference)
    perm = torch.tensor(data.draw(st.permutations(range(n))))
    shuffled = make_gate(e)()
    shuffled.update(g[perm], y[perm], perm)  # the same rows (same indices), in another order
    close(shuffled.compute(), reference)


@SETTINGS
@given(data=st.data(), batch=gate_batches(min_experts=2))
def test_gate_stats_permuting_experts_permutes_the_outputs(data, batch) -> None:
    g, _ = batch
    e = g.shape[1]
    top2 = g.topk(2, dim=1).values
    g = g[top2[:, 0] > top2[:, 1]]  # no tie for the top expert (uniform rows): argmax is unambiguous
    if len(g) == 0:
        return
    perm = torch.tensor(data.draw(st.permutations(range(e))))
    a, b = GateStats(e, reservoir_size=8), GateStats(e, reservoir_size=8)
    a.update(g)
    b.update(g[:, perm])
    sa, sb = a.compute(), b.compute()
    for name in ("mean", "var", "std", "top1_share"):
        close(getattr(sb, name), getattr(sa, name)[perm], name)
    close(sb.coactivation, sa.coactivation[perm][:, perm], "coactivation")
    close(sb.hist, sa.hist[perm], "hist")
    close(sb.reservoir, sa.reservoir[:, perm], "reservoir")
    for name in (
        "entropy_mean",
        "normalized_entropy",
        "entropy_of_mean",
        "effective_experts",
        "importance_cv2",
    ):
        close(getattr(sb, name), getattr(sa, name), name)
    for name in (
        "load_cv2",
        "switch_balance",
        "input_dependence",
        "polarized_share",
        "n",
        "not_normalized_rows",
    ):
        close(getattr(sb, name), getattr(sa, name), name)
    assert torch.equal(sb.entropy_hist, sa.entropy_hist)


@SETTINGS
@given(batch=gate_batches())
def test_gate_entropies_stay_in_their_bounds(batch) -> None:
    g, _ = batch
    n, e = g.shape
    m = GateStats(e, reservoir_size=0)
    m.update(g)
    s = m.compute()
    log_e = math.log(e)
    eps = 1e-12
    assert -eps <= s.entropy_mean <= log_e + eps
    assert -eps <= s.entropy_of_mean <= log_e + eps
    assert s.entropy_mean <= s.entropy_of_mean + 1e-9  # concavity: H(mean) >= mean H
    assert -eps <= s.normalized_entropy <= 1 + eps
    assert 1 - 1e-9 <= s.effective_experts <= e + 1e-9
    assert int(s.entropy_hist.sum()) == n and s.n == n
    assert s.top1_share.sum().item() == pytest.approx(1.0)
    assert 0.0 <= s.input_dependence <= 1 + 1e-9 and 0.0 <= s.polarized_share <= 1.0


def test_gate_stats_reset_is_a_fresh_metric() -> None:
    g = torch.softmax(torch.randn(30, 4, dtype=torch.float64), 1)
    m = GateStats(4, reservoir_size=8)
    m.update(g)
    m.reset()
    m.update(g[:10])
    fresh = GateStats(4, reservoir_size=8)
    fresh.update(g[:10])
    close(m.compute(), fresh.compute())


# --------------------------------------------------------------------------- PairwiseRoutingStats
@st.composite
def gate_sets(draw):
    """`{name: g [n, E]}` for 2-4 gates over the same rows and experts."""
    g, seed = draw(gate_batches(min_experts=1))
    n, e = g.shape
    k = draw(st.integers(2, 4))
    gen = torch.Generator().manual_seed(seed + 2)
    gates = {"g0": g}
    for i in range(1, k):
        temperature = draw(st.sampled_from([0.1, 1.0, 10.0]))
        gates[f"g{i}"] = torch.softmax(torch.randn(n, e, generator=gen, dtype=torch.float64) / temperature, 1)
    if k > 2 and draw(st.booleans()):
        gates["g2"] = gates["g0"].clone()  # two identical gates: divergence exactly 0
    return gates


def pair_feed(gates: dict[str, torch.Tensor]) -> Callable[[PairwiseRoutingStats, slice], None]:
    def feed(m: PairwiseRoutingStats, rows: slice) -> None:
        if rows.stop > rows.start:
            m.update({k: v[rows] for k, v in gates.items()})

    return feed


@SETTINGS
@given(data=st.data(), gates=gate_sets())
def test_pairwise_merge_batches_order_and_bounds(data, gates) -> None:
    names = list(gates)
    n, e = gates["g0"].shape
    make = lambda: PairwiseRoutingStats(names, e)  # noqa: E731
    feed = pair_feed(gates)
    one_pass = merged(make, feed, [slice(0, n)], 0)
    shards = shards_of(data.draw, n)
    check_merge_orders(make, feed, shards, one_pass)
    perm = torch.tensor(data.draw(st.permutations(range(n))))
    shuffled = make()
    shuffled.update({k: v[perm] for k, v in gates.items()})
    close(shuffled.compute(), one_pass)
    assert (one_pass.jsd >= -1e-12).all() and (one_pass.jsd <= math.log(2) + 1e-9).all()
    assert (one_pass.tv >= -1e-12).all() and (one_pass.tv <= 1 + 1e-9).all()
    assert torch.equal(one_pass.jsd, one_pass.jsd.T) and (one_pass.jsd.diagonal() == 0).all()
    if len(names) > 2 and torch.equal(gates["g2"], gates["g0"]):
        assert float(one_pass.tv[0, 2]) == pytest.approx(0.0, abs=1e-12)
    # permuting the experts of every gate alike permutes the mean gates and keeps every divergence
    p = torch.tensor(data.draw(st.permutations(range(e))))
    permuted = make()
    permuted.update({k: v[:, p] for k, v in gates.items()})
    s = permuted.compute()
    close(s.mean_gates, one_pass.mean_gates[:, p], "mean_gates")
    close(s.jsd, one_pass.jsd, "jsd")
    close(s.tv, one_pass.tv, "tv")


# --------------------------------------------------------------------------- ExpertStats
@st.composite
def expert_outputs(draw):
    """`[E tensors [n, d_e]]`: ReLU-like outputs (exact zeros), one expert possibly dead (all zero)."""
    n = draw(st.integers(1, 60))
    e = draw(st.integers(1, 5))
    dims = draw(st.lists(st.integers(1, 4), min_size=e, max_size=e))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    outs = [torch.relu(torch.randn(n, d, generator=gen, dtype=torch.float64)) for d in dims]
    if e > 1 and draw(st.booleans()):
        outs[draw(st.integers(0, e - 1))].zero_()
    return outs


def make_expert(dims: Sequence[int]) -> Callable[[], ExpertStats]:
    return lambda: ExpertStats(len(dims), list(dims), sample_rate=1.0, max_sample_per_update=10_000, seed=1)


def expert_feed(outs: list[torch.Tensor]):
    """``(rows n, dims, row index [n], feed)`` for expert outputs ``E x [n, d_e]``: feed adds a slice of rows."""
    n = outs[0].shape[0]
    index = torch.arange(n)

    def feed(m: ExpertStats, rows: slice) -> None:
        if rows.stop > rows.start:
            m.update([o[rows] for o in outs], index[rows])

    return n, [o.shape[1] for o in outs], index, feed


@SETTINGS
@given(data=st.data(), outs=expert_outputs())
def test_expert_stats_merge_batches_order_and_expert_permutation(data, outs) -> None:
    n, dims, index, feed = expert_feed(outs)
    one_pass = merged(make_expert(dims), feed, [slice(0, n)], 0)
    shards = shards_of(data.draw, n)
    check_merge_orders(make_expert(dims), feed, shards, one_pass)
    perm = torch.tensor(data.draw(st.permutations(range(n))))
    shuffled = make_expert(dims)()
    shuffled.update([o[perm] for o in outs], perm)
    close(shuffled.compute(), one_pass)
    p = data.draw(st.permutations(range(len(outs))))
    permuted = make_expert([dims[i] for i in p])()
    permuted.update([outs[i] for i in p], index)
    s, pt = permuted.compute(), torch.tensor(p)
    close(s.zero_fraction, one_pass.zero_fraction[pt], "zero_fraction")
    close(s.mean_norm, one_pass.mean_norm[pt], "mean_norm")
    close(s.cka, one_pass.cka[pt][:, pt], "cka")
    finite = s.cka[torch.isfinite(s.cka)]
    assert ((finite >= -1e-9) & (finite <= 1 + 1e-9)).all()


# --------------------------------------------------------------------------- TaskOutputStats
@st.composite
def task_rows(draw):
    """`(kinds, preds [n, T], labels [n, T])`: binary and regression tasks, missing labels as NaN."""
    n = draw(st.integers(1, 80))
    kinds = draw(st.lists(st.sampled_from(["binary", "regression"]), min_size=2, max_size=4))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    t = len(kinds)
    preds = torch.rand(n, t, generator=gen, dtype=torch.float64)
    labels = (torch.rand(n, t, generator=gen, dtype=torch.float64) < preds).double()
    for j, k in enumerate(kinds):
        if k == "regression":
            preds[:, j] = torch.randn(n, generator=gen, dtype=torch.float64)
            labels[:, j] = preds[:, j] + torch.randn(n, generator=gen, dtype=torch.float64)
    labels[torch.rand(n, t, generator=gen) < 0.1] = float("nan")
    return kinds, preds, labels


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric:UserWarning")  # all-empty shards
@SETTINGS
@given(data=st.data(), rows=task_rows())
def test_task_output_stats_merge_batches_order_and_task_permutation(data, rows) -> None:
    kinds, preds, labels = rows
    n = len(preds)

    def feed(m: TaskOutputStats, r: slice) -> None:
        if r.stop > r.start:
            m.update(preds[r], labels[r])

    make = lambda: TaskOutputStats(kinds)  # noqa: E731
    one_pass = merged(make, feed, [slice(0, n)], 0)
    shards = shards_of(data.draw, n)
    check_merge_orders(make, feed, shards, one_pass)
    perm = torch.tensor(data.draw(st.permutations(range(n))))
    shuffled = make()
    shuffled.update(preds[perm], labels[perm])
    close(shuffled.compute(), one_pass)
    p = data.draw(st.permutations(range(len(kinds))))
    permuted = TaskOutputStats([kinds[i] for i in p])
    permuted.update(preds[:, p], labels[:, p])
    s = permuted.compute()
    for f in dataclasses.fields(s):
        close(getattr(s, f.name), getattr(one_pass, f.name)[torch.tensor(p)], f.name)
    auc = one_pass.auc[torch.isfinite(one_pass.auc)]
    assert ((auc >= 0) & (auc <= 1)).all()
