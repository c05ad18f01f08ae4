"""The streamed evaluation's lean DeLong path (`twice_placements`, `twice_variance`): exact doubled placements
as integers, checked against midranks (scipy) and against `auc_placements` / `delong_variance`, on the
radix-sorted float32 path and the argsort path, with ties, signed zeros, infinities, one-row classes and
sums beyond 32 bits."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from mmoe_inspect.functional import delong
from mmoe_inspect.functional.delong import (
    AUCPlacements,
    argsort_scores,
    auc_placements,
    delong_variance,
    twice_placements,
    twice_variance,
)


def _positives_first(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    order = np.argsort(y <= 0.5, kind="stable")
    return scores[order], y[order], int((y > 0.5).sum())


def _midrank_twice(scores: np.ndarray, m: int) -> np.ndarray:
    """Doubled placements from Sun & Xu's midranks (rows positives first): ``2 (R - Rx)`` for a positive,
    ``2m - 2 (R - Ry)`` for a negative; half-integer midranks, so exact in float64."""
    x = scores.astype(np.float64)
    r = rankdata(x)
    pos = 2 * (r[:m] - rankdata(x[:m]))
    neg = 2 * m - 2 * (r[m:] - rankdata(x[m:]))
    return np.concatenate([pos, neg])


def _case(name: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    n = 30_000 if name != "small" else 700
    y = (rng.random(n) < 0.2).astype(np.float64)
    z = rng.normal(size=n) + y
    s = (1 / (1 + np.exp(-z))).astype(np.float32)
    if name == "ties":
        s = np.round(s, 2).astype(np.float32)  # heavy ties across the classes
    elif name == "some_ties":
        s = np.round(s, 5).astype(np.float32)  # about 1 row in 8 ties the one before (per-group path)
    elif name == "signed":  # negative scores (the key transform), both zeros in one tie group, infinities
        s = z.astype(np.float32)
        s[:500], s[500:1000] = 0.0, -0.0
        s[1000:1100] = np.round(s[1000:1100])
        s[1100], s[1101] = np.inf, -np.inf
    elif name == "tied":
        s[:] = 0.25
    elif name == "one_positive":
        y[:] = 0.0
        y[17] = 1.0
    elif name == "one_negative":
        y[:] = 1.0
        y[17] = 0.0
    elif name == "float64":
        return z, y  # argsort
    elif name == "widened":
        return s.astype(np.float64), y  # float32 values as float64: sorted as float32
    return s, y


CASES = [
    "distinct",
    "ties",
    "some_ties",
    "signed",
    "tied",
    "one_positive",
    "one_negative",
    "float64",
    "small",
]


@pytest.mark.parametrize("name", CASES)
def test_doubled_placements_are_exact_midrank_counts_and_the_auc_is_sklearns(name: str) -> None:
    scores, y = _case(name)
    s, yy, m = _positives_first(scores, y)
    got = twice_placements(s, m)
    assert got.twice.dtype == np.int32 and got.m == m and got.n == len(s) - m
    np.testing.assert_array_equal(got.twice, _midrank_twice(s, m))
    assert got.wins2 == int(got.twice[:m].sum()) == int(got.twice[m:].sum())
    finite = np.clip(s.astype(np.float64), -1e30, 1e30)  # same order; scikit-learn refuses infinities
    assert abs(got.auc - roc_auc_score(yy, finite)) <= 1e-12
    full = auc_placements(s, yy)
    assert got.auc == full.auc
    np.testing.assert_array_equal(got.twice[:m] / (2.0 * got.n), full.positive)
    np.testing.assert_array_equal(got.twice[m:] / (2.0 * m), full.negative)


@pytest.mark.parametrize("name", CASES)
def test_variances_equal_delong_variance_single_and_paired(name: str) -> None:
    scores, y = _case(name)
    rng = np.random.default_rng(5)
    other = scores + (0.4 * rng.normal(size=len(scores))).astype(scores.dtype)  # correlated set
    other[: len(other) // 3] = scores[: len(other) // 3]  # and bitwise equal on a third of the rows
    s, yy, m = _positives_first(scores, y)
    o, _, _ = _positives_first(other, y)
    a, b = twice_placements(o, m), twice_placements(s, m)
    fa, fb = auc_placements(o, yy), auc_placements(s, yy)
    for got, want in (
        (twice_variance(a), delong_variance(fa)),
        (twice_variance(a, b), delong_variance(fa, fb)),
    ):
        if name in ("one_positive", "one_negative"):
            assert math.isnan(got) and math.isnan(want)  # a one-row class has no sample variance
        else:
            assert got == pytest.approx(want, rel=1e-12, abs=1e-300), name
    if name not in ("one_positive", "one_negative"):
        assert twice_variance(b, b) == 0.0  # a set paired with itself: no spread at all
    if name == "tied":
        assert twice_variance(b) == 0.0 and b.auc == 0.5


def test_empty_class_has_no_auc_and_mismatched_labels_refuse_to_pair() -> None:
    s = np.linspace(0, 1, 5000, dtype=np.float32)
    none = twice_placements(s, 0)
    assert math.isnan(none.auc) and math.isnan(twice_variance(none))
    assert math.isnan(twice_placements(s, 5000).auc)
    with pytest.raises(ValueError, match="paired"):
        twice_variance(twice_placements(s, 10), twice_placements(s, 11))
    with pytest.raises(ValueError, match="at least m"):
        twice_placements(s, 5001)


def test_int64_path_gives_the_same_placements(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above 2^30 rows the counts are int64; force that path on a small vector and compare."""
    scores, y = _case("ties")
    s, yy, m = _positives_first(scores, y)
    narrow = twice_placements(s, m)
    ref = auc_placements(s, yy)
    monkeypatch.setattr(delong, "_INT32_LIMIT", 0)
    wide = twice_placements(s, m)
    assert wide.twice.dtype == np.int64
    np.testing.assert_array_equal(wide.twice, narrow.twice)
    assert wide.auc == narrow.auc and twice_variance(wide, narrow) == 0.0
    assert auc_placements(s, yy).auc == ref.auc


