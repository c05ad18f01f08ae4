"""`GateRecorder`: forward hooks that capture every gate (and optionally expert) output of a model.

Module gates are read by a forward hook on their module. Function-level gates (`GateSpec.op`: the
k-th call of a torch function while a module runs, see `mmoe_inspect.recording.taps`) are read by a
`TorchFunctionMode` that is active only while their module executes, pushed and popped by that
module's forward pre-hook and (always-called) forward hook.

The recorder never keeps a view of a model tensor: each hook copies (and, for logit gates, softmaxes)
what it needs at once, because real models modify tensors in place after the hook returns
(DeepCTR-Torch's in-place bias add, `ReLU(inplace=True)`). On exit, including on exceptions, every
hook handle is removed, the function mode popped and each module's `training` flag restored
(`mmoe_inspect.recording.hooks.HookSession`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from mmoe_inspect.data.call import call_model
from mmoe_inspect.errors import MmoeInspectError, first_line
from mmoe_inspect.recording.hooks import HookSession, model_mode
from mmoe_inspect.recording.taps import FunctionTaps, gate_taps, top_k_dense
from mmoe_inspect.topology._trace import iter_tensors
from mmoe_inspect.topology.spec import ExpertSpec, GateSpec, Topology, TopologyError

__all__ = [
    "ForwardCapture",
    "GateRecorder",
    "RecordingError",
    "dense_spec",
    "expert_output",
    "gate_probabilities",
    "model_mode",  # re-exported: it lives in `recording.hooks`
]


class RecordingError(MmoeInspectError, RuntimeError):
    """A hook saw something that does not fit the topology (wrong shape, missing call, no output)."""


@dataclass
class ForwardCapture:
    """What one forward pass produced: gate probabilities `[batch, E]` (the model's dtype; float32 for logit
    gates, which are softmaxed here) and expert outputs `[batch, d]` (float32)."""

    gates: dict[str, torch.Tensor] = field(default_factory=dict)
    experts: dict[str, torch.Tensor] = field(default_factory=dict)


def gate_part(out: torch.Tensor, gate: GateSpec) -> tuple[torch.Tensor, GateSpec]:
    """A fused gate's own slice of its captured tensor (a view) and the spec of that slice (axes renumbered,
    `part_dim` None; a two-way gate's slice keeps its axis, size 1); any other gate as given."""
    if gate.part_dim is None:
        return out, gate
    nd, pd = out.dim(), gate.part_dim
    if not 0 <= pd < nd or not 0 <= gate.part < out.shape[pd]:
        raise RecordingError(
            f"gate {gate.name!r} ({gate.locator}) produced shape {tuple(out.shape)}, which has no part "
            f"{gate.part} on dim {pd}; fix part/part_dim in the topology spec"
        )
    if gate.two_way:  # `s[:, k:k+1]`: the weight w of this gate kept as size 1 on `part_dim` (its `dim`)
        return out.narrow(pd, gate.part, 1), replace(gate, part_dim=None, part=0)
    dim = gate.dim + nd if gate.dim < 0 else gate.dim
    bdim = gate.batch_dim
    return out.select(pd, gate.part), replace(
        gate,
        part_dim=None,
        part=0,
        dim=dim - (dim > pd),
        batch_dim=bdim - (bdim > pd) if bdim >= 0 else bdim,
    )


def two_way_pair(out: torch.Tensor, gate: GateSpec) -> tuple[torch.Tensor, GateSpec]:
    """A two-way gate's captured weight `w` (size 1 on `gate.dim`; a `[batch]` w with `dim` 1 is unsqueezed there)
    → `[1 - w, w]` on that axis (a new tensor that keeps the graph) and the spec of that pair (`two_way` False);
    any other gate as given."""
    if not gate.two_way:
        return out, gate
    nd = out.dim()
    dim = gate.dim + nd if gate.dim < 0 else gate.dim
    if dim == nd and gate.batch_dim >= 0 and nd >= 1:  # a `[batch]` w (no axis of its own): `dim` one past
        out, nd = out.unsqueeze(dim), nd + 1
    if not 0 <= dim < nd or out.shape[dim] != 1:
        raise RecordingError(
            f"gate {gate.name!r} ({gate.locator}) produced shape {tuple(out.shape)}; a two_way gate reads one "
            f"weight per row (size 1 on dim {gate.dim}); fix dim in the topology spec"
        )
    return torch.cat((1 - out, out), dim=dim), replace(gate, two_way=False)


