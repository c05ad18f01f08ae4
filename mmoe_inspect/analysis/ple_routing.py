"""The routing answer for PLE/CGC: how each task's gate splits its weight between its own experts and the
shared ones, and whether the tasks use the shared experts differently.

A PLE level's task gates mix different expert sets (each task's own experts plus the shared ones), so no
two of them can be compared over one expert set the way MMoE's gates are. What they do share is the
shared experts: each task gate's mean weights over them, renormalised to sum to 1, are comparable, and so
is the share of its weight each gate puts on its own experts vs the shared ones. Read from the
`utilization` (mean weight per gate and expert) and `experts` (owner per expert) tables; pure pandas.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pandas as pd

from . import codes
from .finding import Finding

__all__ = ["SHARED_TV_DIFFERENT", "PleGateUse", "flagged_gates", "ple_answer", "ple_evidence", "ple_uses"]

SHARED_TV_DIFFERENT = 0.2
"""Total variation between two tasks' renormalised mean weights over the shared experts from which they
"use the shared experts differently" (as `verdict.TV_DIFFERENT` for per-row MMoE routing: a mean-weight TV
is a lower bound on the mean per-row TV, so above it the per-row routing differs at least as much)."""


@dataclass(frozen=True)
class PleGateUse:
    """One PLE task gate: its shares of weight on its task's own experts, on the shared experts and on
    any other (another task's) experts, and its mean weights over the shared experts renormalised to 1."""

    gate: str
    task: str
    level: int
    own: float
    shared: float
    other: float
    shared_mix: dict[str, float]


def ple_uses(tables: dict[str, pd.DataFrame]) -> list[PleGateUse]:
    """Every task gate that mixes its task's own experts beside shared ones (PLE/CGC), in table order."""
    util = tables.get("utilization", pd.DataFrame())
    experts = tables.get("experts", pd.DataFrame())
    if util.empty or experts.empty or "owner" not in experts:
        return []
    owners = dict(zip(experts["expert"], experts["owner"], strict=False))
    util = util[util["task"].notna() & (util["task"] != "")]
    out = []
    for (gate, task, level), rows in util.groupby(["gate", "task", "level"], sort=False):
        owner = rows["expert"].map(owners)
        mean = rows["mean"].astype(float).clip(lower=0.0)
        total = float(mean.sum())
        if not ((owner == task).any() and (owner == "shared").any()) or total <= 0:
            continue
        shared = mean[owner == "shared"]
        s = float(shared.sum())
        out.append(
            PleGateUse(
                str(gate),
                str(task),
                int(level),
                own=float(mean[owner == task].sum()) / total,
                shared=s / total,
                other=float(mean[(owner != task) & (owner != "shared")].sum()) / total,
                shared_mix={
                    str(e): (float(w) / s if s > 0 else 0.0)
                    for e, w in zip(rows.loc[owner == "shared", "expert"], shared, strict=True)
                },
            )
        )
    return out


def shared_tv(a: PleGateUse, b: PleGateUse) -> float:
    """Total variation between two gates' renormalised mean weights over the shared experts."""
    keys = set(a.shared_mix) | set(b.shared_mix)
    return 0.5 * sum(abs(a.shared_mix.get(k, 0.0) - b.shared_mix.get(k, 0.0)) for k in keys)


def flagged_gates(uses: list[PleGateUse], findings: list[Finding]) -> tuple[set[str], set[str]]:
    """Gate names the findings flag as ignoring their own experts and as ignoring the shared experts (a
    sparse task's finding names the task: its highest-level gate), so the answer and the findings agree
    whatever the thresholds."""
    own = {f.subject for f in findings if f.code == codes.TASK_IGNORES_OWN_EXPERTS}
    shared = {f.subject for f in findings if f.code == codes.TASK_IGNORES_SHARED_EXPERTS}
    for f in findings:
        if f.code == codes.SPARSE_TASK_IGNORES_OWN_EXPERTS:
            mine = [u for u in uses if u.task == f.subject]
            if mine:
                own.add(max(mine, key=lambda u: u.level).gate)
    return own, shared


def ple_answer(uses: list[PleGateUse], findings: list[Finding], tail: str = "") -> str:
    """The routing sentence for a PLE/CGC: the problems the findings flag (a task gate ignoring its own or
    the shared experts, any level), then each task's split on the final level (the one feeding the
    towers) and whether the tasks use the shared experts differently there."""
    ignores_own, ignores_shared = flagged_gates(uses, findings)
    top = max(u.level for u in uses)
    final = [u for u in uses if u.level == top]
    where = f"final level {top}: " if len({u.level for u in uses}) > 1 else ""
    shares = ", ".join(f"{u.task} {u.own:.0%} own / {u.shared:.0%} shared" for u in final)

    problems = []
    for flagged, text in (
        (
            ignores_own,
            "ignores its own experts and lives on the shared ones ({own:.0%} own: an MMoE for {task}{also})",
        ),
        (
            ignores_shared,
            "ignores the shared experts and learns alone ({shared:.0%} shared: no transfer{also})",
        ),
    ):
        # one clause per task: its highest flagged level, the lower ones named after it
        for task in dict.fromkeys(u.task for u in uses if u.gate in flagged):
            hit = sorted((u for u in uses if u.task == task and u.gate in flagged), key=lambda u: -u.level)
            lead = hit[0]
            more = [str(u.level) for u in hit[1:]]
            also = f"; also on level {', '.join(more)}" if more else ""
            who = f"{task}'s gate" if lead.level == top else f"{task}'s level-{lead.level} gate"
            problems.append(f"{who} " + text.format(own=lead.own, shared=lead.shared, task=task, also=also))
    # a gate that mixes alike on every row splits its weight but routes nothing: not a "Yes"
    fixed = {
        f.subject: f.code for f in findings if f.code in (codes.UNIFORM_GATE, codes.INPUT_INDEPENDENT_GATE)
    }
    for u in uses:
        if u.gate in fixed and u.gate not in ignores_own | ignores_shared:
            how = (
                "is almost uniform"
                if fixed[u.gate] == codes.UNIFORM_GATE
                else "gives every row the same weights"
            )
            problems.append(f"{u.gate} {how}: its split is fixed, it routes no row ({fixed[u.gate]})")
    compare = _shared_comparison([u for u in final if u.gate not in ignores_shared])
    if problems:
        return f"Partly (PLE/CGC): {'; '.join(problems)}. Split per task ({where}{shares}){compare}{tail}."
    return (
        f"Yes (PLE/CGC): every task's gate uses its own experts beside the shared ones ({where}{shares})"
        f"{compare}{tail}."
    )


def _shared_comparison(uses: list[PleGateUse]) -> str:
    """ ", and the tasks use the shared experts differently (...)" for the gates that use them (empty with
    fewer than two gates, or one shared expert)."""
    if len(uses) < 2 or max(len(u.shared_mix) for u in uses) < 2:
        return ""
    a, b = max(itertools.combinations(uses, 2), key=lambda p: shared_tv(*p))
    tv = shared_tv(a, b)
    if tv >= SHARED_TV_DIFFERENT:
        return (
            f", and the tasks use the shared experts differently (total variation {tv:.2f} between {a.task}'s "
            f"and {b.task}'s mean weights over them)"
        )
    return (
        f", and on average the tasks weight the shared experts alike (total variation at most {tv:.2f} between "
        "their mean weights over them; per-row routing over the shared experts is not compared)"
    )


def ple_evidence(uses: list[PleGateUse]) -> tuple[str, ...]:
    """One line per PLE task gate: its split and its mix over the shared experts."""
    lines = []
    for u in uses:
        mix = ", ".join(f"{e} {w:.0%}" for e, w in u.shared_mix.items())
        other = f", {u.other:.0%} on other tasks' experts" if u.other > 0.005 else ""
        lines.append(
            f"{u.gate} (task {u.task}, level {u.level}): {u.own:.0%} on its own experts, {u.shared:.0%} on the "
            f"shared ones{other}; over the shared experts: {mix}"
        )
    return tuple(lines)
