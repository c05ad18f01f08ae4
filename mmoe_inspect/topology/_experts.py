"""Trace a gate's `[batch, E, dim]` expert tensor back to the expert networks that produced it.

Walks back from the weighted tensor through view-like ops, `stack` and `cat` along the expert axis,
down to module outputs. Outcomes, per expert:

* a module whose output is that expert (`[batch, dim]`): `module=path`;
* one module emitting several experts `[batch, k, dim]` on axis 1: `module=path, index=i`;
* no module output (computed inline from parameters in some module's forward): `module=None`,
  named `"<module>.expert[i]"`.

A pick along another axis than the experts' (`ex[:, :, t]` of experts that emit one value per task
`[B, E, T]`) is looked through: the experts are the same modules for every task's gate.

It refuses (returns a reason string) when the "experts" are embedding lookups, raw inputs, a
position-wise module over a set/sequence, parameter-free products, or values made slot by slot from the
input's fields or parameters with no network per slot (AFM's pairwise field interactions, `slotwise`):
those are attention over features, not a mixture of experts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mmoe_inspect.topology._graphops import (
    map_axis,
    norm_dim,
    picks_of,
    reaches_input,
    selection,
    view_parent,
)
from mmoe_inspect.topology._trace import ROOT, Graph, ModuleCall, Node, Ref

_LOOKUPS = (nn.Embedding, nn.EmbeddingBag)
_ELEMENTWISE = frozenset(
    {"mul", "rmul", "multiply", "div", "truediv", "add", "radd", "sub", "rsub", "sigmoid", "tanh", "relu"}
)
"""Ops mapping each value on its own (binary ones with constant other operands): rows stay the experts'."""


class Undecided(str):
    """A reason the experts could not be resolved that is not a verdict either way (unlike attention over
    features): discovery reports the mixture as unresolved ("cannot judge"), never as no gate."""


_UNPROBED = "unprobed"


@dataclass(frozen=True)
class ExpertRef:
    """One traced expert. `key` identifies it across gates; `order` sorts experts by forward order."""

    key: tuple[object, ...]
    module: str | None
    index: int | None
    parent: str | None
    order: tuple[int, int]
    calls: int = 1


def _across(graph: Graph, node: Node, axis: int | None) -> tuple[int, int] | None:
    """(input node, the expert axis there) when `node` picks positions along an axis other than the expert
    axis `axis`: experts that emit one value per task `[B, E, T]` mixed per task as `ex[:, :, t]` (or
    `ex.unbind(2)`, `ex[..., :H]`) are the same experts for every task, each gate reading its part."""
    if axis is None:
        return None
    got = picks_of(graph, node)
    if got is None:
        return None
    src, pax, _, kept = got
    if kept:
        return None if pax == axis else (src, axis)
    return src, axis if axis < pax else axis + 1


