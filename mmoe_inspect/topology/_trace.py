"""One instrumented forward pass: a provenance graph of every torch op plus every module call.

Discovery needs to know, for one small batch, which op made which tensor from which tensors, and
which module returned which tensor. `trace_forward` runs the model once with

* a forward pre-hook and a forward hook on every submodule (call counts, which module is executing,
  which tensor each call returned), and
* a `TorchFunctionMode` that sees every torch function call (functional ops, `Tensor` methods,
  operators, in-place ops) and records a `Node` per produced tensor.

Every tensor of the batch is kept alive in the graph so `id()` stays unique while we trace. In-place
ops are told apart from ops that merely return their input (dropout in eval, `contiguous`) by the
tensor's version counter: a mutated tensor gets a new node, an untouched alias keeps its node.

An attention call that hides its softmax (`F.multi_head_attention_forward` with `need_weights=False`,
`F.scaled_dot_product_attention`) also gets a node for its head-averaged weights `[batch, L, S]`, recomputed
from its arguments (`_attention.py`), at output position `WEIGHTS_POS`: attention over expert outputs is a gate.

Every torch function call that had a tensor argument gets a sequence number (`Graph.ops`, with the
module stack at call time): function-level gates are located by "the k-th call of op X while module
M runs", and `replay_with_leaves` runs the forward again with chosen calls' outputs replaced (same
values) by `output + leaf`, `leaf` zeros requiring grad, so discovery can ask autograd
which task outputs depend on them (`torch.autograd.grad`, never `.backward()`); its calls run with
autograd on even where the model's forward turns it off (`no_grad`, `inference_mode`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from mmoe_inspect.topology._attention import ATTENTION_OPS, WEIGHTS_POS, attention_weights, returned_weights

ROOT = ""


@dataclass(frozen=True)
class Ref:
    """Stands for a tensor argument inside a recorded op's args: the node it was at call time."""

    node: int


@dataclass(eq=False)
class Node:
    """One tensor version in the forward: who made it (op name, parent nodes, args) and its shape.

    `op` is the normalized op name (`"softmax"`, `"mul"`, `"getitem"`, ...) or, for tensors no op
    made, `"input"` (the example input), `"param"`, `"buffer"` or `"const"`. `args`/`kwargs` are the
    op's arguments with every tensor replaced by a `Ref`. `module` is the innermost module executing
    when the op ran (None outside any submodule call). `seq` is the sequence number of the call that
    made the node (-1 for source nodes); its op and module stack are `Graph.ops[seq]`.
    """

    idx: int
    op: str
    parents: tuple[int, ...]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    shape: tuple[int, ...]
    module: str | None
    name: str | None = None
    out_pos: int = 0
    seq: int = -1
    tensor: torch.Tensor | None = field(default=None, repr=False)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def arg(self, pos: int, key: str, default: Any = None) -> Any:
        """Argument by position (counting `self` for Tensor methods) or keyword."""
        if len(self.args) > pos:
            return self.args[pos]
        return self.kwargs.get(key, default)


@dataclass(frozen=True)
class ModuleCall:
    """One call of a submodule: its path, 0-based call index in this forward, input and output nodes."""

    path: str
    call: int
    inputs: tuple[int, ...]

    @property
    def depth(self) -> int:
        return 0 if self.path == ROOT else self.path.count(".") + 1


