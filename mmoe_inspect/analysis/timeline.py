"""A `GateMonitor` run log as a timeline of findings: when each (code, subject) first and last showed.

Pure pandas on the run log's rows, so an `InspectionResult` with a run log (`result.training`) can
write its timeline without importing the monitor (which needs torch hooks and the statistics).
"""

from __future__ import annotations

import json

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
