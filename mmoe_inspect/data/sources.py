"""Evaluation data sources: a DataFrame, a parquet/CSV file, or a folder of parquet files, streamed.

Files are never read whole: parquet is read row group by row group (`ParquetFile.iter_batches`), CSV
with pyarrow's streaming reader, a folder file by file in sorted path order, so memory stays bounded
by the batch size. Chunks carry their global row positions as index. `sample=f` keeps each row with
probability `f` from a hash of its position and the seed: the same rows whatever the batch size.

Two options bound and split the reading (see `iter_frames`): `read_ahead=ReadAhead(rows)` decodes chunks
in a background thread while the caller works on the previous ones, holding at most `rows` decoded rows
ahead of the caller (measured: `ReadAhead.peak`); `shard=RowShard(...)` reads only one process's rows
of a distributed run (disjoint blocks of row positions; `shard_rows` builds them so that every row
is read by exactly one rank, also under `sample` and `max_rows`).
"""

from __future__ import annotations

import difflib
import queue
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mmoe_inspect.errors import MmoeInspectError, first_line

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_BLOCK_BYTES = 1 << 22  # pyarrow reads CSV in blocks of this size and types columns from the first
F32_MAX = float(np.finfo(np.float32).max)  # larger finite float64 features would become inf as model input
_SCAN_ROWS = 1 << 20  # row positions hashed at a time when looking for where `max_rows` sampled rows end


class DataError(MmoeInspectError, ValueError):
    """The evaluation data cannot be used as given (missing file or columns, empty, NaN features)."""


class DataFileError(DataError):
    """The data path is missing, of an unsupported kind, or not a readable parquet/CSV file."""


class EmptyDataError(DataError):
    """The data holds no rows (an empty file, a header-only CSV, a zero-row parquet file)."""


