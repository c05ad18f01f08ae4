"""What is attributed (a gate's weights, an expert's output norm, a task's prediction) and the hooks that
capture it with gradients, plus the hooks that put interpolated embeddings in place of the real ones.

`AttributionSession` is the only place hooks are registered: a `mmoe_inspect.recording.hooks.HookSession`,
it puts the model in eval mode, and on exit (also when a forward raises) removes every handle and
restores every module's mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mmoe_inspect.attribution._inputs import AttributionError, InputLayer
from mmoe_inspect.data.outputs import task_entry, task_values
from mmoe_inspect.recording.hooks import HookSession
from mmoe_inspect.recording.recorder import dense_spec, gate_part, two_way_pair
from mmoe_inspect.recording.taps import FunctionTaps, gate_taps, top_k_dense
from mmoe_inspect.topology._trace import iter_tensors
from mmoe_inspect.topology.spec import ExpertSpec, GateSpec, TaskSpec, Topology

TargetKind = Literal["gate", "expert", "task"]
TARGET_GROUPS: dict[str, TargetKind] = {"gates": "gate", "experts": "expert", "tasks": "task"}
EXPERT_OUTPUT = "norm"
"""Output name of an expert target: the L2 norm of the expert's output vector, per row."""


@dataclass(frozen=True)
class Target:
    """One thing to explain: `outputs` are its scalar outputs per row (a gate's experts, else one)."""

    kind: TargetKind
    name: str
    outputs: tuple[str, ...]
    gate: GateSpec | None = None
    expert: ExpertSpec | None = None
    task: TaskSpec | None = None
    task_index: int = 0

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def module(self) -> str | None:
        if self.gate is not None:
            return self.gate.module
        if self.expert is not None:
            return self.expert.module
        return None


def list_targets(
    model: nn.Module, topology: Topology, groups: Sequence[str]
) -> tuple[list[Target], list[str]]:
    """Targets of `topology` in the order of `groups` ("gates", "experts", "tasks"), plus notes on what is left out."""
    modules = dict(model.named_modules())
    out: list[Target] = []
    notes: list[str] = []
    for group in groups:
        if group == "gates":
            if not topology.gates:
                notes.append(f"{topology.why_no_gates}: no gate attributions")
            for g in topology.gates:
                if g.module not in modules:
                    raise AttributionError(f"gate {g.name!r}: module {g.module!r} is not in the model")
                out.append(Target("gate", g.name, g.experts, gate=g))
        elif group == "experts":
            inline = [e.name for e in topology.experts if e.module is None]
            if inline:
                notes.append(
                    f"expert(s) {inline} are computed inline (no module to hook): no expert attributions"
                )
            for e in topology.experts:
                if e.module is None:
                    continue
                if e.module not in modules:
                    raise AttributionError(f"expert {e.name!r}: module {e.module!r} is not in the model")
                out.append(Target("expert", e.name, (EXPERT_OUTPUT,), expert=e))
        else:
            for i, t in enumerate(topology.tasks):
                out.append(Target("task", t.name, (t.name,), task=t, task_index=i))
    return out, notes


def gate_weights(out: Tensor, gate: GateSpec, rows: int) -> Tensor:
    """A gate module's output → `[rows, E]` probabilities that keep the graph (softmax of logit gates); a
    fused gate's own slice of it."""
    out, gate = gate_part(out, gate)
    out, gate = two_way_pair(out, gate)  # a two-way gate's w → [1 - w, w], in the graph
    if out.dim() < 2 or out.shape[gate.dim] != gate.n_experts:
        raise AttributionError(
            f"gate {gate.name!r} ({gate.module}) produced shape {tuple(out.shape)}, expected {gate.n_experts} "
            f"experts on dim {gate.dim}; fix the topology spec"
        )
    probs = torch.softmax(out.float(), dim=gate.dim) if gate.output == "logits" else out.clone()
    if gate.batch_dim < 0:  # one weight vector for every row
        probs = probs.reshape(1, gate.n_experts).expand(rows, gate.n_experts)
    elif gate.batch_dim != 0:
        probs = probs.movedim((gate.batch_dim, gate.dim), (0, -1)).reshape(-1, gate.n_experts)
    else:
        probs = probs.movedim(gate.dim, -1).reshape(-1, gate.n_experts)
    if probs.shape[0] != rows:
        raise AttributionError(f"gate {gate.name!r} produced {probs.shape[0]} rows for a batch of {rows}")
    return probs


def expert_norm(out: Tensor, expert: ExpertSpec) -> Tensor:
    """An expert module's output (slice `index` of `[batch, E, d]`) → L2 norm per row `[batch, 1]`."""
    if expert.index is not None:
        out = out[:, expert.index]
    return torch.linalg.vector_norm(out.reshape(out.shape[0], -1).float(), dim=1, keepdim=True)


def task_output(out: Any, task: TaskSpec, index: int) -> Tensor:
    """The task's prediction `[batch, 1]` from the model output (dict, `[batch, T]` tensor, list/tuple, or
    nested: `data.outputs.task_entry`)."""
    v = task_entry(out, task.output, task.name, index, task.rows_second)
    return task_values(v, task.column, task.rows_second).reshape(-1, 1).float()


