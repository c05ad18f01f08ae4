"""Streaming statistics: NumPy/pandas references, batch-split invariance, merge, DDP sync, reset, dtypes."""

from __future__ import annotations

import dataclasses
import math
import pickle
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_expert_gram_precision import CKA_FLOAT32_ATOL

from mmoe_inspect.functional import gate_entropy, js_divergence, linear_cka, row_hash
from mmoe_inspect.stats import (
    ExpertStats,
    ExpertSummary,
    GateStats,
    GateSummary,
    PairwiseRoutingStats,
    PairwiseRoutingSummary,
)
from mmoe_inspect.stats._base import (
    capped_sample,
    empty_reservoir,
    reservoir_insert,
    reservoir_rows,
)

N, E = 2500, 6
LABELS = ("click", "buy", "never")
TOL = 1e-10


# --------------------------------------------------------------------------- data


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    """Small tensors: one intra-op thread avoids OpenMP stalls when the (2-core) machine is oversubscribed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def make_gate_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gates [N, E] (soft, sharp, one-hot, NaN/inf and not-normalized rows), labels [N, 3], row ids."""
    rng = np.random.default_rng(seed)
    temp = rng.choice([0.3, 2.0, 8.0], size=(N, 1))
    g = _softmax(rng.normal(size=(N, E)) * temp)
    g[::50] = np.eye(E)[rng.integers(0, E, len(g[::50]))]
    g[13::101] *= 0.99  # not normalized (still counted)
    g[7::97, 2] = np.nan
    g[11::211, 0] = np.inf
    labels = np.stack([rng.random(N) < 0.3, rng.random(N) < 0.05, np.zeros(N, dtype=bool)], axis=1).astype(
        np.float64
    )
    labels[rng.random((N, 3)) < 0.1] = np.nan
    row_index = rng.permutation(N).astype(np.int64) * 3 + 1000
    return g, labels, row_index


@pytest.fixture(scope="module")
def gate_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return make_gate_data()


def batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def run_gate_stats(
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
    batch_size: int = N,
    rows: slice = slice(None),
    dtype: torch.dtype = torch.float32,
    **kwargs: Any,
) -> GateStats:
    g, labels, row_index = (a[rows] for a in data)
    kwargs.setdefault("label_names", LABELS)
    kwargs.setdefault("reservoir_size", 300)
    kwargs.setdefault("seed", 3)
    m = GateStats(E, **kwargs)
    for s in batches(len(g), batch_size):
        m.update(
            torch.from_numpy(g[s]).to(dtype),
            torch.from_numpy(labels[s]),
            torch.from_numpy(row_index[s]),
        )
    return m


def assert_summary_equal(a: Any, b: Any, atol: float = TOL) -> None:
    """Field-by-field comparison of two summary dataclasses (NaN == NaN, integer tensors exact)."""
    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            assert x.shape == y.shape and x.dtype == y.dtype, f.name
            if x.dtype.is_floating_point:
                torch.testing.assert_close(x, y, atol=atol, rtol=0, equal_nan=True, msg=f.name)
            else:
                assert torch.equal(x, y), f.name
        elif isinstance(x, float):
            assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, abs=atol, rel=0), f.name
        else:
            assert x == y, f.name


def state_shapes(m: Any) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in m.metric_state.items()}


# --------------------------------------------------------------------------- GateStats


def gate_reference(
    g: np.ndarray, labels: np.ndarray, row_index: np.ndarray, k: int, seed: int, tol: float = 1e-3
) -> dict[str, Any]:
    ok = np.isfinite(g).all(1)
    gf = g[ok].astype(np.float64)
    n = len(gf)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(gf > 0, gf * np.log(gf), 0.0).sum(1)
    mean = gf.mean(0)
    keys = row_hash(torch.from_numpy(row_index), seed).numpy()
    keys[~ok] = np.inf
    order = np.argsort(keys, kind="stable")[: min(k, int(ok.sum()))]
    top1 = np.bincount(gf.argmax(1), minlength=E)
    hist = np.stack([np.histogram(gf[:, j], bins=100, range=(0.0, 1.0))[0] for j in range(E)])
    return {
        "n": n,
        "mean": mean,
        "var": gf.var(0),
        "top1_share": top1 / n,
        "coactivation": gf.T @ gf / n,
        "hist": hist,
        "entropy": h,
        "entropy_hist": np.histogram(h, bins=50, range=(0.0, math.log(E)))[0],
        "polarized": ((gf < 0.01) | (gf >= 0.99)).mean(),
        "not_normalized": int((np.abs(gf.sum(1) - 1) > tol).sum()),
        "nonfinite": int((~ok).sum()),
        "reservoir": g[order],
        "reservoir_index": row_index[order],
        "top1": top1,
    }


