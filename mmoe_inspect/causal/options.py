"""`CausalOptions`: what `inspect(causal=...)` asks of the causal analyses, checked before any pass."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mmoe_inspect._options import options_of

__all__ = ["CausalOptions"]


@dataclass(frozen=True)
class CausalOptions:
    """Options of `mmoe_inspect.causal.run_causal` when it runs inside `inspect()`.

    `baselines` maps a name to a model to compare against (`nn.Module`, `(model, input_fn)`,
    `causal.Baseline`, or a `LoadedModel` when inspecting through `LoadedModel.inspect`);
    `segment_by` names a data column for segment routing; `intervals` is "analytic" (DeLong for AUC,
    the CLT for per-row losses) or "bootstrap" (`n_boot` paired resamples of the rows); `max_rows`
    caps the rows evaluated (default: every row the inspection read, within `run_causal`'s memory
    budget, `extra={"memory_budget": bytes}`). Any other `run_causal` keyword goes in `extra`.
    """

    baselines: Mapping[str, Any] = field(default_factory=dict)
    segment_by: str | None = None
    n_boot: int = 200
    intervals: str = "analytic"
    max_rows: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.intervals not in ("analytic", "bootstrap"):
            raise ValueError(f"intervals must be 'analytic' or 'bootstrap', not {self.intervals!r}")
        if self.n_boot < 0:
            raise ValueError(f"n_boot must be >= 0, got {self.n_boot}")
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError(f"max_rows must be >= 1 or None, got {self.max_rows}")
        for reserved in ("model", "data", "topology", "input_fn", "columns", "labels", "progress"):
            if reserved in self.extra:
                raise ValueError(f"causal option {reserved!r} is set by inspect(); it cannot be passed")

    @classmethod
    def of(cls, value: bool | Mapping[str, Any] | CausalOptions | None) -> CausalOptions | None:
        """`inspect(causal=...)`'s value as options: False/None -> None, True -> defaults, a dict of
        `run_causal` keywords -> these options."""
        return options_of(cls, value, "causal")
