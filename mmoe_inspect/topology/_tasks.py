"""Find the per-task predictions in a model's output, name them and tell binary from regression."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mmoe_inspect.data.call import is_two_class, plain_output
from mmoe_inspect.topology._graphops import norm_dim, view_parent
from mmoe_inspect.topology._trace import Graph, Ref
from mmoe_inspect.topology.spec import TaskKind, TaskSpec, TopologyError

_KIND_ALIASES = {
    "binary": "binary",
    "classification": "binary",
    "classfication": "binary",  # torch-rechub's docstring spelling
    "regression": "regression",
}


@dataclass
class TaskOutput:
    """One task's prediction `[batch]` (grad-connected), where it sits in the output, and its node."""

    name: str
    output: str | int | None
    tensor: torch.Tensor
    node: int | None
    column: int = 0


def _per_row(t: Any, batch: int) -> bool:
    """A prediction per row: `[batch]` or `[batch, 1]`."""
    return isinstance(t, torch.Tensor) and t.ndim in (1, 2) and t.shape[0] == batch and t.numel() == batch


def _column_node(graph: Graph, idx: int | None, col: int) -> int | None:
    """The node producing column `col` of a `[batch, T]` output built by `cat(..., dim=1)`."""
    if idx is None:
        return None
    node = graph.nodes[idx]
    if node.op != "cat" or norm_dim(node.arg(1, "dim", 0), node.ndim) != 1:
        return None
    seq = node.arg(0, "tensors")
    start = 0
    for r in seq if isinstance(seq, (list, tuple)) else ():
        if not isinstance(r, Ref):
            return None
        part = graph.nodes[r.node]
        width = part.shape[1] if part.ndim > 1 else 1
        if start <= col < start + width:
            return r.node if width == 1 else None
        start += width
    return None


