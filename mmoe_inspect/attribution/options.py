"""`AttributionOptions`: what `inspect(attribution=...)` asks of the feature attributions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["AttributionOptions"]


@dataclass(frozen=True)
class AttributionOptions:
    """Options of `mmoe_inspect.attribution.run_attribution` when it runs inside `inspect()`.

    `budget_seconds` bounds the run (None: no limit), `sample_rows` the rows attributed; any other
    `run_attribution` keyword goes in `extra`.
    """

    budget_seconds: float | None = 30.0
    sample_rows: int = 256
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.budget_seconds is not None and self.budget_seconds < 0:
            raise ValueError(f"budget_seconds must be >= 0 or None, got {self.budget_seconds}")
        if self.sample_rows < 1:
            raise ValueError(f"sample_rows must be >= 1, got {self.sample_rows}")

    @classmethod
    def of(cls, value: bool | Mapping[str, Any] | AttributionOptions | None) -> AttributionOptions | None:
        """`inspect(attribution=...)`'s value as options (False/None: they do not run)."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, AttributionOptions):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(
                f"attribution must be a bool, a dict or AttributionOptions, not {type(value).__name__}"
            )
        known = {f.name for f in fields(cls)} - {"extra"}
        given = dict(value)
        return cls(
            **{k: given.pop(k) for k in list(given) if k in known},
            extra={**dict(given.pop("extra", None) or {}), **given},
        )
