"""Architecture registry: `build_model(config)` rebuilds a reference model from its `ModelConfig`."""

from __future__ import annotations

from mmoe_inspect.models._base import MultiTaskModel
from mmoe_inspect.models.config import ModelConfig
from mmoe_inspect.models.moe import MMoE, OMoE
from mmoe_inspect.models.ple import CGC, PLE
from mmoe_inspect.models.shared_bottom import SharedBottom

ARCHITECTURES: dict[str, type[MultiTaskModel]] = {
    cls.architecture: cls for cls in (SharedBottom, OMoE, MMoE, PLE, CGC)
}


def build_model(config: ModelConfig) -> MultiTaskModel:
    """A freshly initialized model of `config.architecture` with `config`'s features, tasks and params."""
    try:
        cls = ARCHITECTURES[config.architecture]
    except KeyError:
        raise ValueError(
            f"unknown architecture {config.architecture!r}; known: {', '.join(ARCHITECTURES)}"
        ) from None
    return cls(config.features, config.tasks, **dict(config.params))
