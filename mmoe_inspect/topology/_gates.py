"""Steps 4-7 of discovery on the confirmed gates: the experts a mixture weights, gate levels, the
task each gate serves (from autograd influence), gate names and the architecture label.

`Gate` is a confirmed gate while `discovery` describes it; these functions fill in its fields.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from mmoe_inspect.topology._experts import ExpertRef, ExpertTracer
from mmoe_inspect.topology._locate import Located
from mmoe_inspect.topology._mixing import Mixture
from mmoe_inspect.topology._nodes import ancestors
from mmoe_inspect.topology._trace import ROOT, Graph, Ref
from mmoe_inspect.topology.spec import ExpertSpec, GateSpec, expert_slots

__all__ = [
    "Gate",
    "architecture",
    "assign_tasks",
    "gate_spec",
    "leaf_node",
    "name_experts",
    "name_gates",
    "resolve_experts",
    "set_levels",
]


@dataclass
class Gate:
    """A confirmed gate while it is being described."""

    loc: Located  # where the weights are read (module output or function call)
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
    out_part: tuple[int, int] | None = None  # fused: (axis, index) of its mixture in the combine output
    layer_call: int | None = (
        None  # which run of a layer run several times on different inputs (`layer_calls`)
    )

    @property
    def producer(self) -> int:
        """Node of the weights where they are read (module output, op output or combine op)."""
        return self.loc.producer


def set_levels(graph: Graph, gates: list[Gate]) -> None:
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


def _only_through(graph: Graph, late: int, via: int, start: int) -> bool:
    """Whether node `late` depends on node `start` only through node `via` (every path back from `late` to
    `start` passes `via`; nodes are in forward order, so the walk stops below `start`)."""
    if late == via:
        return True
    seen = {late}
    todo = [late]
    while todo:
        for p in graph.nodes[todo.pop()].parents:
            if p == start:
                return False
            if p > start and p != via and p not in seen:
                seen.add(p)
                todo.append(p)
    return True


def fold_derived_outputs(
    graph: Graph, gates: list[Gate], nodes: dict[str, int | None], starts: dict[int, int]
) -> None:
    """A gate moving several task outputs of which one made all the others serves that one: EasyRec's
    `logits_t`, `probs_t = sigmoid(logits_t)`, `y_t = probs_t` per task; ESMM's `pCTCVR = pCTR * pCVR` for the
    CTR gate, whose mixture reaches pCTCVR only through pCTR. Without this such a gate served "several tasks"
    and was named `shared`. `nodes`: task name -> its prediction's node, in task order; `starts`: `id(gate)`
    -> the node autograd asked about (`leaf_node`). A gate whose mixture reaches two outputs by separate
    paths (a one-gate MoE, or pCTCVR for a gate under both pCTR and pCVR) keeps all its tasks."""
    for g in gates:
        if len(g.tasks) < 2:
            continue
        start = starts[id(g)]
        mine = {t: nodes.get(t) for t in g.tasks}
        if any(n is None for n in mine.values()):
            continue
        for root in (t for t in nodes if t in mine):
            if all(t == root or _only_through(graph, n, mine[root], start) for t, n in mine.items()):  # type: ignore[arg-type]
                g.tasks = {root}
                break


def assign_tasks(gates: list[Gate]) -> int:
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


def name_gates(gates: list[Gate], task_order: dict[str, int]) -> None:
    """Sort gates (level, task order, forward order) and name them "{task}" / "L{level}.{task}" / "shared"."""
    multi = len({g.level for g in gates}) > 1
    gates.sort(
        key=lambda g: (
            g.level,
            task_order.get(g.task, len(task_order)) if g.task else len(task_order),
            g.producer,
            g.loc.part,
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


def set_layer_calls(graph: Graph, gates: list[Gate]) -> None:
    """Set `layer_call` on the gates of a layer that runs several times per forward on different inputs.

    One MMoE layer applied to two inputs (the user and the item features) runs its experts and its gate
    modules twice: each run's gates mix that run's expert outputs and are compared with each other only
    (`layer_call` 0, 1, ... in forward order). Gates over the same experts are put in runs by their
    experts' module outputs (the same tensors, or equal values: experts recomputed on the same rows), and
    the runs are kept when they are runs of one layer: some task has a gate in several of them (every task
    gets a gate per run), or every run holds the same two or more gate modules (a run per task group).
    Anything else stays one run (None) and its task gates are compared: one gate module called once per
    task with a task embedding, or experts fed a per-task input with a gate module per task, give each task
    one gate over outputs of their own."""
    groups: dict[tuple[object, ...], list[tuple[tuple[int | None, ...], list[Gate]]]] = {}
    for g in gates:
        outs = _expert_outputs(graph, g)
        runs = groups.setdefault((g.level, tuple(r.key for r in g.experts)), [])
        for first, members in runs:
            if _same_outputs(graph, first, outs):
                members.append(g)
                break
        else:
            runs.append((outs, [g]))
    for runs in groups.values():
        if len(runs) < 2 or not _layer_runs([members for _, members in runs]):
            continue
        order = sorted(runs, key=lambda r: min((n for n in r[0] if n is not None), default=-1))
        for k, (_, members) in enumerate(order):
            for g in members:
                g.layer_call = k


def _layer_runs(runs: list[list[Gate]]) -> bool:
    """Whether gates split by their expert outputs (`set_layer_calls`) are runs of one layer."""
    seen: dict[str, int] = {}
    for k, members in enumerate(runs):
        for g in members:
            if g.task is not None and seen.setdefault(g.task, k) != k:
                return True  # a task with a gate in two runs
    modules = [sorted((g.loc.module, g.loc.op or "", g.loc.part) for g in members) for members in runs]
    return len(modules[0]) >= 2 and all(m == modules[0] for m in modules)


def _expert_outputs(graph: Graph, g: Gate) -> tuple[int | None, ...]:
    """Per expert of `g`, the node of its module's output nearest upstream of the tensors the gate mixes
    (None: an inline or sparse expert, no module output to tell runs apart)."""
    latest: dict[str, int] = {}
    for n in g.expert_nodes:
        if n < 0:
            continue
        for i in ancestors(graph, n):
            for c in graph.module_calls(i):
                latest[c.path] = max(latest.get(c.path, -1), i)
    return tuple(latest.get(r.module) if r.module is not None else None for r in g.experts)


def _same_outputs(graph: Graph, a: tuple[int | None, ...], b: tuple[int | None, ...]) -> bool:
    """Whether two gates' expert module outputs (`_expert_outputs`) are the same tensors or hold the same
    values; an expert without a module output matches anything."""
    for x, y in zip(a, b, strict=True):
        if x is None or y is None or x == y:
            continue
        tx, ty = graph.nodes[x].tensor, graph.nodes[y].tensor
        if tx is None or ty is None or tx.shape != ty.shape or not torch.equal(tx, ty):
            return False
    return True


def architecture(gates: list[Gate], experts: list[ExpertSpec], n_tasks: int) -> str:
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


def leaf_node(graph: Graph, g: Gate) -> int:
    """Where to ask autograd which tasks a gate moves: its mixture's output, unless that output is an
    in-place accumulation (the model reads the accumulator, not the call's return value): then the
    gate's weights, which reach the tasks only through that mixture."""
    node = graph.nodes[g.mixture_output]
    first = node.args[0] if node.args else None
    if isinstance(first, Ref) and graph.nodes[first.node].tensor is node.tensor:
        return g.producer if graph.nodes[g.producer].seq >= 0 else g.weights
    return g.mixture_output


def resolve_experts(tracer: ExpertTracer, mix: Mixture) -> list[ExpertRef] | str:
    """The experts a mixture weights: one stacked tensor, or one tensor per expert.

    Experts of a sparse dispatch ran on their own rows, so their module outputs cannot be hooked as
    `[batch, d]`: they are kept by name (module path) but not recorded.
    """
    # attention routing scores its weights from the experts themselves (keys = experts): no sign of attention
    # over a set there; its query is no key (`_mixing._attention`)
    tracer.weights = None if mix.attention else mix.weights
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
        return experts_by_index(tracer.graph, out, missing, mix.n_experts)
    if len({r.key for r in out}) != len(out):
        return "weights the same tensor several times, not several experts"
    return out


def experts_by_index(
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


def name_experts(
    gates: list[Gate],
) -> tuple[dict[tuple[object, ...], ExpertRef], Callable[[ExpertRef], str], list[ExpertSpec]]:
    """The experts the gates mix (by key), their names (module path, `path[i]` for a slice of a stacked
    output, `parent.expert[i]` for inline ones) and their specs (owner task or "shared", level),
    sorted by level."""
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
    return refs, expert_name, specs


def tie_experts(
    graph: Graph, specs: list[ExpertSpec], gates: list[Gate], gate_specs: list[GateSpec]
) -> tuple[list[ExpertSpec], list[GateSpec], str | None]:
    """Mark experts whose module holds the very same parameters as an earlier expert's (`same_as`: tied
    weights, a module rebuilt around another's layers), set each gate's `slot_outputs` where slots naming one
    expert hold different outputs (one module called on different inputs) or tied ones hold the same, and say,
    in one note, which gate slots hold one expert output (`expert_slots`: the gate statistics count them as one
    expert). The note is None when every slot holds its own output."""
    first: dict[tuple[object, ...], str] = {}
    module_key: dict[str, tuple[object, ...]] = {}
    out = []
    for e in specs:
        module = graph.modules.get(e.module) if e.module is not None else None
        params = tuple(sorted(id(p) for p in module.parameters())) if module is not None else ()
        if params:
            key = (type(module), e.index, params)
            module_key[e.name] = key
            if key in first:
                e = replace(e, same_as=first[key])
            else:
                first[key] = e.name
        out.append(e)
    new_specs = []
    for g, spec in zip(gates, gate_specs, strict=True):
        slot_outputs = _slot_ids(graph, g.experts, spec.experts, module_key)
        by_name = [sorted(grp) for grp in expert_slots(tuple(out), spec)]
        spec = replace(spec, slot_outputs=slot_outputs)
        if [sorted(grp) for grp in expert_slots(tuple(out), spec)] == by_name:
            spec = replace(spec, slot_outputs=None)  # the names say it
        new_specs.append(spec)
    shown = []
    for spec in new_specs:
        for grp in expert_slots(tuple(out), spec):
            if len(grp) > 1:
                names = list(dict.fromkeys(spec.experts[k] for k in grp))
                shown.append(
                    f"{spec.name}: {names[0]} in {len(grp)} slots"
                    + (f" ({', '.join(names)})" if len(names) > 1 else "")
                )
    if not shown:
        return out, new_specs, None
    more = f" and {len(shown) - 4} more" if len(shown) > 4 else ""
    note = (
        "gate slots holding one expert output (the same module, or modules with the same parameters, giving "
        "equal outputs on the example batch): "
        + "; ".join(shown[:4])
        + more
        + "; collapse, dead-expert and effective-experts statistics count them as one expert"
    )
    return out, new_specs, note


def _slot_ids(
    graph: Graph, refs: list[ExpertRef], names: tuple[str, ...], module_key: dict[str, tuple[object, ...]]
) -> tuple[int, ...]:
    """One id per gate slot, equal ids for slots holding one expert output, judged by VALUE on the traced
    batch: slots of one module (or modules with the same parameters, `module_key`) whose outputs are equal
    hold one output, however the input was recomputed per call (`m(x.view(B, -1))`, `m(x.float())`, a
    LayerNorm run per expert); slots whose outputs differ are distinct, whatever made them differ (another
    input, an int or keyword argument picking a batched expert's weights). Slots of different parameters
    are never one. Slots with no traced module output (inline, sparse) go by the expert's name."""
    ids: list[int] = []
    seen: list[tuple[object, torch.Tensor | None, int]] = []  # (identity, output [B, ...], id) per group
    for r, name in zip(refs, names, strict=True):
        out = _slot_output(graph, r) if name in module_key else None
        ident: object = module_key[name] if out is not None else ("name", name)
        for key, value, k in seen:
            if key == ident and (value is None or out is None or _equal(value, out)):
                ids.append(k)
                break
        else:
            seen.append((ident, out, len(seen)))
            ids.append(len(seen) - 1)
    return tuple(ids)


def _slot_output(graph: Graph, r: ExpertRef) -> torch.Tensor | None:
    """The output a module expert slot holds on the traced batch `[B, ...]` (its slice `index` along axis 1
    of a stacked `[B, E, ...]` output), or None where the trace kept no such tensor."""
    if r.module is None or r.key[0] != "module":
        return None
    t = graph.nodes[r.order[0]].tensor
    if t is None or (r.index is not None and (t.ndim < 2 or t.shape[1] <= r.index)):
        return None
    return t.detach() if r.index is None else t.detach().select(1, r.index)


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two slot outputs hold the same values (exactly, or up to float rounding noise)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if torch.equal(a, b):
        return True
    if not a.is_floating_point():
        return False
    return torch.allclose(a.double(), b.double(), rtol=1e-6, atol=1e-7, equal_nan=True)


def gate_spec(g: Gate, expert_name: Callable[[ExpertRef], str]) -> GateSpec:
    """The `GateSpec` of a described gate: where it is read and the names of the experts it mixes."""
    return GateSpec(
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
        part_dim=g.loc.part_dim,
        part=g.loc.part,
        two_way=g.loc.two_way,
        layer_call=g.layer_call,
    )
