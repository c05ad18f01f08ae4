"""Diagnoses: named findings with severity, evidence numbers and a remedy in plain words.

Each check reads the tables of an inspection (pure pandas, no model access), so it can run on a
saved `metrics.json` as well as on a fresh result. Thresholds are documented defaults in
`Thresholds`; every one is configurable.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import pandas as pd

from mmoe_inspect._validate import check_number
from mmoe_inspect.functional.evidence import auc_inverted, class_counts

from . import codes
from ._nonfinite import nonfinite_prediction_findings
from .codes import SEVERITY_ORDER, TASK_QUALITY_CODES, Severity
from .finding import Finding

__all__ = [
    "SEVERITY_ORDER",
    "TASK_QUALITY_CODES",
    "Finding",
    "Severity",
    "Thresholds",
    "diagnose",
    "routing_findings",
]


@dataclass(frozen=True)
class Thresholds:
    """Defaults for every diagnosis; every one is a share, ratio or total variation in [0, 1].

    collapsed: one expert has mean weight >= `collapse_weight` AND is top-1 for >= `collapse_top1` of rows; on a
    "weights" gate (sigmoid: weights need not sum to 1) it must also hold >= `collapse_weight` of the gate's total
    weight (all experts at ~0.95 is no collapse). When some rows get no expert (a top-1 router's overflow dropped
    by capacity) both are judged on the rows that get one (mean weight and top-1 share x n / routed rows), so the
    verdict moves continuously with the number of masked rows.
    rows without expert: share of a gate's rows whose weights are all 0 >= `no_expert_critical` (critical),
    >= `no_expert_warning` (warning), >= `no_expert_info` (info: a capacity-limited router drops a few rows by
    design).
    uniform: mean per-row entropy / log E >= `uniform_entropy`.
    input-independent: input dependence (Σ Var(g_e) / (1 - Σ mean_e²)) < `input_dependence_min`.
    identical routing: mean per-row total variation between two task gates < `identical_tv`.
    mildly different (info): mean per-row TV < `mild_tv`.
    dead expert: every gate's mean weight on it < `dead_relative` / E and top-1 share < `dead_top1`.
    polarized: share of weights < 0.01 or >= 0.99 is >= `polarized_share`.
    redundant experts: linear CKA >= `redundant_cka`.
    inactive expert: share of exactly-zero activations >= `inactive_zero`.
    shared expert used by one task: one task holds >= `shared_single_task` of the task gates' weight on it.
    sparse task: positive rate < `sparse_rate`; it ignores its own experts when their total weight < `own_experts_min`.
    PLE task gate: ignores its task-specific experts when their total weight < `own_experts_min`, the shared
    experts when theirs < `shared_experts_min`.
    """

    collapse_weight: float = 0.9
    collapse_top1: float = 0.9
    uniform_entropy: float = 0.97
    input_dependence_min: float = 0.02
    identical_tv: float = 0.05
    mild_tv: float = 0.2
    dead_relative: float = 0.1
    dead_top1: float = 0.01
    polarized_share: float = 0.9
    redundant_cka: float = 0.95
    inactive_zero: float = 0.9
    shared_single_task: float = 0.9
    sparse_rate: float = 0.05
    own_experts_min: float = 0.1
    shared_experts_min: float = 0.1
    no_expert_info: float = 0.01
    no_expert_warning: float = 0.2
    no_expert_critical: float = 0.5

    def __post_init__(self) -> None:
        """Every threshold is a share, ratio or total variation: a number in [0, 1] (ValueError naming it)."""
        for f in fields(self):
            check_number("Thresholds", f.name, getattr(self, f.name), low=0.0, high=1.0)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def routing_findings(findings: list[Finding]) -> list[Finding]:
    """The findings the routing verdict is about (task-quality findings left out)."""
    return [f for f in findings if f.code not in TASK_QUALITY_CODES]


def _num(x: Any) -> float:
    return float(x) if x is not None and not (isinstance(x, float) and math.isnan(x)) else float("nan")


def _hint(row: Any) -> str | None:
    """The data column a tasks-table row names as closest to its missing label column, if any."""
    hint = getattr(row, "label_hint", None)
    return hint if isinstance(hint, str) and hint else None


def diagnose(tables: dict[str, pd.DataFrame], thresholds: Thresholds | None = None) -> list[Finding]:
    """Run every check on an inspection's tables; findings ordered by severity, then subject."""
    th = thresholds or Thresholds()
    out: list[Finding] = []
    gm = tables.get("gate_metrics", pd.DataFrame())
    collapsed: set[str] = set()
    for row in gm.itertuples(index=False):
        out.extend(_gate_findings(row, th, collapsed))
    pairs = tables.get("task_divergence", pd.DataFrame())
    if not gm.empty and not pairs.empty:  # one expert: every gate is [1.0], routing is not a choice to judge
        single = set(gm.loc[gm["n_experts"] < 2, "gate"])
        pairs = pairs[~pairs["gate_a"].isin(single)]
    out.extend(_pair_findings(pairs, th, collapsed))
    out.extend(_expert_findings(tables, th))
    out.extend(_ple_findings(tables, th, collapsed))
    out.extend(_task_findings(tables.get("tasks", pd.DataFrame())))
    out.extend(nonfinite_prediction_findings(tables.get("tasks", pd.DataFrame())))
    out.sort(key=lambda f: (SEVERITY_ORDER[f.severity], f.code, f.subject))
    return out


