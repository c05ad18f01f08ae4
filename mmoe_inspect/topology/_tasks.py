"""Find the per-task predictions in a model's output, name them and tell binary from regression."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mmoe_inspect.data.call import plain_output
from mmoe_inspect.data.outputs import (
    TASKS_FIRST_HINT,
    Locator,
    Prediction,
    find_predictions,
    names_of,
    tasks_first,
)
from mmoe_inspect.topology._graphops import norm_dim, picks_of, view_parent
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
    output: Locator
    tensor: torch.Tensor
    node: int | None
    column: int = 0
    rows_second: bool = False  # a row of a tasks-first `[T, batch]` entry (`column` is the row)


def _column_node(graph: Graph, idx: int | None, col: int) -> int | None:
    """The node producing column `col` of a `[batch, T]` output built by `cat(..., dim=1)` (or
    `stack(..., dim=1)` of `[batch]` predictions)."""
    if idx is None:
        return None
    node = graph.nodes[idx]
    if node.op not in ("cat", "stack") or norm_dim(node.arg(1, "dim", 0), node.ndim) != 1:
        return None
    seq = node.arg(0, "tensors")
    if node.op == "stack":
        part = seq[col] if isinstance(seq, (list, tuple)) and col < len(seq) else None
        return part.node if isinstance(part, Ref) else None
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


def _stacked_part(graph: Graph, idx: int | None, row: int) -> int | None:
    """The node of part `row` of a `stack(parts, dim=0)` output (through view-like ops: `[T, B, 1]`)."""
    while idx is not None and graph.nodes[idx].op != "stack":
        idx = view_parent(graph, graph.nodes[idx])
    if idx is None or norm_dim(graph.nodes[idx].arg(1, "dim", 0), graph.nodes[idx].ndim) != 0:
        return None
    seq = graph.nodes[idx].arg(0, "tensors")
    part = seq[row] if isinstance(seq, (list, tuple)) and row < len(seq) else None
    return part.node if isinstance(part, Ref) else None


def _prediction_node(graph: Graph, p: Prediction) -> int | None:
    """The node that made prediction `p`: its own tensor's, or, for a column of a `[batch, T]` entry, the
    `cat`/`stack` part that made that column (the entry's own node when a sigmoid made every column at once:
    each column ends in that sigmoid)."""
    if p.entry is None:
        return None
    node = graph.current.get(id(p.entry))
    if p.rows_second:  # row t of `stack(preds)` (dim 0): the t-th stacked prediction
        return _stacked_part(graph, node, p.column)
    if p.entry.ndim == 2 and p.entry.shape[1] > 1 and not p.column:
        step = p.loc[-1] if isinstance(p.loc, tuple) else p.loc
        col = _column_node(graph, node, int(step)) if isinstance(step, int) else None
        if col is None and node is not None and graph.nodes[node].op == "sigmoid":
            return node
        return col
    return node


def parse_outputs(
    graph: Graph, out: Any, names: Sequence[str] | None, model: nn.Module, notes: list[str]
) -> tuple[list[TaskOutput], bool]:
    """Per-task predictions of `out` (`data.outputs.find_predictions`: nested containers walked, entries
    without the batch axis such as an aux loss left out with a note); returns them and whether task names
    were invented (task_0...)."""
    batch = graph.batch_size
    plain = plain_output(out)
    if isinstance(plain, torch.Tensor) and not (
        (plain.ndim in (1, 2) and plain.shape[0] == batch) or tasks_first(plain, batch)
    ):
        raise TopologyError(
            f"model output has shape {list(plain.shape)}; expected [batch], [batch, n_tasks] or [n_tasks, batch]"
        )
    res = find_predictions(plain, batch)
    for what in res.skipped:
        notes.append(f"{what} is not one prediction per row; not a task")
    notes.extend(res.notes)
    if res.ignored and res.found:
        notes.append(
            f"ignored {len(res.ignored)} output entr{'y' if len(res.ignored) == 1 else 'ies'} without the batch "
            f"axis (an auxiliary loss or statistic, never a task): {', '.join(res.ignored)}"
        )
    if not res.found:
        first = next((w for w in res.skipped if TASKS_FIRST_HINT in w), None)
        if first is not None:
            raise TopologyError(f"the model output holds no per-row prediction: {first}")
        raise TopologyError(
            f"could not find per-task predictions in the model output ({type(plain).__name__}); "
            "expected a dict of [batch] tensors, a [batch, n_tasks] tensor or a list of [batch] tensors"
            " (nested, or next to an auxiliary loss, is fine)"
        )
    keys = names_of(res.found)
    found = [
        (key, p.loc, p.tensor, _prediction_node(graph, p)) for key, p in zip(keys, res.found, strict=True)
    ]
    columns = {i: p.column for i, p in enumerate(res.found) if p.column and not p.rows_second}
    rows = {i: p.column for i, p in enumerate(res.found) if p.rows_second}
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
            notes.append(INVENTED_NAMES_NOTE + ", ".join(names))
    if columns:
        notes.append(
            f"{len(columns)} output(s) are two-class distributions [batch, 2]: column 1 (the positive class) "
            "is taken as the prediction"
        )
    tasks = [
        TaskOutput(n, f[1], f[2], f[3], rows[i] if i in rows else columns.get(i, 0), i in rows)
        for i, (n, f) in enumerate(zip(names, found, strict=True))
    ]
    return tasks, invented


INVENTED_NAMES_NOTE = "task names not given and the model has no `task_names`: called them "
"""The topology note naming the tasks discovery named itself (task_0, task_1, ...): outputs without a name."""


def invented_names(notes: Sequence[str]) -> set[str]:
    """The task names a topology's `notes` say discovery made up (`INVENTED_NAMES_NOTE`)."""
    return {
        n
        for note in notes
        if note.startswith(INVENTED_NAMES_NOTE)
        for n in note[len(INVENTED_NAMES_NOTE) :].split(", ")
    }


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
        picked = picks_of(graph, node)  # a column of a sigmoid's output (`y[:, 0]` of `sigmoid([B, T])`)
        idx = view_parent(graph, node) if picked is None else picked[0]
    return False


