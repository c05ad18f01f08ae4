"""DataFrame → model inputs and label tensors, whole or in batches.

Input convention (what the reference models accept): when the `FeatureSpec` has no categorical
features, inputs are ONE float32 tensor `[batch, n_dense]` with columns in `spec.dense` order;
otherwise a dict `{feature name: tensor [batch]}`, float32 for dense and int64 for categorical
columns. Labels are a float32 tensor `[batch, n_tasks]` in task order, NaN where a label is missing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from mmoe_inspect.data.door import check_column_types
from mmoe_inspect.data.schema import FeatureSpec
from mmoe_inspect.data.sources import leading_columns
from mmoe_inspect.topology.spec import TaskSpec

Inputs = Union[Tensor, dict[str, Tensor]]
"""Model inputs: a float32 tensor `[batch, n_dense]`, or `{feature: tensor [batch]}`."""


@dataclass(frozen=True)
class Batch:
    """One batch: `inputs`, `labels` `[batch, n_tasks]` (None without tasks), `offset` = global index of row 0."""

    inputs: Inputs
    labels: Tensor | None
    offset: int


def column_tensor(series: pd.Series, dtype: torch.dtype) -> Tensor:
    """One column as a fresh tensor `[rows]` (float32 with NaN for missing values, or int64 ids)."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        series = series.cat.codes
    if dtype == torch.int64:
        return torch.from_numpy(series.to_numpy(dtype=np.int64, copy=True))
    return torch.from_numpy(series.to_numpy(dtype=np.float32, na_value=np.nan, copy=True))


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"the frame lacks {what} columns {missing}")


def frame_to_columns(frame: pd.DataFrame, features: FeatureSpec) -> dict[str, Tensor]:
    """`{feature: tensor [rows]}` on CPU: float32 dense columns, then int64 categorical ids."""
    _require(frame, features.names, "feature")
    out = {name: column_tensor(frame[name], torch.float32) for name in features.dense}
    out |= {c.name: column_tensor(frame[c.name], torch.int64) for c in features.categorical}
    return out


def frame_to_inputs(frame: pd.DataFrame, features: FeatureSpec, device: str | torch.device = "cpu") -> Inputs:
    """Model inputs for every row of `frame` (see the module docstring for the convention)."""
    check_column_types(frame, features.names, "the data", ids=[c.name for c in features.categorical])
    if features.categorical:
        return to_device(frame_to_columns(frame, features), device)
    _require(frame, features.dense, "feature")
    return dense_matrix(frame, features.dense).to(device)


def dense_matrix(frame: pd.DataFrame, columns: Sequence[str]) -> Tensor:
    """Columns `columns` of `frame` as a fresh C-contiguous float32 tensor `[rows, len(columns)]`.

    C-contiguous because a strided input slows the first matmul. pandas holds the columns as
    `[columns, rows]` blocks, so the row-major matrix is a transpose, and torch's blocked transposing
    copy of an F-ordered array is several times faster than numpy's (`bench/results/small_ops.md`). So the
    columns (a view when they lead the frame) become an F-ordered float32 array (a fast copy of
    column runs; our own, never a view of the frame), then torch transposes it.
    """
    arr = leading_columns(frame, columns).to_numpy(dtype=np.float32)
    fresh = False
    if not (arr.flags.f_contiguous and arr.flags.writeable):
        arr, fresh = np.array(arr, dtype=np.float32, order="F"), True
    x = torch.from_numpy(arr)
    if x.is_contiguous():  # one column or one row: nothing to transpose
        return x if fresh else x.clone()
    return x.contiguous()


def frame_to_labels(
    frame: pd.DataFrame, tasks: Sequence[TaskSpec], device: str | torch.device = "cpu"
) -> Tensor:
    """Labels `[rows, n_tasks]` float32 from each task's `label_column`, NaN where missing."""
    names = [t.label_column for t in tasks]
    _require(frame, names, "label")
    columns = [column_tensor(frame[name], torch.float32) for name in names]
    labels = torch.stack(columns, dim=1) if columns else torch.empty(len(frame), 0)
    return labels.to(device)


def take(inputs: Inputs, index: slice | Tensor) -> Inputs:
    """Rows `index` (a slice or an int64 index tensor) of inputs, in the same convention."""
    if isinstance(inputs, Tensor):
        return inputs[index]
    return {name: col[index] for name, col in inputs.items()}


def to_device(inputs: Inputs, device: str | torch.device) -> Inputs:
    """Inputs moved to `device` (no copy where they already are there)."""
    if isinstance(inputs, Tensor):
        return inputs.to(device)
    return {name: col.to(device) for name, col in inputs.items()}


def n_rows(inputs: Inputs) -> int:
    """Number of rows in inputs."""
    if isinstance(inputs, Tensor):
        return int(inputs.shape[0])
    return int(next(iter(inputs.values())).shape[0]) if inputs else 0


def iter_batches(
    frame: pd.DataFrame,
    features: FeatureSpec,
    tasks: Sequence[TaskSpec] | None = None,
    batch_size: int = 4096,
    device: str | torch.device = "cpu",
) -> Iterator[Batch]:
    """Consecutive batches of `frame` in row order; columns are converted once, batches are slices."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    inputs = frame_to_inputs(frame, features)
    labels = frame_to_labels(frame, tasks) if tasks else None
    for start in range(0, len(frame), batch_size):
        rows = slice(start, start + batch_size)
        yield Batch(
            to_device(take(inputs, rows), device),
            None if labels is None else labels[rows].to(device),
            start,
        )