def _gate_findings(row: Any, th: Thresholds, collapsed: set[str]) -> list[Finding]:
    res: list[Finding] = []
    gate = str(row.gate)
    n_e = int(row.n_experts)
    if row.nonfinite_rows > 0:
        res.append(
            Finding.of(
                codes.NONFINITE_GATE,
                gate,
                f"Gate {gate} produced non-finite weights on {int(row.nonfinite_rows)} rows; they are excluded "
                "from every statistic.",
                "Check the inputs of those rows for NaN/inf and the gate's logits for overflow (fp16).",
                {"nonfinite_rows": int(row.nonfinite_rows), "rows": int(row.n_rows)},
            )
        )
    if row.not_normalized_rows > 0 and getattr(row, "simplex", True):  # "weights" gates need not sum to 1
        res.append(
            Finding.of(
                codes.GATE_NOT_NORMALIZED,
                gate,
                f"On {int(row.not_normalized_rows)} of {int(row.n_rows)} rows gate {gate}'s weights do not sum "
                "to 1 (a sigmoid or sparse top-k gate?); shares and entropies treat them as given.",
                "If the gate is meant to be a softmax, check the spec's `output` (probs vs logits) and `dim`.",
                {"not_normalized_rows": int(row.not_normalized_rows)},
            )
        )
    distinct = _num(getattr(row, "distinct_experts", math.nan))
    if n_e >= 2 and distinct == 1:
        res.append(
            Finding.of(
                codes.ONE_EXPERT_MODULE,
                gate,
                f"Gate {gate}'s {n_e} expert slots all hold one output (one module on the same input): whatever "
                "weights it gives them, the mixture is that output, so its routing changes nothing and the model is a "
                "Shared-Bottom in disguise.",
                "Build the experts as separate modules (`nn.ModuleList(Expert() for _ in range(E))`, not "
                "`[expert] * E`), then retrain.",
                {"expert_slots": n_e, "distinct_modules": 1},
            )
        )
        return res
    if n_e < 2 or not row.n_rows > 0:  # one expert, or no finite row: nothing to judge the routing by
        return res
    zero = _num(getattr(row, "zero_rows", 0.0))
    zero = 0.0 if math.isnan(zero) else zero
    no_expert = zero / float(row.n_rows)
    if zero > 0 and no_expert >= th.no_expert_info:
        res.append(_no_expert_finding(row, gate, int(zero), no_expert, th))
    weight, top1 = _num(row.max_mean_weight), _num(row.top_expert_top1_share)
    routed = float(row.n_rows) - zero
    # judged on the rows that got an expert (what the router chose for them) whenever some get none: the mean
    # weight and top-1 share over those rows (x n / routed) move continuously with the number of masked rows
    on_routed = zero > 0 and routed > 0
    if on_routed:
        top1 = top1 * float(row.n_rows) / routed
        weight = weight * float(row.n_rows) / routed
    share = weight
    if not bool(getattr(row, "simplex", True)):
        # a "weights" gate (sigmoid) need not sum to 1: a high mean weight is no collapse unless the top expert
        # also holds most of the weight (the others near 0); every expert at ~0.95 uses them all
        share = _num(getattr(row, "top_expert_weight_share", math.nan))
    if weight >= th.collapse_weight and share >= th.collapse_weight and top1 >= th.collapse_top1:
        collapsed.add(gate)
        of_rows = f"of the {int(routed)} rows that get an expert" if on_routed else "of rows"
        evidence: dict[str, float | str] = {
            "max_mean_weight": weight,
            "top_expert_weight_share": share,
            "top1_share": top1,
            "effective_experts": _num(row.effective_experts),
        }
        if zero > 0:
            evidence["no_expert_share"] = no_expert
        n_m = int(distinct) if math.isfinite(distinct) else n_e
        slots = (
            f" (its {n_e} slots hold {n_m} distinct expert outputs; slots of one output count as one expert)"
            if n_m < n_e
            else ""
        )
        res.append(
            Finding.of(
                codes.COLLAPSED_GATE,
                gate,
                f"Gate {gate} sends {share:.0%} of its weight to expert {row.top_expert}, which is "
                f"the top expert on {top1:.0%} {of_rows}: the other {n_m - 1} experts are "
                f"effectively unused by this gate{slots}.",
                "Add gate dropout (drop each expert with ~10% probability and renormalize, as in YouTube's "
                "ranker), a load-balancing loss, a softmax temperature, or a lower learning rate for the gate.",
                evidence,
            )
        )
        return res
    if row.normalized_entropy >= th.uniform_entropy:
        res.append(
            Finding.of(
                codes.UNIFORM_GATE,
                gate,
                f"Gate {gate} is almost uniform on every row (mean entropy {row.normalized_entropy:.1%} of "
                f"log {n_e}): it averages the experts instead of routing.",
                "Check that the gate sees informative inputs and can learn (initialization, learning rate, "
                "no frozen or zeroed gate weights); a lower softmax temperature sharpens routing.",
                {
                    "normalized_entropy": _num(row.normalized_entropy),
                    "input_dependence": _num(row.input_dependence),
                },
            )
        )
        return res
    if row.input_dependence < th.input_dependence_min:
        res.append(
            Finding.of(
                codes.INPUT_INDEPENDENT_GATE,
                gate,
                f"Gate {gate} gives nearly the same weights to every row (input dependence "
                f"{row.input_dependence:.3f}): the model is a fixed weighted average of experts for this task.",
                (
                    "Its weights do not change at all from row to row: the gate most likely reads no input (a "
                    "learned parameter or a constant, e.g. softmax(nn.Parameter)), so it cannot route row by row; "
                    "compute it from the input features if per-row routing is intended."
                    if row.input_dependence == 0
                    else "Feed the gate informative features (many gates read only the shared embedding), check "
                    "its bias is not dominating, or raise its learning rate."
                ),
                {
                    "input_dependence": _num(row.input_dependence),
                    "effective_experts": _num(row.effective_experts),
                },
            )
        )
    if row.polarized_share >= th.polarized_share:
        res.append(
            Finding.of(
                codes.POLARIZED_GATE,
                gate,
                f"{row.polarized_share:.0%} of gate {gate}'s weights are hard 0 or 1: each row uses one expert, "
                "and experts stop learning from rows they do not receive.",
                "Gate dropout (YouTube ranking, RecSys 2019: ~20% of runs polarized), a softmax temperature, a "
                "lower learning rate or entropy regularization on the gate.",
                {
                    "polarized_share": _num(row.polarized_share),
                    "effective_experts": _num(row.effective_experts),
                },
            )
        )
    return res


