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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mmoe_inspect.topology._experts import ExpertRef, ExpertTracer
from mmoe_inspect.topology._graphops import backward_views, find_mixture, forward_views
from mmoe_inspect.topology._tasks import parse_outputs, task_specs
from mmoe_inspect.topology._trace import ROOT, Graph, Ref, gate_axis, softmax_dim, trace_forward
from mmoe_inspect.topology.spec import ExpertSpec, GateOutput, GateSpec, Topology, TopologyError

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

    softmax: int
    n_experts: int
    mixture_output: int
    expert_node: int
    experts: list[ExpertRef]
    module: str
    output: GateOutput
    dim: int
    call: int | None
    leaf: torch.Tensor
    tasks: set[str] = field(default_factory=set)
    task: str | None = None
    level: int = 0
    name: str = ""
    deps: list[int] = field(default_factory=list)
    refined: bool = False


def _where(graph: Graph, idx: int) -> str:
    """Where node `idx` was computed: the innermost module path, for notes."""
    module = graph.nodes[idx].module
    return "the model's forward" if module in (None, ROOT) else f"{module}"


def _gate_module(
    graph: Graph, s_idx: int, chain: list[tuple[int, int]], n_experts: int
) -> tuple[str, GateOutput, int, int | None, str | None] | None:
    """(module, output, dim, call, note) for the gate softmax `s_idx`, or None if not hookable."""
    batch = graph.batch_size

    def gate_like(idx: int, ax: int | None) -> bool:
        shape = graph.nodes[idx].shape
        return (
            ax is not None
            and len(shape) > ax
            and shape[0] == batch
            and shape[ax] == n_experts
            and all(s == 1 for i, s in enumerate(shape) if i not in (0, ax))
        )

    probs = None
    for idx, ax in chain:
        call = graph.outermost_call(idx)
        if call is not None and gate_like(idx, ax):
            probs = (call, ax)
            break
    logits = None
    s = graph.nodes[s_idx]
    src = s.args[0] if s.args else None
    if isinstance(src, Ref):
        dim = softmax_dim(s.args, s.kwargs, s.ndim)
        for idx, ax in backward_views(graph, src.node, dim):
            call = graph.outermost_call(idx)
            if call is not None:
                if gate_like(idx, ax):
                    logits = (call, ax)
                break
    n_calls = graph.calls
    if probs is not None and n_calls.get(probs[0].path, 1) == 1:
        return probs[0].path, "probs", probs[1], None, None
    if logits is not None and n_calls.get(logits[0].path, 1) == 1:
        note = None
        if probs is not None:
            note = (
                f"softmax module {probs[0].path} runs {n_calls[probs[0].path]} times per forward; "
                f"gate traced to the module producing its logits, {logits[0].path}"
            )
        return logits[0].path, "logits", logits[1], None, note
    chosen = probs or logits
    if chosen is None:
        return None
    call, ax = chosen
    kind: GateOutput = "probs" if chosen is probs else "logits"
    note = (
        f"module {call.path} runs {n_calls[call.path]} times per forward; this gate is its call {call.call}"
    )
    return call.path, kind, ax, call.call, note


