"""Reference multi-task models with declared topologies: SharedBottom, OMoE, MMoE, PLE, CGC.

All take `features` (a `FeatureSpec`, or an int n for dense inputs x0..x{n-1}) and `tasks`
(`TaskSpec`s, `(name, kind)` pairs or names), accept a dict `{feature: tensor [batch]}` (or a float
tensor `[batch, n_dense]` without categorical features), and return `{task: tensor [batch]}`:
probabilities for binary tasks, raw values for regression tasks.
"""

from __future__ import annotations

from mmoe_inspect.models._base import MultiTaskModel
from mmoe_inspect.models._layers import MLP, FeatureInput, Gate, ModelInput, Tower, mix, stack_experts
from mmoe_inspect.models.build import ARCHITECTURES, build_model
from mmoe_inspect.models.config import ModelConfig, TaskLike, as_features, as_tasks
from mmoe_inspect.models.moe import MMoE, OMoE
from mmoe_inspect.models.ple import CGC, PLE, ExtractionLevel
from mmoe_inspect.models.shared_bottom import SharedBottom

__all__ = [
    "ARCHITECTURES",
    "CGC",
    "MLP",
    "PLE",
    "ExtractionLevel",
    "FeatureInput",
    "Gate",
    "MMoE",
    "ModelConfig",
    "ModelInput",
    "MultiTaskModel",
    "OMoE",
    "SharedBottom",
    "TaskLike",
    "Tower",
    "as_features",
    "as_tasks",
    "build_model",
    "mix",
    "stack_experts",
]
