"""DeLong's variance of the ROC AUC, alone and for the paired difference of two AUCs on the same rows.

DeLong, DeLong & Clarke-Pearson (1988), "Comparing the areas under two or more correlated receiver
operating characteristic curves: a nonparametric approach", Biometrics 44(3). With ``m`` positives
``X_i`` and ``n`` negatives ``Y_j`` and the kernel ``psi(x, y) = 1 if x > y, 1/2 if x = y, else 0``,
the placement values (DeLong's structural components) are

- ``V10(X_i) = (1/n) Σ_j psi(X_i, Y_j)``  per positive (share of negatives it outranks, ties half),
- ``V01(Y_j) = (1/m) Σ_i psi(X_i, Y_j)``  per negative (share of positives that outrank it),

the AUC is the mean of either, and for prediction sets ``r, s`` scored on the same rows

    S[r, s] = cov(V10_r, V10_s) / m + cov(V01_r, V01_s) / n        (covariances with ddof = 1),

so ``Var(AUC_a - AUC_b) = S[a,a] + S[b,b] - 2 S[a,b] = var(V10_a - V10_b)/m + var(V01_a - V01_b)/n``.
Sun & Xu (2014), "Fast implementation of DeLong's algorithm for comparing the areas under correlated
ROC curves", IEEE Signal Processing Letters 21(11), compute the placements from midranks in
O(n log n): ``V10(X_i) = (R_i - Rx_i) / n`` with ``R`` the midrank among all scores and ``Rx`` the
midrank among the positives. This module gets the same numbers from ONE sort of the scores: within
each group of tied scores it counts positives and negatives, and the cumulative counts give every
placement as an exact count (``2 · below + equal``) before one division, so ties are handled as the
midranks handle them and the AUC point equals scikit-learn's ``roc_auc_score`` to rounding.

Inputs are numpy vectors of finite scores (float32 kept as they are, anything else as float64: the
placements are exact counts either way) and 0/1 labels (``label > 0.5`` is positive).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from mmoe_inspect.functional.paired import wald_interval

__all__ = [
    "AUCPlacements",
    "TwicePlacements",
    "argsort_scores",
    "auc_placements",
    "delong_covariance",
    "delong_interval",
    "delong_paired_interval",
    "delong_variance",
    "midrank",
    "twice_placements",
    "twice_variance",
]


@dataclass(frozen=True)
class AUCPlacements:
    """One score vector's AUC and placement values against fixed labels.

    `positive [m]`: V10 of each positive, in row order; `negative [n]`: V01 of each negative, in row
    order. Two `AUCPlacements` of different scores on the same labels pair up element by element.
    """

    auc: float
    positive: np.ndarray
    negative: np.ndarray


def midrank(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x [n]`` with ties given their average rank (``scipy.stats.rankdata``'s "average")."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    order = np.argsort(x)  # tie order is irrelevant: ties get their group's value
    xs = x[order]
    new = np.ones(n, dtype=bool)
    new[1:] = xs[1:] != xs[:-1]
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], n)
    out = np.empty(n, dtype=np.float64)
    out[order] = ((starts + 1 + ends) / 2.0)[np.cumsum(new) - 1]
    return out


def _float32_key(scores: np.ndarray) -> np.ndarray:
    """int32 keys ``[n]`` ordered as the float32 ``scores [n]`` and equal exactly where the scores are equal
    (-0.0 and +0.0 share the key 0): the bit patterns as they are when no sign bit is set (probabilities:
    no copy), else sign-magnitude turned into two's complement. The scores must not be NaN."""
    bits = np.ascontiguousarray(scores).view(np.int32)
    if bits.min(initial=0) >= 0:
        return bits
    sign = bits >> 31  # 0 or -1
    key = bits ^ (sign & np.int32(0x7FFFFFFF))
    key -= sign  # -(magnitude) for a set sign bit
    return key


