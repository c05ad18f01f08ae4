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
