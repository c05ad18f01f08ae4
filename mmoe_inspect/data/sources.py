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

This module holds `TableSource` and its file readers; the errors (`data.errors`), column checks
(`data.columns`), row selection (`data.sharding`) and read-ahead thread (`data.read_ahead`) live in
their own modules and are re-exported here.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mmoe_inspect.data.columns import (
    F32_MAX,
    check_features,
    check_finite,
    check_numeric,
    closest,
    column_kinds,
    leading_columns,
    require_columns,
)
from mmoe_inspect.data.errors import (
    DataError,
    DataFileError,
    EmptyDataError,
    IdRangeError,
    LabelValueError,
    MissingColumnError,
    NonFiniteError,
    NonNumericError,
    ValueRangeError,
)
from mmoe_inspect.data.read_ahead import ReadAhead, read_ahead_chunks
from mmoe_inspect.data.sharding import RowShard, sample_mask, shard_rows
from mmoe_inspect.errors import first_line

# Names that moved to `data.errors`, `data.columns`, `data.sharding` and `data.read_ahead`, re-exported
# here so that every `from mmoe_inspect.data.sources import ...` keeps working.
__all__ = [
    "CSV_BLOCK_BYTES",
    "F32_MAX",
    "PARQUET_SUFFIXES",
    "DataError",
    "DataFileError",
    "EmptyDataError",
    "IdRangeError",
    "LabelValueError",
    "MissingColumnError",
    "NonFiniteError",
    "NonNumericError",
    "ReadAhead",
    "RowShard",
    "TableSource",
    "ValueRangeError",
    "check_features",
    "check_finite",
    "check_numeric",
    "closest",
    "column_kinds",
    "leading_columns",
    "require_columns",
    "sample_mask",
    "shard_rows",
]

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_BLOCK_BYTES = 1 << 22  # pyarrow reads CSV in blocks of this size and types columns from the first


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
            repeated = data.columns[data.columns.duplicated()].unique().tolist()
            if repeated:  # frame[name] is then a frame, not a column: it crashed deep in the pass
                raise DataFileError(
                    f"the DataFrame has duplicate column name(s) {repeated[:5]}{' ...' if len(repeated) > 5 else ''}; "
                    "a column must be named once: rename or drop the copies"
                )
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
        if not path.is_file():  # a FIFO or a device: it was called "empty (0 bytes)"
            raise DataFileError(
                f"data file {path} is not a regular file (a FIFO, socket or device); pass the file"
            )
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
        """Column names (for a folder: those any file has, in the order they first appear; a column some
        files lack reads as NaN in their rows, see `partial_columns`)."""
        if self.frame is not None:
            return [str(c) for c in self.frame.columns]
        assert self.path is not None
        if self._is_dir or self._is_parquet:
            names: dict[str, None] = {}
            for f in self._files():
                names.update(dict.fromkeys(_parquet_file(f).schema_arrow.names))
            return list(names)
        try:
            names = list(pd.read_csv(self.path, nrows=0).columns)
            if len(names) > 1:  # pandas renames a repeated header ("click", "click.1"): one would be ignored
                raw = [
                    c
                    for c in pd.read_csv(self.path, header=None, nrows=1, dtype=str).iloc[0]
                    if isinstance(c, str)
                ]
                dups = sorted({c for c in raw if raw.count(c) > 1})
                if dups:
                    raise DataFileError(
                        f"{self.path} has duplicate column names {dups}; rename them so that each column has "
                        "its own name"
                    )
            return names
        except pd.errors.EmptyDataError:
            raise EmptyDataError(f"{self.path} is empty") from None
        except (UnicodeDecodeError, pd.errors.ParserError) as exc:
            raise DataFileError(f"{self.path} is not a readable CSV file ({first_line(exc)})") from None

    def partial_columns(self) -> dict[str, Path]:
        """`{column: first file lacking it}` for the columns of a parquet folder that only some files have
        (empty for one file or a frame). Such a column reads as NaN in the rows of the files that lack it:
        right for a label (labels may be partial), refused for a feature by `require_columns`."""
        if not self._is_dir:
            return {}
        files = self._files()
        have = [set(_parquet_file(f).schema_arrow.names) for f in files]
        every = set.intersection(*have) if have else set()
        out: dict[str, Path] = {}
        for c in self.columns():
            if c not in every:
                out[c] = next(f for f, h in zip(files, have, strict=True) if c not in h)
        return out

    def n_rows(self) -> int | None:
        """Rows in the source (None for CSV: unknown without reading it)."""
        if self.frame is not None:
            return len(self.frame)
        if self._is_dir or self._is_parquet:
            return sum(_parquet_file(f).metadata.num_rows for f in self._files())
        return None

    def take_rows(
        self, positions: Sequence[int], columns: Sequence[str] | None = None
    ) -> pd.DataFrame | None:
        """The rows at the sorted global row `positions` (index = those positions), `columns` only; None for
        a CSV file (its rows can only be streamed: use `iter_frames`).

        Parquet decodes only the row groups that hold a wanted row, and converts only the wanted rows to
        pandas: a sample of a few hundred rows of a large file costs a fraction of streaming it.
        """
        import numpy as np

        pos = np.asarray(positions, dtype=np.int64)
        cols = list(columns) if columns is not None else None
        if self.frame is not None:
            frame = self.frame if cols is None else self.frame[cols]
            out = frame.iloc[pos]
            out.index = pd.Index(pos)
            return out
        if not (self._is_dir or self._is_parquet):
            return None
        parts: list[pd.DataFrame] = []
        for f, pf, group, lo, hi in self._row_groups(cols):
            inside = pos[(pos >= lo) & (pos < hi)]
            if not len(inside):
                continue
            try:
                table = pf.read_row_group(group, columns=_file_columns(pf, cols))
            except OSError as exc:
                raise DataFileError(f"{f} is a damaged parquet file ({first_line(exc)})") from None
            part = _filled(_frame(table.take(inside - lo), pf), cols)
            part.index = pd.Index(inside)
            parts.append(part)
        if not parts:
            return None
        return pd.concat(parts) if len(parts) > 1 else parts[0]

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
            chunks = read_ahead_chunks(chunks, batch_size, read_ahead)
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
        for f, pf, group, lo, hi in self._row_groups(cols):
            wanted = shard.ranges(lo, hi)
            if wanted:
                pos = lo
                try:
                    for rb in pf.iter_batches(
                        batch_size=batch_size, row_groups=[group], columns=_file_columns(pf, cols)
                    ):
                        end = pos + rb.num_rows
                        for s, e in shard.ranges(pos, end):
                            part = _filled(_frame(rb.slice(s - pos, e - s), pf), cols)
                            part.index = pd.RangeIndex(s, e)
                            yield part
                        pos = end
                        if end >= wanted[-1][1]:
                            break
                except OSError as exc:
                    raise DataFileError(f"{f} is a damaged parquet file ({first_line(exc)})") from None
            if shard.stop is not None and hi >= shard.stop:  # no later group holds a row of the shard
                return

    def _row_groups(self, cols: list[str] | None) -> Iterator[tuple[Path, Any, int, int, int]]:
        """Every parquet row group in order with its global row range: (file, ParquetFile, group, lo, hi)."""
        offset = 0
        for f in self._files():
            pf = _reader(f, cols)
            meta = pf.metadata
            for group in range(meta.num_row_groups):
                lo, hi = offset, offset + meta.row_group(group).num_rows
                offset = hi
                yield f, pf, group, lo, hi

    def _parquet_chunks(self, batch_size: int, cols: list[str] | None) -> Iterator[pd.DataFrame]:
        for f in self._files():
            pf = _reader(f, cols)
            try:
                for rb in pf.iter_batches(batch_size=batch_size, columns=_file_columns(pf, cols)):
                    yield _filled(_frame(rb, pf), cols)
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


