"""`AttributionOptions`: what `inspect(attribution=...)` asks of the feature attributions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mmoe_inspect._options import options_of

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
        return options_of(cls, value, "attribution")
