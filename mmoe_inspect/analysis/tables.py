"""Turn computed statistics (tensors) into the named pandas tables of an inspection."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch

from mmoe_inspect.functional import (
    effective_experts,
    gate_entropy,
    js_divergence,
    task_expert_mutual_information,
)
from mmoe_inspect.functional.evidence import MIN_REGRESSION_ROWS, R2_MARGIN, auc_verdict, class_counts
from mmoe_inspect.topology._tasks import untraced_gates
from mmoe_inspect.topology.spec import GateSpec, Topology
from mmoe_inspect.topology.spec import expert_slots as slots_of


def _f(x: Any) -> float:
    if isinstance(x, torch.Tensor):
        x = x.item()
    return float(x)


def _nan(_x: Any) -> float:
    return math.nan


def gate_groups(topology: Topology) -> list[tuple[GateSpec, ...]]:
    """Gates that mix the very same experts, compared pairwise: MMoE's task gates (a PLE level's task gates
    mix different expert sets). Gates whose task discovery could not tell (the path to the outputs was not
    differentiable: a `no_grad` or `detach` on the way, quantized layers) are compared too, named by
    their gate, and so are task-less gates where no gate over the same experts has a task (ESMM-style
    gates that each reach every output): two such gates that route alike are the same collapse of MMoE
    into a one-gate MoE. A shared gate beside task gates (a PLE level's) is not a task's gate."""
    unknown = untraced_gates(topology.notes)
    groups: dict[tuple[int, tuple[str, ...]], list[GateSpec]] = {}
    for g in topology.gates:
        groups.setdefault((g.level, g.experts), []).append(g)
    out = []
    for gates in groups.values():
        if any(g.task is not None for g in gates):
            gates = [g for g in gates if g.task is not None or g.name in unknown]
        if len(gates) >= 2:
            out.append(tuple(gates))
    return out


def gate_owner(g: GateSpec) -> str:
    """The task a gate routes for, or its own name when that task is unknown."""
    return g.task if g.task is not None else g.name


def distinct_owners(a: GateSpec, b: GateSpec) -> bool:
    """Whether two gates of a group serve different tasks, so comparing them compares two tasks' routing.
    A module run twice per forward (one MMoE layer applied to two inputs) gives each task two gates (`click`,
    `click#1`): those are one task's, never a pair of tasks."""
    return a.task is None or b.task is None or a.task != b.task


def call_index(group: Sequence[GateSpec]) -> dict[str, int]:
    """Which run of its layer each gate of a group belongs to (0-based), by gate name.

    A layer run k times per forward on different inputs (one MMoE applied to the user and to the item
    features) gives every task k gates over the same experts (`click`, `click#1`), each run mixing its own
    expert outputs. Discovery says which run a gate belongs to (`layer_call`, set where the gates' expert
    outputs differ). Without it (a spec file), runs are told only when every owner has the same number
    k >= 2 of gates: the declared module `call` when every gate has one, else the j-th gate of each owner
    (forward order) is run j. Anything else is one run (0): one gate module called once per task (a
    task embedding as input) has a `call` per task, yet all its calls mix one set of expert outputs and
    are the tasks' routing to compare."""
    if any(g.layer_call is not None for g in group):
        return {g.name: g.layer_call or 0 for g in group}
    counts = Counter(gate_owner(g) for g in group)
    if len(counts) < 2 or len(set(counts.values())) != 1 or next(iter(counts.values())) < 2:
        return {g.name: 0 for g in group}
    if all(g.call is not None for g in group):
        return {g.name: int(g.call) for g in group}  # type: ignore[arg-type]
    seen: Counter[str] = Counter()
    out = {}
    for g in group:
        out[g.name] = seen[gate_owner(g)]
        seen[gate_owner(g)] += 1
    return out


def compared_pairs(group: Sequence[GateSpec]) -> list[tuple[int, int]]:
    """Index pairs `(a, b)`, a < b, of a group's gates whose routing is compared: two tasks' gates
    (`distinct_owners`) of the same call. Gates of different calls of a layer run twice read different
    inputs (user half vs item half), so their per-row difference says nothing about the two tasks."""
    calls = call_index(group)
    return [
        (a, b)
        for a in range(len(group))
        for b in range(a + 1, len(group))
        if distinct_owners(group[a], group[b]) and calls[group[a].name] == calls[group[b].name]
    ]


def task_table(
    topology: Topology,
    outputs: Any | None,
    rows_seen: int | None = None,
    *,
    labels_ignored: bool = False,
    label_hints: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """One row per task; `n_rows` counts the rows with a finite prediction and, given `rows_seen` (rows
    inspected), `nonfinite_predictions` the rest: left out of the metrics, never silently. `labels_ignored`
    (the caller passed `labels=False`) adds that column, so no task is reported as unlabelled; `label_hints`
    (`{task: data column}` closest to a missing label column) adds a `label_hint` column when not empty."""
    rows = []
    for i, t in enumerate(topology.tasks):
        row: dict[str, Any] = {"task": t.name, "kind": t.kind, "label": t.label_column}
        if labels_ignored:
            row["labels_ignored"] = True
        if label_hints:
            row["label_hint"] = label_hints.get(t.name)
        if outputs is not None:
            # `.reshape(-1)`: torchmetrics' compute squeezes a one-task `[1]` state to 0-dim
            finite = _f(outputs.n.reshape(-1)[i])
            row["n_rows"] = finite
            if rows_seen is not None:
                row["nonfinite_predictions"] = float(rows_seen) - finite
            row.update(
                n_labelled=_f(outputs.n_labelled.reshape(-1)[i]),
                positive_rate=_f(outputs.label_mean.reshape(-1)[i]) if t.kind == "binary" else math.nan,
                label_mean=_f(outputs.label_mean.reshape(-1)[i]),
                mean_prediction=_f(outputs.mean_prediction.reshape(-1)[i]),
                std_prediction=_f(outputs.std_prediction.reshape(-1)[i]),
                mse=_f(outputs.mse.reshape(-1)[i]),
                # counted for binary tasks (probabilities); a regression output has no [0, 1] range
                predictions_outside_0_1=_f(outputs.out_of_range.reshape(-1)[i])
                if t.kind == "binary"
                else math.nan,
            )
            if t.kind == "binary":
                row.update(_binary_quality(outputs, i))
            else:
                row.update(_regression_quality(outputs, i))
        rows.append(row)
    return pd.DataFrame(rows)


def _se(outputs: Any, name: str, i: int) -> float:
    se = getattr(outputs, name, None)
    return math.nan if se is None else _f(se.reshape(-1)[i])


def _binary_quality(outputs: Any, i: int) -> dict[str, Any]:
    """Exact AUC with its 95% interval (DeLong's, from the per-value label counts; Hanley-McNeil's where a
    class has one row), log loss against the base rate's, the at-chance flag and `too_few_labels` (the
    labelled rows cannot tell whether the task ranks above chance: `functional.evidence.auc_verdict`, the rule
    the baseline gains use too)."""
    auc = _f(outputs.auc.reshape(-1)[i])
    rate = _f(outputs.label_mean.reshape(-1)[i])
    n = _f(outputs.n_labelled.reshape(-1)[i])
    n_pos, n_neg = class_counts(n, rate)
    se = _se(outputs, "auc_se", i)
    if math.isfinite(se) and not math.isnan(auc):
        lo, hi = max(0.0, auc - 1.959964 * se), min(1.0, auc + 1.959964 * se)
    else:
        lo, hi = auc_interval(auc, n_pos, n_neg) if n > 0 else (math.nan, math.nan)
    chance, few = auc_verdict(auc, lo, hi, n_pos, n_neg)
    base = base_rate_logloss(rate)
    logloss = _f(outputs.logloss.reshape(-1)[i])
    se = _f(outputs.logloss_vs_base_se.reshape(-1)[i]) if hasattr(outputs, "logloss_vs_base_se") else math.nan
    d_lo, d_hi = logloss - base - 1.959964 * se, logloss - base + 1.959964 * se
    return {
        "auc": auc,
        "auc_lo": lo,
        "auc_hi": hi,
        "auc_exact": bool(outputs.auc_exact.reshape(-1)[i]),
        "logloss": logloss,
        "base_rate_logloss": base,
        "at_chance": chance,
        "too_few_labels": bool(few),
        "beats_base_rate": None if math.isnan(logloss) or math.isnan(base) else bool(logloss < base),
        "logloss_vs_base_lo": d_lo,
        "logloss_vs_base_hi": d_hi,
        # the 95% paired interval of (row log loss - the base rate's) lies above 0: measurably worse than
        # predicting the base rate (`beats_base_rate` compares the two means only)
        "worse_than_base_rate": None if math.isnan(d_lo) else bool(d_lo > 0),
    }


def _regression_quality(outputs: Any, i: int) -> dict[str, Any]:
    """The labels' variance (the MSE of predicting their mean on the same rows), R² = 1 - MSE / variance,
    and whether the task beats that mean (None when it cannot be told: fewer than two labelled rows,
    or labels that never vary: a variance within float64 noise of E[y²], 1e-12 of it, is 0)."""
    var = _f(outputs.label_var.reshape(-1)[i])
    mean = _f(outputs.label_mean.reshape(-1)[i])
    if var <= 1e-12 * (var + mean * mean):  # constant labels: Σy²/n - (Σy/n)² leaves rounding (±1e-14)
        var = 0.0
    mse = _f(outputs.mse.reshape(-1)[i])
    n = _f(outputs.n_labelled.reshape(-1)[i])
    judged = n >= 2 and var > 0 and not math.isnan(mse)
    r2 = 1.0 - mse / var if judged else math.nan
    # the paired interval of mean((y - ŷ)² - (y - ȳ)²) = MSE - var, read as R² = -(MSE - var) / var
    half = 1.959964 * _se(outputs, "mse_vs_var_se", i) / var if judged else math.nan
    interval = math.isfinite(half)
    lo, hi = (r2 - half, r2 + half) if interval else (math.nan, math.nan)
    if interval:  # judged by the interval; on a handful of rows any interval holding 0 is too wide
        few = judged and lo <= 0 and (hi >= R2_MARGIN or (n < MIN_REGRESSION_ROWS and hi >= 0))
    else:  # no interval (one row, or labels whose mean dwarfs their spread: float64 cannot hold it)
        few = judged and n < MIN_REGRESSION_ROWS
    return {
        "label_var": var,
        "r2": r2,
        "r2_lo": lo,
        "r2_hi": hi,
        "too_few_labels": bool(few),
        # works: R² interval above 0 (without one: R² itself); no better: it holds 0 (or lies below) and
        # stays below R2_MARGIN
        "beats_label_mean": None if not judged or few else bool((lo if interval else r2) > 0),
    }


def auc_interval(auc: float, n_pos: float, n_neg: float, z: float = 1.959964) -> tuple[float, float]:
    """95% interval of an AUC from its value and class counts (Hanley & McNeil 1982), clipped to [0, 1].

    SE² = (A(1-A) + (n₊-1)(Q₁-A²) + (n₋-1)(Q₂-A²)) / (n₊ n₋), Q₁ = A/(2-A), Q₂ = 2A²/(1+A): needs no
    per-row predictions, so it exists for every streamed task.
    """
    if not (n_pos >= 1 and n_neg >= 1) or math.isnan(auc):
        return math.nan, math.nan
    a = auc
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    se = math.sqrt(max(var, 0.0))
    return max(0.0, a - z * se), min(1.0, a + z * se)


def base_rate_logloss(rate: float) -> float:
    """Log loss of predicting the positive rate for every row (the no-skill reference)."""
    if math.isnan(rate) or rate <= 0 or rate >= 1:
        return math.nan
    return -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))