def _parquet_files(folder: Path) -> list[Path]:
    """Parquet files under `folder` in sorted path order, skipping hidden and `_`-prefixed entries.

    Linked folders are followed (a partition `date=2 -> /elsewhere/date=2`: `Path.rglob` did not follow it
    and read part of the data without a word), each real folder once: the real folders are walked first, then
    the links; a link to a folder read already (a convenience `latest -> date=2` next to the partitions) is
    skipped with a warning naming it. Refused in one line naming them: a link to a folder that holds it (a
    loop), a broken link (a partition folder that is gone), and an entry named like a parquet file that is
    neither a file nor a folder (a looping link, a FIFO, a device)."""
    files: list[Path] = []
    seen = {_folder_key(folder)}
    stack, links, skipped = [folder], [], []
    while stack or links:
        if not stack:  # every real folder is read: now the linked ones not read yet
            p = links.pop(0)
            key = _folder_key(p)
            if key in {_folder_key(a) for a in p.parents if a == folder or folder in a.parents}:
                raise DataFileError(
                    f"data folder {folder} holds {p.relative_to(folder)}, a link to a folder that holds it "
                    "(a loop); remove the link"
                )
            if key in seen:
                skipped.append(str(p.relative_to(folder)))
                continue
            seen.add(key)
            stack.append(p)
            continue
        here = stack.pop()
        try:
            entries = sorted(here.iterdir())
        except OSError as exc:
            raise DataFileError(
                f"data folder {folder}: cannot list {here.relative_to(folder)} ({exc.strerror or exc})"
            ) from None
        for p in entries:
            rel = p.relative_to(folder)
            if p.name.startswith((".", "_")):
                continue
            if p.is_symlink() and not p.exists() and p.suffix.lower() not in PARQUET_SUFFIXES:
                raise DataFileError(
                    f"data folder {folder} holds {rel}, a broken link (to {p.readlink()}); fix the link or "
                    "remove it"
                )
            if p.is_dir():
                if p.is_symlink():
                    links.append(p)
                    continue
                key = _folder_key(p)  # a real folder: reached once (a bind mount aside)
                if key in seen:
                    skipped.append(str(rel))
                    continue
                seen.add(key)
                stack.append(p)
            elif p.suffix.lower() in PARQUET_SUFFIXES:
                if not p.is_file():
                    raise DataFileError(
                        f"data folder {folder} holds {rel}, which is not a readable file (a broken link, FIFO "
                        "or device); fix the link or remove it"
                    )
                files.append(p)
    if skipped:
        warnings.warn(
            f"data folder {folder}: skipped {', '.join(sorted(skipped))}: a link to a folder read already "
            "(its files are read once)",
            stacklevel=2,
        )
    return sorted(files)


