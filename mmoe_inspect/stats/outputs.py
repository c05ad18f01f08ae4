"""`TaskOutputStats`: streaming, mergeable summaries of each task's predictions and labels.

The AUC is exact: each binary task keeps one row per distinct prediction value with its positive
and negative label counts (`ScoreCounts`), compacted as rows arrive and merged by concatenation, so
the AUC of any merge of shards equals scikit-learn's `roc_auc_score` on all their rows (ties counted
half). Memory is one 32-byte row per distinct value, at most `max_auc_values` per task; beyond that
the values are truncated to fewer mantissa bits (ties are created, never reordered) and the summary
says the AUC is no longer exact (`auc_exact`).

A compaction sorts only the rows that arrived since the last one and merges them into the kept,
already sorted rows (`merge_compacted`, while the kept rows outnumber the new ones): beyond the state
it holds the new rows' sort and the merged copy with a few integer columns per kept row, not the sort
of kept and new rows together (~100 bytes a row of both, which grew the peak RSS with the rows up to
the cap).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mmoe_inspect.stats._base import SummaryMetric


@dataclass
class TaskOutputSummary:
    """(Not frozen: torchmetrics' compute wrapper rebuilds dataclass outputs.) Per task (in the order given): prediction moments, label rate/mean, exact AUC and log loss (binary), MSE (regression)."""

    n: torch.Tensor  # [T] rows with a finite prediction
    mean_prediction: torch.Tensor  # [T]
    std_prediction: torch.Tensor  # [T]
    n_labelled: torch.Tensor  # [T] rows with a finite label and prediction
    label_mean: torch.Tensor  # [T] positive rate for binary tasks
    label_var: torch.Tensor  # [T] population variance of the labels (the MSE of predicting their mean)
    auc: torch.Tensor  # [T] exact (see `auc_exact`); NaN for regression or one-class labels
    auc_exact: torch.Tensor  # [T] bool: False when the distinct-value cap truncated the predictions
    logloss: torch.Tensor  # [T] mean log loss (predictions clipped to [1e-7, 1 - 1e-7]); NaN for regression
    logloss_vs_base_se: (
        torch.Tensor
    )  # [T] std error of the mean per-row (log loss - base rate's); NaN: regression
    mse: torch.Tensor  # [T] NaN for binary tasks
    prediction_hist: torch.Tensor  # [T, n_bins] over [0, 1] (binary) — counts
    out_of_range: (
        torch.Tensor
    )  # [T] binary predictions outside [0, 1] (logits where probabilities were expected)
    auc_se: torch.Tensor | None = None  # [T] DeLong's standard error of the AUC (NaN: < 2 rows of a class)
    mse_vs_var_se: torch.Tensor | None = None  # [T] std error of the mean per-row (sq. error - label var's)


LOGLOSS_EPS = 1e-7  # as `mmoe_inspect.causal.metrics.LOGLOSS_EPS` and `mmoe_inspect.train`
MAX_AUC_VALUES = 1 << 20  # distinct prediction values kept per binary task for the exact AUC
_FULL_BITS = 53  # float64 mantissa: values are kept as they are


class TaskOutputStats(SummaryMetric):
    """Prediction/label sums per task; exact AUC from per-value label counts; a prediction histogram.

    `update(preds [batch, T], labels [batch, T] | None)`; NaN labels mean "missing". On CPU one
    host read skips all masking when every prediction and label is finite; on accelerators (or
    with ``sync_free=True``) it makes no host reads. Both paths give the same states.
    """

    def __init__(
        self,
        kinds: Sequence[str],
        n_bins: int = 1000,
        *,
        sync_free: bool | None = None,
        max_auc_values: int = MAX_AUC_VALUES,
    ) -> None:
        super().__init__(sync_free=sync_free)
        self.kinds = tuple(kinds)
        self.n_bins = n_bins
        self.max_auc_values = int(max_auc_values)
        if self.max_auc_values < 1:
            raise ValueError(f"max_auc_values must be at least 1, got {max_auc_values}")
        t = len(self.kinds)
        self._binary_cols = [i for i, k in enumerate(self.kinds) if k == "binary"]
        # rows (task, value, positives, negatives); compacted to one row per (task, value) now and then
        self.add_state("score_counts", [], dist_reduce_fx="cat")
        self.add_state("score_bits", torch.tensor(_FULL_BITS, dtype=torch.int64), dist_reduce_fx="min")
        self.add_state("logloss_sum", torch.zeros(t, dtype=torch.float64), dist_reduce_fx="sum")
        # Σ (log-likelihood)² and Σ over positive rows: with the counts, the variance of each row's log loss
        # minus the base rate's (a paired interval of "better than predicting the base rate")
        self.add_state("logloss_sq_sum", torch.zeros(t, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("logloss_pos_sum", torch.zeros(t, dtype=torch.float64), dist_reduce_fx="sum")
        self._pending = 0  # rows appended since the last compaction (not a state: a cost counter)
        self._truncated = False  # the last compaction truncated the values (a cost hint, no host read)
        self._kept: torch.Tensor | None = None  # the rows the last compaction returned (not a state)
        self.register_buffer(
            "_bin_cols", torch.tensor(self._binary_cols, dtype=torch.int64), persistent=False
        )
        self.register_buffer("_binary", torch.tensor([k == "binary" for k in self.kinds]), persistent=False)
        self.register_buffer("_offsets", torch.arange(t) * n_bins, persistent=False)
        # Σu², Σuv with u = ŷ² - 2yŷ, v = 2y on labelled rows: with the sums below, the variance of each row's
        # squared error minus the label mean's ((y - ŷ)² - (y - ȳ)² = u + vȳ - ȳ²), a paired interval of R²
        names = (
            "n",
            "sum",
            "sumsq",
            "n_lab",
            "sum_lab",
            "sumsq_lab",
            "sse",
            "out_of_range",
            "sum_u2",
            "sum_uv",
        )
        for name in names:
            self.add_state(name, torch.zeros(t, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("hist_pos", torch.zeros(t, n_bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("hist_neg", torch.zeros(t, n_bins, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        p = preds.detach().to(torch.float64)  # [B, T]
        y = None if labels is None else labels.detach().to(device=p.device, dtype=torch.float64)
        b, t = p.shape
        total = p.sum() if y is None else p.sum() + y.sum()
        fast = not self._sync_free(p.device) and math.isfinite(float(total))  # every value finite
        ok = None if fast else torch.isfinite(p)
        pz = p if ok is None else torch.where(ok, p, 0.0)
        self.n += b if ok is None else ok.sum(0)
        self.sum += pz.sum(0)
        self.sumsq += (pz * pz).sum(0)
        out = ((pz < 0) | (pz > 1)) & self._binary
        self.out_of_range += (out if ok is None else out & ok).sum(0)
        if y is None:
            return
        lab = None if fast else ok & torch.isfinite(y)
        yz = y if lab is None else torch.where(lab, y, 0.0)
        self.n_lab += b if lab is None else lab.sum(0)
        self.sum_lab += yz.sum(0)
        self.sumsq_lab += (yz * yz).sum(0)
        sq = (pz - yz).square_()
        self.sse += (sq if lab is None else torch.where(lab, sq, 0.0)).sum(0)
        u = pz * (pz - 2 * yz)
        if lab is not None:
            u = torch.where(lab, u, 0.0)
        self.sum_u2 += (u * u).sum(0)
        self.sum_uv += (u * yz).sum(0) * 2
        # One bincount: slot 2 · (task bin) + (label > 0.5), unlabelled rows to a dummy slot at the end.
        bins = (pz.clamp(0, 1) * self.n_bins).long().clamp_(max=self.n_bins - 1).add_(self._offsets)
        slots = bins.mul_(2).add_(yz > 0.5)
        if lab is not None:
            slots.masked_fill_(~lab, 2 * t * self.n_bins)
        counts = torch.bincount(slots.view(-1), minlength=2 * t * self.n_bins + 1)
        counts = counts[: 2 * t * self.n_bins].view(t, self.n_bins, 2)
        self.hist_neg += counts[..., 0]
        self.hist_pos += counts[..., 1]
        if self._binary_cols:
            self._add_scores(pz, yz, lab)

    def _add_scores(self, pz: torch.Tensor, yz: torch.Tensor, lab: torch.Tensor | None) -> None:
        """Append `(task, value, pos, neg)` rows of the binary tasks (unlabelled rows weigh 0) and the
        log loss; the same rows on both update paths, compacted when they reach half the kept ones (all of
        them once the values are truncated, where a compaction sorts kept and new rows together)."""
        cols = self._binary_cols
        p, y = pz[:, cols], yz[:, cols]
        is_pos = y > 0.5
        w = None if lab is None else lab[:, cols].to(p.dtype)  # 0/1 (None: every row weighs 1)
        pos = is_pos.to(p.dtype) if w is None else w * is_pos
        neg = 1.0 - pos if w is None else w - pos
        q = p.clamp(LOGLOSS_EPS, 1.0 - LOGLOSS_EPS)
        # One log (a float64 log costs more than the rest of the update): with 0/1 weights each row's
        # loss pos·log q + neg·log(1 - q) is w·log q or w·log(1 - q), the other product being ±0, so
        # these are the same terms; their sum is negated once (exact: rounding is sign-symmetric).
        ll = torch.where(is_pos, q, 1.0 - q).log_()
        if w is not None:
            ll.mul_(w)
        self.logloss_sum.index_add_(0, self._bin_cols, ll.sum(0).neg_())
        self.logloss_sq_sum.index_add_(0, self._bin_cols, (ll * ll).sum(0))
        self.logloss_pos_sum.index_add_(0, self._bin_cols, (ll * is_pos).sum(0).neg_())
        task = self._bin_cols.to(p.dtype).expand_as(p)
        rows = torch.stack([task, p, pos, neg], dim=-1).reshape(-1, 4)
        self.score_counts.append(rows)
        self._pending += rows.shape[0]
        kept = sum(r.shape[0] for r in self.score_counts) - self._pending
        share = 1 if self._truncated else 2  # (truncated: no merge, a sort of all rows)
        if self._pending >= max(kept // share, 1 << 16):
            self._compact()

    def reset(self) -> None:
        super().reset()
        self._kept = None  # (would hold the old rows alive until the next compaction)

    def _vs_base_se(self) -> torch.Tensor:
        """`[T]` standard error of the mean of d = (row log loss) - (the base rate's log loss on that row),
        from Σll, Σll², Σ_pos ll and the counts (the base rate's loss is -log r on positives, -log(1-r) on
        negatives, with r the labelled rows' positive rate)."""
        n = self.n_lab.clamp_min(1)
        n_pos = self.sum_lab  # binary labels: the positives (unlabelled rows weigh 0)
        n_neg = n - n_pos
        r = (n_pos / n).clamp(LOGLOSS_EPS, 1 - LOGLOSS_EPS)
        b_pos, b_neg = -torch.log(r), -torch.log1p(-r)
        pos_sum, neg_sum = self.logloss_pos_sum, self.logloss_sum - self.logloss_pos_sum
        sum_d = self.logloss_sum - n_pos * b_pos - n_neg * b_neg
        sum_d2 = (
            self.logloss_sq_sum
            - 2 * (b_pos * pos_sum + b_neg * neg_sum)
            + n_pos * b_pos**2
            + n_neg * b_neg**2
        )
        var = (sum_d2 / n - (sum_d / n) ** 2).clamp_min(0) * n / (n - 1).clamp_min(1)
        return (var / n).sqrt()

    def _vs_var_se(self) -> torch.Tensor:
        """`[T]` standard error of the mean of d = (y - ŷ)² - (y - ȳ)² over the labelled rows (ȳ their label
        mean; its mean is MSE - label variance), from Σu², Σuv and the label and error sums: expanding
        d = u + vȳ - ȳ² (u = ŷ² - 2yŷ, v = 2y), Σd² = Σu² + ȳ²Σv² + nȳ⁴ + 2ȳΣuv - 2ȳ²Σu - 2ȳ³Σv."""
        n = self.n_lab.clamp_min(1)
        m = self.sum_lab / n
        sum_u = self.sse - self.sumsq_lab
        sum_v, sum_v2 = 2 * self.sum_lab, 4 * self.sumsq_lab
        sum_d = sum_u + m * sum_v - n * m**2
        sum_d2 = (
            self.sum_u2 + m**2 * sum_v2 + n * m**4 + 2 * m * self.sum_uv - 2 * m**2 * sum_u - 2 * m**3 * sum_v
        )
        raw = sum_d2 / n - (sum_d / n) ** 2
        # the terms are of the size of ȳ⁴: when the labels' mean dwarfs their spread (prices, timestamps) the
        # difference is float64 rounding, not the variance: NaN (no interval) rather than a made-up width
        scale = self.sum_u2 / n + m**2 * sum_v2 / n + m**4
        var = torch.where(raw > 1e-9 * scale, raw, torch.nan) * n / (n - 1).clamp_min(1)
        return (var / n).sqrt()

    def _sync_dist(self, *args: Any, **kwargs: Any) -> None:
        """A rank without rows syncs a `[0, 4]` score-count block (not torchmetrics' 1-D empty tensor),
        so every rank gathers tensors of the same rank (dimensions)."""
        if isinstance(self.score_counts, list) and not self.score_counts:
            self.score_counts = [torch.zeros(0, 4, dtype=torch.float64, device=self.n.device)]
        super()._sync_dist(*args, **kwargs)

    def _compact(self) -> None:
        parts, self.score_counts = self.score_counts, []
        head_compacted = bool(parts) and parts[0] is self._kept  # (the rows the last compaction returned)
        rows, bits = compact_state(  # (empties `parts`)
            parts, int(self.score_bits), self.max_auc_values, head_compacted=head_compacted
        )
        self._kept = rows
        self._truncated = bits < _FULL_BITS
        self.score_counts = [rows]
        self.score_bits = torch.tensor(bits, dtype=torch.int64, device=rows.device)
        self._pending = 0

    def compute(self) -> TaskOutputSummary:
        n = self.n.clamp_min(1)
        mean = self.sum / n
        var = (self.sumsq / n - mean**2).clamp_min(0)
        nl = self.n_lab.clamp_min(1)
        binary = self._binary.to(self.n.device)
        state = self.score_counts
        rows, bits = compact_state(
            list(state) if isinstance(state, list) else [state], int(self.score_bits), self.max_auc_values
        )
        auc = exact_auc(rows, len(self.kinds)).to(self.n.device)
        auc_se = delong_se(rows, len(self.kinds)).to(self.n.device)
        return TaskOutputSummary(
            n=self.n.clone(),
            mean_prediction=torch.where(self.n > 0, mean, torch.nan),
            std_prediction=torch.where(self.n > 0, var.sqrt(), torch.nan),
            n_labelled=self.n_lab.clone(),
            label_mean=torch.where(self.n_lab > 0, self.sum_lab / nl, torch.nan),
            # raw float64 moments: exact enough to compare with the MSE unless |mean| / std exceeds ~1e6
            label_var=torch.where(
                self.n_lab > 0, (self.sumsq_lab / nl - (self.sum_lab / nl) ** 2).clamp_min(0), torch.nan
            ),
            auc=torch.where(binary, auc, torch.nan),
            auc_exact=binary & (bits >= _FULL_BITS),
            logloss=torch.where(binary & (self.n_lab > 0), self.logloss_sum / nl, torch.nan),
            logloss_vs_base_se=torch.where(binary & (self.n_lab > 1), self._vs_base_se(), torch.nan),
            mse=torch.where(~binary & (self.n_lab > 0), self.sse / nl, torch.nan),
            prediction_hist=self.hist_pos + self.hist_neg,
            out_of_range=self.out_of_range.clone(),
            auc_se=torch.where(binary, auc_se, torch.nan),
            mse_vs_var_se=torch.where(~binary & (self.n_lab > 1), self._vs_var_se(), torch.nan),
        )


def binned_auc(hist_pos: torch.Tensor, hist_neg: torch.Tensor) -> torch.Tensor:
    """AUC `[T]` from per-class score histograms `[T, n_bins]`: P(score_pos > score_neg), ties counted half."""
    neg_below = torch.cumsum(hist_neg, dim=1) - hist_neg  # negatives in strictly lower bins
    wins = (hist_pos * (neg_below + 0.5 * hist_neg)).sum(1)
    total = hist_pos.sum(1) * hist_neg.sum(1)
    return torch.where(total > 0, wins / total.clamp_min(1), torch.nan)


def _rows_of(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """The `(task, value, pos, neg)` rows of a score-count state (a list, or one tensor after a sync)."""
    if isinstance(state, torch.Tensor):
        return state.reshape(-1, 4)
    if not state:
        return torch.zeros(0, 4, dtype=torch.float64)
    return torch.cat([r.reshape(-1, 4) for r in state])


def compact_state(
    parts: list[torch.Tensor], bits: int, max_values: int, *, head_compacted: bool = False
) -> tuple[torch.Tensor, int]:
    """`compact_scores` of the rows of a score-count state's `parts` (the list is emptied as they are used).

    When the first part is already compacted (sorted by task then value, one row per key, the values
    untruncated) and outnumbers the others, only the others are compacted, then merged into it
    (`merge_compacted`): the same rows as compacting everything at once, sorting the new rows only.
    ``head_compacted=True``: the caller knows the first part is what a compaction returned (with
    ``bits`` in force), so it is not checked again (a pass over every kept row per compaction).
    """
    head = parts[0].reshape(-1, 4) if parts else None
    new_rows = sum(p.numel() for p in parts[1:]) // 4
    # (a head smaller than the new rows: one sort of all is cheaper than a per-task merge)
    if (
        len(parts) < 2
        or head is None
        or bits < _FULL_BITS
        or head.shape[0] < new_rows
        or not (head_compacted or _is_compacted(head))
    ):
        rows = _rows_of(parts)
        parts.clear()  # the parts go once concatenated: the compaction's peak is one copy of the rows less
        return compact_scores(rows, bits, max_values)
    del parts[0]
    rows = _rows_of(parts)
    parts.clear()
    new, new_bits = compact_scores(rows, bits, max_values)
    del rows
    if new_bits < bits:  # the new rows alone passed the cap: every row is truncated and regrouped
        return compact_scores(torch.cat([head, new]), new_bits, max_values)
    out, most = _merge(head, new)
    if most is None:
        most = int(torch.bincount(out[:, 0].long()).max()) if out.shape[0] else 0
    if most > max_values:
        return compact_scores(out, bits, max_values)
    return out, bits


def _is_compacted(rows: torch.Tensor) -> bool:
    """Whether `(task, value, pos, neg)` rows `[N, 4]` are as `_group` leaves them: sorted by task, then by
    value with one row per value (order keys strictly increasing), every row weighing more than 0."""
    if rows.shape[0] == 0:
        return True
    task, key = rows[:, 0], _order_key(rows[:, 1])
    step = (task[1:] > task[:-1]) | ((task[1:] == task[:-1]) & (key[1:] > key[:-1]))
    return bool(step.all()) and bool(((rows[:, 2] + rows[:, 3]) > 0).all())


def merge_compacted(kept: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Two compacted row sets `[K, 4]`, `[P, 4]` (as `_group` leaves them) merged into one: rows of equal
    (task, value) summed, keeping `kept`'s value (it came first), the others interleaved in order.

    Equal to `_group(torch.cat([kept, new]))`, in O(K + P log K) and the memory of the output: per task,
    each new row's place among the kept rows by binary search (`torch.searchsorted` on order keys).
    """
    return _merge(kept, new)[0]


def _merge(kept: torch.Tensor, new: torch.Tensor) -> tuple[torch.Tensor, int | None]:
    """`merge_compacted`, and the most rows one task has in the result (None when only one input has rows).

    Each task's rows are written in place into the one output (no concatenation of per-task results).
    """
    if new.shape[0] == 0:
        return kept, None
    if kept.shape[0] == 0:
        return new, None
    k_task, n_task = kept[:, 0].contiguous(), new[:, 0].contiguous()
    tasks = torch.unique(torch.cat([torch.unique_consecutive(k_task), torch.unique_consecutive(n_task)]))
    k_bounds = [*torch.searchsorted(k_task, tasks).tolist(), kept.shape[0]]
    n_bounds = [*torch.searchsorted(n_task, tasks).tolist(), new.shape[0]]
    plans = []  # per task: (kept rows, new rows, merge plan or None, output rows)
    for i in range(len(tasks)):
        a = kept[k_bounds[i] : k_bounds[i + 1]]
        b = new[n_bounds[i] : n_bounds[i + 1]]
        plan = _merge_plan(a, b) if a.shape[0] and b.shape[0] else None
        plans.append((a, b, plan, a.shape[0] + (plan[3].shape[0] if plan else b.shape[0])))
    out = torch.empty(sum(p[3] for p in plans), 4, dtype=kept.dtype, device=kept.device)
    off = 0
    for a, b, plan, size in plans:
        if plan is None:
            out[off : off + size] = a if a.shape[0] else b
        else:
            _merge_fill(out[off : off + size], a, b, plan)
        off += size
    return out, max(p[3] for p in plans)


def _merge_plan(kept: torch.Tensor, new: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Where one task's new rows go among its kept rows (both non-empty, sorted, unique order keys):
    ``(at, hit, miss, inserted)``, see `_merge_fill`."""
    k = kept.shape[0]
    kk, nk = _order_key(kept[:, 1]), _order_key(new[:, 1])
    at = torch.searchsorted(kk, nk)  # [P] the first kept row not below each new row
    hit = at < k
    hit &= kk.index_select(0, at.clamp_max(k - 1)) == nk  # the new row's value is already kept
    miss = ~hit
    inserted = at[miss]  # [U] where each unmatched new row goes: before that kept row
    return at, hit, miss, inserted


def _merge_fill(
    out: torch.Tensor, kept: torch.Tensor, new: torch.Tensor, plan: tuple[torch.Tensor, ...]
) -> None:
    """Write one task's merge into ``out [K + U, 4]`` following `_merge_plan`'s ``plan``."""
    at, hit, miss, inserted = plan
    k, u = kept.shape[0], inserted.shape[0]
    # each kept row moves down by the unmatched new rows placed before (or at) it
    shift = torch.bincount(inserted, minlength=k + 1)[:k].cumsum(0)
    kept_at = torch.arange(k, device=kept.device) + shift
    out.index_copy_(0, kept_at, kept)
    out.index_copy_(0, inserted + torch.arange(u, device=kept.device), new[miss])
    out[:, 2:].index_add_(0, kept_at.index_select(0, at[hit]), new[hit][:, 2:])  # counts only: -0.0 stays


def truncate_mantissa(values: torch.Tensor, bits: int) -> torch.Tensor:
    """`values` with the mantissa truncated to `bits` bits toward zero: monotone non-decreasing (ties
    are created, order is never reversed) and idempotent (truncating to 20 then 16 bits = to 16)."""
    if bits >= _FULL_BITS:
        return values
    m, e = torch.frexp(values)
    scale = float(2**bits)
    return torch.ldexp(torch.trunc(m * scale) / scale, e)


def compact_scores(rows: torch.Tensor, bits: int, max_values: int) -> tuple[torch.Tensor, int]:
    """One row per `(task, value)` with summed counts, sorted by task then value; rows weighing 0 go.

    When a task keeps more than `max_values` distinct values, the values are truncated to fewer
    mantissa bits (4 at a time) until it does not; returns the rows and the bits in force.
    """
    weighed = (rows[:, 2] + rows[:, 3]) > 0
    if not bool(weighed.all()):  # (a copy of every row only when some weigh 0: unlabelled rows)
        rows = rows[weighed]
    del weighed
    if bits < _FULL_BITS:
        rows = torch.cat([rows[:, :1], truncate_mantissa(rows[:, 1:2], bits), rows[:, 2:]], 1)
    while True:
        out = _group(rows)
        # rows per task (the task ids are small whole numbers): the most distinct values of a task
        if out.shape[0] == 0 or int(torch.bincount(out[:, 0].long()).max()) <= max_values:
            return out, bits
        bits = min(bits, 52) - 4
        rows = torch.cat([out[:, :1], truncate_mantissa(out[:, 1:2], bits), out[:, 2:]], 1)


def _group(rows: torch.Tensor) -> torch.Tensor:
    """Rows sorted by (task, value) with equal keys summed (each group keeps its first row's value).

    One stable sort of int64 keys ordered as (task, value) (`_task_value_key`: values in [0, 2) and at
    most 4 tasks), else two (the values' order keys, `_order_key`, then the task ids); an integer sort
    is several times faster than a float one. The counts of each group are summed
    as differences of running sums, so the `[N, 4]` rows are never gathered whole. The counts are
    whole numbers (0/1 label weights, summed; below 2**53), so these sums are exact.
    """
    n = rows.shape[0]
    if n == 0:
        return rows
    task_f, value, pos, neg = rows.T.contiguous()  # [N] columns (gathers from 1-D tensors are fast)
    key = _order_key(value)
    task = task_f.long()
    new = torch.ones(n, dtype=torch.bool, device=rows.device)
    joint = _task_value_key(task, key)
    if joint is not None:  # one sort of (task, value) keys
        joint, perm = torch.sort(joint, stable=True)
        torch.ne(joint[1:], joint[:-1], out=new[1:])
    else:
        perm = torch.argsort(key, stable=True)  # by value
        perm = perm.index_select(0, torch.argsort(task.index_select(0, perm), stable=True))  # then by task
        key, task = key.index_select(0, perm), task.index_select(0, perm)
        new[1:] = (task[1:] != task[:-1]) | (key[1:] != key[:-1])
    starts = torch.nonzero(new).squeeze(1)  # [G] the first sorted row of each group
    ends = torch.cat([starts[1:], starts.new_tensor([n])]) - 1
    first = perm.index_select(0, starts)
    out = torch.empty(4, starts.shape[0], dtype=rows.dtype, device=rows.device)
    out[0] = task_f.index_select(0, first)
    out[1] = value.index_select(0, first)
    for i, c in ((2, pos), (3, neg)):  # running counts at each group's end, minus the previous group's
        at_end = c.index_select(0, perm).cumsum(0).index_select(0, ends)
        out[i] = at_end
        out[i, 1:] -= at_end[:-1]
    return out.T.contiguous()


_LOW63 = 0x7FFFFFFFFFFFFFFF
_KEY_BITS = 62  # order keys of values in [+0, 2) are below 2**62: the two bits above them can hold the task


def _task_value_key(task: Tensor, key: Tensor) -> Tensor | None:
    """One int64 key per row ordered as ``(task, value)`` (equal exactly where both are), for the rows'
    task ids ``task [N]`` and value order keys ``key [N]`` (`_order_key`); None unless every task id is
    in ``0..3`` and every value in ``[0, 2)`` (probabilities: the usual case).

    The value keys are then the values' bit patterns, below ``2**62``; the task, offset by -2, goes to
    the top two bits: ``(task - 2) · 2**62 + key`` orders the tasks -2**63, -2**62, 0, 2**62 in turn, each
    task's values in order after its start (one host read: the keys' and the tasks' extremes)."""
    k_lo, k_hi = torch.aminmax(key)
    t_lo, t_hi = torch.aminmax(task)
    if int(k_lo) < 0 or int(k_hi) >= 1 << _KEY_BITS or int(t_lo) < 0 or int(t_hi) > 3:
        return None
    return (task - 2).bitwise_left_shift_(_KEY_BITS).add_(key)


def _order_key(values: torch.Tensor) -> torch.Tensor:
    """int64 keys ordered as the float64 `values` (not NaN), equal exactly where the values compare
    equal: -0.0 is keyed as +0.0, and a negative value's low 63 bits are flipped (IEEE order)."""
    k = (values.to(torch.float64) + 0.0).view(torch.int64)
    return k ^ ((k >> 63) & _LOW63)


def delong_se(rows: torch.Tensor, n_tasks: int) -> torch.Tensor:
    """DeLong's standard error `[n_tasks]` of each task's AUC from compacted `(task, value, pos, neg)` rows
    (sorted by value): the placement values of the positives (share of negatives below, ties half) and
    of the negatives (share of positives above), counted per distinct value; SE² = S₁₀/n₊ + S₀₁/n₋ with
    their sample variances (DeLong, DeLong & Clarke-Pearson 1988; the same as `causal.metrics`' on the
    rows). NaN where a class has fewer than 2 rows."""
    out = torch.full((n_tasks,), float("nan"), dtype=torch.float64)
    for t in torch.unique(rows[:, 0]).tolist() if rows.shape[0] else []:
        r = rows[rows[:, 0] == t]
        pos, neg = r[:, 2], r[:, 3]
        n_pos, n_neg = pos.sum(), neg.sum()
        if n_pos < 2 or n_neg < 2:
            continue
        v10 = (torch.cumsum(neg, 0) - neg + 0.5 * neg) / n_neg  # per value: each positive's placement
        v01 = (n_pos - torch.cumsum(pos, 0) + 0.5 * pos) / n_pos  # each negative's
        auc = (pos * v10).sum() / n_pos
        s10 = (pos * (v10 - auc) ** 2).sum() / (n_pos - 1)
        s01 = (neg * (v01 - auc) ** 2).sum() / (n_neg - 1)
        out[int(t)] = float((s10 / n_pos + s01 / n_neg).sqrt())
    return out


def exact_auc(rows: torch.Tensor, n_tasks: int) -> torch.Tensor:
    """AUC `[n_tasks]` from compacted `(task, value, pos, neg)` rows: P(score_pos > score_neg) with ties
    counted half, exactly as `sklearn.metrics.roc_auc_score` (NaN where a task lacks a class)."""
    out = torch.full((n_tasks,), float("nan"), dtype=torch.float64)
    for t in torch.unique(rows[:, 0]).tolist() if rows.shape[0] else []:
        r = rows[rows[:, 0] == t]  # sorted by value
        pos, neg = r[:, 2], r[:, 3]
        neg_below = torch.cumsum(neg, 0) - neg
        wins = (pos * (neg_below + 0.5 * neg)).sum()
        total = pos.sum() * neg.sum()
        if total > 0:
            out[int(t)] = float(wins / total)
    return out