def _levels(graph: Graph, gates: list[_Gate]) -> None:
    """Level 0 = closest to the input; a gate whose mixture reaches another gate's experts is lower."""
    reach = [graph.descendants(g.softmax) for g in gates]
    deps = [[i for i, r in enumerate(reach) if i != j and g.expert_node in r] for j, g in enumerate(gates)]
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
            g.softmax,
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
        return _describe(model, graph, out, task_names, task_kinds)


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

    # 1-4: candidates -> gates (module, experts)
    tracer = ExpertTracer(graph)
    gates: list[_Gate] = []
    not_gates: list[str] = []
    seen_modules: set[tuple[str, int | None]] = set()
    for s in graph.nodes:
        if s.op != "softmax" or s.leaf is None:
            continue
        axis = gate_axis(s.shape, softmax_dim(s.args, s.kwargs, s.ndim), graph.batch_size)
        if axis is None:
            continue
        n_exp = s.shape[axis]
        chain = forward_views(graph, s.idx, axis)
        mix = find_mixture(graph, chain, n_exp)
        where = _where(graph, s.idx)
        if mix is None:
            not_gates.append(f"{list(s.shape)} in {where}")
            continue
        experts = tracer.resolve(mix.experts, mix.axis, n_exp)
        if isinstance(experts, str):
            notes.append(f"softmax {list(s.shape)} in {where} {experts}; not a gate")
            continue
        found = _gate_module(graph, s.idx, chain, n_exp)
        if found is None:
            penalties.add("untraced")
            notes.append(
                f"softmax {list(s.shape)} in {where} mixes {n_exp} experts, but neither its probabilities "
                "nor its logits are the output of a module (e.g. a temperature or mask applied inline); "
                "it is left out: write its gate by hand in a spec file"
            )
            continue
        module, output, dim, call, note = found
        if (module, call) in seen_modules:
            notes.append(f"softmax {list(s.shape)} in {where} repeats gate module {module}; counted once")
            continue
        seen_modules.add((module, call))
        if note:
            notes.append(note)
            if call is not None:
                penalties.add("call")
        extra = [
            c
            for idx, _ in chain
            for c in graph.children[idx]
            if c != mix.combine and graph.nodes[c].op in ("mul", "matmul", "bmm", "einsum")
        ]
        if extra:
            penalties.add("extra_mix")
            notes.append(
                f"gate {module} is used in {len(extra) + 1} weighting ops; only the first was traced"
            )
        gates.append(_Gate(s.idx, n_exp, mix.output, mix.experts, experts, module, output, dim, call, s.leaf))
    if not_gates:
        notes.append(
            f"{len(not_gates)} softmax output(s) mix no experts and are not gates: " + "; ".join(not_gates)
        )

    if not gates:
        untraced = "untraced" in penalties
        if untraced:
            notes.insert(
                0, "no recordable gates: softmax gates mix experts but none could be traced to a module"
            )
        else:
            notes.insert(0, NO_GATES_NOTE)
            notes.append(
                "gates that are not a softmax call (sigmoid gates, a hand-written exp/sum) would not be detected"
            )
        confidence = 0.8 - sum(_PENALTY[p] for p in penalties)
        return Topology(
            tasks=tasks,
            source="discovered",
            confidence=round(max(0.0, min(1.0, confidence)), 3),
            notes=tuple(notes),
            architecture=None if untraced else "shared_bottom",
        )

    # 6: which tasks each gate moves (autograd on this batch, never .backward())
    leaves = [g.leaf for g in gates]
    for o in outputs:
        total = o.tensor.float().sum()
        if not total.requires_grad:
            continue
        grads = torch.autograd.grad(total, leaves, allow_unused=True, retain_graph=True)
        for g, grad in zip(gates, grads, strict=True):
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
        if r.module is not None:
            continue
        parent = r.parent or ROOT
        node_key = (parent, r.order[0])
        if node_key not in inline_base:
            inline_base[node_key] = inline_count.get(parent, 0)
        i = inline_base[node_key] + r.order[1]
        inline_count[parent] = max(inline_count.get(parent, 0), i + 1)
        inline_names[r.key] = f"{parent}.expert[{i}]" if parent else f"expert[{i}]"

    def expert_name(r: ExpertRef) -> str:
        if r.module is None:
            return inline_names[r.key]
        return r.module if r.index is None else f"{r.module}[{r.index}]"

    specs: list[ExpertSpec] = []
    for r in sorted(refs.values(), key=lambda r: r.order):
        mixing = [g for g in gates if any(x.key == r.key for x in g.experts)]
        level = min(g.level for g in mixing)
        owners = {g.task for g in mixing if g.task is not None and g.level == level}
        owner = next(iter(owners)) if len(owners) == 1 else "shared"
        specs.append(ExpertSpec(expert_name(r), module=r.module, index=r.index, owner=owner, level=level))
    specs.sort(key=lambda e: e.level)
    gate_specs = tuple(
        GateSpec(
            g.name,
            module=g.module,
            experts=tuple(expert_name(r) for r in g.experts),
            task=g.task,
            level=g.level,
            output=g.output,
            dim=g.dim,
            call=g.call,
        )
        for g in gates
    )

    # 8: notes and confidence
    inline = sorted({expert_name(r) for r in refs.values() if r.module is None})
    if inline:
        penalties.add("inline")
        notes.append(
            f"{len(inline)} experts are computed inline (no module returns them): "
            f"{inline[0]} ... {inline[-1]}; their outputs cannot be hooked one by one"
        )
    multi_called = sorted({r.module for r in refs.values() if r.module is not None and r.calls > 1})
    if multi_called:
        penalties.add("expert_calls")
        notes.append(f"expert modules run several times per forward: {', '.join(multi_called)}")
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
    if "inline" not in penalties and "call" not in penalties and "untraced" not in penalties:
        notes.insert(0, f"{len(gates)} gate(s) traced to modules; experts traced to module outputs")
    else:
        notes.insert(0, f"{len(gates)} gate(s) found")
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
    )


def validate_topology(model: nn.Module, topology: Topology) -> None:
    """Check that every module path `topology` names exists in `model` (`named_modules()`).

    Raises:
        TopologyError: one line naming the first bad path (with the closest real path, if any) and
            suggesting `mmoe-inspect topology` to regenerate a spec.
    """
    modules = dict(model.named_modules())
    named: list[tuple[str, str]] = [(f"gate {g.name!r}", g.module) for g in topology.gates]
    named += [(f"expert {e.name!r}", e.module) for e in topology.experts if e.module is not None]
    for what, path in named:
        if path in modules and path != ROOT:
            continue
        close = difflib.get_close_matches(path, [m for m in modules if m], n=1)
        hint = f" (closest: {close[0]!r})" if close else ""
        raise TopologyError(
            f"{what} names module {path!r}, which the model ({type(model).__name__}) does not have{hint}; "
            "fix the spec or regenerate it with `mmoe-inspect topology`"
        )
