"""Settle the task kinds discovery could only guess, on the data's first rows: their labels and outputs.

Discovery sees a few example rows and no labels. A task whose kind it guessed (no output ends in a
sigmoid: values in [0, 1] on the example mean binary, else regression) or read as regression for want
of a final sigmoid next to siblings that have one, is settled here, on the first `LABEL_CHECK_ROWS` rows
of the data, when its label column holds only 0/1 there:

- its name (or output key) says "logit": a binary task's logits;
- its outputs leave [0, 1] on those rows (a probability never does): a binary task's logits when their
  sigmoid fits the 0/1 labels better than the outputs themselves (mean squared error of the two
  readings against the same labels), else regression. A logit of a task with positive rate p sits near
  log(p / (1 - p)), far from the 0/1 labels, while its sigmoid is a probability; a regression fitted to
  0/1 labels (a linear probability model) sits near the labels, while its sigmoid is squeezed into
  [0.27, 0.73] around 0.5. Either way the two errors lie far apart, and the sigmoid is monotone, so
  the task's ranking (AUC) is the same under both readings: only the calibration-like judgments depend
  on the choice. Leaving [0, 1] alone is not evidence enough: such a regression leaves it too;
- its outputs stay in [0, 1] on those rows: a binary task's probability (`softmax(z)[:, 1]`, an ESCM²-style
  `p * a + (1 - p) * b` of sigmoids: probabilities with no final sigmoid). Discovery read such a task as
  regression for want of a final sigmoid, and judged by MSE a probability got `task_no_better_than_mean`.
  This reading is safe without knowing the op: a prediction of a 0/1 label that never leaves [0, 1] is an
  estimate of P(label = 1), whatever produced it (a linear probability model that stays inside too), its
  ranking is judged by AUC and its calibration by log loss (clipped, so exact 0 or 1 stay finite). One row
  outside [0, 1] leaves it to the fit above (a probability does not leave [0, 1]); a task discovery read
  as binary stays so.

Labels that are not all 0/1 leave the kind alone. A declared kind (`task_kinds`, `model.task_types`,
a spec, the model's `topology()`) is never changed; neither is an output discovery tied to a sigmoid
(its own, or another output equal to its sigmoid: `_tasks.task_specs`). Each change is a topology note
saying which evidence decided it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from mmoe_inspect.data.sources import TableSource
from mmoe_inspect.topology.spec import TaskSpec, Topology

__all__ = ["LABEL_CHECK_ROWS", "RawOutputs", "regression_fallback", "settle_kinds"]

LABEL_CHECK_ROWS = 4096  # rows read to tell 0/1 labels from other targets (and to see the outputs' range)

RawOutputs = Callable[[pd.DataFrame, Sequence[TaskSpec]], np.ndarray]
"""`(rows, tasks) -> [rows, len(tasks)]` float64: the tasks' outputs as the model returns them (no sigmoid)."""

OVERRIDE = (
    "to override, pass task_kinds= (Python) or a spec giving the task's kind (mmoe-inspect topology MODEL "
    "--write spec.toml, edit kind, then --spec spec.toml)"
)


def says_logit(task: TaskSpec) -> bool:
    """The task's name or a key on its output's path says "logit" (`logits_click`, `("ctr", "logit")`)."""
    steps = task.output if isinstance(task.output, tuple) else (task.output,)
    return any("logit" in str(s).lower() for s in (task.name, *steps) if s is not None)


def _zero_one(values: np.ndarray) -> bool:
    values = values[~np.isnan(values)]
    return bool(values.size) and bool(np.isin(values, (0.0, 1.0)).all())


