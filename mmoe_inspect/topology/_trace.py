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

Softmax outputs shaped like a gate are replaced (same values) by `leaf.clone()` where `leaf` is a
detached tensor requiring grad; discovery later asks autograd which task outputs depend on them,
with `torch.autograd.grad`, never `.backward()`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

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
    when the op ran (None outside any submodule call). `leaf` is set on gate-shaped softmax outputs:
    the detached, grad-requiring tensor the output was rebuilt from.
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
    leaf: torch.Tensor | None = field(default=None, repr=False)
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
        leaf: torch.Tensor | None = None,
    ) -> int:
        idx = len(self.nodes)
        module = self.stack[-1] if self.stack else None
        self.nodes.append(
            Node(idx, op, parents, args, kwargs, tuple(t.shape), module, name, out_pos, leaf, tensor=t)
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
    """Records every torch function call into `graph`; rebuilds gate-shaped softmaxes from grad leaves."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.graph = graph

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        ins = list(iter_tensors((args, kwargs)))
        if not ins:
            return func(*args, **kwargs)
        g = self.graph
        parents = tuple(g.node_of(t) for t in ins)
        ref_of = {id(t): Ref(p) for t, p in zip(ins, parents, strict=True)}
        before = [_version(t) for t in ins]
        out = func(*args, **kwargs)
        outs = list(iter_tensors(out))
        name = op_name(func)
        if not outs and name != "setitem":
            return out
        r_args = _replace(args, lambda t: ref_of[id(t)])
        r_kwargs = _replace(kwargs, lambda t: ref_of[id(t)])
        in_ids = {id(t): i for i, t in enumerate(ins)}
        # Inputs mutated in place (setitem, out=, add_, relu(inplace=True), ...) get a new node.
        mutated = {id(t) for t, v in zip(ins, before, strict=True) if v >= 0 and _version(t) != v}
        for t in ins:
            if id(t) in mutated and not any(o is t for o in outs):
                g._add(name, parents, r_args, r_kwargs, t)
        new_out = out
        for pos, o in enumerate(outs):
            if id(o) in in_ids and id(o) not in mutated:
                continue  # the op returned its input untouched (dropout in eval, contiguous, ...)
            if name == "softmax" and isinstance(out, torch.Tensor) and o.is_floating_point():
                dim = softmax_dim(args, kwargs, o.ndim)
                if gate_axis(tuple(o.shape), dim, g.batch_size) is not None:
                    leaf = o.detach().requires_grad_(True)
                    with torch.enable_grad():
                        sub = leaf.clone()
                    g._add(name, parents, r_args, r_kwargs, sub, out_pos=pos, leaf=leaf)
                    new_out = sub
                    continue
            g._add(name, parents, r_args, r_kwargs, o, out_pos=pos)
        return new_out


@contextlib.contextmanager
def _hooks(model: nn.Module, graph: Graph) -> Iterator[None]:
    """Pre- and post-forward hooks on every module; all handles removed on exit (also on errors)."""
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def make(path: str) -> tuple[Callable[..., None], Callable[..., None]]:
        def pre(module: nn.Module, args: tuple[Any, ...]) -> None:
            k = graph.calls.get(path, 0)
            graph.calls[path] = k + 1
            ins = tuple(graph.node_of(t) for t in iter_tensors(args))
            graph.stack.append(path)
            pending.setdefault(path, []).append(ModuleCall(path, k, ins))

        def post(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
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
