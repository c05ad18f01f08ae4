"""Streaming, exactly mergeable statistics of gates and experts (`torchmetrics.Metric` subclasses).

Every state is a float64/int64 SUM state (the gate reservoir merges by keeping the smallest row
keys), so `reset`, `merge_state` and distributed sync come from `torchmetrics.Metric` and merging
shards gives the same summary as one pass. ``compute()`` returns a frozen summary dataclass.
"""

from __future__ import annotations

from mmoe_inspect.stats.batched import update_gates
from mmoe_inspect.stats.expert import ExpertStats, ExpertSummary
from mmoe_inspect.stats.feed import StatsFeed
from mmoe_inspect.stats.gate import GateStats, GateSummary
from mmoe_inspect.stats.pairwise import PairwiseRoutingStats, PairwiseRoutingSummary

__all__ = [
    "ExpertStats",
    "ExpertSummary",
    "GateStats",
    "GateSummary",
    "PairwiseRoutingStats",
    "PairwiseRoutingSummary",
    "StatsFeed",
    "update_gates",
]
