"""DeepCTR-Torch (`deepctr_torch.models.multitask`: MMOE, PLE, SharedBottom, ESMM).

Input: ONE float tensor whose columns follow `model.feature_index` (`{name: (start, end)}`):
`SparseFeat` ids (as floats) in one column, `DenseFeat` in `dimension` columns, `VarLenSparseFeat`
in `maxlen` columns (a list cell per row) plus its optional length column. Output: `[batch, n_tasks]`
probabilities (regression tasks raw) named by `model.task_names`. Quirk: `model.device` is a string
fixed at construction that `.to()` does not update, and the forward builds tensors on it.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mmoe_inspect.data.inputs import InputColumn
from mmoe_inspect.loading.adapters.base import Adapter, register

ESMM_TASKS = ("ctr", "ctcvr")  # DeepCTR-Torch's ESMM outputs [ctr, ctr * cvr]


def columns(model: nn.Module) -> tuple[InputColumn, ...]:
    index = getattr(model, "feature_index", None) or {}
    feats = {}
    for f in [*getattr(model, "dnn_feature_columns", []), *getattr(model, "linear_feature_columns", [])]:
        feats.setdefault(f.name, f)
    out = []
    for name, (start, end) in index.items():
        f = feats.get(name)
        kind = type(f).__name__
        width = int(end - start)
        if kind == "SparseFeat":
            out.append(InputColumn(name, "int64", width, int(f.vocabulary_size)))
        elif kind == "VarLenSparseFeat":
            out.append(InputColumn(name, "int64", width, int(f.sparsefeat.vocabulary_size)))
        elif kind == "DenseFeat":
            out.append(InputColumn(name, "float32", width))
        else:  # a VarLenSparseFeat's length column
            out.append(InputColumn(name, "int64", width))
    return tuple(out)


def task_names(model: nn.Module) -> Sequence[str] | None:
    names = getattr(model, "task_names", None)
    if isinstance(names, (list, tuple)):
        return [str(n) for n in names]
    return ESMM_TASKS if type(model).__name__ == "ESMM" else None  # ESMM keeps no task_names


def task_kinds(model: nn.Module) -> Sequence[str] | None:
    outs = getattr(model, "out", None)
    n = n_tasks(model)
    if isinstance(outs, nn.ModuleList) and len(outs) == n:
        return [str(getattr(o, "task", "binary")) for o in outs]
    if isinstance(outs, nn.Module) and n is not None:  # ESMM: one output layer for both tasks
        return [str(getattr(outs, "task", "binary"))] * n
    return None


def n_tasks(model: nn.Module) -> int | None:
    n = getattr(model, "num_tasks", None)
    return int(n) if isinstance(n, int) else None


ADAPTER = register(
    Adapter(
        name="deepctr-torch",
        module="deepctr_torch",
        columns=columns,
        input="tensor",
        task_names=task_names,
        task_kinds=task_kinds,
        n_tasks=n_tasks,
        device_attribute=True,
        models=("MMOE", "PLE", "SharedBottom", "ESMM"),
    )
)
