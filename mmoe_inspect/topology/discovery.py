"""Automatic topology discovery for multi-task MoE models we did not write.

`discover_topology(model, example_input)` runs ONE instrumented forward on a small batch (see
`_trace.py`: hooks on every submodule plus a `TorchFunctionMode` recording a provenance graph of
every torch op) and reads the model's gates off that graph:

1. candidates: softmax outputs shaped `[batch, E]` / `[batch, E, 1]` (E >= 2) over the E axis;
2. a candidate is a gate only if it (or a view of it) weights E expert outputs `[batch, E, dim]`
   in a `mul`/`matmul`/`bmm`/`einsum` that also sums over E (`_graphops.py`); softmaxes that mix
   nothing (feature re-weighting, output distributions) or that weight embedding lookups
   (attention over features) are not gates;
3. the gate module is the outermost module returning that softmax (`output="probs"`), or the
   module producing the logits of a functional softmax (`output="logits"`); a module called
   several times per forward is avoided (per-task logits producer) or pinned with `call`;
4. experts are traced back through stack/cat/views to module outputs (`_experts.py`);
5. tasks come from the output (dict, `[batch, T]` tensor or list), kinds from arguments,
   `model.task_types`, a final sigmoid, or the value range (`_tasks.py`);
6. the task a gate serves comes from autograd on this batch: the gate outputs are rebuilt from
   grad-requiring leaves and `torch.autograd.grad(task.sum(), leaves)` says which tasks they move;
   levels come from gate-to-gate dependence (a gate whose mixture feeds another gate's experts sits
   on a lower level).

The model is left exactly as found: training flags restored, hooks removed (also on errors), no
parameter, buffer or `.grad` touched.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from mmoe_inspect._plural import plural
from mmoe_inspect.topology._experts import ExpertRef, ExpertTracer
from mmoe_inspect.topology._graphops import backward_views
from mmoe_inspect.topology._mixing import Mixture, find_mixtures, gathered_experts
from mmoe_inspect.topology._nodes import feeds, kind_of, node_module, node_where
from mmoe_inspect.topology._tasks import TaskOutput, parse_outputs, task_specs
from mmoe_inspect.topology._trace import (
    ROOT,
    Graph,
    Ref,
    iter_tensors,
    replay_with_leaves,
    softmax_dim,
    trace_forward,
)
from mmoe_inspect.topology._unresolved import (
    function_snippet,
    module_snippet,
    named_like_gates,
    outside_torch,
    unexplained_softmaxes,
)
from mmoe_inspect.topology.spec import (
    ExpertSpec,
    GateOutput,
    GateSpec,
    TaskSpec,
    Topology,
    TopologyError,
    Unresolved,
)

__all__ = ["NO_GATES_NOTE", "discover_topology", "validate_topology"]

NO_GATES_NOTE = "no gates found: the model looks like a Shared-Bottom (or dense) multi-task model"

# Confidence lost per doubtful finding (the notes say which applied).
_PENALTY = {
    "inline": 0.2,
    "call": 0.15,
    "untraced": 0.3,
    "no_task": 0.05,
    "names": 0.05,
    "kinds": 0.05,
    "expert_calls": 0.1,
    "extra_mix": 0.05,
}


@dataclass
class _Gate:
    """A confirmed gate while it is being described."""

    loc: _Located  # where the weights are read (module output or function call)
    weights: int  # node of the weights as the combination reads them
    n_experts: int
    mixture_output: int
    expert_nodes: list[int]
    experts: list[ExpertRef]
    tasks: set[str] = field(default_factory=set)
    task: str | None = None
    level: int = 0
    name: str = ""
    deps: list[int] = field(default_factory=list)
    refined: bool = False
    uses: int = 1

    @property
    def producer(self) -> int:
        """Node of the weights where they are read (module output, op output or combine op)."""
        return self.loc.producer


def _gate_shaped(graph: Graph, idx: int, ax: int | None, bax: int | None, n_experts: int) -> bool:
    """Node `idx` holds only the gate: `n_experts` on `ax`, the batch on `bax` (if any), 1 elsewhere."""
    shape = graph.nodes[idx].shape
    if ax is None or ax >= len(shape) or shape[ax] != n_experts:
        return False
    if bax is not None and (bax >= len(shape) or shape[bax] != graph.batch_size):
        return False
    return all(s == 1 for i, s in enumerate(shape) if i not in (ax, bax))


def _chain(graph: Graph, idx: int, ax: int, bax: int | None) -> list[tuple[int, int | None, int | None]]:
    """`idx` and its ancestors through view-like ops, nearest first, with the expert and batch axes."""
    e_chain = backward_views(graph, idx, ax)
    b_chain = backward_views(graph, idx, bax) if bax is not None else [(i, None) for i, _ in e_chain]
    return [(i, a, b) for (i, a), (_, b) in zip(e_chain, b_chain, strict=True)]


@dataclass(frozen=True)
class _Located:
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


def _locate(graph: Graph, mix: Mixture) -> _Located | str:
    """Where the weights of `mix` can be recorded (module output first, else a function call), or why not."""
    e = mix.n_experts
    chain = _chain(graph, mix.weights, mix.w_axis, mix.w_batch)
    n_calls = graph.calls
    if mix.indices is not None:
        return _locate_top_k(graph, mix, chain[-1])
    probs = None
    for idx, ax, bax in reversed(chain):  # from the producer towards the combination
        call = graph.outermost_call(idx)
        if call is not None and _gate_shaped(graph, idx, ax, bax, e):
            probs = (call, idx, ax, bax)
            break
    producer, pax, pbax = chain[-1]
    pnode = graph.nodes[producer]
    logits = None
    if pnode.op == "softmax" and pax is not None and softmax_dim(pnode.args, pnode.kwargs, pnode.ndim) == pax:
        src = pnode.args[0] if pnode.args else None
        if isinstance(src, Ref):
            for idx, ax, bax in _chain(graph, src.node, pax, pbax):
                call = graph.outermost_call(idx)
                if call is not None:
                    if _gate_shaped(graph, idx, ax, bax, e):
                        logits = (call, idx, ax, bax)
                    break

    def module_gate(
        found: tuple, output: GateOutput | None, call_index: int | None, note: str | None
    ) -> _Located:
        call, idx, ax, bax = found
        kind = output or kind_of(graph, idx, ax, bax)
        return _Located(call.path, kind, ax, -1 if bax is None else bax, call_index, producer=idx, note=note)

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
    if pnode.seq >= 0 and pnode.out_pos == 0 and pax is not None:
        module = pnode.module or ROOT
        return _Located(
            module,
            kind_of(graph, producer, pax, pbax),
            pax,
            -1 if pbax is None else pbax,
            op=pnode.op,
            occurrence=graph.occurrence(producer, module),
            producer=producer,
        )
    cnode = graph.nodes[mix.combine]
    if mix.arg >= 0 and cnode.seq >= 0:  # weights that no op made (a parameter, a constant): read at the mix
        module = cnode.module or ROOT
        w = graph.nodes[mix.weights]
        return _Located(
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


def _locate_top_k(graph: Graph, mix: Mixture, producer: tuple[int, int | None, int | None]) -> _Located | str:
    """A top-k gate: its k weights read where they are made, their indices at the `topk` call."""
    idx, pax, pbax = producer
    pnode, inode = graph.nodes[idx], graph.nodes[mix.indices]  # type: ignore[index]
    if pnode.seq < 0 or inode.seq < 0 or pax is None:
        return "its top-k weights are not made by a torch function call"
    module = pnode.module or ROOT
    if module not in graph.ops[inode.seq][1]:
        module = ROOT  # the indices are made elsewhere: count both calls over the model's forward
    return _Located(
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


def _gate_score(graph: Graph, mix: Mixture) -> tuple[int, int]:
    """Prefer, among readings of one combination, weights that look like a gate (a distribution)."""
    chain = _chain(graph, mix.weights, mix.w_axis, mix.w_batch)
    producer, pax, pbax = chain[-1]
    kind = kind_of(graph, producer, pax, pbax)
    op = graph.nodes[producer].op
    return (0 if kind == "probs" else 1 if op in ("sigmoid", "softmax") else 2, mix.combine)


def _levels(graph: Graph, gates: list[_Gate]) -> None:
    """Level 0 = closest to the input; a gate whose mixture reaches another gate's experts is lower."""
    reach = [graph.descendants(g.mixture_output) for g in gates]
    deps = [
        [i for i, r in enumerate(reach) if i != j and any(n in r for n in g.expert_nodes)]
        for j, g in enumerate(gates)
    ]
    memo: dict[int, int] = {}

    def level(j: int, stack: frozenset[int]) -> int:
        if j in memo:
            return memo[j]
        below = [level(i, stack | {j}) for i in deps[j] if i not in stack]
        memo[j] = 1 + max(below) if below else 0
        return memo[j]

    for j, g in enumerate(gates):
        g.level = level(j, frozenset())
        g.deps = deps[j]


