"""Bind data columns to a model no adapter knows: try the evident input forms, match outputs to labels.

A model from a library without an adapter (or a hand-written one) says nothing about which data
columns it reads or how. `bind_inputs(model, data)` works it out the way a person would, and says
what it chose:

1. **Columns.** Every numeric column is an input except the label columns: those named by `labels`
   or `tasks` (or the model's own `task_names`), and those named like labels (`label`, `click`,
   `like`, `is_click`, `y_*`, `*_label`, ... see `LABEL_WORDS`). Non-numeric columns (names,
   dates, string ids) are left out with a note; numeric id columns stay inputs (ids to embed).
2. **Input form**, from `forward`'s signature (`inspect.signature`: parameter names and annotations),
   each candidate tried by a forward on the first `TRIAL_ROWS` rows:
   - one parameter: ONE float32 tensor `[batch, D]` in file order ("tensor"), a dict
     `{column: tensor}` with int64 ids for integer columns and float32 for floats ("dict"), and a
     tuple `(int64 [batch, n_int], float32 [batch, n_float])` ("tuple"); a `dict`/`Mapping`
     annotation or a name such as `batch`/`*_dict` puts "dict" first, a `tuple` annotation "tuple";
   - several parameters: each bound to the column of its name when every name is a column, else
     `forward(categorical, numerical)`: integer columns to the parameter named like ids
     (`cat`, `sparse`, `id`, `emb`, ...), float columns to the other ("args").
   The candidate that runs and returns per-row predictions wins; two that run with different
   outputs are ambiguous (the error names `--input`).
3. **Outputs → labels.** Dict outputs are tasks named by their keys; a key with no column of its
   name is matched to the column of a close name (`like_pred`, `pred_like`, `like_prob`,
   `y_like`, `like_logit` → `like`; case-insensitive). Unnamed outputs (a tuple, a `[batch, T]`
   tensor) take the label-like columns in file order when there are exactly `T` of them. Two
   columns fitting one output, or two outputs one column, is an error naming `--labels`.

When nothing runs, the `InputMappingError` names the flag that fixes it (`--features`, `--input`,
`--labels`, `--collate`) and quotes the trial error. The trial forwards leave the model exactly as
found: eval mode and `torch.no_grad()` for the trial, every module's `training` flag restored,
buffers and the CPU random state put back (a noisy gate draws random numbers even in eval mode);
parameters and `.grad` are not touched.

Examples::

    >>> b = bind_inputs(model, "eval.parquet")        # forward(self, batch: dict[str, Tensor])
    >>> b.form, b.features, b.labels
    ('dict', ('user_id', 'item_id', 'price'), {'like_pred': 'like'})
    >>> result = mi.inspect(model, "eval.parquet", input_fn=b.input_fn, columns=b.features,
    ...                     tasks=b.tasks, labels=b.labels or True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from mmoe_inspect.data.inputs import (
    INPUT_MODES,
    CollateInputs,
    FrameInputs,
    GroupedInputs,
    InputMappingError,
    parse_labels,
    split_names,
)
from mmoe_inspect.data.sources import DataError, TableSource, require_columns
from mmoe_inspect.loading._labels import LABEL_WORDS, label_for_output, looks_like_label, match_outputs
from mmoe_inspect.loading._trials import (
    Candidate,
    Trial,
    candidates,
    cls_name,
    pick,
    short,
    trial_outputs,
    try_all,
)

__all__ = ["LABEL_WORDS", "TRIAL_ROWS", "InputBinding", "bind_inputs", "label_for_output", "looks_like_label"]

TRIAL_ROWS = 5
"""Rows fed to each trial forward (odd, so a batch dimension is not mistaken for 2 or 4 tasks/experts)."""


@dataclass(frozen=True)
class InputBinding:
    """How data rows become a model's input, and which output reads which label column.

    `input_fn` turns a pandas chunk into the model input (`mmoe_inspect.data.call.call_model`
    convention); `form` is "tensor", "dict", "args", "tuple", "collate" or "adapter" (a library
    adapter's convention); `tasks` names the outputs in order when they carry no names (None: leave
    it to the model / discovery); `labels` maps task → label column; `notes` say what was chosen
    and why (shown on the terminal and kept in the topology notes and `result.meta["input_binding"]`);
    `guessed` is True when the inputs were worked out by trial forwards rather than given.
    """

    input_fn: FrameInputs | GroupedInputs | CollateInputs
    form: str
    tasks: tuple[str, ...] | None = None
    labels: dict[str, str] | None = None
    notes: tuple[str, ...] = ()
    guessed: bool = False

    @property
    def features(self) -> tuple[str, ...] | None:
        """The data columns the input function reads (None: unknown, e.g. a `--collate` function)."""
        return tuple(self.input_fn.names) if self.input_fn.names else None

    def meta(self) -> dict[str, Any]:
        """JSON-ready record for `result.meta["input_binding"]`."""
        return {
            "form": self.form,
            "guessed": self.guessed,
            "features": list(self.features or ()),
            "tasks": list(self.tasks) if self.tasks is not None else None,
            "labels": dict(self.labels) if self.labels is not None else None,
            "notes": list(self.notes),
        }


# ----------------------------------------------------------------------------- public entry point
def bind_inputs(
    model: nn.Module,
    data: pd.DataFrame | TableSource | Any,
    *,
    tasks: str | Sequence[str] | None = None,
    labels: str | Mapping[str, str] | None = None,
    input: str | None = None,
    features: str | Sequence[str] | None = None,
    collate: CollateInputs | None = None,
    rows: int = TRIAL_ROWS,
) -> InputBinding:
    """Work out how `data`'s columns feed `model` and which outputs read which labels (module docstring).

    `tasks` / `labels` / `input` / `features` / `collate` are what the user said (the CLI's
    `--tasks/--labels/--input/--features/--collate`): each fixes its part and the rest is worked
    out. Raises `InputMappingError` (one line naming the flag that fixes it) when no candidate runs
    or the labels are ambiguous. The model is left exactly as found.
    """
    if input is not None and input not in INPUT_MODES:
        raise InputMappingError(f"--input must be one of {', '.join(INPUT_MODES)}, not {input!r}")
    source = TableSource.of(data)
    frame = _first_rows(source, rows)
    label_map = parse_labels(labels) or {}
    given_tasks = split_names(tasks, "--tasks")
    declared = _declared_tasks(model)
    names = given_tasks or declared
    columns = [str(c) for c in frame.columns]

    numeric, dropped = _numeric_columns(frame)
    known = [c for c in columns if c in set(label_map.values()) | set(names or ())]
    hinted = [c for c in numeric if c not in known and looks_like_label(c)]
    guessing = features is None and collate is None
    cols: list[str] | None = None
    fed_back: list[str] = []
    held_out: list[str] = []
    if collate is not None:
        cands = [Candidate("collate", collate, "the --collate function")]
        winner = pick(model, try_all(model, cands, frame), None, frame, True)
    elif features is not None:
        cols = split_names(features, "--features") or []
        require_columns(source, cols)
        winner, cols, _ = _run(model, frame, cols, input, [], fixed=True)
    else:
        cols = [c for c in numeric if c not in known and c not in hinted]
        if not cols:
            raise InputMappingError(
                f"{source.name} has no numeric column left to feed {cls_name(model)} after the label columns "
                f"({', '.join(known + hinted) or 'none'}); name the inputs with --features a,b,c"
            )
        try:
            winner, cols, fed_back = _run(model, frame, cols, input, hinted, fixed=False)
        except InputMappingError as first:
            # labels need not be named like labels ("income", "marital"): when nothing runs with every
            # column, try again with the 0/1-valued columns held out as label candidates
            binary = [c for c in cols if _zero_one(frame[c])]
            rest = [c for c in cols if c not in binary]
            if not binary or not rest:
                raise
            try:
                winner, cols, fed_back = _run(model, frame, rest, input, hinted, fixed=False)
            except InputMappingError:
                raise first from None
            hinted = [*hinted, *binary]
            held_out = binary
        hinted = [c for c in hinted if c not in fed_back]
    outputs = trial_outputs(model, winner, frame)
    assert outputs is not None  # pick only returns trials with per-row predictions
    tasks_out, labels_out, label_notes, matched = match_outputs(
        outputs, frame, numeric, label_map, given_tasks, declared, known + hinted,
        features=cols if features is not None else (),
    )  # fmt: skip

    # a matched label column fed as an input is taken out; a dict key the forward never reads too
    retake = [c for c in matched if c in (cols or ())] if guessing else []
    unread = [c for c in cols or () if winner.read and c not in winner.read and c not in retake]
    if guessing and (retake or unread):
        cols = [c for c in cols or () if c not in retake and c not in unread]
        again = [c for c in candidates(model, frame, cols, input) if c.form == winner.candidate.form]
        winner = pick(model, try_all(model, again, frame), cols, frame, False)
        hinted = [*hinted, *retake]

    notes: list[str] = []
    # `--features` alone has always meant one tensor: say so only when the trials chose otherwise
    if collate is None and (features is None or winner.candidate.form != "tensor"):
        head = f"input binding for {cls_name(model)} (no adapter knows it; chosen by trial forwards on {len(frame)} rows)"
        notes.append(f"{head}: {winner.candidate.what}")
    if collate is None:
        not_fed = [c for c in known + hinted if c not in (cols or ())]
        if not_fed and features is None:
            notes.append(f"label column(s) not fed to the model: {short(not_fed)}")
        if held_out:
            notes.append(
                f"0/1 column(s) {short(held_out)} taken as labels, not inputs: the forward did not run with them"
            )
        if fed_back:
            notes.append(
                f"column(s) named like labels that the forward reads, fed as inputs: {short(fed_back)}"
            )
        if unread and guessing:
            notes.append(f"column(s) the forward never reads, left out of the inputs: {short(unread)}")
        if dropped:
            notes.append(f"non-numeric column(s) left out of the inputs: {short(dropped)}")
    notes.extend(label_notes)
    return InputBinding(
        winner.candidate.fn,
        winner.candidate.form,
        tasks=tasks_out,
        labels=labels_out,
        notes=tuple(notes),
        guessed=collate is None,
    )


def _run(
    model: nn.Module,
    frame: pd.DataFrame,
    cols: list[str],
    input: str | None,
    label_like: Sequence[str],
    *,
    fixed: bool,
) -> tuple[Trial, list[str], list[str]]:
    """(the winning trial over `cols`, the columns it read, label-like columns fed back in).

    When no form runs and a dict forward asked for a label-like column by name (`KeyError: 'click'`),
    that column is an input after all: it is fed back and the forms tried again.
    """
    fed_back: list[str] = []
    while True:
        trials = try_all(model, candidates(model, frame, cols, input), frame)
        key = None
        if not any(t.ran for t in trials):
            asked = [
                str(t.error.args[0])
                for t in trials
                if t.candidate.form == "dict" and isinstance(t.error, KeyError) and t.error.args
            ]
            key = next((k for k in asked if k in label_like and k not in fed_back), None)
        if key is None:
            return pick(model, trials, cols, frame, fixed), cols, fed_back
        fed_back.append(key)
        cols = [str(c) for c in frame.columns if c in set(cols) | {key}]  # file order


# ----------------------------------------------------------------------------- columns
def _numeric_columns(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(numeric columns incl. list cells and bools, non-numeric columns) in file order."""
    numeric, dropped = [], []
    for c in frame.columns:
        s = frame[c]
        kind = getattr(s.dtype, "kind", "O")
        lists = kind == "O" and len(s) > 0 and isinstance(s.iloc[0], list | tuple | np.ndarray)
        if isinstance(s.dtype, pd.CategoricalDtype) or kind in "biuf" or lists:
            numeric.append(str(c))
        else:
            dropped.append(str(c))
    return numeric, dropped


def _zero_one(s: pd.Series) -> bool:
    """A column holding only 0 and 1 (NaN allowed): what a binary label looks like."""
    if getattr(s.dtype, "kind", "O") not in "biuf":
        return False
    v = s.dropna().to_numpy()
    return bool(len(v)) and bool(np.isin(v, (0, 1)).all())


def _first_rows(source: TableSource, rows: int) -> pd.DataFrame:
    for frame in source.iter_frames(rows, None, max_rows=rows):
        if len(frame):
            return frame
    raise DataError(f"{source.name} has no rows")


def _declared_tasks(model: nn.Module) -> list[str] | None:
    names = getattr(model, "task_names", None)
    if isinstance(names, list | tuple) and names and all(isinstance(n, str) for n in names):
        return list(names)
    return None
