"""Reading a `GateMonitor` run log (its timeline of findings: `mmoe_inspect.analysis.timeline`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mmoe_inspect.analysis.timeline import TIMELINE_COLUMNS, collapse_timeline
from mmoe_inspect.errors import MmoeInspectError

__all__ = ["TIMELINE_COLUMNS", "collapse_timeline", "fit_to_model", "read_run_log"]

LOG_MARKER = {b"mmoe-inspect": b"run-log"}  # parquet schema metadata of every run log GateMonitor writes
# the columns every GateMonitor row has (logs written before the marker are recognised by them)
MAX_FOREIGN_GATES = (
    9  # gates of a log that names none of the model's gates kept for drawing (one figure's panels)
)
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


def fit_to_model(frame: pd.DataFrame, gates: Sequence[str]) -> tuple[pd.DataFrame, str | None]:
    """A run log's rows for the model whose gates are `gates`, and a note when the log names others.

    Rows of gates the model lacks are dropped (they are another model's training, and a log of 4,000 such
    gates made the Training figures take minutes); when no logged gate is the model's, the rows of the
    first `MAX_FOREIGN_GATES` logged gates are kept and the note says the log looks like another model's.
    """
    logged = list(dict.fromkeys(str(g) for g in frame["gate"]))
    model = set(gates)
    unknown = [g for g in logged if g not in model]
    if not unknown:
        return frame, None
    shown = ", ".join(repr(g[:40]) for g in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
    names = frame["gate"].astype(str)
    if len(unknown) < len(logged):
        note = (
            f"the run log names {len(unknown):,} gate(s) the model does not have ({shown}); they are left out "
            "of the Training section"
        )
        return frame[names.isin(model)], note
    kept = unknown[:MAX_FOREIGN_GATES]
    note = (
        f"none of the run log's {len(unknown):,} gate(s) ({shown}) is a gate of this model "
        f"({', '.join(sorted(model)) or 'no gates'}): the log looks like another model's training"
        + (f"; the first {len(kept)} of them are drawn" if len(kept) < len(unknown) else "")
    )
    return frame[names.isin(set(kept))], note