def settle_kinds(
    topo: Topology,
    source: TableSource,
    present: set[str],
    outputs: RawOutputs | None = None,
    features: Sequence[str] | None = None,
) -> Topology:
    """`topo` with each guessed task (`_tasks.guessed_kinds`) whose label column (in `present`) holds only 0/1
    on the first rows settled as the module docstring says. `outputs` gives the model's outputs on rows read
    with the `features` columns (None: every column); without it, or when that forward fails, only the names
    and the example's range decide (a task guessed regression from its range: logits, as before)."""
    from mmoe_inspect.topology._tasks import guessed_kinds, unsigmoided

    guessed = guessed_kinds(topo.notes)
    guessed.update((n, "regression") for n in unsigmoided(topo.notes))
    candidates = [t for t in topo.tasks if t.name in guessed and t.label_column in present]
    if not candidates:
        return topo
    columns = list(dict.fromkeys(t.label_column for t in candidates))
    frame = next(iter(source.iter_frames(LABEL_CHECK_ROWS, columns, max_rows=LABEL_CHECK_ROWS)), None)
    if frame is None:
        return topo
    labels = {c: pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=np.float64) for c in columns}
    candidates = [t for t in candidates if _zero_one(labels[t.label_column])]
    logits: dict[str, str] = {t.name: "its name says logit" for t in candidates if says_logit(t)}
    rest = [t for t in candidates if t.name not in logits]
    raw = _outputs(outputs, source, rest, [*features, *columns] if features is not None else None)
    if raw is None:  # no rows run: a range-guessed regression left [0, 1] on the example rows
        ranged = guessed_kinds(topo.notes)
        logits.update({t.name: RANGE_ONLY for t in rest if ranged.get(t.name) == "regression"})
        return _apply(topo, logits, {})
    kept: dict[str, str] = {}
    probs: dict[str, str] = {}
    for j, t in enumerate(rest):
        z, y = raw[:, j], labels[t.label_column][: len(raw)]
        seen = z[np.isfinite(z)]
        ok = np.isfinite(z) & ~np.isnan(y)
        if not ok.any():
            continue
        if seen.min() >= 0 and seen.max() <= 1:  # stays in [0, 1]: a probability (binary read so already)
            if guessed[t.name] == "regression":
                probs[t.name] = f"outputs in [0, 1] on all {len(seen)} rows and 0/1 labels"
            continue
        squashed = 0.5 * (1.0 + np.tanh(0.5 * z[ok]))  # the sigmoid, without overflow for large |z|
        as_logit = float(np.mean((squashed - y[ok]) ** 2))
        as_is = float(np.mean((z[ok] - y[ok]) ** 2))
        errors = f"mean squared error {as_logit:.3g} vs {as_is:.3g} on {int(ok.sum())} rows"
        if as_logit < as_is:
            logits[t.name] = f"{OUTSIDE}, which their sigmoid fits better than they do ({errors})"
        elif guessed[t.name] == "binary":  # not a probability (it leaves [0, 1]) nor, by the fit, a logit
            kept[t.name] = f"the outputs fit them better than their sigmoid does ({errors})"
    return _apply(topo, logits, kept, probs)


OUTSIDE = "outputs outside [0, 1] but 0/1 labels"
RANGE_ONLY = f"{OUTSIDE} (on the example rows; the model could not be run on more)"


def _outputs(
    outputs: RawOutputs | None, source: TableSource, tasks: Sequence[TaskSpec], columns: list[str] | None
) -> np.ndarray | None:
    """`[rows, len(tasks)]` raw outputs on the first rows, or None (nothing asked, no rows, a failing forward:
    the recording pass runs the model again and reports its errors)."""
    if not tasks or outputs is None:
        return None
    try:
        frame = next(iter(source.iter_frames(LABEL_CHECK_ROWS, columns, max_rows=LABEL_CHECK_ROWS)), None)
        return None if frame is None else outputs(frame, tasks)
    except Exception:
        return None


def _apply(
    topo: Topology,
    logits: dict[str, str],
    regression: dict[str, str],
    probs: dict[str, str] | None = None,
) -> Topology:
    """`topo` with the `logits` tasks binary logits, the `regression` ones regression and the `probs` ones binary
    probabilities, a note per task."""
    probs = probs or {}
    if not logits and not regression and not probs:
        return topo
    tasks = tuple(
        replace(t, kind="binary", probability=False)
        if t.name in logits
        else replace(t, kind="regression", probability=False)
        if t.name in regression
        else replace(t, kind="binary", probability=True)
        if t.name in probs
        else t
        for t in topo.tasks
    )
    notes = [
        f"task(s) {name}: {why if why.startswith(OUTSIDE) else '0/1 labels and ' + why}: read as binary tasks' "
        f"logits (a sigmoid gives their probabilities); {OVERRIDE}"
        for name, why in logits.items()
    ]
    notes += [
        f"task(s) {name}: outputs outside [0, 1] (not probabilities) and 0/1 labels, but {why}: read as "
        f"regression; {OVERRIDE}"
        for name, why in regression.items()
    ]
    notes += [
        f"task(s) {name}: {why}: read as binary tasks' probabilities (no final sigmoid, e.g. a softmax column or "
        f"a mix of probabilities); {OVERRIDE}"
        for name, why in probs.items()
    ]
    return replace(topo, tasks=tasks, notes=(*topo.notes, *notes))


def regression_fallback(topo: Topology, task: str | None, error: str) -> Topology | None:
    """`topo` with `task` read as regression, with a note, when its binary kind was settled from the data
    (discovery's guess on the example, or `settle_kinds` on the first rows: not declared) and a later label is
    not 0/1 (`error`, the `LabelValueError` line); None for a declared binary task (the error stands)."""
    from mmoe_inspect.topology._tasks import guessed_kinds, unsigmoided

    settled = set(guessed_kinds(topo.notes)) | set(unsigmoided(topo.notes))
    spec = next((t for t in topo.tasks if t.name == task), None)
    if spec is None or spec.kind != "binary" or task not in settled:
        return None
    tasks = tuple(
        replace(t, kind="regression", probability=False) if t.name == task else t for t in topo.tasks
    )
    note = (
        f"task {task}: read as binary from its first rows' 0/1 labels, but a later label is not 0/1 ({error}): "
        f"read as regression; {OVERRIDE}"
    )
    kept = tuple(n for n in topo.notes if not n.startswith(f"task(s) {task}: "))  # the reading it replaces
    return replace(topo, tasks=tasks, notes=(*kept, note))