def _sorted(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(order [n], keys [n])``: an order sorting ``scores`` ascending (ties in any order) and the sorted
    values or keys, equal exactly where the sorted scores are equal. float32: torch's radix sort of the
    int32 keys (four 8-bit passes, O(n), one thread in a worker thread), also for float64 scores that are
    all exactly float32 values; other scores: ``np.argsort``."""
    if scores.dtype == np.float64 and len(scores) >= 4096:
        # float32 predictions widened to float64 (in-memory `Evaluation`) keep their order and ties as float32
        with np.errstate(over="ignore", invalid="ignore"):
            narrow = scores.astype(np.float32)
        if np.array_equal(narrow, scores):
            scores = narrow
    if scores.dtype == np.float32 and len(scores) >= 4096:
        key = _float32_key(scores)
        if not key.flags.writeable:  # torch.from_numpy warns on read-only memory
            key = key.copy()
        keys, order = torch.sort(torch.from_numpy(key), stable=True)
        return order.numpy(), keys.numpy()
    order = np.argsort(scores)
    return order, scores[order]


def argsort_scores(scores: np.ndarray) -> np.ndarray:
    """An order sorting ``scores [n]`` ascending (ties in any order). float32: a radix sort of order-preserving
    int32 keys (O(n): several times faster than a comparison sort on a million rows); other dtypes:
    ``np.argsort``. The scores must not be NaN."""
    return _sorted(scores)[0]


_INT32_LIMIT = 2**31  # placements and counts are int32 while twice the rows stay below this


def _twice_sorted(keys: np.ndarray, positive: np.ndarray, m: int) -> np.ndarray:
    """Doubled placements ``[n]`` in sorted order from the sorted ``keys [n]`` and the sorted rows' classes
    ``positive [n]`` (bool, ``m`` true): ``2 · Σ_j psi(x, Y_j)`` for a positive, ``2 · Σ_i psi(X_i, y)`` for
    a negative, exact integers (int32 below 2^30 rows, else int64).

    With a row's tie group spanning sorted rows ``[gs, ge)`` and ``C(i)`` the positives among the first
    ``i`` sorted rows, a positive's value is ``gs + ge - C(gs) - C(ge)`` (twice the negatives below the
    group plus the group's negatives) and a negative's ``2m - C(gs) - C(ge)`` (twice the positives above
    plus the group's positives). With few ties, every row is first computed as if untied (``ge = gs + 1``:
    a few passes) and the tied rows are then overwritten; with many, both values are computed per group
    and every row takes its own with one gather (a real model's float32 scores in a narrow range can tie
    on half of a million rows: 2^23 values per octave).
    """
    rows = len(keys)
    idx = np.int32 if 2 * rows < _INT32_LIMIT else np.int64  # every value and count is at most 2 · rows + 1
    pos_cum = np.empty(rows + 1, dtype=idx)  # C(i): positives among the first i sorted rows
    pos_cum[0] = 0
    np.cumsum(positive, dtype=idx, out=pos_cum[1:])
    tied = keys[1:] == keys[:-1]  # sorted row i + 1 ties row i
    n_tied = int(np.count_nonzero(tied))
    if n_tied * 16 < rows:  # few ties: every row as if untied (gs = i, ge = i + 1), then the tied rows' fix
        twice = np.where(positive, np.arange(1, rows + 1, dtype=idx), idx(m))
        twice -= pos_cum[1:]
        twice *= 2  # positive: 2 (i + 1 - C(i + 1)), negative: 2 (m - C(i + 1))
        if n_tied:
            after = np.zeros(rows, dtype=bool)  # ties the row before
            after[1:] = tied
            before = np.zeros(rows, dtype=bool)  # ties the row after
            before[:-1] = tied
            at = np.flatnonzero(after | before)  # every row of a tie group, ascending
            gs = np.maximum.accumulate(np.where(after[at], 0, at))  # the group's first row
            ge = np.minimum.accumulate(np.where(before[at], rows, at + 1)[::-1])[::-1]  # one past its last
            edges = pos_cum[gs].astype(np.int64)
            edges += pos_cum[ge]
            twice[at] = np.where(positive[at], gs + ge, 2 * m) - edges
        return twice
    new = np.empty(rows, dtype=bool)  # first row of its tie group
    new[0] = True
    np.logical_not(tied, out=new[1:])
    del tied
    bounds = np.empty(int(np.count_nonzero(new)) + 1, dtype=idx)  # group k spans [bounds[k], bounds[k + 1])
    bounds[:-1] = np.flatnonzero(new)
    bounds[-1] = rows
    edges = np.take(pos_cum, bounds)
    del pos_cum
    edges = edges[:-1] + edges[1:]  # C(gs) + C(ge) of each group
    values = np.empty(2 * len(bounds), dtype=idx)  # [2 + 2k]: group k's negatives, [3 + 2k]: its positives
    values[:2] = 0
    np.subtract(idx(2 * m), edges, out=values[2::2])
    np.add(bounds[:-1], bounds[1:], out=values[3::2])
    values[3::2] -= edges
    del edges, bounds
    at = np.cumsum(new, dtype=idx)  # 1 + the row's group
    del new
    at *= 2
    at += positive
    return np.take(values, at)  # np.take: twice as fast as values[at] with int32 indices


def _twice_by_row(
    scores: np.ndarray, positive_of: Callable[[np.ndarray], np.ndarray], m: int
) -> tuple[np.ndarray, int]:
    """Doubled placements ``[n]`` in row order and ``wins2 = 2 · Σ_i Σ_j psi(X_i, Y_j)``; ``positive_of(order)``
    gives the sorted rows' classes (bool ``[n]``)."""
    order, keys = _sorted(scores)
    positive = positive_of(order)
    twice = _twice_sorted(keys, positive, m)
    del keys, positive
    # positives' and negatives' doubled placements both sum to wins2 (each pair counted once by each side)
    wins2 = int(twice.sum(dtype=np.int64)) // 2
    by_row = np.empty_like(twice)  # back to row order in one scatter
    by_row[order] = twice
    return by_row, wins2


def _scores_and_classes(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores)
    if scores.dtype != np.float32:  # float32 scores are sorted as they are: same order, faster keys
        scores = scores.astype(np.float64, copy=False)
    positive = np.asarray(labels, dtype=np.float64) > 0.5
    if scores.shape != positive.shape or scores.ndim != 1:
        raise ValueError(
            f"scores and labels must be vectors of the same length, got {scores.shape}, {positive.shape}"
        )
    return scores, positive


def auc_placements(scores: np.ndarray, labels: np.ndarray) -> AUCPlacements:
    """AUC and DeLong placement values of ``scores [n]`` for 0/1 ``labels [n]`` (one sort, O(n log n)).

    The AUC is NaN when a class is empty (the placements of the other class are then empty too).
    """
    scores, positive = _scores_and_classes(scores, labels)
    m = int(positive.sum())
    n = len(scores) - m
    if m == 0 or n == 0:
        empty = np.empty(0, dtype=np.float64)
        return AUCPlacements(math.nan, empty, empty)
    twice, wins2 = _twice_by_row(scores, lambda order: positive[order], m)
    return AUCPlacements(wins2 / (2.0 * m * n), twice[positive] / (2.0 * n), twice[~positive] / (2.0 * m))


@dataclass(frozen=True)
class TwicePlacements:
    """One score vector's AUC and DOUBLED placement values as exact integers, for rows laid out with the
    ``m`` positives first: ``twice [m + n]`` (int32 below 2^30 rows, else int64) holds
    ``2n · V10`` of each positive in ``[:m]`` and ``2m · V01`` of each negative in ``[m:]``; both parts
    sum to ``wins2 = 2 · Σ_i Σ_j psi(X_i, Y_j)``. A quarter of `AUCPlacements`' memory, and the
    variances need no float copy of the placements (`twice_variance`)."""

    auc: float
    m: int
    n: int
    wins2: int
    twice: np.ndarray


def twice_placements(scores: np.ndarray, m: int) -> TwicePlacements:
    """`TwicePlacements` of finite ``scores [n]`` whose first ``m`` rows are the positives (one sort)."""
    scores = np.asarray(scores)
    if scores.dtype != np.float32:
        scores = scores.astype(np.float64, copy=False)
    if scores.ndim != 1 or not 0 <= m <= len(scores):
        raise ValueError(f"scores must be a vector with at least m = {m} rows, got shape {scores.shape}")
    n = len(scores) - m
    if m == 0 or n == 0:
        return TwicePlacements(math.nan, m, n, 0, np.empty(0, dtype=np.int32))
    twice, wins2 = _twice_by_row(scores, lambda order: order < m, m)
    return TwicePlacements(wins2 / (2.0 * m * n), m, n, wins2, twice)


_SSD_CHUNK = 1 << 16  # rows per float64 chunk of `_sum_sq_dev` (512 kB: stays in cache)


def _sum_sq_dev(a: np.ndarray, b: np.ndarray | None, total: int) -> float:
    """``Σ (x - mean)²`` of the integers ``x = a - b`` (``a`` when ``b`` is None) whose exact sum is ``total``:
    a two-pass sum around the known mean in float64 chunks (each ``x`` is exact in float64)."""
    k = len(a)
    mean = total / k
    buf = np.empty(min(k, _SSD_CHUNK), dtype=np.float64)
    acc = 0.0
    for lo in range(0, k, _SSD_CHUNK):
        hi = min(lo + _SSD_CHUNK, k)
        x = buf[: hi - lo]
        if b is None:
            np.subtract(a[lo:hi], mean, out=x)
        else:
            np.subtract(a[lo:hi], b[lo:hi], out=x)
            x -= mean
        np.multiply(x, x, out=x)
        acc += float(x.sum())
    return acc


def twice_variance(a: TwicePlacements, b: TwicePlacements | None = None) -> float:
    """DeLong variance of ``AUC_a`` (``b`` None) or of the paired difference ``AUC_a - AUC_b``, as
    `delong_variance` gives it for the same scores: ``var(V10)/m + var(V01)/n`` (ddof 1) from the doubled
    placements, their exact integer sums and their differences row by row. NaN where ``m < 2`` or ``n < 2``."""
    m, n = a.m, a.n
    if b is not None and (b.m != m or b.n != n):
        raise ValueError("placements of different label vectors cannot be paired")
    if m < 2 or n < 2:
        return math.nan
    total = a.wins2 - (b.wins2 if b is not None else 0)
    other = b.twice if b is not None else None
    pos = _sum_sq_dev(a.twice[:m], None if other is None else other[:m], total)
    neg = _sum_sq_dev(a.twice[m:], None if other is None else other[m:], total)
    return pos / (4.0 * n * n * (m - 1) * m) + neg / (4.0 * m * m * (n - 1) * n)


def delong_covariance(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """DeLong covariance ``[k, k]`` of ``k`` AUCs from their placements ``positive [k, m]``, ``negative [k, n]``.

    NaN where ``m < 2`` or ``n < 2`` (the sample covariance is undefined).
    """
    positive, negative = np.atleast_2d(positive), np.atleast_2d(negative)
    k, m = positive.shape
    n = negative.shape[1]
    if m < 2 or n < 2:
        return np.full((k, k), np.nan)
    return np.atleast_2d(np.cov(positive, ddof=1)) / m + np.atleast_2d(np.cov(negative, ddof=1)) / n


def delong_variance(a: AUCPlacements, b: AUCPlacements | None = None) -> float:
    """DeLong variance of ``AUC_a`` (``b`` None) or of the paired difference ``AUC_a - AUC_b``.

    ``a`` and ``b`` must come from the same labels (their placements pair up row by row).
    """
    pos, neg = a.positive, a.negative
    if b is not None:
        if b.positive.shape != pos.shape or b.negative.shape != neg.shape:
            raise ValueError("placements of different label vectors cannot be paired")
        pos, neg = pos - b.positive, neg - b.negative
    m, n = len(pos), len(neg)
    if m < 2 or n < 2:
        return math.nan
    return float(pos.var(ddof=1)) / m + float(neg.var(ddof=1)) / n


def delong_interval(scores: np.ndarray, labels: np.ndarray, ci: float = 0.95) -> tuple[float, float, float]:
    """AUC of ``scores [n]`` with its DeLong (Wald) interval clipped to [0, 1]: (auc, lo, hi)."""
    p = auc_placements(scores, labels)
    lo, hi = wald_interval(p.auc, delong_variance(p), ci)
    return p.auc, max(lo, 0.0) if math.isfinite(lo) else lo, min(hi, 1.0) if math.isfinite(hi) else hi


def delong_paired_interval(
    scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray, ci: float = 0.95
) -> tuple[float, float, float]:
    """``AUC(a) - AUC(b)`` on the same rows ``[n]`` with its DeLong paired interval: (difference, lo, hi)."""
    a, b = auc_placements(scores_a, labels), auc_placements(scores_b, labels)
    delta = a.auc - b.auc
    lo, hi = wald_interval(delta, delong_variance(a, b), ci)
    return delta, lo, hi
