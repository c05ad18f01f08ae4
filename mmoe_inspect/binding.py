"""The binding layer: a model plus data resolved into what every pass needs, once.

`bind(model, data, ...)` turns "this model, these rows" into a `Binding`: the row source, the function
that turns a chunk of rows into model inputs, the feature columns it reads, the topology (given, the
model's own, or discovered on the first rows) and the tasks whose label columns are present. The
inspection, the causal analyses and the attributions all start from it, so they read the same
columns, check them the same way and agree on the labels. This module sits below those three: it
imports only data, topology, recording, label_kinds (guessed task kinds settled on the rows) and
aux_tasks (per-row training terms that are not tasks).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mmoe_inspect.aux_tasks import drop_auxiliary
from mmoe_inspect.data.call import plain_output
from mmoe_inspect.data.outputs import task_entry, task_values
from mmoe_inspect.data.schema import FeatureSpec
from mmoe_inspect.data.sources import (
    DataError,
    LabelValueError,
    NonNumericError,
    TableSource,
    check_features,
    closest,
    require_columns,
)
from mmoe_inspect.label_kinds import RawOutputs, settle_kinds
from mmoe_inspect.recording.recorder import RecordingError
from mmoe_inspect.topology.spec import TaskSpec, Topology

InputFn = Callable[[pd.DataFrame], Any]
DataLike = pd.DataFrame | str | Path | TableSource

__all__ = [
    "Binding",
    "InputFn",
    "bind",
    "default_input_fn",
    "example_batch",
    "expected_rows",
    "raw_outputs",
    "read_labels",
    "resolve_topology",
    "task_predictions",
    "with_labels",
]


EXAMPLE_ROWS = 61
"""Rows of discovery's example batch: a prime, so no expert count or layer width (powers of two, multiples
of 8) shares the batch axis's size; with 64 rows, a bank of 64 experts was taken for a batch axis."""


@dataclass(frozen=True)
class Binding:
    """A model bound to its data: what every pass over the rows reads and how.

    `feature_columns` are the data columns `input_fn` reads (None: unknown, every column is read);
    `labelled` are the tasks whose label column is in the data (empty when labels are ignored).
    """

    source: TableSource
    input_fn: InputFn
    feature_columns: tuple[str, ...] | None
    topology: Topology
    labelled: tuple[TaskSpec, ...]
    labels_ignored: bool = False  # `labels=False`: the caller chose not to judge the tasks
    label_hints: Mapping[str, str] = field(default_factory=dict)
    """`{task: column}`: the data column closest to a missing label column (`Click` for `click`)."""

    @property
    def label_columns(self) -> dict[str, str]:
        """`{task: label column}` of the labelled tasks."""
        return {t.name: t.label_column for t in self.labelled}

    @property
    def labelled_binary(self) -> tuple[TaskSpec, ...]:
        return tuple(t for t in self.labelled if t.kind == "binary")

    def read_columns(self, *extra: str) -> list[str] | None:
        """The columns a pass reads: features, labels and `extra` (None when the features are unknown)."""
        if self.feature_columns is None:
            return None
        wanted = [*self.feature_columns, *(t.label_column for t in self.labelled), *extra]
        return list(dict.fromkeys(wanted))

    def check(self, frame: pd.DataFrame) -> None:
        """Raise a one-line `DataError` when a chunk's feature columns are not numeric and finite."""
        if self.feature_columns:
            check_features(frame, list(self.feature_columns), self.source.name)

    def example(self, rows: int = EXAMPLE_ROWS) -> Any:
        """Model input for the first `rows` rows (checked like every chunk)."""
        return example_batch(self.source, self.input_fn, self.feature_columns, rows)


