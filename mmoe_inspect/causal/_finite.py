"""Rows where the intact model predicts NaN/inf are left out of every causal value, with a note.

`Evaluation` scores each task on its labelled rows and gives a prediction set NaN when it is
non-finite on one of them, so a model that emits NaN on 62 of 400 rows would blank every causal
value of that task. The intact model's non-finite rows are not evidence about routing: they are
taken out of the task's labelled rows (their label set to NaN, "missing") for every prediction set
alike, so the comparisons stay paired on the same rows, and a note says how many.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmoe_inspect.topology.spec import TaskSpec


def drop_nonfinite_rows(
    labels: np.ndarray, model_preds: np.ndarray, tasks: Sequence[TaskSpec]
) -> tuple[np.ndarray, list[str]]:
    """`labels [n, T]` with NaN where the intact model's `model_preds [n, T]` is not finite (on a labelled
    row), and one note per task that lost rows. Returns `labels` itself when nothing is dropped."""
    bad = np.isfinite(labels) & ~np.isfinite(model_preds)
    if not bad.any():
        return labels, []
    out = np.where(bad, np.nan, labels)
    return out, nonfinite_notes(tasks, bad.sum(0), np.isfinite(out).sum(0))


def nonfinite_notes(tasks: Sequence[TaskSpec], dropped: np.ndarray, left: np.ndarray) -> list[str]:
    """One note per task that lost rows: `dropped [T]` rows taken out, `left [T]` labelled rows kept."""
    notes = []
    for j, t in enumerate(tasks):
        n, rest = int(dropped[j]), int(left[j])
        if n:
            notes.append(
                f"task {t.name}: the model's prediction is NaN/inf on {n:,} labelled row(s); every causal value "
                f"of {t.name} is computed on the other {rest:,}"
                + ("" if rest else " (none: its causal values are blank)")
            )
    return notes
