"""Task metrics on labelled rows with confidence intervals, paired across prediction sets.

Metrics: AUC and log loss for binary tasks, MSE and MAE for regression tasks, plus the positive rate.
Two kinds of interval, chosen by `Evaluation(intervals=...)`:

- "analytic" (default): closed-form normal intervals, no resampling. AUC: DeLong's variance from the
  placement values, alone and for the paired difference of two AUCs on the same rows
  (`mmoe_inspect.functional.delong`, one O(n log n) sort per prediction set). Log loss, MSE and MAE
  are means of per-row losses: the central-limit interval of the mean, and for a difference the
  interval of the mean per-row loss difference (`mmoe_inspect.functional.paired`). Every metric here
  has a closed form; the positive rate gets no interval.
- "bootstrap": percentile intervals from `n_boot` row resamples, below.

The bootstrap resamples ROWS: each replicate is a vector of multinomial row counts `w [n]` (rows
drawn with replacement, `n` draws), and every metric is a weighted sum over rows, so one replicate
costs one pass over the rows and `B` replicates are a `[B, n]` matrix product (log loss, MSE, MAE)
or a sort-once, cumulative-sum-per-replicate rank statistic (AUC). No per-row Python.

Every prediction set evaluated by one `Evaluation` sees the SAME resamples (drawn once from `seed`),
so the difference of two sets' replicates is a paired bootstrap of their difference: resample the
rows once, compute both metrics on that resample.

The two agree within Monte-Carlo error (tests/test_intervals.py checks coverage and agreement).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mmoe_inspect.functional.delong import AUCPlacements, auc_placements, delong_variance
from mmoe_inspect.functional.evidence import class_counts, too_few_to_compare
from mmoe_inspect.functional.paired import wald_interval
from mmoe_inspect.topology.spec import TaskSpec

__all__ = [
    "HIGHER_IS_BETTER",
    "INTERVALS",
    "LOGLOSS_EPS",
    "TASK_METRICS",
    "Evaluation",
    "bootstrap_counts",
    "bootstrap_metric",
    "describe_intervals",
    "loss_interval",
    "paired_bootstrap",
    "roc_auc",
    "too_few_to_tell",
]

TASK_METRICS: dict[str, tuple[str, ...]] = {"binary": ("auc", "logloss"), "regression": ("mse", "mae")}
"""Metrics computed per task kind."""

HIGHER_IS_BETTER: dict[str, bool] = {"auc": True, "logloss": False, "mse": False, "mae": False}

INTERVALS: tuple[str, ...] = ("analytic", "bootstrap")
"""Interval methods of `Evaluation`: closed-form (DeLong / CLT) or percentile bootstrap of the rows."""


def describe_intervals(intervals: str | None, n_boot: int | None = None) -> str:
    """How the intervals were computed, in words (for reports): `intervals` as given to `Evaluation`.

    `None` (results saved before the option existed) means the bootstrap, the only method then.
    """
    if intervals == "analytic":
        return "analytic: DeLong for AUC, normal (CLT) for log loss, MSE and MAE; paired on the same rows"
    if n_boot is not None and n_boot <= 0:
        return "none (bootstrap with 0 resamples)"
    resamples = f", {int(n_boot):,} resamples" if n_boot is not None else ""
    return f"paired bootstrap of the rows{resamples}"


def loss_interval(lo: float, hi: float) -> tuple[float, float]:
    """A loss mean's interval (log loss, MSE, MAE: means of non-negative per-row losses) with its lower end
    clipped at 0. The normal (CLT) interval is symmetric, so on a few rows with one large loss (a positive
    scored near 0) it reaches below 0, which no mean of non-negative losses can: the clip only removes
    impossible values (the upper end, which carries the uncertainty there, is kept)."""
    return (max(lo, 0.0), hi) if math.isfinite(lo) else (lo, hi)


def too_few_to_tell(ev: Any, task: str) -> bool:
    """Whether a paired difference of `task`'s metric on `ev`'s labelled rows (an `Evaluation` or a
    `StreamedEvaluation`) is "cannot tell" whatever its interval: too few rows of a class (binary) or too
    few rows (regression), by the rule the task table uses (`functional.evidence.too_few_to_compare`)."""
    kind = next(t.kind for t in ev.tasks if t.name == task)
    n = ev.n_labelled(task)
    n_pos = class_counts(n, ev.positive_rate(task))[0] if kind == "binary" else None
    return too_few_to_compare(kind, n, n_pos)


LOGLOSS_EPS = 1e-7
"""Predicted probabilities are clipped to [eps, 1 - eps] for the log loss (as `mmoe_inspect.train`)."""

_CHUNK_ELEMENTS = 1 << 23  # bootstrap weights are built in chunks of about 8M entries (32 MB as float32)
_MIN_CHUNK = 32  # replicates per chunk at least: the AUC kernel's row scatter is fast on wide rows


# ------------------------------------------------------------------------------------------ kernels
@dataclass(frozen=True)
class _RankPrep:
    """One score vector ranked once against its labels, for AUC under any row weights.

    Negatives are grouped into segments between consecutive "boundaries" (the ranks among the
    sorted negatives where some positive's score falls, strictly-below and at-or-below); then the
    negative weight below a positive is a prefix sum over at most `2 n_pos + 1` segment sums.
    `neg_seg [n_neg]`: each negative's segment; `lo`/`hi` `[n_pos]`: each positive's boundary
    index for "strictly lower" / "lower or equal" scores; `below`/`upto`: the unweighted counts.
    """

    pos: np.ndarray
    neg: np.ndarray
    neg_seg: np.ndarray
    n_seg: int
    lo: np.ndarray
    hi: np.ndarray
    below: np.ndarray
    upto: np.ndarray

    def point(self) -> float:
        total = len(self.pos) * len(self.neg)
        if total == 0:
            return math.nan
        return float((self.below.sum() + self.upto.sum()) * 0.5 / total)


def _rank_prep(scores: np.ndarray, labels: np.ndarray) -> _RankPrep:
    positive = labels > 0.5
    pos, neg = np.flatnonzero(positive), np.flatnonzero(~positive)
    order = np.argsort(scores[neg], kind="stable")
    sorted_neg = scores[neg][order]
    below = np.searchsorted(sorted_neg, scores[pos], side="left")
    upto = np.searchsorted(sorted_neg, scores[pos], side="right")
    bounds = np.unique(np.concatenate([below, upto]))
    rank = np.empty(len(neg), dtype=np.int64)
    rank[order] = np.arange(len(neg))
    return _RankPrep(
        pos,
        neg,
        np.searchsorted(bounds, rank, side="right"),
        len(bounds) + 1,
        np.searchsorted(bounds, below),
        np.searchsorted(bounds, upto),
        below,
        upto,
    )


def _weighted_auc(prep: _RankPrep, w_pos: torch.Tensor, w_neg: torch.Tensor) -> np.ndarray:
    """AUC per weight column: positives' weights `[n_pos, B]`, negatives' `[n_neg, B]` (row order) → `[B]`.

    Weights are exact small integers (bootstrap counts): sums stay exact in float32 below 2^24 rows.
    """
    seg = torch.zeros(prep.n_seg, w_neg.shape[1], dtype=w_neg.dtype)
    seg.index_add_(0, torch.from_numpy(prep.neg_seg), w_neg)
    cum = torch.cumsum(seg, 0)  # cum[k]: negative weight below boundary k (last row: all negatives)
    lo, hi = torch.from_numpy(prep.lo), torch.from_numpy(prep.hi)
    wins = (w_pos * (cum[lo] + cum[hi])).sum(0, dtype=torch.float64).numpy() * 0.5
    total = w_pos.sum(0, dtype=torch.float64).numpy() * cum[-1].double().numpy()
    return np.where(total > 0, wins / np.where(total > 0, total, 1.0), np.nan)


def roc_auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float | np.ndarray:
    """ROC AUC of `scores [n]` for 0/1 `labels [n]` (ties count half; NaN with one class).

    With `weights [B, n]` (e.g. bootstrap row counts) returns the `[B]` weighted AUCs.
    """
    prep = _rank_prep(np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64))
    if weights is None:
        return prep.point()
    w = torch.from_numpy(np.ascontiguousarray(np.asarray(weights, dtype=np.float64).T))
    return _weighted_auc(prep, w[torch.from_numpy(prep.pos)], w[torch.from_numpy(prep.neg)])


def _row_losses(metric: str, pred: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Per-row loss `[n]` whose mean is the metric (log loss, squared or absolute error)."""
    if metric == "logloss":
        q = np.clip(pred, LOGLOSS_EPS, 1.0 - LOGLOSS_EPS)
        return -(label * np.log(q) + (1.0 - label) * np.log1p(-q))
    if metric == "mse":
        return (pred - label) ** 2
    if metric == "mae":
        return np.abs(pred - label)
    raise ValueError(f"unknown metric {metric!r}")


def bootstrap_counts(
    n: int, n_boot: int, seed: int = 0, *, chunk_elements: int = _CHUNK_ELEMENTS
) -> Iterator[np.ndarray]:
    """Multinomial bootstrap row counts in chunks `[n, b]` (float32; column r = replicate r, summing to n).

    Each replicate draws `n` rows with replacement (one `bincount` per replicate: a loop over
    replicates, never over rows); the chunk widths `b` total `n_boot`. Deterministic in `seed`.
    """
    rng = np.random.default_rng(seed)
    per = min(max(_MIN_CHUNK, chunk_elements // max(n, 1)), max(n_boot, 1))
    for start in range(0, n_boot, per):
        c = min(per, n_boot - start)
        counts = np.empty((c, n), dtype=np.float32)
        for r in range(c):
            counts[r] = np.bincount(rng.integers(0, n, size=n), minlength=n)
        yield np.ascontiguousarray(counts.T)


def _interval(reps: np.ndarray, ci: float) -> tuple[float, float]:
    """Percentile interval of the finite replicates (NaN when fewer than 2)."""
    finite = reps[np.isfinite(reps)]
    if len(finite) < 2:
        return math.nan, math.nan
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


# ------------------------------------------------------------------------------------- evaluation
class Evaluation:
    """Per-task metrics and their intervals for several prediction sets on the SAME rows.

    `labels [n, T]` (NaN = missing; binary ones 0/1), `preds {key: [n, T]}` in probability space for
    binary tasks. Each task is scored on its labelled rows; a set with a non-finite prediction on a
    labelled row (or an all-NaN column: a baseline that does not predict the task) gets NaN there.

    `intervals="analytic"` (default) keeps each set's per-row losses and AUC placement values
    (float64, `sets x tasks x metrics x labelled rows`) and answers `interval` / `compare` in closed
    form (DeLong for AUC, CLT for the loss means); no resamples are drawn and `n_boot`, `seed` are
    not used. `intervals="bootstrap"` draws `n_boot` paired row resamples from `seed` (`n_boot=0`:
    point values only, intervals NaN).

    Examples::

        >>> ev = Evaluation(labels, tasks, {"model": p, "baseline": q})
        >>> ev.value("model", "click", "auc")
        >>> ev.compare("model", "baseline", "click", "auc")   # (delta, lo, hi), paired
    """

    def __init__(
        self,
        labels: np.ndarray,
        tasks: Sequence[TaskSpec],
        preds: Mapping[Hashable, np.ndarray],
        *,
        n_boot: int = 200,
        seed: int = 0,
        ci: float = 0.95,
        intervals: str = "analytic",
    ) -> None:
        if not 0.0 < ci < 1.0:
            raise ValueError(f"ci must be in (0, 1), got {ci}")
        if n_boot < 0:
            raise ValueError(f"n_boot must be >= 0, got {n_boot}")
        if intervals not in INTERVALS:
            raise ValueError(f"intervals must be one of {', '.join(INTERVALS)}, not {intervals!r}")
        self.labels = np.asarray(labels, dtype=np.float64)
        self.tasks = tuple(tasks)
        self.keys = tuple(preds)
        self.n_rows = int(self.labels.shape[0])
        self.intervals = intervals
        self.n_boot = n_boot if intervals == "bootstrap" else 0
        self.seed, self.ci = seed, ci
        self._point: dict[tuple[Hashable, str, str], float] = {}
        self._reps: dict[tuple[Hashable, str, str], np.ndarray] = {}
        self._items: dict[tuple[Hashable, str, str], np.ndarray | AUCPlacements] = {}  # analytic
        self._rows: dict[str, np.ndarray] = {}
        self._compute({k: np.asarray(v, dtype=np.float64) for k, v in preds.items()})

    # --------------------------------------------------------------------------------- queries
    def metrics(self, task: str) -> tuple[str, ...]:
        return TASK_METRICS[self._task(task).kind]

    def n_labelled(self, task: str) -> int:
        return len(self._rows[task])

    def positive_rate(self, task: str) -> float:
        """Share of labelled rows with label 1 (binary tasks; NaN for regression or no labels)."""
        rows = self._rows[task]
        if self._task(task).kind != "binary" or not len(rows):
            return math.nan
        return float(self.labels[rows, self._index(task)].mean())

    def value(self, key: Hashable, task: str, metric: str) -> float:
        return self._point.get((key, task, metric), math.nan)

    def interval(self, key: Hashable, task: str, metric: str) -> tuple[float, float]:
        """Interval of one set's metric at level `ci` (NaN, NaN where it has no value or too few rows).

        Analytic: AUC ± z·DeLong SE clipped to [0, 1]; a loss mean ± z·sd/sqrt(n) clipped at 0 (`loss_interval`).
        Bootstrap: percentiles (never below 0 for a loss).
        """
        if self.intervals == "analytic":
            item = self._items.get((key, task, metric))
            if item is None:
                return math.nan, math.nan
            if isinstance(item, AUCPlacements):
                lo, hi = wald_interval(item.auc, delong_variance(item), self.ci)
                return (max(lo, 0.0), min(hi, 1.0)) if math.isfinite(lo) else (lo, hi)
            if len(item) < 2:
                return math.nan, math.nan
            return loss_interval(
                *wald_interval(self.value(key, task, metric), float(item.var(ddof=1)) / len(item), self.ci)
            )
        reps = self._reps.get((key, task, metric))
        return _interval(reps, self.ci) if reps is not None else (math.nan, math.nan)

    def replicates(self, key: Hashable, task: str, metric: str) -> np.ndarray:
        """Bootstrap replicates `[n_boot]` of one metric (empty with `n_boot=0` or analytic intervals)."""
        return self._reps.get((key, task, metric), np.full(self.n_boot, np.nan))

    def compare(self, key: Hashable, ref: Hashable, task: str, metric: str) -> tuple[float, float, float]:
        """Paired difference `key - ref` of a metric on the same rows: (point, lo, hi).

        Analytic: DeLong's variance of the AUC difference, or the CLT interval of the mean per-row loss
        difference. Bootstrap: percentiles of the difference over the same resamples.
        """
        delta = self.value(key, task, metric) - self.value(ref, task, metric)
        if self.intervals == "analytic":
            a, b = self._items.get((key, task, metric)), self._items.get((ref, task, metric))
            if a is None or b is None:
                return delta, math.nan, math.nan
            if isinstance(a, AUCPlacements) and isinstance(b, AUCPlacements):
                var = delong_variance(a, b)
            else:
                assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
                var = float((a - b).var(ddof=1)) / len(a) if len(a) > 1 else math.nan
            lo, hi = wald_interval(delta, var, self.ci)
            return delta, lo, hi
        diff = self.replicates(key, task, metric) - self.replicates(ref, task, metric)
        lo, hi = _interval(diff, self.ci) if self.n_boot else (math.nan, math.nan)
        return delta, lo, hi

    # ---------------------------------------------------------------------------------- compute
    def _task(self, name: str) -> TaskSpec:
        return self.tasks[self._index(name)]

    def _index(self, name: str) -> int:
        for i, t in enumerate(self.tasks):
            if t.name == name:
                return i
        raise KeyError(name)

    def _compute(self, preds: dict[Hashable, np.ndarray]) -> None:
        prepared: list[tuple[str, str, Hashable, object]] = []  # (task, metric, key, rank prep | losses)
        split: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # binary task -> (positive, negative) rows
        for j, task in enumerate(self.tasks):
            rows = np.flatnonzero(np.isfinite(self.labels[:, j]))
            self._rows[task.name] = rows
            if not len(rows):
                continue
            y = self.labels[rows, j]
            if task.kind == "binary":
                split[task.name] = (np.flatnonzero(y > 0.5), np.flatnonzero(y <= 0.5))
            for key, p_all in preds.items():
                p = p_all[rows, j]
                if not np.isfinite(p).all():
                    continue
                for metric in TASK_METRICS[task.kind]:
                    item: object
                    if metric == "auc" and self.intervals == "analytic":
                        item = auc_placements(p, y)
                        self._point[(key, task.name, metric)] = item.auc
                    elif metric == "auc":
                        item = _rank_prep(p, y)
                        self._point[(key, task.name, metric)] = item.point()
                    else:
                        item = _row_losses(metric, p, y)
                        self._point[(key, task.name, metric)] = float(item.mean())
                    if self.intervals == "analytic":
                        self._items[(key, task.name, metric)] = item
                    else:
                        prepared.append((task.name, metric, key, item))
        if self.n_boot == 0 or not prepared:
            return
        parts: dict[tuple[Hashable, str, str], list[np.ndarray]] = {}
        exact32 = self.n_rows < 2**24  # integer weight sums stay exact in float32
        for counts in bootstrap_counts(self.n_rows, self.n_boot, self.seed):
            w_all = torch.from_numpy(counts)  # [n, b]
            per_task, sides = {}, {}
            for t, rows in self._rows.items():
                if not len(rows):
                    continue
                w = w_all[torch.from_numpy(rows)]
                per_task[t] = w.double()
                if t in split:
                    w = w if exact32 else per_task[t]
                    pos, neg = split[t]
                    sides[t] = (w[torch.from_numpy(pos)], w[torch.from_numpy(neg)])
            totals = {t: w.sum(0).numpy() for t, w in per_task.items()}
            for task_name, metric, key, item in prepared:
                if isinstance(item, _RankPrep):
                    reps = _weighted_auc(item, *sides[task_name])
                else:
                    total = totals[task_name]
                    weighted = (torch.from_numpy(item) @ per_task[task_name]).numpy()
                    reps = np.where(total > 0, weighted / np.where(total > 0, total, 1.0), np.nan)
                parts.setdefault((key, task_name, metric), []).append(reps)
        self._reps = {k: np.concatenate(v) for k, v in parts.items()}


# ----------------------------------------------------------------------------------- one-liners
def _as_task(kind: str) -> list[TaskSpec]:
    if kind not in TASK_METRICS:
        raise ValueError(f"kind must be 'binary' or 'regression', not {kind!r}")
    return [TaskSpec("task", kind="binary" if kind == "binary" else "regression")]


def bootstrap_metric(
    pred: np.ndarray,
    labels: np.ndarray,
    metric: str,
    *,
    kind: str = "binary",
    n_boot: int = 200,
    seed: int = 0,
    ci: float = 0.95,
) -> tuple[float, float, float]:
    """One metric of `pred [n]` against `labels [n]` with its percentile bootstrap interval: (value, lo, hi)."""
    ev = Evaluation(
        np.asarray(labels, dtype=np.float64)[:, None],
        _as_task(kind),
        {"p": np.asarray(pred)[:, None]},
        n_boot=n_boot,
        seed=seed,
        ci=ci,
        intervals="bootstrap",
    )
    lo, hi = ev.interval("p", "task", metric)
    return ev.value("p", "task", metric), lo, hi


def paired_bootstrap(
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    labels: np.ndarray,
    metric: str,
    *,
    kind: str = "binary",
    n_boot: int = 200,
    seed: int = 0,
    ci: float = 0.95,
) -> tuple[float, float, float]:
    """Paired bootstrap of `metric(a) - metric(b)` on the same rows `[n]`: (difference, lo, hi)."""
    ev = Evaluation(
        np.asarray(labels, dtype=np.float64)[:, None],
        _as_task(kind),
        {"a": np.asarray(pred_a)[:, None], "b": np.asarray(pred_b)[:, None]},
        n_boot=n_boot,
        seed=seed,
        ci=ci,
        intervals="bootstrap",
    )
    return ev.compare("a", "b", "task", metric)
