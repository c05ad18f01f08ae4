"""Find expert mixtures in a traced forward: per-row weights over E tensors, used to combine them.

A gate is defined by what it does, not by how it is built: a weight tensor `W` with an expert axis of
size E (2..1024) and, per row, its own values (a batch axis; or none, for weights shared by every row)
that weights E expert outputs which are then summed. `find_mixtures` recognizes every combination
seen in public multi-task code:

* `W * X` (broadcast, also through an explicit `expand`/`expand_as`/`broadcast_to` of `W`, or a
  `repeat`/`tile` of its size-1 axes) followed by a sum over the expert axis, on any axis (experts
  first `[E, B, D]`, in the middle `[B, E, D]` or last `[B, D, E]`);
* `matmul`/`bmm`/`@`/`baddbmm`: `[.., 1, E] @ [.., E, D]`, `[.., D, E] @ [.., E, 1]`, and the vector forms;
* `torch.linalg.vecdot` of the weights and the experts over the expert axis;
* `einsum` with any equation (ellipsis included) that contracts W's expert letter against an operand
  holding the batch letter;
* per-expert products `W[:, i] * X_i` (a Python loop, `unbind`, `split`, ...) summed by additions or
  by a sum over a stack of them, or accumulated by `torch.addcmul(acc, W[:, i], X_i)`;
* sparse top-k dispatch: the experts' outputs on their own rows, concatenated, multiplied by the
  weights gathered from `W` for those rows and scattered back with `index_add`/`scatter_add`;
* fused gates (`Mixture.fused`): `W` holds the gates of T tasks at once, `[B, T, E] @ [B, E, D]` (or
  `[B, D, E] @ [B, E, T]`), `(W[..., None] * X[:, None]).sum(expert axis)`, `(W * X).sum(expert axis)`
  with experts that emit one value per gate `X: [B, T, E]`, or an einsum whose `W` carries a letter of
  its own that the output keeps (or shares only with such experts, `bte,bet->bt`); each gate is read
  as its slice of `W` (`GateSpec.part_dim`), its mixture as the same slice of the output;
* two-way blends (`Mixture.two_way`): two experts mixed by one per-row weight `w` (`[B, 1]`, e.g. a
  sigmoid), `torch.lerp(x0, x1, w)`, `(1 - w) * x0 + w * x1` (either order) or `x0 + w * (x1 - x0)`:
  a gate `[1 - w, w]` over `(x0, x1)` that no tensor of the forward holds (see `_two_way`);
* attention routing (`Mixture.attention`): one `F.multi_head_attention_forward` (`nn.MultiheadAttention`) or
  `F.scaled_dot_product_attention` call whose query is one position per row (a task's query, `L` 1) or one
  per task (`L` = T, read as fused gates) and whose keys/values are E positions other than the query's:
  the attention weights over those E values (head-averaged `[B, L, E]`, recorded by the tracer even when
  the call does not return them, `_attention.py`) are the gate; whether the values are experts (and not
  fields or a sequence) is the expert tracer's question, as for every mixture;
* weights broadcast with `repeat_interleave` (or `unsqueeze(-1).expand(B, E, D).reshape(B, E * D)`) over
  experts concatenated on one axis (`W.repeat_interleave(D, 1) * cat(experts, 1)`, then
  `.reshape(B, E, D).sum(1)`).

Each `Mixture` says where the weights are (`weights`, with their expert and batch axes) and where the
expert outputs are; resolving those to modules is `ExpertTracer`'s job, and deciding whether it is
a gate (and not attention over features) is discovery's.

One module (over ~1,000 lines) on purpose: every recognizer below returns a `Mixture` and shares the
view-walking and batch-axis helpers; split, the recognizers would import each other's privates.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mmoe_inspect.topology._attention import ATTENTION_OPS, WEIGHTS_POS, bound, source_axis
from mmoe_inspect.topology._graphops import (
    find_reduction,
    map_axis,
    norm_dim,
    reaches_input,
    selection,
    view_parent,
)
from mmoe_inspect.topology._trace import Graph, Node, Ref

MUL_OPS = frozenset({"mul", "rmul", "multiply"})
MATMUL_OPS = frozenset({"matmul", "bmm", "rmatmul", "baddbmm"})  # baddbmm: input + batch1 @ batch2
ADD_OPS = frozenset({"add", "radd"})
MAX_EXPERTS = 1024
MAX_FUSED = 64
"""Most gates one weight tensor may hold at once for a fused reading (`Mixture.fused`): task counts, not the
lengths of a sequence that attention weights."""


@dataclass(frozen=True)
class Mixture:
    """A weighted sum of E experts found in the graph.

    `combine` is the (first) op weighting the experts, `output` the node holding the mixture after the
    sum over experts. `weights` is the weight tensor as the combination reads it (for per-expert
    products: the tensor the per-expert weights were selected from), `w_axis` its expert axis and
    `w_batch` its batch axis (None: one weight vector for every row). `experts` is either one
    `(node, axis)` (a tensor holding all E experts on `axis`) or E `(node, None)` (one per expert).
    `arg` is the position of the weights among the combine op's tensor arguments (-1 when the
    weights reach it through a per-expert selection).
    """

    combine: int
    output: int
    weights: int
    w_axis: int
    w_batch: int | None
    experts: tuple[tuple[int, int | None], ...]
    n_experts: int
    arg: int = -1
    sparse: bool = False  # top-k dispatch: each expert ran on its own subset of rows
    indices: int | None = None  # top-k gate: node of the `[batch, k]` expert indices of `weights`
    by_module: bool = False  # experts given per contribution, to be ordered by their module's index
    fused: int = 0  # > 0: the weights hold this many gates at once (`fused_axis`), one mixture each
    fused_axis: int | None = None  # the weights' axis of those gates (`[B, T, E] @ [B, E, D]`)
    fused_out_axis: int | None = None  # the axis of the combine output holding each gate's mixture
    two_way: bool = False  # `weights`: one weight w per row (size 1 on `w_axis`); the gate is `[1 - w, w]`
    split: bool = False  # two_way, but `w0 * x0 + w1 * x1`: two per-row weights of their own (seen, not read)
    w_other: int | None = (
        None  # two_way `(1 - w) * x0 + w * x1`: the factor `1 - w` (made from the tensor read)
    )
    attention: bool = False  # the weights are an attention call's (recomputed) softmax over its values


def _operands(node: Node) -> tuple[Any, Any]:
    """(left, right) operands of a binary op; `__rmatmul__` swapped back to `left @ right`."""
    if node.op == "baddbmm":  # input + batch1 @ batch2 (the product is the mixture; `input` a bias)
        return node.arg(1, "batch1"), node.arg(2, "batch2")
    if node.op == "addcmul":  # input + value * tensor1 * tensor2: a product added to an accumulator
        return node.arg(1, "tensor1"), node.arg(2, "tensor2")
    a, b = node.arg(0, "input"), node.arg(1, "other")
    if node.op == "rmatmul":  # other @ self
        a, b = b, a
    return a, b


def _arg_position(node: Node, ref: Ref) -> int:
    """Position of `ref` among the node's tensor arguments, in call order (-1 when absent)."""
    pos = 0
    for a in (*node.args, *node.kwargs.values()):
        items = a if isinstance(a, (list, tuple)) else [a]
        for item in items:
            if isinstance(item, Ref):
                if item == ref:
                    return pos
                pos += 1
    return -1


def _batch_axes(shape: tuple[int, ...], batch: int, skip: int | None = None) -> list[int]:
    return [i for i, s in enumerate(shape) if s == batch and i != skip]


def views_back(graph: Graph, idx: int, limit: int = 256) -> Iterator[Node]:
    """Node `idx`, then the nodes it is a view of (reshape, unsqueeze, transpose, ...), nearest first."""
    cur: int | None = idx
    for _ in range(limit):
        if cur is None:
            return
        node = graph.nodes[cur]
        yield node
        cur = view_parent(graph, node)


# ----------------------------------------------------------------------------------------- mul + sum
BROADCAST_OPS = frozenset({"expand", "expand_as", "broadcast_to"})
REPEAT_OPS = frozenset({"repeat", "tile"})