def _refuse_probabilities_as_logits(out: torch.Tensor, gate: GateSpec, dim: int) -> None:
    """Refuse a gate declared `output = "logits"` whose captured rows are probabilities (every value >= 0,
    every row of 2+ experts summing to 1): softmaxed again they would look uniform, a false `uniform_gate`.
    One reduction per batch in the common case (real logits have a negative value)."""
    if gate.n_experts < 2 or not out.numel() or not out.is_floating_point() or out.device.type != "cpu":
        return  # (on an accelerator the check would read back every batch: the recording stays sync-free)
    if bool((out < 0).any()):
        return
    sums = out.sum(dim=dim, dtype=torch.float32)
    if bool(((sums - 1).abs() <= 1e-3).all()):
        raise RecordingError(
            f'gate {gate.name!r} ({gate.locator}) is declared output = "logits", but its rows are probabilities '
            "(non-negative, each summing to 1): softmaxed again they would look uniform; set output = "
            '"probs" for this gate in the topology spec'
        )


def gate_probabilities(out: torch.Tensor, gate: GateSpec, batch: int | None = None) -> torch.Tensor:
    """A gate's captured tensor → a fresh `[batch, E]` tensor of weights (copy, never a view).

    Probabilities and weights keep the model's dtype (statistics accumulate in float64 and judge
    normalization by that dtype's precision); logits are softmaxed in float32. The expert axis is
    `gate.dim`, the batch axis `gate.batch_dim`; weights without a batch axis (`batch_dim=-1`, one vector
    for every row) are repeated for the `batch` rows of the forward. A fused gate reads its slice
    (`gate_part`); a two-way gate's weight `w` is read as `[1 - w, w]` (`two_way_pair`).
    """
    out, gate = gate_part(out, gate)
    if gate.two_way:
        out, gate = two_way_pair(out.detach(), gate)
    nd = out.dim()
    dim = gate.dim + nd if gate.dim < 0 else gate.dim
    bdim = gate.batch_dim
    if not 0 <= dim < nd or out.shape[dim] != gate.n_experts or (bdim >= nd):
        raise RecordingError(
            f"gate {gate.name!r} ({gate.locator}) produced shape {tuple(out.shape)}, expected {gate.n_experts} "
            f"experts on dim {gate.dim}; fix the topology spec (mmoe-inspect topology)"
        )
    if out.requires_grad:
        out = out.detach()
    if gate.output == "logits":
        _refuse_probabilities_as_logits(out, gate, dim)
        probs = torch.softmax(out, dim=dim, dtype=torch.float32)
    else:
        probs = out.clone(memory_format=torch.contiguous_format)
    if bdim < 0:
        if probs.numel() != gate.n_experts:
            raise RecordingError(
                f"gate {gate.name!r} ({gate.locator}) has no batch axis but shape {tuple(out.shape)}; "
                "set batch_dim in the topology spec"
            )
        row = probs.reshape(1, gate.n_experts)
        return row.expand(batch if batch is not None else 1, gate.n_experts).clone()
    if probs.dim() == 2 and dim == 1 and bdim == 0:  # already [batch, E]: one op per gate and batch
        return probs
    if bdim != 0 or probs.numel() != probs.shape[bdim] * gate.n_experts:
        if probs.numel() != probs.shape[bdim] * gate.n_experts:
            raise RecordingError(
                f"gate {gate.name!r} ({gate.locator}) produced shape {tuple(out.shape)}: more than a batch "
                "axis and an expert axis; fix dim/batch_dim in the topology spec"
            )
        return probs.movedim((bdim, dim), (0, -1)).reshape(-1, gate.n_experts).contiguous()
    return probs.movedim(dim, -1).reshape(-1, gate.n_experts)