def _assign_tasks(gates: list[_Gate]) -> int:
    """Task of each gate from autograd influence; lower-level gates refined through the next level.

    Returns the number of gates that serve no task at all.
    """
    unused = 0
    for g in sorted(gates, key=lambda g: -g.level):
        if len(g.tasks) == 1:
            g.task = next(iter(g.tasks))
            continue
        if not g.tasks:
            unused += 1
            continue
        me = gates.index(g)
        consumers = {h.task for h in gates if h.level == g.level + 1 and me in h.deps and h.task is not None}
        if len(consumers) == 1:
            g.task = next(iter(consumers))
            g.refined = True
    return unused


def _name_gates(gates: list[_Gate], task_order: dict[str, int]) -> None:
    """Sort gates (level, task order, forward order) and name them "{task}" / "L{level}.{task}" / "shared"."""
    multi = len({g.level for g in gates}) > 1
    gates.sort(
        key=lambda g: (
            g.level,
            task_order.get(g.task, len(task_order)) if g.task else len(task_order),
            g.producer,
        )
    )
    used: dict[str, int] = {}
    for g in gates:
        base = g.task if g.task is not None else "shared"
        if multi:
            base = f"L{g.level}.{base}"
        k = used.get(base, 0)
        used[base] = k + 1
        g.name = base if k == 0 else f"{base}#{k}"


