"""Analytic intervals on every row in bounded memory: streamed loss moments and spilled AUC scores.

`Evaluation` keeps every prediction set's per-row losses and placements in memory (about a kilobyte a
row for a 22-variant model), so its rows must be capped. The analytic intervals need much less:

- a loss metric (log loss, MSE, MAE) is a mean of per-row losses, and its interval and the paired
  interval of a difference against the reference set (the intact model) need only the count, mean
  and sum of squared deviations of the per-row losses and of the per-row differences. `LossMoments`
  keeps them for every set at once and merges batches exactly (Chan, Golub & LeVeque's update), so
  nothing per row is kept;
- DeLong's AUC variance pairs the placement values of two sets ROW BY ROW, which needs every row's
  score. Each binary task's scores are written to disk batch by batch as `[sets, rows]` float32 blocks
  in a temporary folder (`tempfile`, so ``TMPDIR`` chooses the disk), each batch's positives first, its
  labels as one byte a row (kept for the stated spill size; the ranking needs only each block's count of
  positives). After the pass, each task's reference placements are computed once and
  every other set is read back (positives of every block first, then the negatives), ranked and paired
  with them one at a time as exact doubled placements (`functional.delong.twice_placements`): memory
  holds two sets' columns of one task, never all of them.
  A set whose scores of a task equal the reference's bit for bit (a counterfactual of another task's
  gate) takes the reference's AUC and a zero difference without being ranked again.

Every comparison pairs a set with the reference set (ablations and counterfactuals against the intact
model, the intact model against a baseline), so these statistics give the same intervals as
`Evaluation(intervals="analytic")` up to float rounding. `StreamedEvaluation` answers the same queries.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from mmoe_inspect._limits import human_bytes
from mmoe_inspect._memory import release_free_memory
from mmoe_inspect.causal.metrics import LOGLOSS_EPS, TASK_METRICS, loss_interval
from mmoe_inspect.errors import MmoeInspectError
from mmoe_inspect.functional.delong import TwicePlacements, twice_placements, twice_variance
from mmoe_inspect.functional.paired import wald_interval
from mmoe_inspect.topology.spec import TaskSpec

__all__ = [
    "EVAL_BYTES_PER_ROW",
    "EXTRA_THREAD_BYTES_PER_ROW",
    "RANKING_BYTES_PER_ROW",
    "EvaluationStream",
    "LossMoments",
    "SpillError",
    "StreamedEvaluation",
]

RANKING_BYTES_PER_ROW = 48
"""Memory per labelled row of one set's ranking, an upper bound: its float32 scores and the ranking's peak
(torch's radix sort: int32 keys and int64 order with their scratch copies; then 32-bit cumulative counts
and doubled placements): 4 + 28 to 31 bytes, measured as peak RSS on 4M rows (few or many ties)."""

EVAL_BYTES_PER_ROW = 64
"""Memory per labelled row while one binary task's AUCs are ranked after the pass on one thread, an upper
bound: one set's ranking (`RANKING_BYTES_PER_ROW`) and the reference's int32 doubled placements (36 bytes
measured)."""


RANKING_PARALLEL_BYTES = 128 * 2**20
"""Memory the extra ranking threads may hold together (`ranking_threads`): a constant, so that the peak RSS
of a large evaluation does not grow with the rows through them (measured on 4M rows: the two-thread ranking's
peak was 1.34x that of 1M rows, one thread's 1.17x)."""

EXTRA_THREAD_BYTES_PER_ROW = 128
"""Resident memory per labelled row that one more ranking thread adds, an upper bound: its own ranking
(`RANKING_BYTES_PER_ROW`) and the freed arrays its malloc arena keeps between rankings (measured on 4M rows:
two threads held 137-179 bytes a row, one thread 53-64)."""


def ranking_threads(threads: int, rows: int) -> int:
    """Threads that rank the sets of `rows` labelled rows: at most `threads`, and extra ones only while
    together they hold at most `RANKING_PARALLEL_BYTES` (`EXTRA_THREAD_BYTES_PER_ROW` each): two threads up
    to about 1M rows, then one (the caller)."""
    extra = RANKING_PARALLEL_BYTES // max(1, rows * EXTRA_THREAD_BYTES_PER_ROW)
    return max(1, min(threads, 1 + extra))


SPILL_PREFIX = "mmoe-inspect-auc-"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64] or "host"