class AttributionSession(HookSession):
    """Hooks for one attribution run: embedding replacement and capture of the active target.

    `run(x, target, replacements)` runs the model on `x` with the embedding calls of
    `layer.embeddings` replaced by `replacements` (or untouched when None) and returns the
    target's outputs `[rows, K]`, graph attached when grad mode is on.

    Examples::

        >>> with AttributionSession(model, layer, targets) as session:
        ...     y = session.run(x, targets[0], None)     # gate "click": [batch, n_experts]
    """

    def __init__(self, model: nn.Module, layer: InputLayer, targets: Sequence[Target]) -> None:
        super().__init__(model)
        self.layer = layer
        self._slots = {(s.module, s.call): i for i, s in enumerate(layer.embeddings)}
        self._modules = dict(model.named_modules())
        module_targets = [t for t in targets if not (t.gate is not None and t.gate.function_level)]
        self._hooked = sorted(
            {t.module for t in module_targets if t.module is not None} | {s.module for s in layer.embeddings}
        )
        taps = gate_taps([t.gate for t in targets if t.gate is not None and t.gate.function_level])
        self._taps = FunctionTaps(taps, self._tap) if taps else None
        self._pending: dict[str, Tensor] = {}
        self._rows = 0
        self._counts: dict[str, int] = {}
        self._by_module: dict[str, list[Target]] = {}  # active targets by module path
        self._by_gate: dict[str, Target] = {}  # active gate targets by gate name (function taps)
        self._replace: Sequence[Tensor] | None = None
        self._captured: dict[str, Tensor] = {}  # target key -> outputs [rows, K]

    def _register(self) -> None:
        """The forward pre-hook, the target and embedding hooks, then the function taps."""
        self.add_handle(self.model.register_forward_pre_hook(self._reset))
        for path in self._hooked:
            self.add_handle(self._modules[path].register_forward_hook(self._hook(path)))
        if self._taps is not None:
            self.enter_context(self._taps.attach(self.model))

    def _reset(self, _module: nn.Module, args: Any) -> None:
        self._counts.clear()
        self._pending.clear()
        self._rows = next((int(t.shape[0]) for t in iter_tensors(args) if t.dim()), 0)
        if self._taps is not None:
            self._taps.new_forward()

    def _tap(self, key: tuple[str, GateSpec], value: Tensor) -> None:
        """A function-level gate's tensor (graph attached): captured when it is the active target."""
        role, g = key
        target = self._by_gate.get(g.name)
        if target is None:
            return None
        if g.index_op is None:
            self._captured[target.key] = gate_weights(value, g, self._rows)
            return None
        if role == "indices":
            self._pending[g.name] = value
            return None
        dense, _ = top_k_dense(value, self._pending.pop(g.name), g)
        self._captured[target.key] = gate_weights(dense, dense_spec(g), self._rows)
        return None

    def _hook(self, path: str):
        def hook(_module: nn.Module, _args: Any, out: Any) -> Any:
            call = self._counts.get(path, 0)
            self._counts[path] = call + 1
            for target in self._by_module.get(path, ()):
                self._capture(target, call, out)
            if self._replace is not None:
                slot = self._slots.get((path, call))
                if slot is not None:
                    new = self._replace[slot]
                    if not isinstance(out, Tensor) or new.shape != out.shape:
                        raise AttributionError(
                            f"embedding {path} returned {tuple(getattr(out, 'shape', ()))} but the probe saw "
                            f"{tuple(new.shape)}; the model's embedding calls differ between forwards"
                        )
                    return new.to(out.dtype).clone()
            return None

        return hook

    def _capture(self, target: Target, call: int, out: Any) -> None:
        if not isinstance(out, Tensor):
            raise AttributionError(
                f"{target.kind} {target.name!r}: module {target.module!r} returned no tensor"
            )
        if target.gate is not None:
            g = target.gate
            if g.call is None and call > 0:
                raise AttributionError(
                    f"gate module {g.module!r} ran more than once in one forward; set `call` for gate {g.name!r}"
                )
            if g.call is None or g.call == call:
                self._captured[target.key] = gate_weights(out, g, out.shape[0])
        elif target.expert is not None and call == 0:
            self._captured[target.key] = expert_norm(out, target.expert)

    def run(self, x: Any, target: Target, replacements: Sequence[Tensor] | None) -> Tensor:
        """Target outputs `[rows, K]` for model input `x`."""
        return self.run_many(x, [target], replacements)[0]

    def run_many(
        self, x: Any, targets: Sequence[Target], replacements: Sequence[Tensor] | None
    ) -> list[Tensor]:
        """Each target's outputs `[rows, K]` from ONE forward of `x` (graph attached when grad mode is on)."""
        self._replace, self._captured = replacements, {}
        for t in targets:
            if t.module is not None:
                self._by_module.setdefault(t.module, []).append(t)
            if t.gate is not None:
                self._by_gate[t.gate.name] = t
        try:
            out = self.model(x)
            got = []
            for target in targets:
                if target.task is not None:
                    got.append(task_output(out, target.task, target.task_index))
                elif target.key not in self._captured:
                    raise AttributionError(
                        f"{target.kind} {target.name!r}: module {target.module!r} never ran"
                    )
                else:
                    got.append(self._captured[target.key])
            return got
        finally:
            self._by_module, self._by_gate, self._replace, self._captured = {}, {}, None, {}