def bind(
    model: nn.Module,
    data: DataLike,
    *,
    topology: Topology | str | Path | None = None,
    tasks: Sequence[str] | None = None,
    task_kinds: Sequence[str] | Mapping[str, str] | None = None,
    features: FeatureSpec | None = None,
    input_fn: InputFn | None = None,
    columns: Sequence[str] | None = None,
    labels: bool | Mapping[str, str] = True,
) -> Binding:
    """Resolve `model` on `data` once: source, input function, feature columns, topology, labelled tasks.

    `input_fn` turns rows into inputs (default: the reference models' `FeatureSpec`, from `features`
    or the model's config); `columns` names the data columns it reads (they must exist). The topology
    is `topology` (a `Topology` or a spec path), else the model's `topology()`, else discovery on the
    first rows (`tasks` names the outputs, `task_kinds` their kinds). `labels={task: column}` names
    label columns (they must exist), `labels=False` ignores labels, `True` uses the columns the tasks
    name when present.
    """
    source = TableSource.of(data)
    spec_features = features
    if input_fn is None:
        input_fn, spec_features = default_input_fn(model, features)
    if columns is not None:
        feature_cols: list[str] | None = list(columns)
    else:
        feature_cols = list(spec_features.names) if spec_features is not None else None
    if feature_cols:
        require_columns(source, feature_cols)
    fn = input_fn
    present = set(source.columns())
    named = dict(labels) if isinstance(labels, Mapping) else {}
    topo = resolve_topology(
        model,
        topology,
        example=lambda: example_batch(source, fn, feature_cols),
        tasks=tasks,
        task_kinds=task_kinds,
        has_label=None if labels is False else (lambda task: named.get(task, task) in present),
    )
    if isinstance(labels, Mapping):
        topo = with_labels(topo, labels, source)
    if labels is not False and task_kinds is None:
        topo = settle_kinds(topo, source, present, raw_outputs(model, fn, feature_cols), feature_cols)
    labelled = tuple(t for t in topo.tasks if labels is not False and t.label_column in present)
    taken = set(feature_cols or ()) | {t.label_column for t in labelled}  # never hint a feature or a label
    hints = {} if labels is False else label_hints(topo.tasks, labelled, present - taken)
    topo = drop_auxiliary(topo, present, hints)
    return Binding(
        source=source,
        input_fn=fn,
        feature_columns=tuple(feature_cols) if feature_cols is not None else None,
        topology=topo,
        labelled=labelled,
        labels_ignored=labels is False,
        label_hints=hints,
    )


def label_hints(tasks: Sequence[TaskSpec], labelled: Sequence[TaskSpec], present: set[str]) -> dict[str, str]:
    """`{task: column}` for each task whose label column is absent but one of the `present` columns (the
    caller leaves out features and other tasks' labels) differs from it only in case or is the only close
    spelling (difflib): the task then gets `task_unlabelled` naming it."""
    have = {t.name for t in labelled}
    names = sorted(str(c) for c in present)
    lowered: dict[str, list[str]] = {}
    for c in names:
        lowered.setdefault(c.lower(), []).append(c)
    out = {}
    for t in tasks:
        if t.name in have:
            continue
        same = lowered.get(t.label_column.lower(), [])
        near = same or difflib.get_close_matches(t.label_column, names, n=2, cutoff=0.8)
        if len(near) == 1:
            out[t.name] = near[0]
    return out


def resolve_topology(
    model: nn.Module,
    topology: Topology | str | Path | None,
    example: Callable[[], Any] | None = None,
    tasks: Sequence[str] | None = None,
    task_kinds: Sequence[str] | Mapping[str, str] | None = None,
    has_label: Callable[[str], bool] | None = None,
) -> Topology:
    """An explicit topology/spec file wins; then the model's own declaration; then discovery on `example()`
    (`has_label(task)`: the data holds the task's label column; None: no data known)."""
    if isinstance(topology, Topology):
        return topology
    if topology is not None:
        from mmoe_inspect.topology._unresolved import uncovered_by_spec

        topo = Topology.load(topology)
        hidden = uncovered_by_spec(model, topo, str(topology))
        return replace(topo, unresolved=(*topo.unresolved, *hidden)) if hidden else topo
    declared = getattr(model, "topology", None)
    if callable(declared):
        topo = declared()
        if isinstance(topo, Topology):
            return topo
    if example is None:
        raise RecordingError("the model declares no topology and no example batch was given for discovery")
    from mmoe_inspect.topology.discovery import discover_topology

    return discover_topology(
        model,
        example(),
        task_names=list(tasks) if tasks is not None else None,
        task_kinds=task_kinds,
        has_label=has_label,
    )


