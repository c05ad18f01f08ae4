"""Sparse-target gains: did the sparse task (e.g. purchase, 1-3% positives) gain from multi-task training?

* Intrinsic (from the model alone): how much of the sparse task's ablation importance sits on experts
  that the dense tasks mostly use (shared-expert dependence), and what happens to it under gate
  counterfactuals (the dense task's gate, a uniform gate, its own mean gate).
* Extrinsic (against baselines on the same rows): the PLE paper's "MTL gain" = metric of the
  multi-task model minus the baseline's, sign flipped for lower-is-better metrics (so a positive gain
  always means the multi-task model is better), with a paired interval on the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from mmoe_inspect.binding import default_input_fn
from mmoe_inspect.causal._engine import INTACT, BaselineRun
from mmoe_inspect.causal.metrics import HIGHER_IS_BETTER, TASK_METRICS, Evaluation, too_few_to_tell
from mmoe_inspect.data.schema import FeatureSpec
from mmoe_inspect.functional.evidence import auc_verdict, class_counts
from mmoe_inspect.topology.spec import TaskSpec, Topology

__all__ = [
    "BASELINE_COLUMNS",
    "SPARSE_COLUMNS",
    "Baseline",
    "baseline_gain_table",
    "mtl_gain",
    "resolve_baselines",
    "sparse_gain_table",
    "sparse_tasks",
    "task_utilization",
]

BASELINE_COLUMNS = [
    "task",
    "positive_rate",
    "sparse",
    "n_labelled",
    "baseline",
    "metric",
    "model",
    "baseline_value",
    "gain",
    "lo",
    "hi",
    "significant",
    "too_few_labels",
    "baseline_lo",
    "baseline_hi",
    "baseline_at_chance",
    "baseline_too_few",
]
"""`significant`: the paired interval excludes 0 and the rows are enough to tell (`too_few_labels` False:
`metrics.too_few_to_tell`). `baseline_lo`, `baseline_hi`: the baseline's own interval on the same rows (AUC:
DeLong); `baseline_at_chance`, `baseline_too_few`: its AUC judged by the task table's rule
(`functional.evidence.auc_verdict`; False for other metrics)."""

SPARSE_COLUMNS = [
    "task",
    "positive_rate",
    "n_labelled",
    "auc",
    "importance_total",
    "shared_dependence",
    "dense_experts",
    "top_expert",
    "top_importance",
    "top_lo",
    "top_hi",
    "note",
    "uniform_change",
    "uniform_lo",
    "uniform_hi",
    "mean_gate_change",
    "mean_gate_lo",
    "mean_gate_hi",
    "swap_source",
    "swap_change",
    "swap_lo",
    "swap_hi",
]


@dataclass(frozen=True)
class Baseline:
    """A model to compare against, e.g. a single-task purchase model or a Shared-Bottom on the same data.

    `input_fn` turns a chunk of rows into its inputs (default: from `features`, else its `.config`);
    `tasks` names its outputs (default: its declared `topology()`'s tasks). Tasks are matched to the
    main model's tasks by name; a single-task baseline is compared on its one task only.
    """

    model: nn.Module
    input_fn: Callable[[pd.DataFrame], Any] | None = None
    features: FeatureSpec | None = None
    tasks: Sequence[str | TaskSpec] | None = None


def _as_baseline(value: Any, topology: Topology) -> Baseline:
    """A `Baseline`, a bare model, `(model, input_fn | FeatureSpec | None)`, or a function of the main
    model's task names returning one of these (a baseline that needs them, e.g. `LoadedModel.as_baseline`)."""
    if callable(value) and not isinstance(value, nn.Module | Baseline):
        value = value(list(topology.task_names))
    if isinstance(value, Baseline):
        return value
    if isinstance(value, nn.Module):
        return Baseline(value)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], nn.Module):
        model, how = value
        if how is None:
            return Baseline(model)
        if isinstance(how, FeatureSpec):
            return Baseline(model, features=how)
        if callable(how):
            return Baseline(model, input_fn=how)
    raise TypeError(
        "a baseline is a Baseline, an nn.Module, a (model, input_fn or FeatureSpec) pair, or a function "
        "of the main model's task names returning one, "
        f"not {type(value).__name__}"
    )