def _broadcasts(src: tuple[int, ...], dst: tuple[int, ...]) -> bool:
    """Whether a tensor of shape `src` broadcasts to `dst` (trailing axes aligned, sizes equal or 1)."""
    if len(src) > len(dst):
        return False
    return all(s in (1, d) for s, d in zip(reversed(src), reversed(dst), strict=False))


def _repeats_only_ones(node: Node, src: tuple[int, ...]) -> bool:
    """Whether a `repeat`/`tile` of a tensor of shape `src` repeats only its size-1 axes (a broadcast
    written out, as TensorFlow ports do with `tf.tile`)."""
    rest = (
        list(node.args[1:]) if len(node.args) > 1 else [node.kwargs.get("repeats", node.kwargs.get("dims"))]
    )
    if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
        rest = list(rest[0])
    if not rest or not all(isinstance(r, int) and not isinstance(r, bool) for r in rest):
        return False
    n = max(len(rest), len(src))
    factors = [1] * (n - len(rest)) + rest  # (tile pads the factors, repeat the shape)
    padded = (1,) * (n - len(src)) + src
    return all(f == 1 or d == 1 for f, d in zip(factors, padded, strict=True))


def _unexpanded(graph: Graph, ref: Ref) -> Ref:
    """The tensor an operand was broadcast from (`expand`, `expand_as`, `broadcast_to`, or a `repeat`/`tile`/
    `repeat_interleave` of size-1 axes only): a product with it is the same product (keras-mmoe's port weights `[B, D, E]`
    experts by `g.unsqueeze(1).expand_as(experts)`; TensorFlow ports by `tile`)."""
    node = graph.nodes[ref.node]
    while node.args and isinstance(node.args[0], Ref):
        src = node.args[0]
        shape = graph.nodes[src.node].shape
        if node.op in BROADCAST_OPS:
            ok = _broadcasts(shape, node.shape)
        elif node.op == "repeat_interleave":  # of a size-1 axis: `w[B, 1].repeat_interleave(D, dim=1)`
            dim = node.arg(2, "dim")
            d = dim + len(shape) if isinstance(dim, int) and dim < 0 else dim
            ok = (
                isinstance(d, int)
                and 0 <= d < len(shape)
                and shape[d] == 1
                and isinstance(node.arg(1, "repeats"), int)
            )
        else:
            ok = node.op in REPEAT_OPS and _repeats_only_ones(node, shape)
        if not ok:
            break
        ref, node = src, graph.nodes[src.node]
    return ref


def _mul(graph: Graph, node: Node) -> list[Mixture]:
    a, b = _operands(node)
    if not (isinstance(a, Ref) and isinstance(b, Ref)) or a == b:
        return []
    n = node.ndim
    batch = graph.batch_size
    out: list[Mixture] = []
    for arg_ref, x_ref in ((a, b), (b, a)):
        g_ref = _unexpanded(graph, arg_ref)  # the weights before a broadcast: their own axes
        gn, xn = graph.nodes[g_ref.node], graph.nodes[x_ref.node]
        gs = (1,) * (n - gn.ndim) + gn.shape
        xs = (1,) * (n - xn.ndim) + xn.shape
        if len(gs) != n or len(xs) != n:
            continue
        for ax in range(n):
            e = gs[ax]
            if not 2 <= e <= MAX_EXPERTS or xs[ax] != e or e == batch:
                continue
            others = [i for i in range(n) if i != ax and gs[i] != 1]
            fax = (
                None  # fused gates: an axis of the weights' own, broadcast over the experts, kept by the sum
            )
            if len(others) == 2:
                own = [i for i in others if gs[i] != batch and xs[i] == 1 and 2 <= gs[i] <= MAX_FUSED]
                if not own:  # experts that emit one value per gate `[B, T, E]`: gate t mixes slice t
                    own = [i for i in others if gs[i] != batch and xs[i] == gs[i] and 2 <= gs[i] <= MAX_FUSED]
                    if sum(1 for v in xs if v != 1) != 3:
                        own = []  # values with a feature axis besides: attention heads, not per-task experts
                if len(own) == 1:
                    fax = own[0]
                    others = [i for i in others if i != fax]
            if len(others) > 1:
                continue
            if fax is not None and not others:
                continue
            if others:
                bax: int | None = others[0]
                if gs[bax] != batch or xs[bax] != batch:
                    continue
            else:
                bax = None
                if not _batch_axes(xs, batch, ax):
                    continue
            # the experts hold something per row besides the expert axis (else W and X are symmetric)
            red = find_reduction(graph, node.idx, ax)
            if red is None:
                continue
            shift_g, shift_x = n - gn.ndim, n - xn.ndim
            if ax < shift_g or ax < shift_x or (fax is not None and fax < shift_g):
                continue
            fused_out = None
            if fax is not None:  # where the sum over the experts leaves the gates' axis
                fused_out = fax if graph.nodes[red].ndim == n or fax < ax else fax - 1
            out.append(
                Mixture(
                    node.idx,
                    red,
                    g_ref.node,
                    ax - shift_g,
                    None if bax is None else bax - shift_g,
                    ((x_ref.node, ax - shift_x),),
                    e,
                    # broadcast weights are not an argument of the product: found by their producer
                    _arg_position(node, g_ref) if g_ref == arg_ref else -1,
                    fused=0 if fax is None else gs[fax],
                    fused_axis=None if fax is None else fax - shift_g,
                    fused_out_axis=fused_out,
                )
            )
    return out


# ----------------------------------------------------------------------------------------- matmul
def _single_batch_axis(shape: tuple[int, ...], batch: int) -> tuple[bool, int | None]:
    """(ok, axis): every axis of `shape` is 1 except at most one of size `batch` (its position)."""
    big = [i for i, s in enumerate(shape) if s != 1]
    if not big:
        return True, None
    if len(big) == 1 and shape[big[0]] == batch:
        return True, big[0]
    return False, None


def _matmul(graph: Graph, node: Node) -> list[Mixture]:
    a, b = _operands(node)
    if not (isinstance(a, Ref) and isinstance(b, Ref)) or a == b:
        return []
    batch = graph.batch_size
    sa, sb = graph.nodes[a.node].shape, graph.nodes[b.node].shape
    out: list[Mixture] = []
    pa, pb = (_arg_position(node, a), _arg_position(node, b)) if node.op == "baddbmm" else (0, 1)
    # W on the left: [E] @ [.., E, D] or [.., 1, E] @ [.., E, D]
    if len(sb) >= 2 and 2 <= sb[-2] <= MAX_EXPERTS and sb[-2] != batch:
        e = sb[-2]
        x_has_batch = bool(_batch_axes(sb[:-2], batch))
        if len(sa) == 1 and sa[0] == e and x_has_batch:
            out.append(Mixture(node.idx, node.idx, a.node, 0, None, ((b.node, len(sb) - 2),), e, pa))
        elif len(sa) >= 2 and sa[-1] == e and sa[-2] == 1:
            ok, bax = _single_batch_axis(sa[:-2], batch)
            if ok and (bax is not None or x_has_batch) and (bax is None or x_has_batch):
                out.append(
                    Mixture(node.idx, node.idx, a.node, len(sa) - 1, bax, ((b.node, len(sb) - 2),), e, pa)
                )
        elif len(sa) >= 3 and sa[-1] == e and 2 <= sa[-2] <= MAX_FUSED and sa[-2] != batch:
            # `[B, T, E] @ [B, E, D]`: the rows of T gates (one per task) mixing the same experts in one op
            ok, bax = _single_batch_axis(sa[:-2], batch)
            if ok and bax is not None and x_has_batch:
                out.append(
                    Mixture(
                        node.idx,
                        node.idx,
                        a.node,
                        len(sa) - 1,
                        bax,
                        ((b.node, len(sb) - 2),),
                        e,
                        pa,
                        fused=sa[-2],
                        fused_axis=len(sa) - 2,
                        fused_out_axis=len(node.shape) - 2,
                    )
                )
    # W on the right: [.., D, E] @ [E] or [.., D, E] @ [.., E, 1]
    if len(sa) >= 2 and 2 <= sa[-1] <= MAX_EXPERTS and sa[-1] != batch:
        e = sa[-1]
        if len(sb) == 1 and sb[0] == e and _batch_axes(sa[:-1], batch):
            out.append(Mixture(node.idx, node.idx, b.node, 0, None, ((a.node, len(sa) - 1),), e, pb))
        elif len(sb) >= 2 and sb[-2] == e and sb[-1] == 1:
            ok, bax = _single_batch_axis(sb[:-2], batch)
            x_has_batch = bool(_batch_axes(sa[:-2], batch))
            if ok and x_has_batch:
                out.append(
                    Mixture(node.idx, node.idx, b.node, len(sb) - 2, bax, ((a.node, len(sa) - 1),), e, pb)
                )
        elif len(sb) >= 3 and sb[-2] == e and 2 <= sb[-1] <= MAX_FUSED and sb[-1] != batch:
            # `[B, D, E] @ [B, E, T]`: fused gates on the right, one column per task
            ok, bax = _single_batch_axis(sb[:-2], batch)
            if ok and bax is not None and _batch_axes(sa[:-2], batch):
                out.append(
                    Mixture(
                        node.idx,
                        node.idx,
                        b.node,
                        len(sb) - 2,
                        bax,
                        ((a.node, len(sa) - 1),),
                        e,
                        pb,
                        fused=sb[-1],
                        fused_axis=len(sb) - 1,
                        fused_out_axis=len(node.shape) - 1,
                    )
                )
    return out


