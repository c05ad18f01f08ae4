"""Mixtures over one pool of shared experts: OMoE (one gate for all tasks) and MMoE (a gate per task)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from mmoe_inspect.data.schema import FeatureSpec
from mmoe_inspect.models._base import MultiTaskModel, moe_params
from mmoe_inspect.models._layers import MLP, Gate, ModelInput, mix, stack_experts
from mmoe_inspect.models.config import TaskLike
from mmoe_inspect.topology.spec import ExpertSpec, GateSpec, Topology


class _SharedExperts(MultiTaskModel):
    """Input → `experts.0..E-1`, each an MLP `[batch, in_dim]` → `[batch, expert_hidden[-1]]`, plus towers."""

    def __init__(
        self,
        features: FeatureSpec | int,
        tasks: Sequence[TaskLike],
        *,
        n_experts: int = 4,
        expert_hidden: Sequence[int] = (64,),
        tower_hidden: Sequence[int] = (32,),
        gate_hidden: Sequence[int] = (),
        dropout: float = 0.0,
    ) -> None:
        params = moe_params(n_experts, expert_hidden, tower_hidden, gate_hidden, dropout)
        super().__init__(features, tasks, params)
        self.experts = nn.ModuleList(
            MLP(self.inputs.out_dim, params["expert_hidden"], params["dropout"])
            for _ in range(params["n_experts"])
        )
        self._build_gates()
        self._build_towers(params["expert_hidden"][-1], params["tower_hidden"], params["dropout"])

    def _build_gates(self) -> None:
        raise TypeError(f"{type(self).__name__} must define its gates")

    def _gate(self) -> Gate:
        """A softmax gate over all experts, reading the input `[batch, in_dim]`."""
        return Gate(self.inputs.out_dim, len(self.experts), self.config.params["gate_hidden"])

    def _expert_specs(self) -> list[ExpertSpec]:
        return [ExpertSpec(f"e{i}", module=f"experts.{i}") for i in range(len(self.experts))]


class OMoE(_SharedExperts):
    """One-gate MoE: `gate` `[batch, E]` mixes the experts once; every task's tower reads that mixture."""

    architecture = "omoe"

    def _build_gates(self) -> None:
        self.gate = self._gate()

    def forward(self, x: ModelInput) -> dict[str, Tensor]:
        h = self.inputs(x)
        mixture = mix(self.gate(h), stack_experts(self.experts, h))
        return self._outputs([mixture] * len(self.tasks))

    def topology(self) -> Topology:
        experts = self._expert_specs()
        gate = GateSpec("shared", module="gate", experts=tuple(e.name for e in experts), task=None)
        return self._declared(experts, [gate])


class MMoE(_SharedExperts):
    """Multi-gate MoE (Ma et al., KDD 2018): task i mixes the experts with its own `gates.i` `[batch, E]`.

    `MMoE(8, ("click", "purchase"))` takes 8 dense inputs named x0..x7 (a `FeatureSpec` names them
    otherwise; see `MultiTaskModel`).
    """

    architecture = "mmoe"

    def _build_gates(self) -> None:
        self.gates = nn.ModuleList(self._gate() for _ in self.tasks)

    def forward(self, x: ModelInput) -> dict[str, Tensor]:
        h = self.inputs(x)
        stacked = stack_experts(self.experts, h)
        return self._outputs([mix(gate(h), stacked) for gate in self.gates])

    def topology(self) -> Topology:
        experts = self._expert_specs()
        names = tuple(e.name for e in experts)
        gates = [
            GateSpec(t.name, module=f"gates.{i}", experts=names, task=t.name)
            for i, t in enumerate(self.tasks)
        ]
        return self._declared(experts, gates)
