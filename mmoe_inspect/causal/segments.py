"""Segment routing: the mean gate per value of a data column, and its divergence from the overall mean.

Memory is bounded: per tracked segment only a row count and per-gate weight sums `[E]` are kept
(sums merge exactly), plus per gate the sums of squared weights `[E]` over all rows. At most
`max_tracked` distinct values are tracked, in order of first appearance; rows of later new values are
summed into "other". The table keeps the `max_segments` largest segments by row count and folds the
rest into "other".

Small segments: a segment's mean gate differs from the overall one by sampling noise alone, more the
fewer rows it has (a 3-row segment can sit far from the mean by chance). Each segment is therefore
tested against the noise of a random subset of its size: under "the segment routes like the data",
its mean weight on expert e differs from the overall mean by `d_e` with variance
`var_e * (N - n) / (n * (N - 1))` (n of N rows drawn without replacement, `var_e` the weight's
variance over all rows). The segment routes differently (`beyond_noise`) when some `|d_e|` exceeds
`z * sd`, z two-sided at 5% Bonferroni-corrected over the gate's segments and experts, and it has at
least `MIN_SEGMENT_ROWS` rows (the normal approximation of a mean of bounded, skewed weights is not
trusted below). `min_rows` = the fewest rows at which a segment with its observed differences would
clear that bar: a segment below it is too small to judge.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from statistics import NormalDist

import numpy as np
import pandas as pd
import torch

from mmoe_inspect._text import short_label
from mmoe_inspect.data.columns import check_segment_values
from mmoe_inspect.functional.routing import js_divergence
from mmoe_inspect.topology.spec import GateSpec

__all__ = ["MIN_SEGMENT_ROWS", "OTHER", "SEGMENT_COLUMNS", "SegmentRouting"]

OTHER = "other"
MISSING = "<missing>"
MIN_SEGMENT_ROWS = 30
"""Fewest rows of a segment whose routing difference is judged (the usual floor of the normal
approximation of a mean); smaller segments are marked too small, never ranked as routing differently."""
SEGMENT_ALPHA = 0.05
"""Family-wise error rate of the per-gate noise test (Bonferroni over segments × experts)."""

SEGMENT_COLUMNS = [
    "gate",
    "segment",
    "rows",
    "share",
    "jsd",
    "beyond_noise",
    "min_rows",
    "top_expert",
    "top_weight",
]
"""Leading columns of the segment table; one column per expert (its mean weight) follows."""


class SegmentRouting:
    """Streaming per-segment gate sums. `update(values [b], gates {name: [b, E]})`, then `table()`."""

    def __init__(self, column: str, gates: Sequence[GateSpec], *, max_tracked: int = 10_000) -> None:
        if max_tracked < 1:
            raise ValueError(f"max_tracked must be positive, got {max_tracked}")
        self.column = column
        self.gates = tuple(gates)
        self.max_tracked = max_tracked
        self._ids: dict[Hashable, int] = {}
        self._other = max_tracked  # slot of the overflow bucket
        self._counts = torch.zeros(max_tracked + 1, dtype=torch.float64)
        self._sums = {
            g.name: torch.zeros(max_tracked + 1, g.n_experts, dtype=torch.float64) for g in self.gates
        }
        self._squares = {g.name: torch.zeros(g.n_experts, dtype=torch.float64) for g in self.gates}
        self.overflowed = False
        self.skipped: set[str] = set()

    def update(self, values: pd.Series | np.ndarray, gates: Mapping[str, torch.Tensor]) -> None:
        """Add one batch: segment values `[b]` and intact gate probabilities `{gate: [b, E]}`."""
        series = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values))
        try:
            codes, uniques = pd.factorize(series, use_na_sentinel=True)
        except TypeError:  # rows past the first ones that hold lists or dicts
            check_segment_values(series, self.column, "the data")
            raise
        lut = np.empty(len(uniques) + 1, dtype=np.int64)
        for i, u in enumerate(uniques):  # once per distinct value in the batch, not per row
            u = u.item() if isinstance(u, np.generic) else u
            lut[i] = self._slot(short_label(u) if isinstance(u, str) else u)  # a 1 MB name is kept short
        lut[-1] = self._slot(MISSING) if (codes < 0).any() else self._other  # code -1: a missing value
        slots = torch.from_numpy(lut[codes])
        self._counts.index_add_(0, slots, torch.ones(len(slots), dtype=torch.float64))
        for g in self.gates:
            probs = gates.get(g.name)
            if probs is None or probs.shape[0] != len(slots):
                self.skipped.add(g.name)  # a gate with more than one row per input row
                continue
            p64 = probs.to(torch.float64)
            self._sums[g.name].index_add_(0, slots, p64)
            self._squares[g.name] += (p64 * p64).sum(0)

    def _slot(self, key: Hashable) -> int:
        """The row of `key`'s sums: its own while fewer than `max_tracked` are tracked, else "other"."""
        slot = self._ids.get(key)
        if slot is None:
            if len(self._ids) >= self.max_tracked:
                self.overflowed = True
                return self._other
            slot = self._ids[key] = len(self._ids)
        return slot

    def table(self, max_segments: int = 50) -> pd.DataFrame:
        """Per gate, the `max_segments` largest segments (+ "other"): those beyond sampling noise first,
        each group by JSD from the overall mean gate (see the module docstring for the noise test)."""
        experts = list(dict.fromkeys(e for g in self.gates for e in g.experts))
        total = float(self._counts.sum())
        if total == 0:
            return pd.DataFrame(columns=SEGMENT_COLUMNS + experts)
        names = {slot: key for key, slot in self._ids.items()}
        tracked = sorted(names, key=lambda s: -float(self._counts[s]))
        keep = [s for s in tracked[:max_segments] if self._counts[s] > 0]
        folded = [*tracked[max_segments:], self._other]
        rows = []
        for g in self.gates:
            if g.name in self.skipped:
                continue
            sums = self._sums[g.name]
            overall = sums.sum(0) / total
            groups = [(str(names[s]), float(self._counts[s]), sums[s]) for s in keep]
            other_n = float(self._counts[folded].sum())
            if other_n > 0:
                groups.append((OTHER, other_n, sums[folded].sum(0)))
            var = (self._squares[g.name] / total - overall * overall).clamp(min=0.0).numpy()
            z = NormalDist().inv_cdf(1 - SEGMENT_ALPHA / (2 * len(groups) * g.n_experts))
            for label, n, s in groups:
                mean = s / n
                top = int(mean.argmax())
                beyond, min_rows = _noise_test((mean - overall).numpy(), var, n, total, z)
                row = {
                    "gate": g.name,
                    "segment": label,
                    "rows": int(n),
                    "share": n / total,
                    "jsd": float(js_divergence(mean, overall)),
                    "beyond_noise": beyond,
                    "min_rows": min_rows,
                    "top_expert": g.experts[top],
                    "top_weight": float(mean[top]),
                }
                row.update({e: float(w) for e, w in zip(g.experts, mean.tolist(), strict=True)})
                rows.append(row)
        frame = pd.DataFrame(rows, columns=SEGMENT_COLUMNS + experts)
        if frame.empty:
            return frame
        order = {g.name: i for i, g in enumerate(self.gates)}
        frame = frame.assign(_g=frame["gate"].map(order)).sort_values(
            ["_g", "beyond_noise", "jsd"], ascending=[True, False, False], kind="stable"
        )
        return frame.drop(columns="_g").reset_index(drop=True)