# ---------------------------------------------------------------------------------------- vecdot
def _vecdot(graph: Graph, node: Node) -> list[Mixture]:
    """`torch.linalg.vecdot(x, y, dim=d)` (a product summed over `d`, broadcast): one operand the weights, E on
    `d` with one batch axis and 1 elsewhere, the other the experts, E on `d` and the batch on another axis."""
    x, y = node.arg(0, "x"), node.arg(1, "y")
    dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else -1)
    if not (isinstance(x, Ref) and isinstance(y, Ref)) or x == y or not isinstance(dim, int):
        return []
    batch = graph.batch_size
    n = max(len(graph.nodes[x.node].shape), len(graph.nodes[y.node].shape))
    out: list[Mixture] = []
    for w, ex in ((y, x), (x, y)):
        sw, se = graph.nodes[w.node].shape, graph.nodes[ex.node].shape
        wd, ed = (len(sw) + dim, len(se) + dim) if dim < 0 else (dim - n + len(sw), dim - n + len(se))
        if not (0 <= wd < len(sw) and 0 <= ed < len(se)):
            continue
        e = sw[wd]
        if not 2 <= e <= MAX_EXPERTS or e == batch or se[ed] != e or not _batch_axes(se, batch, skip=ed):
            continue
        ok, bax = _single_batch_axis(tuple(s if i != wd else 1 for i, s in enumerate(sw)), batch)
        if ok:
            out.append(
                Mixture(node.idx, node.idx, w.node, wd, bax, ((ex.node, ed),), e, _arg_position(node, w))
            )
    return out


# ----------------------------------------------------------------------------------------- einsum
def _expand(subs: list[str], rhs: str | None, ndims: list[int]) -> tuple[list[str], str] | None:
    """Subscripts with `...` replaced by fresh letters (right-aligned, numpy's broadcasting rule)."""
    used = set("".join(subs) + (rhs or ""))
    fresh = [c for c in string.ascii_uppercase + string.ascii_lowercase if c not in used]
    n_ell = 0
    for s, nd in zip(subs, ndims, strict=True):
        if "..." in s:
            n_ell = max(n_ell, nd - (len(s) - 3))
    if n_ell < 0 or n_ell > len(fresh):
        return None
    ell = "".join(fresh[:n_ell])
    out = []
    for s, nd in zip(subs, ndims, strict=True):
        if "..." in s:
            k = nd - (len(s) - 3)
            if k < 0:
                return None
            s = s.replace("...", ell[n_ell - k :])
        if len(s) != nd or not s.isalpha():
            return None
        out.append(s)
    if rhs is None:  # implicit output: ellipsis letters first, then the letters seen once, sorted
        letters = "".join(out)
        singles = sorted(c for c in set(letters) if letters.count(c) == 1 and c not in ell)
        rhs = ell + "".join(singles)
    else:
        rhs = rhs.replace("...", ell)
    return out, rhs


def _einsum(graph: Graph, node: Node) -> list[Mixture]:
    if not node.args or not isinstance(node.args[0], str):
        return []
    eq = node.args[0].replace(" ", "")
    ops = list(node.args[1:])
    if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
        ops = list(ops[0])
    lhs, arrow, rhs_raw = eq.partition("->")
    subs = lhs.split(",")
    if len(subs) != len(ops) or not all(isinstance(o, Ref) for o in ops):
        return []
    shapes = [graph.nodes[o.node].shape for o in ops]
    expanded = _expand(subs, rhs_raw if arrow else None, [len(s) for s in shapes])
    if expanded is None:
        return []
    subs, rhs = expanded
    size: dict[str, int] = {}
    for s, shape in zip(subs, shapes, strict=True):
        for c, n in zip(s, shape, strict=True):
            if n != 1:
                size[c] = n
            else:
                size.setdefault(c, 1)
    batch = graph.batch_size
    out: list[Mixture] = []
    for i, (gsub, g) in enumerate(zip(subs, ops, strict=True)):
        if len(set(gsub)) != len(gsub):
            continue
        for e_letter in gsub:
            e = size[e_letter]
            if not 2 <= e <= MAX_EXPERTS or e_letter in rhs or e == batch:
                continue
            rest = [c for c in gsub if c != e_letter and size[c] != 1]
            fused = None  # a letter of the weights' own that the output keeps: several gates at once
            if len(rest) == 2:
                own = [c for c in rest if size[c] != batch and c in rhs and 2 <= size[c] <= MAX_FUSED]
                shared = [x for x in subs[:i] + subs[i + 1 :] if own and own[0] in x]
                # `bte,bet->bt`: experts that emit one value per gate (no feature letter), gate t mixes slice t
                aligned = len(subs) == 2 and all({c for c in x if size[c] != 1} == set(gsub) for x in shared)
                if len(own) == 1 and (not shared or aligned):
                    fused = own[0]
                    rest = [c for c in rest if c != fused]
            if len(rest) > 1:
                continue
            b_letter = rest[0] if rest else None
            if fused is not None and b_letter is None:
                continue
            if b_letter is not None and (size[b_letter] != batch or b_letter not in rhs):
                continue
            for j, (xsub, x) in enumerate(zip(subs, ops, strict=True)):
                if j == i or e_letter not in xsub or x == g:
                    continue
                if b_letter is not None and b_letter not in xsub:
                    continue
                if b_letter is None and not any(size[c] == batch and c in rhs for c in xsub):
                    continue
                out.append(
                    Mixture(
                        node.idx,
                        node.idx,
                        g.node,
                        gsub.index(e_letter),
                        None if b_letter is None else gsub.index(b_letter),
                        ((x.node, xsub.index(e_letter)),),
                        e,
                        _arg_position(node, g),
                        fused=0 if fused is None else size[fused],
                        fused_axis=None if fused is None else gsub.index(fused),
                        fused_out_axis=None if fused is None else rhs.index(fused),
                    )
                )
    return out


# ------------------------------------------------------------------------- per-expert products
def _picked(graph: Graph, idx: int) -> tuple[int, int, int] | None:
    """(source, axis, index) when node `idx` is one position of a source tensor (through views)."""
    for node in views_back(graph, idx, 16):
        picked = selection(graph, node, None) or selection(graph, node, _kept_axis(graph, node))
        if picked is not None:
            src, pax, picks = picked
            return (src, pax, picks[0]) if len(picks) == 1 else None
    return None