def _no_expert_finding(row: Any, gate: str, zero: int, share: float, th: Thresholds) -> Finding:
    """`rows_without_expert`: rows on which gate `gate` gives every expert weight 0 (critical from
    `no_expert_critical`, a warning from `no_expert_warning`, info below)."""
    task = f" (task {row.task})" if isinstance(row.task, str) and row.task else ""
    found = Finding.of(
        codes.ROWS_WITHOUT_EXPERT,
        gate,
        f"Gate {gate}{task} gives no expert any weight on {zero} of {int(row.n_rows)} rows ({share:.0%}): those "
        "rows get no expert's output (with capacity-limited top-1 routing, the overflow of an over-full expert "
        "is dropped and only a residual path, if any, carries them).",
        "Balance the router (a load-balancing auxiliary loss, router z-loss, noise), raise the capacity factor, "
        "or route dropped rows to their next choice; check masks that zero whole rows.",
        {"no_expert_share": share, "no_expert_rows": zero, "rows": int(row.n_rows)},
    )
    if share < th.no_expert_critical:
        found = replace(found, severity="warning" if share >= th.no_expert_warning else "info")
    return found


def _pair_findings(pairs: pd.DataFrame, th: Thresholds, collapsed: set[str]) -> list[Finding]:
    res: list[Finding] = []
    if pairs.empty:
        return res
    by_tasks = Counter(zip(pairs["task_a"], pairs["task_b"], strict=True))
    for row in pairs.itertuples(index=False):
        subject = f"{row.task_a} ~ {row.task_b}"
        if by_tasks[(row.task_a, row.task_b)] > 1:  # a layer run twice: each call's gates named apart
            subject = f"{row.gate_a} ~ {row.gate_b}"
        evidence = {
            "tv_per_row": _num(row.tv_per_row),
            "jsd_per_row": _num(row.jsd_per_row),
            "jsd_mean_gates": _num(row.jsd_mean_gates),
            "level": int(row.level),
        }
        if row.tv_per_row < th.identical_tv:
            both_collapsed = row.gate_a in collapsed and row.gate_b in collapsed
            level = pairs[pairs["level"] == row.level]
            others = level[level["tv_per_row"] >= th.identical_tv]["tv_per_row"]
            whole = (
                "the MMoE is behaving as a one-gate MoE"
                if others.empty
                else f"for these two tasks the MMoE is behaving as a one-gate MoE (other pairs of tasks route "
                f"differently: per-row total variation up to {others.max():.3f})"
            )
            res.append(
                Finding.of(
                    codes.TASKS_ROUTE_IDENTICALLY,
                    subject,
                    f"Tasks {row.task_a} and {row.task_b} use the same expert weights row by row (mean per-row "
                    f"total variation {row.tv_per_row:.3f}): their gates are one gate, and {whole}."
                    + (" Both gates are also collapsed." if both_collapsed else ""),
                    "Give the gates task-specific signal (task-specific inputs, separate gate learning rates), "
                    "or try PLE/CGC, whose task-specific experts force differentiation.",
                    evidence,
                )
            )
        elif row.tv_per_row < th.mild_tv:
            res.append(
                Finding.of(
                    codes.TASKS_ROUTE_SIMILARLY,
                    subject,
                    f"Tasks {row.task_a} and {row.task_b} route mostly alike (mean per-row total variation "
                    f"{row.tv_per_row:.3f}): healthy-but-shared, as most real MMoE models are.",
                    "No action needed unless these tasks are known to conflict (seesaw).",
                    evidence,
                )
            )
    return res