def default_input_fn(model: nn.Module, features: FeatureSpec | None) -> tuple[InputFn, FeatureSpec | None]:
    """Our reference models read `{feature: tensor}` (or `[batch, n_dense]`); their config names the features."""
    from mmoe_inspect.data.batches import frame_to_inputs

    if features is None:
        cfg = getattr(model, "config", None)
        features = getattr(cfg, "features", None)
    if not isinstance(features, FeatureSpec):
        raise RecordingError(
            "cannot tell how to turn data rows into model inputs: pass `features=FeatureSpec(...)` or `input_fn=`"
        )
    spec = features
    return (lambda frame: frame_to_inputs(frame, spec)), spec


def task_predictions(out: Any, tasks: Sequence[TaskSpec]) -> torch.Tensor:
    """Model output (dict, `[batch, T]` tensor, list/tuple, nested: each task's `output` locator) →
    `[batch, T]` float predictions in task order; binary tasks given as logits (`TaskSpec.probability`
    False) through a sigmoid.

    A fresh tensor; for the usual `[batch]` outputs one op in all (the stack).
    """
    out = plain_output(out)
    cols = []
    for i, t in enumerate(tasks):
        try:
            v = task_entry(out, t.output, t.name, i, t.rows_second)
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"{type(v).__name__} is not a tensor")
        except (KeyError, IndexError, ValueError, TypeError, OverflowError, RuntimeError) as exc:
            from mmoe_inspect.topology._task_outputs import output_error

            key = t.output if t.output is not None else (t.name if isinstance(out, dict) else i)
            raise output_error(t.name, key, out, exc) from None
        if v.requires_grad:
            v = v.detach()
        v = task_values(v, t.column, t.rows_second)
        if v.dtype != torch.float32:
            v = v.float()
        if t.kind == "binary" and not t.probability:  # logits: the task's probabilities
            v = torch.sigmoid(v)
        cols.append(v)
    return torch.stack(cols, dim=1)


def read_labels(frame: pd.DataFrame, tasks: Sequence[TaskSpec], source: str) -> np.ndarray:
    """`[batch, T]` float64 labels from each task's label column; NaN where the column is absent or the
    value missing. Binary labels must be 0/1 and regression labels finite: anything else is a one-line
    `LabelValueError`."""
    out = np.full((len(frame), len(tasks)), np.nan)
    for j, t in enumerate(tasks):
        if t.label_column not in frame:
            continue
        raw = frame[t.label_column]
        if getattr(raw.dtype, "kind", None) in ("M", "m") or isinstance(raw.dtype, pd.PeriodDtype):
            what = "durations" if raw.dtype.kind == "m" else "timestamps"  # as numbers: ns/ms since 1970
            raise NonNumericError(
                f"label column {t.label_column!r} of task {t.name!r} in {source} is not numeric: it holds "
                f"{what} (dtype {raw.dtype}); a {what[:-1]} label is likely the wrong column: name the label "
                "column with --labels task=column"
            )
        try:
            if isinstance(raw.dtype, np.dtype) and raw.dtype.kind in "biuf":  # already numbers
                values = raw.to_numpy(dtype=np.float64)
            else:
                values = pd.to_numeric(raw).to_numpy(dtype="float64")
        except (ValueError, TypeError):
            raise NonNumericError(
                f"label column {t.label_column!r} of task {t.name!r} in {source} is not numeric "
                f"(dtype {raw.dtype})"
            ) from None
        if t.kind == "binary":
            bad = ~np.isnan(values) & (values != 0) & (values != 1)
            if bad.any():
                i = int(np.argmax(bad))
                v = float(values[i])
                shown = f"{v:g}" if float(f"{v:g}") == v else repr(v)  # 1.000000000001, not a "1"
                if shown == repr(v) and abs(v - round(v)) < 1e-6:
                    shown += f" (not exactly {round(v)})"
                err = LabelValueError(
                    f"label column {t.label_column!r} of binary task {t.name!r} in {source} holds "
                    f"{shown} (row {frame.index[i]}); binary labels must be 0 or 1 (NaN = missing)"
                )
                err.task = t.name  # type: ignore[attr-defined]  # `label_kinds.regression_fallback` reads it
                raise err
        else:
            bad = np.isinf(values)  # NaN is "missing"; an infinite target is not a value the task can meet
            if bad.any():
                i = int(np.argmax(bad))
                raise LabelValueError(
                    f"label column {t.label_column!r} of regression task {t.name!r} in {source} holds "
                    f"{values[i]:g} (row {frame.index[i]}); fill or drop it (NaN = missing) before inspecting"
                )
        out[:, j] = values
    return out


