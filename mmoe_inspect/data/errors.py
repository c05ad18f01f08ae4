"""The evaluation data's errors: `DataError` and one subclass per kind of fault, each a one-line message."""

from __future__ import annotations

from collections.abc import Sequence

from mmoe_inspect.errors import MmoeInspectError

__all__ = [
    "DataError",
    "DataFileError",
    "EmptyDataError",
    "IdRangeError",
    "LabelValueError",
    "MissingColumnError",
    "NonFiniteError",
    "NonNumericError",
    "ValueRangeError",
]


class DataError(MmoeInspectError, ValueError):
    """The evaluation data cannot be used as given (missing file or columns, empty, NaN features)."""


class DataFileError(DataError):
    """The data path is missing, of an unsupported kind, or not a readable parquet/CSV file."""


class EmptyDataError(DataError):
    """The data holds no rows (an empty file, a header-only CSV, a zero-row parquet file)."""


class MissingColumnError(DataError):
    """Columns the model (or `--labels`/`--features`) needs are not in the data; `.missing` lists them."""

    def __init__(self, message: str, missing: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.missing = tuple(missing)


class NonNumericError(DataError):
    """A feature or label column holds text (or other non-numeric values)."""


class NonFiniteError(DataError):
    """A feature column holds NaN or inf (labels may be missing; features may not)."""


class ValueRangeError(DataError):
    """A feature column holds finite values the model's input dtype (float32) cannot hold."""


class LabelValueError(DataError):
    """A binary task's label column holds values other than 0 and 1 (NaN = missing is allowed)."""


class IdRangeError(DataError):
    """A categorical id column holds ids outside the model's embedding table (or non-integer ids)."""
