"""The streamed analytic evaluation (`causal.streamed`) gives `Evaluation(intervals="analytic")`'s numbers
from batches, with loss moments merged exactly and the AUC scores spilled to disk and removed after."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from mmoe_inspect.causal.metrics import Evaluation
from mmoe_inspect.causal.streamed import EvaluationStream, LossMoments, SpillError
from mmoe_inspect.topology.spec import TaskSpec

TASKS = (TaskSpec("click"), TaskSpec("buy"), TaskSpec("watch", kind="regression"))
KEYS = ("intact", "a", "b", "c", "base")


def _data(n: int = 3000, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """labels `[n, 3]` (some missing) and predictions `[5, n, 3]` float32 with planted differences,
    ties (rounded scores), a non-finite prediction of set "b" on a labelled row, and a baseline that
    does not predict "buy" (all NaN); set "c" equals the intact model on "buy"."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3))
    labels = np.stack(
        [(z[:, 0] + rng.normal(size=n) > 0.3), (z[:, 1] + rng.normal(size=n) > 1.8), np.zeros(n)], 1
    ).astype(np.float64)
    labels[:, 2] = z[:, 2] * 2 + rng.normal(size=n)
    labels[rng.random(n) < 0.1, 0] = np.nan
    labels[rng.random(n) < 0.05, 2] = np.nan
    preds = np.empty((5, n, 3), dtype=np.float32)
    for k, noise in enumerate((0.5, 0.8, 0.6, 1.5, 0.7)):
        logit = z + rng.normal(scale=noise, size=(n, 3))
        preds[k, :, :2] = 1 / (1 + np.exp(-logit[:, :2]))
        preds[k, :, 2] = 2 * logit[:, 2]
    preds[1, :, 0] = np.round(preds[1, :, 0], 2)  # ties
    labelled = np.flatnonzero(np.isfinite(labels[:, 0]))
    preds[2, labelled[7], 0] = np.inf
    preds[4, :, 1] = np.nan
    preds[3, :, 1] = preds[0, :, 1]  # "c" leaves "buy" alone: not ranked again, a zero difference
    return labels, preds


def _stream(labels: np.ndarray, preds: np.ndarray, cuts: list[int], **kw) -> EvaluationStream:
    stream = EvaluationStream(TASKS, {k: i for i, k in enumerate(KEYS)}, **kw)
    edges = [0, *cuts, len(labels)]
    for lo, hi in itertools.pairwise(edges):
        stream.update(labels[lo:hi], preds[:, lo:hi])
    return stream


def _close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def test_streamed_numbers_equal_the_in_memory_analytic_evaluation() -> None:
    labels, preds = _data()
    full = Evaluation(labels, TASKS, {k: preds[i] for i, k in enumerate(KEYS)}, intervals="analytic")
    with _stream(labels, preds, [1, 700, 701, 2048]) as stream:
        ev = stream.finish(threads=2)  # sets ranked on two threads at once
    checked = 0
    for t in TASKS:
        assert ev.n_labelled(t.name) == full.n_labelled(t.name)
        assert _close(ev.positive_rate(t.name), full.positive_rate(t.name))
        for metric in full.metrics(t.name):
            for key in KEYS:
                assert _close(ev.value(key, t.name, metric), full.value(key, t.name, metric)), (
                    key,
                    t.name,
                    metric,
                )
                for got, want in zip(
                    ev.interval(key, t.name, metric), full.interval(key, t.name, metric), strict=True
                ):
                    assert _close(got, want), (key, t.name, metric)
                for a, b in ((key, "intact"), ("intact", key)):
                    got3, want3 = ev.compare(a, b, t.name, metric), full.compare(a, b, t.name, metric)
                    assert all(_close(x, y) for x, y in zip(got3, want3, strict=True)), (a, b, t.name, metric)
                    checked += math.isfinite(want3[1])
    assert checked > 40  # most comparisons have intervals ...
    assert math.isnan(ev.value("b", "click", "auc")) and math.isnan(
        ev.value("b", "click", "logloss")
    )  # ... not inf
    assert math.isnan(ev.value("base", "buy", "auc")) and math.isfinite(ev.value("base", "click", "auc"))
    assert ev.value("a", "click", "auc") < ev.value("intact", "click", "auc")  # the planted ordering survives
    assert ev.compare("c", "intact", "click", "auc")[2] < 0
    assert ev.compare("c", "intact", "buy", "auc") == (
        0.0,
        0.0,
        0.0,
    )  # the noisiest set is significantly worse


