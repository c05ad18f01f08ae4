"""Data rows → model inputs, and the small parsers behind `--features`, `--tasks`, `--labels`.

Two input conventions cover the libraries (the adapter says which; `--input` overrides it):

- "dict": `{column: tensor}`: `[batch]` int64 ids for categorical columns, `[batch]` float32 for
  dense ones, `[batch, L]` for list cells (sequence features);
- "tensor": ONE float32 tensor `[batch, sum of widths]`, columns in the given order, a list cell
  spreading over `width` columns (DeepCTR-Torch's `feature_index` layout; ids travel as floats).

`--collate module:function` replaces both: the function gets the pandas chunk and returns the input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from mmoe_inspect.data.columns import F32_MAX
from mmoe_inspect.data.door import check_column_types
from mmoe_inspect.data.errors import ValueRangeError
from mmoe_inspect.data.sources import DataError, IdRangeError, NonFiniteError, check_numeric
from mmoe_inspect.errors import first_line

InputMode = Literal["dict", "tensor"]
INPUT_MODES: tuple[InputMode, ...] = ("dict", "tensor")


class InputMappingError(DataError):
    """How data columns become model inputs cannot be worked out, or a `--features/--labels` value is malformed."""


@dataclass(frozen=True)
class InputColumn:
    """One data column the model reads.

    `dtype` "int64" (ids) or "float32"; None = from the data (integers become int64 ids in dict mode).
    `width` is the number of values per row: 1 for a scalar cell, n for a list cell of length n,
    None for a list cell of any (uniform) length. Ids must lie in `[0, cardinality)` when it is set.
    """

    name: str
    dtype: Literal["int64", "float32"] | None = None
    width: int | None = 1
    cardinality: int | None = None


@dataclass(frozen=True)
class FrameInputs:
    """Callable: a pandas chunk `[batch rows]` → model input (dict of `[batch]` tensors, or `[batch, D]`).

    Usable as `inspect(model, data, input_fn=fn, columns=fn.names)`. Every call checks that the
    columns are numeric and finite and that ids fit the embedding tables (`DataError` subclasses).
    """

    columns: tuple[InputColumn, ...]
    mode: InputMode

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def __call__(self, frame: pd.DataFrame) -> torch.Tensor | dict[str, torch.Tensor]:
        # declared dense columns take no categories; only untyped or list-width columns take lists
        ids = [c.name for c in self.columns if c.dtype != "float32"]
        lists = [c.name for c in self.columns if c.width != 1 or c.dtype is None]
        check_column_types(frame, self.names, "the data", ids=ids, lists=lists)
        check_numeric(frame, self.names, "the data")
        arrays = [_column(frame, c) for c in self.columns]
        if self.mode == "dict":
            return {
                c.name: torch.from_numpy(_as_dtype(a, c, dict_mode=True))
                for c, a in zip(self.columns, arrays, strict=True)
            }
        blocks = [
            _as_dtype(a, c, dict_mode=False).reshape(len(frame), -1)
            for c, a in zip(self.columns, arrays, strict=True)
        ]
        return torch.from_numpy(np.concatenate(blocks, axis=1) if blocks else np.zeros((len(frame), 0), "f4"))


@dataclass(frozen=True)
class GroupedInputs:
    """Callable: a pandas chunk → a tuple of tensors, one per group of columns, for models whose forward
    takes several tensors (`forward(categorical, numerical)`) or one tuple of them.

    A group of integer columns becomes int64 `[batch, n]`, of float columns float32 `[batch, n]`; a group
    marked `flat` (one column bound to a parameter of its name) is `[batch]`. The model input follows
    the call convention of `mmoe_inspect.data.call.call_model` (a tuple means positional arguments):
    `packing="args"` returns the tensors themselves (`model(t0, t1)`), `packing="tuple"` a 1-tuple
    holding them (`model((t0, t1))`). `names` lists every column, group by group.
    """

    groups: tuple[tuple[InputColumn, ...], ...]
    packing: Literal["args", "tuple"] = "args"
    flat: tuple[bool, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for g in self.groups for c in g)

    def __call__(self, frame: pd.DataFrame) -> tuple[Any, ...]:
        check_numeric(frame, self.names, "the data")
        tensors = []
        for i, group in enumerate(self.groups):
            blocks = [_as_dtype(_column(frame, c), c, dict_mode=True).reshape(len(frame), -1) for c in group]
            arr = np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]
            if len({b.dtype for b in blocks}) > 1:
                arr = arr.astype(np.float32)
            if i < len(self.flat) and self.flat[i] and arr.shape[1] == 1:
                arr = arr[:, 0]
            tensors.append(torch.from_numpy(np.require(arr, None, ["C_CONTIGUOUS", "WRITEABLE"])))
        return tuple(tensors) if self.packing == "args" else (tuple(tensors),)


@dataclass(frozen=True)
class CollateInputs:
    """Callable: a pandas chunk → whatever the user's `--collate` function returns; `names` = columns it reads."""

    fn: Callable[[pd.DataFrame], Any]
    names: tuple[str, ...] | None = None

    def __call__(self, frame: pd.DataFrame) -> Any:
        try:
            return self.fn(frame)
        except DataError:
            raise
        except Exception as exc:  # the user's function: report it as bad input, not as our bug
            name = getattr(self.fn, "__qualname__", repr(self.fn))
            raise InputMappingError(
                f"--collate {name} failed on rows {frame.index[0]}..{frame.index[-1]}: "
                f"{type(exc).__name__}: {first_line(exc, default='')}"
            ) from exc