def spill_prefix() -> str:
    """The spill folder's name prefix: `mmoe-inspect-auc-<host>-<pid>-` (`mkdtemp` adds 8 characters), so a
    later run can tell the folder of a process killed outright (SIGKILL, OOM) from that of a live one."""
    return f"{SPILL_PREFIX}{_host()}-{os.getpid()}-"


def remove_stale_spills(parent: str | Path) -> list[Path]:
    """Remove the spill folders in `parent` left by dead processes: only folders (not links) named exactly by
    `spill_prefix` on this host, owned by the current user, whose pid is not a live process. Returns them."""
    pattern = re.compile(re.escape(f"{SPILL_PREFIX}{_host()}-") + r"(\d{1,10})-[a-z0-9_]{8}")
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        found = pattern.fullmatch(entry.name)
        if found is None or int(found[1]) == os.getpid():
            continue
        try:
            if (
                not entry.is_dir(follow_symlinks=False)
                or entry.stat(follow_symlinks=False).st_uid != os.getuid()
            ):
                continue
            os.kill(int(found[1]), 0)
        except ProcessLookupError:  # no such process: its spill is stale
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
        except (OSError, OverflowError):
            continue  # alive under another user (EPERM), or cannot tell: keep it
    return removed


class SpillError(MmoeInspectError, RuntimeError):
    """The spilled AUC scores could not be written or read back (disk full, folder not writable)."""