def dense_spec(gate: GateSpec) -> GateSpec:
    """The spec of a top-k gate's `[batch, E]` dense weights (what its statistics and edits see)."""
    return replace(gate, dim=1, batch_dim=0, output="probs" if gate.output == "logits" else gate.output)


def expert_output(out: torch.Tensor, expert: ExpertSpec, rows: torch.Tensor | None = None) -> torch.Tensor:
    """An expert module's output → a fresh float32 `[batch, d]` copy (slice `index` of `[batch, E, d]`);
    with `rows` (int64 `[k]`) only those rows are copied: `[k, d]`."""
    if expert.index is not None:
        if out.dim() < 2 or not -out.shape[1] <= expert.index < out.shape[1]:
            raise RecordingError(
                f"expert {expert.name!r} ({expert.module}): the spec's index {expert.index} does not fit the "
                f"module's output of shape {tuple(out.shape)} (index picks dim 1 of [batch, experts, dim]); "
                "fix or drop `index` in the topology spec"
            )
        out = out[:, expert.index]
    if out.requires_grad:
        out = out.detach()
    if rows is None:
        return out.reshape(out.shape[0], -1).to(torch.float32, copy=True)
    kept = out.index_select(0, rows)  # a fresh tensor: usually the only op per expert and batch
    if kept.dim() != 2:
        kept = kept.reshape(rows.shape[0], -1)
    return kept if kept.dtype == torch.float32 else kept.to(torch.float32)


