"""Re-mixing cached expert outputs: every gate-edit variant of a batch from ONE run of the experts.

For the package's own expert models (`OMoE`, `MMoE`, `PLE`, `CGC`, whose forward is known: experts
stacked `[b, E, D]`, a softmax gate `[b, E]` per mixture, `mix` a gate-weighted sum), a variant that
only edits gate outputs changes nothing upstream of the edited gate. So per batch:

1. the intact model runs once, keeping each level's expert outputs `[b, E, D]` and gate outputs `[b, E]`;
2. each variant's mixtures are re-mixed from the cached expert outputs with its edited gates
   (`einsum("kbe,bed->kbd")`: one small matmul per row for all variants at once);
3. downstream modules (next PLE level's experts and gates, the towers) run only on the variants whose
   input differs from the intact one ("dirty" rows); the others reuse the intact output.

A `Stream` is one tensor as seen by every variant: the intact value `[b, D]` plus the variants (by
position 1..V) where it differs, stacked `[n_dirty, b, D]`.

The shortcut is only taken when the model's class and forward are exactly the package's and every
gate of the topology is one of its gate modules; `_engine` still checks the intact predictions
against a plain forward and the variants against one forward per variant on the first rows, and
falls back (with a note) if they differ. Modules are called through `.forward` so the
`GateIntervention` hooks (which the hook-based strategies use) do not fire.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mmoe_inspect.causal.interventions import Edit, Replace, edit_gate_output
from mmoe_inspect.models import CGC, PLE, MMoE, OMoE
from mmoe_inspect.models._layers import Gate
from mmoe_inspect.models.moe import _SharedExperts
from mmoe_inspect.models.ple import ExtractionLevel
from mmoe_inspect.topology.spec import GateSpec, Topology


@dataclass
class Stream:
    """A tensor under every variant: `intact` `[b, ...]`; `values[j]` `[b, ...]` for variant `dirty[j]`."""

    intact: Tensor
    dirty: list[int]
    values: Tensor | None  # [len(dirty), b, ...] or None when no variant differs

    def full(self, k: int) -> Tensor:
        """`[k, b, ...]`: the intact value for every variant, replaced where it differs."""
        out = self.intact.unsqueeze(0).expand(k, *self.intact.shape).clone()
        if self.dirty:
            out[self.dirty] = self.values
        return out


def _run(fn: Callable[[Tensor], Tensor], s: Stream) -> Stream:
    """`fn` applied to the intact value once and to the dirty variants in one call of `n*b` rows."""
    intact = fn(s.intact)
    if not s.dirty:
        return Stream(intact, [], None)
    n, b = s.values.shape[:2]
    out = fn(s.values.reshape(n * b, *s.values.shape[2:]))
    return Stream(intact, list(s.dirty), out.reshape(n, b, *out.shape[1:]))


def _stack(experts: Sequence[nn.Module]) -> Callable[[Tensor], Tensor]:
    return lambda x: torch.stack([e.forward(x) for e in experts], dim=1)


def _cat(streams: Sequence[Stream]) -> Stream:
    """Expert stacks `[b, E_i, D]` of several streams concatenated on the expert axis."""
    dirty = sorted({k for s in streams for k in s.dirty})
    intact = torch.cat([s.intact for s in streams], dim=1)
    if not dirty:
        return Stream(intact, [], None)
    return Stream(intact, dirty, torch.stack([torch.cat([_at(s, k) for s in streams], 1) for k in dirty]))


def _at(s: Stream, k: int) -> Tensor:
    return s.values[s.dirty.index(k)] if k in s.dirty else s.intact


class Remixer:
    """Evaluates the intact model and every variant of one batch by re-mixing cached expert outputs.

    `variants` are the gate edits `{gate name: edit}` of variants 1..V (0 is the intact model).
    """

    def __init__(self, model: nn.Module, topology: Topology, variants: Sequence[Mapping[str, Edit]]) -> None:
        self.model = model
        self.variants = [dict(v) for v in variants]
        self.gates: dict[str, GateSpec] = {g.module: g for g in topology.gates}
        self.captured: dict[str, Tensor] = {}

    # --------------------------------------------------------------------------------- mixing
    def _gate(self, path: str, gate: nn.Module, gate_in: Stream) -> tuple[str, Stream]:
        """A gate's probabilities `[b, E]` under every variant (before edits); the intact ones are captured
        (all gates of a level run before any mixing: a gate swap reads another gate's intact rows)."""
        probs = _run(gate.forward, gate_in)
        spec = self.gates.get(path)
        if spec is not None:
            self.captured[spec.name] = probs.intact
        return path, probs

    def _mix(self, gate: tuple[str, Stream], experts: Stream) -> Stream:
        """One mixture `[b, D]` under every variant: the gate's rows, edited per variant, times the experts."""
        path, probs = gate
        spec = self.gates.get(path)
        edited: dict[int, Tensor] = {}
        for pos, v in enumerate(self.variants, start=1):
            edit = v.get(spec.name) if spec is not None else None
            row = _at(probs, pos)
            if edit is not None:
                row = edit_gate_output(row, spec, edit, self._source(edit))
            if edit is not None or pos in probs.dirty:
                edited[pos] = row
        dirty = sorted(set(edited) | set(experts.dirty))
        intact = torch.bmm(probs.intact.unsqueeze(1), experts.intact).squeeze(1)
        if not dirty:
            return Stream(intact, [], None)
        same = [p for p in dirty if p not in experts.dirty]  # intact experts: one einsum for all of them
        other = [p for p in dirty if p in experts.dirty]
        out: dict[int, Tensor] = {}
        if same:
            g = torch.stack([edited.get(p, probs.intact) for p in same])
            mixed = torch.einsum("kbe,bed->kbd", g, experts.intact)
            out.update(zip(same, mixed.unbind(0), strict=True))
        if other:  # the model's own per-row product, for all of them in one call
            assert experts.values is not None
            g = torch.stack([edited.get(p, _at(probs, p)) for p in other])
            x = (
                experts.values
                if other == experts.dirty
                else experts.values[[experts.dirty.index(p) for p in other]]
            )
            n, b, e, d = x.shape
            mixed = torch.bmm(g.reshape(n * b, 1, e), x.reshape(n * b, e, d)).reshape(n, b, d)
            out.update(zip(other, mixed.unbind(0), strict=True))
        return Stream(intact, dirty, torch.stack([out[p] for p in dirty]))

    def _source(self, edit: Edit) -> Tensor | None:
        if isinstance(edit, Replace) and edit.source is not None:
            return self.captured[edit.source]  # KeyError: the engine falls back to the hooks
        return None

    # -------------------------------------------------------------------------------- models
    def _shared(self, model: _SharedExperts, h: Tensor) -> list[Stream]:
        x = Stream(h, [], None)
        stacked = _run(_stack(model.experts), x)
        if isinstance(model, OMoE):
            return [self._mix(self._gate("gate", model.gate, x), stacked)] * len(model.tasks)
        probs = [self._gate(f"gates.{i}", g, x) for i, g in enumerate(model.gates)]
        return [self._mix(p, stacked) for p in probs]

    def _level(
        self, lv: int, level: ExtractionLevel, task_in: list[Stream], shared_in: Stream
    ) -> tuple[list[Stream], Stream | None]:
        shared = _run(_stack(level.shared_experts), shared_in)
        specific = [_run(_stack(ex), x) for ex, x in zip(level.specific, task_in, strict=True)]
        probs = [
            self._gate(f"levels.{lv}.gates.{i}", gate, x)
            for i, (gate, x) in enumerate(zip(level.gates, task_in, strict=True))
        ]
        shared_probs = None
        if level.gate_shared is not None:
            shared_probs = self._gate(f"levels.{lv}.gate_shared", level.gate_shared, shared_in)
        task_out = [self._mix(p, _cat([own, shared])) for p, own in zip(probs, specific, strict=True)]
        if shared_probs is None:
            return task_out, None
        return task_out, self._mix(shared_probs, _cat([*specific, shared]))

    def run(self, x: Any) -> dict[str, Tensor]:
        """The model's output dict with every task's predictions for all `1 + V` variants stacked:
        `{task: [(1 + V) * b]}` (blocks in variant order, intact first)."""
        self.captured = {}
        model = self.model
        h = model.inputs(x)
        if isinstance(model, PLE):
            task_x = [Stream(h, [], None)] * len(model.tasks)
            shared_x: Stream | None = Stream(h, [], None)
            for lv, level in enumerate(model.levels):
                assert shared_x is not None  # only the last level has no shared gate
                task_x, shared_x = self._level(lv, level, task_x, shared_x)
        else:
            task_x = self._shared(model, h)
        k = 1 + len(self.variants)
        return {
            t.name: _run(tower.forward, s).full(k).reshape(-1)
            for t, tower, s in zip(model.tasks, model.towers, task_x, strict=True)
        }


_FORWARDS = {MMoE: MMoE.forward, OMoE: OMoE.forward, PLE: PLE.forward, CGC: CGC.forward}


def remix_applies(model: nn.Module, topology: Topology) -> str | None:
    """None when `Remixer` can evaluate this model's variants; otherwise why not (one line)."""
    cls = type(model)
    if cls not in _FORWARDS or cls.forward is not _FORWARDS[cls]:
        return "not one of the package's OMoE/MMoE/PLE/CGC classes"
    modules = dict(model.named_modules())
    for name, mod in modules.items():
        if isinstance(mod, ExtractionLevel) and type(mod).forward is not ExtractionLevel.forward:
            return f"level {name!r} has its own forward"
    for g in topology.gates:
        mod = modules.get(g.module)
        if (
            g.op is not None
            or g.call is not None
            or g.output != "probs"
            or g.dim != 1
            or g.batch_dim != 0
            or type(mod) is not Gate
            or len(g.experts) != mod.n_experts
        ):
            return f"gate {g.name!r} is not one of the model's own softmax gates"
    return None
