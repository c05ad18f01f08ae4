"""Gate-named modules that only scale features: PEPNet/EPNet's GateNU `2 * sigmoid(gate_nu(ctx))`.

A module whose per-row weights `[B, F]` multiply the input's field values `[B, F, D]` (made slot by slot
from the input, or by a module per field that reads only that field's columns), or a tensor of their own
shape `[B, F]` unit by unit, and are never summed over those `F` slots re-weights features;
it mixes no expert outputs, so it routes nothing. `feature_scaling` says so for discovery's notes
instead of an unresolved "named like a gate" item (which made `check` exit 4 on PEPNet).
"""

from __future__ import annotations

import math

from mmoe_inspect.topology._experts import ExpertTracer
from mmoe_inspect.topology._graphops import backward_views, find_reduction, map_axis, picks_of, view_parent
from mmoe_inspect.topology._nodes import ancestors, iter_refs
from mmoe_inspect.topology._trace import Graph

_OWN = frozenset(
    {"sigmoid", "tanh", "relu", "softmax", "exp", "mul", "rmul", "multiply", "add", "radd", "sub", "rsub"}
    | {"div", "truediv", "neg"}
)
"""The weights' own arithmetic (`2 * sigmoid(z)`, `1 + tanh(z)`): ops whose other operands vary by no row."""
_MUL = frozenset({"mul", "rmul", "multiply"})
SCALING_NOTE = "module {path} ({cls}) is a feature-scaling gate, not routing: "
"""How discovery's note on a feature-scaling module starts (`scaling_modules` reads the paths back)."""


def scaling_modules(notes: tuple[str, ...] | list[str]) -> list[str]:
    """The module paths discovery's notes call feature-scaling gates (`SCALING_NOTE`), in order."""
    head, _, tail = SCALING_NOTE.partition(" ({cls})")
    pre = head.partition("{path}")[0]
    return [n[len(pre) :].split(" (", 1)[0] for n in notes if n.startswith(pre) and tail in n]


def _per_row(graph: Graph, idx: int) -> bool:
    """Whether the model's input reaches node `idx`."""
    return any(graph.nodes[a].op == "input" for a in ancestors(graph, idx))


def _scaled(graph: Graph, tracer: ExpertTracer, mul: int, src: int, axis: int) -> str | None:
    """What the product `mul` scales when the weights (node `src`, slot `axis` of `mul`'s output) multiply
    another per-row operand: "fields" (the input's own features), "units" (a tensor of the weights' own
    shape); None when it is neither, or when the product is summed over the slots (a mixture)."""
    node = graph.nodes[mul]
    others = [
        r.node for r in iter_refs((node.args, node.kwargs)) if r.node != src and _per_row(graph, r.node)
    ]
    if len(others) != 1 or find_reduction(graph, mul, axis) is not None:
        return None
    other = graph.nodes[others[0]]
    ax = axis - (node.ndim - other.ndim)
    if ax < 0 or other.shape[ax] != node.shape[axis]:
        return None
    if other.shape == graph.nodes[src].shape:  # unit by unit, unless the units are experts put side by side
        return (
            None
            if any(graph.nodes[i].op in ("stack", "cat") for i, _ in backward_views(graph, other.idx, None))
            else "units"
        )
    return "fields" if tracer.slotwise(other.idx, ax) or own_fields(graph, tracer, other.idx, ax) else None


def _input_part(graph: Graph, idx: int) -> tuple[int, int | None, tuple[int, ...]] | None:
    """(input node, axis, positions) when node `idx` is one of the model's input tensors (axis None) or a pick
    of its positions (`x[:, i:i+1]`, `x[:, i]`, through views); None otherwise."""
    for cur, _ in backward_views(graph, idx, None):
        node = graph.nodes[cur]
        if node.op == "input":
            return cur, None, ()
        got = picks_of(graph, node)
        if got is not None:
            src, pax, picks, _ = got
            if all(graph.nodes[i].op != "input" for i, _ in backward_views(graph, src, None)):
                return None
            return backward_views(graph, src, None)[-1][0], pax, tuple(picks)
    return None


def own_fields(graph: Graph, tracer: ExpertTracer, idx: int, axis: int, *, single: bool = False) -> bool:
    """Whether each slot on `axis` of node `idx` is a module's output computed from a part of the model's input
    that no other slot reads (a `Linear(1, D)` per column `x[:, i:i+1]`, a module per input tensor of a dict):
    field embeddings, one per field, not experts (experts all read the shared input). `single`: each slot reads
    one column only (a value per row), so that experts over disjoint feature groups are not called fields."""
    k = graph.nodes[idx].shape[axis]
    refs = tracer.resolve(idx, axis, k)
    if not isinstance(refs, list) or len(refs) != k:
        return False
    reads: list[set[tuple[int, int | None, tuple[int, ...]]]] = []
    for r in refs:
        call = next((c for c in graph.module_calls(r.order[0]) if c.path == r.module), None)
        if r.module is None or r.index is not None or call is None or not call.inputs:
            return False
        parts = {_input_part(graph, i) for i in call.inputs}
        if None in parts:
            return False
        width = math.prod(graph.nodes[call.inputs[0]].shape[1:])
        if single and (len(call.inputs) != 1 or width != 1):
            return False
        reads.append(parts)  # type: ignore[arg-type]
    return all(not (a & b) for i, a in enumerate(reads) for b in reads[i + 1 :])


def feature_scaling(graph: Graph, outputs: list[int]) -> str | None:
    """How the module with output nodes `outputs` scales features, for a note ("its [B, 8] weights scale
    the input's 8 fields [B, 8, 4] one by one"), or None when some use of its output is not such a
    scaling (it may be a gate discovery could not read)."""
    tracer = ExpertTracer(graph)
    found: list[str] = []
    for out in outputs:
        shape = graph.nodes[out].shape
        if len(shape) != 2 or shape[0] != graph.batch_size or shape[1] < 2:
            return None
        todo, seen, ends = [(out, 1)], {out}, 0
        while todo:
            cur, ax = todo.pop()
            kids = graph.children[cur]
            if not kids:
                return None  # an output of the model: read as a task, not a scaling
            for k in kids:
                child = graph.nodes[k]
                if k in seen:
                    continue
                seen.add(k)
                if view_parent(graph, child) == cur:
                    nxt = map_axis(child, graph.nodes[cur], ax, forward=True)
                    if nxt is None:
                        return None
                    todo.append((k, nxt))
                    continue
                if child.op not in _OWN or child.ndim < graph.nodes[cur].ndim:
                    return None
                cax = ax + child.ndim - graph.nodes[cur].ndim
                rows = [
                    r.node
                    for r in iter_refs((child.args, child.kwargs))
                    if r.node != cur and _per_row(graph, r.node)
                ]
                if not rows:  # the weights' own arithmetic
                    todo.append((k, cax))
                    continue
                what = _scaled(graph, tracer, k, cur, cax) if child.op in _MUL else None
                if what is None:
                    return None
                other = next(graph.nodes[r] for r in rows)
                found.append(
                    f"the input's {shape[1]} fields {list(other.shape)} one by one"
                    if what == "fields"
                    else f"{shape[1]} units of {list(other.shape)} one by one"
                )
                ends += 1
        if not ends:
            return None
    return f"its {list(graph.nodes[outputs[0]].shape)} weights scale {found[0]}" if found else None