def _architecture(gates: list[_Gate], experts: list[ExpertSpec], n_tasks: int) -> str:
    """Architecture label from the found structure: shared_bottom, omoe, mmoe, cgc, ple or moe."""
    if not gates:
        return "shared_bottom"
    owned = any(e.owner != "shared" for e in experts)
    if len({g.level for g in gates}) > 1:
        return "ple" if owned else "moe"
    if owned:
        return "cgc"
    task_gates = {g.task for g in gates if g.task is not None}
    if len(gates) == 1 and not task_gates:
        return "omoe"
    if len(task_gates) == n_tasks and len(gates) == n_tasks:
        return "mmoe"
    return "moe"


def discover_topology(
    model: nn.Module,
    example_input: Any,
    *,
    task_names: Sequence[str] | None = None,
    task_kinds: Sequence[str] | dict[str, str] | None = None,
) -> Topology:
    """Discover tasks, experts and gates of `model` from one forward on `example_input`.

    Args:
        model: any `nn.Module` (a torch-rechub, DeepCTR-Torch or hand-written multi-task model).
        example_input: a small batch (e.g. 64 rows): a Tensor `[batch, ...]`, a dict of tensors
            `{name: [batch, ...]}` (passed as one argument), or a tuple of positional arguments.
        task_names: names for the tasks, in output order (default: dict keys, `model.task_names`,
            else `task_0, task_1, ...`).
        task_kinds: "binary"/"regression" per task (a list in output order or a `{task: kind}`
            mapping); default `model.task_types`, else a final sigmoid or outputs in [0, 1] mean binary.

    Returns:
        A `Topology` with `source="discovered"`, a `confidence` in [0, 1] and `notes` saying what was
        found and what is doubtful. Gates are `[batch, E]` over experts named by module path.
        A model without gates gets no gates and the note `NO_GATES_NOTE`.

    Raises:
        TopologyError: the forward failed on `example_input`, or the output holds no per-row
            predictions, or `task_names`/`task_kinds` do not fit the output.
    """
    try:
        with torch.inference_mode(False):
            graph, out = trace_forward(model, _usable(example_input))
    except Exception as exc:
        raise TopologyError(
            f"discovery could not run the model on the example input: {type(exc).__name__}: {exc}"
        ) from exc
    with torch.inference_mode(False), torch.enable_grad():
        return _describe(model, graph, out, task_names, task_kinds, _usable(example_input))


def _usable(x: Any) -> Any:
    """Inference-mode tensors cannot enter an autograd graph: give discovery plain copies."""
    if isinstance(x, torch.Tensor):
        return x.clone() if x.is_inference() else x
    if isinstance(x, tuple):
        return tuple(_usable(v) for v in x)
    if isinstance(x, list):
        return [_usable(v) for v in x]
    if isinstance(x, dict):
        return {k: _usable(v) for k, v in x.items()}
    return x


