"""Pure kernels: gate and expert statistics (tensor in/out, the stats classes call these) and the
closed-form metric intervals (numpy: DeLong for AUC, CLT for per-row loss means)."""

from __future__ import annotations

from mmoe_inspect.functional.delong import (
    AUCPlacements,
    auc_placements,
    delong_covariance,
    delong_interval,
    delong_paired_interval,
    delong_variance,
    midrank,
)
from mmoe_inspect.functional.paired import (
    mean_interval,
    normal_quantile,
    paired_difference_interval,
    wald_interval,
)
from mmoe_inspect.functional.routing import (
    cv_squared,
    effective_experts,
    gate_entropy,
    input_dependence,
    js_divergence,
    switch_balance,
    task_expert_mutual_information,
    total_variation,
    xlogx,
)
from mmoe_inspect.functional.sampling import row_hash, splitmix64
from mmoe_inspect.functional.similarity import linear_cka, linear_cka_from_moments

__all__ = [
    "AUCPlacements",
    "auc_placements",
    "cv_squared",
    "delong_covariance",
    "delong_interval",
    "delong_paired_interval",
    "delong_variance",
    "effective_experts",
    "gate_entropy",
    "input_dependence",
    "js_divergence",
    "linear_cka",
    "linear_cka_from_moments",
    "mean_interval",
    "midrank",
    "normal_quantile",
    "paired_difference_interval",
    "row_hash",
    "splitmix64",
    "switch_balance",
    "task_expert_mutual_information",
    "total_variation",
    "wald_interval",
    "xlogx",
]
