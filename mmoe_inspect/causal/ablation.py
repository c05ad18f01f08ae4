"""Expert ablation: remove one expert from every gate that mixes it and re-evaluate every task.

Importance of expert e for task t = how much worse t's metric gets without e (positive = removing
it hurts): `intact - ablated` for AUC, `ablated - intact` for log loss, MSE and MAE, with a paired
interval on the same rows (DeLong / CLT, or a paired bootstrap: `Evaluation`). Two modes, see `interventions.Ablate`.

Significance is controlled across the table: one mode's ablation asks as many questions as it has cells
(every expert x task x metric), and on tasks where no expert matters 5% of them still exclude 0 by chance
(chance_healthy: 2 of 12 AUC cells). Each cell's two-sided p-value (`p_value`: the normal test behind its
analytic interval; with bootstrap intervals, the same test on the percentile interval's width, an
approximation) is adjusted with Holm's step-down method over the cells of one mode (`p_adjusted`), and
`significant` means adjusted p < 0.05. Holm, not Benjamini-Hochberg: the report reads each significant cell
as a claim ("removing e hurts t"), the collapse diagnosis and the sparse-gains table act on single cells, and
one false claim already misleads, so the family-wise error is the rate that matters; Holm holds it under any
dependence between cells (the cells of one expert share its ablated forward, those of one task its rows),
and real ablation effects are large next to their noise, so the power it gives up is small. Cells whose rows
are too few to tell (`too_few_labels`, `metrics.too_few_to_tell`) are not tested: p_adjusted NaN, never
significant. The lo/hi columns stay each cell's own (unadjusted) 95% interval.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mmoe_inspect.causal._engine import INTACT, PlannedVariant
from mmoe_inspect.causal.interventions import Ablate, AblationMode
from mmoe_inspect.causal.metrics import HIGHER_IS_BETTER, TASK_METRICS, Evaluation, too_few_to_tell
from mmoe_inspect.functional.evidence import holm_adjust, two_sided_p
from mmoe_inspect.topology.spec import Topology

__all__ = ["ABLATION_COLUMNS", "ablation_table", "ablation_variants", "importance_matrix", "primary_metric"]

ABLATION_MODES: tuple[str, ...] = ("renormalize", "zero")

ABLATION_COLUMNS = [
    "mode",
    "expert",
    "owner",
    "level",
    "task",
    "metric",
    "intact",
    "ablated",
    "importance",
    "lo",
    "hi",
    "significant",
    "p_value",
    "p_adjusted",
    "too_few_labels",
]

ALPHA = 0.05
"""Family-wise error rate of one mode's ablation table (Holm-adjusted p-values below it are significant)."""


def primary_metric(kind: str) -> str:
    """The metric importance matrices use by default: AUC (binary) or MSE (regression)."""
    return TASK_METRICS[kind][0]


def ablation_variants(
    topology: Topology, modes: Sequence[str] = ABLATION_MODES
) -> tuple[list[PlannedVariant], list[str]]:
    """One variant per (mode, expert mixed by some gate): the expert removed from ALL its gates; plus notes."""
    notes: list[str] = []
    unknown = [m for m in modes if m not in ABLATION_MODES]
    if unknown:
        raise ValueError(f"ablation modes must be among {', '.join(ABLATION_MODES)}, not {unknown}")
    logit_gates = [g.name for g in topology.gates if g.output == "logits"]
    if "zero" in modes and logit_gates:
        notes.append(
            f"'zero' ablation is exact only on probability gates; gate(s) {', '.join(logit_gates)} emit logits "
            "that the model softmaxes itself, which renormalizes, so there 'zero' equals 'renormalize'"
        )
    two_way = [g.name for g in topology.gates if g.two_way]
    if "zero" in modes and two_way:
        notes.append(
            f"gate(s) {', '.join(two_way)} blend two experts by one weight w per row ((1 - w) * x0 + w * x1), "
            "which cannot drop an expert's share without giving it to the other, so there 'zero' equals "
            "'renormalize' (the other expert takes the whole row)"
        )
    variants: list[PlannedVariant] = []
    for mode in modes:
        for e in topology.experts:
            gates = [g for g in topology.gates if e.name in g.experts]
            if not gates:
                continue
            edits = {}
            for g in gates:
                zero = mode == "zero" and g.output == "probs" and not g.two_way
                m: AblationMode = "zero" if zero else "renormalize"
                edits[g.name] = Ablate(tuple(x != e.name for x in g.experts), m)
                if g.n_experts == 1 and g.output == "logits":
                    notes.append(
                        f"gate {g.name!r} mixes only expert {e.name!r} and emits logits: removing it cannot be "
                        "expressed through its softmax, so that gate is unchanged in this ablation"
                    )
            variants.append(
                PlannedVariant(
                    ("ablation", mode, e.name),
                    edits,
                    {"mode": mode, "expert": e.name, "owner": e.owner, "level": e.level},
                )
            )
    return variants, notes


