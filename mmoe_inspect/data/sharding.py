"""Which rows are read: the deterministic row sample (`sample_mask`) and one rank's share of a
distributed run (`RowShard`, built by `shard_rows`).

Both are functions of a row's global position (and the seed), never of the batch size or of how the
rows are split into files, so every rank and every batch size reads the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mmoe_inspect.data.sources import TableSource

__all__ = ["RowShard", "sample_mask", "shard_rows"]

_SCAN_ROWS = 1 << 20  # row positions hashed at a time when looking for where `max_rows` sampled rows end


@dataclass(frozen=True)
class RowShard:
    """The rows one rank of a distributed run reads: positions `p < stop` with `(p // block) % world == rank`.

    With `block = ceil(rows / world)` every rank holds one contiguous range (parquet and frames, whose
    row count is known: a rank reads only the row groups that overlap its range); with a small
    `block` the ranks take turns block by block (CSV, whose length is unknown until read). Either way
    the ranks' rows are disjoint and together are every row before `stop` (None: to the end).
    """

    rank: int
    world: int
    block: int
    stop: int | None = None

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world or self.block < 1:
            raise ValueError(f"bad shard: rank {self.rank} of {self.world}, block {self.block}")

    def ranges(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The owned position ranges `[s, e)` within `[lo, hi)`, in order."""
        if self.stop is not None:
            hi = min(hi, self.stop)
        out: list[tuple[int, int]] = []
        if hi <= lo:
            return out
        first = lo // self.block
        b = first + (self.rank - first) % self.world
        while b * self.block < hi:
            s, e = max(lo, b * self.block), min(hi, (b + 1) * self.block)
            if s < e:
                out.append((s, e))
            b += self.world
        return out


def shard_rows(
    source: TableSource,
    rank: int,
    world: int,
    *,
    max_rows: int | None = None,
    sample: float | None = None,
    seed: int = 0,
    block: int = 4096,
) -> RowShard:
    """Rank `rank`'s share of the rows that `source.iter_frames(..., max_rows, sample=, seed=)` yields.

    The `max_rows` cap becomes a stop position (with `sample`: just after the `max_rows`-th sampled
    row, found by hashing positions), so the ranks together read exactly the rows one process reads
    and sampling stays a function of the global position. A known row count is split into `world`
    contiguous ranges whose length is a multiple of `block` (pass the batch size: without sampling,
    every rank's batches are then the very batches one process forms, so the forward passes, and
    the per-batch statistics, are bit-identical; the last ranks may get fewer rows or none); a CSV
    goes round-robin in `block`s.
    """
    block = max(1, block)
    n = source.n_rows()
    stop = _stop_position(n, max_rows, sample, seed)
    if n is None:
        return RowShard(rank, world, block, stop)
    total = n if stop is None else min(n, stop)
    per_rank = -(-total // world)
    return RowShard(rank, world, max(block, -(-per_rank // block) * block), total)


def _stop_position(n: int | None, max_rows: int | None, sample: float | None, seed: int) -> int | None:
    """The row position where `max_rows` (sampled) rows end: None when every row is read."""
    if max_rows is None:
        return None
    if sample is None or sample >= 1.0:
        return max_rows if n is None else min(n, max_rows)
    seen, start = 0, 0
    while n is None or start < n:
        end = start + _SCAN_ROWS if n is None else min(n, start + _SCAN_ROWS)
        kept = np.flatnonzero(sample_mask(np.arange(start, end, dtype=np.int64), sample, seed))
        if seen + len(kept) >= max_rows:
            return int(kept[max_rows - seen - 1]) + 1
        seen += len(kept)
        start = end
    return n


def sample_mask(rows: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Bool mask `[n]`: keep row positions `rows` `[n]` with probability `fraction` (splitmix64 hash)."""
    with np.errstate(over="ignore"):
        z = rows.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53 < fraction