@dataclass
class Graph:
    """The provenance graph of one forward (see module docstring)."""

    batch_size: int
    nodes: list[Node] = field(default_factory=list)
    current: dict[int, int] = field(default_factory=dict)
    module_outputs: dict[int, list[ModuleCall]] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    modules: dict[str, nn.Module] = field(default_factory=dict)
    param_names: dict[int, str] = field(default_factory=dict)
    buffer_names: dict[int, str] = field(default_factory=dict)
    stack: list[str] = field(default_factory=list)
    ops: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    _children: list[list[int]] | None = None

    # ------------------------------------------------------------------ building
    def node_of(self, t: torch.Tensor, *, kind: str | None = None) -> int:
        """The current node of tensor `t`; a source node is created for tensors no op made."""
        idx = self.current.get(id(t))
        if idx is not None:
            return idx
        if kind is None:
            if id(t) in self.param_names:
                kind = "param"
            elif id(t) in self.buffer_names:
                kind = "buffer"
            else:
                kind = "const"
        name = self.param_names.get(id(t)) or self.buffer_names.get(id(t))
        return self._add(kind, (), (), {}, t, name=name)

    def _add(
        self,
        op: str,
        parents: tuple[int, ...],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        t: torch.Tensor,
        *,
        name: str | None = None,
        out_pos: int = 0,
        seq: int = -1,
    ) -> int:
        idx = len(self.nodes)
        module = self.stack[-1] if self.stack else None
        self.nodes.append(
            Node(idx, op, parents, args, kwargs, tuple(t.shape), module, name, out_pos, seq, tensor=t)
        )
        self.current[id(t)] = idx
        self._children = None
        return idx

    # ------------------------------------------------------------------ queries
    @property
    def children(self) -> list[list[int]]:
        """children[i]: nodes having node i among their parents (in creation order)."""
        if self._children is None:
            kids: list[list[int]] = [[] for _ in self.nodes]
            for n in self.nodes:
                for p in dict.fromkeys(n.parents):
                    kids[p].append(n.idx)
            self._children = kids
        return self._children

    def module_calls(self, idx: int) -> list[ModuleCall]:
        """Calls of submodules (never the root) whose output was exactly node `idx`."""
        return [c for c in self.module_outputs.get(idx, []) if c.path != ROOT]

    def outermost_call(self, idx: int) -> ModuleCall | None:
        """The outermost submodule call whose output was node `idx` (ties: the first recorded)."""
        calls = self.module_calls(idx)
        if not calls:
            return None
        return min(calls, key=lambda c: c.depth)

    def occurrence(self, idx: int, module: str) -> int:
        """How many calls of node `idx`'s op ran while `module` was executing before the call that made it."""
        seq = self.nodes[idx].seq
        op = self.nodes[idx].op
        return sum(1 for o, stack in self.ops[:seq] if o == op and module in stack)

    def descendants(self, idx: int) -> set[int]:
        """Every node computed (transitively) from node `idx`, itself included."""
        seen = {idx}
        todo = [idx]
        kids = self.children
        while todo:
            for k in kids[todo.pop()]:
                if k not in seen:
                    seen.add(k)
                    todo.append(k)
        return seen


# ---------------------------------------------------------------------- helpers
def iter_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Tensors inside nested lists/tuples/dicts, in order."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from iter_tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from iter_tensors(o)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):  # a `@dataclass` of outputs
        for f in dataclasses.fields(obj):
            yield from iter_tensors(getattr(obj, f.name))


