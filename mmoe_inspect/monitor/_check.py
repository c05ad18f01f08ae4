"""A run log's columns checked when it is read, so a bad `--run` fails before the long inspection pass.

The report's Training section reads `step` (numbers), `gate`, the per-expert weights `w_*`, the
divergences `tv_*`, `n_experts`, `epoch` and the JSON `findings` lists. A log that is readable but
holds text where numbers belong, or findings that are not `[[code, severity, subject], ...]`, used
to fail only while the report was written, after the whole run. `check_run_log` raises `ValueError`
with one line naming the column (and the row) instead.
"""

from __future__ import annotations

import json

import pandas as pd

_NUMERIC = (
    "step",
    "epoch",
    "n_experts",
    "level",
    "effective_experts",
    "normalized_entropy",
    "max_mean_weight",
)


def check_run_log(frame: pd.DataFrame) -> None:
    """Raise `ValueError` (one line) when `frame` (a run log: one row per gate per window) cannot be drawn."""
    for col in ("step", "gate"):
        if col not in frame.columns:
            raise ValueError(f"it lacks the column {col!r}")
    numeric = [c for c in frame.columns if c in _NUMERIC or str(c).startswith(("w_", "tv_"))]
    for col in numeric:
        values = frame[col]
        if isinstance(values, pd.DataFrame):
            raise ValueError(f"column {col!r} appears more than once")
        as_numbers = pd.to_numeric(values, errors="coerce")
        bad = as_numbers.isna() & values.notna()
        if bad.any() or values.dtype.kind == "b":
            row = int(bad.to_numpy().argmax()) if bad.any() else 0
            raise ValueError(
                f"column {col!r} holds {str(values.iloc[row])[:40]!r} (row {row + 1}); numbers expected"
            )
    steps = pd.to_numeric(frame["step"], errors="coerce")
    if steps.isna().any() or not steps.abs().lt(2**62).all():
        row = int((~steps.abs().lt(2**62)).to_numpy().argmax())
        raise ValueError(
            f"column 'step' holds {frame['step'].iloc[row]!r} (row {row + 1}); a step count expected"
        )
    if "findings" in frame.columns:
        for i, cell in enumerate(frame["findings"].tolist()):
            if cell is None or (isinstance(cell, float) and cell != cell):
                continue
            if not _findings_ok(cell):
                raise ValueError(
                    f"column 'findings' holds {str(cell)[:40]!r} (row {i + 1}); a JSON list of "
                    "[code, severity, subject] expected"
                )


def _findings_ok(cell: object) -> bool:
    if not isinstance(cell, str):
        return False
    try:
        items = json.loads(cell)
    except (ValueError, RecursionError):
        return False
    return isinstance(items, list) and all(
        isinstance(f, list) and len(f) == 3 and all(isinstance(x, str) for x in f) for f in items
    )
