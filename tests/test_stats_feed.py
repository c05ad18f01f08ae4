"""`StatsFeed` (batches coalesced into chunks) gives the states of one update per batch,
`inspect()`'s expert statistics are those of the rows in its deterministic expert sample, and
`SampledRows` picks that sample's rows per batch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from test_expert_gram_precision import CKA_FLOAT32_ATOL

from mmoe_inspect import FeatureSpec, inspect
from mmoe_inspect.functional.sampling import row_hash
from mmoe_inspect.inspector import InspectConfig
from mmoe_inspect.models import MMoE
from mmoe_inspect.recording.recorder import GateRecorder
from mmoe_inspect.stats import ExpertStats, GateStats, PairwiseRoutingStats, update_gates
from mmoe_inspect.stats import feed as feed_module
from mmoe_inspect.stats.feed import SampledRows, StatsFeed, sampled_positions
from mmoe_inspect.stats.outputs import TaskOutputStats

E, BATCH, N_BATCHES = 4, 100, 7


def _stats():
    gates = {n: GateStats(E, label_names=("y",), reservoir_size=64, seed=1) for n in ("a", "b")}
    pairs = [PairwiseRoutingStats(("a", "b"), E)]
    outputs = TaskOutputStats(["binary", "binary"])
    return gates, pairs, outputs


def _new_experts(dims):
    return ExpertStats(len(dims), list(dims), sample_rate=0.5, max_sample_per_update=10_000, seed=1)


def _batches():
    gen = torch.Generator().manual_seed(0)
    out = []
    for i in range(N_BATCHES):
        rows = torch.arange(i * BATCH, (i + 1) * BATCH)
        keep = torch.nonzero(row_hash(rows, 1) < 0.5).squeeze(1)
        out.append(
            {
                "gates": {n: torch.softmax(torch.randn(BATCH, E, generator=gen) * 2, 1) for n in ("a", "b")},
                "rows": rows,
                "lab": (torch.rand(BATCH, 2, generator=gen) < 0.3).double(),
                "pred": torch.rand(BATCH, 2, generator=gen),
                "experts": [torch.relu(torch.randn(len(keep), d, generator=gen)) for d in (3, 5)],
                "keep": keep,
            }
        )
    return out


def _assert_same(a, b) -> None:
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor) and f.name == "cka":  # float32 Gram product, centered per update
            torch.testing.assert_close(x, y, rtol=0, atol=CKA_FLOAT32_ATOL, equal_nan=True, msg=f.name)
        elif isinstance(x, torch.Tensor):
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12, equal_nan=True, msg=f.name)
        elif isinstance(x, dict):
            assert x.keys() == y.keys(), f.name
        elif isinstance(x, float):
            assert x == pytest.approx(y, rel=1e-12, abs=1e-12, nan_ok=True), f.name
        else:
            assert x == y, f.name


@pytest.mark.parametrize("chunk_rows", [1, 250, 700, 10_000])
def test_feed_in_chunks_equals_one_update_per_batch(chunk_rows: int, monkeypatch) -> None:
    batches = _batches()
    gates, pairs, outputs = _stats()
    experts = None
    for bt in batches:
        update_gates(gates, bt["gates"], bt["lab"][:, :1], bt["rows"], pairwise=pairs)
        outputs.update(bt["pred"], bt["lab"])
        experts = experts or _new_experts([3, 5])
        experts.update(bt["experts"], bt["rows"][bt["keep"]])

    fg, fp, fo = _stats()
    feed = StatsFeed(fg, fp, fo, _new_experts, chunk_rows=chunk_rows)
    updates: list[int] = []  # how often the gates were updated
    monkeypatch.setattr(feed_module, "update_gates", _counting(update_gates, updates))
    for bt in batches:
        feed.add(
            bt["gates"],
            bt["rows"],
            labels_binary=bt["lab"][:, :1],
            predictions=bt["pred"],
            labels=bt["lab"],
            experts=bt["experts"],
            expert_rows=bt["keep"],
        )
    feed.flush()
    feed.flush()  # idempotent
    expected_updates = N_BATCHES if chunk_rows <= BATCH else -(-N_BATCHES * BATCH // chunk_rows)
    assert len(updates) == expected_updates
    for name in gates:
        _assert_same(gates[name].compute(), fg[name].compute())
    _assert_same(pairs[0].compute(), fp[0].compute())
    _assert_same(outputs.compute(), fo.compute())
    assert feed.expert_stats is not None
    _assert_same(experts.compute(), feed.expert_stats.compute())


def _counting(fn, calls):
    def wrapper(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    return wrapper


def test_inspect_expert_statistics_use_only_the_sampled_rows() -> None:
    """With 6,000 rows and `expert_sample_rows=1,000`, the experts' zero fractions and norms are those
    of the rows whose hash is below 1/6 (the hooks copied only those), not of all rows."""
    torch.manual_seed(0)
    model = MMoE(6, ["click", "like"], n_experts=4, expert_hidden=(8,), tower_hidden=(4,)).eval()
    rng = np.random.default_rng(0)
    features = FeatureSpec.dense_only(6)
    frame = pd.DataFrame(rng.normal(size=(6000, 6)).astype("float32"), columns=list(features.dense))
    cfg = InspectConfig(batch_size=1000, expert_sample_rows=1000, stats_chunk_rows=2500, seed=3)
    result = inspect(model, frame, features=features, labels=False, config=cfg)

    topo = model.topology()
    names = [e.name for e in topo.experts if e.module is not None]
    with GateRecorder(model, topo, experts=True) as rec, torch.inference_mode():
        model(torch.from_numpy(frame.to_numpy(copy=True)))
        captured = rec.take().experts
        outs = [captured[n] for n in names]
    keep = row_hash(torch.arange(6000), 3) < 1000 / 6000
    assert 800 < int(keep.sum()) < 1200
    table = result.table("experts").set_index("expert").loc[names]
    differs = 0
    for i, o in enumerate(outs):
        sampled = o[keep]
        zero = float((sampled == 0).double().mean())
        assert table["zero_fraction"].iloc[i] == pytest.approx(zero, abs=1e-12)
        norm = float(sampled.norm(dim=1).double().mean())
        assert table["mean_output_norm"].iloc[i] == pytest.approx(norm, rel=1e-5)
        differs += abs(zero - float((o == 0).double().mean())) > 1e-6  # not the all-rows number
    assert differs > 0


def test_sampled_rows_equal_the_hash_rule_for_any_batching() -> None:
    """`SampledRows` (rows hashed a block at a time, looked up per batch) picks exactly the rows of
    `sampled_positions` for consecutive batches of any size and start (crossing blocks, batches
    larger than a block, going back), and for batches of other rows (no `start`)."""
    rate, seed = 0.2, 7
    sample = SampledRows(rate, seed, block=64)
    rng = np.random.default_rng(0)
    starts_sizes = [(0, 10), (10, 30), (40, 100), (140, 1), (141, 63), (204, 0), (5, 20), (10**9, 50)]
    starts_sizes += [
        (int(s), int(n)) for s, n in zip(rng.integers(0, 5000, 20), rng.integers(1, 300, 20), strict=True)
    ]
    for start, n in starts_sizes:
        rows = torch.arange(start, start + n, dtype=torch.int64)
        expected = sampled_positions(rows, rate, seed)
        pos, kept = sample.take(rows, start)
        assert pos.dtype == kept.dtype == torch.int64
        assert pos.tolist() == expected.tolist(), (start, n)
        assert kept.tolist() == rows[expected].tolist()
    shuffled = torch.from_numpy(rng.permutation(10_000)[:500].astype(np.int64))
    pos, kept = sample.take(shuffled)
    assert pos.tolist() == sampled_positions(shuffled, rate, seed).tolist()
    assert kept.tolist() == shuffled[pos].tolist()
    assert SampledRows(1.0, seed).take(shuffled, 0) is None