def _kept_axis(graph: Graph, node: Node) -> int | None:
    """The picked axis of a selection that keeps its axis (`w[:, i:i+1]`), for `selection`."""
    if not node.args or not isinstance(node.args[0], Ref):
        return None
    src = graph.nodes[node.args[0].node]
    if src.ndim != node.ndim:
        return None
    diff = [i for i, (a, b) in enumerate(zip(src.shape, node.shape, strict=True)) if a != b]
    return diff[0] if len(diff) == 1 else None


def _sum_closure(graph: Graph, start: int, limit: int = 4096) -> set[int]:
    """Nodes reached from `start` through additions, stacks and sums (how products get summed)."""
    seen = {start}
    todo = [start]
    while todo and len(seen) < limit:
        for c in graph.children[todo.pop()]:
            op = graph.nodes[c].op
            viewed = view_parent(graph, graph.nodes[c]) is not None
            if c not in seen and (op in ADD_OPS or op in ("sum", "stack", "addcmul") or viewed):
                seen.add(c)
                todo.append(c)
    return seen


def _per_expert(graph: Graph, muls: list[Node]) -> list[Mixture]:
    batch = graph.batch_size
    groups: dict[tuple[int, int], dict[int, tuple[int, int]]] = {}
    for node in muls:
        a, b = _operands(node)
        if not (isinstance(a, Ref) and isinstance(b, Ref)) or a == b:
            continue
        for g_ref, x_ref in ((a, b), (b, a)):
            picked = _picked(graph, g_ref.node)
            if picked is None:
                continue
            src, pax, i = picked
            w = graph.nodes[src]
            e = w.shape[pax] if pax < w.ndim else 0
            if not 2 <= e <= MAX_EXPERTS or e == batch:
                continue
            rest = [k for k, s in enumerate(w.shape) if k != pax and s != 1]
            if len(rest) > 1 or (rest and w.shape[rest[0]] != batch):
                continue
            xn = graph.nodes[x_ref.node]
            if not _batch_axes(xn.shape, batch):
                continue
            groups.setdefault((src, pax), {}).setdefault(i, (node.idx, x_ref.node))
            break
    out: list[Mixture] = []
    for (src, pax), by_index in groups.items():
        w = graph.nodes[src]
        e = w.shape[pax]
        if sorted(by_index) != list(range(e)):
            continue
        products = [by_index[i][0] for i in range(e)]
        common = set.intersection(*(_sum_closure(graph, p) for p in products))
        # an `addcmul` product is also the running sum (its accumulator plus the product): the last one holds all
        common -= {p for p in products if graph.nodes[p].op != "addcmul"}
        shape = graph.nodes[products[0]].shape
        sums = sorted(c for c in common if graph.nodes[c].shape == shape)
        if not sums:
            continue
        rest = [k for k, s in enumerate(w.shape) if k != pax and s != 1]
        out.append(
            Mixture(
                min(products),
                sums[0],
                src,
                pax,
                rest[0] if rest else None,
                tuple((by_index[i][1], None) for i in range(e)),
                e,
            )
        )
    return out


_GATHER_OPS = frozenset({"gather", "getitem", "index_select", "take_along_dim"})


def _gathered_from(graph: Graph, idx: int, depth: int = 8) -> tuple[int, int, int | None] | None:
    """(W, expert axis, batch axis) when node `idx` holds values picked from a gate-shaped `[B, E]` `W`."""
    batch = graph.batch_size
    cur = idx
    for _ in range(depth):
        node = graph.nodes[cur]
        src = node.args[0] if node.args else None
        if not isinstance(src, Ref):
            return None
        if node.op in _GATHER_OPS:
            w = graph.nodes[src.node]
            if w.ndim == 2 and w.shape[0] == batch and 2 <= w.shape[1] <= MAX_EXPERTS and w.shape[1] != batch:
                return src.node, 1, 0
            cur = src.node
            continue
        p = view_parent(graph, node)
        if p is None:
            return None
        cur = p
    return None


def _concat_parts(graph: Graph, idx: int) -> list[int] | None:
    """The parts of a row-wise concatenation (`cat(..., dim=0)`) that node `idx` is (through views)."""
    node = next((n for n in views_back(graph, idx, 8) if n.op == "cat"), None)
    if node is None:
        return None
    seq = node.arg(0, "tensors")
    if isinstance(seq, (list, tuple)) and node.arg(1, "dim", 0) == 0 and all(isinstance(r, Ref) for r in seq):
        return [r.node for r in seq]
    return None


def _contribution_product(graph: Graph, node: Node) -> Node | None:
    """The product `expert outputs * weights` an `index_add`/`scatter_add` adds back (through views)."""
    source = node.arg(3, "source") if node.op == "index_add" else node.arg(3, "src")
    if not isinstance(source, Ref):
        return None
    return next((n for n in views_back(graph, source.node) if n.op in MUL_OPS), None)


def _sparse_dispatch(graph: Graph, node: Node) -> list[Mixture]:
    """`zeros.index_add(0, rows, cat(expert outputs) * gathered weights)` (and `scatter_add`)."""
    if not node.shape or node.shape[0] != graph.batch_size:
        return []
    prod = _contribution_product(graph, node)
    if prod is None or node.arg(1, "dim") not in (0, -node.ndim):
        return []
    a, b = _operands(prod)
    if not (isinstance(a, Ref) and isinstance(b, Ref)):
        return []
    for g_ref, x_ref in ((a, b), (b, a)):
        found = _gathered_from(graph, g_ref.node)
        parts = _concat_parts(graph, x_ref.node)
        if found is None or parts is None:
            continue
        w, ax, bax = found
        e = graph.nodes[w].shape[ax]
        if len(parts) != e:
            continue
        return [Mixture(prod.idx, node.idx, w, ax, bax, tuple((p, None) for p in parts), e, sparse=True)]
    return []


_ACCUMULATE = frozenset({"index_add", "scatter_add"})


def _accumulator_root(graph: Graph, idx: int) -> int:
    """The tensor a chain of in-place `index_add_`/`scatter_add_` calls accumulates into."""
    cur = idx
    for _ in range(4096):
        node = graph.nodes[cur]
        first = node.args[0] if node.args else None
        if node.op not in _ACCUMULATE or not isinstance(first, Ref):
            return cur
        cur = first.node
    return cur


def _weights_of_contribution(graph: Graph, idx: int) -> tuple[str, int, int | None] | None:
    """How a per-expert contribution's weights were picked: ("column", W, e) from a gate-shaped
    `[B, E]` W (`gates[rows, e]`), or ("topk", V, None) from a `[B, k]` V flattened and indexed
    (`top_w.reshape(-1)[sel]`)."""
    batch = graph.batch_size
    cur = idx
    flattened = False
    for _ in range(12):
        node = graph.nodes[cur]
        src = node.args[0] if node.args else None
        if not isinstance(src, Ref):
            return None
        parent = graph.nodes[src.node]
        if node.op == "getitem":
            index = node.args[1] if len(node.args) > 1 else None
            items = list(index) if isinstance(index, tuple) else [index]
            if (
                parent.ndim == 2
                and parent.shape[0] == batch
                and len(items) == 2
                and isinstance(items[1], int)
            ) and 2 <= parent.shape[1] <= MAX_EXPERTS:
                return "column", src.node, items[1] % parent.shape[1]
            if flattened is False and parent.ndim == 1:
                cur = src.node
                flattened = True
                continue
            return None
        if (
            node.op in ("reshape", "view", "flatten")
            and flattened
            and parent.ndim == 2
            and parent.shape[0] == batch
        ):
            return "topk", src.node, None
        p = view_parent(graph, node)
        if p is None:
            return None
        cur = p
    return None


def _topk_indices(graph: Graph, values: int) -> int | None:
    """The `[B, k]` indices of the `topk` call whose values `values` (a `[B, k]` node) derive from."""
    shape = graph.nodes[values].shape
    seen = {values}
    todo = [values]
    while todo and len(seen) < 256:
        node = graph.nodes[todo.pop()]
        if node.op == "topk" and node.out_pos == 0:
            for other in graph.nodes[node.idx : node.idx + 3]:
                if other.seq == node.seq and other.out_pos == 1 and other.shape == shape:
                    return other.idx
        for p in node.parents:
            if p not in seen and graph.nodes[p].shape == shape:
                seen.add(p)
                todo.append(p)
    return None


