"""`ModelConfig`: architecture name, features, tasks and hyper-parameters of a reference model.

It round-trips through plain JSON-safe dicts (`to_dict` / `from_dict`), which is how checkpoints
store it; `mmoe_inspect.models.build_model` turns it back into a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from mmoe_inspect.data.schema import FeatureSpec
from mmoe_inspect.topology.spec import TaskSpec

TaskLike = Union[TaskSpec, tuple[str, str], str]
"""A task as a `TaskSpec`, a `(name, kind)` pair, or a bare name (a binary task)."""


def as_features(features: FeatureSpec | int) -> FeatureSpec:
    """A `FeatureSpec`; an int n means n dense inputs named x0..x{n-1}."""
    if isinstance(features, FeatureSpec):
        return features
    if isinstance(features, int) and not isinstance(features, bool) and features > 0:
        return FeatureSpec.dense_only(features)
    raise TypeError(f"features must be a FeatureSpec or a positive int, not {features!r}")


def as_tasks(tasks: Sequence[TaskLike]) -> tuple[TaskSpec, ...]:
    """Normalize tasks to `TaskSpec`s whose `output` is the task name (the key of the model's output dict)."""
    if isinstance(tasks, (str, TaskSpec)):
        tasks = [tasks]
    out: list[TaskSpec] = []
    for t in tasks:
        if isinstance(t, str):
            spec = TaskSpec(t)
        elif isinstance(t, TaskSpec):
            spec = t
        elif isinstance(t, (tuple, list)) and len(t) == 2:
            spec = TaskSpec(str(t[0]), t[1])
        else:
            raise TypeError(f"a task is a TaskSpec, a (name, kind) pair or a name, not {t!r}")
        if spec.kind not in ("binary", "regression"):
            raise ValueError(f"task {spec.name!r}: kind must be 'binary' or 'regression', not {spec.kind!r}")
        out.append(
            TaskSpec(
                spec.name, spec.kind, output=spec.name, label=spec.label, probability=spec.kind == "binary"
            )
        )
    names = [t.name for t in out]
    if not names:
        raise ValueError("a multi-task model needs at least one task")
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique, got {names}")
    return tuple(out)


def task_to_dict(task: TaskSpec) -> dict[str, Any]:
    """JSON-safe dict of a `TaskSpec` (None fields left out)."""
    d = {"name": task.name, "kind": task.kind, "output": task.output, "label": task.label}
    return {k: v for k, v in d.items() if v is not None} | {"probability": bool(task.probability)}


def task_from_dict(data: Mapping[str, Any]) -> TaskSpec:
    return TaskSpec(**dict(data))


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a reference model: `architecture` ("mmoe", "ple", ...), features,
    tasks, and the constructor's remaining keyword arguments in `params` (ints, floats, int tuples)."""

    architecture: str
    features: FeatureSpec
    tasks: tuple[TaskSpec, ...]
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "features": self.features.to_dict(),
            "tasks": [task_to_dict(t) for t in self.tasks],
            "params": {k: list(v) if isinstance(v, tuple) else v for k, v in self.params.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        try:
            return cls(
                architecture=str(data["architecture"]),
                features=FeatureSpec.from_dict(data["features"]),
                tasks=tuple(task_from_dict(t) for t in data["tasks"]),
                params={k: tuple(v) if isinstance(v, list) else v for k, v in data.get("params", {}).items()},
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed model config: {exc!r}") from None