class LossMoments:
    """Streaming count, mean and sum of squared deviations of `[K]` per-row values, merged batch by batch.

    `update(x [K, b])` adds `b` rows for every set at once; NaN in a set's row makes that set's moments
    NaN (a set with a non-finite prediction on a labelled row has no value). `merge` combines two
    states exactly as if their rows had been added to one (Chan, Golub & LeVeque 1979).
    """

    def __init__(self, k: int) -> None:
        self.n = 0
        self.mean = np.zeros(k, dtype=np.float64)
        self.m2 = np.zeros(k, dtype=np.float64)

    def update(self, x: np.ndarray, *, overwrite: bool = False) -> None:
        """Add the rows of `x [K, b]` (`overwrite`: `x` may be used as scratch)."""
        b = x.shape[1]
        if b == 0:
            return
        mean_b = x.mean(axis=1)
        d = np.subtract(x, mean_b[:, None], out=x if overwrite else None)
        self._combine(b, mean_b, np.einsum("kb,kb->k", d, d))

    def merge(self, other: LossMoments) -> None:
        if other.n:
            self._combine(other.n, other.mean, other.m2)

    def _combine(self, b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        n = self.n + b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (b / n)
        self.m2 = self.m2 + m2_b + np.square(delta) * (self.n * b / n)
        self.n = n

    def variance_of_mean(self) -> np.ndarray:
        """`[K]` sample variance (ddof 1) over n: the squared standard error of each mean (NaN for n < 2)."""
        if self.n < 2:
            return np.full(self.mean.shape, np.nan)
        return self.m2 / (self.n - 1) / self.n


def row_losses(
    metric: str, pred: np.ndarray, label: np.ndarray, *, positives: int | None = None, finite: bool = False
) -> np.ndarray:
    """Per-row losses `[K, b]` of predictions `[K, b]` against labels `[b]`; NaN where a prediction is not
    finite (as `Evaluation`, which leaves such a set without a value).

    `positives`: the labels are exactly 1 in the first `positives` rows and 0 after, so the log loss takes
    one logarithm a row (``-log q`` or ``-log1p(-q)``, bit for bit the general formula's value) instead of
    two. `finite`: every prediction is known to be finite (no mask pass).
    """
    if metric == "logloss" and positives is not None:
        q = np.clip(pred, LOGLOSS_EPS, 1.0 - LOGLOSS_EPS)
        out = np.empty_like(q)
        np.log(q[:, :positives], out=out[:, :positives])
        np.negative(q[:, positives:], out=q[:, positives:])
        np.log1p(q[:, positives:], out=out[:, positives:])
        np.negative(out, out=out)
    elif metric == "logloss":
        q = np.clip(pred, LOGLOSS_EPS, 1.0 - LOGLOSS_EPS)
        out = -(label * np.log(q) + (1.0 - label) * np.log1p(-q))
    elif metric == "mse":
        out = np.square(pred - label)
    elif metric == "mae":
        out = np.abs(pred - label)
    else:
        raise ValueError(f"unknown metric {metric!r}")
    if not finite:
        out[~np.isfinite(pred)] = np.nan
    return out


class EvaluationStream:
    """Feeds batches of labels and predictions; `finish()` gives a `StreamedEvaluation`.

    `positions` maps each set's key to its index on `update`'s first axis (several keys may share one:
    identical variants); index 0 is the reference every comparison pairs with. Use as a context manager
    (or call `close`) so the spill folder goes.
    """

    def __init__(
        self,
        tasks: Sequence[TaskSpec],
        positions: Mapping[Hashable, int],
        *,
        ci: float = 0.95,
        spill_dir: str | None = None,
    ) -> None:
        self.tasks, self.positions, self.ci = tuple(tasks), dict(positions), ci
        k = max(self.positions.values()) + 1
        self.n_sets = k
        self.n_rows = 0
        self.n_labelled = np.zeros(len(self.tasks), dtype=np.int64)
        self.positives = np.zeros(len(self.tasks), dtype=np.int64)
        self.single = {
            (t.name, m): LossMoments(k) for t in self.tasks for m in TASK_METRICS[t.kind] if m != "auc"
        }
        self.paired = {key: LossMoments(k) for key in self.single}  # moments of (set - reference)
        self.auc_finite = {t.name: np.ones(k, dtype=bool) for t in self.tasks if t.kind == "binary"}
        self.auc_same = {t.name: np.ones(k, dtype=bool) for t in self.tasks if t.kind == "binary"}  # == ref
        self._dir: Path | None = None
        self._spill_parent = spill_dir
        self._files: dict[str, tuple[BinaryIO]] = {}  # task -> its scores' spill file
        self._blocks: dict[str, list[tuple[int, int, int]]] = {}  # task -> (byte offset, rows, positives)
        self.spilled_bytes = 0
        self.threads_used = 0  # ranking threads `finish` used

    def check_room(self, rows: int | None) -> None:
        """Raise `SpillError` before the pass when `rows` rows would spill more than the free space of the
        spill folder's disk (`rows` None: unknown, e.g. a CSV file; nothing is checked)."""
        binary = sum(t.kind == "binary" for t in self.tasks)
        if rows is None or not binary:
            return
        need = rows * binary * 4 * self.n_sets
        where = self._spill_parent or tempfile.gettempdir()
        try:
            free = shutil.disk_usage(where).free
        except OSError as exc:
            raise SpillError(
                f"cannot use {where} for the AUC scores of the causal analyses ({exc.strerror or exc})"
            ) from exc
        if need > free:
            need_text, free_text = human_bytes(need), human_bytes(free)
            if need_text == free_text:  # close sizes: the bytes tell them apart
                need_text, free_text = f"{need:,} bytes", f"{free:,} bytes"
            raise SpillError(
                f"the causal analyses would write {need_text} of AUC scores to {where}, which has {free_text} "
                "free; point TMPDIR at a disk with room, or evaluate fewer rows (--limit; max_rows in Python)"
            )

    # ------------------------------------------------------------------------------------ feeding
    def update(self, labels: np.ndarray, preds: np.ndarray) -> None:
        """One batch: `labels [b, T]` float64 (NaN = missing), `preds [K, b, T]` float32 in probability space
        for binary tasks. A binary task's labelled rows are taken positives first (one gather), which its
        log loss and its spilled scores use."""
        self.n_rows += labels.shape[0]
        for j, task in enumerate(self.tasks):
            label = labels[:, j]
            binary, npos = task.kind == "binary", 0
            if binary:
                pos, neg = np.flatnonzero(label > 0.5), np.flatnonzero(label <= 0.5)  # NaN is neither
                npos = len(pos)
                rows = np.concatenate((pos, neg))
            else:
                rows = np.flatnonzero(np.isfinite(label))
            nb = len(rows)
            if not nb:
                continue
            y = label[rows]
            # [K, nb] float32, C-contiguous (preds[:, rows, j] is laid out transposed: slower passes below)
            p = np.take(preds[:, :, j], rows, axis=1)
            self.n_labelled[j] += nb
            finite = np.isfinite(p).all(axis=1)  # [K]
            zero_one = binary and bool((y[:npos] == 1.0).all() and (y[npos:] == 0.0).all())
            p64 = p.astype(np.float64)
            for metric in TASK_METRICS[task.kind]:
                if metric == "auc":
                    continue
                losses = row_losses(
                    metric, p64, y, positives=npos if zero_one else None, finite=bool(finite.all())
                )
                self.paired[(task.name, metric)].update(losses - losses[0], overwrite=True)
                self.single[(task.name, metric)].update(losses, overwrite=True)
            if binary:
                self.positives[j] += npos
                self.auc_finite[task.name] &= finite
                same = self.auc_same[task.name]
                left = np.flatnonzero(same[1:]) + 1  # sets equal to the reference so far
                if len(left):
                    same[left] = (p[left] == p[0]).all(axis=1)
                self._spill(task.name, p, npos)

    def _spill(self, task: str, scores: np.ndarray, positives: int) -> None:
        """Append one batch of a task: its scores as one `[K, nb]` float32 block, the first `positives` rows
        positive and the rest negative (the block list keeps the counts: no label file)."""
        try:
            files = self._files.get(task)
            if files is None:
                if self._dir is None:
                    parent = self._spill_parent or tempfile.gettempdir()
                    remove_stale_spills(parent)
                    self._dir = Path(tempfile.mkdtemp(prefix=spill_prefix(), dir=parent))
                n = len(self._files)
                files = (open(self._dir / f"{n}.f32", "w+b"),)  # noqa: SIM115
                self._files[task] = files
                self._blocks[task] = []
            nb = scores.shape[1]
            self._blocks[task].append((files[0].tell(), nb, positives))
            np.ascontiguousarray(scores, dtype=np.float32).tofile(files[0])
        except OSError as exc:
            raise SpillError(
                f"could not write the AUC scores of the causal analyses to {self._dir or tempfile.gettempdir()} "
                f"({exc.strerror or exc}); point TMPDIR at a disk with room, or evaluate fewer rows (max_rows)"
            ) from exc
        self.spilled_bytes += scores.shape[0] * scores.shape[1] * 4

    def _scores(self, task: str, pos: int) -> tuple[np.ndarray, int]:
        """Set `pos`'s spilled scores of `task` `[n_labelled]` float32 with the positives of every block first,
        and their count (positional reads, one per block: several threads may read one file at once)."""
        fd = self._files[task][0].fileno()
        blocks = self._blocks[task]
        m = sum(npos for _, _, npos in blocks)
        out = np.empty(sum(nb for _, nb, _ in blocks), dtype=np.float32)
        view = memoryview(out).cast("B")
        try:
            p, q = 0, m  # next positive, next negative
            for offset, nb, npos in blocks:
                parts = [view[p * 4 : (p + npos) * 4], view[q * 4 : (q + nb - npos) * 4]]
                if os.preadv(fd, parts, offset + pos * nb * 4) != nb * 4:
                    raise OSError(0, "the spill file is shorter than written")
                p, q = p + npos, q + nb - npos
        except OSError as exc:
            raise SpillError(f"could not read back the spilled AUC scores ({exc.strerror or exc})") from exc
        return out, m

    # ---------------------------------------------------------------------------------- finishing
    def finish(self, threads: int = 1) -> StreamedEvaluation:
        """Rank the spilled scores task by task: the reference first, then every other set paired with it,
        on up to `threads` threads (the sorts release the GIL; each further thread adds about
        `EXTRA_THREAD_BYTES_PER_ROW` bytes a row; fewer threads on many rows, see `ranking_threads`). On one thread
        everything runs in the caller: a worker thread's allocations go to a malloc arena of its own, and two
        arenas keep two rankings resident."""
        auc: dict[tuple[int, str], tuple[float, float, float]] = {}  # (pos, task) -> (auc, var, var of diff)
        for (f,) in self._files.values():
            f.flush()
        threads = self.threads_used = ranking_threads(threads, int(self.n_labelled.max(initial=0)))
        with contextlib.ExitStack() as stack:
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=threads)) if threads > 1 else None

            def run(fn: Callable[[int], Any], items: Sequence[int]) -> list[Any]:
                """`fn` over `items` in order, on the pool's threads (an error is raised here)."""
                return list(pool.map(fn, items)) if pool is not None else [fn(i) for i in items]

            for task in self.tasks:
                if task.name not in self._files or not self.auc_finite[task.name][0]:
                    continue
                (ref,) = run(lambda pos, task=task.name: twice_placements(*self._scores(task, pos)), [0])
                auc[(0, task.name)] = (ref.auc, twice_variance(ref), 0.0)
                same, finite = self.auc_same[task.name], self.auc_finite[task.name]
                for pos in range(1, self.n_sets):
                    if same[pos]:  # bitwise the reference's scores (a variant that leaves this task alone)
                        auc[(pos, task.name)] = (*auc[(0, task.name)][:2], 0.0)

                def rank(pos: int, task: str = task.name, ref: TwicePlacements = ref) -> None:
                    other = twice_placements(*self._scores(task, pos))
                    auc[(pos, task)] = (other.auc, twice_variance(other), twice_variance(other, ref))

                run(rank, [p for p in range(1, self.n_sets) if finite[p] and not same[p]])
                del ref
        release_free_memory()  # the rankings' freed arrays: back to the OS before the next stage
        return StreamedEvaluation(self, auc)

    def close(self) -> None:
        for files in self._files.values():
            for f in files:
                f.close()
        self._files = {}
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> EvaluationStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StreamedEvaluation:
    """`Evaluation`'s queries (value, interval, compare, n_labelled, positive_rate) answered from a stream.

    `compare(key, ref)` needs one of the two to be the reference set (position 0).
    """

    intervals = "analytic"
    n_boot = 0

    def __init__(
        self, stream: EvaluationStream, auc: Mapping[tuple[int, str], tuple[float, float, float]]
    ) -> None:
        self.tasks = stream.tasks
        self.ci = stream.ci
        self.n_rows = stream.n_rows
        self._pos = dict(stream.positions)
        self.reference = next(k for k, i in self._pos.items() if i == 0)
        self._n = {t.name: int(stream.n_labelled[j]) for j, t in enumerate(self.tasks)}
        self._rate = {
            t.name: (
                float(stream.positives[j] / stream.n_labelled[j])
                if t.kind == "binary" and stream.n_labelled[j]
                else math.nan
            )
            for j, t in enumerate(self.tasks)
        }
        self._auc = dict(auc)
        self._single = {key: (m.n, m.mean.copy(), m.variance_of_mean()) for key, m in stream.single.items()}
        self._paired = {key: m.variance_of_mean() for key, m in stream.paired.items()}

    @property
    def keys(self) -> tuple[Hashable, ...]:
        """Every key that names a prediction set (identical variants included)."""
        return tuple(self._pos)

    def metrics(self, task: str) -> tuple[str, ...]:
        return TASK_METRICS[self._task(task).kind]

    def n_labelled(self, task: str) -> int:
        return self._n[task]

    def positive_rate(self, task: str) -> float:
        return self._rate[task]

    def value(self, key: Hashable, task: str, metric: str) -> float:
        pos = self._pos.get(key)
        if pos is None or not self._n.get(task):
            return math.nan
        if metric == "auc":
            return self._auc.get((pos, task), (math.nan,))[0]
        single = self._single.get((task, metric))
        return float(single[1][pos]) if single is not None else math.nan

    def interval(self, key: Hashable, task: str, metric: str) -> tuple[float, float]:
        """DeLong interval of an AUC (clipped to [0, 1]) or CLT interval of a loss mean (clipped at 0); NaN where
        undefined."""
        pos = self._pos.get(key)
        point = self.value(key, task, metric)
        if pos is None or not math.isfinite(point):
            return math.nan, math.nan
        if metric == "auc":
            lo, hi = wald_interval(point, self._auc[(pos, task)][1], self.ci)
            return (max(lo, 0.0), min(hi, 1.0)) if math.isfinite(lo) else (lo, hi)
        return loss_interval(*wald_interval(point, float(self._single[(task, metric)][2][pos]), self.ci))

    def compare(self, key: Hashable, ref: Hashable, task: str, metric: str) -> tuple[float, float, float]:
        """Paired difference `key - ref` on the same rows: (point, lo, hi); one of them must be the reference."""
        delta = self.value(key, task, metric) - self.value(ref, task, metric)
        if self._pos.get(ref) == 0:
            other = self._pos.get(key)
        elif self._pos.get(key) == 0:
            other = self._pos.get(ref)
        else:
            raise ValueError(f"streamed evaluation pairs sets with the reference {self.reference!r} only")
        if other is None or not math.isfinite(delta):
            return delta, math.nan, math.nan
        var = self._auc[(other, task)][2] if metric == "auc" else float(self._paired[(task, metric)][other])
        lo, hi = wald_interval(delta, var, self.ci)
        return delta, lo, hi

    def _task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)