def ablation_table(ev: Evaluation, variants: Sequence[PlannedVariant]) -> pd.DataFrame:
    """Long table, one row per (mode, expert, labelled task, metric); columns `ABLATION_COLUMNS`.

    `p_value`: the cell's own two-sided p-value; `p_adjusted`: Holm-adjusted over the cells of its mode
    (NaN where the rows are too few to tell); `significant`: p_adjusted < `ALPHA` (module docstring)."""
    rows = []
    for v in variants:
        if v.key not in ev.keys:
            continue
        for task in ev.tasks:
            if ev.n_labelled(task.name) == 0:
                continue
            few = too_few_to_tell(ev, task.name)
            for metric in TASK_METRICS[task.kind]:
                delta, lo, hi = ev.compare(v.key, INTACT, task.name, metric)
                sign = -1.0 if HIGHER_IS_BETTER[metric] else 1.0
                imp, a, b = sign * delta, sign * lo, sign * hi
                lo_i, hi_i = min(a, b), max(a, b)
                rows.append(
                    {
                        "mode": v.meta["mode"],
                        "expert": v.meta["expert"],
                        "owner": v.meta["owner"],
                        "level": v.meta["level"],
                        "task": task.name,
                        "metric": metric,
                        "intact": ev.value(INTACT, task.name, metric),
                        "ablated": ev.value(v.key, task.name, metric),
                        "importance": imp,
                        "lo": lo_i,
                        "hi": hi_i,
                        "significant": False,
                        "p_value": two_sided_p(imp, lo_i, hi_i, ev.ci),
                        "p_adjusted": np.nan,
                        "too_few_labels": few,
                    }
                )
    table = pd.DataFrame(rows, columns=ABLATION_COLUMNS)
    if table.empty:
        return table
    for _, idx in table.groupby("mode", sort=False).groups.items():
        sub = table.loc[idx]
        tested = sub["p_value"].where(~sub["too_few_labels"].astype(bool))
        table.loc[idx, "p_adjusted"] = holm_adjust(tested.to_numpy(float))
    table["significant"] = (table["p_adjusted"] < ALPHA).fillna(False).astype(bool)
    return table


def importance_matrix(
    table: pd.DataFrame, mode: str = "renormalize", metric: str | None = None
) -> pd.DataFrame:
    """Task × expert importance from an ablation table (experts in table order).

    `metric=None` takes each task's primary metric (AUC for binary tasks, MSE for regression).
    """
    sub = table[table["mode"] == mode]
    if metric is not None:
        sub = sub[sub["metric"] == metric]
    else:
        primary = {m for kind in TASK_METRICS for m in TASK_METRICS[kind][:1]}
        sub = sub[sub["metric"].isin(primary)]
    experts = list(dict.fromkeys(sub["expert"]))
    tasks = list(dict.fromkeys(sub["task"]))
    return sub.pivot(index="task", columns="expert", values="importance").reindex(
        index=tasks, columns=experts
    )
