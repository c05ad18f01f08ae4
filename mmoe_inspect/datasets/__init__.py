"""Synthetic data sets: the MMoE paper's two-task regression benchmark and a small recommender log.

Both return pandas DataFrames with named feature and label columns; `frame.to_parquet(path)`
(pyarrow) stores them, and keeps `frame.attrs` (the recsys cardinalities) with the data.
"""

from __future__ import annotations

from mmoe_inspect.datasets.recsys import ATTRS_KEY, make_recsys, recsys_features, recsys_tasks
from mmoe_inspect.datasets.synthetic import make_synthetic, synthetic_features, synthetic_tasks

__all__ = [
    "ATTRS_KEY",
    "make_recsys",
    "make_synthetic",
    "recsys_features",
    "recsys_tasks",
    "synthetic_features",
    "synthetic_tasks",
]