def test_four_million_rows_sum_beyond_32_bits() -> None:
    """2^22 + 2^20 rows, half positive: the doubled placements pass 2^22 and their sum 2^42, far beyond
    int32, and the squared deviations pass 2^53 in total. The AUC and the variances are checked against
    float placements summed by numpy (``mean``, ``var``: `delong_variance`'s arithmetic, no integer sums)."""
    rng = np.random.default_rng(0)
    n = 2**22 + 2**20
    y = rng.random(n) < 0.5
    z = rng.standard_normal(n, dtype=np.float32) + 0.5 * y
    order = np.argsort(~y, kind="stable")
    m = int(y.sum())
    s = (z / 4)[order]  # float32 rounding: ties
    o = (z + 0.5 * rng.standard_normal(n, dtype=np.float32))[order]
    a, b = twice_placements(o, m), twice_placements(s, m)
    assert a.wins2 > 2**42 and int(a.twice.max()) > 2**22
    k = n - m
    fa = AUCPlacements(a.auc, a.twice[:m] / (2.0 * k), a.twice[m:] / (2.0 * m))
    fb = AUCPlacements(b.auc, b.twice[:m] / (2.0 * k), b.twice[m:] / (2.0 * m))
    assert abs(a.auc - fa.positive.mean()) <= 1e-12 and abs(a.auc - fa.negative.mean()) <= 1e-12
    assert twice_variance(a) == pytest.approx(delong_variance(fa), rel=1e-11)
    assert twice_variance(a, b) == pytest.approx(delong_variance(fa, fb), rel=1e-11)


def test_radix_order_handles_negative_float32_scores() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=10_000).astype(np.float32)
    x[::7] = -0.0
    x[1::7] = 0.0
    x[5], x[6] = -np.inf, np.inf
    order = argsort_scores(x)
    assert sorted(order.tolist()) == list(range(len(x)))
    assert (np.diff(x[order].astype(np.float64)) >= 0).all()
    ro = argsort_scores(np.require(x, requirements="C"))
    assert (np.diff(x[ro]) >= 0).all()
    frozen = x.copy()
    frozen.flags.writeable = False  # read-only input (np.frombuffer, a memory map): no warning, same order
    assert (np.diff(x[argsort_scores(frozen)]) >= 0).all()