def _per_expert_dispatch(graph: Graph) -> list[Mixture]:
    """Experts run on their own rows, each contribution `expert(x[rows]) * weights[rows, e]` added back
    with `index_add_`/`scatter_add_` (SparseDispatcher loops, tutel/fastmoe-style dispatch)."""
    groups: dict[tuple[int, str, int], list[tuple[int, int, int | None]]] = {}
    for node in graph.nodes:
        if node.op not in _ACCUMULATE or not node.shape or node.shape[0] != graph.batch_size:
            continue
        prod = _contribution_product(graph, node)
        if prod is None:
            continue
        a, b = _operands(prod)
        if not (isinstance(a, Ref) and isinstance(b, Ref)):
            continue
        for g_ref, x_ref in ((a, b), (b, a)):
            how = _weights_of_contribution(graph, g_ref.node)
            if how is None:
                continue
            kind, w, e = how
            root = _accumulator_root(graph, node.idx)
            groups.setdefault((root, kind, w), []).append((node.idx, x_ref.node, e))
            break
    out: list[Mixture] = []
    for (_root, kind, w), parts in groups.items():
        last = max(n for n, _, _ in parts)
        if kind == "column":
            n_exp = graph.nodes[w].shape[1]
            by_e = {e: x for _, x, e in parts if e is not None}
            experts = tuple((by_e.get(e, -1), None) for e in range(n_exp))
            out.append(Mixture(min(n for n, _, _ in parts), last, w, 1, 0, experts, n_exp, sparse=True))
        else:
            idx = _topk_indices(graph, w)
            if idx is None:
                continue
            topk = graph.nodes[idx]
            src = topk.args[0] if topk.args else None
            if not isinstance(src, Ref):
                continue
            n_exp = graph.nodes[src.node].shape[-1]
            experts = tuple((x, None) for _, x, _ in sorted(parts))
            out.append(
                Mixture(
                    min(n for n, _, _ in parts),
                    last,
                    w,
                    1,
                    0,
                    experts,
                    n_exp,
                    sparse=True,
                    indices=idx,
                    by_module=True,
                )
            )
    return out


def gathered_experts(graph: Graph, idx: int, axis: int) -> tuple[int, int, int] | None:
    """(source, axis, indices) when node `idx` holds, on `axis`, experts picked per row by `gather` from
    a tensor of all experts with indices that come from a `topk` (Mixtral-style routing)."""
    cur, ax = idx, axis
    for _ in range(8):
        node = graph.nodes[cur]
        if node.op == "gather":
            src, dim, index = node.arg(0, "input"), node.arg(1, "dim"), node.arg(2, "index")
            if not (isinstance(src, Ref) and isinstance(index, Ref)):
                return None
            nd = graph.nodes[src.node].ndim
            d = dim + nd if isinstance(dim, int) and dim < 0 else dim
            if d != ax:
                return None
            top = next(
                (n for n in views_back(graph, index.node, 8) if n.op == "topk" and n.out_pos == 1), None
            )
            return None if top is None else (src.node, ax, top.idx)
        p = view_parent(graph, node)
        if p is None:
            return None
        ax = map_axis(node, graph.nodes[p], ax, forward=False)
        if ax is None:
            return None
        cur = p
    return None


# ------------------------------------------------------------------------------ two-way blends
TWO_WAY_OPS = frozenset({"lerp", "add", "radd", "sub", "sum"})


def _base(graph: Graph, idx: int) -> int:
    """The tensor node `idx` is a view or a broadcast of (itself when it is none)."""
    last = idx
    for _ in range(8):
        for node in views_back(graph, last, 16):
            last = node.idx
        src = _unexpanded(graph, Ref(last)).node
        if src == last:
            return last
        last = src
    return last


