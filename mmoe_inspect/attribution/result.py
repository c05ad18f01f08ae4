"""`AttributionResult`: feature attributions of gates, experts and tasks, as pandas tables plus notes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmoe_inspect.tabular import json_safe, save_tables, table_records
from mmoe_inspect.topology.spec import Topology

TABLE_DESCRIPTIONS: dict[str, str] = {
    "gate_attributions": "Per (gate, expert, feature): mean |attribution| and mean signed attribution of the "
    "gate's weight on that expert over the sampled rows; share = the feature's part of the (gate, expert) total.",
    "gate_features": "Per (gate, feature): mean |attribution| summed over the gate's experts, its share of the "
    "gate's total and its rank (1 = drives the gate most; empty where the attribution is 0: no order among ties).",
    "expert_attributions": "Per (expert, feature): attribution of the L2 norm of the expert's output.",
    "task_attributions": "Per (task, feature): attribution of the task's prediction (as the model returns it).",
    "gate_task_agreement": "Per task gate: Spearman correlation between the features driving the gate and those "
    "driving its task's prediction, and the overlap of their top features.",
    "convergence": "Per (target, output): Integrated Gradients' convergence delta (sum of attributions minus "
    "f(x) - f(baseline)), relative to the attribution sum; flagged when above the tolerance.",
}

GATE_COLUMNS = ["gate", "task", "level", "expert", "feature", "mean_abs", "mean_signed", "share"]
GATE_FEATURE_COLUMNS = ["gate", "task", "level", "feature", "mean_abs", "share", "rank"]
EXPERT_COLUMNS = ["expert", "owner", "feature", "mean_abs", "mean_signed", "share"]
TASK_COLUMNS = ["task", "feature", "mean_abs", "mean_signed", "share"]
AGREEMENT_COLUMNS = ["gate", "task", "rank_correlation", "top_overlap", "gate_top", "task_top"]
CONVERGENCE_COLUMNS = [
    "kind",
    "target",
    "output",
    "method",
    "n_rows",
    "n_steps",
    "change_mean_abs",
    "sum_mean_abs",
    "delta_mean_abs",
    "delta_max_abs",
    "relative_delta",
    "flagged",
]


@dataclass
class AttributionResult:
    """What `run_attribution` found. Tables hold only the targets it covered (see `covered`/`skipped`).

    `per_row` keeps the raw attributions per target (`"gate:click"` → `[rows, n_outputs, n_features]`,
    feature order `features`) of the sampled rows `rows` (positions in the data), for plots and checks.
    `topology` is the one the targets came from (declared, spec file or discovered).
    """

    gate_attributions: pd.DataFrame
    gate_features: pd.DataFrame
    expert_attributions: pd.DataFrame
    task_attributions: pd.DataFrame
    gate_task_agreement: pd.DataFrame
    convergence: pd.DataFrame
    features: tuple[str, ...]
    rows: np.ndarray
    covered: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    per_row: dict[str, np.ndarray] = field(default_factory=dict)
    topology: Topology | None = None

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        """Every result table by name (the keys of `TABLE_DESCRIPTIONS`)."""
        return {name: getattr(self, name) for name in TABLE_DESCRIPTIONS}

    @property
    def complete(self) -> bool:
        """True when every requested target was attributed within the budget."""
        return not self.skipped

    @property
    def flagged(self) -> list[str]:
        """Targets (`"gate:click"`, ...) whose convergence delta is large: add `n_steps`."""
        conv = self.convergence
        if conv.empty:
            return []
        bad = conv[conv["flagged"]]
        return list(dict.fromkeys(f"{k}:{t}" for k, t in zip(bad["kind"], bad["target"], strict=True)))

    def top_features(self, gate: str, k: int = 5) -> list[str]:
        """The `k` features that drive `gate` most (by summed mean |attribution| over its experts)."""
        frame = self.gate_features[self.gate_features["gate"] == gate]
        frame = frame[frame["rank"].notna()].sort_values("rank")  # no rank: attribution 0 or not finite
        return list(frame["feature"].head(k))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: tables as records (NaN → None), coverage, notes, meta (no per-row arrays)."""
        return {
            "n_rows": len(self.rows),
            "features": list(self.features),
            "covered": list(self.covered),
            "skipped": list(self.skipped),
            "notes": list(self.notes),
            "meta": json_safe(self.meta),
            "tables": table_records(self.tables),
        }

    def save_tables(self, folder: str | Path) -> list[Path]:
        """Write every non-empty table as `attribution_<name>.csv` into `folder`; returns the paths."""
        return save_tables(self.tables, folder, prefix="attribution_")