def at_chance(auc: float, lo: float, hi: float) -> bool:
    """A binary task "at chance": the 95% interval of its exact AUC holds 0.5 (it ranks rows no better
    than a coin). A task that ranks rows but whose log loss is worse than predicting the base rate
    is not "at chance" but miscalibrated (`beats_base_rate` False, its own finding)."""
    if math.isnan(auc) or math.isnan(lo):
        return False
    return bool(lo <= 0.5 <= hi)


def expert_slots(topology: Topology, g: GateSpec) -> list[list[int]]:
    """The gate's slots grouped by the expert output they hold (`topology.spec.expert_slots`: the same tensor,
    or one module, or tied ones, on the same input; `nn.ModuleList([a, b, a, c])` mixing `a(x)` twice), in
    order of first slot; `[[0], [1], ...]` when every slot holds its own."""
    return slots_of(topology.experts, g)


def _merged(slots: list[list[int]], x: torch.Tensor) -> torch.Tensor:
    """Per-slot `x [E]` summed per expert module `[M]` (`expert_slots`)."""
    return torch.stack([x[idx].sum() for idx in slots])


def gate_tables(topology: Topology, summaries: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """`gate_metrics` (one row per gate) and `utilization` (gate x expert slot).

    Slots holding one expert output (`expert_slots`) count as one expert in the top expert's mean weight
    and top-1 share (what the collapse judgement reads) and in the effective number of experts: a gate that
    splits every row between two slots of one module on one input sends it all to that module."""
    metrics, util = [], []
    for g in topology.gates:
        s = summaries[g.name]
        slots = expert_slots(topology, g)
        mean = _merged(slots, s.mean.double())
        top1 = _merged(slots, s.top1_share.double())
        top = int(torch.argmax(mean))
        # entropies assume each row is a distribution; not so for sigmoid/scalar-mixture gates
        ent = _f if g.simplex else _nan
        merged = len(slots) < g.n_experts
        of_mean = gate_entropy(mean) if merged else s.entropy_of_mean
        metrics.append(
            {
                "gate": g.name,
                "task": g.task or "",
                "level": g.level,
                "n_experts": g.n_experts,
                "distinct_experts": len(slots),
                "simplex": g.simplex,
                "n_rows": _f(s.n),
                "mean_entropy": ent(s.entropy_mean),
                "normalized_entropy": ent(s.normalized_entropy),
                "entropy_of_mean": ent(of_mean),
                "effective_experts": ent(effective_experts(mean)) if merged else ent(s.effective_experts),
                "importance_cv2": _f(s.importance_cv2),
                "load_cv2": _f(s.load_cv2),
                "switch_balance": _f(s.switch_balance),
                "input_dependence": _f(s.input_dependence),
                "polarized_share": _f(s.polarized_share),
                "max_mean_weight": _f(mean[top]),
                "top_expert": g.experts[slots[top][0]],
                "top_expert_top1_share": _f(top1[top]),
                "nonfinite_rows": _f(s.nonfinite_rows),
                "not_normalized_rows": _f(s.not_normalized_rows),
                "zero_rows": _f(s.zero_rows),
                "top_expert_weight_share": _f(mean[top] / mean.sum()),
            }
        )
        for e, name in enumerate(g.experts):
            util.append(
                {
                    "gate": g.name,
                    "task": g.task or "",
                    "level": g.level,
                    "expert": name,
                    "mean": _f(s.mean[e]),
                    "std": _f(s.std[e]),
                    "top1_share": _f(s.top1_share[e]),
                }
            )
    return {"gate_metrics": pd.DataFrame(metrics), "utilization": pd.DataFrame(util)}


def divergence_tables(
    topology: Topology, summaries: Mapping[str, Any], pairs: Mapping[int, Any]
) -> dict[str, pd.DataFrame]:
    """`task_divergence`, `mutual_information` and `specialization` for each group of comparable task gates.

    A layer run several times per forward (`call_index`) is compared call by call: each call's gates form
    their own pairs, mutual-information row and specialization rows (its gates read one input)."""
    div, mi_rows, spec = [], [], []
    for gi, group in enumerate(gate_groups(topology)):
        pair = pairs.get(gi)
        means = torch.stack([summaries[g.name].mean.double() for g in group])  # [T, E]
        for a, b in compared_pairs(group):  # two tasks' gates of one call
            simplex = group[a].simplex and group[b].simplex  # JSD compares distributions
            div.append(
                {
                    "level": group[a].level,
                    "gate_a": group[a].name,
                    "gate_b": group[b].name,
                    "task_a": gate_owner(group[a]),
                    "task_b": gate_owner(group[b]),
                    "jsd_mean_gates": _f(js_divergence(means[a], means[b])) if simplex else math.nan,
                    "jsd_per_row": _f(pair.jsd[a, b]) if pair is not None and simplex else math.nan,
                    "tv_per_row": _f(pair.tv[a, b]) if pair is not None else math.nan,
                }
            )
        calls = call_index(group)
        for call in sorted(set(calls.values())):
            idx = [i for i, g in enumerate(group) if calls[g.name] == call]
            if len(idx) < 2:
                continue
            mi_rows.append(_mi_row([group[i] for i in idx], means[idx]))
            spec += _specialization_rows([group[i] for i in idx], means[idx])
    return {
        "task_divergence": pd.DataFrame(div),
        "mutual_information": pd.DataFrame(mi_rows),
        "specialization": pd.DataFrame(spec),
    }


def _mi_row(gates: Sequence[GateSpec], means: torch.Tensor) -> dict[str, Any]:
    """The `mutual_information` row of task gates over the same experts, mean weights `means [T, E]`."""
    mi = _f(task_expert_mutual_information(means))
    bound = math.log(min(len(gates), means.shape[1]))
    return {
        "level": gates[0].level,
        "gates": ", ".join(g.name for g in gates),
        "mutual_information": mi,
        "normalized": mi / bound if bound > 0 else math.nan,
    }


def _specialization_rows(gates: Sequence[GateSpec], means: torch.Tensor) -> list[dict[str, Any]]:
    """Per expert, the two task gates (of `gates`, mean weights `means [T, E]`) that weight it most."""
    rows = []
    for e, expert in enumerate(gates[0].experts):
        order = torch.argsort(means[:, e], descending=True)
        first, second = int(order[0]), int(order[1])
        w1, w2 = _f(means[first, e]), _f(means[second, e])
        rows.append(
            {
                "level": gates[0].level,
                "expert": expert,
                "top_task": gate_owner(gates[first]),
                "top_weight": w1,
                "second_task": gate_owner(gates[second]),
                "second_weight": w2,
                "ratio": w1 / w2 if w2 > 0 else math.inf,
            }
        )
    return rows


def label_routing_table(
    topology: Topology, summaries: Mapping[str, Any], label_names: Sequence[str]
) -> pd.DataFrame:
    rows = []
    if not label_names:
        return pd.DataFrame()
    for g in topology.gates:
        s = summaries[g.name]
        for li, label in enumerate(label_names):
            for e, expert in enumerate(g.experts):
                rows.append(
                    {
                        "gate": g.name,
                        "label": label,
                        "expert": expert,
                        "mean_positive": _f(s.label_pos_mean[li, e]),
                        "mean_negative": _f(s.label_neg_mean[li, e]),
                    }
                )
    return pd.DataFrame(rows)


def expert_tables(
    topology: Topology,
    summaries: Mapping[str, Any],
    expert_summary: Any | None,
    recorded: Sequence[str],
) -> dict[str, pd.DataFrame]:
    """`experts` (per expert) and `redundant_experts` (pairs on one level, linear CKA)."""
    rows = []
    index = {name: i for i, name in enumerate(recorded)}
    for e in topology.experts:
        weights, rel, top1 = [], [], []
        for g in topology.gates:
            if e.name in g.experts:
                s = summaries[g.name]
                # every slot holding its output (one module in two slots, tied weights, on one input) counts,
                # against the uniform share of the gate's distinct expert outputs; a module called on several
                # inputs holds several outputs: its busiest one
                slots = expert_slots(topology, g)
                ks = {k for k, name in enumerate(g.experts) if name == e.name}
                idx = max(
                    (group for group in slots if ks & set(group)),
                    key=lambda grp: float(s.mean.double()[grp].sum()),
                )
                w = _f(s.mean.double()[idx].sum())
                weights.append(w)
                rel.append(w * len(slots))
                top1.append(_f(s.top1_share.double()[idx].sum()))
        i = index.get(e.name)
        rows.append(
            {
                "expert": e.name,
                "module": e.module or "",
                "same_as": e.same_as or "",
                "owner": e.owner,
                "level": e.level,
                "n_gates": len(weights),
                "max_mean_weight": max(weights, default=math.nan),
                "max_relative_weight": max(rel, default=math.nan),
                "max_top1_share": max(top1, default=math.nan),
                "zero_fraction": _f(expert_summary.zero_fraction[i])
                if expert_summary is not None and i is not None
                else math.nan,
                "mean_output_norm": _f(expert_summary.mean_norm[i])
                if expert_summary is not None and i is not None
                else math.nan,
            }
        )
    pairs = []
    if expert_summary is not None:
        levels = {e.name: e.level for e in topology.experts}
        for a in range(len(recorded)):
            for b in range(a + 1, len(recorded)):
                if levels.get(recorded[a]) != levels.get(recorded[b]):
                    continue
                pairs.append(
                    {
                        "expert_a": recorded[a],
                        "expert_b": recorded[b],
                        "cka": _f(expert_summary.cka[a, b]),
                        "n_rows": _f(expert_summary.n_sampled),
                    }
                )
    return {"experts": pd.DataFrame(rows), "redundant_experts": pd.DataFrame(pairs)}