def _describe(
    model: nn.Module,
    graph: Graph,
    out: Any,
    task_names: Sequence[str] | None,
    task_kinds: Any,
    example_input: Any,
) -> Topology:
    """Steps 1-8 of the module docstring on a traced forward: the `Topology` with notes and confidence."""
    notes: list[str] = []
    penalties: set[str] = set()
    outputs, invented = parse_outputs(graph, out, task_names, model, notes)
    if invented:
        penalties.add("names")
    tasks, kinds_guessed = task_specs(graph, outputs, task_kinds, model, notes)
    if kinds_guessed:
        penalties.add("kinds")
    try:
        return _describe_gates(model, graph, out, example_input, outputs, tasks, notes, penalties)
    except TopologyError:
        raise
    except Exception as exc:  # a model shaped like nothing seen before: say so, never pass as "no gates"
        return Topology(
            tasks=tasks,
            source="discovered",
            confidence=0.0,
            notes=(f"discovery stopped on this model: {type(exc).__name__}: {exc}", *notes),
            unresolved=(
                Unresolved(
                    "the model's forward",
                    ROOT,
                    f"discovery could not finish reading it ({type(exc).__name__}: {str(exc)[:200]}); "
                    "name the gates in a spec file",
                    module_snippet("<module path of the gate>", None, tasks),
                ),
            ),
        )


