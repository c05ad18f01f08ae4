"""Normal-approximation (CLT) intervals for a mean and for a paired difference of means.

A metric that is a mean of per-row values (log loss, squared or absolute error) has the plain
central-limit interval ``mean ± z · sd / sqrt(n)``; for two prediction sets scored on the SAME rows,
the difference of their metrics is the mean of the per-row differences ``d_i = a_i - b_i``, whose
interval uses the standard deviation of ``d`` (the rows' own difficulty cancels, as in a paired
t-test). The sample standard deviation has ``ddof=1``. Arrays are float64 numpy vectors.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

__all__ = ["mean_interval", "normal_quantile", "paired_difference_interval", "wald_interval"]


def normal_quantile(ci: float) -> float:
    """Two-sided standard-normal quantile ``z`` with ``P(|Z| <= z) = ci`` (1.959964 for 0.95)."""
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    return NormalDist().inv_cdf(0.5 + ci / 2.0)


def wald_interval(point: float, variance: float, ci: float) -> tuple[float, float]:
    """``point ± z · sqrt(variance)``; (NaN, NaN) when the variance is not finite or negative."""
    if not (math.isfinite(point) and math.isfinite(variance)) or variance < 0:
        return math.nan, math.nan
    half = normal_quantile(ci) * math.sqrt(variance)
    return point - half, point + half


def mean_interval(x: np.ndarray, ci: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``x [n]`` with its CLT interval: (mean, lo, hi); lo, hi are NaN when ``n < 2``."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan
    lo, hi = wald_interval(mean, float(x.var(ddof=1)) / n, ci)
    return mean, lo, hi


def paired_difference_interval(a: np.ndarray, b: np.ndarray, ci: float = 0.95) -> tuple[float, float, float]:
    """``mean(a) - mean(b)`` for per-row values ``a [n]``, ``b [n]`` on the same rows, with its paired CLT
    interval: (difference, lo, hi). The point is the difference of the two float64 means."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a and b must be vectors of the same length, got {a.shape} and {b.shape}")
    n = len(a)
    if n == 0:
        return math.nan, math.nan, math.nan
    delta = float(a.mean()) - float(b.mean())
    if n < 2:
        return delta, math.nan, math.nan
    lo, hi = wald_interval(delta, float((a - b).var(ddof=1)) / n, ci)
    return delta, lo, hi