class MissingColumnError(DataError):
    """Columns the model (or `--labels`/`--features`) needs are not in the data; `.missing` lists them."""

    def __init__(self, message: str, missing: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.missing = tuple(missing)


class NonNumericError(DataError):
    """A feature or label column holds text (or other non-numeric values)."""


class NonFiniteError(DataError):
    """A feature column holds NaN or inf (labels may be missing; features may not)."""


class ValueRangeError(DataError):
    """A feature column holds finite values the model's input dtype (float32) cannot hold."""


class LabelValueError(DataError):
    """A binary task's label column holds values other than 0 and 1 (NaN = missing is allowed)."""


class IdRangeError(DataError):
    """A categorical id column holds ids outside the model's embedding table (or non-integer ids)."""


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


@dataclass
class ReadAhead:
    """Decode chunks in a background thread, at most `rows` decoded rows ahead of the consumer.

    The thread overlaps file reading and decoding (pyarrow releases the GIL) with the caller's
    forward passes. `rows` bounds the rows decoded and not yet handed out; it is raised to one
    chunk if smaller (a chunk is the unit of decoding). `peak` is the measured high-water mark of
    those rows (set while iterating; compare it with `rows`).
    """

    rows: int
    peak: int = 0

    def __post_init__(self) -> None:
        if self.rows < 1:
            raise ValueError(f"read-ahead must be at least one row, got {self.rows}")


@dataclass
class TableSource:
    """Rows to inspect: an in-memory frame, a parquet/CSV path or a folder of parquet files.

    `iter_frames` yields pandas chunks whose index is the global row position.
    """

    frame: pd.DataFrame | None = None
    path: Path | None = None

    @classmethod
    def of(cls, data: pd.DataFrame | str | Path | TableSource) -> TableSource:
        if isinstance(data, TableSource):
            return data
        if isinstance(data, pd.DataFrame):
            return cls(frame=data)
        path = Path(data)
        if not path.exists():
            raise DataFileError(f"data file {path} does not exist")
        if path.is_dir():
            if not _parquet_files(path):
                raise DataFileError(
                    f"data folder {path} holds no .parquet files (data must be .parquet or .csv files, "
                    "or a folder of .parquet files)"
                )
            return cls(path=path)
        if path.suffix.lower() not in {*PARQUET_SUFFIXES, ".csv"}:
            raise DataFileError(
                f"data file {path} must be .parquet or .csv (or a folder of .parquet files), "
                f"not {path.suffix or 'a file without suffix'}"
            )
        if path.stat().st_size == 0:
            raise EmptyDataError(f"data file {path} is empty (0 bytes)")
        if path.suffix.lower() == ".csv":
            from mmoe_inspect.data._csv_sniff import sniff_csv

            sniff_csv(path, CSV_BLOCK_BYTES)
        return cls(path=path)

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else "in-memory DataFrame"

    @property
    def _is_dir(self) -> bool:
        return self.path is not None and self.path.is_dir()

    @property
    def _is_parquet(self) -> bool:
        return self.path is not None and self.path.suffix.lower() in PARQUET_SUFFIXES

    def _files(self) -> list[Path]:
        assert self.path is not None
        return _parquet_files(self.path) if self._is_dir else [self.path]

    def columns(self) -> list[str]:
        """Column names (for a folder: those every file has, in the first file's order)."""
        if self.frame is not None:
            return [str(c) for c in self.frame.columns]
        assert self.path is not None
        if self._is_dir or self._is_parquet:
            names: list[str] | None = None
            for f in self._files():
                have = _parquet_file(f).schema_arrow.names
                names = list(have) if names is None else [n for n in names if n in set(have)]
            return names or []
        try:
            return list(pd.read_csv(self.path, nrows=0).columns)
        except pd.errors.EmptyDataError:
            raise EmptyDataError(f"{self.path} is empty") from None
        except (UnicodeDecodeError, pd.errors.ParserError) as exc:
            raise DataFileError(f"{self.path} is not a readable CSV file ({first_line(exc)})") from None

    def n_rows(self) -> int | None:
        """Rows in the source (None for CSV: unknown without reading it)."""
        if self.frame is not None:
            return len(self.frame)
        if self._is_dir or self._is_parquet:
            return sum(_parquet_file(f).metadata.num_rows for f in self._files())
        return None

    def iter_frames(
        self,
        batch_size: int,
        columns: Sequence[str] | None = None,
        max_rows: int | None = None,
        *,
        sample: float | None = None,
        seed: int = 0,
        shard: RowShard | None = None,
        read_ahead: ReadAhead | None = None,
    ) -> Iterator[pd.DataFrame]:
        """Yield consecutive chunks of at most `batch_size` rows (only `columns` when given).

        `sample` in (0, 1] keeps a deterministic pseudo-random share of the rows (chunks are refilled
        to `batch_size`); `max_rows` caps the rows yielded (after sampling). `shard` reads only that
        rank's rows (build it with `shard_rows`, which turns `max_rows` into its stop position; a
        shard may hold no rows, which is not an error here). `read_ahead` decodes in a background
        thread, bounded (see `ReadAhead`).
        """
        if sample is not None and not 0.0 < sample <= 1.0:
            raise DataError(f"sample must be a fraction in (0, 1], got {sample}")
        chunks = (
            self._chunks(batch_size, columns)
            if shard is None
            else self._shard_chunks(batch_size, columns, shard)
        )
        if read_ahead is not None:
            chunks = _read_ahead(chunks, batch_size, read_ahead)
        if sample is not None and sample < 1.0:
            chunks = _rebatch((c[sample_mask(c.index.to_numpy(), sample, seed)] for c in chunks), batch_size)
        elif shard is not None:
            chunks = _rebatch(chunks, batch_size)
        produced = 0
        for chunk in chunks:
            if max_rows is not None:
                if produced >= max_rows:
                    return
                chunk = chunk.iloc[: max_rows - produced]
            produced += len(chunk)
            if len(chunk):
                yield chunk
        if produced == 0 and shard is None:
            raise EmptyDataError(f"{self.name} has no rows" + (" left after sampling" if sample else ""))

    def _chunks(self, batch_size: int, columns: Sequence[str] | None) -> Iterator[pd.DataFrame]:
        cols = list(columns) if columns is not None else None
        offset = 0
        if self.frame is not None:
            frame = self.frame if cols is None else self.frame[cols]
            for start in range(0, len(frame), batch_size):
                chunk = frame.iloc[start : start + batch_size]
                chunk.index = pd.RangeIndex(start, start + len(chunk))
                yield chunk
            return
        assert self.path is not None
        raw = (
            self._parquet_chunks(batch_size, cols)
            if self._is_dir or self._is_parquet
            else self._csv_chunks(batch_size, cols)
        )
        for chunk in raw:
            chunk.index = pd.RangeIndex(offset, offset + len(chunk))
            offset += len(chunk)
            yield chunk

    def _shard_chunks(
        self, batch_size: int, cols: list[str] | None, shard: RowShard
    ) -> Iterator[pd.DataFrame]:
        """The chunks of `shard`'s rows (index = global row positions); parquet skips row groups it lacks."""
        if self.frame is not None:
            frame = self.frame if cols is None else self.frame[cols]
            for s, e in shard.ranges(0, len(frame)):
                for start in range(s, e, batch_size):
                    chunk = frame.iloc[start : min(e, start + batch_size)]
                    chunk.index = pd.RangeIndex(start, start + len(chunk))
                    yield chunk
            return
        assert self.path is not None
        if not (self._is_dir or self._is_parquet):
            offset = 0
            for chunk in self._csv_chunks(batch_size, cols):
                n = len(chunk)
                for s, e in shard.ranges(offset, offset + n):
                    part = chunk.iloc[s - offset : e - offset]
                    part.index = pd.RangeIndex(s, e)
                    yield part
                offset += n
                if shard.stop is not None and offset >= shard.stop:
                    return
            return
        offset = 0
        for f in self._files():
            pf = _parquet_file(f)
            _check_file_columns(f, pf, cols)
            meta = pf.metadata
            for group in range(meta.num_row_groups):
                lo, hi = offset, offset + meta.row_group(group).num_rows
                offset = hi
                wanted = shard.ranges(lo, hi)
                if not wanted:
                    continue
                pos = lo
                try:
                    for rb in pf.iter_batches(batch_size=batch_size, row_groups=[group], columns=cols):
                        end = pos + rb.num_rows
                        for s, e in shard.ranges(pos, end):
                            part = rb.slice(s - pos, e - s).to_pandas()
                            part.index = pd.RangeIndex(s, e)
                            yield part
                        pos = end
                        if end >= wanted[-1][1]:
                            break
                except OSError as exc:
                    raise DataFileError(f"{f} is a damaged parquet file ({first_line(exc)})") from None
            if shard.stop is not None and offset >= shard.stop:
                return

    def _parquet_chunks(self, batch_size: int, cols: list[str] | None) -> Iterator[pd.DataFrame]:
        for f in self._files():
            pf = _parquet_file(f)
            _check_file_columns(f, pf, cols)
            try:
                for rb in pf.iter_batches(batch_size=batch_size, columns=cols):
                    yield rb.to_pandas()
            except OSError as exc:
                raise DataFileError(f"{f} is a damaged parquet file ({first_line(exc)})") from None

    def _csv_chunks(self, batch_size: int, cols: list[str] | None) -> Iterator[pd.DataFrame]:
        import pyarrow as pa
        import pyarrow.csv as pcsv

        assert self.path is not None
        try:
            reader = pcsv.open_csv(
                self.path,
                read_options=pcsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                convert_options=pcsv.ConvertOptions(include_columns=cols) if cols else None,
            )
        except pa.ArrowInvalid as exc:
            if "Empty CSV file" in str(exc):
                raise EmptyDataError(f"{self.path} is empty") from None
            raise DataFileError(f"{self.path} is not a readable CSV file ({first_line(exc)})") from None
        buf: list[pd.DataFrame] = []
        size = 0
        while True:
            try:
                rb = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as exc:
                raise _csv_value_error(self.path, reader.schema.names, exc) from None
            buf.append(rb.to_pandas())
            size += len(buf[-1])
            while size >= batch_size:
                whole = pd.concat(buf, ignore_index=True)
                yield whole.iloc[:batch_size]
                rest = whole.iloc[batch_size:]
                buf, size = [rest], len(rest)
        if size:
            yield pd.concat(buf, ignore_index=True)


def sample_mask(rows: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Bool mask `[n]`: keep row positions `rows` `[n]` with probability `fraction` (splitmix64 hash)."""
    with np.errstate(over="ignore"):
        z = rows.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53 < fraction


def closest(name: str, candidates: Sequence[str]) -> str:
    """The suffix ` (did you mean 'x'?)` naming the candidates closest to `name` (difflib), or ""."""
    near = difflib.get_close_matches(name, [str(c) for c in candidates], n=2, cutoff=0.6)
    if not near:
        lowered = {str(c).lower(): str(c) for c in candidates}
        near = [lowered[name.lower()]] if name.lower() in lowered else []
    return f" (did you mean {' or '.join(repr(n) for n in near)}?)" if near else ""


def require_columns(source: TableSource, needed: Sequence[str], what: str = "feature") -> None:
    """Fail with one line naming the missing columns, the closest existing names and what the file has."""
    names = source.columns()
    have = set(names)
    missing = [c for c in needed if c not in have]
    if missing:
        hints = "".join(f"; {c!r}{closest(c, names)}" for c in missing if closest(c, names))
        shown = ", ".join(sorted(have)[:12]) + (" ..." if len(have) > 12 else "")
        raise MissingColumnError(
            f"{source.name} lacks {what} column(s) {missing}{hints}; it has: {shown or 'no columns'}. "
            "Rename the columns or pass the right --labels/--features names.",
            missing,
        )


def column_kinds(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """The numpy kind letter of each of `columns` ("f" float, "i"/"u"/"b" integer/bool; "O" for the rest).

    One look at the frame's distinct dtypes in the common case (a few µs), not one per column
    (`frame.dtypes[c]` costs ~3 µs a column: 0.3 ms a batch on 100 features).
    """
    dtypes = frame.dtypes.tolist()
    distinct = {getattr(d, "kind", "O") for d in set(dtypes)}
    if len(distinct) == 1:
        return [distinct.pop()] * len(columns)
    kind = {c: getattr(d, "kind", "O") for c, d in zip(frame.columns, dtypes, strict=True)}
    return [kind.get(c, "O") for c in columns]


def leading_columns(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """`frame[columns]`, without copying the data when `columns` are the frame's first columns in order
    (as `inspect()` reads them: features, then labels); a copy otherwise (pandas' column take)."""
    names = list(columns)
    n = len(names)
    if frame.shape[1] >= n and frame.columns[:n].tolist() == names:
        return frame if frame.shape[1] == n else frame.iloc[:, :n]
    return frame[names]


def check_numeric(frame: pd.DataFrame, columns: Sequence[str], source: str, what: str = "feature") -> None:
    """Fail with one line when a column holds text or other non-numeric values (list cells are allowed)."""
    kinds = column_kinds(frame, columns)
    suspects = [c for c, k in zip(columns, kinds, strict=True) if k not in "biuf"]  # fast path: all numeric
    for c in suspects:
        s = frame[c]
        if isinstance(s.dtype, pd.CategoricalDtype) or s.dtype.kind in "biuf":
            continue
        if s.dtype.kind == "O" and len(s):
            first = s.iloc[0]
            if isinstance(first, (list, tuple, np.ndarray)):
                continue  # a sequence feature: one list of ids per row
        bad = s[pd.to_numeric(s, errors="coerce").isna() & s.notna()]
        example = f" such as {bad.iloc[0]!r} in row {bad.index[0]}" if len(bad) else ""
        raise NonNumericError(
            f"{what} column {c!r} of {source} is not numeric (dtype {s.dtype}){example}; "
            "encode it as numbers (ids for categorical features) before inspecting"
        )


def check_finite(frame: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    """Fail with one line when a feature column holds NaN/inf (labels may be missing; features may not),
    or finite float64 values beyond float32's range (the model reads float32: they would become inf)."""
    floats = [c for c, k in zip(columns, column_kinds(frame, columns), strict=True) if k == "f"]
    if not floats:
        return
    # one vectorized pass in the common case (over a view of the frame's block when the features lead it);
    # for float64, |x| <= float32 max is false for NaN too, so one comparison checks both
    values = leading_columns(frame, floats).to_numpy()
    if values.dtype.itemsize <= 4:
        if np.isfinite(values).all():
            return
    elif (np.abs(values) <= F32_MAX).all():
        return
    for c in floats:
        values = frame[c].to_numpy()
        if values.dtype.kind != "f":
            continue
        span = f"rows {frame.index[0]}..{frame.index[-1]}"
        bad = ~np.isfinite(values)
        if bad.any():
            raise NonFiniteError(
                f"feature column {c!r} of {source} has {int(bad.sum())} NaN/inf value(s) in {span} "
                f"(first at row {frame.index[int(np.argmax(bad))]}); fill or drop them before inspecting"
            )
        if values.dtype.itemsize > 4:
            big = np.abs(values) > F32_MAX
            if big.any():
                i = int(np.argmax(big))
                raise ValueRangeError(
                    f"feature column {c!r} of {source} has {int(big.sum())} value(s) beyond float32's range "
                    f"(|x| > {F32_MAX:.3g}) in {span} (first at row {frame.index[i]}: {values[i]:.3g}); the "
                    "model reads float32, where they would become inf: rescale or clip the column before "
                    "inspecting"
                )


def check_features(frame: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    """Feature columns must be numeric and finite."""
    check_numeric(frame, columns, source)
    check_finite(frame, columns, source)


def _parquet_files(folder: Path) -> list[Path]:
    """Parquet files under `folder` in sorted path order, skipping hidden and `_`-prefixed entries."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in PARQUET_SUFFIXES
        and not any(part.startswith((".", "_")) for part in p.relative_to(folder).parts)
    )


def _parquet_file(path: Path):
    import pyarrow.parquet as pq

    try:
        # pre_buffer=False: with pyarrow's default read-ahead, iter_batches keeps the whole file's column
        # chunks alive and peak memory grows with the file (measured 1.8x from 1M to 4M rows)
        pf = pq.ParquetFile(path, pre_buffer=False)
    except Exception as exc:
        raise DataFileError(f"{path} is not a readable parquet file ({first_line(exc)})") from None
    names = pf.schema_arrow.names
    if len(set(names)) < len(names):  # pandas would hand out a frame for such a column, not a series
        seen: set[str] = set()
        dupes = sorted({n for n in names if n in seen or seen.add(n)})
        raise DataFileError(
            f"{path} has duplicate column name(s) {dupes[:5]}{' ...' if len(dupes) > 5 else ''}; a column "
            "must be named once: rename or drop the copies"
        )
    return pf


def _check_file_columns(path: Path, pf, cols: list[str] | None) -> None:
    if cols is not None:
        names = set(pf.schema_arrow.names)
        lacking = [c for c in cols if c not in names]
        if lacking:
            raise MissingColumnError(f"{path} lacks column(s) {lacking} that other data files have", lacking)


_DONE = object()


def _read_ahead(chunks: Iterator[pd.DataFrame], batch_size: int, meter: ReadAhead) -> Iterator[pd.DataFrame]:
    """`chunks` (each at most `batch_size` rows), produced by a background thread that holds at most
    `max(meter.rows, batch_size)` decoded rows not yet handed out.

    The thread reserves `batch_size` rows before decoding the next chunk, so decoded-but-unconsumed
    rows never exceed the limit; `meter.peak` records the most rows held at once. An error in the
    thread is raised here; closing this generator stops the thread.
    """
    limit = max(meter.rows, batch_size)
    cond = threading.Condition()
    held = 0  # rows decoded (or being decoded: reserved) and not yet handed out
    stop = threading.Event()
    ready: queue.SimpleQueue = queue.SimpleQueue()
    meter.peak = 0

    def produce() -> None:
        nonlocal held
        try:
            while True:
                with cond:
                    while held + batch_size > limit and not stop.is_set():
                        cond.wait()
                    if stop.is_set():
                        return
                    held += batch_size
                chunk = next(chunks, _DONE)
                with cond:
                    n = 0 if chunk is _DONE else len(chunk)
                    held += n - batch_size
                    meter.peak = max(meter.peak, held)
                ready.put(chunk)
                if chunk is _DONE:
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            ready.put(exc)

    thread = threading.Thread(target=produce, name="mmoe-inspect-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            with cond:
                held -= len(item)
                cond.notify()
            yield item
    finally:
        stop.set()
        with cond:
            cond.notify()
        thread.join()
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def _rebatch(chunks: Iterator[pd.DataFrame], batch_size: int) -> Iterator[pd.DataFrame]:
    """Regroup (filtered) chunks into chunks of `batch_size` rows, keeping their index."""
    buf: list[pd.DataFrame] = []
    size = 0
    for c in chunks:
        if not len(c):
            continue
        buf.append(c)
        size += len(c)
        if size >= batch_size:
            whole = pd.concat(buf)
            for start in range(0, len(whole) - batch_size + 1, batch_size):
                yield whole.iloc[start : start + batch_size]
            rest = whole.iloc[(len(whole) // batch_size) * batch_size :]
            buf, size = [rest], len(rest)
    if size:
        yield pd.concat(buf)


def _csv_value_error(path: Path, names: Sequence[str], exc: BaseException) -> DataError:
    """A one-line error for a CSV block pyarrow cannot convert (a text value in a numeric column)."""
    text = first_line(exc)
    m = re.search(r"column #(\d+).*invalid value '([^']*)'", text)
    if m and int(m.group(1)) < len(names):
        return NonNumericError(
            f"column {names[int(m.group(1))]!r} of {path} is not numeric: it holds {m.group(2)!r} "
            "further down the file; encode it as numbers before inspecting"
        )
    return DataFileError(f"{path} is not a readable CSV file ({text})")