def test_large_stream_with_soft_labels_equals_the_in_memory_evaluation() -> None:
    """Enough rows for the radix-sorted ranking (more than 4,096 a task), batches with a single row,
    ragged batch sizes, and soft labels in some batches (the log loss's general formula there, the
    one-logarithm path elsewhere)."""
    labels, preds = _data(12_000, seed=8)
    labelled = np.flatnonzero(np.isfinite(labels[:, 0]))
    labels[labelled[5000:5010], 0] = 0.7  # positive for the AUC, a soft target for the log loss
    labels[labelled[9000:9004], 0] = 0.2
    full = Evaluation(labels, TASKS, {k: preds[i] for i, k in enumerate(KEYS)}, intervals="analytic")
    with _stream(labels, preds, [1, 2, 4096, 5000, 5001, 9100, 11_999]) as stream:
        ev = stream.finish()
    for t in TASKS:
        for metric in full.metrics(t.name):
            for key in KEYS:
                assert _close(ev.value(key, t.name, metric), full.value(key, t.name, metric)), (key, t.name)
                got, want = (
                    ev.compare(key, "intact", t.name, metric),
                    full.compare(key, "intact", t.name, metric),
                )
                assert all(_close(x, y) for x, y in zip(got, want, strict=True)), (key, t.name, metric)
                for x, y in zip(
                    ev.interval(key, t.name, metric), full.interval(key, t.name, metric), strict=True
                ):
                    assert _close(x, y), (key, t.name, metric)
    assert math.isfinite(ev.compare("a", "intact", "click", "auc")[1])


def test_one_logarithm_log_loss_is_the_general_formula_bit_for_bit() -> None:
    from mmoe_inspect.causal.streamed import row_losses

    rng = np.random.default_rng(4)
    p = rng.random((5, 3001)).astype(np.float32).astype(np.float64)
    p[:, :9] = [0.0, 1.0, 1e-9, 1 - 1e-9, 0.5, 1e-7, 1 - 1e-7, 2e-7, 0.25]  # clipped and edge values
    y = np.zeros(3001)
    y[:1200] = 1.0
    np.testing.assert_array_equal(
        row_losses("logloss", p, y, positives=1200, finite=True), row_losses("logloss", p, y)
    )


def test_loss_moments_merge_exactly_and_match_numpy() -> None:
    x = np.random.default_rng(0).normal(loc=5.0, size=(3, 1001))
    one, left, right = LossMoments(3), LossMoments(3), LossMoments(3)
    for lo in range(0, 1001, 97):
        one.update(x[:, lo : lo + 97])
    left.update(x[:, :400])
    right.update(x[:, 400:])
    left.merge(right)
    for m in (one, left):
        assert m.n == 1001
        np.testing.assert_allclose(m.mean, x.mean(1), rtol=1e-14)
        np.testing.assert_allclose(m.variance_of_mean(), x.var(1, ddof=1) / 1001, rtol=1e-12)


def test_spill_folder_is_removed_and_a_bad_folder_is_one_clear_error(tmp_path: Path) -> None:
    labels, preds = _data(400)
    stream = _stream(labels, preds, [150], spill_dir=str(tmp_path))
    (folder,) = list(tmp_path.iterdir())
    assert sorted(p.suffix for p in folder.iterdir()) == [".f32", ".f32"]  # two binary tasks
    assert stream.spilled_bytes == sum(p.stat().st_size for p in folder.iterdir())
    stream.finish()
    stream.close()
    assert not list(tmp_path.iterdir())

    with pytest.raises(RuntimeError, match="boom"), _stream(labels, preds, [], spill_dir=str(tmp_path)):
        raise RuntimeError("boom")
    assert not list(tmp_path.iterdir())  # removed on errors too

    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(SpillError, match="TMPDIR") as err:
        _stream(labels, preds, [], spill_dir=str(missing))
    assert "\n" not in str(err.value)


def test_comparisons_pair_with_the_reference_and_aliases_share_a_set() -> None:
    labels, preds = _data(500)
    positions = {"intact": 0, "a": 1, "a-again": 1, "b": 2, "c": 3, "base": 4}
    with EvaluationStream(TASKS, positions) as stream:
        stream.update(labels, preds)
        ev = stream.finish()
    assert ev.value("a-again", "click", "auc") == ev.value("a", "click", "auc")
    assert ev.compare("a-again", "intact", "buy", "logloss") == ev.compare("a", "intact", "buy", "logloss")
    with pytest.raises(ValueError, match="reference"):
        ev.compare("a", "c", "click", "auc")
    assert math.isnan(ev.value("unknown", "click", "auc"))


