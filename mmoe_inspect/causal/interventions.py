"""Interventions on gate OUTPUTS: forward hooks that return an edited gate tensor.

Editing the gate's output (not the experts) works for any model whose gates the topology names,
including models whose experts are not separate modules (one einsum over a weight bank). Edits:

* `Ablate(keep, mode)`: remove experts. On a probability gate, `"renormalize"` drops their weight
  and renormalizes over the rest; `"zero"` sets it to 0 and leaves the others unchanged (the
  mixture loses that share). On a logit gate (softmaxed later by the model) the hook returns the
  logits with removed experts at a huge negative value, so the model's softmax renormalizes over
  the rest: `"zero"` cannot be expressed there and behaves as `"renormalize"` (callers note it).
* `Replace(probs=...)`: a fixed distribution `[E]` for every row (uniform, the gate's mean).
  `Replace(source=gate)`: row by row the intact output of another gate over the same experts; the
  driver supplies those rows (`GateIntervention.sources`) from an intact forward of the same batch.

`GateIntervention` can evaluate K variants in ONE forward: the driver stacks the input batch K times
(`repeat_rows`), and each gate hook edits row block k with variant k's edit (block 0 is usually the
intact model, and its gate probabilities are captured). With `dedupe=True` (the expert cache) an
expert or gate module whose input blocks are all bitwise identical (modules before any edited gate,
e.g. every MMoE expert and gate) runs on one block only: an expert's output is tiled K times, a
gate's output is edited per block. The check is exact (`torch.equal`), so results do not change.

The context manager (a `mmoe_inspect.recording.hooks.HookSession`) puts the model in eval mode, and
on exit, also when forward raises, removes every hook handle and restores every module's `training`
flag; parameters are never touched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import torch
from torch import Tensor, nn

from mmoe_inspect.errors import MmoeInspectError
from mmoe_inspect.recording.hooks import HookSession
from mmoe_inspect.recording.recorder import (
    RecordingError,
    dense_spec,
    gate_part,
    gate_probabilities,
    two_way_pair,
)
from mmoe_inspect.recording.taps import FunctionTaps, gate_taps, top_k_dense
from mmoe_inspect.topology._attention import ATTENTION_OPS
from mmoe_inspect.topology.spec import GateSpec, Topology, TopologyError

__all__ = [
    "Ablate",
    "AblationMode",
    "Edit",
    "GateIntervention",
    "InterventionError",
    "Replace",
    "Variant",
    "edit_gate_output",
    "map_tensors",
    "repeat_rows",
]

AblationMode = Literal["renormalize", "zero"]


class InterventionError(MmoeInspectError, RuntimeError):
    """An intervention cannot be applied to this model as asked (shape, stacking, missing source)."""

    bad_input = False  # the CLI catches it where it runs causal analyses and skips them, saying why


@dataclass(frozen=True)
class Ablate:
    """Remove the experts whose `keep` entry is False from a gate `[E]`; see the module docstring."""

    keep: tuple[bool, ...]
    mode: AblationMode = "renormalize"


@dataclass(frozen=True)
class Replace:
    """Replace a gate's distribution by `probs` `[E]` (every row) or by gate `source`'s intact rows."""

    probs: tuple[float, ...] | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        if (self.probs is None) == (self.source is None):
            raise ValueError("Replace needs exactly one of probs= or source=")


Edit = Union[Ablate, Replace]
Variant = Mapping[str, Edit]
"""One intervened model: `{gate name: edit}`; `{}` is the intact model."""


def _negative(dtype: torch.dtype) -> float:
    """A logit that a softmax turns into exactly 0 next to ordinary logits, finite in `dtype`."""
    return torch.finfo(dtype).min / 8


def edit_gate_output(out: Tensor, gate: GateSpec, edit: Edit, source: Tensor | None = None) -> Tensor:
    """A gate module's output `out` (any layout with experts on `gate.dim`) edited by `edit`, same shape and dtype.

    `source` `[rows, E]` holds the replacement probabilities of a `Replace(source=...)` edit, rows
    in the order `gate_probabilities` gives them.
    """
    x = out.movedim(gate.dim, -1)
    shape = x.shape
    if shape[-1] != gate.n_experts:
        raise InterventionError(
            f"gate {gate.name!r} produced shape {tuple(out.shape)}, expected {gate.n_experts} experts on dim {gate.dim}"
        )
    work = torch.float64 if out.dtype == torch.float64 else torch.float32
    rows = x.reshape(-1, gate.n_experts).to(work)
    if isinstance(edit, Ablate):
        keep = torch.tensor(edit.keep, dtype=torch.bool, device=out.device)
        if gate.output == "logits":
            new = rows.masked_fill(~keep, _negative(work))
        else:
            kept = rows * keep
            if edit.mode == "zero":
                new = kept
            else:  # rescale to the row's original mass: bitwise unchanged when the removed weight is 0;
                # rows whose remaining weight is 0 stay all-zero (their mixture is 0)
                scale = rows.sum(-1, keepdim=True) / kept.sum(-1, keepdim=True).clamp_min(
                    torch.finfo(work).tiny
                )
                new = kept * scale
    else:
        if edit.probs is not None:
            q = torch.tensor(edit.probs, dtype=work, device=out.device).expand_as(rows)
        else:
            if source is None:
                raise InterventionError(
                    f"gate {gate.name!r}: no intact rows of gate {edit.source!r} to swap in"
                )
            if source.shape != rows.shape:
                raise InterventionError(
                    f"gate {gate.name!r} has rows {tuple(rows.shape)} but gate {edit.source!r} gave "
                    f"{tuple(source.shape)}; gates can only be swapped when their outputs have the same shape"
                )
            q = source.to(device=out.device, dtype=work)
        if gate.output == "logits":
            new = torch.where(q > 0, q.clamp_min(torch.finfo(work).tiny).log(), _negative(work))
        else:
            new = q
    if gate.output == "logits" and out.dtype != work:
        new = new.clamp_min(_negative(out.dtype))
    return new.to(out.dtype).reshape(shape).movedim(-1, gate.dim)


_ATTENTION_REFUSED = (
    "gate {name!r} is the attention weights inside one {op} call (a query over the experts as keys/values): they "
    "are read, but an edit of them cannot reach that call's output; causal edits of this gate are not applied"
)
_TWO_WAY_REFUSED = (
    "gate {name!r} blends two experts by one weight w per row ((1 - w) * x0 + w * x1, read as [1 - w, w]): an "
    "edit whose rows do not sum to 1 (a 'zero' ablation, removing both experts, a fixed row of another total) "
    "cannot be applied through w; use renormalizing ablations or replacements that sum to 1"
)


def two_way_weight(pair: Tensor, gate: GateSpec, w: Tensor) -> Tensor:
    """An edited two-way pair `[1 - w, w]` (on `gate.dim`) → the weight the model reads (its second column),
    shaped and typed like the captured weight `w`.

    The model blends `(1 - w) * x0 + w * x1`, so only rows that still sum to 1 can be written back; an edit that
    removes mass cannot be expressed through `w` and is refused rather than approximated. A renormalizing
    ablation of the one expert a row uses (`w` exactly 0 or 1) leaves that row all-zero: the other expert then
    takes the whole row (`1 - w`), the limit of the renormalized rows next to it.
    """
    dim = gate.dim + pair.dim() if gate.dim < 0 else gate.dim
    work = torch.float64 if pair.dtype == torch.float64 else torch.float32
    total = pair.to(work).sum(dim, keepdim=True)
    new = pair.narrow(dim, 1, 1).to(work)
    if total.numel():
        empty = total == 0
        if bool(empty.any()):
            old = w.to(work).reshape(new.shape)  # (a `[batch]` w was unsqueezed on `dim`)
            if not bool((old[empty] * (1 - old[empty]) == 0).all()):
                raise InterventionError(_TWO_WAY_REFUSED.format(name=gate.name))
            new = torch.where(empty, 1 - old, new)
            total = torch.where(empty, torch.ones_like(total), total)
        if float((total - 1).abs().max()) > 1e-4:
            raise InterventionError(_TWO_WAY_REFUSED.format(name=gate.name))
    return new.to(w.dtype).reshape(w.shape)


def map_tensors(x: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """Apply `fn` to every tensor in a (nested) tensor / dict / list / tuple model input."""
    if isinstance(x, Tensor):
        return fn(x)
    if isinstance(x, Mapping):
        return {k: map_tensors(v, fn) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(map_tensors(v, fn) for v in x)
    return x


def repeat_rows(x: Any, k: int) -> Any:
    """Model input with every tensor tiled `k` times along dim 0: `[b, ...]` → `[k*b, ...]` (blocks in order)."""
    return map_tensors(x, lambda t: t.repeat(k, *([1] * (t.dim() - 1))) if t.dim() else t)


class GateIntervention(HookSession):
    """Hooks on every gate named by `topology` that apply the current `variants` to the gate outputs.

    Set `plan(variants, block_rows, capture=...)` before each forward: one variant per row block of
    `block_rows` rows (a plain forward is one block). With `capture`, the intact probabilities
    `[rows, E]` of block 0 are kept in `captured` (block 0 must then be the intact variant `{}`).
    `sources` holds, per gate name, the intact rows `Replace(source=...)` edits swap in.

    Examples::

        >>> with GateIntervention(model, topo) as iv, torch.inference_mode():
        ...     iv.plan([{}, {"click": Ablate((False, True, True, True))}], block_rows=b, capture=True)
        ...     out = model(repeat_rows(x, 2))     # rows [0, b): intact, [b, 2b): expert 0 removed from "click"
    """

    def __init__(self, model: nn.Module, topology: Topology, *, dedupe: bool = False) -> None:
        super().__init__(model)
        self.topology = topology
        modules = dict(model.named_modules())
        self._modules = modules
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
        self._indices: dict[str, Tensor] = {}  # top-k gates: this forward's expert indices
        self._taps = FunctionTaps(taps, self._tap_edit) if taps else None
        self.dedupe = dedupe
        self._expert_modules: list[str] = []
        if dedupe:
            paths = {e.module for e in topology.experts if e.module is not None}
            holders = {g.module for g in topology.gates if g.module}
            self._expert_modules = [
                p
                for p in sorted(paths)
                if p in modules and not any(q == p or q.startswith(f"{p}.") for q in holders)
            ]  # never shrink a module that holds a gate: the gate's hook must see every block
        self.variants: list[Variant] = [{}]
        self.block_rows: int | None = None
        self.capture = False
        self.captured: dict[str, Tensor] = {}
        self.sources: dict[str, Tensor] = {}
        self.deduped_calls = 0
        self._calls: dict[str, int] = {}
        self._shrunk: dict[str, int] = {}
        self._equal: dict[tuple[Any, ...], bool] = {}

    # ------------------------------------------------------------------------------- planning
    def plan(self, variants: Sequence[Variant], block_rows: int, *, capture: bool = False) -> None:
        """Variants for the next forward (its input must have `len(variants) * block_rows` rows)."""
        if not variants:
            raise ValueError("plan() needs at least one variant")
        if capture and dict(variants[0]):
            raise ValueError("capture needs the intact variant {} as block 0")
        self.variants = list(variants)
        self.block_rows = block_rows
        self.capture = capture
        self.captured = {}

    # ---------------------------------------------------------------------------------- hooks
    def _start_forward(self, _module: nn.Module, _args: Any) -> None:
        self._calls.clear()
        self._shrunk.clear()
        self._equal.clear()
        if self._taps is not None:
            self._taps.new_forward()
            self._indices.clear()

    def _blocks(self, out: Tensor, what: str, dim: int = 0) -> list[Tensor]:
        k = len(self.variants)
        if k == 1:
            return [out]
        b = self.block_rows
        if dim < 0 or b is None or out.shape[dim] != k * b:
            raise InterventionError(
                f"{what} produced {tuple(out.shape)} in a forward of {k} stacked blocks of {b} rows; its rows "
                "are not on one batch axis, so use strategy='naive'"
            )
        return list(out.split(b, dim=dim))

    def _edit(self, spec: GateSpec, out: Tensor, shrunk: bool) -> Tensor | None:
        """`out` of gate `spec` with each row block edited by its variant (None: leave it as it is); a fused gate
        edits its own slice of `out` (the other gates' slices are left as they are)."""
        if spec.part_dim is not None:
            whole = self._tile(out, max(spec.batch_dim, 0)) if shrunk else out
            piece, sub = gate_part(whole, spec)
            edited = self._edit(sub, piece, shrunk=False)
            if edited is None:
                return whole if shrunk else None
            new = whole.clone()
            if spec.two_way:  # its w: slice `part` kept as size 1 (`gate_part`)
                new.narrow(spec.part_dim, spec.part, 1).copy_(edited)
            else:
                new.select(spec.part_dim, spec.part).copy_(edited)
            return new
        if spec.two_way:  # edited as the pair [1 - w, w]; the model reads back w
            if any(
                isinstance(v.get(spec.name), Ablate) and v[spec.name].mode == "zero" for v in self.variants
            ):
                raise InterventionError(_TWO_WAY_REFUSED.format(name=spec.name))
            whole = self._tile(out, max(spec.batch_dim, 0)) if shrunk else out
            # edited in float32 at least: a half-precision pair [1 - w, w] (or a replacement row) misses 1
            # by more than the write-back's tolerance; w is derived, then cast back to the model's dtype
            work = torch.float64 if whole.dtype == torch.float64 else torch.float32
            pair, sub = two_way_pair(whole.to(work), spec)
            edited = self._edit(sub, pair, shrunk=False)
            if edited is None:
                return whole if shrunk else None
            return two_way_weight(edited, spec, whole)
        edits = [v.get(spec.name) for v in self.variants]
        dim = spec.batch_dim
        if not self.capture and all(e is None for e in edits):
            return self._tile(out, max(dim, 0)) if shrunk else None
        blocks = [out] * len(self.variants) if shrunk else self._blocks(out, f"gate {spec.name!r}", dim)
        if self.capture:
            self.captured[spec.name] = gate_probabilities(blocks[0], spec, self.block_rows)
        if all(e is None for e in edits):
            return self._tile(out, max(dim, 0)) if shrunk else None
        pieces = [
            blk if e is None else edit_gate_output(blk, spec, e, self._source(e))
            for blk, e in zip(blocks, edits, strict=True)
        ]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=max(dim, 0))

    def _tap_edit(self, key: tuple[str, GateSpec], value: Tensor) -> Tensor | None:
        """A function-level gate's tensor, handed over by the taps: edited like a gate module's output.

        A top-k gate is edited on its dense `[batch, E]` form, and its k weights are read back from it.
        """
        role, spec = key
        if spec.op in ATTENTION_OPS and any(v.get(spec.name) is not None for v in self.variants):
            raise InterventionError(_ATTENTION_REFUSED.format(name=spec.name, op=spec.op))
        if spec.index_op is None:
            return self._edit(spec, value, shrunk=False)
        if role == "indices":
            self._indices[spec.name] = value.detach().clone()
            return None
        idx = self._indices.pop(spec.name, None)
        if idx is None:
            raise InterventionError(
                f"top-k gate {spec.name!r}: its weights came before its indices; write the spec with the "
                "index call before the weights"
            )
        dense, index = top_k_dense(value, idx, spec)
        edited = self._edit(dense_spec(spec), dense, shrunk=False)
        if edited is None:
            return None
        b = spec.batch_dim if spec.batch_dim >= 0 else 0
        moved = value.movedim((b, spec.dim), (0, -1))
        return edited.gather(1, index).reshape(moved.shape).movedim((0, -1), (b, spec.dim)).to(value.dtype)

    def _gate_hook(self, path: str) -> Callable[..., Tensor | None]:
        specs = self._gate_modules[path]

        def hook(_module: nn.Module, _args: Any, out: Any) -> Tensor | None:
            call = self._calls.get(path, 0)
            self._calls[path] = call + 1
            shrunk = self._take_shrunk(path)  # the gate ran on one block (its input blocks were identical)
            matching = []  # one gate, or the fused gates that are parts of this output
            for g in specs:
                if g.call is None:
                    if call > 0:
                        raise RecordingError(
                            f"gate module {path!r} ran more than once in one forward; set `call` for gate "
                            f"{g.name!r} in the topology spec"
                        )
                    matching.append(g)
                elif g.call == call:
                    matching.append(g)
            if not isinstance(out, Tensor):
                raise RecordingError(f"gate module {path!r} returned {type(out).__name__}, not a tensor")
            if len(matching) > 1 and any(g.part_dim is None for g in matching):
                matching = matching[-1:]
            current: Tensor | None = None
            for spec in matching:  # each fused part edits its own slice of the output the one before left
                new = self._edit(spec, out if current is None else current, shrunk and current is None)
                if new is not None:
                    current = new
            if current is not None:
                return current
            return self._tile(out) if shrunk else None

        return hook

    def _source(self, edit: Edit) -> Tensor | None:
        if isinstance(edit, Replace) and edit.source is not None:
            if edit.source not in self.sources:
                raise InterventionError(
                    f"no intact rows of gate {edit.source!r} were supplied for a gate swap"
                )
            return self.sources[edit.source]
        return None

    def _same_blocks(self, x: Tensor) -> bool:
        """Whether the row blocks of `x` are bitwise equal (cached per tensor version within one forward)."""
        k = len(self.variants)
        try:
            key: tuple[Any, ...] | None = (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, x._version)
        except RuntimeError:  # an inference tensor has no version counter: no caching
            key = None
        if key is not None and key in self._equal:
            return self._equal[key]
        flat = x.reshape(k, -1)
        same = bool(torch.equal(flat[1:], flat[:1].expand(k - 1, -1)))
        if key is not None:
            self._equal[key] = same
        return same

    def _dedupe_pre(self, path: str) -> Callable[..., tuple[Any, ...] | None]:
        def pre(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            k, b = len(self.variants), self.block_rows
            if k == 1 or b is None or len(args) != 1 or not isinstance(args[0], Tensor):
                return None
            x = args[0]
            if x.dim() == 0 or x.shape[0] != k * b or not self._same_blocks(x):
                return None  # the blocks differ (a module behind a gate, e.g. PLE level 1): run them all
            self._shrunk[path] = self._shrunk.get(path, 0) + 1
            self.deduped_calls += 1
            return (x[:b],)

        return pre

    def _take_shrunk(self, path: str) -> bool:
        if not self._shrunk.get(path):
            return False
        self._shrunk[path] -= 1
        return True

    def _tile(self, out: Tensor, dim: int = 0) -> Tensor:
        """`out`, computed on one block, repeated for every variant's block along its batch axis `dim`."""
        reps = [1] * out.dim()
        reps[dim] = len(self.variants)
        return out.repeat(*reps)

    def _dedupe_post(self, path: str) -> Callable[..., Tensor | None]:
        def post(_module: nn.Module, _args: Any, out: Any) -> Tensor | None:
            if not self._take_shrunk(path):
                return None
            if not isinstance(out, Tensor):
                raise InterventionError(
                    f"expert module {path!r} returned {type(out).__name__}; the expert cache needs tensors, "
                    "so use strategy='batched'"
                )
            return self._tile(out)

        return post

    # ------------------------------------------------------------------------------ lifecycle
    def _register(self) -> None:
        """The forward pre-hook, the expert cache's hooks, the gate hooks, then the function taps."""
        self.add_handle(self.model.register_forward_pre_hook(self._start_forward))
        for path in self._expert_modules:  # before the gate hooks: tiling runs first
            module = self._modules[path]
            self.add_handle(module.register_forward_pre_hook(self._dedupe_pre(path)))
            self.add_handle(module.register_forward_hook(self._dedupe_post(path)))
        for path in self._gate_modules:
            module = self._modules[path]
            if self.dedupe:  # a gate on identical blocks runs once; its hook then edits each block
                self.add_handle(module.register_forward_pre_hook(self._dedupe_pre(path)))
            self.add_handle(module.register_forward_hook(self._gate_hook(path)))
        if self._taps is not None:
            self.enter_context(self._taps.attach(self.model))

    def _closing(self) -> None:
        self.captured, self.sources = {}, {}