def _expert_findings(tables: dict[str, pd.DataFrame], th: Thresholds) -> list[Finding]:
    res: list[Finding] = []
    experts = tables.get("experts", pd.DataFrame())
    for row in experts.itertuples(index=False):
        if getattr(row, "same_as", ""):  # tied to an earlier expert: judged (and named) there
            continue
        if row.n_gates > 0 and (
            row.max_relative_weight < th.dead_relative and row.max_top1_share < th.dead_top1
        ):
            res.append(
                Finding.of(
                    codes.DEAD_EXPERT,
                    str(row.expert),
                    f"No gate gives expert {row.expert} meaningful weight (at most {row.max_mean_weight:.4f} mean "
                    f"weight, {row.max_relative_weight:.1%} of a uniform share): its parameters are wasted.",
                    "Re-initialize or remove it, or add a load-balancing loss / gate dropout so it gets traffic.",
                    {
                        "max_mean_weight": _num(row.max_mean_weight),
                        "max_relative_weight": _num(row.max_relative_weight),
                        "max_top1_share": _num(row.max_top1_share),
                    },
                )
            )
        zf = row.zero_fraction
        if not (isinstance(zf, float) and math.isnan(zf)) and zf >= th.inactive_zero:
            w = _num(getattr(row, "max_mean_weight", math.nan))
            weighted = (
                f"; yet a gate gives it {w:.0%} of its weight on average: that share of the task's mixture "
                "carries nothing and scales down what the other experts contribute, so it can matter a lot"
                if w >= 0.1
                else ": whatever weight gates give it, it contributes little"
            )
            res.append(
                Finding.of(
                    codes.INACTIVE_EXPERT,
                    str(row.expert),
                    f"Expert {row.expert}'s outputs are exactly zero for {zf:.0%} of its activations (dead ReLUs, "
                    f"as Kuaishou's HoME paper reports){weighted}.",
                    "Lower the learning rate, use LeakyReLU/GELU or normalization in experts, or re-initialize it.",
                    {"zero_fraction": _num(zf)},
                )
            )
    sim = tables.get("redundant_experts", pd.DataFrame())
    for row in sim.itertuples(index=False):
        if row.cka >= th.redundant_cka:
            res.append(
                Finding.of(
                    codes.REDUNDANT_EXPERTS,
                    f"{row.expert_a} ~ {row.expert_b}",
                    f"Experts {row.expert_a} and {row.expert_b} compute nearly the same function (linear CKA "
                    f"{row.cka:.3f} on {int(row.n_rows)} sampled rows).",
                    "Check the initialization (constant init trains experts identically); fewer experts may do.",
                    {"cka": _num(row.cka), "rows": int(row.n_rows)},
                )
            )
    return res


