"""A cheap look at a CSV file's first bytes before any parser reads it.

pyarrow and pandas look for the end of the header line before anything else, so a file that is not
CSV text (a binary file named .csv, UTF-16 text, a file of NUL bytes) is read to its end, and
memory grows with it (a 2 GB all-NUL file: past 300 s and 2.4 GB RSS). Reading at most one parse
block (`limit` bytes, 4 MiB) makes the check O(1) in the file's size: NUL bytes, or no line end
within the block that pyarrow needs the header line to fit in, are refused in one line.
"""

from __future__ import annotations

from pathlib import Path

_FIRST = 1 << 16  # most files answer within the first 64 KiB


def sniff_csv(path: Path, limit: int) -> None:
    """Raise `DataFileError` when the first `limit` bytes of `path` cannot start a CSV text file."""
    from mmoe_inspect.data.errors import DataFileError

    with path.open("rb") as fh:
        head = fh.read(_FIRST)
        if b"\n" not in head and b"\r" not in head and b"\0" not in head:
            head += fh.read(max(0, limit - len(head)))
        more = bool(fh.read(1))
    nul = head.find(b"\0")
    if nul >= 0:
        raise DataFileError(
            f"{path} is not a CSV text file: it holds NUL bytes (first at byte {nul:,}); a binary file, or "
            "UTF-16 text? Save it as UTF-8 CSV, or pass a .parquet file"
        )
    if more and b"\n" not in head and b"\r" not in head:
        raise DataFileError(
            f"{path} is not a readable CSV file: its first {len(head):,} bytes hold no line end, so the "
            "header line is longer than a parse block; is it a CSV file?"
        )
