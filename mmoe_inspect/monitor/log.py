"""Reading a `GateMonitor` run log and turning it into a timeline of findings."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

TIMELINE_COLUMNS = (
    "code",
    "severity",
    "subject",
    "gate",
    "first_step",
    "first_epoch",
    "last_step",
    "windows",
)


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


class RunLogError(ValueError):
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


def collapse_timeline(run_log: pd.DataFrame) -> pd.DataFrame:
    """Per finding (code, subject): when it was first and last seen, on which gate, in how many windows.

    `run_log` is `read_run_log(...)` output (or ``pd.DataFrame(monitor.rows)``); its ``findings``
    column holds JSON lists of ``[code, severity, subject]``. `first_step` is the step count at the end
    of the first window showing the finding; `gate` is the first gate (in log order) it concerned.
    Sorted by first step, then severity order as logged, then code.
    """
    out: dict[tuple[str, str], dict] = {}
    if run_log.empty or "findings" not in run_log:
        return pd.DataFrame(columns=list(TIMELINE_COLUMNS))
    for row in run_log.itertuples(index=False):
        seen_here: set[tuple[str, str]] = set()
        for code, severity, subject in json.loads(row.findings or "[]"):
            key = (code, subject)
            rec = out.get(key)
            epoch = getattr(row, "epoch", None)
            if rec is None:
                out[key] = {
                    "code": code,
                    "severity": severity,
                    "subject": subject,
                    "gate": row.gate,
                    "first_step": int(row.step),
                    "first_epoch": epoch,
                    "last_step": int(row.step),
                    "windows": 1,
                }
            elif key not in seen_here and int(row.step) != rec["last_step"]:
                rec["last_step"] = int(row.step)
                rec["windows"] += 1
            seen_here.add(key)
    frame = pd.DataFrame(list(out.values()), columns=list(TIMELINE_COLUMNS))
    return frame.sort_values(["first_step", "code", "subject"], kind="stable").reset_index(drop=True)
