"""`CausalResult`: the causal analyses of one model on labelled data, as pandas tables plus notes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mmoe_inspect.causal.ablation import importance_matrix
from mmoe_inspect.tabular import json_safe, save_tables, table_records
from mmoe_inspect.topology.spec import Topology

TABLE_DESCRIPTIONS: dict[str, str] = {
    "task_metrics": "Per task and metric: the intact model's value on the labelled rows with its CI.",
    "ablation": "Per (mode, expert, task, metric): importance = how much worse the task gets without the "
    "expert (positive = it hurts), with a paired CI (DeLong / CLT, or bootstrap: meta.intervals); p_value "
    "per cell, p_adjusted Holm-adjusted over the cells of one mode, significant = p_adjusted < 0.05 on "
    "enough rows (too_few_labels: fewer than 10 rows of a class).",
    "counterfactuals": "Per (task, counterfactual, metric): change vs the intact model when the task's gate "
    "is another task's, uniform, or its own mean gate, with a paired CI (meta.intervals).",
    "sparse_gains": "Per sparse task: share of its significant AUC importance on experts the dense tasks use, "
    "its top expert (only from an importance significantly above 0; else empty, and `note` says why), "
    "and its gate counterfactuals (AUC change).",
    "baseline_gains": "Per (task, baseline, metric): MTL gain = model - baseline (sign flipped for "
    "lower-is-better metrics), paired CI on the same rows (meta.intervals); never significant on fewer "
    "than 10 rows of a class (too_few_labels); the baseline's own interval and its at-chance / too-few "
    "verdict by the task table's rule.",
    "segments": "Per gate and segment of the chosen column: mean gate weights and JSD from the overall mean; "
    "beyond_noise = the difference exceeds the sampling noise of a random subset of that size (min_rows: "
    "the rows it would need), segments within noise listed after the others.",
}


@dataclass
class CausalResult:
    """What `run_causal` found. Tables are empty when their analysis did not run (see `notes`).

    `predictions` holds the per-row labels and predictions of the intact model and the baselines
    (`label:<task>`, `model:<task>`, `<baseline>:<task>`; row = position in the data), at most
    `max_rows` rows, so every number can be checked independently.
    """

    topology: Topology
    task_metrics: pd.DataFrame
    ablation: pd.DataFrame
    counterfactuals: pd.DataFrame
    sparse_gains: pd.DataFrame
    baseline_gains: pd.DataFrame
    segments: pd.DataFrame
    predictions: pd.DataFrame
    n_rows: int
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        """Every result table by name (the keys of `TABLE_DESCRIPTIONS`)."""
        return {name: getattr(self, name) for name in TABLE_DESCRIPTIONS}

    def importance(self, mode: str = "renormalize", metric: str | None = None) -> pd.DataFrame:
        """Task × expert importance matrix (default metric: AUC for binary tasks, MSE for regression)."""
        return importance_matrix(self.ablation, mode, metric)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: tables as records (NaN → None), notes, meta."""
        return {
            "n_rows": int(self.n_rows),
            "notes": list(self.notes),
            "meta": json_safe(self.meta),
            "tables": table_records(self.tables),
        }

    def save_tables(self, folder: str | Path) -> list[Path]:
        """Write every non-empty table as `causal_<name>.csv` into `folder`; returns the paths."""
        return save_tables(self.tables, folder, prefix="causal_")