def _describe_gates(
    model: nn.Module,
    graph: Graph,
    out: Any,
    example_input: Any,
    outputs: list[TaskOutput],
    tasks: tuple[TaskSpec, ...],
    notes: list[str],
    penalties: set[str],
) -> Topology:
    """Steps 1-8 after the tasks: mixtures -> gates, tasks per gate, experts, unresolved items, confidence."""
    # 1-4: mixtures -> gates (where their weights are read, which experts they mix)
    tracer = ExpertTracer(graph)
    gates: list[_Gate] = []
    rejected: list[tuple[Mixture, str]] = []
    unresolved: list[Unresolved] = []
    by_producer: dict[int, _Gate] = {}
    mixtures = find_mixtures(graph)
    readings: dict[int, list[Mixture]] = {}
    for mix in mixtures:
        readings.setdefault(mix.combine, []).append(mix)
    done_outputs: set[int] = set()
    for combine in sorted(readings):
        for mix in sorted(readings[combine], key=lambda m: _gate_score(graph, m)):
            if mix.output in done_outputs:
                break
            if len(mix.experts) == 1 and mix.experts[0][1] is not None and mix.indices is None:
                picked = gathered_experts(graph, *mix.experts[0])  # type: ignore[arg-type]
                if picked is not None:  # Mixtral-style: the chosen experts gathered by top-k indices
                    src, ax, idx = picked
                    mix = replace(
                        mix, experts=((src, ax),), n_experts=graph.nodes[src].shape[ax], indices=idx
                    )
            experts = _resolve_experts(tracer, mix)
            if isinstance(experts, str):
                rejected.append((mix, experts))
                continue
            found = _locate(graph, mix)
            if isinstance(found, str):
                rejected.append((mix, found))
                unresolved.append(
                    Unresolved(
                        f"a mixture of {mix.n_experts} experts ({graph.nodes[mix.combine].op})",
                        node_module(graph, mix.combine),
                        found,
                        function_snippet(graph, mix.combine, mix.n_experts, tasks, arg=mix.arg),
                    )
                )
                done_outputs.add(mix.output)
                break
            done_outputs.add(mix.output)
            same = by_producer.get(found.producer)
            if same is not None:
                same.uses += 1
                break
            if found.note:
                notes.append(found.note)
                if found.call is not None:
                    penalties.add("call")
            gate = _Gate(
                loc=found,
                weights=mix.weights,
                n_experts=mix.n_experts,
                mixture_output=mix.output,
                expert_nodes=[n for n, _ in mix.experts],
                experts=experts,
            )
            by_producer[found.producer] = gate
            gates.append(gate)
            break
    # a "mixture" whose output only builds another gate's weights is part of that gate (DSelect-k's
    # selectors mixed by a softmax), not a mixture of experts
    inner = [
        g
        for g in gates
        if any(h is not g and feeds(graph, g.mixture_output, {h.weights, h.producer}) for h in gates)
    ]
    for g in inner:
        gates.remove(g)
        notes.append(
            f"a weighted combination in {node_where(graph, g.mixture_output)} builds another gate's weights "
            "(part of that gate's computation, e.g. selectors); not a gate of its own"
        )
    for g in gates:
        loc = g.loc
        if loc.op is not None:
            notes.append(
                f"gate weights in {node_where(graph, g.producer)} are read at the function level: {loc.op} call "
                f"#{loc.occurrence}" + (f" (argument {loc.arg})" if loc.arg >= 0 else "") + f" while "
                f"{loc.module or 'the model'} runs"
            )
        if g.uses > 1:
            penalties.add("extra_mix")
            notes.append(f"one gate's weights are used in {g.uses} weighting ops; only the first was traced")
    if rejected:
        shown = {(graph.nodes[m.weights].shape, why, node_where(graph, m.combine)) for m, why in rejected}
        notes.append(
            f"{plural(len(shown), 'weighted combination')} {'is' if len(shown) == 1 else 'are'} not gates: "
            + "; ".join(f"{list(shape)} in {where} {why}" for shape, why, where in sorted(shown, key=str))
        )

    task_nodes = _task_nodes(graph, out, outputs)
    unresolved += unexplained_softmaxes(graph, gates, rejected, task_nodes, tasks, notes)
    unresolved += outside_torch(graph, task_nodes, tasks)
    unresolved += named_like_gates(model, graph, gates, tasks, notes)

    if not gates:
        if unresolved:
            notes.insert(
                0, f"no recordable gates, and {plural(len(unresolved), 'gate-like item')} unresolved"
            )
        else:
            notes.insert(0, NO_GATES_NOTE)
            notes.append(
                "no per-row weighted combination of expert outputs was found anywhere in the forward"
            )
        confidence = 0.8 - sum(_PENALTY[p] for p in penalties)
        return Topology(
            tasks=tasks,
            source="discovered",
            confidence=round(max(0.0, min(1.0, confidence)), 3),
            notes=tuple(notes),
            architecture=None if unresolved else "shared_bottom",
            unresolved=tuple(unresolved),
        )

    # 6: which tasks each gate's mixture moves (autograd on a replay of this batch, never .backward())
    target_of = {id(g): _leaf_node(graph, g) for g in gates}
    targets = {graph.nodes[n].seq: graph.nodes[n].out_pos for n in target_of.values()}
    try:
        out2, leaves = replay_with_leaves(model, example_input, targets)
    except Exception as exc:  # the first forward ran: a failing replay is the model's nondeterminism
        raise TopologyError(
            f"discovery could not replay the model's forward: {type(exc).__name__}: {exc}"
        ) from exc
    for o in outputs:
        pred = _task_tensor(out2, o)
        if pred is None:
            continue
        total = pred.float().sum()
        if not total.requires_grad:
            continue
        wanted = [(g, leaves.get(graph.nodes[target_of[id(g)]].seq)) for g in gates]
        present = [(g, leaf) for g, leaf in wanted if leaf is not None]
        if not present:
            continue
        grads = torch.autograd.grad(total, [lf for _, lf in present], allow_unused=True, retain_graph=True)
        for (g, _), grad in zip(present, grads, strict=True):
            if grad is not None and bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0:
                g.tasks.add(o.name)
    _levels(graph, gates)
    unused = _assign_tasks(gates)
    task_order = {t.name: i for i, t in enumerate(tasks)}
    _name_gates(gates, task_order)

    # experts: names, owners, levels
    inline_names: dict[tuple[object, ...], str] = {}
    inline_base: dict[tuple[str, int], int] = {}
    inline_count: dict[str, int] = {}
    refs: dict[tuple[object, ...], ExpertRef] = {}
    for g in gates:
        for r in g.experts:
            refs.setdefault(r.key, r)
    for r in sorted(refs.values(), key=lambda r: r.order):
        if r.module is not None or r.key[0] == "sparse":
            continue
        parent = r.parent or ROOT
        node_key = (parent, r.order[0])
        if node_key not in inline_base:
            inline_base[node_key] = inline_count.get(parent, 0)
        i = inline_base[node_key] + r.order[1]
        inline_count[parent] = max(inline_count.get(parent, 0), i + 1)
        inline_names[r.key] = f"{parent}.expert[{i}]" if parent else f"expert[{i}]"

    def expert_name(r: ExpertRef) -> str:
        if r.key[0] == "sparse" and r.parent:
            return r.parent  # a sparse-dispatch expert: named by its module, not hooked
        if r.module is None:
            return inline_names[r.key]
        return r.module if r.index is None else f"{r.module}[{r.index}]"

    specs: list[ExpertSpec] = []
    for r in sorted(refs.values(), key=lambda r: r.order):
        mixing = [g for g in gates if any(x.key == r.key for x in g.experts)]
        level = min(g.level for g in mixing)
        owners = {g.task for g in mixing if g.task is not None and g.level == level}
        at_level = [g for g in gates if g.level == level]
        mixed_by_all = all(any(x.key == r.key for x in g.experts) for g in at_level)
        owner = next(iter(owners)) if len(owners) == 1 and not mixed_by_all else "shared"
        specs.append(ExpertSpec(expert_name(r), module=r.module, index=r.index, owner=owner, level=level))
    specs.sort(key=lambda e: e.level)
    gate_specs = tuple(
        GateSpec(
            g.name,
            module=g.loc.module,
            experts=tuple(expert_name(r) for r in g.experts),
            task=g.task,
            level=g.level,
            output=g.loc.output,
            dim=g.loc.dim,
            call=g.loc.call,
            op=g.loc.op,
            occurrence=g.loc.occurrence,
            arg=g.loc.arg,
            batch_dim=g.loc.batch_dim,
            index_op=g.loc.index_op,
            index_occurrence=g.loc.index_occurrence,
            index_arg=g.loc.index_arg,
        )
        for g in gates
    )

    # 8: notes and confidence
    inline = sorted({expert_name(r) for r in refs.values() if r.module is None and r.key[0] != "sparse"})
    sparse = sorted({expert_name(r) for r in refs.values() if r.key[0] == "sparse"})
    if sparse:
        notes.append(
            f"{len(sparse)} experts run on their own rows (sparse top-k dispatch): {sparse[0]} ... {sparse[-1]}; "
            "their outputs are not recorded (no expert similarity), the gates are"
        )
    if inline:
        penalties.add("inline")
        notes.append(
            f"{len(inline)} experts are computed inline (no module returns them): "
            f"{inline[0]} ... {inline[-1]}; their outputs cannot be hooked one by one"
        )
    multi_called = sorted({r.module for r in refs.values() if r.module is not None and r.calls > 1})
    if multi_called:
        penalties.add("expert_calls")
        notes.append(
            f"expert modules run several times per forward: {', '.join(multi_called)}; every call is mixed by "
            "its gate, and the expert statistics (similarity, dead units) use each module's first call"
        )
    for g in gates:
        if g.refined:
            notes.append(
                f"gate {g.name} reaches several tasks only through shared gates above it; assigned to "
                f"{g.task}, whose next-level gate mixes the experts it feeds"
            )
    if unused:
        penalties.add("no_task")
        idle = ", ".join(g.name for g in gates if not g.tasks and not g.refined)
        notes.append(f"gates whose mixture reaches no task output on this batch (kept as shared): {idle}")
    weights_gates = [g.name for g in gates if g.loc.output == "weights"]
    if weights_gates:
        notes.append(
            f"gate(s) {', '.join(weights_gates)} are not distributions over their experts (rows need not sum "
            "to 1): utilization, top-1 share, co-activation and label routing apply; entropy and JSD do not"
        )
    functional = [g for g in gates if g.loc.op is not None]
    if not ({"inline", "call"} & penalties) and not functional:
        notes.insert(0, f"{plural(len(gates), 'gate')} traced to modules; experts traced to module outputs")
    else:
        notes.insert(
            0,
            f"{plural(len(gates), 'gate')} found"
            + (f" ({len(functional)} read at the function level)" if functional else ""),
        )
    confidence = 1.0 - sum(_PENALTY[p] for p in penalties)
    arch = _architecture(gates, specs, len(tasks))
    return Topology(
        tasks=tasks,
        experts=tuple(specs),
        gates=gate_specs,
        source="discovered",
        confidence=round(max(0.0, min(1.0, confidence)), 3),
        notes=tuple(notes),
        architecture=arch,
        unresolved=tuple(unresolved),
    )