def test_radix_order_of_float32_scores_gives_the_float64_placements_exactly() -> None:
    from sklearn.metrics import roc_auc_score

    from mmoe_inspect.functional.delong import argsort_scores, auc_placements

    rng = np.random.default_rng(11)
    x = rng.normal(size=20_000).astype(np.float32)
    x[:300] = 0.0
    x[300:600] = -0.0  # equal to +0.0 as floats: one tie group
    x[600:2600] = np.round(x[600:2600], 1)  # many ties
    x[2600], x[2601] = np.inf, -np.inf
    x[2602:2610] = np.float32(1e-38)  # subnormal-adjacent tiny values
    order = argsort_scores(x)
    assert sorted(order.tolist()) == list(range(len(x)))
    assert (np.diff(x[order].astype(np.float64)) >= 0).all()
    y = (x + rng.normal(size=len(x)) > 0).astype(np.float64)
    finite = np.isfinite(x)
    fast, slow = auc_placements(x[finite], y[finite]), auc_placements(x[finite].astype(np.float64), y[finite])
    assert fast.auc == slow.auc
    assert math.isclose(fast.auc, roc_auc_score(y[finite], x[finite]), abs_tol=1e-12)
    np.testing.assert_array_equal(fast.positive, slow.positive)
    np.testing.assert_array_equal(fast.negative, slow.negative)
    untied = rng.permutation(np.unique(rng.random(30_000).astype(np.float32)))  # the no-ties path
    y2 = (untied + rng.normal(scale=0.3, size=len(untied)) > 0.5).astype(np.float64)
    fast, slow = auc_placements(untied, y2), auc_placements(untied.astype(np.float64), y2)
    assert fast.auc == slow.auc and math.isclose(fast.auc, roc_auc_score(y2, untied), abs_tol=1e-12)
    np.testing.assert_array_equal(fast.positive, slow.positive)


def test_room_for_the_spill_is_checked_before_the_pass(tmp_path: Path, monkeypatch) -> None:
    from collections import namedtuple

    import mmoe_inspect.causal.streamed as streamed

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(streamed.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 2**20, 2**20))
    stream = EvaluationStream(TASKS, {k: i for i, k in enumerate(KEYS)}, spill_dir=str(tmp_path))
    stream.check_room(None)  # unknown rows (a CSV): nothing to check
    # 2 binary tasks x 4 bytes x 5 sets = 40 B a row: 1.9 MiB > 1 MiB (it said "0.00 GiB ... 0.00 GiB free")
    with pytest.raises(
        SpillError, match=r"would write 1\.9 MiB of AUC scores .* which has 1\.0 MiB free; .*--limit"
    ):
        stream.check_room(50_000)
    with pytest.raises(SpillError, match=r"would write 1,048,600 bytes .* which has 1,048,576 bytes free"):
        stream.check_room(26_215)  # close sizes: exact bytes
    stream.check_room(20_000)  # 840 kB fits
    assert not list(tmp_path.iterdir())


def test_one_thread_ranks_in_the_caller_and_frees_memory(monkeypatch) -> None:
    """On one thread every set is ranked in the calling thread (a worker's allocations would sit in a malloc
    arena of their own: two rankings resident instead of one); on two, in the pool's threads. Freed memory
    is handed back to the OS at the end (glibc)."""
    import sys
    import threading

    import mmoe_inspect.causal.streamed as streamed
    from mmoe_inspect._memory import _malloc_trim

    rng = np.random.default_rng(0)
    tasks = (TaskSpec("a", output="a", kind="binary"),)
    positions = {"intact": 0, "v1": 1, "v2": 2}
    seen: list[int] = []
    orig = streamed.twice_placements

    def spy(*a, **k):
        seen.append(threading.get_ident())
        return orig(*a, **k)

    monkeypatch.setattr(streamed, "twice_placements", spy)
    trims: list[int] = []
    monkeypatch.setattr(streamed, "release_free_memory", lambda: trims.append(1))
    for threads in (1, 2):
        seen.clear()
        with EvaluationStream(tasks, positions, ci=0.95) as stream:
            for _ in range(3):
                labels = (rng.random((500, 1)) < 0.3).astype(np.float64)
                stream.update(labels, rng.random((3, 500, 1)).astype(np.float32))
            stream.finish(threads=threads)
        assert len(seen) == 3
        assert (set(seen) == {threading.get_ident()}) == (threads == 1)
    assert trims == [1, 1]
    if sys.platform.startswith("linux"):
        assert _malloc_trim() is not None  # glibc: the trim is real here


def test_ranking_threads_shrink_on_many_rows() -> None:
    """Extra ranking threads hold about EXTRA_THREAD_BYTES_PER_ROW a row each: beyond RANKING_PARALLEL_BYTES
    the sets are ranked on fewer threads, whatever torch's thread count."""
    from mmoe_inspect.causal.streamed import (
        EXTRA_THREAD_BYTES_PER_ROW,
        RANKING_PARALLEL_BYTES,
        ranking_threads,
    )

    assert ranking_threads(1, 10) == 1 and ranking_threads(0, 10) == 1
    assert ranking_threads(2, 1_000_000) == 2 and ranking_threads(8, 1_000) == 8
    assert ranking_threads(2, 4_000_000) == 1 and ranking_threads(2, 16_000_000) == 1  # then in the caller
    edge = RANKING_PARALLEL_BYTES // EXTRA_THREAD_BYTES_PER_ROW
    assert ranking_threads(2, edge) == 2 and ranking_threads(2, edge + 1) == 1
