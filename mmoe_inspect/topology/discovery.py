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

Steps 1-2 live in `_mixing.py`, step 3 in `_locate.py`, steps 4-7 on the confirmed gates in
`_gates.py`; this module runs them in order (`_describe_gates`) and writes the notes and confidence.

The model is left exactly as found: training flags restored, hooks removed (also on errors), no
parameter, buffer or `.grad` touched.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from mmoe_inspect._plural import plural
from mmoe_inspect.data.outputs import select
from mmoe_inspect.topology._attention import ATTENTION_OPS
from mmoe_inspect.topology._experts import ExpertRef, ExpertTracer, Undecided
from mmoe_inspect.topology._feature_scaling import own_fields
from mmoe_inspect.topology._gates import (
    Gate,
    architecture,
    assign_tasks,
    fold_derived_outputs,
    gate_spec,
    leaf_node,
    name_experts,
    name_gates,
    resolve_experts,
    set_layer_calls,
    set_levels,
    tie_experts,
)
from mmoe_inspect.topology._graphops import VIEW_OPS
from mmoe_inspect.topology._locate import Located, gate_score, locate, locate_part, locate_two_way
from mmoe_inspect.topology._mixing import Mixture, find_mixtures, gathered_experts, prediction_of
from mmoe_inspect.topology._nodes import ancestors, feeds, node_module, node_where, row_values
from mmoe_inspect.topology._tasks import (
    GATE_TERM_NOTE,
    NO_TASK_NOTE,
    UNMIXED_NOTE,
    TaskOutput,
    parse_outputs,
    task_specs,
)
from mmoe_inspect.topology._trace import (
    ROOT,
    Graph,
    iter_tensors,
    replay_with_leaves,
    trace_forward,
)
from mmoe_inspect.topology._unresolved import (
    function_snippet,
    fused_gate_like,
    fused_gates,
    module_snippet,
    named_like_gates,
    outside_torch,
    split_weights,
    two_way_unresolved,
    unexplained_softmaxes,
    unread_attention,
)
from mmoe_inspect.topology.spec import (
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


def discover_topology(
    model: nn.Module,
    example_input: Any,
    *,
    task_names: Sequence[str] | None = None,
    task_kinds: Sequence[str] | dict[str, str] | None = None,
    has_label: Callable[[str], bool] | None = None,
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
        scripted: list[str] = []  # the outermost TorchScript modules
        for n, m in model.named_modules():
            if isinstance(m, torch.jit.ScriptModule) and not any(n.startswith(f"{s}.") for s in scripted):
                scripted.append(n or "the model")
        if scripted:  # hooks and the tracer cannot see inside TorchScript
            raise TopologyError(
                f"the model holds TorchScript modules ({', '.join(scripted[:4])}"
                + (f" and {len(scripted) - 4} more" if len(scripted) > 4 else "")
                + "), which hooks cannot attach to: inspect the eager model (its class and state_dict, "
                "--builder module:function) instead of the torch.jit.script'ed one"
            ) from exc
        raise TopologyError(
            f"discovery could not run the model on the example input: {type(exc).__name__}: {exc}"
        ) from exc
    with torch.inference_mode(False), torch.enable_grad():
        return _describe(model, graph, out, task_names, task_kinds, _usable(example_input), has_label)


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
    has_label: Callable[[str], bool] | None = None,
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
        return _describe_gates(model, graph, out, example_input, outputs, tasks, notes, penalties, has_label)
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
    has_label: Callable[[str], bool] | None = None,
) -> Topology:
    """Steps 1-8 after the tasks: mixtures -> gates, tasks per gate, experts, unresolved items, confidence."""
    # 1-4: mixtures -> gates (where their weights are read, which experts they mix)
    tracer = ExpertTracer(graph)
    gates: list[Gate] = []
    rejected: list[tuple[Mixture, str]] = []
    unresolved: list[Unresolved] = []
    by_producer: dict[tuple[int, int], Gate] = {}  # (producer, part) -> its gate
    mixtures = find_mixtures(graph)
    readings: dict[int, list[Mixture]] = {}
    for mix in mixtures:
        readings.setdefault(mix.combine, []).append(mix)
    done_outputs: set[int] = set()
    # task output node -> task: a two-way weight that holds one is a task's prediction, not a gate, when that
    # task is a prediction of labels (its label column in the data): a returned gate weight (`{"click_gate": w}`,
    # for logging) is no label's prediction and its blend stays a gate; unknown (no data): set aside, unresolved
    # if no gate remains (never a silent Shared-Bottom)
    predictions = {
        o.node: o.name for o in outputs if o.node is not None and (has_label is None or has_label(o.name))
    }
    unconfirmed: list[tuple[Mixture, str]] = []  # blends set aside on a task output with no labels known
    unread_blends: list[tuple[int, Unresolved]] = []  # (blend output, its unresolved item)
    for combine in sorted(readings):
        for mix in sorted(readings[combine], key=lambda m: gate_score(graph, m)):
            if mix.output in done_outputs:
                break
            if len(mix.experts) == 1 and mix.experts[0][1] is not None and mix.indices is None:
                picked = gathered_experts(graph, *mix.experts[0])  # type: ignore[arg-type]
                if picked is not None:  # Mixtral-style: the chosen experts gathered by top-k indices
                    src, ax, idx = picked
                    mix = replace(
                        mix, experts=((src, ax),), n_experts=graph.nodes[src].shape[ax], indices=idx
                    )
            experts = resolve_experts(tracer, mix)
            if mix.attention and isinstance(experts, list) and _field_values(graph, tracer, mix):
                experts = (
                    "weights one embedding module per input column (attention over the fields, not experts)"
                )
            if isinstance(experts, Undecided):  # seen, not readable: never a silent Shared-Bottom
                rejected.append((mix, experts))
                unresolved.append(
                    Unresolved(
                        f"a mixture of {mix.n_experts} experts ({graph.nodes[mix.combine].op})",
                        node_module(graph, mix.combine),
                        str(experts),
                        function_snippet(graph, mix.combine, mix.n_experts, tasks, arg=mix.arg),
                    )
                )
                done_outputs.add(mix.output)
                break
            if isinstance(experts, str):
                rejected.append((mix, experts))
                continue
            if _signed_rows(graph, mix):
                rejected.append((mix, "weights rows that take negative values (a dot product, not a gate)"))
                continue
            why_not = _fixed_weights_not_a_gate(graph, mix)
            if why_not is not None:
                rejected.append((mix, why_not))
                continue
            if mix.fused:  # the gates of several tasks in one tensor: one gate per slice
                if not fused_gate_like(graph, mix):
                    rejected.append((mix, "weights rows that are not distributions over the experts"))
                    continue
                parts = [locate_part(graph, mix, t) for t in range(mix.fused)]
                done_outputs.add(mix.output)
                why = next((p for p in parts if isinstance(p, str)), None)
                if why is not None:  # seen, not readable: never a silent Shared-Bottom
                    unresolved.append(fused_gates(graph, mix, why))
                    break
                for t, part in enumerate(parts):
                    assert not isinstance(part, str) and mix.fused_out_axis is not None
                    if (part.producer, t) in by_producer:
                        by_producer[(part.producer, t)].uses += 1
                        continue
                    gate = _gate_of(mix, part, experts, (mix.fused_out_axis, t))
                    by_producer[(part.producer, t)] = gate
                    gates.append(gate)
                break
            task = prediction_of(graph, mix.weights, predictions) if mix.two_way else None
            if task is not None:  # ESCM²/DCMT: p * a + (1 - p) * b over task `task`'s p, no routing
                rejected.append(
                    (mix, f"blends by task {task!r}'s prediction (a total-probability mix, not a gate)")
                )
                if has_label is None:
                    unconfirmed.append((mix, task))
                done_outputs.add(mix.output)
                break
            if mix.two_way:  # one weight per row blending two experts: the gate [1 - w, w]
                found = split_weights(mix.n_experts) if mix.split else locate_two_way(graph, mix)
                if isinstance(found, str):  # seen, not readable: never a silent Shared-Bottom
                    rejected.append((mix, found))
                    unresolved.append(two_way_unresolved(graph, mix, found, tasks))
                    unread_blends.append((mix.output, unresolved[-1]))
                    done_outputs.add(mix.output)
                    break
            else:
                found = locate(graph, mix)
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
            same = by_producer.get((found.producer, found.part))
            if same is not None:
                same.uses += 1
                break
            if found.note:
                notes.append(found.note)
                if found.call is not None:
                    penalties.add("call")
            gate = _gate_of(mix, found, experts)
            by_producer[(found.producer, found.part)] = gate
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
    # a two-way blend inside one expert of another gate (a gated skip among that expert's layers) is part of
    # that expert, not routing between the model's experts
    for g in [g for g in gates if g.loc.two_way and _inside_expert(graph, g.mixture_output, gates)]:
        gates.remove(g)
        notes.append(
            f"a two-way blend in {node_where(graph, g.mixture_output)} is inside expert "
            f"{_inside_expert(graph, g.mixture_output, gates)} (a gated skip in its layers); not a gate of its own"
        )
    # a learned vector over experts that a per-row gate already mixes, added next to it (AdaTT's native-expert
    # residual `einsum("k,bkh->bh", self_weights[t], own)`): a linear layer on those experts, not a gate, even at
    # an initialisation that happens to lie on the simplex (`[0.5, 0.5]`)
    for g in [g for g in gates if g.loc.batch_dim < 0 and _raw_parameter(graph, g.weights)]:
        mine = {r.key for r in g.experts}
        if any(h.loc.batch_dim >= 0 and mine <= {r.key for r in h.experts} for h in gates if h is not g):
            gates.remove(g)
            notes.append(
                f"a learned weight vector {list(graph.nodes[g.weights].shape)} in {node_where(graph, g.mixture_output)} "
                "combines experts that a per-row gate also mixes (a residual, e.g. AdaTT's native-expert weights): "
                "a linear layer on them, not a gate of its own"
            )
    for out, item in unread_blends:
        if _inside_expert(graph, out, gates):
            unresolved.remove(item)
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
    read = (
        {g.mixture_output for g in gates} | {m.combine for m, _ in rejected} | {m.combine for m in mixtures}
    )
    unresolved += unread_attention(graph, read, tasks)
    unresolved += named_like_gates(model, graph, gates, tasks, notes)

    if not gates:
        unresolved += [
            two_way_unresolved(
                graph,
                mix,
                f"its weight is task {task!r}'s output, with no labels to tell a prediction (ESCM²'s "
                f"p_click * a + (1 - p_click) * b, no gate) from a gate weight the forward also returns; "
                "give the data (a label column for the task makes it a prediction) or name the gate in a spec",
                tasks,
            )
            for mix, task in unconfirmed
        ]
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
    target_of = {id(g): leaf_node(graph, g) for g in gates}
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
            if grad is not None and g.out_part is not None:  # a fused gate moves its own slice of the mixture
                grad = grad.select(*g.out_part)
            if grad is not None and bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0:
                g.tasks.add(o.name)
    moved = {t for g in gates for t in g.tasks}
    if moved and len(moved) < len(outputs):  # evidence for `aux_tasks`: a term of the gates is no mixture
        notes.append(UNMIXED_NOTE + ", ".join(o.name for o in outputs if o.name not in moved))
        experts_at = {n for g in gates for n in g.expert_nodes}
        weights_at = {n for g in gates for n in (g.producer, *graph.nodes[g.producer].parents)}  # and logits
        gate_terms = [
            o.name
            for o in outputs
            if o.name not in moved
            and o.node is not None
            and (seen := ancestors(graph, o.node)) & weights_at
            and not seen & experts_at
        ]
        if gate_terms:
            notes.append(GATE_TERM_NOTE + ", ".join(gate_terms))
    fold_derived_outputs(graph, gates, {o.name: o.node for o in outputs}, target_of)
    set_levels(graph, gates)
    unused = assign_tasks(gates)
    set_layer_calls(graph, gates)
    task_order = {t.name: i for i, t in enumerate(tasks)}
    name_gates(gates, task_order)

    # experts: names, owners, levels; the gate specs that name them
    refs, expert_name, specs = name_experts(gates)
    specs, tied_specs, tied_note = tie_experts(
        graph, specs, gates, [gate_spec(g, expert_name) for g in gates]
    )
    gate_specs = tuple(tied_specs)

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
    if tied_note:
        notes.append(tied_note)
    for g in gates:
        if g.refined:
            notes.append(
                f"gate {g.name} reaches several tasks only through shared gates above it; assigned to "
                f"{g.task}, whose next-level gate mixes the experts it feeds"
            )
    if unused:
        penalties.add("no_task")
        idle = ", ".join(g.name for g in gates if not g.tasks and not g.refined)
        notes.append(NO_TASK_NOTE + idle)
    blends = [g for g in gates if g.loc.two_way]
    if blends:
        notes.append(
            f"gate(s) {', '.join(g.name for g in blends)} blend two experts by one weight w per row "
            "((1 - w) * x0 + w * x1, e.g. torch.lerp): read as [1 - w, w] over (x0, x1); causal edits write back w"
        )
    attention = [g for g in gates if g.loc.op in ATTENTION_OPS]
    if attention:
        notes.append(
            f"gate(s) {', '.join(g.name for g in attention)} are attention weights: a query attends over the "
            f"experts as keys/values in {attention[0].loc.op}; read head-averaged (recomputed from the call's "
            "inputs when it does not return them); causal edits cannot reach the call's output and are not applied"
        )
    weights_gates = [g.name for g in gates if g.loc.output == "weights"]
    if weights_gates:
        notes.append(
            f"gate(s) {', '.join(weights_gates)} are not distributions over their experts (rows need not sum "
            "to 1): utilization, top-1 share, co-activation and label routing apply; entropy and JSD do not"
        )
    fixed = [g.name for g in gates if g.loc.batch_dim < 0]
    if fixed:
        notes.append(
            f"gate(s) {', '.join(fixed)} weight every row the same (one weight vector, no batch axis): "
            "input-independent by construction, so only their weights are judged (collapse, dead experts)"
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
    arch = architecture(gates, specs, len(tasks))
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


def _gate_of(
    mix: Mixture, loc: Located, experts: list[ExpertRef], out_part: tuple[int, int] | None = None
) -> Gate:
    """The gate a mixture's weights make, read at `loc` (a fused gate: its slice `out_part` of the mixture)."""
    return Gate(
        loc=loc,
        weights=mix.weights,
        n_experts=mix.n_experts,
        mixture_output=mix.output,
        expert_nodes=[n for n, _ in mix.experts],
        experts=experts,
        out_part=out_part,
    )


def _inside_expert(graph: Graph, idx: int, gates: Sequence[Gate]) -> str | None:
    """The expert module of one of `gates` that node `idx` is computed inside (None: no such expert)."""
    where = graph.nodes[idx].module
    if where is None:
        return None
    for h in gates:
        for e in h.experts:
            if (
                e.module
                and h.mixture_output != idx
                and (where == e.module or where.startswith(e.module + "."))
            ):
                return e.module
    return None


def _field_values(graph: Graph, tracer: ExpertTracer, mix: Mixture) -> bool:
    """An attention mixture whose values are one embedding module per input column (a learned query pooling
    per-field embeddings): attention over features, not routing (`own_fields`)."""
    node, axis = mix.experts[0]
    return axis is not None and own_fields(graph, tracer, node, axis, single=True)


def _signed_rows(graph: Graph, mix: Mixture) -> bool:
    """Per-row weights with a clearly negative entry: a gate weights its experts (softmax, sigmoid, a normalized
    ReLU, a top-k selection), it does not subtract them; a dot product of two towers `(u * i).sum(-1)` or an
    FM interaction has that shape too."""
    if mix.w_batch is None or mix.two_way:  # a blend's w is checked where it is located (`locate_two_way`)
        return False  # a learned scalar mixture (no batch axis) may have signed weights
    rows = row_values(graph, mix.weights, mix.w_axis, mix.w_batch)
    return rows is not None and bool(torch.isfinite(rows).all()) and float(rows.min()) < -1e-6


# ops that pass a tensor's values on unchanged (what a parameter goes through to be "used as is")
_AS_IS_OPS = frozenset(
    {
        *VIEW_OPS,
        "getitem",
        "select",
        "narrow",
        "index_select",
        "expand",
        "expand_as",
        "broadcast_to",
        "to",
        "float",
    }
)


def _raw_parameter(graph: Graph, idx: int, limit: int = 64) -> bool:
    """Whether node `idx` holds a parameter's (or buffer's) values as they are: every op on the way from it only
    selects, views or broadcasts them (`self.alpha[t]`), none normalizes or squashes them (a softmax, a sigmoid,
    `w / w.sum()`)."""
    seen = {idx}
    todo = [idx]
    while todo:
        node = graph.nodes[todo.pop()]
        if node.op in ("param", "buffer", "const"):
            continue
        if node.op not in _AS_IS_OPS or len(seen) > limit:
            return False
        for p in node.parents:
            if p not in seen:
                seen.add(p)
                todo.append(p)
    return True


def _fixed_weights_not_a_gate(graph: Graph, mix: Mixture) -> str | None:
    """Why one weight vector for every row (no batch axis) is not a gate, or None when it may be one.

    A gate's weights lie on the simplex (a softmax of a parameter: fixed by construction, judged as an
    input-independent gate), or at least in [0, 1] (a sigmoid). A vector with an entry outside [0, 1], or a
    parameter used as it is whose entries do not sum to 1, is a learned linear combination of the experts (a
    linear layer: AdaTT's native-expert residual, a cross-stitch unit after training), which collapse and
    uniformity do not describe."""
    if mix.w_batch is not None or mix.two_way or mix.fused:
        return None
    row = row_values(graph, mix.weights, mix.w_axis, None)
    if row is None or not bool(torch.isfinite(row).all()):
        return None
    shown = (
        "[" + ", ".join(f"{v:.3g}" for v in row[0, :6].tolist()) + (", ..." if row.shape[1] > 6 else "") + "]"
    )
    if float(row.min()) < -1e-6 or float(row.max()) > 1 + 1e-6:
        return f"weights every row by one learned vector {shown} outside [0, 1] (a linear combination, not a gate)"
    if _raw_parameter(graph, mix.weights) and abs(float(row.sum()) - 1.0) > 1e-4:
        return (
            f"weights every row by one learned vector {shown} that is not normalized (its entries sum to "
            f"{float(row.sum()):.3g}: a linear combination, not a gate)"
        )
    return None


def _task_nodes(graph: Graph, out: Any, outputs: list[TaskOutput]) -> set[int]:
    """Nodes holding the task predictions (and the output tensor they were sliced from)."""
    found = {o.node for o in outputs if o.node is not None}
    for t in iter_tensors(out):
        if not (t.ndim and t.shape[0] == graph.batch_size):
            continue  # no batch axis (an auxiliary loss): never a task output
        idx = graph.current.get(id(t))
        if idx is not None:
            found.add(idx)
    return found


def _task_tensor(out: Any, o: TaskOutput) -> torch.Tensor | None:
    """Task `o`'s prediction in a second run's output `out` (same structure as the traced one)."""
    try:
        v = select(out, o.output)
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    if not isinstance(v, torch.Tensor):
        return None
    if o.rows_second:
        return v.reshape(v.shape[0], -1)[o.column]
    if v.dim() == 2 and v.shape[1] > 1:
        return v[:, o.column]
    return v


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
