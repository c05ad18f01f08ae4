"""Reading a `GateMonitor` run log (its timeline of findings: `mmoe_inspect.analysis.timeline`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from mmoe_inspect.analysis.timeline import TIMELINE_COLUMNS, collapse_timeline
from mmoe_inspect.errors import MmoeInspectError

__all__ = ["TIMELINE_COLUMNS", "collapse_timeline", "read_run_log"]


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
