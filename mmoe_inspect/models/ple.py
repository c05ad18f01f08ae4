"""Progressive Layered Extraction (Tang et al., RecSys 2020) and its one-level form CGC."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mmoe_inspect.data.schema import FeatureSpec
from mmoe_inspect.models._base import MultiTaskModel, moe_params, positive
from mmoe_inspect.models._layers import MLP, Gate, ModelInput, mix, stack_experts
from mmoe_inspect.models.config import TaskLike
from mmoe_inspect.topology.spec import ExpertSpec, GateSpec, Topology


class ExtractionLevel(nn.Module):
    """One PLE level: `specific.t.k` experts per task, `shared_experts.k`, `gates.t` per task over
    [task t's specific + shared] experts, and (non-final levels) `gate_shared` over all experts."""

    def __init__(
        self,
        in_dim: int,
        n_tasks: int,
        n_specific: int,
        n_shared: int,
        expert_hidden: Sequence[int],
        gate_hidden: Sequence[int],
        dropout: float,
        final: bool,
    ) -> None:
        super().__init__()

        def experts(n: int) -> nn.ModuleList:
            return nn.ModuleList(MLP(in_dim, expert_hidden, dropout) for _ in range(n))

        self.specific = nn.ModuleList(experts(n_specific) for _ in range(n_tasks))
        self.shared_experts = experts(n_shared)
        self.gates = nn.ModuleList(Gate(in_dim, n_specific + n_shared, gate_hidden) for _ in range(n_tasks))
        self.gate_shared = None if final else Gate(in_dim, n_tasks * n_specific + n_shared, gate_hidden)
        self.out_dim = expert_hidden[-1]

    def forward(
        self, task_inputs: Sequence[Tensor], shared_input: Tensor
    ) -> tuple[list[Tensor], Tensor | None]:
        """Task inputs and shared input `[batch, in_dim]` → task mixtures and shared mixture `[batch, dim]`."""
        shared = stack_experts(self.shared_experts, shared_input)
        specific = [stack_experts(ex, x) for ex, x in zip(self.specific, task_inputs, strict=True)]
        task_out = [
            mix(gate(x), torch.cat([own, shared], dim=1))
            for gate, own, x in zip(self.gates, specific, task_inputs, strict=True)
        ]
        if self.gate_shared is None:
            return task_out, None
        return task_out, mix(self.gate_shared(shared_input), torch.cat([*specific, shared], dim=1))


class PLE(MultiTaskModel):
    """Input → `levels.0..L-1` (each an `ExtractionLevel`) → task t's final mixture → `towers.t`.

    `n_experts` shared and `n_specific` task-specific experts per level; level l+1 reads level l's
    mixtures (task t's from its gate, the shared input from `gate_shared`).
    """

    architecture = "ple"

    def __init__(
        self,
        features: FeatureSpec | int,
        tasks: Sequence[TaskLike],
        *,
        n_experts: int = 2,
        n_specific: int = 1,
        n_levels: int = 2,
        expert_hidden: Sequence[int] = (64,),
        tower_hidden: Sequence[int] = (32,),
        gate_hidden: Sequence[int] = (),
        dropout: float = 0.0,
    ) -> None:
        params = moe_params(n_experts, expert_hidden, tower_hidden, gate_hidden, dropout)
        params["n_specific"] = positive(n_specific, "n_specific")
        n_levels = positive(n_levels, "n_levels")
        if self.architecture == "ple":  # CGC fixes one level and does not take n_levels
            params["n_levels"] = n_levels
        super().__init__(features, tasks, params)
        if "shared" in {t.name for t in self.tasks}:
            raise ValueError(
                "PLE/CGC reserve the name 'shared' for shared experts and gates; rename that task"
            )
        dims = [self.inputs.out_dim] + [params["expert_hidden"][-1]] * (n_levels - 1)
        self.levels = nn.ModuleList(
            ExtractionLevel(
                dim,
                len(self.tasks),
                params["n_specific"],
                params["n_experts"],
                params["expert_hidden"],
                params["gate_hidden"],
                params["dropout"],
                final=level == n_levels - 1,
            )
            for level, dim in enumerate(dims)
        )
        self._build_towers(params["expert_hidden"][-1], params["tower_hidden"], params["dropout"])

    def forward(self, x: ModelInput) -> dict[str, Tensor]:
        h = self.inputs(x)
        task_x: list[Tensor] = [h] * len(self.tasks)
        shared_x: Tensor | None = h
        for level in self.levels:
            task_x, shared_x = level(task_x, shared_x)
        return self._outputs(task_x)

    def topology(self) -> Topology:
        experts: list[ExpertSpec] = []
        gates: list[GateSpec] = []
        for lv, level in enumerate(self.levels):
            own = [
                [
                    ExpertSpec(f"L{lv}.{t.name}.{k}", f"levels.{lv}.specific.{i}.{k}", owner=t.name, level=lv)
                    for k in range(len(level.specific[i]))
                ]
                for i, t in enumerate(self.tasks)
            ]
            shared = [
                ExpertSpec(f"L{lv}.shared.{k}", f"levels.{lv}.shared_experts.{k}", level=lv)
                for k in range(len(level.shared_experts))
            ]
            experts += [e for task_experts in own for e in task_experts] + shared
            gates += [
                GateSpec(
                    f"L{lv}.{t.name}",
                    f"levels.{lv}.gates.{i}",
                    experts=tuple(e.name for e in own[i] + shared),
                    task=t.name,
                    level=lv,
                )
                for i, t in enumerate(self.tasks)
            ]
            if level.gate_shared is not None:
                everything = tuple(e.name for task_experts in own for e in task_experts) + tuple(
                    e.name for e in shared
                )
                gates.append(
                    GateSpec(f"L{lv}.shared", f"levels.{lv}.gate_shared", experts=everything, level=lv)
                )
        return self._declared(experts, gates)


class CGC(PLE):
    """Customized Gate Control: PLE with a single extraction level (no shared gate)."""

    architecture = "cgc"

    def __init__(
        self,
        features: FeatureSpec | int,
        tasks: Sequence[TaskLike],
        *,
        n_experts: int = 2,
        n_specific: int = 1,
        expert_hidden: Sequence[int] = (64,),
        tower_hidden: Sequence[int] = (32,),
        gate_hidden: Sequence[int] = (),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(
            features,
            tasks,
            n_experts=n_experts,
            n_specific=n_specific,
            n_levels=1,
            expert_hidden=expert_hidden,
            tower_hidden=tower_hidden,
            gate_hidden=gate_hidden,
            dropout=dropout,
        )
