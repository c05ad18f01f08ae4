"""mmoe-inspect's own reference models (`mmoe_inspect.models`: SharedBottom, OMoE, MMoE, PLE, CGC).

Input: one float32 tensor `[batch, n_dense]` when all features are dense, else a dict (float32 dense,
int64 categorical ids); features, tasks and gates come from the model's `config` and `topology()`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mmoe_inspect.data.inputs import InputColumn, InputMode
from mmoe_inspect.loading.adapters.base import Adapter, register


def columns(model: nn.Module) -> tuple[InputColumn, ...]:
    spec = model.config.features
    dense = [InputColumn(n, "float32") for n in spec.dense]
    return (*dense, *(InputColumn(c.name, "int64", 1, int(c.cardinality)) for c in spec.categorical))


def input_mode(model: nn.Module) -> InputMode:
    return "dict" if model.config.features.categorical else "tensor"


def task_names(model: nn.Module) -> Sequence[str]:
    return [t.name for t in model.config.tasks]


def task_kinds(model: nn.Module) -> Sequence[str]:
    return [t.kind for t in model.config.tasks]


ADAPTER = register(
    Adapter(
        name="mmoe-inspect",
        module="mmoe_inspect.models",
        columns=columns,
        input=input_mode,
        task_names=task_names,
        task_kinds=task_kinds,
        n_tasks=lambda m: len(m.config.tasks),
        models=("SharedBottom", "OMoE", "MMoE", "PLE", "CGC"),
    )
)