def _leaf_node(graph: Graph, g: _Gate) -> int:
    """Where to ask autograd which tasks a gate moves: its mixture's output, unless that output is an
    in-place accumulation (the model reads the accumulator, not the call's return value): then the
    gate's weights, which reach the tasks only through that mixture."""
    node = graph.nodes[g.mixture_output]
    first = node.args[0] if node.args else None
    if isinstance(first, Ref) and graph.nodes[first.node].tensor is node.tensor:
        return g.producer if graph.nodes[g.producer].seq >= 0 else g.weights
    return g.mixture_output


def _resolve_experts(tracer: ExpertTracer, mix: Mixture) -> list[ExpertRef] | str:
    """The experts a mixture weights: one stacked tensor, or one tensor per expert.

    Experts of a sparse dispatch ran on their own rows, so their module outputs cannot be hooked as
    `[batch, d]`: they are kept by name (module path) but not recorded.
    """
    if len(mix.experts) == 1 and mix.experts[0][1] is not None:
        node, axis = mix.experts[0]
        return tracer.resolve(node, axis, mix.n_experts)
    out: list[ExpertRef] = []
    missing: list[int] = []
    for pos, (node, _) in enumerate(mix.experts):
        if node < 0:  # this expert got no rows of the example batch
            missing.append(pos)
            continue
        got = tracer.resolve(node, None, 1)
        if isinstance(got, str):
            return got
        if mix.sparse:
            got = [
                ExpertRef(("sparse", r.module or r.key), None, None, r.module or r.parent, r.order, r.calls)
                for r in got
            ]
        out.extend(got)
    if mix.sparse and (missing or mix.by_module):
        return _experts_by_index(tracer.graph, out, missing, mix.n_experts)
    if len({r.key for r in out}) != len(out):
        return "weights the same tensor several times, not several experts"
    return out


