"""Gate counterfactuals: does task-specific, input-dependent routing matter for each task?

For each task with its own gate(s), evaluate the task with:

* `gate_of:<other>`: the other task's intact gate output, row by row (only when the two tasks'
  gates mix the same experts on every level);
* `uniform`: 1/E on every expert, every row;
* `mean_gate`: its own mean gate (over a first pass on the leading rows), the same for every row.

A PLE task's gates on all levels are replaced together. A shared gate (OMoE's single gate, PLE's
non-final `gate_shared`) gets `uniform` and `mean_gate` too, reported for every task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from mmoe_inspect.causal._engine import INTACT, PlannedVariant
from mmoe_inspect.causal.interventions import Edit, Replace
from mmoe_inspect.causal.metrics import HIGHER_IS_BETTER, TASK_METRICS, Evaluation, too_few_to_tell
from mmoe_inspect.topology.spec import GateSpec, Topology

__all__ = ["COUNTERFACTUAL_COLUMNS", "counterfactual_table", "counterfactual_variants", "swappable"]

COUNTERFACTUAL_COLUMNS = [
    "task",
    "counterfactual",
    "gates",
    "metric",
    "intact",
    "value",
    "change",
    "lo",
    "hi",
    "significant",
    "worse",
]


def swappable(a: Sequence[GateSpec], b: Sequence[GateSpec]) -> bool:
    """Two tasks' gate lists (lowest level first) mix the same experts level by level."""
    return len(a) == len(b) > 0 and all(
        x.level == y.level and x.experts == y.experts for x, y in zip(a, b, strict=True)
    )


def counterfactual_variants(
    topology: Topology, means: Mapping[str, Sequence[float]] | None = None
) -> tuple[list[PlannedVariant], list[str]]:
    """Variants for every counterfactual (see the module docstring), plus notes; `means` are mean gates `[E]`."""
    notes: list[str] = []
    variants: list[PlannedVariant] = []
    names = topology.task_names

    def fixed(gates: Sequence[GateSpec], kind: str) -> dict[str, Edit]:
        if kind == "uniform":
            return {g.name: Replace(probs=(1.0 / g.n_experts,) * g.n_experts) for g in gates}
        assert means is not None
        return {g.name: Replace(probs=tuple(float(p) for p in means[g.name])) for g in gates}

    kinds = ("uniform", "mean_gate") if means is not None else ("uniform",)
    for t in names:
        own = topology.task_gates(t)
        if not own:
            continue
        scope = {"tasks": (t,), "gates": tuple(g.name for g in own)}
        for other in names:
            if other == t:
                continue
            theirs = topology.task_gates(other)
            if swappable(own, theirs):
                edits: dict[str, Edit] = {
                    g.name: Replace(source=s.name) for g, s in zip(own, theirs, strict=True)
                }
                variants.append(
                    PlannedVariant(
                        ("counterfactual", f"gate_of:{other}", t),
                        edits,
                        {**scope, "name": f"gate_of:{other}"},
                    )
                )
        for kind in kinds:
            variants.append(
                PlannedVariant(("counterfactual", kind, t), fixed(own, kind), {**scope, "name": kind})
            )
    for g in topology.gates:
        if g.task is None:
            scope = {"tasks": names, "gates": (g.name,)}
            for kind in kinds:
                variants.append(
                    PlannedVariant(
                        ("counterfactual", kind, g.name), fixed([g], kind), {**scope, "name": kind}
                    )
                )
    task_gated = [t for t in names if topology.task_gates(t)]
    if len(task_gated) > 1 and not any(v.meta["name"].startswith("gate_of:") for v in variants):
        notes.append(
            "no two tasks' gates mix the same experts (e.g. PLE task gates), so no gate swaps were run"
        )
    return variants, notes


def counterfactual_table(ev: Evaluation, variants: Sequence[PlannedVariant]) -> pd.DataFrame:
    """One row per (task, counterfactual, metric): `change` = counterfactual - intact with its paired CI.

    `worse` is True when the change makes the metric worse (lower AUC, higher loss); `significant` needs the
    interval to exclude 0 on enough rows (never with too few rows of a class: `metrics.too_few_to_tell`).
    """
    rows = []
    by_name = {t.name: t for t in ev.tasks}
    for v in variants:
        if v.key not in ev.keys:
            continue
        for name in v.meta["tasks"]:
            task = by_name[name]
            if ev.n_labelled(name) == 0:
                continue
            few = too_few_to_tell(ev, name)  # a handful of a class: the paired interval cannot tell
            for metric in TASK_METRICS[task.kind]:
                change, lo, hi = ev.compare(v.key, INTACT, name, metric)
                rows.append(
                    {
                        "task": name,
                        "counterfactual": v.meta["name"],
                        "gates": ", ".join(v.meta["gates"]),
                        "metric": metric,
                        "intact": ev.value(INTACT, name, metric),
                        "value": ev.value(v.key, name, metric),
                        "change": change,
                        "lo": lo,
                        "hi": hi,
                        "significant": bool(not few and (lo > 0 or hi < 0)),
                        "worse": bool(change < 0 if HIGHER_IS_BETTER[metric] else change > 0),
                    }
                )
    return pd.DataFrame(rows, columns=COUNTERFACTUAL_COLUMNS)
