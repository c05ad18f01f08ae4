"""Pattern matching on the provenance graph: view chains, axis bookkeeping, gate-weighted sums.

Everything here is pure bookkeeping over `Graph` nodes (shapes and op arguments); no tensor math.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mmoe_inspect.topology._trace import Graph, Node, Ref

# Ops that keep every value of their (first) input and only re-arrange or re-label it.
VIEW_OPS = frozenset(
    {
        "view",
        "reshape",
        "view_as",
        "reshape_as",
        "unsqueeze",
        "squeeze",
        "flatten",
        "unflatten",
        "contiguous",
        "clone",
        "detach",
        "dropout",
        "alpha_dropout",
        "feature_alpha_dropout",
        "to",
        "type",
        "type_as",
        "float",
        "double",
        "half",
        "bfloat16",
        "expand",
        "expand_as",
        "getitem",
        "transpose",
        "swapaxes",
        "swapdims",
        "permute",
        "t",
        "atleast_2d",
        "atleast_3d",
    }
)
SUM_OPS = frozenset({"sum", "nansum", "mean"})


def norm_dim(dim: Any, ndim: int) -> int | None:
    """A dim argument made non-negative for a tensor of `ndim` axes (None when not a valid int)."""
    if not isinstance(dim, int) or ndim == 0:
        return None
    d = dim + ndim if dim < 0 else dim
    return d if 0 <= d < ndim else None


def view_parent(graph: Graph, node: Node) -> int | None:
    """The input node of a view-like op, or None when `node` is not one."""
    if node.op not in VIEW_OPS or not node.args or not isinstance(node.args[0], Ref):
        return None
    src = node.args[0].node
    # getitem only counts when it keeps every value (x[:, None], x[:, :, 0] on a size-1 axis).
    if node.op == "getitem" and math.prod(node.shape) != math.prod(graph.nodes[src].shape):
        return None
    return src


def _reshape_axis(src: tuple[int, ...], dst: tuple[int, ...], axis: int) -> int | None:
    """Axis of `dst` holding axis `axis` of `src` after a reshape-like op (prefix products must agree)."""
    if axis >= len(src):
        return None
    size, before = src[axis], math.prod(src[:axis])
    for j, n in enumerate(dst):
        if n == size and math.prod(dst[:j]) == before:
            return j
    return None


def _perm(node: Node) -> list[int] | None:
    """The dims of a recorded `permute` (`x.permute(0, 2, 1)` or `x.permute((0, 2, 1))`)."""
    rest = list(node.args[1:]) if len(node.args) > 1 else [node.kwargs.get("dims")]
    if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
        rest = list(rest[0])
    if not rest or not all(isinstance(d, int) for d in rest):
        return None
    nd = len(rest)
    return [d + nd if d < 0 else d for d in rest]


def map_axis(node: Node, parent: Node, axis: int, *, forward: bool) -> int | None:
    """Follow one axis across the view-like op `node` (input `parent`).

    forward=True maps an axis of `parent` to `node`; forward=False maps an axis of `node` back to
    `parent`. None when the axis does not survive the op unchanged.
    """
    src, dst = (parent.shape, node.shape) if forward else (node.shape, parent.shape)
    op = node.op
    if op in ("transpose", "swapaxes", "swapdims"):
        nd = parent.ndim
        d0 = norm_dim(node.arg(1, "dim0"), nd)
        d1 = norm_dim(node.arg(2, "dim1"), nd)
        if d0 is None or d1 is None:
            return None
        return d1 if axis == d0 else d0 if axis == d1 else axis
    if op == "t":
        return 1 - axis if parent.ndim == 2 else axis
    if op == "permute":
        dims = _perm(node)
        if dims is None or sorted(dims) != list(range(len(dims))):
            return None
        if forward:
            return dims.index(axis) if axis in dims else None
        return dims[axis] if axis < len(dims) else None
    if op in ("expand", "expand_as"):
        if len(src) == len(dst) and src[axis] == dst[axis]:
            return axis
        return None
    return _reshape_axis(src, dst, axis)


def forward_views(graph: Graph, start: int, axis: int) -> list[tuple[int, int]]:
    """`start` and every node reached from it through view-like ops, with the tracked axis."""
    out = [(start, axis)]
    seen = {start}
    i = 0
    while i < len(out):
        idx, ax = out[i]
        i += 1
        for c in graph.children[idx]:
            child = graph.nodes[c]
            if c in seen or view_parent(graph, child) != idx:
                continue
            a2 = map_axis(child, graph.nodes[idx], ax, forward=True)
            if a2 is None or not child.shape or child.shape[0] != graph.batch_size:
                continue
            seen.add(c)
            out.append((c, a2))
    return out


def backward_views(graph: Graph, start: int, axis: int | None) -> list[tuple[int, int | None]]:
    """`start` and its ancestors through view-like ops (nearest first), axis mapped back (None = lost)."""
    out: list[tuple[int, int | None]] = [(start, axis)]
    cur, ax = start, axis
    while True:
        node = graph.nodes[cur]
        p = view_parent(graph, node)
        if p is None:
            return out
        if ax is not None:
            ax = map_axis(node, graph.nodes[p], ax, forward=False)
        cur = p
        out.append((cur, ax))


def _sum_dims(graph: Graph, node: Node) -> set[int] | None:
    """The normalized axes a recorded `sum` reduces over (None for a full reduction)."""
    src, dim = node.args[0], node.arg(1, "dim")
    if dim is None or not isinstance(src, Ref):
        return None
    dims = list(dim) if isinstance(dim, (list, tuple)) else [dim]
    nd = graph.nodes[src.node].ndim
    out = {norm_dim(d, nd) for d in dims}
    return None if None in out else {d for d in out if d is not None}


def find_reduction(graph: Graph, start: int, axis: int) -> int | None:
    """A `sum` over exactly `axis` applied to `start` (possibly after view-like ops)."""
    for idx, ax in forward_views(graph, start, axis):
        for c in graph.children[idx]:
            child = graph.nodes[c]
            if child.op not in SUM_OPS or not child.args or child.args[0] != Ref(idx):
                continue
            if _sum_dims(graph, child) == {ax}:
                return c
    return None


def _index_values(graph: Graph, item: Any) -> list[int] | None:
    """Integer positions named by an index item: a list of ints or a 1-D integer tensor."""
    if isinstance(item, Ref):
        t = graph.nodes[item.node].tensor
        if t is None or t.ndim != 1 or t.is_floating_point() or t.dtype == torch.bool:
            return None
        return [int(v) for v in t.tolist()]
    if isinstance(item, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in item):
        return list(item)
    return None


def _full(item: Any) -> bool:
    """An index item that keeps a whole axis (`:`)."""
    return isinstance(item, slice) and item == slice(None)


def selection(graph: Graph, node: Node, axis: int | None) -> tuple[int, int, list[int]] | None:
    """`node` picks positions of its input along one axis: (input node, input axis, positions).

    Covers `x[:, i]`, `x[:, a:b]`, `x[:, [i, j]]`, `index_select`, `narrow`, `select`, and the outputs
    of `split`/`chunk`/`unbind`. `axis` is the tracked axis of `node` (None when `node` holds one
    expert whose axis was indexed away).
    """
    got = picks_of(graph, node)
    if got is None:
        return None
    src, pax, picks, kept = got
    if axis is None and kept and len(picks) != 1:
        return None
    if axis is not None and (not kept or axis != pax):
        return None
    return src, pax, picks


def picks_of(graph: Graph, node: Node) -> tuple[int, int, list[int], bool] | None:
    """What `selection` reads, whatever the tracked axis: (input node, input axis, positions, whether the
    axis is kept: False when an integer index dropped it)."""
    if not node.args or not isinstance(node.args[0], Ref):
        return None
    src = node.args[0].node
    shape = graph.nodes[src].shape
    op = node.op

    def dim_arg(pos: int, key: str) -> int | None:
        return norm_dim(node.arg(pos, key, 0), len(shape))

    picks: list[int] | None = None
    pax: int | None = None
    if op == "getitem":
        index = node.args[1] if len(node.args) > 1 else None
        items = list(index) if isinstance(index, tuple) else [index]
        if any(
            i is Ellipsis for i in items
        ):  # `x[..., t]`: the ellipsis is as many whole axes as it stands for
            fill = len(shape) - (len(items) - 1)
            if sum(i is Ellipsis for i in items) > 1 or any(i is None for i in items) or fill < 0:
                return None
            k = next(j for j, i in enumerate(items) if i is Ellipsis)
            items = items[:k] + [slice(None)] * fill + items[k + 1 :]
        while items and _full(items[-1]):
            items.pop()
        if not items or any(not _full(i) for i in items[:-1]):
            return None
        pax, last = len(items) - 1, items[-1]
        if pax >= len(shape):
            return None
        if isinstance(last, int) and not isinstance(last, bool):
            picks = [last % shape[pax]]
        elif isinstance(last, slice):
            picks = list(range(shape[pax]))[last]
        else:
            picks = _index_values(graph, last)
    elif op == "index_select":
        pax = dim_arg(1, "dim")
        index = node.arg(2, "index")
        picks = _index_values(graph, index)
    elif op == "narrow":
        pax = dim_arg(1, "dim")
        start, length = node.arg(2, "start"), node.arg(3, "length")
        if isinstance(start, int) and isinstance(length, int) and pax is not None:
            start = start % shape[pax]
            picks = list(range(start, start + length))
    elif op in ("select", "unbind"):
        pax = dim_arg(1, "dim")
        i = node.arg(2, "index") if op == "select" else node.out_pos
        if isinstance(i, int) and pax is not None:
            picks = [i % shape[pax]]
    elif op in ("split", "chunk"):
        pax = dim_arg(2, "dim")
        if pax is None or len(node.shape) != len(shape):
            return None
        size = node.args[1] if len(node.args) > 1 else None
        if op == "chunk" and isinstance(size, int) and size > 0:
            start = node.out_pos * -(-shape[pax] // size)
        elif op == "split" and isinstance(size, int) and size > 0:
            start = node.out_pos * size
        elif op == "split" and isinstance(size, (list, tuple)):
            start = sum(size[: node.out_pos])
        else:
            return None
        picks = list(range(start, start + node.shape[pax]))
    if picks is None or pax is None or not picks:
        return None
    return src, pax, picks, len(node.shape) == len(shape)


def reaches_input(graph: Graph, idx: int, *, limit: int = 4096, at_limit: bool = False) -> bool:
    """Whether node `idx` is computed from the model's input (it varies with the row), walking its parents;
    `at_limit` is the answer when `limit` nodes were seen without deciding."""
    seen = {idx}
    todo = [idx]
    while todo and len(seen) < limit:
        node = graph.nodes[todo.pop()]
        if node.op == "input":
            return True
        for p in node.parents:
            if p not in seen:
                seen.add(p)
                todo.append(p)
    return at_limit if len(seen) >= limit else False