def _ple_findings(tables: dict[str, pd.DataFrame], th: Thresholds, collapsed: set[str]) -> list[Finding]:
    res: list[Finding] = []
    util = tables.get("utilization", pd.DataFrame())
    experts = tables.get("experts", pd.DataFrame())
    if util.empty or experts.empty:
        return res
    owners = dict(zip(experts["expert"], experts["owner"], strict=False))
    has_specific = any(o != "shared" for o in owners.values())
    if not has_specific:
        return res
    task_util = util[util["task"].notna() & (util["task"] != "")]
    # shared expert used by one task only
    shared_rows = task_util[task_util["expert"].map(owners) == "shared"]
    for (level, expert), grp in shared_rows.groupby(["level", "expert"]):
        total = float(grp["mean"].sum())
        if len(grp) < 2 or total <= 0:
            continue
        top = grp.loc[grp["mean"].idxmax()]
        share = float(top["mean"]) / total
        if share >= th.shared_single_task:
            res.append(
                Finding.of(
                    codes.SHARED_EXPERT_SINGLE_TASK,
                    str(expert),
                    f"Shared expert {expert} (level {level}) gets {share:.0%} of its task-gate weight from task "
                    f"{top['task']}: it has degraded into a task-specific expert.",
                    "Other tasks' gates may be starved of shared capacity; check their gate entropy, consider "
                    "gate dropout or fewer task-specific experts.",
                    {"share_of_top_task": share, "level": int(level)},
                )
            )
    # sparse task that ignores its own experts
    tasks = tables.get("tasks", pd.DataFrame())
    sparse_top: set[tuple[str, int]] = set()
    if tasks.empty or "positive_rate" not in tasks:
        tasks = pd.DataFrame()
    for trow in tasks.itertuples(index=False):
        rate = trow.positive_rate
        if rate is None or (isinstance(rate, float) and math.isnan(rate)) or rate >= th.sparse_rate:
            continue
        mine = task_util[task_util["task"] == trow.task]
        if mine.empty:
            continue
        top_level = mine["level"].max()
        mine = mine[mine["level"] == top_level]
        own = float(mine[mine["expert"].map(owners) == trow.task]["mean"].sum())
        if (mine["expert"].map(owners) == trow.task).any() and own < th.own_experts_min:
            sparse_top.add((str(trow.task), int(top_level)))
            res.append(
                Finding.of(
                    codes.SPARSE_TASK_IGNORES_OWN_EXPERTS,
                    str(trow.task),
                    f"Sparse task {trow.task} ({rate:.1%} positives) puts only {own:.0%} of its gate weight on its "
                    "task-specific experts and leans on shared ones (HoME's 'underfitting' pattern).",
                    "Its specific experts are undertrained: upweight the task's loss, or warm-start its experts.",
                    {"positive_rate": float(rate), "own_expert_weight": own},
                )
            )
    res.extend(_ple_gate_findings(task_util[~task_util["gate"].isin(collapsed)], owners, sparse_top, th))
    return res