def _per_row_weight(graph: Graph, idx: int, out_shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(size-1 axis, batch axis) of node `idx` when it holds one weight per row that broadcasts over
    `out_shape` (the batch on one of its axes, 1 elsewhere, at least one size-1 axis of its own)."""
    shape = graph.nodes[idx].shape
    batch = graph.batch_size
    if batch < 2 or not 2 <= len(shape) <= len(out_shape) or not _broadcasts(shape, out_shape):
        return None
    big = [i for i, s in enumerate(shape) if s != 1]
    shift = len(out_shape) - len(shape)
    if len(big) != 1 or shape[big[0]] != batch or out_shape[big[0] + shift] != batch:
        return None
    ones = [i for i, s in enumerate(shape) if s == 1]
    return ones[-1], big[0]


def _is_one(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 1


SAME_VALUE_OPS = frozenset(
    {"getitem", "select", "narrow", "unsqueeze", "squeeze", "view", "reshape", "flatten", "index_select"}
)


def _same_value(graph: Graph, i: int | None, j: int | None) -> bool:
    """Whether nodes `i` and `j` hold the same values by construction: one node, or the same selection of the
    same tensor made twice (`s[:, k:k+1]` written once per term of a blend)."""
    if i is None or j is None:
        return False
    if i == j:
        return True
    a, b = graph.nodes[i], graph.nodes[j]
    if a.op != b.op or a.op not in SAME_VALUE_OPS or a.kwargs != b.kwargs or len(a.args) != len(b.args):
        return False
    for x, y in zip(a.args, b.args, strict=True):
        if isinstance(x, Ref) or isinstance(y, Ref):
            if not (isinstance(x, Ref) and isinstance(y, Ref) and _same_value(graph, x.node, y.node)):
                return False
        elif type(x) is not type(y) or x != y:
            return False
    return True


def _complement(graph: Graph, idx: int) -> int | None:
    """The base of `w` when node `idx` is `1 - w` (`rsub(w, 1)`, `sub(1, w)`, `ones_like(w) - w`)."""
    node = graph.nodes[_base(graph, idx)]
    if node.kwargs.get("alpha", 1) != 1:
        return None
    if node.op == "rsub" and len(node.args) == 2 and isinstance(node.args[0], Ref) and _is_one(node.args[1]):
        return _base(graph, node.args[0].node)
    if node.op == "sub" and len(node.args) == 2 and isinstance(node.args[1], Ref):
        first = node.args[0]
        if _is_one(first):
            return _base(graph, node.args[1].node)
        if isinstance(first, Ref):
            t = graph.nodes[first.node].tensor
            if t is not None and t.is_floating_point() and t.numel() and bool((t == 1).all()):
                return _base(graph, node.args[1].node)
    return None


def _from_input(graph: Graph, idx: int) -> bool:
    """Whether node `idx` is computed from the model's input (a constant weight is not a gate)."""
    return reaches_input(graph, idx)


def _computed_from(graph: Graph, late: int, early: int, limit: int = 100_000) -> bool:
    """Whether node `late` is computed (transitively) from node `early` (nodes are in forward order, so the
    walk back from `late` stops at nodes made before `early`)."""
    if late == early:
        return True
    seen = {late}
    todo = [late]
    while todo and len(seen) < limit:
        for p in graph.nodes[todo.pop()].parents:
            if p == early:
                return True
            if p > early and p not in seen:
                seen.add(p)
                todo.append(p)
    return False


def _one_from_other(graph: Graph, a: int, b: int) -> bool:
    """Whether one of two blended tensors is computed from the other: `t * f(h) + (1 - t) * h` (a highway
    layer), `(1 - z) * h + z * cand(h)` (a GRU step), `h + s * (f(h) - h)` (a gated residual). Two experts are
    two branches of the same input, neither made from the other."""
    early, late = (a, b) if a < b else (b, a)
    return _computed_from(graph, late, early)


def _weightings(graph: Graph, idx: int, out_shape: tuple[int, ...]) -> list[tuple[Ref, Ref, tuple[int, int]]]:
    """Every reading (weight, expert, axes) of node `idx` as a product `weight * expert` with one weight per row
    (the weight may be `1 - w` of such a `w`). Scalar experts (`[B, 1]` heads) hold one value per row too:
    then both orders are readings, and only the rest of the blend (`1 - w` on the other term, `x1 - x0` in
    the other factor) tells which factor is the weight."""
    node = graph.nodes[idx]
    if node.op not in MUL_OPS:
        return []
    a, b = _operands(node)
    if not (isinstance(a, Ref) and isinstance(b, Ref)):
        return []
    found = []
    for w, x in ((a, b), (b, a)):
        w = _unexpanded(
            graph, w
        )  # `w.expand_as(x)`, `w.repeat_interleave(D, dim=1)`: the same weight per row
        axes = _per_row_weight(graph, w.node, out_shape)
        if axes is None:  # `1 - w` of a broadcast per-row `w` has the experts' width
            c = _complement(graph, w.node)
            axes = None if c is None else _per_row_weight(graph, c, out_shape)
        if axes is not None:
            found.append((w, x, axes))
    return found


def _weighted(graph: Graph, idx: int, out_shape: tuple[int, ...]) -> tuple[Ref, Ref, tuple[int, int]] | None:
    """(weight, expert, axes) when node `idx` is a product `weight * expert` with one weight per row and an
    expert that holds more than one value per row (the one unambiguous reading of `_weightings`)."""
    for w, x, axes in _weightings(graph, idx, out_shape):
        if _per_row_weight(graph, x.node, out_shape) is None:
            return w, x, axes
    return None


SQUASH_OPS = frozenset({"sigmoid", "softmax", "hardsigmoid"})


def _squashed(graph: Graph, idx: int) -> bool:
    """Whether node `idx` is (a view of) a sigmoid or softmax output, or `1 - ` one."""
    c = _complement(graph, idx)
    return graph.nodes[_base(graph, idx if c is None else c)].op in SQUASH_OPS


def _squash_weighted(
    graph: Graph, idx: int, out_shape: tuple[int, ...]
) -> tuple[Ref, Ref, tuple[int, int]] | None:
    """`_weighted`, and for scalar experts (both factors one value per row) the reading whose weight is a
    sigmoid/softmax output and whose expert is not: `sigmoid(z) * head(h)`."""
    readings = _weightings(graph, idx, out_shape)
    if len(readings) != 2:
        return _weighted(graph, idx, out_shape)
    picked = [r for r in readings if _squashed(graph, r[0].node) and not _squashed(graph, r[1].node)]
    return picked[0] if len(picked) == 1 else None


def _terms(graph: Graph, node: Node) -> tuple[Ref, Ref] | None:
    """The two terms node `node` adds: `a + b`, or `stack([a, b]).sum(0)` (through views)."""
    if node.op in ADD_OPS:
        a, b = _operands(node)
        if isinstance(a, Ref) and isinstance(b, Ref) and node.kwargs.get("alpha", 1) == 1:
            return a, b
        return None
    if node.op != "sum" or not node.args or not isinstance(node.args[0], Ref):
        return None
    stack = next((n for n in views_back(graph, node.args[0].node, 8) if n.op == "stack"), None)
    seq = None if stack is None else stack.arg(0, "tensors")
    if stack is None or not isinstance(seq, (list, tuple)) or len(seq) != 2:
        return None
    if stack.idx != node.args[0].node or not all(isinstance(r, Ref) for r in seq):
        return None
    axis = norm_dim(stack.arg(1, "dim", 0), stack.ndim)
    dims = node.arg(1, "dim")
    dims = [dims] if isinstance(dims, int) else list(dims) if isinstance(dims, (list, tuple)) else []
    if axis is None or [norm_dim(d, stack.ndim) for d in dims] != [axis] or node.kwargs.get("keepdim"):
        return None
    return seq[0], seq[1]


def _no_zero(graph: Graph, ref: Ref) -> Ref:
    """`ref` without a leading `0 + t` (Python's `sum([...])` starts from 0)."""
    node = graph.nodes[ref.node]
    if node.op in ADD_OPS and len(node.args) == 2:
        a, b = node.args
        if isinstance(a, Ref) and isinstance(b, (int, float)) and b == 0:
            return a
    return ref


def _summed_on(graph: Graph, node: Node, shape: tuple[int, ...]) -> bool:
    """Whether node `node`'s only use is an addition of it and one more per-row weighted product."""
    kids = graph.children[node.idx]
    if len(kids) != 1 or graph.nodes[kids[0]].op not in ADD_OPS:
        return False
    terms = _terms(graph, graph.nodes[kids[0]])
    if terms is None:
        return False
    other = terms[1] if terms[0].node == node.idx else terms[0]
    return other.node != node.idx and _weighted(graph, other.node, shape) is not None


def _split_terms(graph: Graph, ref: Ref, top: bool = True) -> list[Ref]:
    """The terms of a chain of additions `((t0 + t1) + t2) + ...` (inner sums used only by the next one)."""
    node = graph.nodes[ref.node]
    inner = node.op in ADD_OPS and len(graph.children[ref.node]) == 1
    terms = _terms(graph, node) if top or inner else None
    if terms is None:
        return [_no_zero(graph, ref)]
    return [t for r in terms for t in _split_terms(graph, _no_zero(graph, r), False)]


def _split(graph: Graph, node: Node, shape: tuple[int, ...], scalar: bool = False) -> list[Mixture]:
    """`w0 * x0 + w1 * x1 (+ ...)`: experts weighted by per-row weights of their own (two sigmoids, `sigmoid(z)`
    and `sigmoid(-z)`); no tensor holds them together, so it is reported (`Mixture.split`), not read.
    `scalar`: the two terms of `node` only, scalar experts weighted by sigmoid/softmax outputs
    (`_squash_weighted`)."""
    terms = list(_terms(graph, node) or ()) if scalar else _split_terms(graph, Ref(node.idx))
    weighted = _squash_weighted if scalar else _weighted
    prods = [weighted(graph, t.node, shape) for t in terms]
    if not 2 <= len(prods) <= MAX_EXPERTS or any(p is None for p in prods):
        return []
    ws = [_base(graph, p[0].node) for p in prods]  # type: ignore[index]
    xs = [p[1].node for p in prods]  # type: ignore[index]
    bases = [_base(graph, x) for x in xs]
    if len(set(ws)) != len(ws) or len(set(bases)) != len(bases):
        return []
    if not all(_from_input(graph, w) for w in ws):
        return []
    if any(_one_from_other(graph, a, b) for i, a in enumerate(xs) for b in xs[i + 1 :]):
        return []
    w0, _, axes = prods[0]  # type: ignore[misc]
    first = min(t.node for t in terms)
    experts = tuple((x, None) for x in xs)
    return [Mixture(first, node.idx, w0.node, axes[0], axes[1], experts, len(xs), two_way=True, split=True)]


def _scalar_pair(
    graph: Graph, a: Ref, b: Ref, shape: tuple[int, ...]
) -> tuple[tuple[int, int, int, tuple[int, int], int, int] | None, int | None]:
    """`(1 - w) * x0 + w * x1` whose experts hold one value per row too (`[B, 1]` scalar heads, as wide as `w`):
    either factor of each product could be the weight, so the weight is the factor whose `1 - w` is a factor of
    the other term. Returns (w, x0, x1, axes, combine, -1) and the node of `1 - w`, or (None, None)."""
    ra, rb = _weightings(graph, a.node, shape), _weightings(graph, b.node, shape)
    for first, second in ((ra, rb), (rb, ra)):
        for wa, xa, _ in first:
            c = _complement(graph, wa.node)
            for wb, xb, axes in second:
                if _same_value(graph, c, _base(graph, wb.node)):
                    return (wb.node, xa.node, xb.node, axes, min(a.node, b.node), -1), wa.node
    return None, None


KEEP_VALUE_OPS = frozenset(
    {"clamp", "clip", "clamp_min", "clamp_max", "to", "float", "double", "half", "type"}
)
"""Ops that keep a prediction's values (up to a clip or a dtype): `p.clamp(eps, 1 - eps)` is still `p`."""


def _kept_values(graph: Graph, idx: int, limit: int = 64) -> set[int]:
    """Node `idx` and the nodes it holds the values of: walked back through views (`_base`) and value-keeping ops
    on one tensor (`KEEP_VALUE_OPS`: a clip or a cast of that tensor alone)."""
    found: set[int] = set()
    cur: int | None = idx
    for _ in range(limit):
        if cur is None or cur in found:
            break
        found.add(cur)
        cur = _base(graph, cur)
        found.add(cur)
        node = graph.nodes[cur]
        refs = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, Ref)]
        ok = node.op in KEEP_VALUE_OPS and len(refs) == 1 and node.args and node.args[0] == refs[0]
        cur = refs[0].node if ok else None
    return found


