"""Function-level taps: read a tensor made by the k-th call of a torch function while a module runs.

Gates computed inline (a temperature, a mask, top-k renormalisation, a sigmoid) are no module's
output, so a forward hook cannot see them. A `FunctionTaps` is a `TorchFunctionMode` that counts the
calls of the ops it watches while their module executes (nested calls included, over one whole
forward) and hands the chosen call's output (or one of its tensor arguments) to a callback.

It is pushed by the first watched module's forward pre-hook and popped by the last one's forward
hook (registered with `always_call=True`, so a forward that raises still pops it): ops outside the
watched modules, and everything outside the forward, never pay for the mode. Counting follows the
discovery trace exactly: every call that has a tensor among its arguments counts, under its
normalized name (`mmoe_inspect.topology._trace.op_name`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from mmoe_inspect.topology._attention import ATTENTION_OPS, WEIGHTS_POS, attention_weights, returned_weights
from mmoe_inspect.topology._trace import iter_tensors, op_name
from mmoe_inspect.topology.spec import GateSpec

Tap = tuple[str, int, int, Any]  # (op, occurrence, arg, key handed to the callback)


class FunctionTaps(TorchFunctionMode):
    """Watches `taps[module] = [(op, occurrence, arg, key), ...]`; calls `on_value(key, tensor)`.

    `arg` -1 hands over the op's first tensor output (-2 the second, ...), k >= 0 its k-th tensor
    argument; -2 of an attention call (`topology._attention`) its head-averaged weights, recomputed from its
    arguments when the call does not return them. When
    `on_value` returns a tensor it replaces the value (the output, or the argument before the op runs):
    how causal interventions edit a function-level gate. Use
    `attach(model)` (a context manager) to register the module hooks; `new_forward()` resets the
    counts (call it from the model's forward pre-hook); `paused()` keeps the caller's own torch ops
    (a module hook copying a gate) from being counted.
    """

    def __init__(
        self, taps: dict[str, list[Tap]], on_value: Callable[[Any, torch.Tensor], torch.Tensor | None]
    ) -> None:
        super().__init__()
        self.taps = taps
        self.on_value = on_value
        self.ops = {op for entries in taps.values() for op, *_ in entries}
        self.active: dict[str, int] = {}
        self.counts: dict[tuple[str, str], int] = {}
        self.depth = 0
        self._pause = 0

    # ------------------------------------------------------------------ the mode
    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if self._pause:
            return func(*args, **kwargs)
        name = op_name(func)
        if name not in self.ops:
            return func(*args, **kwargs)
        ins: list[torch.Tensor] | None = None
        hits: list[tuple[int, Any]] = []
        for module, n in self.active.items():
            if n <= 0:
                continue
            entries = self.taps[module]
            if not any(op == name for op, *_ in entries):
                continue
            if ins is None:
                ins = list(iter_tensors((args, kwargs)))
                if not ins:
                    return func(*args, **kwargs)
            k = self.counts.get((module, name), 0)
            self.counts[(module, name)] = k + 1
            hits += [(arg, key) for op, occurrence, arg, key in entries if op == name and occurrence == k]
        if not hits:
            return func(*args, **kwargs)
        assert ins is not None
        for arg, key in hits:  # argument taps first: an edit replaces the argument the op then reads
            if 0 <= arg < len(ins):
                new = self.on_value(key, ins[arg])
                if new is not None:
                    args, kwargs = _swap_nth((args, kwargs), arg, new)
                    ins[arg] = new
        out = func(*args, **kwargs)
        for arg, key in hits:
            if arg < 0:  # -1: the first output, -2: the second (topk's indices), ...
                pos = -arg - 1
                outs = list(iter_tensors(out))
                if name in ATTENTION_OPS and pos == WEIGHTS_POS and not returned_weights(out):
                    weights = attention_weights(name, args, kwargs)  # the softmax the call hid
                    if weights is not None:
                        self.on_value(key, weights)  # read only: no edit of it reaches the call's output
                    continue
                if pos >= len(outs):
                    continue
                new = self.on_value(key, outs[pos])
                if new is not None:
                    out = new if isinstance(out, torch.Tensor) else _swap_nth(out, pos, new)
        return out

    # ------------------------------------------------------------------ bookkeeping
    def new_forward(self) -> None:
        self.counts.clear()

    @contextmanager
    def paused(self) -> Iterator[None]:
        self._pause += 1
        try:
            yield
        finally:
            self._pause -= 1

    def _enter_module(self, path: str) -> None:
        self.active[path] = self.active.get(path, 0) + 1
        if self.depth == 0:
            self.__enter__()
        self.depth += 1

    def _exit_module(self, path: str) -> None:
        if self.active.get(path, 0) <= 0:
            return
        self.active[path] -= 1
        self.depth -= 1
        if self.depth == 0:
            self.__exit__(None, None, None)

    def close(self) -> None:
        """Pop the mode if a forward left it pushed (never expected: the hooks are always-called)."""
        if self.depth > 0:
            self.depth = 0
            self.active.clear()
            self.__exit__(None, None, None)

    @contextmanager
    def attach(self, model: nn.Module) -> Iterator[FunctionTaps]:
        """Register the pre/post hooks on every watched module; all removed (and the mode popped) on exit."""
        modules = dict(model.named_modules())
        handles: list[RemovableHandle] = []
        try:
            for path in self.taps:
                module = modules[path]

                def pre(_m: nn.Module, _args: Any, path: str = path) -> None:
                    self._enter_module(path)

                def post(_m: nn.Module, _args: Any, _out: Any, path: str = path) -> None:
                    self._exit_module(path)

                handles.append(module.register_forward_pre_hook(pre))
                handles.append(module.register_forward_hook(post, always_call=True))
            yield self
        finally:
            for h in handles:
                h.remove()
            self.close()


def _swap_nth(obj: Any, n: int, new: torch.Tensor) -> Any:
    """`obj` (nested args) with its `n`-th tensor (in `iter_tensors` order) replaced by `new`."""
    seen = -1

    def walk(o: Any) -> Any:
        nonlocal seen
        if isinstance(o, torch.Tensor):
            seen += 1
            return new if seen == n else o
        if isinstance(o, tuple) and not hasattr(o, "_fields"):
            return tuple(walk(v) for v in o)
        if isinstance(o, list):
            return [walk(v) for v in o]
        if isinstance(o, dict):
            return {k: walk(v) for k, v in o.items()}
        return o

    return walk(obj)


def gate_taps(gates: list[GateSpec]) -> dict[str, list[Tap]]:
    """The taps of function-level gates: key `("values", gate)` for the weights and, for top-k gates,
    `("indices", gate)` for their expert indices (see `GateSpec`)."""
    taps: dict[str, list[Tap]] = {}
    for g in gates:
        if not g.function_level:
            continue
        if g.index_op is not None:  # indices first: the same call may hand over both
            taps.setdefault(g.module, []).append(
                (g.index_op, g.index_occurrence, g.index_arg, ("indices", g))
            )
        taps.setdefault(g.module, []).append((g.op, g.occurrence, g.arg, ("values", g)))
    return taps


def top_k_dense(
    values: torch.Tensor, indices: torch.Tensor, gate: GateSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """A top-k gate's chosen weights and their expert indices → (`[batch, E]` weights with zeros
    elsewhere, the indices as `[batch, k]` int64). Both tensors are read with the gate's `dim`
    (the k axis) and `batch_dim`."""
    if values.shape != indices.shape:
        raise ValueError(
            f"top-k gate {gate.name!r}: weights {tuple(values.shape)} and indices {tuple(indices.shape)} differ"
        )
    b = gate.batch_dim if gate.batch_dim >= 0 else 0
    v = values.movedim((b, gate.dim), (0, -1)).reshape(values.shape[b], -1)  # keeps a graph (attribution)
    i = indices.detach().movedim((b, gate.dim), (0, -1)).reshape(values.shape[b], -1).long()
    # the range check reads the values: on the host only (a device read would sync every forward)
    if i.device.type == "cpu" and i.numel() and (int(i.min()) < 0 or int(i.max()) >= gate.n_experts):
        raise ValueError(f"top-k gate {gate.name!r}: expert indices outside 0..{gate.n_experts - 1}")
    dense = torch.zeros(v.shape[0], gate.n_experts, dtype=v.dtype, device=v.device).scatter_(1, i, v)
    return dense, i