FORWARD_ROWS = 1024  # rows per forward of `raw_outputs`


def raw_outputs(model: nn.Module, input_fn: InputFn, feature_cols: Sequence[str] | None) -> RawOutputs:
    """`(rows, tasks) -> [rows, len(tasks)]` float64: the tasks' outputs as the model returns them (a logit
    stays a logit), on `rows` turned into inputs by `input_fn`, in eval mode without gradients, chunks of
    `FORWARD_ROWS`; every module's training flag is restored. What `label_kinds.settle_kinds` reads."""
    from mmoe_inspect.data.call import call_model
    from mmoe_inspect.device import model_device, to_device

    def run(frame: pd.DataFrame, tasks: Sequence[TaskSpec]) -> np.ndarray:
        plain = [replace(t, kind="regression") for t in tasks]  # no sigmoid: the outputs themselves
        parts = []
        modes = {m: m.training for m in model.modules()}
        try:
            model.eval()
            with torch.no_grad():
                for start in range(0, len(frame), FORWARD_ROWS):
                    chunk = frame.iloc[start : start + FORWARD_ROWS]
                    if feature_cols:
                        check_features(chunk, list(feature_cols), "the data")
                    out = call_model(model, to_device(input_fn(chunk), model_device(model)))
                    parts.append(task_predictions(out, plain).double().cpu().numpy())
        finally:
            for m, flag in modes.items():
                m.training = flag
        return np.concatenate(parts) if parts else np.empty((0, len(tasks)))

    return run


def with_labels(topo: Topology, labels: Mapping[str, str], source: TableSource) -> Topology:
    """`topo` with each task in `labels` reading its label from the named column (which must exist)."""
    names = list(topo.task_names)
    unknown = [t for t in labels if t not in names]
    if unknown:
        hint = "".join(closest(t, names) for t in unknown[:1])
        raise DataError(
            f"labels name task(s) {unknown}{hint} but the model's tasks are {', '.join(names)}; "
            "name the tasks (tasks= / --tasks) or fix the labels (labels= / --labels)"
        )
    require_columns(source, list(labels.values()), what="label")
    tasks = tuple(replace(t, label=labels[t.name]) if t.name in labels else t for t in topo.tasks)
    return replace(topo, tasks=tasks)


def example_batch(
    source: TableSource, input_fn: InputFn, feature_cols: Sequence[str] | None, rows: int = EXAMPLE_ROWS
) -> Any:
    """Model input for the first `rows` rows of `source` (checked like every chunk): discovery's example."""
    names = list(feature_cols) if feature_cols else None
    for frame in source.iter_frames(rows, names, max_rows=rows):
        if names:
            check_features(frame, names, source.name)
        return input_fn(frame)
    raise DataError(f"{source.name} has no rows")


def expected_rows(source: TableSource, sample: float | None, limit: int | None) -> int | None:
    """Rows a pass over `source` will read with `sample` and `limit` (an estimate when sampling; None when
    the source does not know its rows, e.g. CSV)."""
    n = source.n_rows()
    if n is None:
        return None
    if sample is not None:
        n = int(n * sample)
    return min(n, limit) if limit is not None else n
