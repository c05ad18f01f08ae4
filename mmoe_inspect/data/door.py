"""Types checked at the door: data columns the model cannot read as they are, refused by name.

A dense feature is one number per row. A column that holds something else would be silently bent
into numbers further down (a dictionary-encoded text column into its category codes, a list column
spread over the next input slots, a timestamp into nanoseconds), and the report would then describe a
model fed with garbage. So before a chunk `[rows, columns]` becomes model input, every column that
is not plainly numeric is looked at once and refused, naming the column, when it holds:

- dictionary-encoded values (a pandas categorical, an arrow dictionary) and the model does not
  declare the column a categorical (id) input: for a declared id column the category codes ARE ids;
- timestamps or durations;
- text (or bytes);
- records (struct cells);
- a list per row where the model reads one value per row.

Plain numeric columns (the common case) cost one look at the frame's dtypes per chunk. The range of
finite values (float64 beyond float32's range would become inf) is checked with the NaN/inf check in
`sources.check_finite`, which sees every feature column of every chunk.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import pandas as pd

from mmoe_inspect._text import printable
from mmoe_inspect.data.sources import NonNumericError, column_kinds


class ColumnTypeError(NonNumericError):
    """A feature column holds values of a type the model cannot read as declared (text, categories, dates, ...)."""


def check_column_types(
    frame: pd.DataFrame,
    columns: Sequence[str],
    source: str,
    *,
    ids: Collection[str] = (),
    lists: Collection[str] = (),
) -> None:
    """Refuse (one line, `ColumnTypeError`) the first of `columns` the model cannot read as it is.

    `ids`: the columns the model declares categorical (their dictionary codes are ids); `lists`:
    the columns that may hold a list per row (sequence features). Plainly numeric columns are
    skipped after one look at the frame's dtypes.
    """
    kinds = column_kinds(frame, columns)
    for name, kind in zip(columns, kinds, strict=True):
        if kind in "biuf" or name not in frame.columns:
            continue
        why = unusable(frame[name], ids=name in ids, lists=name in lists)
        if why is not None:
            raise ColumnTypeError(f"feature column {printable(name)!r} of {source} {why}")


def unusable(series: pd.Series, *, ids: bool = False, lists: bool = False) -> str | None:
    """Why `series` `[rows]` cannot feed the model as a dense (or, with `ids`, an id) column; None if it can."""
    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return None if ids else _dictionary(len(dtype.categories), dtype.categories[:1])
    arrow = _arrow_reason(dtype, ids=ids, lists=lists)
    if arrow is not None:
        return arrow or None
    kind = getattr(dtype, "kind", "O")
    if kind in "mM":
        return (
            f"holds timestamps or durations (dtype {dtype}); convert them to numbers (for example days "
            "since a fixed date) before inspecting"
        )
    if kind != "O":
        return None
    at = series.first_valid_index()
    if at is None:
        return None
    value = series.at[at]
    if isinstance(value, (str, bytes)):
        return (
            f"is not numeric (text such as {_show(value)} in row {at}); the model reads numbers: encode it (ids for "
            "a categorical feature of the model) before inspecting"
        )
    if isinstance(value, dict):
        return (
            f"holds records (struct cells) such as {_show(value)} (row {at}); put the numeric field the "
            "model reads in a column of its own"
        )
    if isinstance(value, (list, tuple, np.ndarray)) and not lists:
        return (
            f"holds a list of {len(value)} value(s) per row (row {at}) where the model reads one number "
            "per row; pick the value in a column of its own (or declare the column a sequence feature)"
        )
    return None


def _dictionary(n: int | None, first: Sequence[object]) -> str:
    example = f" such as {_show(first[0])}" if len(first) else ""
    what = "an arrow dictionary" if n is None else f"a categorical of {n} value(s){example}"
    return (
        f"is dictionary-encoded ({what}), and the model does not declare it "
        "a categorical input: read as a number it would become the category codes; decode it to its "
        "numeric values, or store integer ids and make it a categorical feature of the model"
    )


def _arrow_reason(dtype: object, *, ids: bool, lists: bool) -> str | None:
    """For a `pd.ArrowDtype` column: the refusal, "" when it is fine, None when not an arrow column."""
    pa_type = getattr(dtype, "pyarrow_dtype", None)
    if pa_type is None:
        return None
    import pyarrow as pa

    t = pa.types
    if t.is_dictionary(pa_type):
        return "" if ids else _dictionary(None, ())
    if t.is_timestamp(pa_type) or t.is_date(pa_type) or t.is_time(pa_type) or t.is_duration(pa_type):
        return (
            f"holds timestamps or durations (arrow type {pa_type}); convert them to numbers before inspecting"
        )
    if t.is_string(pa_type) or t.is_large_string(pa_type) or t.is_binary(pa_type):
        return f"holds text (arrow type {pa_type}); the model reads numbers: encode it before inspecting"
    if t.is_struct(pa_type) or t.is_map(pa_type):
        return f"holds records (arrow type {pa_type}); put the numeric field in a column of its own"
    if (t.is_list(pa_type) or t.is_large_list(pa_type) or t.is_fixed_size_list(pa_type)) and not lists:
        return f"holds a list per row (arrow type {pa_type}) where the model reads one number per row"
    return ""


def _show(value: object) -> str:
    text = printable(repr(value))
    return text if len(text) <= 40 else text[:37] + "..."