def _noise_test(diff: np.ndarray, var: np.ndarray, n: float, total: float, z: float) -> tuple[bool, int]:
    """(beyond noise, min rows) of one segment of `n` of `total` rows whose mean gate differs from the
    overall one by `diff` `[E]`, the weights' variance over all rows being `var` `[E]`.

    Under "a random subset of n rows", `diff_e` has variance `var_e * (N - n) / (n * (N - 1))`; the
    segment is beyond noise when some `|diff_e| > z * sd_e` and `n >= MIN_SEGMENT_ROWS`. `min_rows` solves
    `diff_e^2 = z^2 var_e (N - n) / (n (N - 1))` for n (the most telling expert), at least MIN_SEGMENT_ROWS."""
    d2 = diff * diff
    informative = (var > 0) & (d2 > 1e-24)  # a constant weight, or no difference: nothing to tell
    if total <= 1 or not informative.any():
        return False, int(max(MIN_SEGMENT_ROWS, math.ceil(total)))
    zv = z * z * var[informative]
    needed = zv * total / (d2[informative] * (total - 1) + zv)
    min_rows = int(max(MIN_SEGMENT_ROWS, math.ceil(float(needed.min()) - 1e-9)))
    sd = np.sqrt(var[informative] * (total - n) / (n * (total - 1)))
    beyond = bool(n >= MIN_SEGMENT_ROWS and (np.sqrt(d2[informative]) > z * sd).any())
    return beyond, min_rows
