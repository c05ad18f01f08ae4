"""Re-mixing cached expert outputs: every gate-edit variant of a batch from ONE run of the experts.

For the package's own expert models (`OMoE`, `MMoE`, `PLE`, `CGC`, whose forward is known: experts
stacked `[b, E, D]`, a softmax gate `[b, E]` per mixture, `mix` a gate-weighted sum), a variant that
only edits gate outputs changes nothing upstream of the edited gate. So per batch:

1. the intact model runs once, keeping each level's expert outputs `[b, E, D]` and gate outputs `[b, E]`
   (experts whose mixtures no gate reads, e.g. an MMoE's, run their first layers as one fused linear);
2. a mixture's edited gate rows, for every variant that changes it, are built in one tensor `[b, n, E]`
   (ablations, fixed and swapped gates: one tensor op per kind of edit, not one per variant);
3. the variants whose experts are intact are re-mixed in one batched product with the cached expert
   outputs (`bmm` over rows: `[n, E] x [E, D]` per row); variants whose experts changed (a PLE's later
   levels) take one `[1, E] x [E, D]` product per row on their own expert outputs;
4. a task tower's first `nn.Linear` (weight `W`, bias `c`) is folded into the re-mixing: under any gate
   `g'` its pre-activation is `sum_e g'_e (W X_e) + c`, so `Y_e = W X_e` `[b, E, H1]` is computed once
   per batch and the intact row and every variant with intact experts are ONE `baddbmm`
   `[b, 1 + n, E] x [b, E, H1]` (the first layer never runs per variant, and `H1` is usually `< D`);
   for a gate of many experts (`DIFFERENCE_MIN_EXPERTS`), the ablations that remove one expert `j` are
   instead differences from the intact product, `z - g_j Y_j` and its renormalized form, O(H1) per row
   and variant instead of O(E H1), with the exact product at each row's largest gate, where the
   difference cancels (`Remixer._ablated`);
5. downstream modules (next PLE level's experts and gates, the rest of the towers) run only on the
   variants whose input differs from the intact one ("dirty" rows); the others reuse the intact output.

Folding and fusing change float rounding only (the intact mixtures that a later gate reads are the
model's own `mix`, so captured gate probabilities are exactly the plain forward's). Large temporaries
live in work buffers kept from batch to batch (a fresh multi-MB tensor per batch costs page faults).

A `Stream` is one tensor as seen by every variant: the intact value `[b, D]` plus the variants (by
position 1..V) where it differs, stacked `[n_dirty, b, D]` in the order of `dirty`.

The shortcut is only taken when the model's class and forward are exactly the package's and every
gate of the topology is one of its gate modules; `_engine` still checks the intact predictions
against a plain forward and the variants against one forward per variant on the first rows, and
falls back (with a note) if they differ (folding the tower's first layer changes only float rounding).
Modules are called through `.forward` so the `GateIntervention` hooks (which the hook-based strategies
use) do not fire.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mmoe_inspect.causal.interventions import Ablate, Edit, InterventionError, Replace, edit_gate_output
from mmoe_inspect.models import CGC, PLE, MMoE, OMoE
from mmoe_inspect.models._layers import MLP, Gate, Tower
from mmoe_inspect.models.moe import _SharedExperts
from mmoe_inspect.models.ple import ExtractionLevel
from mmoe_inspect.topology.spec import GateSpec, Topology

GateOut = tuple[str, "Stream"]
"""A gate's module path and its probabilities `[b, E]` under every variant (before edits)."""


@dataclass
class Stream:
    """A tensor under every variant: `intact` `[b, ...]`; `values[j]` `[b, ...]` for variant `dirty[j]`."""

    intact: Tensor
    dirty: list[int]
    values: Tensor | None  # [len(dirty), b, ...] or None when no variant differs


def _run(fn: Callable[[Tensor], Tensor], s: Stream) -> Stream:
    """`fn` applied to the intact value once and to the dirty variants in one call of `n*b` rows."""
    intact = fn(s.intact)
    if not s.dirty:
        return Stream(intact, [], None)
    assert s.values is not None
    n, b = s.values.shape[:2]
    out = fn(s.values.reshape(n * b, *s.values.shape[2:]))
    return Stream(intact, list(s.dirty), out.reshape(n, b, *out.shape[1:]))


def _stack(experts: Sequence[nn.Module], fuse: bool) -> Callable[[Tensor], Tensor]:
    """Expert outputs stacked `[rows, E, D]`; with `fuse`, through `_Fused` when the experts allow it."""
    fused = _Fused.of(experts) if fuse else None
    if fused is not None:
        return fused
    return lambda x: torch.stack([e.forward(x) for e in experts], dim=1)