def _experts_by_index(
    graph: Graph, found: list[ExpertRef], missing: list[int], n_experts: int
) -> list[ExpertRef] | str:
    """Sparse-dispatch experts in expert order: found ones sit in a container (`experts.3`) whose index
    is the expert's; the ones that got no rows of the example batch are that container's other children."""
    paths = [r.parent for r in found]
    containers = {p.rpartition(".")[0] for p in paths if p and p.rpartition(".")[2].isdigit()}
    if len(containers) != 1:
        if missing:
            return (
                f"{len(missing)} experts got no rows of the example batch and their modules cannot be named"
            )
        return found
    container = containers.pop()
    out: list[ExpertRef] = []
    for i in range(n_experts):
        path = f"{container}.{i}"
        if path not in graph.modules:
            return f"expert {i} of {n_experts} has no module {path!r}"
        out.append(ExpertRef(("sparse", path), None, None, path, (0, i)))
    return out


def _task_nodes(graph: Graph, out: Any, outputs: list[TaskOutput]) -> set[int]:
    """Nodes holding the task predictions (and the output tensor they were sliced from)."""
    found = {o.node for o in outputs if o.node is not None}
    for t in iter_tensors(out):
        idx = graph.current.get(id(t))
        if idx is not None:
            found.add(idx)
    return found


def _task_tensor(out: Any, o: TaskOutput) -> torch.Tensor | None:
    """Task `o`'s prediction in a second run's output `out` (same structure as the traced one)."""
    try:
        if isinstance(out, torch.Tensor):
            return out if o.output is None else out[:, o.output]
        v = out[o.output] if isinstance(out, (Mapping, list, tuple)) else None  # type: ignore[index]
        if isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape[1] > 1:
            return v[:, o.column]
        return v
    except (KeyError, IndexError, TypeError):
        return None
    return None


def validate_topology(model: nn.Module, topology: Topology) -> None:
    """Check that every module path `topology` names exists in `model` (`named_modules()`).

    Raises:
        TopologyError: one line naming the first bad path (with the closest real path, if any) and
            suggesting `mmoe-inspect topology` to regenerate a spec.
    """
    modules = dict(model.named_modules())
    named: list[tuple[str, str, bool]] = [
        (f"gate {g.name!r}", g.module, g.function_level) for g in topology.gates
    ]
    named += [(f"expert {e.name!r}", e.module, False) for e in topology.experts if e.module is not None]
    for what, path, root_ok in named:
        if path in modules and (path != ROOT or root_ok):
            continue
        close = difflib.get_close_matches(path, [m for m in modules if m], n=1)
        hint = f" (closest: {close[0]!r})" if close else ""
        raise TopologyError(
            f"{what} names module {path!r}, which the model ({type(model).__name__}) does not have{hint}; "
            "fix the spec or regenerate it with `mmoe-inspect topology`"
        )
