"""torch-rechub (`torch_rechub.models.multi_task`: MMOE, PLE, SharedBottom, ESMM, AITM).

Input: a dict `{feature name: tensor}`: `SparseFeature` ids int64 `[batch]`, `SequenceFeature`
padded ids int64 `[batch, L]` (a list cell per row), `DenseFeature` float32 `[batch]` (a list cell
when `embed_dim > 1`). Output: an unnamed `[batch, n_tasks]` tensor of probabilities (regression
tasks raw); ESMM returns `[cvr, ctr, ctcvr]`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mmoe_inspect.data.inputs import InputColumn
from mmoe_inspect.loading.adapters.base import Adapter, register

ESMM_TASKS = ("cvr", "ctr", "ctcvr")


def _features(model: nn.Module) -> list:
    feats = getattr(model, "features", None)
    if feats is None:  # ESMM
        feats = list(getattr(model, "user_features", [])) + list(getattr(model, "item_features", []))
    return list(feats)


def columns(model: nn.Module) -> tuple[InputColumn, ...]:
    out: dict[str, InputColumn] = {}
    for f in _features(model):
        kind = type(f).__name__
        if f.name in out:
            continue
        if kind == "SparseFeature":
            out[f.name] = InputColumn(f.name, "int64", 1, int(f.vocab_size))
        elif kind == "SequenceFeature":
            out[f.name] = InputColumn(f.name, "int64", None, int(f.vocab_size))
        else:
            width = int(getattr(f, "embed_dim", 1) or 1)
            out[f.name] = InputColumn(f.name, "float32", width)
    return tuple(out.values())


def task_names(model: nn.Module) -> Sequence[str] | None:
    return ESMM_TASKS if type(model).__name__ == "ESMM" else None


def task_kinds(model: nn.Module) -> Sequence[str] | None:
    types = getattr(model, "task_types", None)
    if isinstance(types, (list, tuple)):
        return ["binary" if str(t).lower().startswith("class") else str(t).lower() for t in types]
    n = n_tasks(model)
    return ["binary"] * n if n is not None else None  # ESMM and AITM: binary tasks only


def n_tasks(model: nn.Module) -> int | None:
    if type(model).__name__ == "ESMM":
        return len(ESMM_TASKS)
    types = getattr(model, "task_types", None)
    if isinstance(types, (list, tuple)):
        return len(types)
    n = getattr(model, "n_task", None)
    return int(n) if isinstance(n, int) else None


ADAPTER = register(
    Adapter(
        name="torch-rechub",
        module="torch_rechub",
        columns=columns,
        input="dict",
        task_names=task_names,
        task_kinds=task_kinds,
        n_tasks=n_tasks,
        models=("MMOE", "PLE", "SharedBottom", "ESMM", "AITM"),
    )
)
