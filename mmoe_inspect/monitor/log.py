"""Reading a `GateMonitor` run log (its timeline of findings: `mmoe_inspect.analysis.timeline`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from mmoe_inspect.analysis.timeline import TIMELINE_COLUMNS, collapse_timeline
from mmoe_inspect.errors import MmoeInspectError

__all__ = ["TIMELINE_COLUMNS", "collapse_timeline", "read_run_log"]

LOG_MARKER = {b"mmoe-inspect": b"run-log"}  # parquet schema metadata of every run log GateMonitor writes
# the columns every GateMonitor row has (logs written before the marker are recognised by them)
RUN_LOG_COLUMNS = ("step", "step_start", "window_steps", "window_forwards", "window_rows", "gate", "findings")


def read_run_log(path: str | Path) -> pd.DataFrame:
    """A run log (``.jsonl`` or ``.parquet``) → one row per gate per window, in the order logged.

    JSON nulls become NaN in numeric columns; a truncated last JSONL line (a run killed mid-write) is
    skipped.
    """
    path = Path(path)
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix == ".jsonl":
        records = []
        with path.open(encoding="utf-8") as fh:
            lines = fh.read().splitlines()
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    break
                raise ValueError(f"{path}: line {i + 1} is not valid JSON") from None
        frame = pd.DataFrame.from_records(records)
    else:
        raise ValueError(f"a run log ends in .jsonl or .parquet, got {path.name!r}")
    return frame


class RunLogError(MmoeInspectError, ValueError):
    """A run log that cannot be read or drawn (missing, unreadable, empty, or lacking columns)."""


def load_run_log(path: str | Path) -> pd.DataFrame:
    """`read_run_log`, checked for what a report's Training section draws: every problem is one
    `RunLogError` line that starts with the file's name."""
    path = Path(path)
    if not path.is_file():
        raise RunLogError(f"{path}: no such file (a run log written by GateMonitor, .jsonl or .parquet)")
    try:
        frame = read_run_log(path)
        if not frame.empty:
            from mmoe_inspect.monitor._check import check_run_log

            check_run_log(frame)  # what the Training section draws, checked before the long pass
    except Exception as exc:  # bad suffix, bad JSON, unreadable parquet, columns the report cannot draw
        raise RunLogError(f"{path.name}: not a readable run log ({type(exc).__name__}: {exc})") from None
    missing = [c for c in ("step", "gate") if c not in frame.columns]
    if frame.empty or missing:
        what = "is empty" if frame.empty else f"lacks the column(s) {', '.join(missing)}"
        raise RunLogError(f"{path.name}: {what}; expected a GateMonitor run log")
    return frame


def ours(path: Path) -> bool:
    """Whether the existing file `path` is a run log GateMonitor wrote (its parquet marker, or the columns
    every row of one has; for JSON lines, the first line's keys), so a monitor may append to it. A user's
    file at that path (a data file named by a typo) is never ours."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(path)
        except Exception:
            return False
        meta = schema.metadata or {}
        return meta.get(b"mmoe-inspect") == b"run-log" or all(c in schema.names for c in RUN_LOG_COLUMNS)
    with path.open("rb") as fh:
        first = fh.readline(1 << 20)
    if not first.strip():
        return path.stat().st_size == len(first)  # an empty file: nothing to keep
    try:
        row = json.loads(first)
    except ValueError:
        return False
    return isinstance(row, dict) and all(c in row for c in RUN_LOG_COLUMNS)
