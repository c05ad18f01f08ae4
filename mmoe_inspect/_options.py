"""`options_of`: the one reading of an analysis switch (`inspect(causal=...)`, `attribution=...`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["options_of"]


def options_of(cls: type[T], value: Any, what: str) -> T | None:
    """`value` as options of dataclass `cls`: False/None -> None (the analysis does not run), True ->
    defaults, an instance as is, a dict -> its known fields, the other keys in `extra`."""
    if value is None or value is False:
        return None
    if value is True:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a bool, a dict or {cls.__name__}, not {type(value).__name__}")
    known = {f.name for f in fields(cls)} - {"extra"}  # type: ignore[arg-type]
    given = dict(value)
    return cls(
        **{k: given.pop(k) for k in list(given) if k in known},
        extra={**dict(given.pop("extra", None) or {}), **given},
    )