def _sigmoid_siblings(outputs: list[TaskOutput], sigmoid: list[bool]) -> dict[int, str]:
    """`{i: name}`: output i (not ending in a sigmoid) of which another output, `name`, is the sigmoid on every
    example row (`{"logits_buy": z, "probs_buy": sigmoid(z)}`): output i is a binary task's logit, whatever
    its values' range. Equal values on every row, not a graph pattern: `1 / (1 + exp(-z))` counts too."""
    out: dict[int, str] = {}
    with torch.no_grad():
        values = [o.tensor.detach().float().reshape(-1) for o in outputs]
        for i, v in enumerate(values):
            if sigmoid[i] or not bool(torch.isfinite(v).all()):
                continue
            squashed = torch.sigmoid(v)
            for j, w in enumerate(values):
                if j != i and w.shape == v.shape and torch.allclose(squashed, w, rtol=0.0, atol=1e-6):
                    out[i] = outputs[j].name
                    break
    return out


def task_specs(
    graph: Graph,
    outputs: list[TaskOutput],
    task_kinds: Any,
    model: nn.Module,
    notes: list[str],
) -> tuple[tuple[TaskSpec, ...], bool]:
    """TaskSpecs for `outputs`; returns them and whether some kind was guessed from the value range.

    Without declared kinds: a final sigmoid means binary (probabilities); an output whose sigmoid is another
    output is a binary task's logits; with some output ending in a sigmoid, one that does not is regression;
    otherwise values in [0, 1] on the example mean binary. The guessed and the sigmoid-sibling regression
    kinds are named in notes (`guessed_kinds`): the binding settles them on more rows and the labels."""
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
    unsigmoided: list[str] = []
    specs = []
    sigmoid = [_ends_in_sigmoid(graph, o.node) for o in outputs]
    siblings = _sigmoid_siblings(outputs, sigmoid)
    for i, o in enumerate(outputs):
        with torch.no_grad():
            vals = o.tensor.detach().float()
            in_unit = bool(torch.isfinite(vals).all() and vals.min() >= 0 and vals.max() <= 1)
        prob = in_unit
        if kinds is not None:
            kind = kinds[i]
            prob = in_unit and i not in siblings  # a declared binary task's logit, even if in [0, 1] here
        elif sigmoid[i]:
            kind = "binary"
        elif i in siblings:
            kind, prob = "binary", False
        elif any(sigmoid):
            kind = "regression"  # its siblings end in a sigmoid, this one does not
            unsigmoided.append(o.name)  # named: 0/1 labels can still make it a binary task's logits (binding)
        else:
            kind = "binary" if in_unit else "regression"
            guessed.append(f"{o.name}={kind}")
        k: TaskKind = "binary" if kind == "binary" else "regression"
        specs.append(
            TaskSpec(
                o.name,
                kind=k,
                output=o.output,
                probability=k == "binary" and prob,
                column=o.column,
                rows_second=o.rows_second,
            )
        )
    if kinds is not None:
        notes.append(f"task kinds from {source}")
    elif unsigmoided:
        notes.append(SIGMOID_KINDS_NOTE + ", ".join(unsigmoided))
    if siblings and kinds is None:
        pairs = ", ".join(f"{outputs[i].name} (sigmoid: {s})" for i, s in siblings.items())
        notes.append(f"task(s) read as binary tasks' logits, another output being their sigmoid: {pairs}")
    if guessed:
        notes.append(GUESSED_KINDS_NOTE + ", ".join(guessed))
    return tuple(specs), bool(guessed)


SIGMOID_KINDS_NOTE = (
    "task kinds from the outputs: a final sigmoid means binary, none means regression (0/1 labels may still "
    "make them binary logits): "
)
"""The topology note naming the tasks read as regression because other outputs end in a sigmoid and they do not."""

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


def unsigmoided(notes: Sequence[str]) -> list[str]:
    """The tasks a topology's `notes` say were read as regression for want of a final sigmoid
    (`SIGMOID_KINDS_NOTE`)."""
    return [
        n
        for note in notes
        if note.startswith(SIGMOID_KINDS_NOTE)
        for n in note[len(SIGMOID_KINDS_NOTE) :].split(", ")
        if n
    ]


UNMIXED_NOTE = "outputs that no gate's mixture moves while the other outputs are mixed: "
"""The topology note naming the outputs no expert mixture reaches (autograd, as for the gates' tasks) in a model
whose other outputs are mixtures: a per-row training term made from the gate weights (a load-balancing loss) or
a head off the experts' path. `aux_tasks` drops such an output only when its name also says it is a term."""


def unmixed(notes: Sequence[str], note: str = UNMIXED_NOTE) -> set[str]:
    """The outputs a topology's `notes` say no gate's mixture moves (`UNMIXED_NOTE`; or the outputs `note` lists,
    e.g. `GATE_TERM_NOTE`)."""
    return {n for line in notes if line.startswith(note) for n in line[len(note) :].split(", ") if n}


GATE_TERM_NOTE = "outputs computed from gate weights and no expert output (traced graph, detaches included): "
"""The topology note naming the unmixed outputs whose traced inputs hold a gate's weights and no expert output:
the positive evidence `aux_tasks` needs that an output is a training term of the gates (a load-balancing loss),
not a head that reads the experts another way (their mean, a detached mixture)."""


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
