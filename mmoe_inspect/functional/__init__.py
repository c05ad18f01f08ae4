"""Pure tensor-in/tensor-out kernels for gate and expert statistics (the stats classes call these)."""

from __future__ import annotations

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
    "cv_squared",
    "effective_experts",
    "gate_entropy",
    "input_dependence",
    "js_divergence",
    "linear_cka",
    "linear_cka_from_moments",
    "row_hash",
    "splitmix64",
    "switch_balance",
    "task_expert_mutual_information",
    "total_variation",
    "xlogx",
]