class _Fused:
    """Experts that are the package's `MLP`s starting with a plain `nn.Linear` of one shape: their first
    layers run as ONE linear with the weights concatenated (`[rows, in]` -> `[rows, E * H]`), the rest of each
    expert on its slice; when the rest is only ReLUs, the result is already the stack `[rows, E, H]` (no copy).
    Each output is the same dot product as the expert's own, so only float rounding can differ."""

    def __init__(self, experts: Sequence[nn.Module], firsts: Sequence[nn.Linear]) -> None:
        with torch.no_grad():
            self.weight = torch.cat([f.weight.detach() for f in firsts])
            has_bias = firsts[0].bias is not None
            self.bias = torch.cat([f.bias.detach() for f in firsts]) if has_bias else None  # type: ignore[union-attr]
        self.width = firsts[0].out_features
        self.rests = [list(e)[1:] for e in experts]
        depths = {len(r) for r in self.rests}
        only_relu = all(type(layer) is nn.ReLU for r in self.rests for layer in r)
        self.relus = depths.pop() if only_relu and len(depths) == 1 else None  # ReLUs after the first layer

    @classmethod
    def of(cls, experts: Sequence[nn.Module]) -> _Fused | None:
        mods = list(experts)
        if len(mods) < 2 or any(type(e) is not MLP or len(e) == 0 for e in mods):
            return None
        firsts = [e[0] for e in mods]
        if any(type(f) is not nn.Linear for f in firsts):
            return None
        shapes = {
            (f.in_features, f.out_features, f.bias is not None, f.weight.dtype, f.weight.device)
            for f in firsts
        }
        if len(shapes) != 1:
            return None
        return cls(mods, firsts)

    def __call__(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        """`[rows, in]` -> `[rows, E, H]`; `out` `[rows, E * H]` receives the first layers when given."""
        if self.bias is not None:
            y = torch.addmm(self.bias, x, self.weight.t(), out=out)
        else:
            y = torch.mm(x, self.weight.t(), out=out)
        n, h = len(self.rests), self.width
        if self.relus is not None:  # single-layer experts: the buffer is the stack
            for _ in range(self.relus):
                y.relu_()
            return y.view(x.shape[0], n, h)
        outs = []
        for i, rest in enumerate(self.rests):
            z = y[:, i * h : (i + 1) * h]
            for layer in rest:
                z = z.relu_() if type(layer) is nn.ReLU else layer(z)
            outs.append(z)
        return torch.stack(outs, dim=1)


def _cat(streams: Sequence[Stream]) -> Stream:
    """Expert stacks `[b, E_i, D]` of several streams concatenated on the expert axis, into one buffer: a
    stream's part is copied once for all variants, its dirty values written over the intact ones."""
    dirty = sorted({k for s in streams for k in s.dirty})
    intact = torch.cat([s.intact for s in streams], dim=1)
    if not dirty:
        return Stream(intact, [], None)
    values = intact.new_empty(len(dirty), *intact.shape)
    start = 0
    for s in streams:
        stop = start + s.intact.shape[1]
        part = values[:, :, start:stop]
        if s.dirty == dirty:
            assert s.values is not None
            part.copy_(s.values)
        else:
            part.copy_(s.intact.unsqueeze(0).expand_as(part))
            if s.dirty:
                assert s.values is not None
                part[[dirty.index(p) for p in s.dirty]] = s.values
        start = stop
    return Stream(intact, dirty, values)


def _remix(g: Tensor, x: Tensor, out: Tensor, bias: Tensor | None = None) -> Tensor:
    """`out[b] = g[b] @ x[b] (+ bias)`: `g` `[b, n, E]`, `x` `[b, E, D]`, `out` `[b, n, D]`.

    `bmm` when the per-row product is large enough for its BLAS path; below that (`n * E * D < 512`, e.g. a
    PLE's few narrow experts) torch's per-row fallback kernel is several times slower than one
    multiply-add per expert over all rows."""
    n, e, d = g.shape[1], g.shape[2], x.shape[2]
    if n * e * d >= 512:
        if bias is not None:
            return torch.baddbmm(bias.expand(out.shape), g, x, out=out)
        return torch.bmm(g, x, out=out)
    if bias is not None:
        out.copy_(bias.expand(out.shape))
        first = 0
    else:
        torch.mul(g[:, :, 0, None], x[:, None, 0, :], out=out)
        first = 1
    for i in range(first, e):
        out.addcmul_(g[:, :, i, None], x[:, None, i, :])
    return out


def _select(s: Stream, positions: Sequence[int]) -> Tensor:
    """`s.values` of the dirty `positions` (in that order) `[len(positions), b, ...]`, without a copy when
    they are all of them in order."""
    assert s.values is not None
    if list(positions) == s.dirty:
        return s.values
    return s.values[[s.dirty.index(p) for p in positions]]


@dataclass(frozen=True)
class _Fold:
    """A package `Tower` whose first `nn.Linear` (`first`) is folded into the mixture; `rest` maps its
    pre-activation `[rows, H1]` to the tower's output `[rows]`."""

    first: nn.Linear
    rest: Callable[[Tensor], Tensor]


def _fold(tower: nn.Module) -> _Fold | None:
    """The fold of `tower` when it is exactly the package's `Tower` (body an `MLP` starting with a plain
    `nn.Linear`, or an empty body: then `out` is the first layer); otherwise None (the tower runs whole).

    `rest` owns its input (a work buffer of the re-mixer): `nn.ReLU` layers are applied in place."""
    if type(tower) is not Tower or type(tower.body) is not MLP:
        return None
    layers = list(tower.body)
    first = layers[0] if layers else tower.out
    if type(first) is not nn.Linear:
        return None
    after = [*layers[1:], tower.out] if layers else []

    def rest(z: Tensor) -> Tensor:
        for layer in after:
            z = z.relu_() if type(layer) is nn.ReLU else layer(z)
        y = z.squeeze(-1)
        return torch.sigmoid(y) if tower.binary else y

    return _Fold(first, rest)


@dataclass
class _GatePlan:
    """The variants' edits of one gate, grouped by kind so that each kind is one tensor op on all its rows."""

    edits: dict[int, Edit]  # position -> edit (every variant that edits this gate)
    kind: dict[int, str]  # position -> "zero" | "renormalize" | "fixed" | "swap" | "each"
    tensors: dict[tuple[str, torch.dtype, torch.device], Tensor]  # (kind, dtype, device) -> rows [n, E]


_KINDS = ("zero", "renormalize", "fixed", "swap", "plain", "each")
"""Column order of the edited rows: vectorized kinds first, then rows edited one at a time."""


def _plan(spec: GateSpec | None, variants: Sequence[Mapping[str, Edit]]) -> _GatePlan:
    edits: dict[int, Edit] = {}
    kind: dict[int, str] = {}
    if spec is not None:
        for pos, v in enumerate(variants, start=1):
            edit = v.get(spec.name)
            if edit is None:
                continue
            edits[pos] = edit
            if isinstance(edit, Ablate):
                ok = len(edit.keep) == spec.n_experts
                kind[pos] = ("zero" if edit.mode == "zero" else "renormalize") if ok else "each"
            elif edit.probs is not None:
                kind[pos] = "fixed" if len(edit.probs) == spec.n_experts else "each"
            else:
                kind[pos] = "swap"
    return _GatePlan(edits, kind, {})


DIFFERENCE_MIN_EXPERTS = 10
"""Fewest experts of a gate for its single-expert ablations to be computed by difference (`Remixer._ablated`).

The general path's cost per ablation grows with the experts (its product row is `E` wide), the difference's
does not, but it makes a few more passes over `[b, E, H1]` and writes two exact cells per row. Measured
(bench/remix_bench.py: `Remixer.run` on the bench model's shape, MMoE 32 inputs, E experts x [64], towers
[32], 2 tasks, 2E + 6 variants, batches of 4096, 1 thread, A/B interleaved on 2 shared cores, median of
the per-repeat speed-ups): E = 8 0.93x (slower), 10 1.10x, 12 1.12x, 16 1.18x, 32 1.37x."""


_MIN_SINGLES = 3
"""Fewest single-expert ablations of a gate for the difference path (it adds two product rows per batch)."""


@dataclass(frozen=True)
class _Singles:
    """Edits of one gate that each remove one expert (`Remixer._ablated`): `kind` "zero" or "renormalize",
    the variants' `positions`, and the removed expert of each (`experts`, distinct)."""

    kind: str
    positions: list[int]
    experts: list[int]


class Remixer:
    """Evaluates the intact model and every variant of one batch by re-mixing cached expert outputs.

    `variants` are the gate edits `{gate name: edit}` of variants 1..V (0 is the intact model);
    `difference_from`: the fewest experts of a gate whose single-expert ablations are computed by
    difference from the intact product (`_ablated`; `DIFFERENCE_MIN_EXPERTS`).
    """

    def __init__(
        self,
        model: nn.Module,
        topology: Topology,
        variants: Sequence[Mapping[str, Edit]],
        difference_from: int = DIFFERENCE_MIN_EXPERTS,
    ) -> None:
        self.model = model
        self.difference_from = difference_from
        self.variants = [dict(v) for v in variants]
        self.gates: dict[str, GateSpec] = {g.module: g for g in topology.gates}
        self.plans = {path: _plan(spec, self.variants) for path, spec in self.gates.items()}
        self.folds: dict[int, _Fold | None] = {}
        self.stacks: dict[int, Callable[[Tensor], Tensor]] = {}
        self.captured: dict[str, Tensor] = {}
        self.taps: dict[
            str, Tensor
        ] = {}  # module path -> its output in the model's own forward of this batch
        self.buffers: dict[str, Tensor] = {}
        self.indices: dict[tuple[tuple[int, ...], torch.device], Tensor] = {}
        self.aranges: dict[tuple[int, torch.device], Tensor] = {}
        self.singles: dict[tuple[str, tuple[int, ...], tuple[int, ...]], list[_Singles]] = {}

    def _buffer(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A work tensor `shape` kept from batch to batch (freshly allocated large tensors cost page faults on
        CPU); only for temporaries that do not outlive the call that asks for them."""
        buf = self.buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
            buf = like.new_empty(shape)
            self.buffers[name] = buf
        return buf

    def _arange(self, n: int, device: torch.device) -> Tensor:
        """`torch.arange(n)` on `device`, kept (an index used every batch)."""
        cached = self.aranges.get((n, device))
        if cached is None:
            cached = torch.arange(n, device=device)
            self.aranges[(n, device)] = cached
        return cached

    def _index(self, values: Sequence[int], device: torch.device) -> Tensor:
        """`values` as a long tensor on `device`, kept from batch to batch (the columns of `_head`'s gather)."""
        key = (tuple(values), device)
        cached = self.indices.get(key)
        if cached is None:
            cached = torch.tensor(key[0], dtype=torch.long, device=device)
            self.indices[key] = cached
        return cached

    # ------------------------------------------------------------------------------- gate rows
    def _gate(self, path: str, gate: nn.Module, gate_in: Stream) -> GateOut:
        """A gate's probabilities `[b, E]` under every variant (before edits); the intact ones are captured
        (all gates of a level run before any mixing: a gate swap reads another gate's intact rows)."""
        tapped = self.taps.get(path) if not gate_in.dirty else None
        probs = Stream(tapped, [], None) if tapped is not None else _run(gate.forward, gate_in)
        spec = self.gates.get(path)
        if spec is not None:
            self.captured[spec.name] = probs.intact
        return path, probs

    def _changed(self, gate: GateOut, experts: Stream) -> tuple[list[int], list[int]]:
        """Positions whose mixture differs from the intact one: (experts intact, experts changed)."""
        path, probs = gate
        plan = self.plans.get(path)
        edited = set(plan.edits) if plan is not None else set()
        other = set(experts.dirty)
        return sorted((edited | set(probs.dirty)) - other), list(experts.dirty)

    def _rows(
        self, gate: GateOut, positions: Sequence[int], lead: bool, extra: int = 0
    ) -> tuple[list[int], Tensor]:
        """Edited gate rows of `positions` `[b, lead + n + extra, E]` (the intact row first when `lead`; `extra`
        rows at the end left for the caller to fill), and the positions in column order (grouped by edit
        kind, so that each kind is one tensor op). The rows are a work buffer: valid until the next call."""
        path, probs = gate
        plan = self.plans.get(path) or _GatePlan({}, {}, {})
        spec = self.gates.get(path)
        intact = probs.intact
        exact = intact.dtype in (torch.float32, torch.float64)  # edit_gate_output's working dtypes
        groups: dict[str, list[int]] = {k: [] for k in _KINDS}
        for p in positions:
            groups[plan.kind.get(p, "plain") if exact else ("each" if p in plan.edits else "plain")].append(p)
        order = [p for k in _KINDS for p in groups[k]]
        b, e = intact.shape
        out = self._buffer(f"rows{int(lead)}", (b, int(lead) + len(order) + extra, e), intact)
        if lead:
            out[:, 0] = intact
        moved = set(probs.dirty)  # variants whose unedited gate rows differ from the intact ones
        tiny = torch.finfo(intact.dtype).tiny
        start = int(lead)
        zeroed: tuple[list[tuple[bool, ...]], Tensor] | None = None  # the zero kind's keep masks and rows
        for kind in _KINDS:
            members = groups[kind]
            block = out[:, start : start + len(members)]
            start += len(members)
            if not members:
                continue
            own = [p for p in members if p in moved]
            if kind in ("zero", "renormalize") and not own:  # `edit_gate_output`'s arithmetic, all at once
                masks = [e.keep for e in map(plan.edits.__getitem__, members) if isinstance(e, Ablate)]
                if kind == "renormalize" and zeroed is not None and zeroed[0] == masks:
                    kept = zeroed[1]  # the same products (`intact * keep`) as the zero kind's rows
                else:
                    kept = torch.mul(
                        intact.unsqueeze(1), self._tensor(plan, kind, members, intact), out=block
                    )
                if kind == "zero":
                    zeroed = (masks, block)
                else:
                    total = intact.sum(-1, keepdim=True).unsqueeze(1)
                    torch.mul(kept, total / kept.sum(-1, keepdim=True).clamp_min(tiny), out=block)
                continue
            if kind == "fixed":
                block.copy_(self._tensor(plan, kind, members, intact).expand_as(block))
                continue
            if kind != "swap":  # the unedited rows first: intact, or the variant's own
                block.copy_(intact.unsqueeze(1).expand_as(block))
                if own:
                    block[:, [members.index(p) for p in own]] = _select(probs, own).transpose(0, 1)
            assert spec is not None or kind == "plain"
            if kind in ("zero", "renormalize"):
                keep = self._tensor(plan, kind, members, intact)
                total = block.sum(-1, keepdim=True)
                block.mul_(keep)
                if kind == "renormalize":
                    block.mul_(total / block.sum(-1, keepdim=True).clamp_min(tiny))
            elif kind == "swap":
                for j, p in enumerate(members):
                    edit = plan.edits[p]
                    assert isinstance(edit, Replace) and spec is not None
                    source = self._source(edit)
                    assert source is not None
                    if source.shape != intact.shape:
                        raise InterventionError(
                            f"gate {spec.name!r} has rows {tuple(intact.shape)} but gate {edit.source!r} gave "
                            f"{tuple(source.shape)}; gates can only be swapped when their outputs have the same shape"
                        )
                    block[:, j] = source
            elif kind == "each":
                assert spec is not None
                for j, p in enumerate(members):
                    edit = plan.edits[p]
                    block[:, j] = edit_gate_output(block[:, j].clone(), spec, edit, self._source(edit))
        return order, out

    def _tensor(self, plan: _GatePlan, kind: str, members: list[int], like: Tensor) -> Tensor:
        """Keep masks (ablations) or fixed rows (`Replace(probs=...)`) of `members` `[n, E]`, cached."""
        key = (kind + ",".join(map(str, members)), like.dtype, like.device)
        cached = plan.tensors.get(key)
        if cached is None:
            rows = []
            for p in members:
                edit = plan.edits[p]
                rows.append(edit.keep if isinstance(edit, Ablate) else edit.probs)
            cached = torch.tensor(rows, dtype=like.dtype, device=like.device)
            plan.tensors[key] = cached
        return cached

    def _source(self, edit: Edit) -> Tensor | None:
        if isinstance(edit, Replace) and edit.source is not None:
            return self.captured[edit.source]  # KeyError: the engine falls back to the hooks
        return None

    # ---------------------------------------------------------------- ablations by difference
    def _singles(self, gate: GateOut, positions: Sequence[int]) -> list[_Singles]:
        """The `positions` whose edit of this gate removes exactly one expert from the intact gate rows, by kind
        ("zero", "renormalize"); empty when fewer than `_MIN_SINGLES` or the gate has fewer than
        `difference_from` experts (the difference path would not pay).
        An expert removed by a second position of the same kind leaves that position to the general path."""
        path, probs = gate
        key = (path, tuple(positions), tuple(probs.dirty))
        cached = self.singles.get(key)
        if cached is not None:
            return cached
        plan = self.plans.get(path)
        groups: dict[str, tuple[list[int], list[int]]] = {"zero": ([], []), "renormalize": ([], [])}
        moved = set(probs.dirty)
        exact = probs.intact.dtype in (torch.float32, torch.float64)
        if plan is not None and exact and probs.intact.shape[-1] >= self.difference_from:
            for p in positions:
                kind = plan.kind.get(p)
                if kind not in groups or p in moved:
                    continue
                edit = plan.edits[p]
                assert isinstance(edit, Ablate)
                removed = [i for i, keep in enumerate(edit.keep) if not keep]
                pos, experts = groups[kind]
                if len(removed) == 1 and removed[0] not in experts:
                    pos.append(p)
                    experts.append(removed[0])
        found = [_Singles(kind, pos, experts) for kind, (pos, experts) in groups.items() if pos]
        if sum(len(s.positions) for s in found) < _MIN_SINGLES:
            found = []
        self.singles[key] = found
        return found

    @staticmethod
    def _top_rows(intact: Tensor, top: Tensor, rows: Tensor) -> Tensor:
        """Write into `rows` `[b, 2, E]` the intact gate rows with expert `top` `[b]` removed: zeroed, and
        renormalized (`edit_gate_output`'s arithmetic); their products are the exact ablations of each row's
        largest gate, where the differences in `_ablated` cancel. Returns the rows' totals `[b, 1]`."""
        rows.copy_(intact.unsqueeze(1).expand_as(rows))
        rows.scatter_(2, top.view(-1, 1, 1).expand(-1, 2, 1), 0.0)
        renorm = rows[:, 1]
        total = intact.sum(-1, keepdim=True)
        renorm.mul_(total / renorm.sum(-1, keepdim=True).clamp_min(torch.finfo(intact.dtype).tiny))
        return total

    def _ablated(
        self,
        singles: Sequence[_Singles],
        g: Tensor,
        total: Tensor,
        y: Tensor,
        z: Tensor,
        bias: Tensor | None,
        top: tuple[Tensor, Tensor],
    ) -> tuple[list[int], Tensor, list[int]]:
        """The single-expert ablations `singles` from the intact product: their positions in column order, a
        work buffer `[sum n * b, F]` holding one block `[b, n, F]` per kind after the other, and the `n`s.

        `g` `[b, E]` intact gate rows, `total` `[b, 1]` their sums `S`, `y` `[b, E, F]` expert outputs (folded or
        not), `z` `[b, F]` the intact product `sum_e g_e y_e (+ bias)`. Removing expert `j` is then O(F) per row
        instead of O(E F): zeroed, `z - g_j y_j`; renormalized, `bias + s_j (z - bias - g_j y_j)` with
        `s_j = S / (S - g_j)`. Where `g_j` is close to `S` the difference cancels (the renormalized one is then
        scaled by `s_j`, up to `1 / tiny`), and where all other weights are exactly zero it leaves rounding
        noise where one forward gives exactly `bias` (ties that rank metrics count). Both can only happen at
        the row's largest gate (any other has `g_j <= S / 2`, so `s_j <= 2`), whose cells are overwritten with
        the exact values `top` = (its expert `[b]`, `[b, 2, F]` the products of `_top_rows`' two rows: the
        general path's own arithmetic). Elsewhere results differ from the general path's by float rounding
        (of the order of the intact product's); a row whose remaining experts all output exactly zero (dead
        ReLU experts) then gets `bias` plus rounding noise, not exactly `bias`."""
        b, e, f = y.shape
        sizes = [len(s.positions) for s in singles]
        flat = self._buffer("ablated", (sum(sizes) * b * f,), y)
        tiny = torch.finfo(g.dtype).tiny
        rows = self._arange(b, y.device)
        zeroed: tuple[list[int], Tensor] | None = None  # the zero kind's experts and block (reused)
        start = 0
        for s, n in zip(singles, sizes, strict=True):
            block = flat[start : start + b * n * f].view(b, n, f)
            start += b * n * f
            index = None if s.experts == list(range(e)) else self._index(s.experts, y.device)
            gj = g if index is None else g[:, index]  # [b, n]
            if zeroed is not None and zeroed[0] == s.experts:
                base = zeroed[1]
            else:
                yj = y if index is None else y[:, index]  # [b, n, F]
                base = torch.addcmul(z.unsqueeze(1), gj.unsqueeze(2), yj, value=-1, out=block)
            if s.kind == "zero":
                zeroed = (s.experts, block)
            else:
                scale = total / (total - gj).clamp_min(tiny)  # [b, n]
                torch.mul(base, scale.unsqueeze(2), out=block)
                if bias is not None:
                    block.addcmul_((1 - scale).unsqueeze(2), bias)
            expert, cells = top
            cell = cells[:, 0 if s.kind == "zero" else 1]
            if index is None:
                block[rows, expert] = cell
            else:  # the column of the row's largest gate where this kind removes it (no host sync)
                columns = [s.experts.index(i) if i in s.experts else -1 for i in range(e)]  # -1: not removed
                col = self._index(columns, y.device)[expert]
                at = col.clamp_min(0)
                block[rows, at] = torch.where((col >= 0).unsqueeze(1), cell, block[rows, at])
        return [p for s in singles for p in s.positions], flat.view(-1, f), sizes

    # --------------------------------------------------------------------------------- mixing
    def _other(self, gate: GateOut, experts: Stream) -> Tensor:
        """Mixtures `[n, b, D]` of the variants whose experts changed (`experts.dirty`, in that order): one
        `[1, E] x [E, D]` product per (variant, row), by `_remix`."""
        order, g = self._rows(gate, experts.dirty, lead=False)
        g = g.transpose(0, 1)[[order.index(p) for p in experts.dirty]]  # [n, b, E] in the experts' order
        assert experts.values is not None
        x = experts.values
        n, b, e, d = x.shape
        out = x.new_empty(n * b, 1, d)
        return _remix(g.reshape(n * b, 1, e), x.reshape(n * b, e, d), out).reshape(n, b, d)

    def _mix(self, gate: GateOut, experts: Stream) -> Stream:
        """One mixture `[b, D]` under every variant: the gate's rows, edited per variant, times the experts.

        The intact mixture is the model's own `mix` (exactly its value: later gates read it); the variants
        with intact experts are one batched product `[b, n, E] x [b, E, D]`."""
        same, other = self._changed(gate, experts)
        x = experts.intact
        intact = torch.bmm(gate[1].intact.unsqueeze(1), x).squeeze(1)
        if not same and not other:
            return Stream(intact, [], None)
        values = intact.new_empty(len(same) + len(other), *intact.shape)
        order: list[int] = []
        if same:
            order, g = self._rows(gate, same, lead=False)
            mixed = _remix(g, x, self._buffer("mixed", (*g.shape[:2], x.shape[-1]), x))
            values[: len(order)] = mixed.transpose(0, 1)
        if other:
            values[len(order) :] = self._other(gate, experts)
        return Stream(intact, order + other, values)

    def _head(self, gate: GateOut, experts: Stream, tower: nn.Module, k: int) -> Tensor:
        """A task's predictions under every variant `[k, b, ...]`: its mixture through its tower, the tower's
        first Linear folded into the re-mixing where it can be (see the module docstring); single-expert
        ablations by difference from the intact product (`_ablated`)."""
        if id(tower) not in self.folds:
            self.folds[id(tower)] = _fold(tower)
        fold = self.folds[id(tower)]
        same, other = self._changed(gate, experts)
        singles = self._singles(gate, same)
        taken = {p for s in singles for p in s.positions}
        order, g = self._rows(gate, [p for p in same if p not in taken], lead=True, extra=2 if singles else 0)
        intact = gate[1].intact
        top = None  # each row's largest gate's expert [b] and the rows' gate totals [b, 1]
        if singles:
            expert = intact.argmax(-1)
            top = (expert, self._top_rows(intact, expert, g[:, -2:]))
            order += [-1, -1]  # those rows are no variant's
        b = g.shape[0]
        x = experts.intact  # [b, E, D]
        bias = None
        if fold is not None:  # Y = X W^T [b, E, H1], then the pre-activation of every variant at once
            w = fold.first.weight
            y = self._buffer("folded", (*x.shape[:2], w.shape[0]), x)
            torch.mm(x.reshape(-1, x.shape[-1]), w.t(), out=y.view(-1, w.shape[0]))
            bias = fold.first.bias
            # the bias added in the product (one pass less over `z` than bmm + add_)
            z = _remix(g, y, self._buffer("pre", (b, g.shape[1], w.shape[0]), x), bias)
            head: Callable[[Tensor], Tensor] = fold.rest
        else:
            y = x
            z = _remix(g, x, self._buffer("mixed", (b, g.shape[1], x.shape[-1]), x))
            head = tower.forward
        ablated, sizes = None, []
        if top is not None:
            expert, total = top
            taken_order, ablated, sizes = self._ablated(
                singles, intact, total, y, z[:, 0], bias, (expert, z[:, -2:])
            )
            order += taken_order
        # the tower's rest (it owns its input: `fold.rest` applies ReLUs in place) on the product, and on the
        # ablated blocks in one call; then `pred` [b, columns, ...] in `order`'s column order
        flat = head(z.view(-1, z.shape[-1]))
        pred = flat.reshape(b, z.shape[1], *flat.shape[1:])
        if ablated is not None:
            flat = head(ablated)
            start, preds = 0, [pred]
            for n in sizes:
                preds.append(flat[start : start + b * n].reshape(b, n, *flat.shape[1:]))
                start += b * n
            pred = torch.cat(preds, dim=1)
        column = [0] * k  # variant -> column of `pred` (0: the intact one, for variants it does not change)
        for j, p in enumerate(order, start=1):
            if p >= 0:
                column[p] = j
        out = pred.transpose(0, 1)[self._index(column, pred.device)]  # one gather [k, b, ...]
        if other:
            mixed = self._other(gate, experts)
            flat = tower.forward(mixed.reshape(-1, mixed.shape[-1]))
            out[other] = flat.reshape(len(other), b, *flat.shape[1:])
        return out

    # -------------------------------------------------------------------------------- models
    def _experts(self, experts: nn.ModuleList, s: Stream, fuse: bool = True) -> Stream:
        """The stacked outputs `[b, E, D]` of a group of experts on stream `s` (its intact rows and its dirty
        variants' rows), through `_stack` built once (the fused weights are concatenated once).

        `fuse=False` where a gate reads the experts' mixtures (a PLE's levels before the last): there the
        intact values stay exactly the model's, so the captured gate probabilities are the plain forward's.
        Fused outputs go to work buffers (one for the intact rows, one for the dirty ones): nothing of a
        `Stream` outlives `run`."""
        if id(experts) not in self.stacks:
            self.stacks[id(experts)] = _stack(experts, fuse)
        fn = self.stacks[id(experts)]
        if not isinstance(fn, _Fused):
            return _run(fn, s)
        width = fn.weight.shape[0]
        x = s.intact
        intact = fn(x, self._buffer(f"experts{id(experts)}:intact", (x.shape[0], width), x))
        if not s.dirty:
            return Stream(intact, [], None)
        assert s.values is not None
        n, b = s.values.shape[:2]
        flat = s.values.reshape(n * b, *s.values.shape[2:])
        out = fn(flat, self._buffer(f"experts{id(experts)}:dirty", (n * b, width), flat))
        return Stream(intact, list(s.dirty), out.reshape(n, b, *out.shape[1:]))

    def _shared(self, model: _SharedExperts, h: Tensor) -> list[tuple[GateOut, Stream]]:
        x = Stream(h, [], None)
        outs = [self.taps.get(f"experts.{i}") for i in range(len(model.experts))]
        if outs and all(o is not None for o in outs):  # the model's own expert outputs, riding along
            stacked = Stream(torch.stack(outs, dim=1), [], None)  # type: ignore[arg-type]
        else:
            stacked = self._experts(model.experts, x)
        if isinstance(model, OMoE):
            return [(self._gate("gate", model.gate, x), stacked)] * len(model.tasks)
        probs = [self._gate(f"gates.{i}", g, x) for i, g in enumerate(model.gates)]
        return [(p, stacked) for p in probs]

    def _level(
        self, lv: int, level: ExtractionLevel, task_in: list[Stream], shared_in: Stream
    ) -> tuple[list[tuple[GateOut, Stream]], tuple[GateOut, Stream] | None]:
        """A level's (gate, experts) per task mixture and for the shared mixture (None on the last level)."""
        fuse = level.gate_shared is None  # the last level: no gate reads its experts
        shared = self._experts(level.shared_experts, shared_in, fuse)
        specific = [self._experts(ex, x, fuse) for ex, x in zip(level.specific, task_in, strict=True)]
        probs = [
            self._gate(f"levels.{lv}.gates.{i}", gate, x)
            for i, (gate, x) in enumerate(zip(level.gates, task_in, strict=True))
        ]
        shared_probs = None
        if level.gate_shared is not None:
            shared_probs = self._gate(f"levels.{lv}.gate_shared", level.gate_shared, shared_in)
        task = [(p, _cat([own, shared])) for p, own in zip(probs, specific, strict=True)]
        if shared_probs is None:
            return task, None
        return task, (shared_probs, _cat([*specific, shared]))

    def tap_paths(self) -> list[str]:
        """Modules whose intact outputs `run` can take instead of running them (`taps`): an OMoE's or MMoE's
        experts `[b, D]` and gates `[b, E]`; none for a PLE/CGC."""
        model = self.model
        if not isinstance(model, _SharedExperts):
            return []
        gates = ["gate"] if isinstance(model, OMoE) else [f"gates.{i}" for i in range(len(model.gates))]
        return [f"experts.{i}" for i in range(len(model.experts))] + gates

    def run(self, x: Any, taps: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The model's output dict with every task's predictions for all `1 + V` variants stacked:
        `{task: [(1 + V) * b]}` (blocks in variant order, intact first). `taps` `{module path: output}` are
        outputs of `tap_paths()` modules in the model's own forward on `x` (riding along a pass that ran
        it): those modules are not run again."""
        self.captured = {}
        self.taps = dict(taps or {})
        model = self.model
        h = model.inputs(x)
        heads: list[tuple[GateOut, Stream]] = []
        if isinstance(model, PLE):
            task_x = [Stream(h, [], None)] * len(model.tasks)
            shared_x: Stream | None = Stream(h, [], None)
            last = len(model.levels) - 1
            for lv, level in enumerate(model.levels):
                assert shared_x is not None  # only the last level has no shared gate
                task, shared = self._level(lv, level, task_x, shared_x)
                if lv == last:
                    heads = task
                    break
                task_x = [self._mix(*p) for p in task]
                shared_x = self._mix(*shared) if shared is not None else None
        else:
            heads = self._shared(model, h)
        k = 1 + len(self.variants)
        return {
            t.name: self._head(gate, experts, tower, k).reshape(-1)
            for t, tower, (gate, experts) in zip(model.tasks, model.towers, heads, strict=True)
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