class GateRecorder(HookSession):
    """Context manager that hooks the gates (and optionally experts) named by a `Topology`.

    Each forward's results are collected in a `ForwardCapture`; call `take()` after each forward.

    Examples::

        >>> with GateRecorder(model, topology) as rec, torch.inference_mode():
        ...     model(x)
        ...     capture = rec.take()   # capture.gates["click"]: [batch, n_experts]
    """

    def __init__(self, model: nn.Module, topology: Topology, *, experts: bool = False) -> None:
        super().__init__(model)
        self.topology = topology
        self.record_experts = experts
        # rows of the next forward whose expert outputs are kept (int64 [k], on the model's device);
        # None keeps every row, an empty tensor none (the expert hooks then return at once)
        self.expert_rows: torch.Tensor | None = None
        self._calls: dict[str, int] = {}
        self._capture = ForwardCapture()
        modules = dict(model.named_modules())
        self._gate_modules: dict[str, list[GateSpec]] = {}
        for g in topology.gates:
            if g.module not in modules:
                raise TopologyError(
                    f"gate {g.name!r}: module {g.module!r} is not in the model; regenerate the spec with "
                    "`mmoe-inspect topology`"
                )
            if not g.function_level:
                self._gate_modules.setdefault(g.module, []).append(g)
        taps = gate_taps(list(topology.gates))
        self._pending: dict[str, dict[str, torch.Tensor]] = {}  # top-k gates: values/indices of this forward
        self._batch: int | None = None  # rows of the forward, for gates without a batch axis
        self._needs_batch = any(g.batch_dim < 0 for g in topology.gates)
        self._taps = FunctionTaps(taps, self._tap_value) if taps else None
        self._expert_modules: dict[str, list[ExpertSpec]] = {}
        if experts:
            for e in topology.experts:
                if e.module is None:
                    continue
                if e.module not in modules:
                    raise TopologyError(f"expert {e.name!r}: module {e.module!r} is not in the model")
                self._expert_modules.setdefault(e.module, []).append(e)
        self._modules = modules

    # ------------------------------------------------------------------ hooks
    def _gate_hook(self, path: str):
        specs = self._gate_modules[path]

        def hook(_module: nn.Module, _args, out) -> None:
            call = self._calls.get(path, 0)
            self._calls[path] = call + 1
            if not isinstance(out, torch.Tensor):
                raise RecordingError(f"gate module {path!r} returned {type(out).__name__}, not a tensor")
            for g in specs:
                if g.call is None:
                    if call > 0:
                        raise RecordingError(
                            f"gate module {path!r} ran more than once in one forward; set `call` for gate "
                            f"{g.name!r} in the topology spec"
                        )
                elif g.call != call:
                    continue
                with self._quiet():
                    self._capture.gates[g.name] = gate_probabilities(out, g, self._batch)

        return hook

    def _tap_value(self, key: tuple[str, GateSpec], value: torch.Tensor) -> None:
        """A function-level gate's tensor, handed over by the taps (their mode is off while this runs)."""
        role, gate = key
        if gate.index_op is None:
            self._capture.gates[gate.name] = gate_probabilities(value, gate, self._batch)
            return None
        parts = self._pending.setdefault(gate.name, {})
        parts[role] = value.detach().clone()
        if len(parts) == 2:  # a top-k gate: its k weights scattered over the experts
            dense, _ = top_k_dense(parts["values"], parts["indices"], gate)
            self._capture.gates[gate.name] = gate_probabilities(dense, dense_spec(gate))
            del self._pending[gate.name]
        return None

    def _quiet(self) -> AbstractContextManager[None]:
        """Our own torch ops inside a hook must not count as the model's calls for the function taps."""
        return self._taps.paused() if self._taps is not None else nullcontext()

    def _expert_hook(self, path: str):
        specs = self._expert_modules[path]

        def hook(_module: nn.Module, _args, out) -> None:
            rows = self.expert_rows
            if isinstance(out, torch.Tensor) and (rows is None or rows.numel() > 0):
                with self._quiet():
                    for e in specs:
                        # an expert module called several times per forward (once per task, or fed
                        # per-task inputs on an upper PLE level): its statistics use its FIRST call,
                        # the same rows every forward, so they merge like those of experts called once
                        if e.name not in self._capture.experts:
                            self._capture.experts[e.name] = expert_output(out, e, rows)

        return hook

    def _start_forward(self, _module: nn.Module, args) -> None:
        self._calls.clear()
        if self._taps is not None:
            self._taps.new_forward()
            self._pending.clear()
        if self._needs_batch:
            firsts = [int(t.shape[0]) for t in iter_tensors(args) if t.dim()]
            self._batch = max(firsts, key=firsts.count) if firsts else None

    # -------------------------------------------------------------- lifecycle
    def _register(self) -> None:
        """The forward pre-hook, the function taps, then the gate and expert hooks (`HookSession`:
        `__enter__` also switches to eval mode, `attach()` leaves modes alone, `close()` undoes both)."""
        self.add_handle(self.model.register_forward_pre_hook(self._start_forward))
        if self._taps is not None:
            self.enter_context(self._taps.attach(self.model))
        for path in self._gate_modules:
            self.add_handle(self._modules[path].register_forward_hook(self._gate_hook(path)))
        for path in self._expert_modules:
            self.add_handle(self._modules[path].register_forward_hook(self._expert_hook(path)))

    def take(self) -> ForwardCapture:
        """Return the last forward's capture and start a new one; fails loudly when a gate was not seen."""
        cap, self._capture = self._capture, ForwardCapture()
        if len(cap.gates) < len(self.topology.gates):
            missing = [g.name for g in self.topology.gates if g.name not in cap.gates]
            raise RecordingError(
                f"the forward pass never produced gate(s) {missing}; the topology does not match this model"
            )
        return cap


def checked_forward(model: nn.Module, x: Any, first_row: int, n: int) -> Any:
    """Run the model; a failing forward is reported as a bad model/input pair (one line), not as our bug."""
    try:
        return call_model(model, x)  # a tuple input is the forward's positional arguments
    except RecordingError:
        raise
    except Exception as exc:
        detail = first_line(exc, type(exc).__name__)
        raise RecordingError(
            f"the model's forward failed on rows {first_row}..{first_row + n - 1} "
            f"({type(exc).__name__}: {detail}); check the input mapping (--input/--features/--collate) "
            "or the model code"
        ) from exc
