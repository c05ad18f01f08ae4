"""Segment routing: the mean gate per value of a data column, and its divergence from the overall mean.

Memory is bounded: per tracked segment only a row count and per-gate weight sums `[E]` are kept
(sums merge exactly). At most `max_tracked` distinct values are tracked, in order of first
appearance; rows of later new values are summed into "other". The table keeps the `max_segments`
largest segments by row count and folds the rest into "other".
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from mmoe_inspect.data.columns import check_segment_values
from mmoe_inspect.functional.routing import js_divergence
from mmoe_inspect.topology.spec import GateSpec

__all__ = ["OTHER", "SEGMENT_COLUMNS", "SegmentRouting"]

OTHER = "other"
MISSING = "<missing>"

SEGMENT_COLUMNS = ["gate", "segment", "rows", "share", "jsd", "top_expert", "top_weight"]
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
            lut[i] = self._slot(u.item() if isinstance(u, np.generic) else u)
        lut[-1] = self._slot(MISSING) if (codes < 0).any() else self._other  # code -1: a missing value
        slots = torch.from_numpy(lut[codes])
        self._counts.index_add_(0, slots, torch.ones(len(slots), dtype=torch.float64))
        for g in self.gates:
            probs = gates.get(g.name)
            if probs is None or probs.shape[0] != len(slots):
                self.skipped.add(g.name)  # a gate with more than one row per input row
                continue
            self._sums[g.name].index_add_(0, slots, probs.to(torch.float64))

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
        """Per gate, the `max_segments` largest segments (+ "other"), sorted by JSD from the overall mean gate."""
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
            for label, n, s in groups:
                mean = s / n
                top = int(mean.argmax())
                row = {
                    "gate": g.name,
                    "segment": label,
                    "rows": int(n),
                    "share": n / total,
                    "jsd": float(js_divergence(mean, overall)),
                    "top_expert": g.experts[top],
                    "top_weight": float(mean[top]),
                }
                row.update({e: float(w) for e, w in zip(g.experts, mean.tolist(), strict=True)})
                rows.append(row)
        frame = pd.DataFrame(rows, columns=SEGMENT_COLUMNS + experts)
        if frame.empty:
            return frame
        order = {g.name: i for i, g in enumerate(self.gates)}
        frame = frame.assign(_g=frame["gate"].map(order)).sort_values(["_g", "jsd"], ascending=[True, False])
        return frame.drop(columns="_g").reset_index(drop=True)
