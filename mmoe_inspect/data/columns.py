"""Column checks on evaluation data: names (`require_columns`, `closest`), kinds, numeric and finite values.

Each check fails with one line naming the column, the rows and the fix (see `mmoe_inspect.data.errors`).
"""

from __future__ import annotations

import difflib
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mmoe_inspect.data.errors import MissingColumnError, NonFiniteError, NonNumericError, ValueRangeError

if TYPE_CHECKING:
    from mmoe_inspect.data.sources import TableSource

__all__ = [
    "F32_MAX",
    "check_features",
    "check_finite",
    "check_numeric",
    "closest",
    "column_kinds",
    "leading_columns",
    "require_columns",
]

F32_MAX = float(np.finfo(np.float32).max)  # larger finite float64 features would become inf as model input


def closest(name: str, candidates: Sequence[str]) -> str:
    """The suffix ` (did you mean 'x'?)` naming the candidates closest to `name` (difflib), or ""."""
    near = difflib.get_close_matches(name, [str(c) for c in candidates], n=2, cutoff=0.6)
    if not near:
        lowered = {str(c).lower(): str(c) for c in candidates}
        near = [lowered[name.lower()]] if name.lower() in lowered else []
    return f" (did you mean {' or '.join(repr(n) for n in near)}?)" if near else ""


def require_columns(source: TableSource, needed: Sequence[str], what: str = "feature") -> None:
    """Fail with one line naming the missing columns, the closest existing names and what the file has; for
    a parquet folder, a needed column (not a label) that some file lacks is refused naming that file."""
    names = source.columns()
    have = set(names)
    missing = [c for c in needed if c not in have]
    sep = next((c for c in (";", "\t", "|") if c in names[0]), None) if missing and len(names) == 1 else None
    if sep is not None:
        raise MissingColumnError(
            f"{source.name} has one column named {names[0][:60]!r}: its values are separated by {sep!r}, and "
            "mmoe-inspect reads comma-separated CSV; convert it (e.g. pandas.read_csv(path, sep=...).to_csv(...)) "
            "or save it as parquet",
            missing,
        )
    if missing:
        hints = "".join(f"; {c!r}{closest(c, names)}" for c in missing if closest(c, names))
        shown = ", ".join(sorted(have)[:12]) + (" ..." if len(have) > 12 else "")
        raise MissingColumnError(
            f"{source.name} lacks {what} column(s) {missing}{hints}; it has: {shown or 'no columns'}. "
            "Rename the columns or pass the right --labels/--features names.",
            missing,
        )
    if what != "label":  # a label some files of a folder lack reads as NaN there (labels may be partial)
        partial = source.partial_columns()
        lacking = [c for c in needed if c in partial]
        if lacking:
            raise MissingColumnError(
                f"{partial[lacking[0]]} lacks {what} column(s) {lacking} that other data files of "
                f"{source.name} have; every file of a folder needs the model's {what} columns",
                lacking,
            )


def check_segment_values(values: pd.Series, column: str, source: str) -> None:
    """Fail with one line when a segment column's values cannot name a segment (lists, dicts, arrays): each
    row needs one id or label."""
    bad = next((v for v in values if isinstance(v, (list, dict, set, np.ndarray))), None)
    if bad is None:
        try:
            pd.factorize(values)
            return
        except TypeError:
            bad = next((v for v in values if not isinstance(v, Hashable)), values.iloc[0])
    raise NonNumericError(
        f"segment column {column!r} of {source} holds {type(bad).__name__} values (such as {str(bad)[:40]!r}); "
        "--segment-by needs one id or label per row (a string or a number)"
    )


