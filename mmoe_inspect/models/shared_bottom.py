"""Shared-Bottom: one shared MLP under a tower per task (no experts, no gates)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from mmoe_inspect.data.schema import FeatureSpec
from mmoe_inspect.models._base import MultiTaskModel, probability, widths
from mmoe_inspect.models._layers import MLP, ModelInput
from mmoe_inspect.models.config import TaskLike


class SharedBottom(MultiTaskModel):
    """Input → `bottom` MLP `[batch, bottom_hidden[-1]]` → one tower per task → `{task: [batch]}`."""

    architecture = "shared_bottom"

    def __init__(
        self,
        features: FeatureSpec | int,
        tasks: Sequence[TaskLike],
        *,
        bottom_hidden: Sequence[int] = (64,),
        tower_hidden: Sequence[int] = (32,),
        dropout: float = 0.0,
    ) -> None:
        params = {
            "bottom_hidden": widths(bottom_hidden, "bottom_hidden", allow_empty=False),
            "tower_hidden": widths(tower_hidden, "tower_hidden"),
            "dropout": probability(dropout, "dropout"),
        }
        super().__init__(features, tasks, params)
        self.bottom = MLP(self.inputs.out_dim, params["bottom_hidden"], params["dropout"])
        self._build_towers(self.bottom.out_dim, params["tower_hidden"], params["dropout"])

    def forward(self, x: ModelInput) -> dict[str, Tensor]:
        shared = self.bottom(self.inputs(x))
        return self._outputs([shared] * len(self.tasks))