def _replace(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """`obj` with every tensor inside nested lists/tuples/dicts replaced by `fn(tensor)`."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_replace(o, fn) for o in obj)
    if isinstance(obj, list):
        return [_replace(o, fn) for o in obj]
    if isinstance(obj, dict):
        return {k: _replace(v, fn) for k, v in obj.items()}
    return obj


def _version(t: torch.Tensor) -> int:
    """The in-place version counter of `t` (-1 for inference tensors, which have none)."""
    try:
        return int(t._version)
    except RuntimeError:  # inference tensors have no version counter
        return -1


def op_name(func: Any) -> str:
    """`torch.Tensor.__mul__` -> "mul", `torch.Tensor.add_` -> "add", `F.softmax` -> "softmax"."""
    name = getattr(func, "__name__", None) or type(func).__name__
    name = name.strip("_")
    if name.startswith("r") and name[1:] in ("mul", "matmul", "add", "sub", "truediv"):
        return name  # reflected operators keep their own name ("rmul", "rmatmul")
    if name.startswith("i") and name[1:] in ("add", "sub", "mul", "truediv", "matmul"):
        return name[1:]
    return name


def softmax_dim(node_args: tuple[Any, ...], node_kwargs: dict[str, Any], ndim: int) -> int | None:
    """The normalized softmax axis of a recorded softmax call (torch's legacy implicit dim too)."""
    dim = node_args[1] if len(node_args) > 1 else node_kwargs.get("dim")
    if dim is None:
        dim = 0 if ndim in (0, 1, 3) else 1
    if not isinstance(dim, int):
        return None
    return dim + ndim if dim < 0 else dim


def gate_axis(shape: tuple[int, ...], dim: int | None, batch: int) -> int | None:
    """Expert axis of a softmax output shaped like a gate: `[B, E]`, `[B, E, 1]` or `[B, 1, E]`, E >= 2.

    Returns None when the softmax is not over such an axis (discovery then ignores it).
    """
    if dim is None or len(shape) not in (2, 3) or shape[0] != batch or dim == 0:
        return None
    if shape[dim] < 2:
        return None
    if any(s != 1 for i, s in enumerate(shape) if i not in (0, dim)):
        return None
    return dim


# ---------------------------------------------------------------------- tracing
class _Tracer(TorchFunctionMode):
    """Records every torch function call into `graph` (see module docstring)."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.graph = graph

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        ins = list(iter_tensors((args, kwargs)))
        g = self.graph
        name = op_name(func)
        if not ins:  # a factory (zeros, arange, from_numpy): a source node named after it, no call number
            out = func(*args, **kwargs)
            for pos, o in enumerate(iter_tensors(out)):
                if id(o) not in g.current:
                    g._add(name, (), (), {}, o, out_pos=pos)
            return out
        seq = len(g.ops)
        g.ops.append((name, tuple(g.stack)))
        parents = tuple(g.node_of(t) for t in ins)
        ref_of = {id(t): Ref(p) for t, p in zip(ins, parents, strict=True)}
        before = [_version(t) for t in ins]
        out = func(*args, **kwargs)
        outs = list(iter_tensors(out))
        if not outs and name != "setitem":
            return out
        r_args = _replace(args, lambda t: ref_of[id(t)])
        r_kwargs = _replace(kwargs, lambda t: ref_of[id(t)])
        in_ids = {id(t): i for i, t in enumerate(ins)}
        # Inputs mutated in place (setitem, out=, add_, relu(inplace=True), ...) get a new node.
        mutated = {id(t) for t, v in zip(ins, before, strict=True) if v >= 0 and _version(t) != v}
        for t in ins:
            if id(t) in mutated and not any(o is t for o in outs):
                g._add(name, parents, r_args, r_kwargs, t, seq=seq)
        for pos, o in enumerate(outs):
            if id(o) in in_ids and id(o) not in mutated:
                continue  # the op returned its input untouched (dropout in eval, contiguous, ...)
            g._add(name, parents, r_args, r_kwargs, o, out_pos=pos, seq=seq)
        if name in ATTENTION_OPS and not returned_weights(out):  # the softmax it hides: recomputed, recorded
            with torch.no_grad():
                w = attention_weights(name, args, kwargs)
            if w is not None:
                g._add(name, parents, r_args, r_kwargs, w, out_pos=WEIGHTS_POS, seq=seq)
        return out


class CallCounter(TorchFunctionMode):
    """Counts torch function calls exactly as `_Tracer` numbers them: every call with a tensor argument.

    Subclasses act on chosen calls through `on_call(seq, name, args, kwargs, out) -> out`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seq = 0

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        out = self.call(func, args, kwargs)
        if not any(True for _ in iter_tensors((args, kwargs))):
            return out
        seq = self.seq
        self.seq += 1
        return self.on_call(seq, func, args, kwargs, out)

    def call(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return func(*args, **kwargs)

    def on_call(self, seq: int, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Any:
        return out


class _LeafMode(CallCounter):
    """Replaces the output of chosen calls by `output + leaf` (same values), `leaf` zeros requiring grad.

    `state` holds the model's parameters and buffers: a call that writes into one of them in place (or
    into a view of one) runs as written, and the tensor's values are kept first (`saved`, one copy per
    written tensor) so `replay_with_leaves` can put them back.
    """

    def __init__(self, targets: dict[int, int], state: list[torch.Tensor] | None = None) -> None:
        super().__init__()
        self.targets = targets  # call seq -> output position
        self.leaves: dict[int, torch.Tensor] = {}
        self.state: dict[int, list[torch.Tensor]] = {}  # storage address -> parameters/buffers on it
        for t in state or []:
            key = _storage_key(t)
            if key is not None:
                self.state.setdefault(key, []).append(t)
        self.saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id -> (tensor, its values before)

    def call(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The call, with autograd on where the model's forward turned it off (`@torch.inference_mode()`,
        `with torch.no_grad()` around a serving forward): the leaves must reach the task outputs through
        it, or no gate has a task (all named `shared`). A call that autograd refuses runs as written:
        a write into a parameter made under `no_grad` (refused before anything is written), an
        inference tensor made where the tracer does not look. An in-place write into a parameter or
        buffer (a running load statistic updated under `no_grad`) also runs as written, its values kept
        first: forced autograd would leave the buffer attached to this replay's graph."""
        if self._keep_written(func, args, kwargs):
            return func(*args, **kwargs)
        if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            return func(*args, **kwargs)
        try:
            with torch.inference_mode(False), torch.enable_grad():
                return func(*args, **kwargs)
        except RuntimeError:
            return func(*args, **kwargs)

    def _keep_written(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Copy the values of the parameters/buffers that `func` writes in place; True when there are any."""
        if not self.state:
            return False
        written = [kwargs["out"]] if "out" in kwargs else []
        if _writes_first(func) and args:
            written.append(args[0])
        hit = False
        for w in iter_tensors(written):
            for t in self.state.get(_storage_key(w), ()):  # type: ignore[arg-type]
                hit = True
                if id(t) not in self.saved:
                    with torch.inference_mode(t.is_inference()), torch.no_grad():
                        self.saved[id(t)] = (t, t.detach().clone())
        return hit

    def on_call(self, seq: int, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Any:
        pos = self.targets.get(seq)
        if pos is None:
            return out
        outs = list(iter_tensors(out))
        if pos >= len(outs) or not outs[pos].is_floating_point():
            return out
        # `out + 0` with the zeros a grad leaf: the same values, and unlike a detached copy it keeps the
        # original graph, so a leaf on an upper-level mixture does not cut the paths of the levels below
        with torch.inference_mode(False), torch.enable_grad():
            leaf = torch.zeros_like(outs[pos]).requires_grad_(True)
            sub = outs[pos] + leaf
        self.leaves[seq] = leaf
        if isinstance(out, torch.Tensor):
            return sub
        k = iter(range(len(outs)))
        return _replace(out, lambda t: sub if next(k) == pos else t)


_INPLACE_DUNDERS = frozenset(
    f"__i{op}__"
    for op in (
        "add",
        "sub",
        "mul",
        "truediv",
        "floordiv",
        "mod",
        "pow",
        "matmul",
        "and",
        "or",
        "xor",
        "lshift",
        "rshift",
    )
) | {"__setitem__"}


def _writes_first(func: Any) -> bool:
    """Does `func` write into its first argument (`add_`, `copy_`, `+=`, `t[i] = v`)?"""
    name = getattr(func, "__name__", "")
    return name in _INPLACE_DUNDERS or (name.endswith("_") and not name.startswith("_"))


def _storage_key(t: torch.Tensor) -> int | None:
    """The address of `t`'s storage (shared by its views); None where it has none (meta, sparse)."""
    try:
        return int(t.untyped_storage().data_ptr()) or None
    except (RuntimeError, NotImplementedError, TypeError):
        return None


def _model_state(model: nn.Module) -> list[tuple[dict[str, Any], str, Any, bool]]:
    """Every `(module._parameters, ._buffers or .__dict__, name, tensor, requires_grad)` of `model`: a plain
    tensor attribute (`self.load = torch.zeros(E)`, no `register_buffer`) written in place under `no_grad` is
    state too (left on the replay's graph, `AddBackward0`, it broke `copy.deepcopy(model)`)."""
    out = []
    for m in model.modules():
        for store in (m._parameters, m._buffers):
            for name, t in store.items():
                if t is not None:
                    out.append((store, name, t, bool(t.requires_grad)))
        attrs = vars(m)  # restored in the module's own dict (an attribute reassigned in forward)
        out.extend(
            (attrs, k, t, bool(t.requires_grad))
            for k, t in list(attrs.items())
            if isinstance(t, torch.Tensor)
        )
    return out


def _restore_state(
    state: list[tuple[dict[str, Any], str, Any, bool]], saved: dict[int, tuple[Any, Any]]
) -> None:
    """Put back what a replay changed: the objects in each module's dicts (a buffer reassigned in forward),
    the values written in place, and each tensor's place outside any graph (a leaf, `requires_grad` as found)."""
    for store, name, t, _ in state:
        store[name] = t
    for t, values in saved.values():
        with torch.inference_mode(t.is_inference()), torch.no_grad():
            t.copy_(values)
    for _, _, t, flag in state:
        if t.grad_fn is not None:
            with contextlib.suppress(RuntimeError):  # a view cannot be detached in place: left as it is
                t.detach_()
        if t.requires_grad != flag and t.is_leaf:
            t.requires_grad_(flag)


@contextlib.contextmanager
def _hooks(model: nn.Module, graph: Graph) -> Iterator[None]:
    """Pre- and post-forward hooks on every module; all handles removed on exit (also on errors)."""
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def make(path: str) -> tuple[Callable[..., None], Callable[..., None]]:
        # The hooks' own reads (`t.shape` of a source node) must not reach the tracer: on a Parameter passed
        # as an argument (a parametrization's module gets `original0`, `original1`: weight_norm) each read is
        # a torch function call, numbered as if the model made it, and the replay (no hooks) then puts every
        # later leaf on the wrong call: the gates after it reach no task and were kept as `shared`.
        def pre(module: nn.Module, args: tuple[Any, ...]) -> None:
            with torch._C.DisableTorchFunction():
                k = graph.calls.get(path, 0)
                graph.calls[path] = k + 1
                ins = tuple(graph.node_of(t) for t in iter_tensors(args))
                graph.stack.append(path)
                pending.setdefault(path, []).append(ModuleCall(path, k, ins))

        def post(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            with torch._C.DisableTorchFunction():
                if graph.stack and graph.stack[-1] == path:
                    graph.stack.pop()
                call = pending[path].pop()
                if isinstance(output, torch.Tensor):
                    graph.module_outputs.setdefault(graph.node_of(output), []).append(call)

        return pre, post

    pending: dict[str, list[ModuleCall]] = {}
    try:
        for path, module in model.named_modules():
            pre, post = make(path)
            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post))
        yield
    finally:
        for h in handles:
            h.remove()


def call_model(model: nn.Module, example_input: Any) -> Any:
    """`model(*x)` for a tuple of args, `model(x)` otherwise (a tensor, a dict, a list)."""
    if isinstance(example_input, tuple):
        return model(*example_input)
    return model(example_input)


def replay_with_leaves(
    model: nn.Module, example_input: Any, targets: dict[int, int]
) -> tuple[Any, dict[int, torch.Tensor]]:
    """Run the forward again (eval mode, grad enabled) with the outputs of the calls `targets`
    (call seq -> output position, numbered as `trace_forward` numbers them) plus a zero grad leaf each.

    Returns the output and `{seq: leaf}`; the model is left as found: modes restored, and every parameter
    and buffer as it was before the replay (values written in place, objects reassigned in forward, each a
    leaf outside any graph with its `requires_grad`), so the replay adds nothing to what the forward did.
    """
    modes = {m: m.training for m in model.modules()}
    state = _model_state(model)
    mode = _LeafMode(targets, [t for _, _, t, _ in state])
    try:
        model.eval()
        with torch.enable_grad(), mode:
            out = call_model(model, example_input)
    finally:
        for m, flag in modes.items():
            m.training = flag
        _restore_state(state, mode.saved)
    return out, mode.leaves


def trace_forward(model: nn.Module, example_input: Any) -> tuple[Graph, Any]:
    """Run ONE instrumented forward in eval mode; return the provenance graph and the model output.

    The model is left as found: every module's `training` flag is restored and every hook removed,
    also when the forward raises. Parameters, buffers and `.grad` are not touched (eval mode keeps
    BatchNorm statistics; nothing calls backward).
    """
    tensors = list(iter_tensors(example_input))
    if not tensors:
        raise TypeError("example_input holds no tensor")
    firsts = [int(t.shape[0]) for t in tensors if t.ndim]
    batch = max(firsts, key=firsts.count) if firsts else 1  # the most common leading size
    graph = Graph(batch_size=batch)
    graph.modules = dict(model.named_modules())
    graph.param_names = {id(p): n for n, p in model.named_parameters()}
    graph.buffer_names = {id(b): n for n, b in model.named_buffers()}
    for t in tensors:
        graph.node_of(t, kind="input")
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with _hooks(model, graph), torch.enable_grad(), _Tracer(graph):
            out = call_model(model, example_input)
    finally:
        for m, flag in modes.items():
            m.training = flag
    return graph, out
