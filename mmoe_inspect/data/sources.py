"""Evaluation data sources: a DataFrame, or a parquet/CSV file streamed in record batches.

Files are never read whole: parquet is read row group by row group (`ParquetFile.iter_batches`), CSV
with pyarrow's streaming reader, so memory stays bounded by the batch size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


class DataError(ValueError):
    """The evaluation data cannot be used as given (missing file or columns, empty, NaN features)."""


@dataclass
class TableSource:
    """Rows to inspect: an in-memory frame or a parquet/CSV path. `iter_frames` yields pandas chunks."""

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
            raise DataError(f"data file {path} does not exist")
        if path.is_dir() or path.suffix.lower() not in {".parquet", ".pq", ".csv"}:
            raise DataError(f"data file {path} must be .parquet or .csv")
        return cls(path=path)

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else "in-memory DataFrame"

    def columns(self) -> list[str]:
        if self.frame is not None:
            return [str(c) for c in self.frame.columns]
        assert self.path is not None
        if self._is_parquet:
            import pyarrow.parquet as pq

            try:
                return list(pq.ParquetFile(self.path).schema_arrow.names)
            except Exception as exc:
                raise DataError(f"{self.path} is not a readable parquet file ({_first_line(exc)})") from None
        try:
            return list(pd.read_csv(self.path, nrows=0).columns)
        except pd.errors.EmptyDataError:
            raise DataError(f"{self.path} is empty") from None

    def n_rows(self) -> int | None:
        if self.frame is not None:
            return len(self.frame)
        if self._is_parquet:
            import pyarrow.parquet as pq

            return pq.ParquetFile(self.path).metadata.num_rows
        return None

    @property
    def _is_parquet(self) -> bool:
        return self.path is not None and self.path.suffix.lower() in {".parquet", ".pq"}

    def iter_frames(
        self, batch_size: int, columns: Sequence[str] | None = None, max_rows: int | None = None
    ) -> Iterator[pd.DataFrame]:
        """Yield consecutive chunks of at most `batch_size` rows (only `columns` when given)."""
        produced = 0
        for chunk in self._chunks(batch_size, columns):
            if max_rows is not None:
                if produced >= max_rows:
                    return
                chunk = chunk.iloc[: max_rows - produced]
            produced += len(chunk)
            if len(chunk):
                yield chunk
        if produced == 0:
            raise DataError(f"{self.name} has no rows")

    def _chunks(self, batch_size: int, columns: Sequence[str] | None) -> Iterator[pd.DataFrame]:
        cols = list(columns) if columns is not None else None
        if self.frame is not None:
            frame = self.frame if cols is None else self.frame[cols]
            for start in range(0, len(frame), batch_size):
                yield frame.iloc[start : start + batch_size]
            return
        assert self.path is not None
        if self._is_parquet:
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(self.path)
            for rb in pf.iter_batches(batch_size=batch_size, columns=cols):
                yield rb.to_pandas()
            return
        import pyarrow.csv as pcsv

        try:
            reader = pcsv.open_csv(
                self.path,
                read_options=pcsv.ReadOptions(block_size=1 << 22),
                convert_options=pcsv.ConvertOptions(include_columns=cols) if cols else None,
            )
        except Exception as exc:
            raise DataError(f"{self.path} is not a readable CSV file ({_first_line(exc)})") from None
        buf: list[pd.DataFrame] = []
        size = 0
        for rb in reader:
            df = rb.to_pandas()
            buf.append(df)
            size += len(df)
            while size >= batch_size:
                whole = pd.concat(buf, ignore_index=True)
                yield whole.iloc[:batch_size]
                rest = whole.iloc[batch_size:]
                buf, size = [rest], len(rest)
        if size:
            yield pd.concat(buf, ignore_index=True)


def require_columns(source: TableSource, needed: Sequence[str], what: str = "feature") -> None:
    """Fail with one line naming the missing columns and what the file has instead."""
    have = set(source.columns())
    missing = [c for c in needed if c not in have]
    if missing:
        shown = ", ".join(sorted(have)[:12]) + (" ..." if len(have) > 12 else "")
        raise DataError(
            f"{source.name} lacks {what} column(s) {missing}; it has: {shown}. Rename the columns or "
            "pass the right --labels/feature names."
        )


def check_finite(frame: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    """Fail with one line when a feature column holds NaN/inf (labels may be missing; features may not)."""
    for c in columns:
        values = frame[c].to_numpy()
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            raise DataError(
                f"feature column {c!r} of {source} has {bad} NaN/inf value(s) in rows "
                f"{frame.index[0]}..{frame.index[-1]}; fill or drop them before inspecting"
            )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