def prediction_of(graph: Graph, idx: int, predictions: dict[int, str]) -> str | None:
    """The task whose prediction node `idx` (a two-way blend's weight `w`, `[B, 1]`) holds, or None: `idx` and
    that task's output node (a key of `predictions`, task name as value) hold the same values, up to views,
    squeezes, a detach, a clip or a cast, either way round. Such a `w` blends by the law of total probability
    (ESCM²/DCMT: `p_buy = p_click * a(h) + (1 - p_click) * b(h)`); it does not route rows between experts."""
    mine = _kept_values(graph, idx)
    return next((name for t, name in predictions.items() if mine & _kept_values(graph, t)), None)


def _two_way(graph: Graph, node: Node) -> list[Mixture]:
    """Two experts blended by one per-row weight `w` (read as the gate `[1 - w, w]` over `(x0, x1)`):
    `lerp(x0, x1, w)`, `(1 - w) * x0 + w * x1` in either order (also summed as a stack of the two, or by
    Python's `sum`), `x0 + w * (x1 - x0)` and `x0 - w * (x0 - x1)`. The weight must be computed from the input
    and vary by row only (`[B, 1]`, or that broadcast to the experts' width): a constant average
    (`0.5 * a + 0.5 * b`), a residual (`x + f(x)`), a per-feature weight (`[B, D]`) or a product of features
    (`a * b`) is no gate."""
    shape = node.shape
    found: tuple[int, int, int, tuple[int, int], int, int] | None = None  # w, x0, x1, axes, combine, arg
    other: int | None = None  # the factor `1 - w` of `(1 - w) * x0 + w * x1`
    if node.op == "lerp":
        x0, x1, w = node.arg(0, "input"), node.arg(1, "end"), node.arg(2, "weight")
        if isinstance(x0, Ref) and isinstance(x1, Ref) and isinstance(w, Ref):
            w = _unexpanded(graph, w)
            axes = _per_row_weight(graph, w.node, shape)
            if axes is not None:
                found = (w.node, x0.node, x1.node, axes, node.idx, _arg_position(node, w))
    elif node.op == "sub":  # x0 - w * (x0 - x1)
        a, b = _operands(node)
        if isinstance(a, Ref) and isinstance(b, Ref) and node.kwargs.get("alpha", 1) == 1:
            for prod in _weightings(graph, b.node, shape):  # scalar experts: the factor that is `x0 - x1`
                d = graph.nodes[_base(graph, prod[1].node)]
                if found is None and d.op == "sub" and len(d.args) == 2:
                    back, x1 = d.args
                    same = isinstance(back, Ref) and _base(graph, back.node) == _base(graph, a.node)
                    if same and isinstance(x1, Ref) and d.kwargs.get("alpha", 1) == 1:
                        found = (prod[0].node, a.node, x1.node, prod[2], b.node, -1)
    else:
        terms = _terms(graph, node)
        if terms is None:
            return []
        a, b = (_no_zero(graph, t) for t in terms)
        pa, pb = _weighted(graph, a.node, shape), _weighted(graph, b.node, shape)
        if pa is not None and pb is not None:  # (1 - w) * x0 + w * x1
            for (wa, xa, _), (wb, xb, axes) in ((pa, pb), (pb, pa)):
                if _same_value(graph, _complement(graph, wa.node), _base(graph, wb.node)):
                    found = (wb.node, xa.node, xb.node, axes, min(a.node, b.node), -1)
                    other = wa.node
                    break
            split = found is None and not _same_value(
                graph, _base(graph, pa[0].node), _base(graph, pb[0].node)
            )
            if split and node.op != "sum" and _summed_on(graph, node, shape):
                return []  # a partial sum `w0 * x0 + w1 * x1` of a longer one: read where the sum ends
            if split:
                return _split(graph, node, shape)
        elif any(graph.nodes[t.node].op in ADD_OPS for t in (a, b)) and (pa is not None or pb is not None):
            longer = _split(graph, node, shape)  # `(w0 * x0 + w1 * x1) + w2 * x2`
            if longer:
                return longer
        if found is None and (pa is None or pb is None):  # scalar experts: `1 - w` tells the weight
            found, other = _scalar_pair(graph, a, b, shape)
        if found is None and pa is None and pb is None and node.op in ADD_OPS:
            scalar = _split(graph, node, shape, scalar=True)  # `sigmoid(z) * A(h) + sigmoid(-z) * B(h)`
            if scalar:
                return scalar
        for x0, mul in ((a, b), (b, a)):  # x0 + w * (x1 - x0)
            for w, diff, axes in _weightings(graph, mul.node, shape):
                if found is not None or node.op == "sum":
                    continue
                d = graph.nodes[_base(graph, diff.node)]
                if d.op != "sub" or len(d.args) != 2 or d.kwargs.get("alpha", 1) != 1:
                    continue
                x1, back = d.args
                if (
                    isinstance(x1, Ref)
                    and isinstance(back, Ref)
                    and _base(graph, back.node) == _base(graph, x0.node)
                ):
                    found = (w.node, x0.node, x1.node, axes, mul.node, -1)
    if found is None:
        return []
    w, x0, x1, (w_axis, w_batch), combine, arg = found
    if _base(graph, x0) == _base(graph, x1) or not _from_input(graph, w) or _one_from_other(graph, x0, x1):
        return []
    experts = ((x0, None), (x1, None))
    return [Mixture(combine, node.idx, w, w_axis, w_batch, experts, 2, arg, two_way=True, w_other=other)]


# ------------------------------------------------------------------------ attention calls
def _attention(graph: Graph, node: Node) -> list[Mixture]:
    """An attention call (`ATTENTION_OPS`) whose query holds one position per row, or one per task, and whose
    keys/values are E other positions: its head-averaged weights `[B, L, E]` (the tracer's node at output
    `WEIGHTS_POS` of the call) weight the E values. Self-attention (the query is the keys) is never read, nor
    as many queries as values (`L == E`: self-attention with projections of its own looks so); attention over
    experts left unread is reported by `_unresolved.unread_attention`."""
    if node.out_pos != 0:
        return []
    a = bound(node.op, node.args, node.kwargs)
    if a is None:
        return []
    q, k, v = a.get("query"), a.get("key"), a.get("value")
    if not (isinstance(q, Ref) and isinstance(k, Ref) and isinstance(v, Ref)) or q in (k, v):
        return []
    kn, vn = graph.nodes[k.node], graph.nodes[v.node]
    kax, vax = source_axis(node.op, kn.ndim), source_axis(node.op, vn.ndim)
    if kax is None or vax is None or kn.shape[kax] != vn.shape[vax]:
        return []
    e, batch = vn.shape[vax], graph.batch_size
    w = next(
        (
            n
            for n in graph.nodes[node.idx + 1 : node.idx + 8]
            if n.seq == node.seq and n.out_pos == WEIGHTS_POS
        ),
        None,
    )
    if not 2 <= e <= MAX_EXPERTS or e == batch or w is None or w.ndim != 3:
        return []
    if w.shape[0] != batch or w.shape[2] != e or not 1 <= w.shape[1] <= MAX_FUSED or w.shape[1] == e:
        return []
    length = w.shape[1]
    experts = ((v.node, vax),)
    if length == 1:
        return [Mixture(node.idx, node.idx, w.idx, 2, 0, experts, e, attention=True)]
    out_axis = 0 if node.op == "multi_head_attention_forward" else node.ndim - 2  # the queries' axis
    if node.shape[out_axis] != length:
        return []
    return [
        Mixture(
            node.idx,
            node.idx,
            w.idx,
            2,
            0,
            experts,
            e,
            fused=length,
            fused_axis=1,
            fused_out_axis=out_axis,
            attention=True,
        )
    ]


