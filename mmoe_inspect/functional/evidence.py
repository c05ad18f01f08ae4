"""Whether labelled rows are enough to judge a metric or a difference, and multiple-testing control.

One rule for every place that calls something "at chance", "too few" or "significant" on labelled rows:
the task table (`analysis.tables`), the baseline gains, the expert ablations and the gate counterfactuals
(`causal`), and the review's baseline check. Plain floats in, plain answers out (no tensors).

- `auc_verdict(auc, lo, hi, n_pos, n_neg)`: a single AUC with its 95% interval is at chance, too few to
  tell, or neither.
- `too_few_to_compare(kind, n_labelled, n_positive)`: a paired difference on the same rows (DeLong's paired
  AUC difference, the paired per-row loss difference) is not judged when a class has fewer than
  `MIN_CLASS_ROWS` rows (binary) or the task fewer than `MIN_REGRESSION_ROWS` rows (regression): the normal
  intervals rest on a handful of rows there (3 positives decide every AUC difference), whatever their width.
- `two_sided_p` and `holm_adjust`: a normal-test p-value from a (point, interval) and Holm's step-down
  adjustment of a family of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

__all__ = [
    "AUC_MARGIN",
    "MIN_CLASS_ROWS",
    "MIN_REGRESSION_ROWS",
    "R2_MARGIN",
    "auc_inverted",
    "auc_verdict",
    "class_counts",
    "holm_adjust",
    "small_sample_auc_p",
    "too_few_to_compare",
    "two_sided_p",
]

MIN_CLASS_ROWS = 10
"""Fewer labelled rows of a class than this: DeLong's interval degenerates (one positive scored lowest is
AUC 0 with a zero-width interval), so an AUC is judged only when it differs from 0.5 under the null
(Mann-Whitney), and a paired difference is not judged at all."""
AUC_MARGIN = 0.1
""""At chance" needs the AUC interval to hold 0.5 and stay below 0.5 + this; an interval holding 0.5 that
reaches further cannot tell a coin from a working ranker (too few)."""
MIN_REGRESSION_ROWS = 10
R2_MARGIN = 0.05
"""The regression counterparts: "no better than the mean" needs the R² interval below this (and on fewer
than `MIN_REGRESSION_ROWS` rows an interval holding 0 is not judged at all, nor is any difference)."""

_Z95 = 1.959964


def class_counts(n_labelled: float, positive_rate: float) -> tuple[int, int]:
    """(positives, negatives) of a binary task from its labelled rows and positive rate (0, 0 when unknown).
    Rounded: n · rate is 9.999... for 10 rows of a class."""
    if not (n_labelled > 0) or math.isnan(positive_rate):
        return 0, 0
    n_pos = round(n_labelled * positive_rate)
    return n_pos, round(n_labelled) - n_pos


def small_sample_auc_p(auc: float, n_pos: float, n_neg: float) -> float:
    """Two-sided p-value of "AUC = 0.5" from Mann-Whitney's U = AUC · n₊n₋ under the null, for a class of fewer
    than `MIN_CLASS_ROWS` rows: the exact null distribution of U (no ties; a tied U is rounded away from the
    centre, the conservative side) from the Gaussian binomial's coefficients, truncated at the tail it needs;
    where that tail is too long to count (a large other class) the limit of U / n₋, the Irwin-Hall distribution
    of m uniforms. 3 v 3 perfect separation: p = 0.1. NaN when a class is empty."""
    m, n = int(min(n_pos, n_neg)), int(max(n_pos, n_neg))
    if m < 1 or math.isnan(auc):
        return math.nan
    mn = m * n
    u = auc * mn
    tail = math.floor(u + 1e-9) if u <= mn / 2 else math.floor(mn - u + 1e-9)  # lower-tail equivalent
    if tail > 20_000:  # n > 2,000: U / n is nearly the sum of m uniforms (Irwin-Hall), its CDF in closed form
        x = (tail + 0.5) / n
        cdf = sum((-1) ** k * math.comb(m, k) * (x - k) ** m for k in range(int(x) + 1)) / math.factorial(m)
        return min(1.0, 2.0 * cdf)
    # coefficients of [m + n choose m]_q = Π_{k=1..m} (1 - q^(n+k)) / (1 - q^k), up to q^tail: exact integers
    c = [1] + [0] * tail
    for k in range(1, m + 1):
        for j in range(tail, n + k - 1, -1):
            c[j] -= c[j - n - k]
        for j in range(k, tail + 1):
            c[j] += c[j - k]
    return min(1.0, 2.0 * sum(c) / math.comb(m + n, m))


def _small_rejects(auc: float, n_pos: float, n_neg: float) -> bool:
    """Mann-Whitney tells the AUC from 0.5 on fewer than `MIN_CLASS_ROWS` rows of a class; one row of a class
    never does (its exact p is 2 / (n + 1): one positive scored lowest of 49 is no ranking of a task)."""
    return min(n_pos, n_neg) >= 2 and small_sample_auc_p(auc, n_pos, n_neg) < 0.05


def auc_verdict(auc: float, lo: float, hi: float, n_pos: float, n_neg: float) -> tuple[bool, bool]:
    """(at_chance, too_few) of one AUC and its 95% interval `[lo, hi]` on `n_pos` / `n_neg` labelled rows.

    With fewer than `MIN_CLASS_ROWS` rows of a class, DeLong's interval is not used: an AUC that
    Mann-Whitney's test (`small_sample_auc_p` < 0.05, on at least 2 rows of each class) tells from 0.5 ranks (or ranks inverted: `auc_inverted`;
    neither at chance nor too few: 0.8 on 5 positives, whose DeLong interval holds 0.5), one it does not is too
    few, never at chance. With more rows: too_few where the interval holds 0.5 and reaches 0.5 + `AUC_MARGIN`,
    at_chance where it holds 0.5 and the rows are not too few. Every prediction tied
    (AUC 0.5 with a zero-width interval: a constant output) is at chance on any rows: it ranks nothing.
    Both False when the AUC or its interval is unknown (one class)."""
    if math.isnan(auc):
        return False, False
    if auc == 0.5 and lo == hi:
        return True, False
    if min(n_pos, n_neg) < MIN_CLASS_ROWS:
        if min(n_pos, n_neg) < 1:
            return False, False
        # Mann-Whitney tells it from 0.5: it ranks (or ranks inverted), whatever DeLong's interval on a
        # handful of rows says; it does not: too few (a narrow interval on 5 rows is no evidence either)
        return False, not _small_rejects(auc, n_pos, n_neg)
    few = lo <= 0.5 <= hi and hi >= 0.5 + AUC_MARGIN
    holds = not math.isnan(lo) and lo <= 0.5 <= hi
    return bool(holds and not few), bool(few)


def auc_inverted(auc: float, hi: float, n_pos: float, n_neg: float) -> bool:
    """Whether an AUC ranks in reverse: its 95% interval lies below 0.5 (`hi` < 0.5); with fewer than
    `MIN_CLASS_ROWS` rows of a class (DeLong's interval not used, as in `auc_verdict`): AUC < 0.5 and
    Mann-Whitney tells it from 0.5 (0.2 on 5 positives of 2,000: p = 0.017)."""
    if math.isnan(auc) or min(n_pos, n_neg) < 1:
        return False
    if min(n_pos, n_neg) < MIN_CLASS_ROWS:
        return auc < 0.5 and _small_rejects(auc, n_pos, n_neg)
    return not math.isnan(hi) and hi < 0.5


def too_few_to_compare(kind: str, n_labelled: float, n_positive: float | None = None) -> bool:
    """Whether a paired difference of a task's metric on its labelled rows is "cannot tell" whatever its
    interval: a binary task with fewer than `MIN_CLASS_ROWS` positives or negatives, a regression task with
    fewer than `MIN_REGRESSION_ROWS` labelled rows (no labelled rows: also too few)."""
    if not n_labelled > 0:
        return True
    if kind == "binary":
        n_pos = 0.0 if n_positive is None or math.isnan(n_positive) else n_positive
        return min(n_pos, n_labelled - n_pos) < MIN_CLASS_ROWS
    return n_labelled < MIN_REGRESSION_ROWS


def two_sided_p(point: float, lo: float, hi: float, ci: float = 0.95) -> float:
    """Two-sided p-value of "the difference is 0" from a point and its symmetric normal interval at level
    `ci` (se = (hi - lo) / 2z): the Wald test behind the analytic intervals (DeLong, CLT). NaN when unknown;
    a zero-width interval gives 0 (a nonzero point) or 1 (a zero point)."""
    if not (math.isfinite(point) and math.isfinite(lo) and math.isfinite(hi)):
        return math.nan
    z = NormalDist().inv_cdf(0.5 + ci / 2.0)
    se = (hi - lo) / (2.0 * z)
    if se <= 0:
        return 0.0 if point != 0 else 1.0
    return 2.0 * (1.0 - NormalDist().cdf(abs(point) / se))


def holm_adjust(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values `[m]` of a family of raw p-values `[m]` (NaN: not tested, left NaN
    and not counted in m). Rejecting where adjusted < alpha keeps the chance of ANY false "significant" in
    the family at most alpha, under any dependence between the tests (Holm 1979). The same values as
    statsmodels' `multipletests(p, method="holm")`, which is not a dependency here."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = len(tested)
    if m == 0:
        return out
    order = tested[np.argsort(p[tested], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out
