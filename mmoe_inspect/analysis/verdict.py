"""The routing verdict: one sentence that answers "do the experts serve different tasks?"."""

from __future__ import annotations

import pandas as pd

from mmoe_inspect._plural import plural
from mmoe_inspect.analysis.findings import Finding
from mmoe_inspect.analysis.ple_routing import ple_answer, ple_uses
from mmoe_inspect.analysis.tables import call_index, gate_groups
from mmoe_inspect.topology._feature_scaling import scaling_modules
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
        scaling = scaling_modules(topology.notes)
        head = "No gates found: this is a Shared-Bottom (or dense) multi-task model, so there is no routing to inspect."
        if not scaling:
            return head
        names = ", ".join(scaling[:4]) + (f" and {len(scaling) - 4} more" if len(scaling) > 4 else "")
        one = len(scaling) == 1
        return (
            f"{head} Module{'' if one else 's'} {names} {'is a feature gate' if one else 'are feature gates'}: "
            f"{'it only scales' if one else 'they only scale'} input features, which routes nothing."
        )
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
    if (mi.empty or div.empty) and (uses := ple_uses(tables)):
        return ple_answer(
            uses, findings, tail
        )  # PLE/CGC: own vs shared experts, and the shared ones compared
    if mi.empty or div.empty:
        return f"Gates recorded; no task gates share one expert set to compare directly{tail}."
    nmi = float(mi["normalized"].max())
    tvs = div["tv_per_row"].astype(float)
    tv = float(tvs.max())
    names = pair_names(topology, div)
    evidence = f"per-row total variation up to {tv:.2f}, normalized task-expert MI {nmi:.2f}"
    at = names[int(tvs.fillna(-1.0).to_numpy().argmax())]
    where = f" ({at})" if " on the " in at or " over " in at else ""  # which call / expert group
    clear = div[tvs >= TV_CLEARLY_DIFFERENT]
    if len(clear) and len(clear) < len(div) and nmi < NMI_DIFFERENT:  # one pair far apart is not "the tasks"
        pairs = ", ".join(n for n, t in zip(names, tvs, strict=True) if t >= TV_CLEARLY_DIFFERENT)
        return (
            f"Partly: {len(clear)} of {len(div)} task pairs route rows to clearly different experts ({pairs}); "
            f"the others share more of their experts ({evidence}){tail}."
        )
    evidence = f"per-row total variation up to {tv:.2f}{where}, normalized task-expert MI {nmi:.2f}"
    if nmi >= NMI_DIFFERENT or len(clear):
        return f"Yes: the tasks route rows to clearly different experts ({evidence}){tail}."
    if tv >= TV_DIFFERENT:
        return f"Partly: the tasks share most experts but weight them differently ({evidence}){tail}."
    return f"Mostly shared: the tasks' gates route rows much alike ({evidence}){tail}."


def pair_names(topology: Topology, div: pd.DataFrame) -> list[str]:
    """A readable name per `task_divergence` row: `click ~ buy`; where the same task pair occurs more
    than once (a layer run twice per forward, or one gate per expert group), the gates' names and what
    tells the rows apart: `click#1 ~ buy#1 on the 2nd call`, `L0.click#1 ~ L0.buy#1 over groups.1.*`."""
    repeated = div.duplicated(subset=["task_a", "task_b"], keep=False)
    where = _group_labels(topology)
    out = []
    for rep, r in zip(repeated, div.itertuples(index=False), strict=True):
        if not rep:
            out.append(f"{r.task_a} ~ {r.task_b}")
            continue
        gate_a, gate_b = getattr(r, "gate_a", r.task_a), getattr(r, "gate_b", r.task_b)
        same = div[(div["task_a"] == r.task_a) & (div["task_b"] == r.task_b)]
        others = [where[g] for g in same.get("gate_a", same["task_a"]) if g != gate_a and g in where]
        if gate_a not in where or not others:
            out.append(f"{gate_a} ~ {gate_b}")
            continue
        # what differs between the repeated rows: the expert set, else the call of the layer
        over, call = where[gate_a]
        text = f"over {over}" if all(o[0] != over for o in others) else f"on the {_ordinal(call + 1)} call"
        out.append(f"{gate_a} ~ {gate_b} {text}")
    return out


def _group_labels(topology: Topology) -> dict[str, tuple[str, int]]:
    """Gate name -> (a short name of its expert set, its call of the layer) for the compared gates."""
    out: dict[str, tuple[str, int]] = {}
    for group in gate_groups(topology):
        calls = call_index(group)
        for g in group:
            out[g.name] = (_experts_label(g.experts), calls[g.name])
    return out


def _experts_label(experts: tuple[str, ...]) -> str:
    """`groups.1.*` for experts `groups.1.0` ... `groups.1.2` (their common dotted prefix), else first-last."""
    prefix = experts[0]
    for e in experts[1:]:
        while prefix and not e.startswith(prefix):
            prefix = prefix[:-1]
    cut = max(prefix.rfind("."), prefix.rfind("["))
    if cut > 0:
        return prefix[: cut + 1] + ("*]" if prefix[cut] == "[" else "*")
    return experts[0] if len(experts) == 1 else f"{experts[0]}-{experts[-1]}"


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


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