def _folder_key(path: Path) -> tuple[int, int]:
    """(device, inode) of the folder `path` names, links followed: the same folder by any path."""
    st = path.stat()
    return st.st_dev, st.st_ino


def _reader(path: Path, cols: list[str] | None):
    """`_parquet_file(path)` for reading `cols`; its text columns are decoded as dictionaries (one copy per
    distinct value, not per row) and turned back into plain text by `_frame`, each value capped at
    `LABEL_CHARS` (`short_label`): six distinct 1 MB values on 1,000 rows took 2.3 GB before."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = _parquet_file(path)
    wanted = None if cols is None else set(cols)
    text = [
        f.name
        for f in pf.schema_arrow
        if (wanted is None or f.name in wanted)
        and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))
    ]
    if not text:
        return pf
    try:
        pf = pq.ParquetFile(path, pre_buffer=False, read_dictionary=text)
    except Exception as exc:
        raise DataFileError(f"{path} is not a readable parquet file ({first_line(exc)})") from None
    pf.mmoe_text_columns = frozenset(text)  # read as dictionaries here; `_frame` makes them plain text again
    return pf


def _plain_text(data: Any, names: frozenset[str]) -> Any:
    """`data` (a pyarrow table or record batch) with its dictionary-read text columns `names` back as plain
    text, each distinct value longer than `LABEL_CHARS` shortened (`short_label`) before it is decoded."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from mmoe_inspect._text import LABEL_CHARS, short_label

    def plain(arr: Any) -> Any:
        values = arr.dictionary
        if len(values) and pc.max(pc.utf8_length(values)).as_py() > LABEL_CHARS:
            short = [v if v is None or len(v) <= LABEL_CHARS else short_label(v) for v in values.to_pylist()]
            arr = pa.DictionaryArray.from_arrays(arr.indices, pa.array(short, type=values.type))
        return arr.cast(values.type)

    meta = data.schema.metadata
    for i, field in enumerate(data.schema):
        if field.name in names and pa.types.is_dictionary(field.type):
            col = data.column(i)
            col = (
                pa.chunked_array([plain(c) for c in col.chunks], field.type.value_type)
                if isinstance(col, pa.ChunkedArray)
                else plain(col)
            )
            data = data.set_column(i, pa.field(field.name, field.type.value_type, field.nullable), col)
    return data.replace_schema_metadata(meta)  # pandas' metadata (a column stored as the index)


def _frame(data: Any, pf: Any = None) -> pd.DataFrame:
    """A pyarrow table or record batch as a DataFrame whose columns are the file's columns: a column that
    pandas stored as its index (`df.set_index("user_id").to_parquet(...)`) stays a column. `pf`: the
    `_reader` it came from (its text columns read as dictionaries become plain, capped text)."""
    names = getattr(pf, "mmoe_text_columns", None)
    if names:
        data = _plain_text(data, names)
    frame = data.to_pandas()
    stored = set(data.schema.names)  # an index kept only in the pandas metadata (a RangeIndex) is no column
    levels = [name for name in frame.index.names if name is not None and name in stored]
    if levels:
        frame = frame.reset_index(level=levels)
    return frame


def _parquet_file(path: Path):
    import pyarrow.parquet as pq

    try:
        # pre_buffer=False: with pyarrow's default read-ahead, iter_batches keeps the whole file's column
        # chunks alive and peak memory grows with the file (the measurement: bench/results/small_ops.md)
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


def _file_columns(pf, cols: list[str] | None) -> list[str] | None:
    """The columns of `cols` that the parquet file `pf` has (all of `cols` in the common case)."""
    if cols is None:
        return None
    names = set(pf.schema_arrow.names)
    return cols if all(c in names for c in cols) else [c for c in cols if c in names]


def _filled(frame: pd.DataFrame, cols: list[str] | None) -> pd.DataFrame:
    """`frame` with the columns of `cols` it lacks added as NaN (float64), in `cols` order: the rows of a
    folder's file that lacks a column another file has (a partial label column)."""
    if cols is None or len(frame.columns) == len(cols):
        return frame
    return frame.reindex(columns=cols)


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
