"""Never silent: the gate-like things in a traced forward that discovery could not turn into gates.

`unexplained_softmaxes` (gate-shaped softmaxes that reach the task outputs through a combination no
rule resolved), `outside_torch` (per-row tensors entering the forward from numpy or a C extension) and
`named_like_gates` (modules or classes named like gates/experts/MoE that belong to no found gate) each
return `Unresolved` items with a TOML snippet to start a hand-written spec from.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from torch import nn

from mmoe_inspect._plural import plural
from mmoe_inspect.topology._attention import ATTENTION_OPS, bound, source_axis
from mmoe_inspect.topology._experts import ExpertTracer
from mmoe_inspect.topology._feature_scaling import SCALING_NOTE, feature_scaling, own_fields
from mmoe_inspect.topology._graphops import find_reduction, forward_views, view_parent
from mmoe_inspect.topology._mixing import MATMUL_OPS, MAX_EXPERTS, MUL_OPS, Mixture, views_back
from mmoe_inspect.topology._nodes import ancestors, feeds, iter_refs, kind_of, node_module, node_where
from mmoe_inspect.topology._trace import ROOT, Graph, Ref, gate_axis, softmax_dim
from mmoe_inspect.topology.spec import TaskSpec, Topology, Unresolved


def fused_gate_like(graph: Graph, mix: Mixture) -> bool:
    """Whether a fused reading's weights are gates: softmax or sigmoid outputs (through views), or rows that
    are distributions over the experts; a product of two projections (attention scores) is not."""
    if any(node.op in ("softmax", "sigmoid") for node in views_back(graph, mix.weights)):
        return True
    return kind_of(graph, mix.weights, mix.w_axis, mix.w_batch) == "probs"


def fused_gates(graph: Graph, mix: Mixture, why: str) -> Unresolved:
    """One weight tensor holding the gates of several tasks (`Mixture.fused`), e.g. `Linear(d, T * E)` viewed
    `[B, T, E]`, softmaxed and mixed by one `bmm` with the stacked experts `[B, E, D]`, whose gates could not
    be located (`why`): seen, not recorded, so the routing cannot be judged (rather than called a
    Shared-Bottom)."""
    shape = list(graph.nodes[mix.weights].shape)
    op = graph.nodes[mix.combine].op
    return Unresolved(
        f"{mix.fused} gates in one tensor {shape} (axis {mix.fused_axis}), each weighting the same "
        f"{mix.n_experts} experts in one {op}",
        node_module(graph, mix.combine),
        f"{why}, so their routing is not recorded; compute each task's gate as a tensor of its own (e.g. one "
        "softmax per task, or `w[:, t]` before the mixing) to have them found",
    )


def split_weights(n: int) -> str:
    """Why `w0 * x0 + w1 * x1 (+ ...)` (`Mixture.split`, `n` experts) is not read: no tensor holds its weights."""
    if n == 2:
        return (
            "its two weights are separate per-row tensors (w0 * x0 + w1 * x1), which no one tensor holds; compute "
            "them as one [batch, 2] tensor (e.g. a softmax) or as w and 1 - w to have the gate read"
        )
    return (
        f"its {n} weights are separate per-row tensors (w0 * x0 + w1 * x1 + ...), which no one tensor holds; "
        f"compute them as one [batch, {n}] tensor (e.g. a softmax) to have the gate read"
    )


def two_way_unresolved(graph: Graph, mix: Mixture, why: str, tasks: tuple[TaskSpec, ...]) -> Unresolved:
    """A two-way blend of two expert outputs by one weight per row (`Mixture.two_way`: `lerp(x0, x1, w)`,
    `(1 - w) * x0 + w * x1`) whose weight could not be read as a gate (`why`): seen, not recorded, so the
    routing cannot be judged (rather than called a Shared-Bottom). Experts weighted by separate per-row weights
    (`Mixture.split`) get no snippet: no one tensor of the model holds their gate."""
    where = node_module(graph, mix.output)
    w = graph.nodes[mix.weights]
    if mix.split:
        what = (
            "a per-row mix of two expert outputs"
            if mix.n_experts == 2
            else f"a per-row mix of {mix.n_experts} expert outputs"
        )
        return Unresolved(
            f"{what}, each weighted by a weight of its own ({graph.nodes[mix.output].op}, weight {list(w.shape)})",
            where,
            f"found there but cannot be read as a gate: {why}",
            "",
        )
    snippet = function_snippet(graph, mix.weights, 2, tasks, dim=mix.w_axis) if w.seq >= 0 else ""
    if snippet:
        snippet = "\n".join(
            'output = "probs"\ntwo_way = true  # the weight w read as [1 - w, w]'
            if ln.startswith("output =")
            else ln
            for ln in snippet.split("\n")
        )
    return Unresolved(
        f"a per-row two-way mix of two expert outputs ({graph.nodes[mix.output].op}, weight {list(w.shape)})",
        where,
        f"found there but cannot be read as a gate: {why}",
        snippet,
    )


def unexplained_softmaxes(
    graph: Graph,
    gates: Sequence[Any],
    rejected: list[tuple[Mixture, str]],
    task_nodes: set[int],
    tasks: tuple[TaskSpec, ...],
    notes: list[str],
) -> list[Unresolved]:
    """Gate-shaped softmaxes that reach the task outputs but are neither a found gate nor explained."""
    out: list[Unresolved] = []
    gate_weights = {g.weights for g in gates} | {g.producer for g in gates}
    quiet: list[str] = []
    for s in graph.nodes:
        if s.op != "softmax":
            continue
        dim = softmax_dim(s.args, s.kwargs, s.ndim)
        if dim is None or not 2 <= s.shape[dim] <= 1024:
            continue
        if feeds(graph, s.idx, gate_weights):
            continue  # a found gate's weights (a fused `[B, T, E]` softmax too), or part of them
        axis = gate_axis(s.shape, dim, graph.batch_size)
        if axis is None and not (s.ndim == 1 and dim == 0):
            # attention maps [B, H, L, L] and other multi-axis softmaxes weight no set of per-row experts
            quiet.append(
                f"{list(s.shape)} in {node_where(graph, s.idx)} (an attention map over several axes)"
            )
            continue
        below = graph.descendants(s.idx)
        where = node_where(graph, s.idx)
        judged = [why for m, why in rejected if m.weights in below]
        if judged:  # its combination was judged: attention over features, embeddings, ...
            quiet.append(f"{list(s.shape)} in {where} (its weighted sum {judged[0]})")
            continue
        if not below & task_nodes:
            quiet.append(f"{list(s.shape)} in {where} (does not reach the task outputs)")
            continue
        if any(idx in task_nodes for idx, _ in forward_views(graph, s.idx, dim)):
            quiet.append(f"{list(s.shape)} in {where} (an output distribution)")
            continue
        why = _unexplained_use(graph, s.idx, dim, task_nodes)
        if why == "":
            quiet.append(f"{list(s.shape)} in {where} (an output distribution: its entries are the outputs)")
            continue
        if why is None:
            quiet.append(f"{list(s.shape)} in {where} (re-weights values without mixing per-row experts)")
            continue
        module = node_module(graph, s.idx)
        out.append(
            Unresolved(
                f"a softmax over {s.shape[dim]} entries {list(s.shape)}",
                module,
                f"it reaches the task outputs through {why}, but no weighted combination of expert outputs "
                "could be traced from it (the mixing may run outside torch, in a custom op or an autograd Function)",
                function_snippet(graph, s.idx, s.shape[dim], tasks, dim=dim),
            )
        )
    if quiet:
        verb = "is not a gate" if len(quiet) == 1 else "are not gates"
        notes.append(f"{plural(len(quiet), 'softmax output')} {verb}: " + "; ".join(quiet))
    return out


# Ops through which a softmax may flow without routing anything (products are judged separately).

_PLAIN_OPS = frozenset(
    {
        "add", "radd", "sub", "rsub", "div", "truediv", "rtruediv", "log", "exp", "clamp", "clamp_min",
        "clamp_max", "pow", "neg", "abs", "sqrt", "where", "masked_fill", "gt", "lt", "ge", "le", "eq", "ne",
        "sum", "mean", "amax", "amin", "max", "min", "log_softmax", "softmax", "sigmoid", "tanh", "relu",
        "cat", "stack", "isfinite", "isnan", "nan_to_num", "entr", "square", "reciprocal", "std", "var",
        "norm", "logsumexp", "dropout", "linear",
    }
)  # fmt: skip


_SELECT_OPS = frozenset({"getitem", "select", "narrow", "index_select", "unbind", "split", "chunk", "gather"})


def _unexplained_use(graph: Graph, idx: int, axis: int, task_nodes: set[int]) -> str | None:
    """How a gate-shaped softmax is used in a way that could be a mixture discovery did not resolve
    (a product summed over its axis, a product of its entries with wider per-row values, a contraction
    with per-row values, a routing or unknown op). None when it only re-weights or transforms values;
    "" when its entries, picked or transformed, are the task outputs themselves (an output distribution)."""
    batch = graph.batch_size
    todo: list[tuple[int, int | None]] = list(forward_views(graph, idx, axis))
    seen = {n for n, _ in todo}
    to_outputs = False
    while todo and len(seen) < 256:
        node_idx, ax = todo.pop(0)
        view = graph.nodes[node_idx]
        to_outputs |= node_idx in task_nodes
        for c in graph.children[node_idx]:
            child = graph.nodes[c]
            if c in seen:
                continue
            partners = [r.node for r in iter_refs(child.args) if r.node != node_idx]
            per_row = [p for p in partners if batch in graph.nodes[p].shape]
            if child.op in MUL_OPS:
                shifted = None if ax is None else ax + child.ndim - view.ndim
                if per_row and shifted is not None and 0 <= shifted < child.ndim:
                    if find_reduction(graph, c, shifted) is not None:
                        return f"a product with {list(graph.nodes[per_row[0]].shape)} summed over its axis"
                elif per_row and any(
                    graph.nodes[p].ndim > view.ndim or math.prod(graph.nodes[p].shape) > math.prod(view.shape)
                    for p in per_row
                ):
                    return f"a product of its entries with {list(graph.nodes[per_row[0]].shape)}"
                continue
            if child.op in MATMUL_OPS or child.op == "einsum":
                if per_row:
                    return f"{child.op} with {list(graph.nodes[per_row[0]].shape)}"
                continue
            if view_parent(graph, child) == node_idx:
                continue  # views were followed by forward_views (with the axis)
            if child.op in _SELECT_OPS or child.op in _PLAIN_OPS:
                seen.add(c)
                todo.append((c, None))
                continue
            return f"{child.op}"
    return "" if to_outputs else None


def _batch_axis_of(graph: Graph, idx: int) -> bool:
    return graph.batch_size in graph.nodes[idx].shape


_GATE_WORDS = frozenset(
    {
        "gate", "gates", "gating", "router", "routers", "routing", "expert", "experts", "moe", "mmoe",
        "omoe", "ple", "cgc", "mixture", "mixtures",
    }
)  # fmt: skip


def unread_attention(graph: Graph, seen: set[int], tasks: tuple[TaskSpec, ...]) -> list[Unresolved]:
    """Attention calls (`_attention.ATTENTION_OPS`) that attend from a query of their own over E >= 2 expert
    outputs (the values trace back to E expert computations) but whose weights were not read as a gate
    (`seen`: the combine nodes discovery read or rejected): the attention decides the mix, so the routing
    cannot be judged, never a silent Shared-Bottom."""
    out: list[Unresolved] = []
    tracer = ExpertTracer(graph)
    for node in graph.nodes:
        if node.op not in ATTENTION_OPS or node.out_pos != 0 or node.idx in seen:
            continue
        a = bound(node.op, node.args, node.kwargs)
        q, k, v = (None, None, None) if a is None else (a.get("query"), a.get("key"), a.get("value"))
        if not (isinstance(q, Ref) and isinstance(k, Ref) and isinstance(v, Ref)) or q == k:
            continue
        vax = source_axis(node.op, graph.nodes[v.node].ndim)
        e = None if vax is None else graph.nodes[v.node].shape[vax]
        if e is None or not 2 <= e <= MAX_EXPERTS or e == graph.batch_size:
            continue
        if not isinstance(tracer.resolve(v.node, vax, e), list) or own_fields(
            graph, tracer, v.node, vax, single=True
        ):
            continue  # values that are fields, a sequence or embeddings: attention over features
        out.append(
            Unresolved(
                f"attention over {e} expert outputs ({node.op})",
                node_module(graph, node.idx),
                f"a query attends over the {e} experts as keys/values, so its attention weights are the gate, but "
                "they could not be read as one [batch, queries, experts] tensor (key positions added by bias_k or "
                "add_zero_attn, per-head weights, or as many queries as experts); call it with plain keys, or name "
                "the gate in a spec file",
                function_snippet(graph, node.idx, e, tasks, dim=2, arg=-2),
            )
        )
    return out


def _words(name: str) -> set[str]:
    """Lower-case words of an identifier: `task_gates.0` -> {task, gates}, `CGCLayer` -> {cgc, layer}."""
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return {w for w in re.split(r"[^A-Za-z]+", name.lower()) if w}


def gate_word(name: str) -> bool:
    """Whether a module path or class name is named like a gate, expert, router or MoE layer."""
    if re.search(r"(MoE|MOE)(?![a-z])", name):
        return True
    return any(_GATE_WORDS & _words(part) for part in name.split("."))


def named_like_gates(
    model: nn.Module, graph: Graph, gates: Sequence[Any], tasks: tuple[TaskSpec, ...], notes: list[str]
) -> list[Unresolved]:
    """Modules (or the model's class) named like gates/experts/MoE that ran but belong to no found gate."""
    covered_paths = {g.loc.module for g in gates}
    for g in gates:
        covered_paths |= {r.module for r in g.experts if r.module is not None}
        covered_paths |= {r.parent for r in g.experts if r.parent}
    upstream: set[int] = set()
    for g in gates:
        for n in [g.weights, g.producer, *g.expert_nodes]:
            upstream |= ancestors(graph, n)
    outputs_of: dict[str, list[int]] = {}
    for idx, calls in graph.module_outputs.items():
        for c in calls:
            outputs_of.setdefault(c.path, []).append(idx)
    out: list[Unresolved] = []
    flagged: list[str] = []
    for path in graph.calls:
        if path == ROOT or not (gate_word(path) or gate_word(type(graph.modules[path]).__name__)):
            continue
        if any(path == c or path.startswith(c + ".") or c.startswith(path + ".") for c in covered_paths if c):
            continue
        if any(idx in upstream for idx in outputs_of.get(path, [])):
            continue
        flagged.append(path)
    scaling = [p for p in flagged if not any(p.startswith(q + ".") for q in flagged)]
    scaling = [p for p in scaling if _note_scaling(graph, p, outputs_of.get(p, []), notes)]
    flagged = [p for p in flagged if not any(p == q or p.startswith(q + ".") for q in scaling)]
    groups = _containers(flagged)
    for container, paths in list(groups.items())[:8]:
        cls = type(graph.modules[paths[0]]).__name__
        named = paths[0] if len(paths) == 1 else f"{paths[0]} ... {paths[-1]} ({len(paths)} modules)"
        if "expert" in " ".join(_words(container)) or "experts" in _words(container):
            snippet = "".join(f'[[experts]]\nname = "{p}"\nmodule = "{p}"\n' for p in paths)
            reason = "their outputs feed no gate discovery found"
        else:
            e, kind = _module_gate_guess(graph, outputs_of.get(paths[0], []))
            snippet = module_snippet(paths[0], e, tasks, kind)
            reason = "it ran in the forward but is part of no gate discovery found"
        out.append(
            Unresolved(
                f"module {named} ({cls}) is named like a gate, expert or MoE layer",
                container,
                reason,
                snippet,
            )
        )
    if len(groups) > 8:
        notes.append(f"{len(groups) - 8} more modules named like gates/experts are not part of any gate")
    if not gates and not out:
        cls = type(model).__name__
        # a class named for its gates (`FieldGateNet`) whose only gates scale features: named for those
        explained = bool(scaling) and not re.search(r"(MoE|MOE)(?![a-z])", cls)
        if gate_word(cls) and not (explained and _words(cls) & _GATE_WORDS <= {"gate", "gates", "gating"}):
            out.append(
                Unresolved(
                    f"the model's class {cls} is named like a mixture-of-experts model",
                    ROOT,
                    "but no gate (a per-row weighted combination of expert outputs) was found in its forward",
                    module_snippet("<module path of the gate>", None, tasks),
                )
            )
    return out


def _note_scaling(graph: Graph, path: str, outputs: list[int], notes: list[str]) -> bool:
    """Whether module `path` only scales features (PEPNet's GateNU, `feature_scaling`); if so a note says
    it is no routing (it and its submodules are then not unresolved)."""
    scales = feature_scaling(graph, outputs)
    if scales is None:
        return False
    notes.append(
        SCALING_NOTE.format(path=path, cls=type(graph.modules[path]).__name__)
        + f"{scales}, never summed over them; it mixes no expert outputs"
    )
    return True


def _containers(paths: Sequence[str]) -> dict[str, list[str]]:
    """The outermost of `paths` grouped by container (`experts.0 ... experts.7` under `experts`), in order:
    one unresolved item per container."""
    outer = [p for p in paths if not any(p.startswith(q + ".") for q in paths if q != p)]
    groups: dict[str, list[str]] = {}
    for path in outer:
        head, _, last = path.rpartition(".")
        groups.setdefault(head if last.isdigit() and head else path, []).append(path)
    return groups


def _module_gate_guess(graph: Graph, outputs: list[int]) -> tuple[int | None, str]:
    """(E, output kind) a module's output suggests as a gate: logits when the model softmaxes it."""
    if not outputs:
        return None, "probs"
    node = graph.nodes[outputs[0]]
    shape = node.shape
    e = shape[-1] if len(shape) >= 2 and 2 <= shape[-1] <= 1024 else None
    if e is None:
        return None, "probs"
    if any(graph.nodes[c].op == "softmax" for c in graph.children[node.idx]):
        return e, "logits"
    return e, kind_of(graph, node.idx, len(shape) - 1, 0 if shape[0] == graph.batch_size else None)


# Source nodes whose values torch did not compute: copied in from numpy/Python, or made where the
# tracer could not see (a C extension returning a fresh tensor is a "const").
_FROM_OUTSIDE = frozenset({"const", "from_numpy", "as_tensor", "asarray", "tensor", "frombuffer"})


def outside_torch(graph: Graph, task_nodes: set[int], tasks: tuple[TaskSpec, ...]) -> list[Unresolved]:
    """Per-row tensors that enter the forward from outside torch (numpy, a C extension, `torch.vmap`) on the way to the
    outputs: the forward is not fully visible, so gate-shaped softmaxes cut off by it may be gates."""
    above: set[int] = set()
    for t in task_nodes:
        above |= ancestors(graph, t)
    entered = [
        n
        for n in graph.nodes
        if n.op in _FROM_OUTSIDE and n.idx in above and graph.batch_size in n.shape and n.ndim >= 1
    ]
    if not entered:
        return []
    first = entered[0]
    cut = [
        s
        for s in graph.nodes
        if s.op == "softmax"
        and (dim := softmax_dim(s.args, s.kwargs, s.ndim)) is not None
        and gate_axis(s.shape, dim, graph.batch_size) is not None
        and not graph.descendants(s.idx) & task_nodes
    ]
    snippet = (
        function_snippet(
            graph,
            cut[0].idx,
            cut[0].shape[softmax_dim(cut[0].args, cut[0].kwargs, cut[0].ndim) or 1],
            tasks,
            dim=softmax_dim(cut[0].args, cut[0].kwargs, cut[0].ndim) or 1,
        )
        if cut
        else module_snippet("<module path of the gate>", None, tasks)
    )
    return [
        Unresolved(
            f"a per-row tensor {list(first.shape)} enters the forward from outside torch",
            node_module(graph, first.idx),
            "part of the forward runs where no tracer sees it (numpy, a C extension, a torch.vmap/torch.func "
            "transform), so a mixture may be hidden"
            + (f"; {len(cut)} gate-shaped softmax(es) stop before it" if cut else ""),
            snippet,
        )
    ]


def _experts_snippet(n_experts: int | None) -> tuple[str, str]:
    if n_experts is None:
        return '["expert[0]", "expert[1]"]  # one name per expert, in the gate\'s column order', (
            '[[experts]]\nname = "expert[0]"  # module = "path" when a module returns this expert\'s output\n'
            '[[experts]]\nname = "expert[1]"\n'
        )
    names = [f"expert[{i}]" for i in range(n_experts)]
    blocks = "".join(
        f'[[experts]]\nname = "{n}"'
        + ('  # module = "path" when a module returns its output' if i == 0 else "")
        + "\n"
        for i, n in enumerate(names)
    )
    return "[" + ", ".join(f'"{n}"' for n in names) + "]", blocks


def _task_line(tasks: tuple[TaskSpec, ...]) -> str:
    return f'task = "FILL_IN"  # one of: {", ".join(t.name for t in tasks)}; omit for a shared gate'


def function_snippet(
    graph: Graph, idx: int, n_experts: int, tasks: tuple[TaskSpec, ...], *, dim: int = 1, arg: int = -1
) -> str:
    """A `[[gates]]` block reading node `idx`'s op at the function level, to be completed by hand."""
    node = graph.nodes[idx]
    module = node_module(graph, idx)
    occurrence = graph.occurrence(idx, module) if node.seq >= 0 else 0
    experts, blocks = _experts_snippet(n_experts)
    return (
        "[[gates]]\n"
        'name = "FILL_IN"\n'
        f'module = "{module}"\n'
        f'op = "{node.op}"\n'
        f"occurrence = {occurrence}\n"
        f"arg = {arg}\n"
        'output = "probs"  # "logits" or "weights" if the rows are not distributions\n'
        f"dim = {dim}\n"
        "batch_dim = 0\n"
        f"experts = {experts}\n"
        f"{_task_line(tasks)}\n"
        f"{blocks}"
    )


def module_snippet(
    path: str, n_experts: int | None, tasks: tuple[TaskSpec, ...], output: str = "probs"
) -> str:
    """A `[[gates]]` block reading a module's output, to be completed by hand."""
    experts, blocks = _experts_snippet(n_experts)
    return (
        "[[gates]]\n"
        'name = "FILL_IN"\n'
        f'module = "{path}"\n'
        f'output = "{output}"  # "probs", "logits" (softmaxed afterwards by the model) or "weights"\n'
        "dim = 1\n"
        f"experts = {experts}\n"
        f"{_task_line(tasks)}\n"
        f"{blocks}"
    )


def uncovered_by_spec(model: nn.Module, topo: Topology, spec: str) -> list[Unresolved]:
    """For a hand-given spec that declares no gate: the modules named like gates, experts or MoE layers
    (none is covered: no declared expert is the module, inside it or around it). Such a spec turned an
    MMoE into a Shared-Bottom that `check` passed. A spec that declares gates is taken at its word: a
    gate's own hidden layers (DeepCTR's `gate_dnn` beside `gate_dnn_final_layer`) are named like gates
    too and need no declaration of their own."""
    if topo.gates:
        return []
    covered = {e.module for e in topo.experts if e.module}
    modules = dict(model.named_modules())
    flagged = [
        path
        for path, module in modules.items()
        if path
        and (gate_word(path) or gate_word(type(module).__name__))
        and not any(path == c or path.startswith(c + ".") or c.startswith(path + ".") for c in covered)
    ]
    out = []
    for container, paths in list(_containers(flagged).items())[:8]:
        cls = type(modules[paths[0]]).__name__
        named = paths[0] if len(paths) == 1 else f"{paths[0]} ... {paths[-1]} ({len(paths)} modules)"
        out.append(
            Unresolved(
                f"module {named} ({cls}) is named like a gate, expert or MoE layer",
                container,
                f"the spec {spec} declares no gate or expert there",
                module_snippet(paths[0], None, topo.tasks),
            )
        )
    return out
