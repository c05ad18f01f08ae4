"""Hand-written small multi-task models with KNOWN gates and planted gate behaviour.

Used by discovery tests (each model's wiring differs from the real libraries on purpose) and by
diagnosis tests (the planted gate and expert behaviours below are exact, not learned). Every model
is deterministic for a given `seed` (initialized under a forked RNG: the global RNG is untouched),
has `example_input(batch, seed)` giving a valid input and `topology()` declaring its true topology.

Models:

* `EinsumMMoE` (a): experts are ONE batched weight `[E, in, dim]` applied with `torch.einsum`
  (inline in `moe`'s forward, or in a `moe.bank` module emitting `[batch, E, dim]` with
  `expert_bank=True`); gates are `nn.Linear` logits softmaxed functionally (`torch.softmax`); the
  mixture is another einsum; output `{task: [batch]}`.
* `SharedSoftmaxMMoE` (b): one `nn.Softmax` instance applied to every task's gate logits (it runs
  T times per forward); logits per task from `gate_logits.t`, or (`per_task_logits=False`) from one
  `gate_logits` Linear run T times on task-scaled inputs; `bmm` mixture; output a list of `[batch, 1]`.
* `AttentionMMoE` (c): real MMoE gates (`gates.<task>` = Linear + Softmax) next to three softmaxes
  that are NOT gates: feature re-weighting over dense features, attention pooling over
  categorical field embeddings, and an output topic distribution (`"topic"` in the output dict).
* `PlantedMMoE` (d): an MMoE whose gates behave as planted per task (see `GATE_MODES`), with
  optional dead, inactive and redundant experts; output a `[batch, T]` tensor with `task_names`
  and `task_types` attributes like DeepCTR-Torch.
* `PlantedOMoE`: one shared gate emitting `[batch, E, 1]` probabilities, mixture used by all towers.
* `PlantedSharedBottom`: no gates at all (dict output).

One module (over ~450 lines) on purpose: test support, not library logic; the planted models and the
seeded building blocks they share read best side by side.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from mmoe_inspect.topology.spec import ExpertSpec, GateSpec, TaskKind, TaskSpec, Topology

__all__ = [
    "DEAD_LOGIT",
    "GATE_MODES",
    "AttentionMMoE",
    "EinsumMMoE",
    "PlantedMMoE",
    "PlantedOMoE",
    "PlantedSharedBottom",
    "SharedSoftmaxMMoE",
]

GATE_MODES = ("learned", "collapsed", "uniform", "constant", "specialized", "polarized", "copy:<task>")
"""Planted gate behaviours of `PlantedMMoE` (see its docstring)."""

DEAD_LOGIT = -30.0
"""Logit bias given to a dead expert in every gate: its weight is at most exp(-30) ≈ 1e-13."""

SPECIALIZED_SCALE = 50.0
POLARIZED_SCALE = 200.0


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Initialize deterministically without touching the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _expert(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim), nn.ReLU())


def _tower(in_dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))


def _dense_input(batch: int, n_features: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, n_features, generator=gen)


def _tasks(
    names: Sequence[str], kinds: Sequence[str] | None = None, *, by_position: bool = False
) -> tuple[TaskSpec, ...]:
    """TaskSpecs found at dict key `name` (or output position i when `by_position`)."""
    kinds = list(kinds) if kinds is not None else ["binary"] * len(names)
    specs = []
    for i, (n, k) in enumerate(zip(names, kinds, strict=True)):
        kind: TaskKind = "regression" if k == "regression" else "binary"
        specs.append(TaskSpec(n, kind=kind, output=i if by_position else n, probability=kind == "binary"))
    return tuple(specs)


# --------------------------------------------------------------------------- (a) einsum
class ExpertBank(nn.Module):
    """All experts at once: `relu(einsum("bi,eid->bed", x, W) + b)`, `[batch, in]` → `[batch, E, dim]`."""

    def __init__(self, in_dim: int, n_experts: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_experts, in_dim, dim) / math.sqrt(in_dim))
        self.bias = nn.Parameter(torch.zeros(n_experts, dim))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(torch.einsum("bi,eid->bed", x, self.weight) + self.bias)


class EinsumMoELayer(nn.Module):
    """Einsum experts + one Linear gate per task (functional softmax) → `{task: mixture [batch, dim]}`.

    With `expert_bank=False` the expert tensor `[batch, E, dim]` is computed inline in this
    module's forward from `expert_weight [E, in, dim]`; with `expert_bank=True` by the `bank` module.
    """

    def __init__(
        self, in_dim: int, n_experts: int, dim: int, tasks: Sequence[str], expert_bank: bool
    ) -> None:
        super().__init__()
        self.bank: ExpertBank | None = ExpertBank(in_dim, n_experts, dim) if expert_bank else None
        if not expert_bank:
            self.expert_weight = nn.Parameter(torch.randn(n_experts, in_dim, dim) / math.sqrt(in_dim))
            self.expert_bias = nn.Parameter(torch.zeros(n_experts, dim))
        self.gates = nn.ModuleDict({t: nn.Linear(in_dim, n_experts) for t in tasks})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if self.bank is not None:
            h = self.bank(x)
        else:
            h = torch.relu(torch.einsum("bi,eid->bed", x, self.expert_weight) + self.expert_bias)
        out = {}
        for task, gate in self.gates.items():
            g = torch.softmax(gate(x), dim=-1)  # [batch, E]
            out[task] = torch.einsum("be,bed->bd", g, h)
        return out


class EinsumMMoE(nn.Module):
    """(a) MMoE unlike any library: batched einsum experts, functional-softmax Linear gates, dict output.

    Input `[batch, n_features]`; output `{task: probability [batch]}`. Gates: `moe.gates.<task>`
    (logits). Experts: `moe.expert[i]` (inline, `module=None`) or `moe.bank[i]` (`expert_bank=True`).
    """

    def __init__(
        self,
        n_features: int = 8,
        n_experts: int = 4,
        expert_dim: int = 8,
        tasks: Sequence[str] = ("ctr", "cvr"),
        *,
        expert_bank: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.n_features, self.n_experts, self.task_list = n_features, n_experts, tuple(tasks)
        with _seeded(seed):
            self.moe = EinsumMoELayer(n_features, n_experts, expert_dim, tasks, expert_bank)
            self.towers = nn.ModuleDict({t: _tower(expert_dim, 8) for t in tasks})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        mixes = self.moe(x)
        return {t: torch.sigmoid(self.towers[t](mixes[t])).squeeze(-1) for t in self.task_list}

    def example_input(self, batch: int = 64, seed: int = 0) -> Tensor:
        return _dense_input(batch, self.n_features, seed)

    def topology(self) -> Topology:
        if self.moe.bank is not None:
            experts = tuple(
                ExpertSpec(f"moe.bank[{i}]", module="moe.bank", index=i) for i in range(self.n_experts)
            )
        else:
            experts = tuple(ExpertSpec(f"moe.expert[{i}]") for i in range(self.n_experts))
        names = tuple(e.name for e in experts)
        gates = tuple(
            GateSpec(t, module=f"moe.gates.{t}", experts=names, task=t, output="logits")
            for t in self.task_list
        )
        return Topology(_tasks(self.task_list), experts, gates, architecture="mmoe")


# ------------------------------------------------------------------ (b) shared softmax
class SharedSoftmaxMMoE(nn.Module):
    """(b) One `nn.Softmax` module (`softmax`) applied to every task's gate logits: it runs T times.

    `per_task_logits=True`: logits from `gate_logits.<i>` (one Linear per task, each run once).
    `per_task_logits=False`: one `gate_logits` Linear run T times on `x * task_scale[i]`, so both
    the Linear and the Softmax run T times and a gate is only identified by its call index.
    Input `[batch, n_features]`; output a list of T probabilities `[batch, 1]` (tasks by position).
    """

    def __init__(
        self,
        n_features: int = 8,
        n_experts: int = 3,
        expert_dim: int = 8,
        n_tasks: int = 2,
        *,
        per_task_logits: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.n_features, self.n_experts, self.n_tasks = n_features, n_experts, n_tasks
        self.per_task_logits = per_task_logits
        with _seeded(seed):
            self.experts = nn.ModuleList(_expert(n_features, 16, expert_dim) for _ in range(n_experts))
            if per_task_logits:
                self.gate_logits: nn.Module = nn.ModuleList(
                    nn.Linear(n_features, n_experts) for _ in range(n_tasks)
                )
            else:
                self.gate_logits = nn.Linear(n_features, n_experts)
                self.task_scale = nn.Parameter(torch.rand(n_tasks, n_features) + 0.5)
            self.softmax = nn.Softmax(dim=-1)
            self.towers = nn.ModuleList(_tower(expert_dim, 8) for _ in range(n_tasks))

    def forward(self, x: Tensor) -> list[Tensor]:
        stacked = torch.stack([e(x) for e in self.experts], dim=1)  # [batch, E, dim]
        outs = []
        for i, tower in enumerate(self.towers):
            if self.per_task_logits:
                logits = self.gate_logits[i](x)  # type: ignore[index]
            else:
                logits = self.gate_logits(x * self.task_scale[i])
            g = self.softmax(logits)
            mix = torch.bmm(g.unsqueeze(1), stacked).squeeze(1)
            outs.append(torch.sigmoid(tower(mix)))
        return outs

    def example_input(self, batch: int = 64, seed: int = 0) -> Tensor:
        return _dense_input(batch, self.n_features, seed)

    def topology(self) -> Topology:
        names = [f"task_{i}" for i in range(self.n_tasks)]
        experts = tuple(ExpertSpec(f"experts.{i}", module=f"experts.{i}") for i in range(self.n_experts))
        ex = tuple(e.name for e in experts)
        if self.per_task_logits:
            gates = tuple(
                GateSpec(n, module=f"gate_logits.{i}", experts=ex, task=n, output="logits")
                for i, n in enumerate(names)
            )
        else:
            gates = tuple(
                GateSpec(n, module="softmax", experts=ex, task=n, output="probs", call=i)
                for i, n in enumerate(names)
            )
        return Topology(_tasks(names, by_position=True), experts, gates, architecture="mmoe")


# ------------------------------------------------------------- (c) softmaxes that are not gates
class AttentionMMoE(nn.Module):
    """(c) Real gates next to softmaxes that are not gates.

    Input `{"dense": [batch, n_dense] float, "cat": [batch, n_fields] long}`. Not gates:
    `feature_attention` (softmax over dense features re-weighting them, no mixture),
    `field_attention` (softmax `[batch, n_fields, 1]` pooling the field EMBEDDINGS: a weighted sum,
    but of embedding lookups, not experts) and `topic_head` (an output softmax `"topic"`,
    `[batch, n_topics]`). Gates: `gates.<task>` = Linear + `nn.Softmax` (probs) over `experts.<i>`,
    mixed with `(g.unsqueeze(-1) * stacked).sum(1)`. Output `{task: [batch], "topic": [batch, K]}`.
    """

    def __init__(
        self,
        n_dense: int = 6,
        n_fields: int = 3,
        cardinality: int = 10,
        embed_dim: int = 4,
        n_experts: int = 3,
        expert_dim: int = 8,
        tasks: Sequence[str] = ("ctr", "cvr"),
        n_topics: int = 4,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.n_dense, self.n_fields, self.cardinality = n_dense, n_fields, cardinality
        self.n_experts, self.task_list = n_experts, tuple(tasks)
        in_dim = n_dense + embed_dim
        with _seeded(seed):
            self.feature_attention = nn.Linear(n_dense, n_dense)
            self.embeddings = nn.ModuleList(nn.Embedding(cardinality, embed_dim) for _ in range(n_fields))
            self.field_attention = nn.Linear(embed_dim, 1)
            self.experts = nn.ModuleList(_expert(in_dim, 16, expert_dim) for _ in range(n_experts))
            self.gates = nn.ModuleDict(
                {t: nn.Sequential(nn.Linear(in_dim, n_experts), nn.Softmax(dim=1)) for t in tasks}
            )
            self.towers = nn.ModuleDict({t: _tower(expert_dim, 8) for t in tasks})
            self.topic_head = nn.Linear(in_dim, n_topics)

    def forward(self, x: Mapping[str, Tensor]) -> dict[str, Tensor]:
        dense = x["dense"]
        weights = torch.softmax(self.feature_attention(dense), dim=1)  # [batch, n_dense]
        dense = dense * weights * self.n_dense
        cat = x["cat"]
        embs = torch.stack([emb(cat[:, i]) for i, emb in enumerate(self.embeddings)], dim=1)  # [b, F, k]
        attn = torch.softmax(self.field_attention(embs), dim=1)  # [batch, n_fields, 1]
        pooled = (attn * embs).sum(dim=1)
        h = torch.cat([dense, pooled], dim=1)
        stacked = torch.stack([e(h) for e in self.experts], dim=1)
        out: dict[str, Tensor] = {}
        for t in self.task_list:
            g = self.gates[t](h)
            mix = (g.unsqueeze(-1) * stacked).sum(dim=1)
            out[t] = torch.sigmoid(self.towers[t](mix)).squeeze(-1)
        out["topic"] = torch.softmax(self.topic_head(h), dim=-1)
        return out

    def example_input(self, batch: int = 64, seed: int = 0) -> dict[str, Tensor]:
        gen = torch.Generator().manual_seed(seed)
        return {
            "dense": torch.randn(batch, self.n_dense, generator=gen),
            "cat": torch.randint(0, self.cardinality, (batch, self.n_fields), generator=gen),
        }

    def topology(self) -> Topology:
        experts = tuple(ExpertSpec(f"experts.{i}", module=f"experts.{i}") for i in range(self.n_experts))
        ex = tuple(e.name for e in experts)
        gates = tuple(GateSpec(t, module=f"gates.{t}", experts=ex, task=t) for t in self.task_list)
        return Topology(_tasks(self.task_list), experts, gates, architecture="mmoe")


# --------------------------------------------------------------------- (d) planted behaviour
class PlantedMMoE(nn.Module):
    """(d) MMoE with planted gate behaviour, dead/inactive/redundant experts. Exact, not learned.

    Gates are `gates.<task>` = `nn.Sequential(nn.Linear(n_features, E), nn.Softmax(dim=1))`; their
    weight `W [E, n_features]` and bias `b [E]` are set per `gate_modes[task]`:

    * ``"learned"``: default random init (an ordinary, input-dependent gate).
    * ``"collapsed"`` (or ``"collapsed:<k>"``): `W = 0`, `b = DEAD_LOGIT` except expert k (default: the
      first live one) → weight ≈ 1.0 on expert k for every row.
    * ``"uniform"``: `W = 0`, `b = 0` → exactly 1/E for every row (1/live count with dead experts).
    * ``"constant"``: `W = 0`, `b = log p` with p ∝ 2^-e (live experts) → the same non-uniform vector
      for every row.
    * ``"specialized"``: `W[e, 0] = +50` for the first half of the live experts, `-50` for the rest,
      `b = 0` → rows with x0 > 0 go (evenly) to the first half, rows with x0 < 0 to the second.
    * ``"polarized"``: random `W` scaled to ±200 → a hard, row-dependent one-hot.
    * ``"copy:<task>"``: identical weights to `<task>`'s gate → the same routing row by row.

    `dead_experts`: every gate's row for them is `W = 0`, `b = DEAD_LOGIT` → no gate gives them weight.
    `inactive_experts`: the final Linear's bias is -100 → the expert's final ReLU outputs 0 for every
    row (it still gets gate weight). `redundant_experts=(i, j)`: expert j gets a copy of expert i's
    weights → identical outputs.

    Experts `experts.<i>` = Linear → ReLU → Linear → ReLU `[batch, n_features]` → `[batch, dim]`;
    mixture `matmul(g.unsqueeze(1), stacked)`. Output `[batch, T]` (sigmoid for binary tasks, raw for
    regression) with `task_names`/`task_types` attributes like DeepCTR-Torch.
    """

    def __init__(
        self,
        n_features: int = 8,
        n_experts: int = 4,
        expert_dim: int = 8,
        tasks: Sequence[str] = ("ctr", "cvr"),
        gate_modes: Mapping[str, str] | None = None,
        *,
        task_types: Sequence[str] | None = None,
        dead_experts: Sequence[int] = (),
        inactive_experts: Sequence[int] = (),
        redundant_experts: tuple[int, int] | None = None,
        hidden: int = 16,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.task_names = tuple(tasks)
        self.task_types = list(task_types) if task_types is not None else ["binary"] * len(self.task_names)
        if len(self.task_types) != len(self.task_names):
            raise ValueError("task_types must have one entry per task")
        modes = dict(gate_modes or {})
        unknown = set(modes) - set(self.task_names)
        if unknown:
            raise ValueError(f"gate_modes names unknown tasks {sorted(unknown)}")
        self.gate_modes = {t: modes.get(t, "learned") for t in self.task_names}
        self.n_features, self.n_experts = n_features, n_experts
        self.dead_experts = tuple(sorted(set(dead_experts)))
        self.inactive_experts = tuple(sorted(set(inactive_experts)))
        self.redundant_experts = redundant_experts
        for e in (*self.dead_experts, *self.inactive_experts, *(redundant_experts or ())):
            if not 0 <= e < n_experts:
                raise ValueError(f"expert index {e} out of range for {n_experts} experts")
        self.live = [e for e in range(n_experts) if e not in self.dead_experts]
        if not self.live:
            raise ValueError("at least one expert must be alive")
        with _seeded(seed):
            self.experts = nn.ModuleList(_expert(n_features, hidden, expert_dim) for _ in range(n_experts))
            self.gates = nn.ModuleDict(
                {
                    t: nn.Sequential(nn.Linear(n_features, n_experts), nn.Softmax(dim=1))
                    for t in self.task_names
                }
            )
            self.towers = nn.ModuleList(_tower(expert_dim, 8) for _ in self.task_names)
            polar = torch.randn(len(self.task_names), n_experts, n_features)
        with torch.no_grad():
            self._plant_experts()
            for i, t in enumerate(self.task_names):
                if not self.gate_modes[t].startswith("copy:"):
                    self._plant_gate(t, polar[i])
            self._copy_gates()

    # ---------------------------------------------------------------- planting
    def _plant_experts(self) -> None:
        for e in self.inactive_experts:
            last = self.experts[e][2]
            last.bias.fill_(-100.0)
        if self.redundant_experts is not None:
            i, j = self.redundant_experts
            self.experts[j].load_state_dict(self.experts[i].state_dict())

    def _plant_gate(self, task: str, polar: Tensor) -> None:
        mode = self.gate_modes[task]
        linear: nn.Linear = self.gates[task][0]  # type: ignore[index, assignment]
        w, b = linear.weight, linear.bias
        live = self.live
        if mode == "learned":
            pass
        elif mode == "collapsed" or mode.startswith("collapsed:"):
            k = int(mode.split(":", 1)[1]) if ":" in mode else live[0]
            if k not in live:
                raise ValueError(f"gate {task!r}: cannot collapse onto dead or missing expert {k}")
            w.zero_()
            b.fill_(DEAD_LOGIT)
            b[k] = 0.0
        elif mode == "uniform":
            w.zero_()
            b.zero_()
        elif mode == "constant":
            w.zero_()
            b.copy_(torch.tensor([-float(i) * math.log(2.0) for i in range(self.n_experts)]))
        elif mode == "specialized":
            if len(live) < 2:
                raise ValueError(f"gate {task!r}: 'specialized' needs at least two live experts")
            w.zero_()
            b.zero_()
            half = len(live) // 2
            for pos, e in enumerate(live):
                w[e, 0] = SPECIALIZED_SCALE if pos < half else -SPECIALIZED_SCALE
        elif mode == "polarized":
            w.copy_(polar * POLARIZED_SCALE / math.sqrt(self.n_features))
            b.zero_()
        else:
            raise ValueError(f"gate {task!r}: unknown mode {mode!r}; known: {', '.join(GATE_MODES)}")
        for e in self.dead_experts:
            w[e].zero_()
            b[e] = DEAD_LOGIT

    def _copy_gates(self) -> None:
        pending = {t: m.split(":", 1)[1] for t, m in self.gate_modes.items() if m.startswith("copy:")}
        while pending:
            progress = False
            for t, src in list(pending.items()):
                if src not in self.gate_modes:
                    raise ValueError(f"gate {t!r}: copy of unknown task {src!r}")
                if src in pending:
                    continue
                self.gates[t].load_state_dict(self.gates[src].state_dict())
                del pending[t]
                progress = True
            if not progress:
                raise ValueError(f"gate copies form a cycle: {pending}")

    # ---------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> Tensor:
        stacked = torch.stack([e(x) for e in self.experts], dim=1)  # [batch, E, dim]
        outs = []
        for t, kind, tower in zip(self.task_names, self.task_types, self.towers, strict=True):
            g = self.gates[t](x)  # [batch, E]
            mix = torch.matmul(g.unsqueeze(1), stacked).squeeze(1)
            y = tower(mix)
            outs.append(torch.sigmoid(y) if kind == "binary" else y)
        return torch.cat(outs, dim=1)

    def gate_probs(self, x: Tensor) -> dict[str, Tensor]:
        """Each task's gate output `[batch, E]` on `x` (no grad)."""
        with torch.no_grad():
            return {t: self.gates[t](x) for t in self.task_names}

    def example_input(self, batch: int = 64, seed: int = 0) -> Tensor:
        return _dense_input(batch, self.n_features, seed)

    def topology(self) -> Topology:
        experts = tuple(ExpertSpec(f"experts.{i}", module=f"experts.{i}") for i in range(self.n_experts))
        ex = tuple(e.name for e in experts)
        gates = tuple(GateSpec(t, module=f"gates.{t}", experts=ex, task=t) for t in self.task_names)
        return Topology(
            _tasks(self.task_names, self.task_types, by_position=True), experts, gates, architecture="mmoe"
        )