def column_kinds(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """The numpy kind letter of each of `columns` ("f" float, "i"/"u"/"b" integer/bool; "O" for the rest).

    One look at the frame's distinct dtypes in the common case, not one `frame.dtypes[c]` lookup per
    column, which would cost about a hundred lookups a batch on 100 features
    (`bench/results/small_ops.md`).
    """
    dtypes = frame.dtypes.tolist()
    distinct = {getattr(d, "kind", "O") for d in set(dtypes)}
    if len(distinct) == 1:
        return [distinct.pop()] * len(columns)
    kind = {c: getattr(d, "kind", "O") for c, d in zip(frame.columns, dtypes, strict=True)}
    return [kind.get(c, "O") for c in columns]


def leading_columns(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """`frame[columns]`, without copying the data when `columns` are the frame's first columns in order
    (as `inspect()` reads them: features, then labels); a copy otherwise (pandas' column take)."""
    names = list(columns)
    n = len(names)
    if frame.shape[1] >= n and frame.columns[:n].tolist() == names:
        return frame if frame.shape[1] == n else frame.iloc[:, :n]
    return frame[names]


def check_numeric(frame: pd.DataFrame, columns: Sequence[str], source: str, what: str = "feature") -> None:
    """Fail with one line when a column holds text or other non-numeric values (list cells are allowed)."""
    kinds = column_kinds(frame, columns)
    suspects = [c for c, k in zip(columns, kinds, strict=True) if k not in "biuf"]  # fast path: all numeric
    for c in suspects:
        s = frame[c]
        if isinstance(s.dtype, pd.CategoricalDtype) or s.dtype.kind in "biuf":
            continue
        if s.dtype.kind == "O" and len(s):
            first = s.iloc[0]
            if isinstance(first, (list, tuple, np.ndarray)):
                continue  # a sequence feature: one list of ids per row
        bad = s[pd.to_numeric(s, errors="coerce").isna() & s.notna()]
        example = f" such as {bad.iloc[0]!r} in row {bad.index[0]}" if len(bad) else ""
        raise NonNumericError(
            f"{what} column {c!r} of {source} is not numeric (dtype {s.dtype}){example}; "
            "encode it as numbers (ids for categorical features) before inspecting"
        )


def _as_floats(values: pd.DataFrame | pd.Series) -> np.ndarray:
    """The values as a numpy float array; pandas' nullable floats (`Float64`) with their NA as NaN (numpy would
    hold them as objects, whose comparison with NA raises)."""
    out = values.to_numpy()
    if out.dtype.kind == "O":
        out = values.to_numpy(dtype="float64", na_value=np.nan)
    return out


def check_finite(frame: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    """Fail with one line when a feature column holds NaN/inf (labels may be missing; features may not),
    or finite float64 values beyond float32's range (the model reads float32: they would become inf)."""
    floats = [c for c, k in zip(columns, column_kinds(frame, columns), strict=True) if k == "f"]
    if not floats:
        return
    # one vectorized pass in the common case (over a view of the frame's block when the features lead it);
    # for float64, |x| <= float32 max is false for NaN too, so one comparison checks both
    values = _as_floats(leading_columns(frame, floats))
    if values.dtype.itemsize <= 4:
        if np.isfinite(values).all():
            return
    elif (np.abs(values) <= F32_MAX).all():
        return
    for c in floats:
        values = _as_floats(frame[c])
        if values.dtype.kind != "f":
            continue
        span = f"rows {frame.index[0]}..{frame.index[-1]}"
        bad = ~np.isfinite(values)
        if bad.any():
            raise NonFiniteError(
                f"feature column {c!r} of {source} has {int(bad.sum())} NaN/inf value(s) in {span} "
                f"(first at row {frame.index[int(np.argmax(bad))]}); fill or drop them before inspecting"
            )
        if values.dtype.itemsize > 4:
            big = np.abs(values) > F32_MAX
            if big.any():
                i = int(np.argmax(big))
                raise ValueRangeError(
                    f"feature column {c!r} of {source} has {int(big.sum())} value(s) beyond float32's range "
                    f"(|x| > {F32_MAX:.3g}) in {span} (first at row {frame.index[i]}: {values[i]:.3g}); the "
                    "model reads float32, where they would become inf: rescale or clip the column before "
                    "inspecting"
                )


def check_features(frame: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    """Feature columns must be numeric and finite."""
    check_numeric(frame, columns, source)
    check_finite(frame, columns, source)
