"""The routing verdict: one sentence that answers "do the experts serve different tasks?"."""

from __future__ import annotations

import pandas as pd

from mmoe_inspect._plural import plural
from mmoe_inspect.analysis.findings import Finding
from mmoe_inspect.topology._tasks import untraced_gates
from mmoe_inspect.topology.spec import Topology

__all__ = ["NMI_DIFFERENT", "TV_CLEARLY_DIFFERENT", "TV_DIFFERENT", "cannot_judge_sentence", "verdict"]

TV_DIFFERENT = 0.2
"""Per-row total variation from which the tasks' gates "weight the experts differently"."""
TV_CLEARLY_DIFFERENT = 0.5
"""Per-row total variation from which the tasks "route rows to clearly different experts"."""
NMI_DIFFERENT = 0.2
"""Normalized task-expert mutual information from which the tasks route to clearly different experts."""


def verdict(topology: Topology, tables: dict[str, pd.DataFrame], findings: list[Finding]) -> str:
    """One sentence that answers "do the experts serve different tasks?".

    When discovery saw gate-like computations it could not resolve (or is not confident), the routing
    cannot be judged and the sentence says so first, whatever the found gates look like.
    """
    if not topology.judgeable:
        return cannot_judge_sentence(topology)
    if not topology.has_gates:
        return "No gates found: this is a Shared-Bottom (or dense) multi-task model, so there is no routing to inspect."
    critical = [f for f in findings if f.severity == "critical"]
    if critical:
        kinds = sorted({f.title.lower() for f in critical})
        return f"Routing is unhealthy: {', '.join(kinds)} ({plural(len(critical), 'critical finding')})."
    mi = tables.get("mutual_information", pd.DataFrame())
    div = tables.get("task_divergence", pd.DataFrame())
    warn = [f for f in findings if f.severity == "warning"]
    tail = f"; {plural(len(warn), 'warning')} to review" if warn else ""
    if div.empty and len(topology.tasks) > 1 and _one_gate_per_level(topology):
        return (
            f"No, by design: one gate per level serves every task (a one-gate MoE), so every task gets the same "
            f"expert mixture on each row; MMoE or PLE gates route per task{tail}."
        )
    if mi.empty or div.empty:
        return f"Gates recorded; no task gates share one expert set to compare directly{tail}."
    nmi = float(mi["normalized"].max())
    tvs = div["tv_per_row"].astype(float)
    tv = float(tvs.max())
    evidence = f"per-row total variation up to {tv:.2f}, normalized task-expert MI {nmi:.2f}"
    clear = div[tvs >= TV_CLEARLY_DIFFERENT]
    if nmi >= NMI_DIFFERENT or (len(clear) and len(clear) == len(div)):
        return f"Yes: the tasks route rows to clearly different experts ({evidence}){tail}."
    if len(clear):  # one pair far apart is not "the tasks": say how many
        # a layer called twice gives the same task pair twice: name those by their gates (click ~ buy#1)
        repeated = div.duplicated(subset=["task_a", "task_b"], keep=False)
        named = div.assign(pair_a=div["task_a"].where(~repeated, div.get("gate_a", div["task_a"])))
        named = named.assign(pair_b=div["task_b"].where(~repeated, div.get("gate_b", div["task_b"])))
        pairs = ", ".join(
            f"{r.pair_a} ~ {r.pair_b}" for r in named[tvs >= TV_CLEARLY_DIFFERENT].itertuples(index=False)
        )
        return (
            f"Partly: {len(clear)} of {len(div)} task pairs route rows to clearly different experts ({pairs}); "
            f"the others share more of their experts ({evidence}){tail}."
        )
    if tv >= TV_DIFFERENT:
        return f"Partly: the tasks share most experts but weight them differently ({evidence}){tail}."
    return f"Mostly shared: the tasks' gates route rows much alike ({evidence}){tail}."


def _one_gate_per_level(topology: Topology) -> bool:
    """Every level has one gate and none names a task: each gate serves every task (OMoE). Not when
    discovery could not trace a gate's task (`untraced_gates`): that gate may serve one task only."""
    levels: dict[int, int] = {}
    untraced = untraced_gates(topology.notes)
    for g in topology.gates:
        if g.task is not None or g.name in untraced:
            return False
        levels[g.level] = levels.get(g.level, 0) + 1
    return bool(levels) and all(n == 1 for n in levels.values())


def cannot_judge_sentence(topology: Topology) -> str:
    """ "Could not verify the routing: ..." with the first unresolved item (or the low confidence)."""
    items = topology.unresolved
    if items:
        more = f" (and {len(items) - 1} more)" if len(items) > 1 else ""
        found = (
            f"; {plural(len(topology.gates), 'gate')} {'was' if len(topology.gates) == 1 else 'were'} found and "
            "reported, but the routing as a whole is unverified"
            if topology.has_gates
            else ""
        )
        return (
            f"Could not verify the routing: {items[0].line()}{more}{found}. See Topology, and pass a spec "
            "naming the gate (--spec) to judge it."
        )
    return (
        f"Could not verify the routing: discovery is not confident about the gates (confidence "
        f"{topology.confidence:.2f}). See Topology, and pass a spec (--spec) to judge it."
    )
