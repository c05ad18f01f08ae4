"""The finding for NaN/inf task predictions: which task, on how many rows, and that they are left out.

`TaskOutputStats` counts only finite predictions (`n_rows` of the tasks table); the rows a task's
output was NaN or inf on are the difference from the rows inspected, kept in the table's
`nonfinite_predictions` column so the table is never silently shrunk or blanked. Such rows are a
critical finding: a model that emits NaN is broken on them, and every metric of that task (AUC, MSE,
the causal values) speaks only of the other rows.
"""

from __future__ import annotations

import pandas as pd

from mmoe_inspect.analysis import codes
from mmoe_inspect.analysis.finding import Finding


def nonfinite_prediction_findings(tasks: pd.DataFrame) -> list[Finding]:
    """One critical finding per task with NaN/inf predictions (`tasks`: the inspection's tasks table)."""
    if tasks.empty or "nonfinite_predictions" not in tasks.columns:
        return []
    out: list[Finding] = []
    for row in tasks.itertuples(index=False):
        bad = row.nonfinite_predictions
        if not bad > 0:  # also skips NaN
            continue
        kept = int(row.n_rows)
        total = kept + int(bad)
        what = (
            f"the other {kept:,} rows"
            if kept
            else "no row at all, so they are blank (there is no finite prediction to compute them from)"
        )
        out.append(
            Finding.of(
                codes.NONFINITE_PREDICTIONS,
                str(row.task),
                f"Task {row.task}'s output is NaN or inf on {int(bad):,} of {total:,} rows; those rows are left "
                f"out of its metrics (prediction mean, AUC/MSE, causal values), which describe {what}.",
                "Find what the rows have in common (extreme inputs, an fp16 overflow, a log of a non-positive "
                "number in the tower) and fix the model; its predictions there are unusable.",
                {"nonfinite_rows": int(bad), "rows": total},
            )
        )
    return out