class ExpertTracer:
    """Resolves expert tensors of one traced forward (see module docstring)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.weights: int | None = None
        """The weights node of the mixture being resolved (set by the caller): rows that weights are scored
        from (self-attention, `softmax(<Q(rows), K(rows)>)`) are attention values, not experts."""

    def resolve(self, idx: int, axis: int | None, k: int) -> list[ExpertRef] | str:
        """The `k` experts laid along `axis` of node `idx` (axis None: a single expert)."""
        g = self.graph
        cur, ax = idx, axis
        while True:
            node = g.nodes[cur]
            if ax is not None and node.op in ("stack", "cat"):
                found = self._concat(cur, ax, k)
                if found is not None:
                    return found
            call = g.outermost_call(cur)
            if call is not None:
                return self._module(cur, call, ax, k)
            picked = selection(g, node, ax)
            if picked is not None:
                src, pax, picks = picked
                whole = self.resolve(src, pax, g.nodes[src].shape[pax])
                if isinstance(whole, str) or len(picks) != k:
                    return whole if isinstance(whole, str) else f"selects {len(picks)} of {k} experts"
                return [whole[i] for i in picks]
            across = _across(g, node, ax)
            if across is not None:  # a pick on another axis: the same experts, a part of each output
                cur, ax = across
                continue
            p = view_parent(g, node)
            if p is None:
                p = (self._scaled_rows(node) or self._inner_pick(node, ax)) if ax is not None else None
                if p is None:
                    break
                cur = p  # same shape, same axis: the rows are the operand's, rescaled
                continue
            if ax is not None:
                mapped = map_axis(node, g.nodes[p], ax, forward=False)
                if mapped is None:
                    blocks = self._blocked(cur, p, ax, k)
                    if blocks is not None:
                        return blocks
                ax = mapped
            cur = p
        node = g.nodes[cur]
        if node.op == "input":
            return "weights the model's input features"
        if node.op in ("param", "buffer", "const"):
            return "weights a constant tensor"
        return self._inline(cur, k, ax)

    # ------------------------------------------------------------------ cases
    def _blocked(self, idx: int, parent: int, axis: int, k: int) -> list[ExpertRef] | str | None:
        """`[B, E*H] -> [B, E, H]`: experts laid side by side on one axis of the parent, `H` wide each
        (PaddleRec concatenates its experts and reshapes). Resolved when that axis is a concatenation of
        `k` parts of width `H`."""
        g = self.graph
        dst, src = g.nodes[idx].shape, g.nodes[parent].shape
        if axis + 1 >= len(dst):
            return None
        width = dst[axis + 1]
        before = math.prod(dst[:axis])
        pax = next((j for j, n in enumerate(src) if n == k * width and math.prod(src[:j]) == before), None)
        if pax is None:
            return None
        node = g.nodes[parent]
        while node.op != "cat":
            p = view_parent(g, node)
            if p is None:
                return None
            node = g.nodes[p]
        seq = node.arg(0, "tensors")
        if norm_dim(node.arg(1, "dim", 0), node.ndim) != pax or not isinstance(seq, (list, tuple)):
            return None
        if len(seq) != k or not all(isinstance(r, Ref) and g.nodes[r.node].shape[pax] == width for r in seq):
            return None
        out: list[ExpertRef] = []
        for r in seq:
            got = self.resolve(r.node, None, 1)
            if isinstance(got, str):
                return got
            out.extend(got)
        return out

    def _concat(self, idx: int, axis: int, k: int) -> list[ExpertRef] | str | None:
        g = self.graph
        node = g.nodes[idx]
        seq = node.arg(0, "tensors")
        if not isinstance(seq, (list, tuple)) or not seq or not all(isinstance(r, Ref) for r in seq):
            return None
        dim = node.arg(1, "dim", 0)
        if node.op == "stack":
            if norm_dim(dim, node.ndim) != axis or len(seq) != k:
                return None
            parts = [(r.node, None, 1) for r in seq]
        else:
            if norm_dim(dim, node.ndim) != axis:
                return None
            sizes = [g.nodes[r.node].shape[axis] if g.nodes[r.node].ndim > axis else -1 for r in seq]
            if sum(sizes) != k or min(sizes) < 1:
                return None
            parts = [(r.node, axis, s) for r, s in zip(seq, sizes, strict=True)]
        out: list[ExpertRef] = []
        for part, ax, size in parts:
            got = self.resolve(part, ax, size)
            if isinstance(got, str):
                return got
            out.extend(got)
        return out

    def _module(self, idx: int, call: ModuleCall, axis: int | None, k: int) -> list[ExpertRef] | str:
        g = self.graph
        for c in g.module_calls(idx):
            if isinstance(g.modules.get(c.path), _LOOKUPS):
                return f"weights embedding lookups ({c.path}): attention over features"
        path = call.path
        n_calls = g.calls.get(path, 1)
        if k == 1:
            index = 0 if axis == 1 and g.nodes[idx].ndim == 3 else None
            return [ExpertRef(("module", path, index), path, index, None, (idx, 0), n_calls)]
        module = g.modules[path]
        if axis == 1:
            per_expert = any(p.ndim > 0 and p.shape[0] == k for p in module.parameters())
            over_a_set = any(g.nodes[i].ndim >= 3 and g.nodes[i].shape[1] == k for i in call.inputs)
            if over_a_set and not per_expert:
                rows = self._rows_through(call, k)
                if isinstance(rows, list):
                    return rows
                if rows == _UNPROBED:  # rows of experts through a module that could not be re-run alone
                    return Undecided(
                        f"weights the outputs of {path} applied to the {k} stacked experts, but whether "
                        f"{path} maps them row by row (experts) or mixes them (attention) could not be probed"
                    )
                return (
                    f"weights the outputs of {path} applied position-wise over a set (attention), not experts"
                )
            return [ExpertRef(("module", path, i), path, i, None, (idx, i), n_calls) for i in range(k)]
        if not any(True for _ in module.parameters()):
            return f"weights the output of {path}, which has no parameters of its own"
        return [ExpertRef(("inline", idx, i), None, None, path, (idx, i)) for i in range(k)]

    def _scaled_rows(self, node: Node) -> int | None:
        """The operand whose rows `node` carries when it only rescales or shifts them by constants
        (`ex * task_scale[t]`, `ex + bias`: an elementwise op whose other operands no input reaches): the
        experts stay the operand's (a task's view of shared experts, not experts of its own)."""
        if node.op not in _ELEMENTWISE:
            return None
        refs = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, Ref)]
        rows = [r.node for r in refs if self.graph.nodes[r.node].shape == node.shape]
        if len(rows) != 1 or not self._from_input(rows[0]):
            return None
        if any(self._from_input(r.node) for r in refs if r.node != rows[0]):
            return None
        return rows[0]

    def _inner_pick(self, node: Node, axis: int) -> int | None:
        """The indexed tensor when `node` picks only along axes after the expert `axis` (`probs[:, :, t]`:
        each expert's column for one task): the experts stay the indexed tensor's, `axis` unchanged."""
        if node.op != "getitem" or len(node.args) < 2 or not isinstance(node.args[0], Ref):
            return None
        items = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        if len(items) <= axis or not all(
            isinstance(i, slice) and i == slice(None) for i in items[: axis + 1]
        ):
            return None
        if not all(isinstance(i, (int, slice)) and not isinstance(i, bool) for i in items[axis + 1 :]):
            return None
        return node.args[0].node

    def _from_input(self, idx: int) -> bool:
        """Whether the model's input reaches node `idx` (it varies with the row; undecided: yes)."""
        return reaches_input(self.graph, idx, at_limit=True)

    def slotwise(self, idx: int, axis: int) -> bool:
        """Whether each slot along `axis` of node `idx` is made from the same slot of the input's fields or
        of parameters by slot-wise ops only (products, sums, activations, views, index picks such as the
        pairs `e[:, rows] * e[:, cols]`), with no network of its own: followed back along that axis, every
        branch ends at the model's input or a parameter, never at a module's output or a contraction
        (einsum, matmul, a sum). Such slots are fields (an embedding per field, an interaction per pair of
        fields, a column of them), not sub-networks run over the shared input: weights over them are
        attention over features (AFM), never a gate. Experts as one batched parameter
        `relu(einsum('bd,edh->beh', x, W) + b)` reach the einsum: they stay experts."""
        g = self.graph
        seen = {(idx, axis)}
        todo = [(idx, axis)]
        sources = 0
        while todo:
            if len(seen) > 4096:
                return False
            cur, ax = todo.pop()
            node = g.nodes[cur]
            if node.op in ("input", "param"):
                sources += 1
                continue
            if node.op in ("buffer", "const"):
                continue
            if g.module_calls(cur):
                return False  # a module's output: a computation of its own
            nxt = _slot_operands(g, node, ax)
            if nxt is None:
                return False  # an op that may mix slots (a contraction, a reduction): not known to be fields
            for n in nxt:
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        return sources > 0

    def _rows_through(self, call: ModuleCall, k: int) -> list[ExpertRef] | str | None:
        """Experts that reach the weighted sum through a module applied row by row to their stack.

        `call` took one `[B, k, ...]` tensor. If each output row depends on its own input row only
        (probed: changing input row 0 leaves output rows 1.. untouched) and the input rows trace back to
        `k` expert computations, those are the experts (a LayerNorm, Linear or activation on the stack);
        otherwise None: attention over a set (rows mixed, weights scored from the rows themselves, or values
        that are features, not experts).
        """
        g = self.graph
        sets = [i for i in call.inputs if g.nodes[i].ndim >= 3 and g.nodes[i].shape[1] == k]
        if len(sets) != 1 or g.nodes[sets[0]].tensor is None:
            return None
        inp = g.nodes[sets[0]]
        if self.weights is not None and self.weights in g.descendants(inp.idx):
            return None  # the weights are scored from these rows: attention over them
        got = self.resolve(inp.idx, 1, k)
        if isinstance(got, str):
            return None
        probed = _row_wise(g.modules[call.path], inp.tensor) if len(call.inputs) == 1 else None
        if probed is None:
            return _UNPROBED
        return got if probed else None

    def _inline(self, idx: int, k: int, axis: int | None = None) -> list[ExpertRef] | str:
        """Experts computed inline: accepted only if parameters enter before the nearest module outputs,
        and the slots are not the input's own features (`slotwise`)."""
        g = self.graph
        if axis is not None and k > 1 and self.slotwise(idx, axis):
            return (
                f"weights {k} values made slot by slot from the input's fields or parameters (products "
                "or picks of the same tensors, e.g. pairwise interactions of field embeddings), with no "
                "network of their own: attention over features, not experts"
            )
        seen = {idx}
        todo = [idx]
        uses_params = False
        lookups = False
        while todo and len(seen) < 256:
            node = g.nodes[todo.pop()]
            for p in node.parents:
                if p in seen:
                    continue
                seen.add(p)
                pn = g.nodes[p]
                if pn.op == "param":
                    uses_params = True
                    continue
                calls = g.module_calls(p)
                if calls:
                    lookups |= any(isinstance(g.modules.get(c.path), _LOOKUPS) for c in calls)
                    for c in calls:  # an activation applied to a layer's output: the layer's parameters
                        module = g.modules.get(c.path)
                        if module is None or isinstance(module, _LOOKUPS):
                            continue
                        if any(g.nodes[i].ndim >= 3 and g.nodes[i].shape[1] == k for i in c.inputs) and k > 1:
                            continue  # position-wise over a set of k: attention values, not experts
                        uses_params |= any(True for _ in module.parameters())
                    continue
                if pn.op not in ("input", "buffer", "const"):
                    todo.append(p)
        if not uses_params:
            what = "embedding lookups" if lookups else "tensors"
            return f"weights parameter-free combinations of {what}: attention over features, not experts"
        parent = g.nodes[idx].module
        parent = None if parent in (None, ROOT) else parent
        return [ExpertRef(("inline", idx, i), None, None, parent or ROOT, (idx, i)) for i in range(k)]


_SLOTWISE = _ELEMENTWISE | frozenset(
    {
        "neg",
        "abs",
        "exp",
        "log",
        "pow",
        "square",
        "sqrt",
        "rsqrt",
        "gelu",
        "silu",
        "softplus",
        "leaky_relu",
        "elu",
    }
)
"""Ops that compute each value from the values at the same position of their operands (broadcast)."""


def _slot_operands(graph: Graph, node: Node, axis: int) -> list[tuple[int, int]] | None:
    """The operands of `node` that carry its slot `axis`, each with the axis there: operands of a slot-wise
    op with that axis (same size, broadcast aligned from the right), the input of a pick along it
    (`e[:, [i0, i1, ...]]`) or along another axis, the parts of a `cat` along it, a view's input. None when
    `node` is none of these (it may mix slots)."""
    if node.op in _SLOTWISE:
        out = []
        for a in (*node.args, *node.kwargs.values()):
            if not isinstance(a, Ref):
                continue
            shape = graph.nodes[a.node].shape
            ax = axis - (node.ndim - len(shape))
            if ax >= 0 and shape[ax] == node.shape[axis]:
                out.append((a.node, ax))
        return out
    if node.op == "cat" and norm_dim(node.arg(1, "dim", 0), node.ndim) == axis:
        seq = node.arg(0, "tensors")
        return [(r.node, axis) for r in seq if isinstance(r, Ref)] if isinstance(seq, (list, tuple)) else None
    picked = picks_of(graph, node)
    if picked is not None:
        src, pax, _, kept = picked
        if kept:
            return [(src, axis)]
        return [(src, axis if axis < pax else axis + 1)]
    p = view_parent(graph, node)
    if p is not None:
        ax = map_axis(node, graph.nodes[p], axis, forward=False)
        return None if ax is None else [(p, ax)]
    return None


def _row_wise(module: nn.Module, x: torch.Tensor) -> bool | None:
    """Whether `module` maps `x` `[B, k, ...]` row by row along axis 1: output rows 1.. stay the same when
    input row 0 changes (and the output keeps the `[B, k]` layout). Run in eval mode, without grad, on the
    traced input; training flags are restored. None when it cannot be re-run on `x` alone (it raised, or
    returned no tensor)."""
    modes = {m: m.training for m in module.modules()}
    try:
        module.eval()
        with torch.no_grad():
            base = module(x)
            moved = x.detach().clone()
            moved[:, 0] = moved[:, 0] * 1.5 + 1.0
            after = module(moved)
    except Exception:  # a module that cannot be re-run alone: not known either way
        return None
    finally:
        for m, flag in modes.items():
            m.training = flag
    if not isinstance(base, torch.Tensor) or not isinstance(after, torch.Tensor):
        return None
    if base.shape != after.shape or base.ndim < 2 or base.shape[:2] != x.shape[:2]:
        return False
    return bool(torch.equal(base[:, 1:], after[:, 1:]))