def parse_outputs(
    graph: Graph, out: Any, names: Sequence[str] | None, model: nn.Module, notes: list[str]
) -> tuple[list[TaskOutput], bool]:
    """Per-task predictions of `out`; returns them and whether task names were invented (task_0...)."""
    batch = graph.batch_size
    out = plain_output(out)
    found: list[tuple[str | None, str | int | None, torch.Tensor, int | None]] = []
    columns: dict[int, int] = {}  # found index -> column of a two-class entry
    if isinstance(out, torch.Tensor):
        node = graph.current.get(id(out))
        if out.ndim == 1 and out.shape[0] == batch:
            found.append((None, None, out, node))
        elif out.ndim == 2 and out.shape[0] == batch:
            for j in range(out.shape[1]):
                found.append((None, j, out[:, j], _column_node(graph, node, j)))
        else:
            raise TopologyError(
                f"model output has shape {list(out.shape)}; expected [batch] or [batch, n_tasks]"
            )
    elif isinstance(out, Mapping):
        for key, v in out.items():
            if _per_row(v, batch):
                found.append((str(key), key, v.reshape(-1), graph.current.get(id(v))))
            elif is_two_class(v, batch):
                found.append((str(key), key, v[:, 1], graph.current.get(id(v))))
                columns[len(found) - 1] = 1
            else:
                shape = list(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                notes.append(f"output {key!r} ({shape}) is not one prediction per row; not a task")
    elif isinstance(out, (list, tuple)):
        for j, v in enumerate(out):
            if _per_row(v, batch):
                found.append((None, j, v.reshape(-1), graph.current.get(id(v))))
            elif is_two_class(v, batch):
                found.append((None, j, v[:, 1], graph.current.get(id(v))))
                columns[len(found) - 1] = 1
            else:
                shape = list(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                notes.append(f"output position {j} ({shape}) is not one prediction per row; not a task")
    if not found:
        raise TopologyError(
            f"could not find per-task predictions in the model output ({type(out).__name__}); "
            "expected a dict of [batch] tensors, a [batch, n_tasks] tensor or a list of [batch] tensors"
        )
    invented = False
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != len(found):
            raise TopologyError(
                f"task_names has {len(names)} names but the model output holds {len(found)} tasks"
            )
    elif all(f[0] is not None for f in found):
        names = [str(f[0]) for f in found]
    else:
        attr = getattr(model, "task_names", None)
        if (
            isinstance(attr, (list, tuple))
            and len(attr) == len(found)
            and all(isinstance(a, str) for a in attr)
        ):
            names = list(attr)
        else:
            names = [f"task_{i}" for i in range(len(found))]
            invented = True
            notes.append(
                f"task names not given and the model has no `task_names`: called them {', '.join(names)}"
            )
    if columns:
        notes.append(
            f"{len(columns)} output(s) are two-class distributions [batch, 2]: column 1 (the positive class) "
            "is taken as the prediction"
        )
    tasks = [
        TaskOutput(n, f[1], f[2], f[3], columns.get(i, 0))
        for i, (n, f) in enumerate(zip(names, found, strict=True))
    ]
    return tasks, invented


def _kinds_from(value: Any, names: list[str], what: str) -> list[str] | None:
    """Normalized kinds ("binary"/"regression") from a list in task order or a {task: kind} mapping."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        missing = [n for n in names if n not in value]
        if missing:
            raise TopologyError(f"{what} has no kind for tasks {missing}")
        raw = [value[n] for n in names]
    elif isinstance(value, (list, tuple)):
        if len(value) != len(names):
            raise TopologyError(
                f"{what} has {len(value)} entries but the model output holds {len(names)} tasks"
            )
        raw = list(value)
    else:
        raise TopologyError(f"{what} must be a list of kinds or a {{task: kind}} mapping")
    out = []
    for r in raw:
        kind = _KIND_ALIASES.get(str(r).lower())
        if kind is None:
            raise TopologyError(f"{what}: unknown task kind {r!r} (use 'binary' or 'regression')")
        out.append(kind)
    return out


def _ends_in_sigmoid(graph: Graph, idx: int | None, depth: int = 0) -> bool:
    """Whether node `idx` is a sigmoid output (through view-like ops), or a product of such outputs: ESMM's
    pCTCVR = pCTR x pCVR (and ESCM²'s, AITM-style chains) is a probability of a binary event too."""
    while idx is not None:
        node = graph.nodes[idx]
        if node.op == "sigmoid":
            return True
        if node.op == "mul" and depth < 4:
            refs = [a.node for a in node.args if isinstance(a, Ref)]
            return len(refs) == 2 and all(_ends_in_sigmoid(graph, r, depth + 1) for r in refs)
        idx = view_parent(graph, node)
    return False


def task_specs(
    graph: Graph,
    outputs: list[TaskOutput],
    task_kinds: Any,
    model: nn.Module,
    notes: list[str],
) -> tuple[tuple[TaskSpec, ...], bool]:
    """TaskSpecs for `outputs`; returns them and whether some kind was guessed from the value range."""
    names = [o.name for o in outputs]
    kinds = _kinds_from(task_kinds, names, "task_kinds")
    source = "task_kinds"
    if kinds is None:
        attr = getattr(model, "task_types", None)
        try:
            kinds = (
                _kinds_from(list(attr), names, "model.task_types")
                if isinstance(attr, (list, tuple))
                else None
            )
            source = "model.task_types"
        except TopologyError as exc:
            notes.append(f"ignored {exc}")
            kinds = None
    guessed: list[str] = []
    leaves_unit: list[str] = []
    specs = []
    sigmoid = [_ends_in_sigmoid(graph, o.node) for o in outputs]
    for i, o in enumerate(outputs):
        with torch.no_grad():
            vals = o.tensor.detach().float()
            in_unit = bool(torch.isfinite(vals).all() and vals.min() >= 0 and vals.max() <= 1)
        if kinds is not None:
            kind = kinds[i]
        elif sigmoid[i]:
            kind = "binary"
        elif any(sigmoid):
            kind = "regression"  # its siblings end in a sigmoid, this one does not
            if not in_unit:  # named, so 0/1 labels can still make it a binary task's logits (binding)
                leaves_unit.append(f"{o.name}={kind}")
        else:
            kind = "binary" if in_unit else "regression"
            guessed.append(f"{o.name}={kind}")
        prob = kind == "binary" and in_unit
        k: TaskKind = "binary" if kind == "binary" else "regression"
        specs.append(TaskSpec(o.name, kind=k, output=o.output, probability=prob, column=o.column))
    if kinds is not None:
        notes.append(f"task kinds from {source}")
    elif any(sigmoid) and not all(sigmoid):
        notes.append("task kinds from the outputs: a final sigmoid means binary, none means regression")
    if guessed or leaves_unit:
        notes.append(GUESSED_KINDS_NOTE + ", ".join(guessed + leaves_unit))
    return tuple(specs), bool(guessed)


GUESSED_KINDS_NOTE = "task kinds guessed from output ranges (values in [0, 1] -> binary): "
"""The topology note naming the tasks whose kind discovery guessed from the example's outputs (`name=kind`)."""


def guessed_kinds(notes: Sequence[str]) -> dict[str, str]:
    """`{task: kind}` of the tasks a topology's `notes` say discovery guessed (`GUESSED_KINDS_NOTE`)."""
    out: dict[str, str] = {}
    for note in notes:
        if note.startswith(GUESSED_KINDS_NOTE):
            for item in note[len(GUESSED_KINDS_NOTE) :].split(", "):
                name, _, kind = item.rpartition("=")
                if name:
                    out[name] = kind
    return out


NO_TASK_NOTE = "gates whose mixture reaches no task output on this batch (kept as shared): "
"""The topology note naming the gates discovery could not follow to any task output (autograd could not:
`no_grad`, `detach`, quantized layers on the way): their task is unknown, not shared by design."""


def untraced_gates(notes: Sequence[str]) -> set[str]:
    """Names of the gates a topology's `notes` say reach no task output (`NO_TASK_NOTE`)."""
    out: set[str] = set()
    for note in notes:
        if note.startswith(NO_TASK_NOTE):
            out.update(n.strip() for n in note[len(NO_TASK_NOTE) :].split(", ") if n.strip())
    return out