def resolve_baselines(
    baselines: Mapping[str, Any], topology: Topology
) -> tuple[list[BaselineRun], list[str]]:
    """Baselines ready to run: input functions, the data columns they read, their tasks matched by name."""
    main = {t.name: t for t in topology.tasks}
    runs, notes = [], []
    for name, value in baselines.items():
        b = _as_baseline(value, topology)
        if b.input_fn is not None:
            input_fn, spec = b.input_fn, b.features
        else:
            input_fn, spec = default_input_fn(b.model, b.features)
        if b.tasks is not None:
            specs = [
                t if isinstance(t, TaskSpec) else TaskSpec(t, kind=main[t].kind if t in main else "binary")
                for t in b.tasks
            ]
        else:
            declared = getattr(b.model, "topology", None)
            topo = declared() if callable(declared) else None
            if not isinstance(topo, Topology):
                raise TypeError(f"baseline {name!r} declares no topology: pass Baseline(..., tasks=[...])")
            specs = list(topo.tasks)
        matched = tuple(t for t in specs if t.name in main)
        if not matched:
            raise ValueError(
                f"baseline {name!r} predicts {[t.name for t in specs]}, none of the model's tasks "
                f"{list(main)}; tasks are matched by name"
            )
        extra = [t.name for t in specs if t.name not in main]
        if extra:
            notes.append(f"baseline {name!r}: output(s) {extra} match no task of the model and are ignored")
        runs.append(
            BaselineRun(
                name, b.model, input_fn, tuple(specs), tuple(spec.names) if spec is not None else None
            )
        )
    return runs, notes


def mtl_gain(model_value: float, baseline_value: float, metric: str) -> float:
    """PLE "MTL gain": model - baseline for higher-is-better metrics, baseline - model otherwise."""
    d = model_value - baseline_value
    return d if HIGHER_IS_BETTER[metric] else -d


def sparse_tasks(ev: Evaluation, threshold: float = 0.05) -> list[str]:
    """Binary tasks whose positive rate on the labelled rows is below `threshold`."""
    return [t.name for t in ev.tasks if t.kind == "binary" and ev.positive_rate(t.name) < threshold]


def baseline_gain_table(ev: Evaluation, baselines: Sequence[str], threshold: float = 0.05) -> pd.DataFrame:
    """One row per (task, baseline, metric) where the baseline predicts the task; columns `BASELINE_COLUMNS`."""
    sparse = set(sparse_tasks(ev, threshold))
    rows = []
    for task in ev.tasks:
        if ev.n_labelled(task.name) == 0:
            continue
        few = too_few_to_tell(ev, task.name)
        counts = class_counts(ev.n_labelled(task.name), ev.positive_rate(task.name))
        for name in baselines:
            key = ("baseline", name)
            for metric in TASK_METRICS[task.kind]:
                base = ev.value(key, task.name, metric)
                if math.isnan(base):
                    continue
                delta, lo, hi = ev.compare(INTACT, key, task.name, metric)
                if not HIGHER_IS_BETTER[metric]:
                    delta, lo, hi = -delta, -hi, -lo
                b_lo, b_hi = ev.interval(key, task.name, metric)
                b_chance, b_few = (
                    auc_verdict(base, b_lo, b_hi, *counts) if metric == "auc" else (False, False)
                )
                rows.append(
                    {
                        "task": task.name,
                        "positive_rate": ev.positive_rate(task.name),
                        "sparse": task.name in sparse,
                        "n_labelled": ev.n_labelled(task.name),
                        "baseline": name,
                        "metric": metric,
                        "model": ev.value(INTACT, task.name, metric),
                        "baseline_value": base,
                        "gain": delta,
                        "lo": lo,
                        "hi": hi,
                        "significant": bool(not few and (lo > 0 or hi < 0)),
                        "too_few_labels": few,
                        "baseline_lo": b_lo,
                        "baseline_hi": b_hi,
                        "baseline_at_chance": b_chance,
                        "baseline_too_few": b_few,
                    }
                )
    return pd.DataFrame(rows, columns=BASELINE_COLUMNS)


