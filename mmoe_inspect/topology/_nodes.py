"""Small readings of a traced forward's nodes shared by discovery and its unresolved-item checks:
where a node was computed, whether its rows are distributions, what it feeds and comes from."""

from __future__ import annotations

from typing import Any

import torch

from mmoe_inspect.topology._trace import ROOT, Graph, Ref, softmax_dim
from mmoe_inspect.topology.spec import GateOutput


def node_where(graph: Graph, idx: int) -> str:
    """Where node `idx` was computed: the innermost module path, for notes."""
    module = graph.nodes[idx].module
    return "the model's forward" if module in (None, ROOT) else f"{module}"


def row_values(graph: Graph, idx: int, ax: int | None, bax: int | None) -> torch.Tensor | None:
    """The values of node `idx` as `[rows, E]` float64 (None when not available)."""
    t = graph.nodes[idx].tensor
    if t is None or ax is None or not t.is_floating_point():
        return None
    t = t.detach().to(torch.float64)
    if bax is None:
        return t.movedim(ax, -1).reshape(-1, t.shape[ax])[:1]
    return t.movedim((bax, ax), (0, -1)).reshape(t.shape[bax], -1, t.shape[ax]).reshape(-1, t.shape[ax])


# Per-entry activations: their rows are not normalized by construction, whatever values they hold.
ELEMENTWISE_ACTIVATIONS = frozenset(
    {"sigmoid", "relu", "exp", "softplus", "hardsigmoid", "elu", "gelu", "tanh", "abs", "silu", "relu6"}
)


def kind_of(graph: Graph, idx: int, ax: int | None, bax: int | None) -> GateOutput:
    """ "probs" when every row is a distribution over the experts, else "weights"."""
    node = graph.nodes[idx]
    if node.op == "softmax":
        # over the expert axis: a distribution; over another axis (a `dim=0` slip normalizes over the
        # batch): read as one all the same, so its rows' sums are checked and reported, not excused
        return "probs"
    if node.op == "exp" and node.args and isinstance(node.args[0], Ref):
        src = graph.nodes[node.args[0].node]  # `log_softmax(z).exp()`: a softmax written the long way
        if src.op == "log_softmax" and softmax_dim(src.args, src.kwargs, src.ndim) == ax:
            return "probs"
    if node.op in ELEMENTWISE_ACTIVATIONS:  # a sigmoid gate that happens to sum to 1 here is still one
        return "weights"
    rows = row_values(graph, idx, ax, bax)
    if rows is None or not bool(torch.isfinite(rows).all()):
        return "weights"
    if float(rows.min()) >= -1e-6 and float((rows.sum(-1) - 1.0).abs().max()) <= 1e-4:
        return "probs"
    return "weights"


def node_module(graph: Graph, idx: int) -> str:
    module = graph.nodes[idx].module
    return ROOT if module is None else module


def feeds(graph: Graph, start: int, targets: set[int], limit: int = 2048) -> bool:
    """Whether `start` reaches one of `targets` through ops that take no parameters (the gate's own
    arithmetic: noise, masks, top-k, renormalisation), not through a parametrized layer (the gate's input)."""
    seen = {start}
    todo = [start]
    while todo and len(seen) < limit:
        idx = todo.pop()
        if idx in targets:
            return True
        for c in graph.children[idx]:
            node = graph.nodes[c]
            if c in seen or any(graph.nodes[p].op == "param" for p in node.parents):
                continue
            seen.add(c)
            todo.append(c)
    return False


def iter_refs(obj: Any) -> list[Ref]:
    """`Ref`s inside a recorded op's (nested) arguments."""
    if isinstance(obj, Ref):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [r for o in obj for r in iter_refs(o)]
    if isinstance(obj, dict):
        return [r for o in obj.values() for r in iter_refs(o)]
    return []


def ancestors(graph: Graph, idx: int, limit: int = 100_000) -> set[int]:
    seen = {idx}
    todo = [idx]
    while todo and len(seen) < limit:
        for p in graph.nodes[todo.pop()].parents:
            if p not in seen:
                seen.add(p)
                todo.append(p)
    return seen
