"""Step 3 of discovery: where a gate's weights can be recorded, given the mixture that uses them.

A module output first (the outermost module returning the softmax, `output="probs"`, or the module
producing the logits of a functional softmax, `output="logits"`; a module called several times per
forward is avoided or pinned with `call`), else the torch function call that makes them, else the
combining op itself; a top-k gate is read as its k weights plus the indices of its `topk` call; a
two-expert blend's gate as its one weight per row `w` `[batch, 1]`, recorded as `[1 - w, w]`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from mmoe_inspect.topology._attention import ATTENTION_OPS, WEIGHTS_POS
from mmoe_inspect.topology._graphops import backward_views
from mmoe_inspect.topology._mixing import Mixture
from mmoe_inspect.topology._nodes import kind_of, node_where, row_values
from mmoe_inspect.topology._trace import ROOT, Graph, Node, Ref, softmax_dim
from mmoe_inspect.topology.spec import GateOutput

__all__ = ["Located", "gate_score", "locate", "locate_part", "locate_two_way"]


def gate_shaped(graph: Graph, idx: int, ax: int | None, bax: int | None, n_experts: int) -> bool:
    """Node `idx` holds only the gate: `n_experts` on `ax`, the batch on `bax` (if any), 1 elsewhere."""
    shape = graph.nodes[idx].shape
    if ax is None or ax >= len(shape) or shape[ax] != n_experts:
        return False
    if bax is not None and (bax >= len(shape) or shape[bax] != graph.batch_size):
        return False
    return all(s == 1 for i, s in enumerate(shape) if i not in (ax, bax))


def view_chain(graph: Graph, idx: int, ax: int, bax: int | None) -> list[tuple[int, int | None, int | None]]:
    """`idx` and its ancestors through view-like ops, nearest first, with the expert and batch axes."""
    e_chain = backward_views(graph, idx, ax)
    b_chain = backward_views(graph, idx, bax) if bax is not None else [(i, None) for i, _ in e_chain]
    return [(i, a, b) for (i, a), (_, b) in zip(e_chain, b_chain, strict=True)]


@dataclass(frozen=True)
class Located:
    """Where a gate is read: module output (op None) or a torch function call."""

    module: str
    output: GateOutput
    dim: int
    batch_dim: int
    call: int | None = None
    op: str | None = None
    occurrence: int = 0
    arg: int = -1
    producer: int = -1
    note: str | None = None
    index_op: str | None = None
    index_occurrence: int = 0
    index_arg: int = -2
    part_dim: int | None = None
    part: int = 0
    two_way: bool = False  # the tensor read holds one weight w per row; the gate is `[1 - w, w]`


def _read_out(node: Node) -> bool:
    """Whether a call's output `node` can be read by a function tap: its first output, or the attention
    weights the tracer records for an attention call (`_attention.WEIGHTS_POS`, tap `arg` -2)."""
    return node.out_pos == 0 or (node.op in ATTENTION_OPS and node.out_pos == WEIGHTS_POS)


def locate_part(graph: Graph, mix: Mixture, part: int) -> Located | str:
    """Where gate `part` of a fused mixture (`Mixture.fused`) is read: the module output holding exactly the
    fused gates `[batch, T, E]` (1 elsewhere), else the torch function call that makes them; the gate is that
    tensor's slice `part` on the gates' axis there."""
    assert mix.fused_axis is not None and mix.w_batch is not None
    e_chain = backward_views(graph, mix.weights, mix.w_axis)
    b_chain = backward_views(graph, mix.weights, mix.w_batch)
    f_chain = backward_views(graph, mix.weights, mix.fused_axis)
    chain = [(i, a, b, f) for (i, a), (_, b), (_, f) in zip(e_chain, b_chain, f_chain, strict=True)]

    def shaped(idx: int, ax: int | None, bax: int | None, fax: int | None) -> bool:
        shape = graph.nodes[idx].shape
        if None in (ax, bax, fax) or len({ax, bax, fax}) != 3:
            return False
        want = {ax: mix.n_experts, bax: graph.batch_size, fax: mix.fused}
        return all(shape[i] == want.get(i, 1) for i in range(len(shape)))

    for idx, ax, bax, fax in reversed(chain):  # from the producer towards the combination
        call = graph.outermost_call(idx)
        if call is not None and shaped(idx, ax, bax, fax) and graph.calls.get(call.path, 1) == 1:
            kind = kind_of(graph, idx, ax, bax)
            return Located(call.path, kind, ax, bax, producer=idx, part_dim=fax, part=part)  # type: ignore[arg-type]
    producer, pax, pbax, pfax = chain[-1]
    pnode = graph.nodes[producer]
    if pnode.seq >= 0 and _read_out(pnode) and shaped(producer, pax, pbax, pfax):
        module = pnode.module or ROOT
        return Located(
            module,
            kind_of(graph, producer, pax, pbax),
            pax,  # type: ignore[arg-type]
            pbax,  # type: ignore[arg-type]
            op=pnode.op,
            occurrence=graph.occurrence(producer, module),
            arg=-(pnode.out_pos + 1),
            producer=producer,
            part_dim=pfax,
            part=part,
        )
    return "its gates are made where neither a module output nor a torch function call holds exactly them"


def locate(graph: Graph, mix: Mixture) -> Located | str:
    """Where the weights of `mix` can be recorded (module output first, else a function call), or why not."""
    e = mix.n_experts
    chain = view_chain(graph, mix.weights, mix.w_axis, mix.w_batch)
    n_calls = graph.calls
    if mix.indices is not None:
        return locate_top_k(graph, mix, chain[-1])
    probs = None
    for idx, ax, bax in reversed(chain):  # from the producer towards the combination
        call = graph.outermost_call(idx)
        if call is not None and gate_shaped(graph, idx, ax, bax, e):
            probs = (call, idx, ax, bax)
            break
    producer, pax, pbax = chain[-1]
    pnode = graph.nodes[producer]
    logits = None
    if pnode.op == "softmax" and pax is not None and softmax_dim(pnode.args, pnode.kwargs, pnode.ndim) == pax:
        src = pnode.args[0] if pnode.args else None
        if isinstance(src, Ref):
            for idx, ax, bax in view_chain(graph, src.node, pax, pbax):
                call = graph.outermost_call(idx)
                if call is not None:
                    if gate_shaped(graph, idx, ax, bax, e):
                        logits = (call, idx, ax, bax)
                    break

    def module_gate(
        found: tuple, output: GateOutput | None, call_index: int | None, note: str | None
    ) -> Located:
        call, idx, ax, bax = found
        kind = output or kind_of(graph, idx, ax, bax)
        return Located(call.path, kind, ax, -1 if bax is None else bax, call_index, producer=idx, note=note)

    if probs is not None and n_calls.get(probs[0].path, 1) == 1:
        return module_gate(probs, None, None, None)
    if logits is not None and n_calls.get(logits[0].path, 1) == 1:
        note = None
        if probs is not None:
            note = (
                f"softmax module {probs[0].path} runs {n_calls[probs[0].path]} times per forward; "
                f"gate traced to the module producing its logits, {logits[0].path}"
            )
        return module_gate(logits, "logits", None, note)
    chosen = probs or logits
    if chosen is not None:
        call = chosen[0]
        note = f"module {call.path} runs {n_calls[call.path]} times per forward; this gate is its call {call.call}"
        return module_gate(chosen, "logits" if chosen is logits else None, call.call, note)
    if pnode.seq >= 0 and _read_out(pnode) and pax is not None:
        module = pnode.module or ROOT
        return Located(
            module,
            kind_of(graph, producer, pax, pbax),
            pax,
            -1 if pbax is None else pbax,
            op=pnode.op,
            occurrence=graph.occurrence(producer, module),
            arg=-(pnode.out_pos + 1),
            producer=producer,
        )
    cnode = graph.nodes[mix.combine]
    if mix.arg >= 0 and cnode.seq >= 0:  # weights that no op made (a parameter, a constant): read at the mix
        module = cnode.module or ROOT
        w = graph.nodes[mix.weights]
        return Located(
            module,
            kind_of(graph, mix.weights, mix.w_axis, mix.w_batch),
            mix.w_axis,
            -1 if mix.w_batch is None else mix.w_batch,
            op=cnode.op,
            occurrence=graph.occurrence(mix.combine, module),
            arg=mix.arg,
            producer=mix.weights,
            note=f"gate weights {list(w.shape)} are read where {cnode.op} in {node_where(graph, mix.combine)} uses them",
        )
    return "its weights are made where no torch function call can be located"


def _one_per_row(graph: Graph, idx: int, ax: int | None, bax: int | None) -> int | None:
    """The size-1 axis of node `idx` when it holds one value per row (the batch on `bax`, 1 elsewhere): `ax`,
    or for a tensor whose axis was renumbered on the way to the blend (`w.squeeze(1)...unsqueeze(1)`) its last
    size-1 axis; 1 for a `[batch]` tensor."""
    shape = graph.nodes[idx].shape
    if bax is None or bax >= len(shape) or shape[bax] != graph.batch_size:
        return None
    if shape == (graph.batch_size,):
        return 1  # a `[batch]` w: its gate axis is one past its last (`two_way_pair` unsqueezes it)
    ones = [i for i, s in enumerate(shape) if i != bax and s == 1]
    if len(ones) != len(shape) - 1 or not ones:
        return None
    return ax if ax in ones else ones[-1]


def locate_two_way(graph: Graph, mix: Mixture) -> Located | str:
    """Where the per-row weight `w` of a two-way blend (`Mixture.two_way`) can be recorded: the outermost
    module returning exactly `w` (`[batch, 1]`, 1 elsewhere), else the torch function call that makes it.
    Both factors of `(1 - w) * x0 + w * x1` must be made from that tensor (an edit written there reaches both
    terms). The gate is read as `[1 - w, w]` (`GateSpec.two_way`), so `w` must lie in [0, 1] on the example
    batch."""
    chain = [
        (idx, _one_per_row(graph, idx, ax, bax), bax)
        for idx, ax, bax in view_chain(graph, mix.weights, mix.w_axis, mix.w_batch)
    ]
    if mix.w_other is not None:
        other = mix.w_other
        chain = [c for c in chain if c[0] == other or other in graph.descendants(c[0])]
        column = None if chain else _locate_column(graph, mix)
        if column is not None:
            return column
        if not chain:
            return (
                "its weight w is made separately for each term (each factor of (1 - w) * x0 + w * x1 computes its "
                "own w, e.g. selects it again), so no one tensor holds it; make w once (w = s[:, k:k+1]) and "
                "blend with it"
            )
    found: Located | None = None
    for idx, ax, bax in reversed(chain):  # from the producer towards the blend
        call = graph.outermost_call(idx)
        if call is None or ax is None or bax is None:
            continue
        runs = graph.calls.get(call.path, 1)
        note = (
            None
            if runs == 1
            else f"module {call.path} runs {runs} times per forward; this gate is its call {call.call}"
        )
        found = Located(
            call.path,
            "probs",
            ax,
            bax,
            None if runs == 1 else call.call,
            producer=idx,
            note=note,
            two_way=True,
        )
        break
    for idx, ax, bax in reversed(chain) if found is None else ():  # the first call that makes exactly `w`
        node = graph.nodes[idx]
        if node.seq < 0 or node.out_pos != 0 or ax is None or bax is None:
            continue
        module = node.module or ROOT
        found = Located(
            module,
            "probs",
            ax,
            bax,
            op=node.op,
            occurrence=graph.occurrence(idx, module),
            producer=idx,
            two_way=True,
        )
        break
    if found is None:
        return "its weight is made where neither a module output nor a torch function call holds exactly it"
    t = graph.nodes[found.producer].tensor  # one value per row, 1 elsewhere
    rows = None if t is None or not t.is_floating_point() else t.detach().to(torch.float64).reshape(-1)
    if rows is None or not bool(torch.isfinite(rows).all()):
        return "its weight's values could not be read on the example batch"
    if float(rows.min()) < -1e-6 or float(rows.max()) > 1 + 1e-6:
        return (
            f"its weight leaves [0, 1] (from {float(rows.min()):.3g} to {float(rows.max()):.3g} on the example "
            "batch): an extrapolation, not a gate over the two"
        )
    return found


def _column(graph: Graph, idx: int) -> tuple[int, int, int] | None:
    """(tensor, axis, k) when node `idx` is `s[:, k:k+1]` of a 2-D `[batch, T]` tensor `s` (either axis order)."""
    node = graph.nodes[idx]
    if node.op != "getitem" or len(node.args) != 2 or not isinstance(node.args[0], Ref):
        return None
    src, key = node.args[0].node, node.args[1]
    shape = graph.nodes[src].shape
    if len(shape) != 2 or not isinstance(key, tuple) or len(key) != 2 or graph.batch_size not in shape:
        return None
    bax = shape.index(graph.batch_size)
    ax = 1 - bax
    whole, part = key[bax], key[ax]
    if whole != slice(None) or not isinstance(part, slice) or part.step not in (None, 1):
        return None
    k = part.start if part.start is not None else 0
    if not isinstance(k, int) or not 0 <= k < shape[ax] or part.stop != k + 1:
        return None
    return src, ax, k


def _locate_column(graph: Graph, mix: Mixture) -> Located | str | None:
    """A two-way blend `(1 - s[:, k:k+1]) * x0 + s[:, k:k+1] * x1` slicing its weight once per term: read at the
    tensor `s` `[batch, T]` both slices come from (the module returning it, else the call making it), as its
    column `k` (`GateSpec.part_dim`); None when the weight is no such slice."""
    found = _column(graph, mix.weights)
    if found is None or mix.w_other is None or mix.w_other not in graph.descendants(found[0]):
        return None
    src, ax, k = found
    bax = 1 - ax
    call = graph.outermost_call(src)
    node = graph.nodes[src]
    if call is not None and graph.calls.get(call.path, 1) == 1:
        loc = Located(call.path, "probs", ax, bax, producer=src, part_dim=ax, part=k, two_way=True)
    elif node.seq >= 0 and node.out_pos == 0:
        module = node.module or ROOT
        occurrence = graph.occurrence(src, module)
        loc = Located(
            module, "probs", ax, bax, op=node.op, occurrence=occurrence, producer=src, part_dim=ax, part=k
        )
        loc = replace(loc, two_way=True)
    else:
        return None
    rows = row_values(graph, src, ax, bax)
    if rows is None or not bool(torch.isfinite(rows).all()):
        return "its weight's values could not be read on the example batch"
    col = rows[:, k]
    if float(col.min()) < -1e-6 or float(col.max()) > 1 + 1e-6:
        return (
            f"its weight leaves [0, 1] (from {float(col.min()):.3g} to {float(col.max()):.3g} on the example "
            "batch): an extrapolation, not a gate over the two"
        )
    return loc


def locate_top_k(graph: Graph, mix: Mixture, producer: tuple[int, int | None, int | None]) -> Located | str:
    """A top-k gate: its k weights read where they are made, their indices at the `topk` call."""
    idx, pax, pbax = producer
    pnode, inode = graph.nodes[idx], graph.nodes[mix.indices]  # type: ignore[index]
    if pnode.seq < 0 or inode.seq < 0 or pax is None:
        return "its top-k weights are not made by a torch function call"
    module = pnode.module or ROOT
    if module not in graph.ops[inode.seq][1]:
        module = ROOT  # the indices are made elsewhere: count both calls over the model's forward
    return Located(
        module,
        "probs" if kind_of(graph, idx, pax, pbax) == "probs" else "weights",
        pax,
        -1 if pbax is None else pbax,
        op=pnode.op,
        occurrence=graph.occurrence(idx, module),
        arg=-(pnode.out_pos + 1),
        producer=idx,
        index_op=inode.op,
        index_occurrence=graph.occurrence(mix.indices, module),  # type: ignore[arg-type]
        index_arg=-(inode.out_pos + 1),
        note=f"top-{graph.nodes[idx].shape[pax]} gate over {mix.n_experts} experts: weights scattered by the "
        f"indices of {inode.op} in {node_where(graph, inode.idx)}",
    )


def gate_score(graph: Graph, mix: Mixture) -> tuple[int, int, int]:
    """Prefer, among readings of one combination, weights that look like a gate (a distribution). A split
    reading (`Mixture.split`: per-expert weights no one tensor holds, seen but not read) comes after every
    other: its weights are one column `w[:, i:i+1]`, which "sums to 1" on every row when a saturated softmax
    puts all its weight there (a collapsed gate), and must not win over the softmax the columns came from."""
    chain = view_chain(graph, mix.weights, mix.w_axis, mix.w_batch)
    producer, pax, pbax = chain[-1]
    kind = kind_of(graph, producer, pax, pbax)
    op = graph.nodes[producer].op
    return (int(mix.split), 0 if kind == "probs" else 1 if op in ("sigmoid", "softmax") else 2, mix.combine)
