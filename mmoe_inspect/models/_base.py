"""`MultiTaskModel`: what every reference model shares (input layer, towers, config, topology)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from mmoe_inspect.data.schema import FeatureSpec
from mmoe_inspect.models._layers import FeatureInput, Tower
from mmoe_inspect.models.config import ModelConfig, TaskLike, as_features, as_tasks
from mmoe_inspect.topology.spec import ExpertSpec, GateSpec, TaskSpec, Topology


class MultiTaskModel(nn.Module):
    """Base class: `inputs` (a `FeatureInput`), `towers` (one per task), `.config`, `.topology()`.

    Subclasses build the part between input and towers and return `{task name: tensor [batch]}`.

    Feature names: `features` is a `FeatureSpec` (its column names), or an int n meaning n dense inputs
    NAMED x0..x{n-1}: `MMoE(8, ...)` reads columns x0..x7. Those names are what `save_checkpoint`'s
    `eval_frame` and `mmoe-inspect report --data` must hold; to keep your own column names, pass
    `mmoe_inspect.FeatureSpec(dense=("d0", ..., "d7"))` instead of the int.
    """

    architecture: ClassVar[str] = ""

    def __init__(
        self, features: FeatureSpec | int, tasks: Sequence[TaskLike], params: dict[str, Any]
    ) -> None:
        super().__init__()
        self.config = ModelConfig(self.architecture, as_features(features), as_tasks(tasks), params)
        self.inputs = FeatureInput(self.config.features)

    @property
    def tasks(self) -> tuple[TaskSpec, ...]:
        return self.config.tasks

    @property
    def features(self) -> FeatureSpec:
        return self.config.features

    def _build_towers(self, in_dim: int, hidden: Sequence[int], dropout: float) -> None:
        self.towers = nn.ModuleList(Tower(in_dim, hidden, t.kind == "binary", dropout) for t in self.tasks)

    def _outputs(self, per_task: Sequence[Tensor]) -> dict[str, Tensor]:
        """Apply each task's tower to its `[batch, dim]` input → `{task: [batch]}`."""
        return {t.name: tower(x) for t, tower, x in zip(self.tasks, self.towers, per_task, strict=True)}

    def _declared(self, experts: Sequence[ExpertSpec] = (), gates: Sequence[GateSpec] = ()) -> Topology:
        return Topology(
            tasks=self.tasks,
            experts=tuple(experts),
            gates=tuple(gates),
            source="declared",
            architecture=self.architecture,
        )

    def topology(self) -> Topology:
        """Tasks, experts and gates of this model, with module paths from `named_modules()`."""
        return self._declared()


def moe_params(
    n_experts: int,
    expert_hidden: Sequence[int],
    tower_hidden: Sequence[int],
    gate_hidden: Sequence[int],
    dropout: float,
) -> dict[str, Any]:
    """Validated hyper-parameters shared by the expert models (OMoE, MMoE, PLE, CGC)."""
    return {
        "n_experts": positive(n_experts, "n_experts"),
        "expert_hidden": widths(expert_hidden, "expert_hidden", allow_empty=False),
        "tower_hidden": widths(tower_hidden, "tower_hidden"),
        "gate_hidden": widths(gate_hidden, "gate_hidden"),
        "dropout": probability(dropout, "dropout"),
    }


def widths(value: Sequence[int], name: str, *, allow_empty: bool = True) -> tuple[int, ...]:
    """Validate a list of layer widths and return it as a tuple of ints."""
    out = tuple(int(v) for v in value)
    if any(v < 1 for v in out) or (not out and not allow_empty):
        kind = "a list" if allow_empty else "a non-empty list"
        raise ValueError(f"{name} must be {kind} of positive ints, got {value!r}")
    return out


def positive(value: int, name: str) -> int:
    """Validate a count (experts, levels) and return it as an int."""
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def probability(value: float, name: str) -> float:
    """Validate a dropout rate in [0, 1)."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)