# ------------------------------------------------------------------------ repeat_interleave
def _interleaved(graph: Graph, node: Node) -> list[Mixture]:
    """`W.repeat_interleave(D, dim=1) * cat([x_0 .. x_{E-1}], dim=1)` (`[B, E*D]`), reshaped to `[B, E, D]`
    and summed over the experts: the weights `W` `[B, E]` mix the E parts of the concatenation. The widening
    may also be written `W.unsqueeze(-1).expand(B, E, D).reshape(B, E * D)` (keras `repeat_elements` ported),
    and the sum over E a `.sum(1)`, column blocks added up, or the rows `[:, i]` of the `[B, E, D]` view
    added up in a loop."""
    a, b = _operands(node)
    if not (isinstance(a, Ref) and isinstance(b, Ref)) or node.ndim != 2:
        return []
    batch = graph.batch_size
    for w_ref, x_ref in ((a, b), (b, a)):
        widened = _widened(graph, w_ref.node)
        if widened is None:
            continue
        src, d = widened
        w = graph.nodes[src]
        if w.shape[:1] != (batch,) or w.ndim != 2:
            continue
        e = w.shape[1]
        parts = _concat_parts_on(graph, x_ref.node, 1)
        if not 2 <= e <= MAX_EXPERTS or e == batch or parts is None or len(parts) != e:
            continue
        if any(graph.nodes[p].shape != (batch, d) for p in parts):
            continue
        experts = tuple((p, None) for p in parts)
        for child in graph.children[node.idx]:
            c = graph.nodes[child]
            if view_parent(graph, c) != node.idx or c.shape != (batch, e, d):
                continue
            red = find_reduction(graph, child, 1)
            if red is not None:
                return [Mixture(node.idx, red, src, 1, 0, experts, e)]
            rows = _rows(graph, child, e, d)  # `h += prod.view(B, E, D)[:, i]` over i
            summed = _common_sum(graph, rows, batch, d) if rows is not None else None
            if summed is not None:
                return [Mixture(node.idx, summed, src, 1, 0, experts, e)]
        blocks = _blocks(graph, node.idx, e, d)  # `prod[:, :D] + prod[:, D:2D]`, `sum(prod.split(D, 1))`
        summed = _common_sum(graph, blocks, batch, d) if blocks is not None else None
        if summed is not None:
            return [Mixture(node.idx, summed, src, 1, 0, experts, e)]
    return []


def _widened(graph: Graph, idx: int) -> tuple[int, int] | None:
    """(node of `W` `[B, E]`, D) when node `idx` `[B, E*D]` repeats each weight D times side by side:
    `W.repeat_interleave(D, dim=1)`, or `W.unsqueeze(-1).expand(B, E, D)` (or `repeat`) flattened."""
    node = graph.nodes[idx]
    if node.op == "repeat_interleave":
        src, d, dim = (node.args[0] if node.args else None), node.arg(1, "repeats"), node.arg(2, "dim")
        if isinstance(src, Ref) and isinstance(d, int) and dim in (1, -1):
            return src.node, d
        return None
    parent = view_parent(graph, node)
    if parent is None or node.ndim != 2:
        return None
    grid = graph.nodes[parent]  # `[B, E, D]`, broadcast from `[B, E, 1]`
    if grid.ndim != 3 or grid.shape[0] != node.shape[0] or grid.shape[1] * grid.shape[2] != node.shape[1]:
        return None
    base = _unexpanded(graph, Ref(parent)).node
    if base == parent or graph.nodes[base].shape != (*grid.shape[:2], 1):
        return None
    for n in views_back(graph, base, 8):
        if n.shape == grid.shape[:2]:
            return n.idx, grid.shape[2]
    return None


def _rows(graph: Graph, idx: int, e: int, d: int) -> list[int] | None:
    """The E rows `[:, k]` of node `idx` `[B, E, D]`, by k."""
    by_k: dict[int, int] = {}
    for c in graph.children[idx]:
        n = graph.nodes[c]
        if n.shape != (graph.batch_size, d):
            continue
        picked = selection(graph, n, None)
        if picked is not None and picked[0] == idx and picked[1] == 1 and len(picked[2]) == 1:
            by_k.setdefault(picked[2][0], c)
    return [by_k[k] for k in range(e)] if sorted(by_k) == list(range(e)) else None


def _common_sum(graph: Graph, parts: list[int], batch: int, d: int) -> int | None:
    """The first `[B, D]` node that every part reaches through additions (their sum)."""
    common = set.intersection(*(_sum_closure(graph, p) for p in parts)) - set(parts)
    sums = sorted(c for c in common if graph.nodes[c].shape == (batch, d))
    return sums[0] if sums else None


def _blocks(graph: Graph, idx: int, e: int, d: int) -> list[int] | None:
    """The E column blocks `[:, k*D:(k+1)*D]` of node `idx` `[B, E*D]` (slices, `split`, `chunk`), by k."""
    by_k: dict[int, int] = {}
    for c in graph.children[idx]:
        n = graph.nodes[c]
        if n.shape != (graph.batch_size, d) or not n.args or n.args[0] != Ref(idx):
            continue
        k: int | None = None
        if n.op == "getitem" and len(n.args) > 1 and isinstance(n.args[1], tuple) and len(n.args[1]) == 2:
            rows, cols = n.args[1]
            if rows == slice(None) and isinstance(cols, slice) and cols.step in (None, 1):
                start = 0 if cols.start is None else cols.start
                k = start // d if isinstance(start, int) and start >= 0 and start % d == 0 else None
        elif n.op in ("split", "chunk") and n.arg(2, "dim") in (1, -1):
            k = n.out_pos
        if k is not None:
            by_k.setdefault(k, c)
    return [by_k[k] for k in range(e)] if sorted(by_k) == list(range(e)) else None


def _concat_parts_on(graph: Graph, idx: int, dim: int) -> list[int] | None:
    """The parts of `cat(parts, dim)` that node `idx` is (None when it is not one)."""
    node = graph.nodes[idx]
    seq = node.arg(0, "tensors")
    if node.op != "cat" or not isinstance(seq, (list, tuple)) or not all(isinstance(r, Ref) for r in seq):
        return None
    d = node.arg(1, "dim", 0)
    if not isinstance(d, int) or (d + node.ndim if d < 0 else d) != dim:
        return None
    return [r.node for r in seq]


def find_mixtures(graph: Graph) -> list[Mixture]:
    """Every expert mixture in the traced forward (see module docstring), in forward order.

    A combine op may yield two readings (which operand weights which); discovery keeps the one whose
    experts resolve and whose weights look like a gate.
    """
    found: list[Mixture] = []
    muls: list[Node] = []
    for node in graph.nodes:
        if node.op in MUL_OPS:
            muls.append(node)
            found.extend(_mul(graph, node))
            found.extend(_interleaved(graph, node))
        elif node.op == "addcmul":  # acc + w[:, i] * x_i in a loop over the experts
            muls.append(node)
        elif node.op in MATMUL_OPS:
            found.extend(_matmul(graph, node))
        elif node.op == "einsum":
            found.extend(_einsum(graph, node))
        elif node.op == "linalg_vecdot":
            found.extend(_vecdot(graph, node))
        elif node.op in ("index_add", "scatter_add"):
            found.extend(_sparse_dispatch(graph, node))
        elif node.op in ATTENTION_OPS:
            found.extend(_attention(graph, node))
        if node.op in TWO_WAY_OPS:
            found.extend(_two_way(graph, node))
    combined = {m.combine for m in found if not m.split}
    found.extend(m for m in _per_expert(graph, [n for n in muls if n.idx not in combined]))
    combined = {m.combine for m in found if not m.split}
    found.extend(m for m in _per_expert_dispatch(graph) if m.combine not in combined)
    read = {m.output for m in found if not m.split}  # `w[:, 0:1] * x0 + w[:, 1:2] * x1` is one tensor's gate
    found = [m for m in found if not (m.split and m.output in read)]
    found.sort(key=lambda m: (m.combine, m.output))
    return found