def task_utilization(topology: Topology, means: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per task, each expert's mean weight relative to uniform (`mean * E`, 1 = a uniform share).

    A task's own gates are used; a task without its own gate uses the shared gates (OMoE).
    """
    out: dict[str, dict[str, float]] = {}
    shared = [g for g in topology.gates if g.task is None]
    for t in topology.task_names:
        gates = topology.task_gates(t) or tuple(shared)
        rel: dict[str, float] = {}
        for g in gates:
            m = np.asarray(means[g.name], dtype=np.float64)
            for e, w in zip(g.experts, m * g.n_experts, strict=True):
                rel[e] = max(rel.get(e, 0.0), float(w))
        out[t] = rel
    return out


def sparse_gain_table(
    ev: Evaluation,
    topology: Topology,
    means: Mapping[str, np.ndarray],
    ablation: pd.DataFrame,
    counterfactuals: pd.DataFrame,
    threshold: float = 0.05,
) -> pd.DataFrame:
    """One row per sparse task: shared-expert dependence of its AUC importance and its gate counterfactuals.

    Only measured effects count: an expert's AUC importance (renormalize ablation) is used when it is
    significantly above 0 (removing the expert hurts the task; Holm-adjusted over the ablation table). `top_expert` is the one of
    largest such importance (`top_lo`, `top_hi`: its interval); `shared_dependence` = the share of the
    significant importance on `dense_experts`, the experts some dense task weights at least uniformly
    (`mean * E >= 1`). Without a significant importance both are empty (None / NaN: a top expert or a
    share read off noise would be invented) and `note` says why.
    Counterfactual changes are in AUC (counterfactual - intact); the swap uses the gate of the
    densest task whose gates mix the same experts.
    """
    sparse = sparse_tasks(ev, threshold)
    dense = [t.name for t in ev.tasks if t.name not in sparse and ev.n_labelled(t.name) > 0]
    util = task_utilization(topology, means) if means else {}
    dense_experts = sorted(
        {e for t in dense for e, w in util.get(t, {}).items() if w >= 1.0},
        key=[e.name for e in topology.experts].index,
    )
    rate = {t.name: ev.positive_rate(t.name) for t in ev.tasks}
    rows = []
    for task in sparse:
        row: dict[str, Any] = {c: math.nan for c in SPARSE_COLUMNS}
        row.update(
            task=task,
            positive_rate=rate[task],
            n_labelled=ev.n_labelled(task),
            auc=ev.value(INTACT, task, "auc"),
            dense_experts=", ".join(dense_experts),
            top_expert=None,
            note=None,
            swap_source=None,
        )
        imp = ablation[
            (ablation["task"] == task) & (ablation["metric"] == "auc") & (ablation["mode"] == "renormalize")
        ]
        if len(imp):
            row["importance_total"] = float(imp["importance"].clip(lower=0).sum())
            row.update(_top_expert(imp, dense_experts if dense else None))
        elif not topology.has_gates:
            row["note"] = f"no top expert or shared dependence: {_no_experts(topology)}"
        # OMoE: the sparse task reads the very mixture the dense tasks read, row by row (a note saying there
        # is no share at all already covers it)
        one_gate = bool(dense) and bool(
            _gates_of(topology, task) & {g for t in dense for g in _gates_of(topology, t)}
        )
        if one_gate and (not math.isnan(row["shared_dependence"]) or not row["note"]):
            row["shared_dependence"] = math.nan
            row["note"] = (
                "no shared dependence: one gate serves every task (a one-gate MoE), so the sparse task uses "
                "exactly the experts the dense tasks use, on every row; the share would measure nothing"
            )
        cf = counterfactuals[(counterfactuals["task"] == task) & (counterfactuals["metric"] == "auc")]
        for kind in ("uniform", "mean_gate"):
            hit = cf[(cf["counterfactual"] == kind) & (cf["gates"].isin(_gate_list(topology, task)))]
            if len(hit):
                r = hit.iloc[0]
                row[f"{kind}_change"], row[f"{kind}_lo"], row[f"{kind}_hi"] = r["change"], r["lo"], r["hi"]
        swaps = cf[cf["counterfactual"].str.startswith("gate_of:")]
        swaps = swaps[swaps["counterfactual"].str.slice(8).isin(dense)]
        if len(swaps):
            src = swaps["counterfactual"].str.slice(8)
            r = swaps.iloc[int(np.argmax([_rank(rate.get(s, math.nan)) for s in src]))]
            row["swap_source"] = r["counterfactual"][8:]
            row["swap_change"], row["swap_lo"], row["swap_hi"] = r["change"], r["lo"], r["hi"]
        rows.append(row)
    return pd.DataFrame(rows, columns=SPARSE_COLUMNS)


def _top_expert(imp: pd.DataFrame, dense_experts: Sequence[str] | None) -> dict[str, Any]:
    """`top_expert`, `top_importance`, `top_lo`, `top_hi`, `shared_dependence` and `note` of one sparse
    task from its AUC ablation rows (`expert`, `importance`, `lo`, `hi`); `dense_experts` None: no dense task.

    Only importances significantly above 0 count (`significant`: Holm-adjusted over the ablation table, on
    enough rows); with none, the expert and the share stay empty."""
    out: dict[str, Any] = {}
    value = imp["importance"].astype(float)
    if not value.notna().any():  # all NaN when the task's labels are one class (no AUC)
        out["note"] = "no AUC importance: the task's labels are one class"
        return out
    # significant after the ablation table's Holm adjustment (and enough rows), in the direction that hurts
    sig = imp[imp["significant"].astype(bool) & (value > 0)]
    if sig.empty and imp["too_few_labels"].astype(bool).all():
        out["note"] = (
            "no top expert or shared dependence: too few labelled rows of a class to tell any importance from noise"
        )
        return out
    if sig.empty:
        if (value.fillna(0) == 0).all():
            out["note"] = (
                "no top expert or shared dependence: removing any one expert leaves its AUC unchanged (every importance is 0)"
            )
        else:
            b = value.idxmax()
            lo, hi = float(imp.at[b, "lo"]), float(imp.at[b, "hi"])
            where = (
                "holds 0"
                if lo <= 0 <= hi
                else "not significant once adjusted for the table's many cells (Holm)"
                if lo > 0
                else "below 0: the task is better without it"
            )
            out["note"] = (
                f"no top expert or shared dependence: no expert's importance is significantly above 0 (largest: "
                f"{imp.at[b, 'expert']} {value[b]:.3f} [{lo:.3f}, {hi:.3f}], {where})"
            )
        return out
    best = sig["importance"].astype(float).idxmax()
    out.update(
        top_expert=imp.at[best, "expert"],
        top_importance=float(imp.at[best, "importance"]),
        top_lo=float(imp.at[best, "lo"]),
        top_hi=float(imp.at[best, "hi"]),
    )
    if dense_experts is not None:
        pos = sig["importance"].astype(float)
        out["shared_dependence"] = float(pos[sig["expert"].isin(dense_experts)].sum()) / float(pos.sum())
    return out


def _no_experts(topology: Topology) -> str:
    """Why a gate-less model has no expert to ablate, for a sparse task's note."""
    if topology.unresolved:
        return f"{topology.why_no_gates}, so no expert was ablated"
    return (
        "the model has no gates (Shared-Bottom or dense): every task reads the one shared bottom, so there is "
        "no expert to ablate"
    )


def _gates_of(topology: Topology, task: str) -> set[str]:
    """The gates whose mixture a task reads: its own, else the task-less (shared) gates (OMoE)."""
    own = topology.task_gates(task)
    return {g.name for g in (own or [g for g in topology.gates if g.task is None])}


def _gate_list(topology: Topology, task: str) -> list[str]:
    """The `gates` cell a task's own counterfactual carries (its gates, or each shared gate)."""
    own = topology.task_gates(task)
    if own:
        return [", ".join(g.name for g in own)]
    return [g.name for g in topology.gates if g.task is None]


def _rank(rate: float) -> float:
    return -1.0 if math.isnan(rate) else rate