def _ple_gate_findings(
    task_util: pd.DataFrame, owners: Mapping[str, str], sparse_top: set[tuple[str, int]], th: Thresholds
) -> list[Finding]:
    """A PLE/CGC task gate (over its own task-specific experts and shared ones) that ignores either side:
    its own (the task has turned its PLE into an MMoE over the shared experts; a sparse task's final gate
    is `sparse_task_ignores_own_experts`, listed in `sparse_top` as (task, level)), or the shared experts
    (the task learns alone on that level: no transfer from the other tasks). A collapsed gate is left out:
    `collapsed_gate` already says that it uses one expert only."""
    res: list[Finding] = []
    for (gate, task, level), rows in task_util.groupby(["gate", "task", "level"], sort=False):
        owner = rows["expert"].map(owners)
        if not ((owner == task).any() and (owner == "shared").any()):
            continue  # not a PLE task gate: it mixes no own experts beside shared ones
        own = float(rows.loc[owner == task, "mean"].sum())
        shared = float(rows.loc[owner == "shared", "mean"].sum())
        evidence = {"own_expert_weight": own, "shared_expert_weight": shared, "level": int(level)}
        if own < th.own_experts_min and (task, int(level)) not in sparse_top:
            res.append(
                Finding.of(
                    codes.TASK_IGNORES_OWN_EXPERTS,
                    str(gate),
                    f"Gate {gate} of task {task} puts only {own:.0%} of its weight on the task's own experts and "
                    f"{shared:.0%} on the shared ones: on level {level} the PLE has become an MMoE for {task}, its "
                    "specific experts are unused capacity.",
                    "Check that the task's specific experts learn (dead or inactive?); give them a warm start or "
                    "gate dropout on the shared experts, or drop them if the task needs none.",
                    evidence,
                )
            )
        if shared < th.shared_experts_min:
            res.append(
                Finding.of(
                    codes.TASK_IGNORES_SHARED_EXPERTS,
                    str(gate),
                    f"Gate {gate} of task {task} puts only {shared:.0%} of its weight on the shared experts and "
                    f"{own:.0%} on its own: on level {level} task {task} learns alone, nothing the other tasks "
                    "learn reaches it through this gate.",
                    "If the task should gain from the others (a sparse target), check its gate and loss weight, or "
                    "use gate dropout on its own experts; compare with a single-task model "
                    "(--baseline single=TASK_ONLY.pt).",
                    evidence,
                )
            )
    return res


def _task_findings(tasks: pd.DataFrame) -> list[Finding]:
    """Task quality: binary tasks at chance, in reverse or miscalibrated, regression tasks no better than
    their label mean, and tasks that cannot be judged (no labelled rows; binary labels all one class:
    the AUC is undefined, shown as "—", said why here)."""
    res: list[Finding] = []
    if tasks.empty or "positive_rate" not in tasks.columns:
        return res
    if "at_chance" in tasks.columns:
        res.extend(_at_chance_findings(tasks))
    if "beats_label_mean" in tasks.columns:
        res.extend(_regression_findings(tasks))
    for row in tasks.itertuples(index=False):
        rate, n_lab = _num(row.positive_rate), _num(row.n_labelled)
        if not n_lab > 0:
            finite = _num(getattr(row, "n_rows", math.nan))  # rows with a finite prediction
            # labels=False: not asked; no finite prediction: `nonfinite_predictions` says why, not the labels
            if not math.isnan(n_lab) and not getattr(row, "labels_ignored", False) and finite != 0:
                res.append(
                    Finding.of(
                        codes.TASK_UNLABELLED,
                        str(row.task),
                        f"Task {row.task} has no labelled row (its label column"
                        + (f" {label!r}" if (label := getattr(row, "label", None)) else "")
                        + " is missing or NaN on every row"
                        + (f"; the data has {hint!r}" if (hint := _hint(row)) else "")
                        + "): whether it works cannot be judged.",
                        f"Pass the label column (--labels {row.task}={hint})."
                        if hint
                        else "Pass the label column (--labels task=column) or inspect rows that hold its labels.",
                        {"n_labelled": 0},
                    )
                )
            continue
        if getattr(row, "too_few_labels", None) is True:
            res.append(_too_few(row))
            continue
        if row.kind != "binary":
            var = _num(getattr(row, "label_var", math.nan))
            if n_lab >= 2 and var == 0.0:
                value = _num(getattr(row, "label_mean", math.nan))
                res.append(
                    Finding.of(
                        codes.SINGLE_CLASS_LABELS,
                        str(row.task),
                        f"All {int(n_lab)} labelled rows of regression task {row.task} hold the same label "
                        f"({value:.6g}): its R² is undefined, so whether it works cannot be judged.",
                        "Inspect on rows whose labels vary, or check the label column mapping (--labels).",
                        {"label_mean": value, "n_labelled": int(n_lab)},
                    )
                )
            continue
        if rate not in (0.0, 1.0):
            continue
        cls = "positive" if rate == 1.0 else "negative"
        res.append(
            Finding.of(
                codes.SINGLE_CLASS_LABELS,
                str(row.task),
                f"All {int(n_lab)} labelled rows of task {row.task} are {cls}: its AUC (and AUC-based causal "
                "effects) is undefined and left blank, not zero.",
                "Inspect on rows that hold both classes (a larger or unsampled evaluation set), or check the "
                "label column mapping (--labels).",
                {"positive_rate": rate, "n_labelled": int(n_lab)},
            )
        )
    return res


