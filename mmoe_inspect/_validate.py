"""Range checks for configuration dataclasses: one line naming the field, its valid range and the value.

A config with a bad value fails where it is built (`__post_init__`), not deep inside a run with a
message about something else (`InspectConfig(batch_size=0)` used to fail with "range() arg 3 must
not be zero"). The errors are `ValueError`s (a `TypeError` for a value of the wrong kind), so the
CLI shows them as one line.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any


def check_number(
    owner: str,
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    integer: bool = False,
    optional: bool = False,
) -> None:
    """Raise unless `value` is a number (not NaN) in the range (`low`, `high`; `low_open`: `low` excluded).

    `integer`: an int is required (a bool is refused everywhere). `optional`: None is allowed too.
    The message reads like "InspectConfig.batch_size must be an integer >= 1, got 0".
    """
    if value is None and optional:
        return
    kind = "an integer" if integer else "a number"
    want = f"{kind} {_range(low, high, low_open)}".rstrip() + (" or None" if optional else "")
    wrong_type = isinstance(value, bool) or not isinstance(value, Integral if integer else Real)
    if wrong_type:
        raise TypeError(f"{owner}.{name} must be {want}, got {value!r} ({type(value).__name__})")
    v = float(value)
    bad = (
        math.isnan(v)
        or (low is not None and (v <= low if low_open else v < low))
        or (high is not None and v > high)
    )
    if bad:
        raise ValueError(f"{owner}.{name} must be {want}, got {value!r}")


def _num(x: float) -> str:
    """A bound as written: whole numbers in full (16777216, not 1.67772e+07), others short (%g)."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e18 else f"{x:g}"


def _range(low: float | None, high: float | None, low_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_num(low)}, {_num(high)}]"
    if low is not None:
        return f"{'>' if low_open else '>='} {_num(low)}"
    if high is not None:
        return f"<= {_num(high)}"
    return ""