def _column(frame: pd.DataFrame, col: InputColumn) -> np.ndarray:
    """Column `col` as a numpy array `[rows]` or `[rows, width]`, checked finite and in id range."""
    s = frame[col.name]
    if isinstance(s.dtype, pd.CategoricalDtype):
        s = s.cat.codes
    if s.dtype.kind == "O":
        try:
            arr = np.stack([np.asarray(v) for v in s.to_numpy()])
        except ValueError:
            raise DataError(
                f"column {col.name!r} holds lists of different lengths; pad them to one length"
            ) from None
        if arr.dtype.kind not in "biuf":
            raise DataError(f"column {col.name!r} holds lists of non-numeric values")
        if col.width is not None and col.width != 1 and arr.shape[1:] != (col.width,):
            raise DataError(
                f"column {col.name!r} holds lists of length {arr.shape[1] if arr.ndim > 1 else 0}; "
                f"the model expects {col.width}"
            )
    else:
        arr = s.to_numpy()
        if col.width not in (1, None):
            raise DataError(
                f"column {col.name!r} holds one value per row; the model expects a list of {col.width}"
            )
    if arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = ~np.isfinite(arr).reshape(len(arr), -1).any(axis=1)
        raise NonFiniteError(
            f"feature column {col.name!r} has {int(bad.sum())} row(s) with NaN/inf "
            f"(first at row {frame.index[int(np.argmax(bad))]}); fill or drop them before inspecting"
        )
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 4 and col.cardinality is None:
        _check_float32_range(arr, col, frame.index)  # before the cast, which would warn and give inf
    if col.cardinality is not None and arr.size:
        _check_ids(arr, col, frame.index)
    return arr


def _check_float32_range(arr: np.ndarray, col: InputColumn, index: pd.Index) -> None:
    """Finite float64 values `[rows]` or `[rows, width]` beyond float32's range (they would become inf)."""
    big = np.abs(arr.reshape(len(arr), -1)) > F32_MAX
    if big.any():
        i = int(np.argmax(big.any(axis=1)))
        value = arr.reshape(len(arr), -1)[i][big[i]][0]
        raise ValueRangeError(  # worded as check_finite's (which names the file) for the same values
            f"feature column {col.name!r} has {int(big.sum())} value(s) beyond float32's range "
            f"(|x| > {F32_MAX:.3g}) (first at row {index[i]}: {value:.3g}); the model reads float32, where "
            "they would become inf: rescale or clip the column before inspecting"
        )


def _check_ids(arr: np.ndarray, col: InputColumn, index: pd.Index) -> None:
    flat = arr.reshape(len(arr), -1)
    if arr.dtype.kind == "f" and not (flat == np.round(flat)).all():
        raise IdRangeError(f"id column {col.name!r} holds non-integer values; ids must be whole numbers")
    bad = ((flat < 0) | (flat >= col.cardinality)).any(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        value = flat[i][(flat[i] < 0) | (flat[i] >= col.cardinality)][0]
        raise IdRangeError(
            f"id column {col.name!r} holds {value:g} (row {index[i]}) but the model's embedding has "
            f"{col.cardinality} rows (ids 0..{col.cardinality - 1}); re-encode the ids as in training"
        )


def _as_dtype(arr: np.ndarray, col: InputColumn, dict_mode: bool) -> np.ndarray:
    ids = col.dtype == "int64" or (col.dtype is None and arr.dtype.kind in "iu")
    dtype = np.int64 if dict_mode and ids else np.float32
    return np.require(arr, dtype, ["C_CONTIGUOUS", "WRITEABLE"])  # torch wants writable memory


def split_names(value: str | Sequence[str] | None, flag: str) -> list[str] | None:
    """`"a,b,c"` (or a list) → `["a", "b", "c"]`; empty entries and duplicates are errors."""
    if value is None:
        return None
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v) for v in value]
    if not items or any(not v for v in items):
        raise InputMappingError(f"{flag} {value!r} must be comma-separated names without empty entries")
    dupes = sorted({v for v in items if items.count(v) > 1})
    if dupes:
        raise InputMappingError(f"{flag} names {dupes} more than once")
    return items


def parse_labels(value: str | Mapping[str, str] | None) -> dict[str, str] | None:
    """`"click=is_click,buy=is_buy"` (or a mapping) → `{"click": "is_click", "buy": "is_buy"}` (task → column)."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    if not isinstance(value, str):
        raise InputMappingError(
            f"labels must be 'task=column,task=column' or a {{task: column}} mapping, not {type(value).__name__} "
            f"{value!r}"
        )
    out: dict[str, str] = {}
    for part in value.split(","):
        task, sep, column = (p.strip() for p in part.partition("="))
        if not sep or not task or not column:
            raise InputMappingError(f"--labels {value!r} must look like task=column,task=column")
        if task in out:
            raise InputMappingError(f"--labels names task {task!r} twice")
        out[task] = column
    return out


def with_names(columns: Sequence[InputColumn], names: Sequence[str] | None) -> tuple[InputColumn, ...]:
    """`names` (order and choice of `--features`) with what `columns` knows about each; new names untyped."""
    if names is None:
        return tuple(columns)
    known = {c.name: c for c in columns}
    return tuple(known.get(n, InputColumn(n)) for n in names)