def test_gate_stats_matches_numpy_reference(gate_data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    g, labels, row_index = gate_data
    g32 = g.astype(np.float32).astype(np.float64)  # what the metric sees
    s = run_gate_stats(gate_data, batch_size=700).compute()
    ref = gate_reference(g32, labels, row_index, 300, 3)
    assert isinstance(s, GateSummary)
    assert s.n == ref["n"] and s.nonfinite_rows == ref["nonfinite"] == 26 + 12
    assert s.not_normalized_rows == ref["not_normalized"] > 0
    for name in ("mean", "var", "top1_share", "coactivation"):
        np.testing.assert_allclose(getattr(s, name).numpy(), ref[name], rtol=0, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(s.std.numpy(), np.sqrt(ref["var"]), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(s.hist.numpy(), ref["hist"])
    np.testing.assert_array_equal(s.entropy_hist.numpy(), ref["entropy_hist"])
    np.testing.assert_allclose(s.hist_edges.numpy(), np.linspace(0, 1, 101), rtol=0, atol=1e-15)
    np.testing.assert_allclose(s.entropy_edges.numpy(), np.linspace(0, math.log(E), 51), rtol=0, atol=1e-15)
    assert s.entropy_mean == pytest.approx(ref["entropy"].mean(), abs=1e-12)
    assert s.entropy_std == pytest.approx(ref["entropy"].std(), abs=1e-10)
    assert s.normalized_entropy == pytest.approx(ref["entropy"].mean() / math.log(E), abs=1e-12)
    h_mean = -(ref["mean"] * np.log(ref["mean"])).sum()
    assert s.entropy_of_mean == pytest.approx(h_mean, abs=1e-12)
    assert s.effective_experts == pytest.approx(math.exp(h_mean), abs=1e-12)
    sum_w = ref["mean"] * ref["n"]
    assert s.importance_cv2 == pytest.approx(sum_w.var() / sum_w.mean() ** 2, abs=1e-12)
    assert s.load_cv2 == pytest.approx(ref["top1"].var() / ref["top1"].mean() ** 2, abs=1e-12)
    assert s.switch_balance == pytest.approx(E * (ref["top1_share"] * ref["mean"]).sum(), abs=1e-12)
    in_dep = ref["var"].sum() / (1 - (ref["mean"] ** 2).sum())
    assert s.input_dependence == pytest.approx(in_dep, abs=1e-12)
    assert s.polarized_share == pytest.approx(ref["polarized"], abs=1e-12)
    np.testing.assert_array_equal(s.reservoir.numpy(), ref["reservoir"])
    np.testing.assert_array_equal(s.reservoir_index.numpy(), ref["reservoir_index"])
    assert s.reservoir.shape == (300, E) and s.reservoir.dtype == torch.float64


def test_gate_stats_label_means_match_pandas(gate_data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    g, labels, _ = gate_data
    g32 = g.astype(np.float32).astype(np.float64)
    s = run_gate_stats(gate_data, batch_size=999).compute()
    cols = [f"e{j}" for j in range(E)]
    df = pd.DataFrame(g32, columns=cols)
    df = df[np.isfinite(g32).all(1)]
    for i, name in enumerate(LABELS):
        df[name] = labels[df.index, i]
        sub = df[df[name].notna()]
        means = sub.groupby(sub[name] > 0.5)[cols].mean()
        pos, neg = s.label_means(name)
        assert int(s.label_n[i]) == len(sub) and int(s.label_pos_n[i]) == int((sub[name] > 0.5).sum())
        np.testing.assert_allclose(neg.numpy(), means.loc[False].to_numpy(), rtol=0, atol=1e-12)
        if True in means.index:
            np.testing.assert_allclose(pos.numpy(), means.loc[True].to_numpy(), rtol=0, atol=1e-12)
        else:  # "never" has no positive row
            assert torch.isnan(pos).all()
    assert s.label_pos_mean.shape == s.label_neg_mean.shape == (3, E)


@pytest.mark.parametrize("sizes", [(1000,), (333,), (N,), (1, 7, 1000)], ids=["1000", "333", "all", "mixed"])
def test_gate_stats_batch_split_invariance(
    gate_data: tuple[np.ndarray, np.ndarray, np.ndarray], sizes: tuple[int, ...]
) -> None:
    reference = run_gate_stats(gate_data, batch_size=N).compute()
    m = GateStats(E, label_names=LABELS, reservoir_size=300, seed=3)
    g, labels, row_index = gate_data
    start, i = 0, 0
    while start < N:
        stop = min(start + sizes[i % len(sizes)], N)
        m.update(torch.from_numpy(g[start:stop]).float(), torch.from_numpy(labels[start:stop]),
                 torch.from_numpy(row_index[start:stop]))  # fmt: skip
        start, i = stop, i + 1
    assert_summary_equal(m.compute(), reference)


def test_gate_stats_merge_equals_one_pass(gate_data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    one_pass = run_gate_stats(gate_data, batch_size=400).compute()
    a = run_gate_stats(gate_data, batch_size=300, rows=slice(0, 1100))
    b = run_gate_stats(gate_data, batch_size=512, rows=slice(1100, 1900))
    c = run_gate_stats(gate_data, batch_size=1000, rows=slice(1900, None))
    assert a.compute().n < one_pass.n  # cached before the merges ...
    a.merge_state(b)
    a.merge_state(c.metric_state)  # dict form
    assert_summary_equal(a.compute(), one_pass)  # ... and not served stale after them
    # Other merge order: identical, reservoir included.
    c2 = run_gate_stats(gate_data, rows=slice(1900, None))
    c2.merge_state(run_gate_stats(gate_data, rows=slice(0, 1100)))
    c2.merge_state(run_gate_stats(gate_data, rows=slice(1100, 1900)))
    assert_summary_equal(c2.compute(), one_pass)


def test_gate_stats_sync_free_path_matches(gate_data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    """The accelerator path (no host reads: always masks, fixed-size reservoir topk) gives the same summary."""
    expected = run_gate_stats(gate_data, batch_size=N).compute()
    a = run_gate_stats(gate_data, batch_size=333, rows=slice(0, 1500), sync_free=True)
    a.merge_state(run_gate_stats(gate_data, batch_size=1000, rows=slice(1500, None), sync_free=True))
    assert_summary_equal(a.compute(), expected)


def test_gate_stats_forward_accumulates(gate_data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    g, labels, row_index = gate_data
    m = GateStats(E, label_names=LABELS, reservoir_size=300, seed=3)
    batch_summaries = [
        m(torch.from_numpy(g[s]).float(), torch.from_numpy(labels[s]), torch.from_numpy(row_index[s]))
        for s in batches(N, 1000)
    ]
    assert batch_summaries[0].n == 1000 - int((~np.isfinite(g[:1000]).all(1)).sum())
    assert_summary_equal(m.compute(), run_gate_stats(gate_data).compute())


def test_gate_stats_reset_clone_and_pickle(gate_data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    m = run_gate_stats(gate_data, batch_size=800)
    expected = m.compute()
    assert_summary_equal(pickle.loads(pickle.dumps(m)).compute(), expected)
    assert_summary_equal(m.clone().compute(), expected)
    m.reset()
    fresh = GateStats(E, label_names=LABELS, reservoir_size=300, seed=3)
    for name, value in m.metric_state.items():
        torch.testing.assert_close(value, fresh.metric_state[name], equal_nan=True, rtol=0, atol=0)
    g, labels, row_index = gate_data
    m.update(torch.from_numpy(g).float(), torch.from_numpy(labels), torch.from_numpy(row_index))
    assert_summary_equal(m.compute(), expected)
    assert m.state_dict() == {}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_gate_stats_low_precision_inputs(
    gate_data: tuple[np.ndarray, np.ndarray, np.ndarray], dtype: torch.dtype
) -> None:
    g, labels, row_index = gate_data
    cast = torch.from_numpy(g).to(dtype)
    m = GateStats(E, label_names=LABELS, reservoir_size=300, seed=3)
    m.update(cast, torch.from_numpy(labels), torch.from_numpy(row_index))
    s = m.compute()
    tol = {torch.float16: 1e-3, torch.bfloat16: 2.0**-7, torch.float64: 1e-3}[dtype]
    assert GateStats.normalization_tolerance(dtype) == tol
    ref = gate_reference(cast.double().numpy(), labels, row_index, 300, 3, tol=tol)
    np.testing.assert_allclose(s.mean.numpy(), ref["mean"], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(s.hist.numpy(), ref["hist"])
    np.testing.assert_array_equal(s.reservoir.numpy(), ref["reservoir"])
    assert s.nonfinite_rows == ref["nonfinite"]
    # Only the rows scaled by 0.99 are off by more than one ulp at 1: a 16-bit softmax is not flagged.
    assert (
        s.not_normalized_rows
        == ref["not_normalized"]
        == len(range(13, N, 101)) - len(set(range(13, N, 101)) & set(np.flatnonzero(~np.isfinite(g).all(1))))
    )
    assert s.mean.dtype == torch.float64


def test_gate_stats_nan_rows_counted_and_excluded() -> None:
    good = torch.softmax(torch.randn(50, 4, generator=torch.Generator().manual_seed(1)), 1)
    bad = good.clone()
    bad[[3, 17], 1] = float("nan")
    bad[25, 0] = float("-inf")
    m = GateStats(4, reservoir_size=100)
    m.update(bad)
    keep = torch.ones(50, dtype=torch.bool)
    keep[[3, 17, 25]] = False
    s = m.compute()
    assert s.nonfinite_rows == 3 and s.n == 47
    torch.testing.assert_close(s.mean, good[keep].double().mean(0), atol=1e-12, rtol=0)
    assert int(s.hist.sum()) == 47 * 4 and int(s.entropy_hist.sum()) == 47
    assert s.top1_share.sum().item() == pytest.approx(1.0)
    assert set(s.reservoir_index.tolist()) == set(torch.nonzero(keep).squeeze(1).tolist())
    assert torch.isfinite(s.reservoir).all()


def test_gate_stats_hand_cases() -> None:
    uniform = GateStats(4, reservoir_size=0)
    uniform.update(torch.full((10, 4), 0.25))
    s = uniform.compute()
    assert s.entropy_mean == pytest.approx(math.log(4)) and s.normalized_entropy == pytest.approx(1.0)
    assert s.effective_experts == pytest.approx(4.0) and s.input_dependence == 0.0
    assert s.top1_share.tolist() == [1.0, 0.0, 0.0, 0.0]  # ties go to the first maximum, like argmax
    assert s.entropy_hist[-1].item() == 10 and s.polarized_share == 0.0

    routed = GateStats(3, reservoir_size=0)
    routed.update(torch.eye(3)[torch.tensor([0, 1, 2, 2, 1, 0])])
    s = routed.compute()
    assert s.input_dependence == pytest.approx(1.0) and s.polarized_share == 1.0
    assert s.entropy_mean == 0.0 and s.switch_balance == pytest.approx(1.0) and s.load_cv2 == 0.0

    collapsed = GateStats(3, reservoir_size=0)
    collapsed.update(torch.eye(3)[[1] * 8])
    s = collapsed.compute()
    assert s.input_dependence == 0.0 and s.effective_experts == 1.0 and s.switch_balance == pytest.approx(3.0)
    assert s.importance_cv2 == pytest.approx(2.0) and s.hist[1, -1].item() == 8

    trailing = GateStats(3, reservoir_size=0)
    trailing.update(torch.eye(3)[[1] * 8][:, :, None])  # DeepCTR-Torch PLE's [batch, E, 1]
    assert_summary_equal(trailing.compute(), s)


def test_gate_stats_running_row_counter_is_batch_invariant(
    gate_data: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    g = torch.from_numpy(gate_data[0]).float()
    whole = GateStats(E, reservoir_size=64)
    whole.update(g)
    split = GateStats(E, reservoir_size=64)
    for s in batches(N, 777):
        split.update(g[s])
    assert_summary_equal(split.compute(), whole.compute())
    explicit = GateStats(E, reservoir_size=64)
    explicit.update(g, row_index=torch.arange(N))
    assert_summary_equal(explicit.compute(), whole.compute())


def test_empty_and_single_expert_summaries() -> None:
    empty = GateStats(4).compute()
    assert empty.n == 0 and torch.isnan(empty.mean).all() and empty.reservoir.shape == (0, 4)
    assert PairwiseRoutingStats(["a", "b"], 3).compute().n == 0
    assert ExpertStats(2, 3).compute().n_sampled == 0
    one = GateStats(1, reservoir_size=4)
    one.update(torch.ones(6, 1))
    s = one.compute()
    assert s.entropy_mean == 0.0 and s.normalized_entropy == 0.0 and s.effective_experts == 1.0
    assert s.input_dependence == 0.0 and s.top1_share.tolist() == [1.0] and s.reservoir.shape == (4, 1)


def test_gate_stats_validates_shapes() -> None:
    m = GateStats(4, label_names=("a",))
    with pytest.raises(ValueError, match=r"\[batch, 4\]"):
        m.update(torch.rand(5, 3))
    with pytest.raises(ValueError, match="labels"):
        m.update(torch.rand(5, 4), torch.rand(5, 2))
    with pytest.raises(ValueError, match="row_index"):
        m.update(torch.rand(5, 4), row_index=torch.arange(4))
    m.update(torch.rand(5, 4), torch.rand(5))  # [batch] labels accepted for a single label
    assert int(m.lab_n[0]) == 5


def test_reservoir_paths_agree() -> None:
    """The CPU (pre-filter + append) and accelerator (fixed-size topk) insert paths keep the same rows."""
    gen = torch.Generator().manual_seed(5)
    cpu, acc = empty_reservoir(50, 3), empty_reservoir(50, 3)
    start, sizes = 0, (10, 30, 200, 1, 500, 77, 1000)
    for size in sizes:
        idx = torch.arange(start, start + size)
        rows = torch.rand(size, 3, generator=gen, dtype=torch.float64)
        keys = row_hash(idx, 9)
        keys[::13] = float("inf")  # rows that must never be kept
        cpu = reservoir_insert(cpu, keys, idx, rows, sync_free=False)
        acc = reservoir_insert(acc, keys, idx, rows, sync_free=True)
        start += size
        got_cpu, got_acc = reservoir_rows(cpu), reservoir_rows(acc)
        assert torch.equal(got_cpu[0], got_acc[0]) and torch.equal(got_cpu[1], got_acc[1])
    all_keys = row_hash(torch.arange(start), 9)
    for first, size in zip(np.cumsum((0, *sizes[:-1])), sizes, strict=True):
        all_keys[first : first + size : 13] = float("inf")
    assert torch.equal(got_cpu[1], torch.sort(all_keys).indices[:50])


def test_gates_sharing_row_index_match_separate_runs(
    gate_data: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """Interleaved updates of several GateStats with one row_index tensor (the recorder's pattern)."""
    g, _, row_index = gate_data
    stats = [GateStats(E, reservoir_size=200, seed=s) for s in (0, 0, 5)]
    for s in batches(N, 512):
        rows = torch.from_numpy(row_index[s])
        for i, m in enumerate(stats):
            m.update(torch.from_numpy(np.roll(g[s], i, axis=1)).float(), row_index=rows)
    for i, m in enumerate(stats):
        alone = GateStats(E, reservoir_size=200, seed=(0, 0, 5)[i])
        alone.update(torch.from_numpy(np.roll(g, i, axis=1)).float(), row_index=torch.from_numpy(row_index))
        assert_summary_equal(m.compute(), alone.compute())


def test_capped_sample_paths_agree() -> None:
    keys = torch.full((100,), float("inf"), dtype=torch.float64)
    keys[torch.tensor([3, 50, 7, 99, 20])] = torch.tensor([0.5, 0.1, 0.3, 0.2, 0.4], dtype=torch.float64)
    for cap in (2, 5, 10):
        sel, weight = capped_sample(keys, cap, sync_free=False)
        assert weight is None
        sel_acc, weight_acc = capped_sample(keys, cap, sync_free=True)
        assert set(sel.tolist()) == set(sel_acc[weight_acc > 0].tolist())
        assert len(sel) == min(cap, 5)
    assert set(capped_sample(keys, 2, sync_free=False)[0].tolist()) == {50, 99}


# --------------------------------------------------------------------------- PairwiseRoutingStats

GATES = ("ctr", "cvr", "share", "copy")


def make_pair_data(seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = _softmax(rng.normal(size=(N, E)) * 2)
    data = {
        "ctr": base,
        "cvr": _softmax(rng.normal(size=(N, E)) * 2),
        "share": np.eye(E)[rng.integers(0, E, N)],
        "copy": base.copy(),
    }
    data["cvr"][5::300, 1] = np.nan
    return data


def run_pairwise(
    data: dict[str, np.ndarray], batch_size: int, rows: slice = slice(None), sync_free: bool | None = None
) -> PairwiseRoutingStats:
    m = PairwiseRoutingStats(GATES, E, sync_free=sync_free)
    n = len(data["ctr"][rows])
    for s in batches(n, batch_size):
        m.update({k: torch.from_numpy(v[rows][s]).float() for k, v in data.items()})
    return m


def _np_row_jsd(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    def xlogx(a: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(a > 0, a * np.log(a), 0.0).sum(1)

    m = (p + q) / 2
    return 0.5 * (xlogx(p) + xlogx(q)) - xlogx(m)


def test_pairwise_matches_numpy_reference() -> None:
    data = make_pair_data()
    s = run_pairwise(data, batch_size=600).compute()
    assert isinstance(s, PairwiseRoutingSummary)
    f = {k: v.astype(np.float32).astype(np.float64) for k, v in data.items()}
    ok = np.all([np.isfinite(v).all(1) for v in f.values()], axis=0)
    assert s.n == int(ok.sum()) and s.nonfinite_rows == int((~ok).sum()) == 9
    for i, a in enumerate(GATES):
        for j, b in enumerate(GATES):
            p, q = f[a][ok], f[b][ok]
            assert s.jsd[i, j].item() == pytest.approx(_np_row_jsd(p, q).mean(), abs=1e-12)
            assert s.tv[i, j].item() == pytest.approx(0.5 * np.abs(p - q).sum(1).mean(), abs=1e-12)
    assert torch.equal(s.jsd, s.jsd.T) and torch.equal(s.jsd.diagonal(), torch.zeros(4, dtype=torch.float64))
    assert s.jsd[0, 3].item() == 0.0 and s.tv[0, 3].item() == 0.0  # identical gates
    means = torch.from_numpy(np.stack([f[k][ok].mean(0) for k in GATES]))
    torch.testing.assert_close(s.mean_gates, means, atol=1e-12, rtol=0)
    torch.testing.assert_close(
        s.mean_gate_jsd, js_divergence(means[:, None], means[None]), atol=1e-12, rtol=0
    )
    # Same mean gate, different per-row routing: the mean hides it, the per-row JSD does not.
    assert s.mean_gate_jsd[0, 1].item() < 0.01 < s.jsd[0, 1].item()


def test_pairwise_hand_cases() -> None:
    m = PairwiseRoutingStats(["a", "b"], 2)
    m.update({"a": torch.tensor([[1.0, 0.0]] * 3), "b": torch.tensor([[0.0, 1.0]] * 3)})
    s = m.compute()
    assert s.jsd[0, 1].item() == pytest.approx(math.log(2)) and s.tv[0, 1].item() == 1.0
    single = PairwiseRoutingStats(["only"], 3)
    single.update({"only": torch.full((4, 3), 1 / 3)})
    assert single.compute().jsd.shape == (1, 1)
    with pytest.raises(ValueError, match="expected gates"):
        m.update({"a": torch.rand(3, 2)})


@pytest.mark.parametrize(
    ("batch_size", "sync_free"),
    [(1000, None), (333, None), (N, None), (333, True)],
    ids=["1000", "333", "all", "sync-free"],
)
def test_pairwise_batch_split_and_merge(batch_size: int, sync_free: bool | None) -> None:
    data = make_pair_data()
    one_pass = run_pairwise(data, batch_size=N).compute()
    assert_summary_equal(run_pairwise(data, batch_size=batch_size, sync_free=sync_free).compute(), one_pass)
    a = run_pairwise(data, batch_size=batch_size, rows=slice(0, 900), sync_free=sync_free)
    a.merge_state(run_pairwise(data, batch_size=batch_size, rows=slice(900, None), sync_free=sync_free))
    assert_summary_equal(a.compute(), one_pass)
    a.reset()
    assert int(a.rows_seen) == 0 and float(a.sum_jsd.abs().sum()) == 0.0


def test_pairwise_low_precision_inputs() -> None:
    data = make_pair_data()
    for dtype in (torch.float16, torch.bfloat16):
        m = PairwiseRoutingStats(GATES, E)
        cast = {k: torch.from_numpy(v).to(dtype) for k, v in data.items()}
        m.update(cast)
        ref = PairwiseRoutingStats(GATES, E)
        ref.update({k: v.double() for k, v in cast.items()})
        assert_summary_equal(m.compute(), ref.compute())


# --------------------------------------------------------------------------- ExpertStats

D = 8


def make_expert_data(seed: int = 2, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    """Outputs [n, 4, D]: a ReLU expert, its exact copy, an independent one, and a dead one."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5))
    a = np.maximum(x @ rng.normal(size=(5, D)), 0)
    out = np.stack([a, a, rng.normal(size=(n, D)), np.zeros((n, D))], axis=1)
    out[17::400, 2, 3] = np.nan
    return out, rng.permutation(n).astype(np.int64) + 10


def run_expert(
    data: tuple[np.ndarray, np.ndarray], batch_size: int, rows: slice = slice(None), **kwargs: Any
) -> ExpertStats:
    out, idx = data[0][rows], data[1][rows]
    kwargs.setdefault("sample_rate", 0.2)
    kwargs.setdefault("seed", 4)
    m = ExpertStats(4, D, **kwargs)
    for s in batches(len(out), batch_size):
        m.update(torch.from_numpy(out[s]).float(), torch.from_numpy(idx[s]))
    return m


def test_expert_stats_matches_direct_computation() -> None:
    out, idx = make_expert_data()
    s = run_expert((out, idx), batch_size=700).compute()
    assert isinstance(s, ExpertSummary)
    f = out.astype(np.float32).astype(np.float64)
    ok = np.isfinite(f).all((1, 2))
    assert s.n == int(ok.sum()) and s.nonfinite_rows == 7 and s.sample_capped_rows == 0
    np.testing.assert_allclose(s.zero_fraction.numpy(), (f[ok] == 0).mean((0, 2)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(s.mean_norm.numpy(), np.linalg.norm(f[ok], axis=2).mean(0), rtol=1e-7, atol=0)
    assert s.zero_fraction[3].item() == 1.0  # dead expert
    sample = (row_hash(torch.from_numpy(idx), 4).numpy() < 0.2) & ok
    assert s.n_sampled == int(sample.sum()) > 300
    z = torch.from_numpy(f[sample])
    for a in range(3):
        for b in range(3):
            # float32 outputs: the Gram update runs in float32 on centered rows (tests/test_expert_gram_precision.py)
            ref = linear_cka(z[:, a], z[:, b]).item()
            assert s.cka[a, b].item() == pytest.approx(ref, abs=CKA_FLOAT32_ATOL)
    assert s.cka[0, 1].item() == pytest.approx(1.0, abs=1e-12)  # identical experts
    assert s.cka[0, 2].item() < 0.05  # independent expert
    assert torch.isnan(s.cka[3]).all()  # dead expert: CKA undefined


@pytest.mark.parametrize(
    ("batch_size", "sync_free"),
    [(1000, None), (333, None), (N, None), (333, True)],
    ids=["1000", "333", "all", "sync-free"],
)
def test_expert_stats_batch_split_and_merge(batch_size: int, sync_free: bool | None) -> None:
    data = make_expert_data()
    one_pass = run_expert(data, batch_size=N).compute()
    kw = {"sync_free": sync_free}
    assert_expert_summary_close(run_expert(data, batch_size=batch_size, **kw).compute(), one_pass)
    a = run_expert(data, batch_size=batch_size, rows=slice(0, 1300), **kw)
    a.merge_state(run_expert(data, batch_size=batch_size, rows=slice(1300, None), **kw))
    assert_expert_summary_close(a.compute(), one_pass)


def assert_expert_summary_close(a: ExpertSummary, b: ExpertSummary) -> None:
    """Equal to 1e-9, but CKA of float32 outputs to `CKA_FLOAT32_ATOL` (each update's float32 Gram
    product is centered on that update's rows, so other batch boundaries round differently)."""
    torch.testing.assert_close(a.cka, b.cka, atol=CKA_FLOAT32_ATOL, rtol=0, equal_nan=True)
    assert_summary_equal(dataclasses.replace(a, cka=b.cka), b, atol=1e-9)


def test_expert_stats_list_inputs_with_different_dims() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(600, 4))
    parts = [
        x @ rng.normal(size=(4, 3)),
        np.maximum(x @ rng.normal(size=(4, 5)), 0),
        rng.normal(size=(600, 2)),
    ]
    m = ExpertStats(3, (3, 5, 2), sample_rate=1.0, max_sample_per_update=600)
    m.update([torch.from_numpy(p) for p in parts])
    s = m.compute()
    assert s.n_sampled == 600 and s.dims == (3, 5, 2)
    for a in range(3):
        for b in range(3):
            ref = linear_cka(torch.from_numpy(parts[a]), torch.from_numpy(parts[b])).item()
            assert s.cka[a, b].item() == pytest.approx(ref, abs=1e-10)
    np.testing.assert_allclose(s.zero_fraction.numpy(), [(p == 0).mean() for p in parts], rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="equal dims"):
        m.update(torch.zeros(5, 3, 3))
    with pytest.raises(ValueError, match="outputs"):
        m.update([torch.zeros(5, 3), torch.zeros(5, 5)])


def test_expert_stats_cap_and_low_precision() -> None:
    out, idx = make_expert_data()
    capped = run_expert((out, idx), batch_size=1000, max_sample_per_update=20).compute()
    assert capped.sample_capped_rows > 0 and capped.n_sampled == 20 * 3
    capped_acc = run_expert((out, idx), batch_size=1000, max_sample_per_update=20, sync_free=True).compute()
    assert_expert_summary_close(capped_acc, capped)
    for dtype in (torch.float16, torch.bfloat16):
        m, ref = ExpertStats(4, D, sample_rate=0.2), ExpertStats(4, D, sample_rate=0.2)
        cast = torch.from_numpy(out).to(dtype)
        m.update(cast)
        ref.update(cast.double())
        got, want = m.compute(), ref.compute()
        # Row norms are taken in float32 for 16-bit inputs, and so is the centered Gram product;
        # counts and zeros are exact.
        torch.testing.assert_close(got.mean_norm, want.mean_norm, rtol=1e-6, atol=0)
        torch.testing.assert_close(got.cka, want.cka, atol=CKA_FLOAT32_ATOL, rtol=0, equal_nan=True)
        assert_summary_equal(dataclasses.replace(got, mean_norm=want.mean_norm, cka=want.cka), want)


def test_expert_stats_reset() -> None:
    data = make_expert_data()
    m = run_expert(data, batch_size=N)
    expected = m.compute()
    m.reset()
    assert int(m.n_sampled) == 0 and float(m.gram.abs().sum()) == 0.0
    m.update(torch.from_numpy(data[0]).float(), torch.from_numpy(data[1]))
    assert_summary_equal(m.compute(), expected)


# --------------------------------------------------------------------------- memory, DDP


def _stat_factories() -> dict[str, tuple[Callable[[], Any], Callable[[Any, int], None]]]:
    gen = torch.Generator().manual_seed(0)

    def gate_update(m: Any, i: int) -> None:
        m.update(torch.softmax(torch.randn(64, E, generator=gen), 1), torch.rand(64, 3, generator=gen))

    def pair_update(m: Any, i: int) -> None:
        m.update({k: torch.softmax(torch.randn(64, E, generator=gen), 1) for k in GATES})

    def expert_update(m: Any, i: int) -> None:
        m.update(torch.randn(64, 4, D, generator=gen))

    return {
        "gate": (lambda: GateStats(E, label_names=LABELS, reservoir_size=100), gate_update),
        "pairwise": (lambda: PairwiseRoutingStats(GATES, E), pair_update),
        "expert": (lambda: ExpertStats(4, D, sample_rate=0.5), expert_update),
    }


@pytest.mark.parametrize("kind", ["gate", "pairwise", "expert"])
def test_state_size_does_not_depend_on_rows(kind: str) -> None:
    make, update = _stat_factories()[kind]
    shapes = {}
    for n_updates in (0, 10, 100):
        m = make()
        for i in range(n_updates):
            update(m, i)
        shapes[n_updates] = state_shapes(m)
    assert shapes[0] == shapes[10] == shapes[100]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """One rank of a real gloo process group: update on its shard, compute() syncs across ranks."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        shard = slice(rank * N // world, (rank + 1) * N // world)
        gate = run_gate_stats(make_gate_data(), batch_size=500, rows=shard)
        pair = run_pairwise(make_pair_data(), batch_size=500, rows=shard)
        expert = run_expert(make_expert_data(), batch_size=500, rows=shard)
        summaries = (gate.compute(), pair.compute(), expert.compute())
        with open(Path(out_dir) / f"rank{rank}.pkl", "wb") as fh:
            pickle.dump(summaries, fh)
    finally:
        dist.destroy_process_group()


def test_distributed_sync_equals_one_pass(tmp_path: Path) -> None:
    # fork: the ranks inherit the imported modules (a spawn re-imports torch, ~5 s per rank).
    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="fork")
    expected = (
        run_gate_stats(make_gate_data()).compute(),
        run_pairwise(make_pair_data(), batch_size=N).compute(),
        run_expert(make_expert_data(), batch_size=N).compute(),
    )
    for rank in range(2):
        with open(tmp_path / f"rank{rank}.pkl", "rb") as fh:
            got = pickle.load(fh)
        for g, e in zip(got, expected, strict=True):
            assert_summary_equal(g, e, atol=1e-9)


def test_gate_entropy_kernel_is_what_gate_stats_uses() -> None:
    g = torch.softmax(torch.randn(100, 5, generator=torch.Generator().manual_seed(3)), 1)
    m = GateStats(5, reservoir_size=0)
    m.update(g)
    h = gate_entropy(g.double())
    assert m.compute().entropy_mean == pytest.approx(float(h.mean()), abs=1e-14)