def _too_few(row: Any) -> Finding:
    """`too_few_labels` for a tasks-table row: what its interval says, and how many rows it rests on."""
    n = int(_num(row.n_labelled))
    if row.kind == "binary":
        n_pos = round(n * _num(row.positive_rate))
        lo, hi, auc = _num(row.auc_lo), _num(row.auc_hi), _num(row.auc)
        # a zero-width interval (AUC 0 or 1 on a class of one row) is no interval, not certainty
        ci = f"95% interval {lo:.3f} to {hi:.3f}" if lo != hi else "no usable 95% interval"
        what = (
            f"its AUC {auc:.3f} ({ci}) rests on {n_pos:,} positive and {n - n_pos:,} negative labelled rows"
        )
        evidence: dict[str, float | str] = {"auc": auc, "auc_lo": lo, "auc_hi": hi, "n_positive": n_pos}
    else:
        lo, hi, r2 = _num(row.r2_lo), _num(row.r2_hi), _num(row.r2)
        what = f"its R² {r2:.3f} (95% interval {lo:.3f} to {hi:.3f}) rests on {n:,} labelled rows"
        evidence = {"r2": r2, "r2_lo": lo, "r2_hi": hi}
    return Finding.of(
        codes.TOO_FEW_LABELS,
        str(row.task),
        f"Task {row.task} cannot be judged: {what}, too few to tell whether it works.",
        "Inspect more labelled rows (a larger or unsampled evaluation set) before reading its quality; if the "
        "task should rank well on these rows, check which output feeds it and its label column (--labels).",
        {**evidence, "n_labelled": n},
    )


def constant_output(row: Mapping[str, Any]) -> bool:
    """A task row of the tasks table whose prediction never varies over its rows (a dead tower, a zeroed
    output layer): it can neither rank rows nor follow the labels."""
    std, n = _num(row.get("std_prediction")), _num(row.get("n_rows"))
    return n >= 2 and std == 0.0


def _constant_note(row: Mapping[str, Any]) -> str:
    if not constant_output(row):
        return ""
    return (
        f" Its output is constant ({_num(row.get('mean_prediction')):.4g} on every row): a dead tower, a "
        "zeroed output layer or a disconnected head."
    )


def _regression_findings(tasks: pd.DataFrame) -> list[Finding]:
    """Regression tasks whose MSE is no lower than their labels' variance (critical: R² <= 0)."""
    res: list[Finding] = []
    for r in tasks.to_dict(orient="records"):
        if r.get("kind") == "binary" or r.get("beats_label_mean") is not False:
            continue
        mse, var, r2 = _num(r.get("mse")), _num(r.get("label_var")), _num(r.get("r2"))
        res.append(
            Finding.of(
                codes.TASK_NO_BETTER_THAN_MEAN,
                str(r["task"]),
                f"Task {r['task']} predicts no better than the mean of its labels: MSE {mse:.4g} against "
                f"{var:.4g} for predicting the label mean on the same rows (R² {r2:.3f})."
                + _constant_note(r),
                "Check which model output feeds this task and the label's units and scale (a logit or a "
                "normalised target read against raw labels), then retrain; compare with a single-task model.",
                {"mse": mse, "label_var": var, "r2": r2},
            )
        )
    return res