# ---------------------------------------------------------------------------- OMoE, SB
class PlantedOMoE(nn.Module):
    """One-gate MoE: `gate` = Linear → Unflatten → Softmax(dim=1), probabilities `[batch, E, 1]`.

    The single mixture `(g * stacked).sum(1)` feeds every task's tower. Input `[batch, n_features]`;
    output `{task: [batch]}`.
    """

    def __init__(
        self,
        n_features: int = 8,
        n_experts: int = 3,
        expert_dim: int = 8,
        tasks: Sequence[str] = ("ctr", "cvr"),
        *,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.n_features, self.n_experts, self.task_list = n_features, n_experts, tuple(tasks)
        with _seeded(seed):
            self.experts = nn.ModuleList(_expert(n_features, 16, expert_dim) for _ in range(n_experts))
            self.gate = nn.Sequential(
                nn.Linear(n_features, n_experts), nn.Unflatten(1, (n_experts, 1)), nn.Softmax(dim=1)
            )
            self.towers = nn.ModuleDict({t: _tower(expert_dim, 8) for t in tasks})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        stacked = torch.stack([e(x) for e in self.experts], dim=1)
        mix = (self.gate(x) * stacked).sum(dim=1)
        return {t: torch.sigmoid(self.towers[t](mix)).squeeze(-1) for t in self.task_list}

    def example_input(self, batch: int = 64, seed: int = 0) -> Tensor:
        return _dense_input(batch, self.n_features, seed)

    def topology(self) -> Topology:
        experts = tuple(ExpertSpec(f"experts.{i}", module=f"experts.{i}") for i in range(self.n_experts))
        gate = GateSpec("shared", module="gate", experts=tuple(e.name for e in experts))
        return Topology(_tasks(self.task_list), experts, (gate,), architecture="omoe")


class PlantedSharedBottom(nn.Module):
    """Shared-Bottom: `bottom` MLP then one tower per task; no gates. Output `{task: [batch]}`."""

    def __init__(self, n_features: int = 8, tasks: Sequence[str] = ("ctr", "cvr"), *, seed: int = 0) -> None:
        super().__init__()
        self.n_features, self.task_list = n_features, tuple(tasks)
        with _seeded(seed):
            self.bottom = _expert(n_features, 16, 8)
            self.towers = nn.ModuleDict({t: _tower(8, 8) for t in tasks})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.bottom(x)
        return {t: torch.sigmoid(self.towers[t](h)).squeeze(-1) for t in self.task_list}

    def example_input(self, batch: int = 64, seed: int = 0) -> Tensor:
        return _dense_input(batch, self.n_features, seed)

    def topology(self) -> Topology:
        return Topology(_tasks(self.task_list), architecture="shared_bottom")
