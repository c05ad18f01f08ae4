"""The fast paths of the statistics give the same numbers as the direct computation.

Wide experts (Σd >= 256) update only the upper block triangle of the Gram; narrow experts (d <= 32)
get their per-row reductions on one stacked tensor; `update_gates` updates every gate's `GateStats`
and the `PairwiseRoutingStats` in one stacked pass.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_expert_gram_precision import CKA_FLOAT32_ATOL

from mmoe_inspect.functional import linear_cka
from mmoe_inspect.stats import ExpertStats


@pytest.mark.parametrize("d", [8, 96], ids=["narrow-stacked", "wide-panels"])
def test_expert_stats_fast_paths_match_direct(d: int) -> None:
    rng = np.random.default_rng(3)
    n, e = 900, 4
    x = rng.normal(size=(n, 6))
    base = np.maximum(x @ rng.normal(size=(6, d)), 0)
    parts = [base, base * 2.0, rng.normal(size=(n, d)), np.maximum(rng.normal(size=(n, d)) - 1.0, 0)]
    t = [torch.from_numpy(p).float() for p in parts]
    m = ExpertStats(e, d, sample_rate=1.0, max_sample_per_update=n)
    merged = ExpertStats(e, d, sample_rate=1.0, max_sample_per_update=n)
    other = ExpertStats(e, d, sample_rate=1.0, max_sample_per_update=n)
    for s in (slice(0, 300), slice(300, 650), slice(650, n)):
        m.update([p[s] for p in t], torch.arange(n)[s])
    merged.update([p[:400] for p in t], torch.arange(400))
    other.update([p[400:] for p in t], torch.arange(400, n))
    merged.merge_state(other)
    f = [p.double() for p in t]
    for s in (m.compute(), merged.compute()):
        assert s.n == s.n_sampled == n
        np.testing.assert_allclose(s.zero_fraction.numpy(), [(p == 0).double().mean() for p in f], atol=1e-15)
        np.testing.assert_allclose(s.mean_norm.numpy(), [p.norm(dim=1).mean() for p in f], rtol=1e-6, atol=0)
        for a in range(e):
            for b in range(e):
                ref = linear_cka(f[a], f[b]).item()  # float32 outputs: float32 centered Gram product
                assert s.cka[a, b].item() == pytest.approx(ref, abs=CKA_FLOAT32_ATOL)
        assert s.cka[0, 1].item() == pytest.approx(1.0, abs=1e-12)  # scaled copy
        assert s.cka[0, 2].item() < 0.1


def _gate_batches(n_batches: int, batch: int, e: int, seed: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        base = torch.randn(batch, e, generator=gen)
        out.append(
            {
                "a": torch.softmax(base * 3, 1),
                "b": torch.softmax(base + torch.randn(batch, e, generator=gen), 1),
                "c": torch.softmax(torch.randn(batch, e, generator=gen), 1).double(),  # another dtype
                "d": torch.softmax(torch.randn(batch, e + 2, generator=gen) * 4, 1),  # another width
                "e": torch.softmax(torch.randn(batch, e, generator=gen), 1),
            }
        )
    return out


@pytest.mark.parametrize("nonfinite", [False, True], ids=["finite", "nan-row"])
def test_update_gates_equals_separate_updates(nonfinite: bool) -> None:
    from mmoe_inspect.stats import GateStats, PairwiseRoutingStats, update_gates

    e, batch = 6, 700
    batches = _gate_batches(3, batch, e, seed=1)
    if nonfinite:
        batches[1]["b"][7, 2] = float("nan")
    gen = torch.Generator().manual_seed(2)
    labels = [(torch.rand(batch, 2, generator=gen) < 0.3).double() for _ in batches]
    labels[2][3, 1] = float("nan")

    def make() -> tuple[dict[str, GateStats], list[PairwiseRoutingStats]]:
        stats = {
            n: GateStats(e + 2 if n == "d" else e, label_names=("x", "y"), reservoir_size=50, seed=5)
            for n in "abcde"
        }
        return stats, [PairwiseRoutingStats(["b", "a", "e"], e), PairwiseRoutingStats(["a", "c"], e)]

    fast, fast_pairs = make()
    ref, ref_pairs = make()
    for i, g in enumerate(batches):
        rows = torch.arange(i * batch, (i + 1) * batch) * 3 + 1
        update_gates(fast, g, labels[i], rows, pairwise=fast_pairs)
        for n, st in ref.items():
            st.update(g[n], labels[i], rows)
        for ps in ref_pairs:
            ps.update({n: g[n] for n in ps.gate_names})
    for n in ref:
        for state in ref[n]._defaults:
            got, want = getattr(fast[n], state), getattr(ref[n], state)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, equal_nan=True, msg=f"{n}.{state}")
        assert fast[n].compute().n == ref[n].compute().n
    for got_ps, want_ps in zip(fast_pairs, ref_pairs, strict=True):
        for state in want_ps._defaults:
            torch.testing.assert_close(
                getattr(got_ps, state), getattr(want_ps, state), rtol=1e-12, atol=1e-12
            )
        torch.testing.assert_close(got_ps.compute().jsd, want_ps.compute().jsd, rtol=1e-12, atol=1e-12)
    assert float(ref_pairs[0].compute().jsd[0, 1]) > 0.01  # the gates do differ


def test_top1_counts_the_first_maximum_like_argmax() -> None:
    """The stacked pass picks each row's top-1 expert without argmax (first maximum by rank weights):
    planted ties go to the lowest expert, exactly as ``argmax``; random rows agree with it too."""
    from mmoe_inspect.stats import GateStats, update_gates

    ties = torch.tensor(
        [[0.25] * 4, [0.5, 0.5, 0.0, 0.0], [0.0, 0.4, 0.4, 0.2], [0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.0, 1.0]],
        dtype=torch.float64,
    )
    rand = torch.softmax(torch.randn(5000, 4, generator=torch.Generator().manual_seed(0)) * 3, 1)
    for g in (ties, rand.double(), rand):
        one = GateStats(4)
        one.update(g)
        both = {"a": GateStats(4), "b": GateStats(4)}
        update_gates(both, {"a": g, "b": g.flip(0)})
        want = torch.bincount(g.argmax(1), minlength=4)
        assert torch.equal(one.top1, want)
        assert torch.equal(both["a"].top1, want) and torch.equal(both["b"].top1, want)
    one = GateStats(4)
    one.update(ties)
    assert one.top1.tolist() == [2, 1, 0, 2]  # uniform and [.5, .5] rows -> expert 0; [0, .4, .4] -> 1


def test_constant_weight_has_zero_variance_whatever_the_sharding() -> None:
    """E[g²] - E[g]² of a constant weight is rounding noise that differs between shardings; below
    1e-12 E[g²] it is reported as exactly 0 (a real spread, std 1e-4 of the weight, is kept)."""
    from mmoe_inspect.stats import GateStats

    gen = torch.Generator().manual_seed(1)
    n = 10_007
    varying = torch.rand(n, generator=gen) * 0.2
    tiny = 0.1 + 1e-5 * torch.randn(n, generator=gen, dtype=torch.float64)
    g = torch.stack([varying, tiny, torch.full((n,), 0.1 / 3, dtype=torch.float64)], 1).double()
    g = torch.cat([g, (1 - g.sum(1, keepdim=True))], 1)  # rows sum to 1
    results = []
    for cuts in ([n], [3000, n - 3000], [1, 17, 4000, n - 4018]):
        st = GateStats(4)
        start = 0
        for c in cuts:
            st.update(g[start : start + c])
            start += c
        results.append(st.compute())
    for s in results:
        assert s.var[2].item() == 0.0 and s.std[2].item() == 0.0
        assert s.var[1].item() == pytest.approx(1e-10, rel=0.05)
        assert s.var[0].item() > 1e-3


@pytest.mark.parametrize("nan", [False, True], ids=["finite", "nan"])
def test_task_output_stats_host_path_equals_sync_free_path(nan: bool) -> None:
    """`TaskOutputStats` skips masking after one host read when everything is finite; the sync-free
    path (no host reads) masks always. Both give the same states, with and without NaN values."""
    from mmoe_inspect.stats.outputs import TaskOutputStats

    gen = torch.Generator().manual_seed(2)
    p = torch.cat([torch.rand(3000, 2, generator=gen), torch.randn(3000, 1, generator=gen)], 1)
    y = torch.cat(
        [(torch.rand(3000, 2, generator=gen) < 0.2).float(), torch.randn(3000, 1, generator=gen)], 1
    )
    if nan:
        p[::7, 0] = float("nan")
        y[::5, 1] = float("nan")
    host, free = (TaskOutputStats(["binary", "binary", "regression"], sync_free=s) for s in (False, True))
    for lo in range(0, 3000, 1000):
        host.update(p[lo : lo + 1000], y[lo : lo + 1000])
        free.update(p[lo : lo + 1000], y[lo : lo + 1000])
    for state in host._defaults:
        torch.testing.assert_close(getattr(host, state), getattr(free, state), rtol=1e-12, atol=1e-12)
    s = host.compute()
    assert s.n.tolist() == ([3000 - 429, 3000, 3000] if nan else [3000] * 3)
    assert s.prediction_hist.sum(1).tolist() == s.n_labelled.tolist()