def ranks_inverted(row: Mapping[str, Any]) -> bool:
    """A binary task row of the tasks table ranked in reverse (`functional.evidence.auc_inverted`): its exact AUC
    95% interval lies below 0.5, or, with fewer than `MIN_CLASS_ROWS` rows of a class, its AUC is below 0.5 and
    Mann-Whitney's test tells it from 0.5 (the rule `auc_verdict` judges `too_few_labels` by)."""
    if (
        row.get("kind") != "binary" or row.get("too_few_labels") is True
    ):  # (NaN in a frame without the column)
        return False
    counts = class_counts(_num(row.get("n_labelled")), _num(row.get("positive_rate")))
    if min(counts) < 1:  # counts unknown (an old table): the interval alone
        hi = _num(row.get("auc_hi"))
        return not math.isnan(hi) and hi < 0.5
    return auc_inverted(_num(row.get("auc")), _num(row.get("auc_hi")), *counts)


def _at_chance_findings(tasks: pd.DataFrame) -> list[Finding]:
    """Binary tasks whose exact AUC interval lies below 0.5 (critical: ranked in reverse) or holds 0.5
    (critical), or that rank rows but whose log loss is worse than predicting the base rate
    (warning: miscalibrated)."""
    res: list[Finding] = []
    for r in tasks.to_dict(orient="records"):
        if r.get("kind") != "binary":
            continue
        auc, lo, hi = _num(r.get("auc")), _num(r.get("auc_lo")), _num(r.get("auc_hi"))
        ll, base = _num(r.get("logloss")), _num(r.get("base_rate_logloss"))
        if ranks_inverted(r):
            res.append(
                Finding.of(
                    codes.TASK_RANKS_INVERTED,
                    str(r["task"]),
                    f"Task {r['task']} ranks rows in reverse: AUC {auc:.3f} "
                    + (
                        f"(95% interval {lo:.3f} to {hi:.3f}) "
                        if hi < 0.5
                        else f"(on {min(class_counts(_num(r.get('n_labelled')), _num(r.get('positive_rate'))))} "
                        "rows of a class; Mann-Whitney's test tells it from 0.5) "
                    )
                    + f"is below 0.5, so its scores put the negative rows above the positive ones (1 - AUC = "
                    f"{1 - auc:.3f} read the other way round): a flipped label, this output read as another "
                    "task's, or an inverted sign.",
                    "Check which model output feeds this task (--tasks a,b or --labels task=column) and the "
                    "label's polarity (1 = positive) before reading anything else about it.",
                    {"auc": auc, "auc_lo": lo, "auc_hi": hi, "logloss": ll, "base_rate_logloss": base},
                )
            )
            continue
        if not bool(r.get("at_chance")):
            if r.get("worse_than_base_rate") is True:
                res.append(
                    Finding.of(
                        codes.TASK_WORSE_THAN_BASE_RATE,
                        str(r["task"]),
                        f"Task {r['task']} "
                        + (
                            f"(AUC {auc:.3f}; too few labelled rows to judge its ranking): its log loss {ll:.4f}"
                            if r.get("too_few_labels") is True
                            else f"ranks rows (AUC {auc:.3f}) but its log loss {ll:.4f}"
                        )
                        + " is worse "
                        f"than {base:.4f} for predicting the base rate (per-row difference 95% interval "
                        f"{_num(r.get('logloss_vs_base_lo')):+.4f} to {_num(r.get('logloss_vs_base_hi')):+.4f}): "
                        "its probabilities are miscalibrated.",
                        "Recalibrate (Platt / isotonic on held-out rows) before using the probabilities; check "
                        "for a train/eval shift in the positive rate.",
                        {"auc": auc, "logloss": ll, "base_rate_logloss": base},
                    )
                )
            continue
        res.append(
            Finding.of(
                codes.TASK_AT_CHANCE,
                str(r["task"]),
                f"Task {r['task']} predicts no better than chance: AUC {auc:.3f} (95% interval {lo:.3f} to "
                f"{hi:.3f}), log loss {ll:.4f} vs {base:.4f} for predicting the base rate."
                + _constant_note(r),
                "Check the label mapping, then retrain with standardised inputs and a lower learning rate; "
                "compare with a single-task model on the same rows.",
                {"auc": auc, "auc_lo": lo, "auc_hi": hi, "logloss": ll, "base_rate_logloss": base},
            )
        )
    return res
