"""The explicit description of a multi-task MoE model: tasks, experts, gates.

A `Topology` says which module is which gate (and over which experts, for which task), which modules
are experts, and where each task's prediction sits in the model output. Reference models declare
theirs; unknown models get one from discovery; users can write or edit one as a TOML spec file.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

TaskKind = Literal["binary", "regression"]
GateOutput = Literal["probs", "logits"]

SPEC_VERSION = 1


class TopologyError(ValueError):
    """A topology (declared, discovered or read from a spec file) is inconsistent or does not fit the model."""


@dataclass(frozen=True)
class TaskSpec:
    """One prediction target.

    `output` locates the prediction in the model's output: a dict key, a column index of a
    `[batch, n_tasks]` tensor, or a position in a list/tuple. `label` is the data column holding
    the target (defaults to the task name). `probability` says whether the output is already a
    probability (binary tasks of both real libraries and our models) rather than a logit.
    """

    name: str
    kind: TaskKind = "binary"
    output: str | int | None = None
    label: str | None = None
    probability: bool = True

    @property
    def label_column(self) -> str:
        return self.label if self.label is not None else self.name


@dataclass(frozen=True)
class ExpertSpec:
    """One expert network.

    `module` is the module path whose forward output is this expert's output `[batch, dim]`; for
    models whose experts are one module emitting `[batch, n_experts, dim]`, `index` selects the slice
    along dim 1. `module=None` means the expert is computed inline (no hookable output).
    `owner` is "shared" or the task name of a task-specific expert (PLE/CGC).
    """

    name: str
    module: str | None = None
    index: int | None = None
    owner: str = "shared"
    level: int = 0


@dataclass(frozen=True)
class GateSpec:
    """One gate: a distribution over `experts` (names, in the gate's column order).

    `module` is the module whose forward output is the gate: probabilities (`output="probs"`) or
    logits that the model softmaxes afterwards (`output="logits"`, e.g. DeepCTR-Torch's
    `gate_dnn_final_layer`). `dim` is the expert axis of that output (`[batch, E]` or
    `[batch, E, 1]` both use 1). `call` picks one call when the module runs several times per
    forward (0-based); None means every call of the module is this gate (it must run once).
    `task` is the task served; None for a shared gate (PLE non-final levels, OMoE's single gate).
    """

    name: str
    module: str
    experts: tuple[str, ...]
    task: str | None = None
    level: int = 0
    output: GateOutput = "probs"
    dim: int = 1
    call: int | None = None

    @property
    def n_experts(self) -> int:
        return len(self.experts)


@dataclass(frozen=True)
class Topology:
    """Tasks, experts and gates of one model, plus where this description came from and how sure it is."""

    tasks: tuple[TaskSpec, ...]
    experts: tuple[ExpertSpec, ...] = ()
    gates: tuple[GateSpec, ...] = ()
    source: str = "declared"
    confidence: float = 1.0
    notes: tuple[str, ...] = field(default_factory=tuple)
    architecture: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------- queries
    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    @property
    def has_gates(self) -> bool:
        return len(self.gates) > 0

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)

    def gate(self, name: str) -> GateSpec:
        for g in self.gates:
            if g.name == name:
                return g
        raise KeyError(name)

    def expert(self, name: str) -> ExpertSpec:
        for e in self.experts:
            if e.name == name:
                return e
        raise KeyError(name)

    def task_gates(self, task: str) -> tuple[GateSpec, ...]:
        """Gates serving `task`, lowest level first."""
        return tuple(sorted((g for g in self.gates if g.task == task), key=lambda g: g.level))

    def final_task_gates(self) -> dict[str, GateSpec]:
        """For each task, its gate on the highest level (the one whose mixture feeds the tower)."""
        out: dict[str, GateSpec] = {}
        for t in self.tasks:
            gates = self.task_gates(t.name)
            if gates:
                out[t.name] = gates[-1]
        return out

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(sorted({g.level for g in self.gates}))

    # ------------------------------------------------------------- validation
    def validate(self) -> None:
        names = [t.name for t in self.tasks]
        if not names:
            raise TopologyError("a topology needs at least one task")
        _unique("task", names)
        _unique("expert", [e.name for e in self.experts])
        _unique("gate", [g.name for g in self.gates])
        known_experts = {e.name for e in self.experts}
        for g in self.gates:
            if len(g.experts) < 1:
                raise TopologyError(f"gate {g.name!r} mixes no experts")
            missing = [e for e in g.experts if e not in known_experts]
            if missing:
                raise TopologyError(f"gate {g.name!r} names unknown experts {missing}")
            if g.task is not None and g.task not in names:
                raise TopologyError(f"gate {g.name!r} serves unknown task {g.task!r}")
            if g.output not in ("probs", "logits"):
                raise TopologyError(f"gate {g.name!r}: output must be 'probs' or 'logits', not {g.output!r}")
        for e in self.experts:
            if e.owner != "shared" and e.owner not in names:
                raise TopologyError(f"expert {e.name!r} is owned by unknown task {e.owner!r}")
        for t in self.tasks:
            if t.kind not in ("binary", "regression"):
                raise TopologyError(f"task {t.name!r}: kind must be 'binary' or 'regression', not {t.kind!r}")

    # ------------------------------------------------------------ (de)serialize
    def to_dict(self) -> dict[str, Any]:
        """Plain, TOML/JSON-friendly dict (None values dropped)."""

        def clean(d: dict[str, Any]) -> dict[str, Any]:
            return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if v is not None}

        return {
            "version": SPEC_VERSION,
            "source": self.source,
            "confidence": float(self.confidence),
            "architecture": self.architecture or "",
            "notes": list(self.notes),
            "tasks": [clean(asdict(t)) for t in self.tasks],
            "experts": [clean(asdict(e)) for e in self.experts],
            "gates": [clean(asdict(g)) for g in self.gates],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Topology:
        version = data.get("version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise TopologyError(
                f"spec version {version} is not supported (this mmoe-inspect reads version {SPEC_VERSION})"
            )
        try:
            tasks = tuple(TaskSpec(**t) for t in data.get("tasks", []))
            experts = tuple(ExpertSpec(**e) for e in data.get("experts", []))
            gates = tuple(
                GateSpec(**{**g, "experts": tuple(g.get("experts", ()))}) for g in data.get("gates", [])
            )
        except TypeError as exc:  # unknown or missing keys
            raise TopologyError(f"malformed topology spec: {exc}") from None
        return cls(
            tasks=tasks,
            experts=experts,
            gates=gates,
            source=data.get("source", "spec"),
            confidence=_number(data.get("confidence", 1.0), "confidence"),
            notes=_texts(data.get("notes", ()), "notes"),
            architecture=data.get("architecture") or None,
        )

    def to_toml(self) -> str:
        import tomli_w

        header = (
            "# mmoe-inspect topology spec. Edit module paths, expert lists or tasks if discovery got them\n"
            "# wrong, then pass this file with --spec. Gate `output` is 'probs' or 'logits'; `dim` is the\n"
            "# expert axis; `call` picks one call of a module that runs several times per forward.\n"
        )
        return header + tomli_w.dumps(self.to_dict())

    @classmethod
    def from_toml(cls, text: str) -> Topology:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise TopologyError(f"spec file is not valid TOML: {exc}") from None
        except RecursionError:
            raise TopologyError("spec file is nested too deeply to be a topology spec") from None
        try:
            return replace(cls.from_dict(data), source="spec")
        except TopologyError:
            raise
        except (
            TypeError,
            ValueError,
            KeyError,
            AttributeError,
            IndexError,
            OverflowError,
            RecursionError,
        ) as exc:
            raise TopologyError(
                f"spec file has a field of the wrong type or value: {type(exc).__name__}: {exc}"
            ) from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_toml(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Topology:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise TopologyError(
                f"spec file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
            ) from None
        return cls.from_toml(text)

    def describe(self) -> str:
        """A few human lines: what was found and how sure."""
        lines = [
            f"source: {self.source} (confidence {self.confidence:.2f})"
            + (f", architecture: {self.architecture}" if self.architecture else ""),
            "tasks: " + ", ".join(f"{t.name} ({t.kind})" for t in self.tasks),
            f"experts: {len(self.experts)}",
        ]
        if not self.gates:
            lines.append("gates: none (no routing to inspect; task outputs are still reported)")
        for g in self.gates:
            served = g.task if g.task is not None else "shared"
            lines.append(
                f"gate {g.name}: module {g.module} ({g.output}), level {g.level}, serves {served}, "
                f"{g.n_experts} experts [{', '.join(g.experts)}]"
            )
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _unique(kind: str, names: list[str]) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise TopologyError(f"duplicate {kind} name {n!r}")
        seen.add(n)


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TopologyError(f"spec field {what} must be a number, not {type(value).__name__}")
    return float(value)


def _texts(value: object, what: str) -> tuple[str, ...]:
    if (
        isinstance(value, str)
        or not isinstance(value, list | tuple)
        or not all(isinstance(v, str) for v in value)
    ):
        raise TopologyError(f"spec field {what} must be a list of strings")
    return tuple(value)
