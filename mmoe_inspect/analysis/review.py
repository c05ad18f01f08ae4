"""The review: the questions a model review asks, each answered in one line with its evidence, and one
diagnosis per story instead of a list of findings.

Pure pandas on an inspection's tables, findings and (optional) causal tables, so the report, the
slide, `mmoe-inspect summary`, `metrics.json` and Jupyter show the same sentences. Questions:

1. Does every task work? (exact AUC with a 95% interval, log loss vs the base rate's; at-chance flags)
2. Did multi-task training help? (gain vs each baseline with its paired interval)
3. Do experts serve different tasks? (the routing verdict, as `inspector.verdict` words it)
4. What should we do next? (the first step of the most severe diagnosis)

A diagnosis groups findings that tell one story (a gate collapsed onto an expert that is itself
inactive or dead; a task at chance whose gate collapsed; a sparse task ignoring its own experts,
which are dead) and ranks the likely root causes (learning rate, input scale, initialisation,
capacity, data) from the pattern of the evidence. The findings keep their codes and evidence.
`rescale_by_impact` sets a collapsed gate's severity from the measured causal impact.

One module (over ~450 lines) on purpose: the questions and the diagnoses are read from the same tables
with the same row readers and formatters, and `build_review` joins them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import pandas as pd

from . import codes
from .codes import SEVERITY_ORDER, Severity
from .findings import Finding, ranks_inverted, routing_findings

Status = Literal["ok", "problem", "unknown"]

QUESTIONS: dict[str, str] = {
    "tasks": "Does every task work?",
    "gains": "Did multi-task training help?",
    "routing": "Do experts serve different tasks?",
    "next": "What should we do next?",
}
HARMLESS_IMPACT = 0.005  # |AUC change| below this (or not significant) is a small measured impact
NO_BASELINE_HINT = (
    "no baseline given; rerun `report` with --baseline single=TASK_ONLY.pt and/or "
    "--baseline sb=SHARED_BOTTOM.pt (same data)"
)


@dataclass(frozen=True)
class Answer:
    """One review question with a one-line answer, its status and the numbers behind it."""

    key: str
    question: str
    answer: str
    status: Status
    evidence: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Diagnosis:
    """Findings that tell one story, with its measured impact, ranked likely causes and ordered steps."""

    title: str
    severity: Severity
    summary: str
    findings: tuple[str, ...]  # "code: subject" of every finding in the story
    causes: tuple[str, ...]  # most likely first
    steps: tuple[str, ...]  # in the order to take them
    impact: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Review:
    answers: tuple[Answer, ...]
    diagnoses: tuple[Diagnosis, ...] = field(default_factory=tuple)

    def answer(self, key: str) -> Answer:
        return next(a for a in self.answers if a.key == key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "answers": [a.to_dict() for a in self.answers],
            "diagnoses": [d.to_dict() for d in self.diagnoses],
        }

    def lines(self) -> list[str]:
        """Plain text: each question, its answer and evidence; then the diagnoses (terminal, repr)."""
        out = []
        for a in self.answers:
            out.append(f"{a.question} {a.answer}")
            out += [f"    {e}" for e in a.evidence]
        return out


# ------------------------------------------------------------------------------------------ tasks
def _num(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


def fmt_interval(value: float, lo: float, hi: float, digits: int = 3) -> str:
    """`0.712 [0.701, 0.723]`, no negative zero; the interval is left out when unknown."""

    def f(v: float) -> str:
        s = f"{v:.{digits}f}"
        return s[1:] if s.startswith("-") and float(s) == 0 else s

    if math.isnan(value):
        return "—"
    if math.isnan(lo) or math.isnan(hi):
        return f(value)
    return f"{f(value)} [{f(lo)}, {f(hi)}]"


def fmt_signed(value: float, digits: int = 3) -> str:
    s = f"{value:+.{digits}f}"
    return s[1:] if float(s) == 0 else s


def task_quality_lines(tasks: pd.DataFrame) -> list[tuple[str, str, bool]]:
    """Per task: (task, evidence text, at chance)."""
    out = []
    for r in tasks.to_dict(orient="records"):
        name = str(r["task"])
        if r.get("kind") == "binary":
            auc = _num(r.get("auc"))
            if math.isnan(auc):
                out.append((name, f"{name}: AUC undefined (labels missing or all one class)", False))
                continue
            chance = bool(r.get("at_chance", False))
            ll, base = _num(r.get("logloss")), _num(r.get("base_rate_logloss"))
            text = (
                f"{name}: AUC {fmt_interval(auc, _num(r.get('auc_lo')), _num(r.get('auc_hi')))}, "
                f"log loss {ll:.4f} vs {base:.4f} predicting the base rate ({_num(r.get('positive_rate')):.1%} "
                f"positives, {int(_num(r.get('n_labelled'))):,} rows)"
            )
            if ranks_inverted(r):
                text += " — RANKS IN REVERSE (AUC interval below 0.5)"
                chance = True  # not a working task either
            elif chance:
                text += " — AT CHANCE (AUC interval holds 0.5)"
            elif r.get("beats_base_rate") is False:
                text += " — ranks rows, but log loss no better than the base rate (miscalibrated)"
            out.append((name, text, chance))
        else:
            mse = _num(r.get("mse"))
            if not math.isnan(mse):
                out.append(
                    (name, f"{name}: MSE {mse:.4g} (label mean {_num(r.get('label_mean')):.4g})", False)
                )
    return out


def tasks_answer(tasks: pd.DataFrame) -> Answer:
    lines = task_quality_lines(tasks)
    q = QUESTIONS["tasks"]
    if not lines:
        return Answer(
            "tasks",
            q,
            "Cannot tell: no labelled rows (name the label columns with --labels task=column).",
            "unknown",
        )
    bad = [name for name, _, chance in lines if chance]
    evidence = tuple(text for _, text, _ in lines)
    if bad:
        reverse = {str(r["task"]) for r in tasks.to_dict(orient="records") if ranks_inverted(r)}
        parts = []
        for names, what in (
            ([b for b in bad if b not in reverse], "at chance (AUC interval holds 0.5)"),
            ([b for b in bad if b in reverse], "ranked in reverse (AUC interval below 0.5)"),
        ):
            if names:
                parts.append(f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} {what}")
        return Answer("tasks", q, f"No: {'; '.join(parts)}.", "problem", evidence)
    loose = [str(r["task"]) for r in tasks.to_dict(orient="records") if r.get("beats_base_rate") is False]
    if loose:
        return Answer(
            "tasks",
            q,
            f"Partly: every labelled task ranks rows above chance, but {', '.join(loose)} "
            f"{'predicts' if len(loose) == 1 else 'predict'} "
            "probabilities no better than the base rate (miscalibrated).",
            "unknown",
            evidence,
        )
    return Answer("tasks", q, "Yes: every labelled task ranks rows above chance.", "ok", evidence)


# ------------------------------------------------------------------------------------------ gains
def gains_answer(causal: Any | None, tasks: pd.DataFrame) -> Answer:
    q = QUESTIONS["gains"]
    table = getattr(causal, "baseline_gains", None)
    if causal is None:
        return Answer("gains", q, "Not measured: " + NO_BASELINE_HINT + ".", "unknown")
    if table is None or table.empty:
        return Answer("gains", q, "Not measured: " + NO_BASELINE_HINT + ".", "unknown")
    kinds = dict(zip(tasks["task"], tasks["kind"], strict=False)) if not tasks.empty else {}
    primary = table[
        table["metric"] == table["task"].map(lambda t: "auc" if kinds.get(t, "binary") == "binary" else "mse")
    ]
    if primary.empty:
        primary = table
    # the sparse task first: it is the one multi-task training is meant to help
    primary = primary.assign(_sparse=~primary["sparse"].astype(bool)).sort_values(
        ["_sparse", "task", "baseline"]
    )
    evidence, better, worse = [], [], []
    for r in primary.to_dict(orient="records"):
        sig = bool(r.get("significant"))
        metric = "AUC" if r["metric"] == "auc" else str(r["metric"])
        tag = " (sparse)" if r.get("sparse") else ""
        evidence.append(
            f"{r['task']}{tag} vs {r['baseline']}: {fmt_signed(_num(r['gain']))} {metric} "
            f"[{fmt_signed(_num(r['lo']))}, {fmt_signed(_num(r['hi']))}], "
            f"{'significant' if sig else 'not significant'}"
        )
        if sig and _num(r["gain"]) > 0:
            better.append(f"{r['task']} vs {r['baseline']}")
        elif sig and _num(r["gain"]) < 0:
            worse.append(f"{r['task']} vs {r['baseline']}")
    if worse:
        ans, status = f"No: the multi-task model is significantly worse on {', '.join(worse)}.", "problem"
    elif better:
        ans, status = f"Yes: a significant gain on {', '.join(better)}.", "ok"
    else:
        ans, status = "Not shown: no gain over any baseline is significant (intervals hold 0).", "unknown"
    return Answer("gains", q, ans, status, tuple(evidence))


# ------------------------------------------------------------------------------------ diagnoses
def _gate_row(tables: dict[str, pd.DataFrame], gate: str) -> dict[str, Any]:
    gm = tables.get("gate_metrics", pd.DataFrame())
    hit = gm[gm["gate"] == gate] if not gm.empty else gm
    return hit.iloc[0].to_dict() if len(hit) else {}


def _task_row(tables: dict[str, pd.DataFrame], task: str) -> dict[str, Any]:
    t = tables.get("tasks", pd.DataFrame())
    hit = t[t["task"] == task] if not t.empty else t
    return hit.iloc[0].to_dict() if len(hit) else {}


def _ablation(causal: Any | None, task: str, expert: str) -> dict[str, Any] | None:
    abl = getattr(causal, "ablation", None)
    if abl is None or abl.empty:
        return None
    hit = abl[
        (abl["task"] == task)
        & (abl["expert"] == expert)
        & (abl["mode"] == "renormalize")
        & (abl["metric"].isin(["auc", "mse"]))
    ]
    return hit.iloc[0].to_dict() if len(hit) else None


def _collapse_impact(
    tables: dict[str, pd.DataFrame], causal: Any | None, gate: str
) -> tuple[str, str | None]:
    """(impact sentence, severity the measurement supports or None when nothing was measured)."""
    row = _gate_row(tables, gate)
    task, expert = str(row.get("task") or ""), str(row.get("top_expert", ""))
    trow = _task_row(tables, task) if task else {}
    if trow.get("at_chance"):
        return (
            f"task {task} is at chance (AUC {fmt_interval(_num(trow.get('auc')), _num(trow.get('auc_lo')), _num(trow.get('auc_hi')))})",
            "critical",
        )
    abl = _ablation(causal, task, expert) if task else None
    if abl is None:
        return ("impact not measured (run `report` with labelled data for the causal analyses)", None)
    imp, lo, hi, sig = _num(abl["importance"]), _num(abl["lo"]), _num(abl["hi"]), bool(abl["significant"])
    metric = "AUC" if abl["metric"] == "auc" else str(abl["metric"])
    change = -imp  # importance = how much worse without it; show the metric change
    text = (
        f"removing expert {expert} changes {task} {metric} by {fmt_signed(change)} "
        f"[{fmt_signed(-hi)}, {fmt_signed(-lo)}], {'significant' if sig else 'not significant'}"
    )
    if sig and imp <= -HARMLESS_IMPACT:  # the task is better without the expert its gate collapsed onto
        return (text + ": the collapse costs quality", "critical")
    return (text + ": measured impact small", "warning")


def rescale_by_impact(
    findings: list[Finding], tables: dict[str, pd.DataFrame], causal: Any | None
) -> list[Finding]:
    """Collapsed gates get the severity their measured impact supports: critical when the task is at
    chance or measurably better without the expert; a warning when the impact is small (a harmless
    collapse onto a duplicate expert); unchanged when nothing was measured. The impact goes into the
    finding's evidence (`impact`)."""
    out = []
    for f in findings:
        if f.code == codes.COLLAPSED_GATE:
            text, sev = _collapse_impact(tables, causal, f.subject)
            f = replace(f, severity=sev or f.severity, evidence={**f.evidence, "impact": text})
        out.append(f)
    out.sort(key=lambda f: (SEVERITY_ORDER[f.severity], f.code, f.subject))
    return out


def _key(f: Finding) -> str:
    return f"{f.code}: {f.subject}"


def _expert_flags(findings: list[Finding], expert: str) -> dict[str, Finding]:
    return {
        f.code: f
        for f in findings
        if f.subject == expert and f.code in (codes.DEAD_EXPERT, codes.INACTIVE_EXPERT)
    }


def build_diagnoses(
    findings: list[Finding], tables: dict[str, pd.DataFrame], causal: Any | None
) -> list[Diagnosis]:
    """Group related findings into stories, most severe first; every finding is in exactly one story."""
    used: set[str] = set()
    stories: list[Diagnosis] = []
    by_code: dict[str, list[Finding]] = {}
    for f in findings:
        by_code.setdefault(f.code, []).append(f)
    for f in by_code.get(codes.COLLAPSED_GATE, []):
        stories.append(_collapse_story(f, findings, tables, causal, used))
    for f in by_code.get(codes.SPARSE_TASK_IGNORES_OWN_EXPERTS, []):
        if _key(f) not in used:
            stories.append(_sparse_story(f, findings, tables, used))
    chance = [f for f in by_code.get(codes.TASK_AT_CHANCE, []) if _key(f) not in used]
    if chance:  # tasks at chance without a gate story: one story for all of them
        used.update(_key(f) for f in chance)
        names = ", ".join(f.subject for f in chance)
        stories.append(
            Diagnosis(
                f"Task{'s' if len(chance) > 1 else ''} {names} at chance",
                "critical",
                " ".join(f.message for f in chance),
                tuple(_key(f) for f in chance),
                _task_causes(tables, chance[-1].subject),
                (
                    "Check the label column mapping (--labels) and that each task's loss is in the training objective.",
                    "Retrain with standardised inputs and a lower learning rate (or more rows); watch the AUC per epoch.",
                    "Compare with a single-task model (--baseline single=...) to see whether the task is learnable.",
                ),
                "the predictions rank rows no better than chance",
            )
        )
    rest: dict[str, list[Finding]] = {}
    for f in findings:  # the rest: one story per kind of finding
        if _key(f) not in used:
            used.add(_key(f))
            rest.setdefault(f.code, []).append(f)
    for group in rest.values():
        f = group[0]
        subjects = ", ".join(g.subject for g in group)
        title = f.title if len(group) == 1 else f"{f.title} ({subjects})"
        summary = f.message if len(group) == 1 else f"{len(group)} subjects: {subjects}. e.g. {f.message}"
        severity = min((g.severity for g in group), key=lambda s: SEVERITY_ORDER[s])
        stories.append(
            Diagnosis(title, severity, summary, tuple(_key(g) for g in group), (), (f.remedy,), "")
        )
    stories.sort(key=lambda d: SEVERITY_ORDER[d.severity])
    return stories


def _collapse_story(
    f: Finding, findings: list[Finding], tables: dict[str, pd.DataFrame], causal: Any | None, used: set[str]
) -> Diagnosis:
    gate = f.subject
    row = _gate_row(tables, gate)
    task, expert = str(row.get("task") or ""), str(row.get("top_expert", ""))
    members = [f]
    flags = _expert_flags(findings, expert)
    members += flags.values()
    members += [g for g in findings if g.code == codes.POLARIZED_GATE and g.subject == gate]
    if task:
        members += [g for g in findings if g.code == codes.TASK_AT_CHANCE and g.subject == task]
        members += [
            g
            for g in findings
            if g.code == codes.TASKS_ROUTE_IDENTICALLY and task in [s.strip() for s in g.subject.split("~")]
        ]
    redundant = [
        g
        for g in findings
        if g.code == codes.REDUNDANT_EXPERTS and expert in [s.strip() for s in g.subject.split("~")]
    ]
    members += redundant
    members = [m for m in members if _key(m) not in used]
    if _key(f) in used:
        members = []
    for m in members:
        used.add(_key(m))
    impact = str(f.evidence.get("impact", "")) or _collapse_impact(tables, causal, gate)[0]
    zf = (
        _num(flags[codes.INACTIVE_EXPERT].evidence.get("zero_fraction"))
        if codes.INACTIVE_EXPERT in flags
        else math.nan
    )
    what = f"gate {gate} collapsed onto expert {expert}"
    if codes.INACTIVE_EXPERT in flags:
        what += f", which outputs zero on {zf:.1%} of its activations"
    elif codes.DEAD_EXPERT in flags:
        what += ", which no other gate uses"
    if redundant:
        what += f"; {expert} is near-duplicated by another expert (CKA {_num(redundant[0].evidence.get('cka')):.3f})"
    severity = max((m.severity for m in members), key=lambda s: -SEVERITY_ORDER[s]) if members else f.severity
    if (
        f.severity != "critical"
        and severity == "critical"
        and not any(m.code == codes.TASK_AT_CHANCE for m in members)
    ):
        severity = f.severity  # a measured-harmless collapse is not made critical by its companions
    if codes.INACTIVE_EXPERT in flags or any(m.code == codes.POLARIZED_GATE for m in members):
        causes = (
            "learning rate too high (dead ReLUs and a saturated gate softmax are its usual signature)",
            "input scale: un-normalised features saturate the gate logits (standardise to zero mean, unit variance)",
            "initialisation of the gate (large initial logits)",
            "capacity: fewer experts may do",
        )
        steps = (
            "Retrain with a 3-10x lower learning rate (or a warm-up) and standardised inputs.",
            f"Re-initialise expert {expert} (or use LeakyReLU/GELU in experts) so it can recover.",
            "If the gate still collapses, add gate dropout or a load-balancing loss.",
            "Watch the first epoch with GateMonitor: collapse usually happens there.",
        )
    elif redundant:
        causes = (
            "initialisation: the experts started (nearly) alike",
            "capacity: more experts than the tasks need",
            "learning rate",
        )
        steps = (
            "No urgent action if the measured impact is small: the duplicate carries the same function.",
            "Use distinct initialisations per expert, or fewer experts.",
        )
    else:
        causes = (
            "learning rate too high",
            "input scale (un-normalised features)",
            "initialisation",
            "capacity",
        )
        steps = (
            "Retrain with a lower learning rate and standardised inputs.",
            "If the gate still collapses, add gate dropout, a load-balancing loss or a softmax temperature.",
        )
    return Diagnosis(
        f"Gate {gate} collapsed" + (f" (task {task})" if task and task != gate else ""),
        severity,
        what + ".",
        tuple(_key(m) for m in members),
        causes,
        steps,
        impact,
    )


def _task_causes(tables: dict[str, pd.DataFrame], task: str) -> tuple[str, ...]:
    rate = _num(_task_row(tables, task).get("positive_rate"))
    data = f"data: {rate:.1%} positives" if not math.isnan(rate) else "data"
    return (
        "learning rate too high / input scale (the usual cause of a model that stops learning a task)",
        data + " (too few positives to learn from, or a wrong label column)",
        "loss weighting: the task's loss is too small next to the others",
        "capacity of the task's tower and experts",
    )


def _sparse_story(
    f: Finding, findings: list[Finding], tables: dict[str, pd.DataFrame], used: set[str]
) -> Diagnosis:
    task = f.subject
    ex = tables.get("experts", pd.DataFrame())
    own = [str(e) for e in ex.loc[ex["owner"] == task, "expert"]] if not ex.empty and "owner" in ex else []
    members = [f]
    for e in own:
        members += _expert_flags(findings, e).values()
    members += [g for g in findings if g.code == codes.TASK_AT_CHANCE and g.subject == task]
    members = [m for m in members if _key(m) not in used]
    for m in members:
        used.add(_key(m))
    severity = min((m.severity for m in members), key=lambda s: SEVERITY_ORDER[s])
    return Diagnosis(
        f"Sparse task {task} does not use its own experts",
        severity,
        f.message,
        tuple(_key(m) for m in members),
        _task_causes(tables, task),
        (
            f"Upweight {task}'s loss or warm-start its experts.",
            "Retrain with a lower learning rate if its experts are inactive.",
        ),
        "",
    )


# ------------------------------------------------------------------------------------------ build
def build_review(
    tables: dict[str, pd.DataFrame], findings: list[Finding], verdict: str, causal: Any | None = None
) -> Review:
    """The four answers and the diagnoses of one inspection."""
    tasks = tables.get("tasks", pd.DataFrame())
    diagnoses = build_diagnoses(findings, tables, causal)
    routing_status: Status = (
        "problem" if any(f.severity == "critical" for f in routing_findings(findings)) else "ok"
    )
    if verdict.lower().startswith(("could not", "no gates")):
        routing_status = "unknown"
    routing = Answer("routing", QUESTIONS["routing"], verdict, routing_status)
    if verdict.lower().startswith("could not"):  # unverified routing: nothing below is "nothing urgent"
        nxt = Answer(
            "next",
            QUESTIONS["next"],
            "Name the gates discovery could not resolve: `mmoe-inspect topology MODEL --write spec.toml`, "
            "fill in the suggested [[gates]], then rerun with --spec spec.toml (the routing is unverified).",
            "problem",
            tuple(f"{d.severity}: {d.title}" for d in diagnoses[:5]),
        )
    elif diagnoses:
        top = diagnoses[0]
        nxt = Answer(
            "next",
            QUESTIONS["next"],
            f"{top.severity.capitalize()}: {top.title}. {top.steps[0] if top.steps else ''}".strip(),
            "problem" if top.severity == "critical" else ("unknown" if top.severity == "warning" else "ok"),
            tuple(f"{d.severity}: {d.title}" for d in diagnoses[:5]),
        )
    else:
        nxt = Answer("next", QUESTIONS["next"], "Nothing urgent: no findings.", "ok")
    return Review((tasks_answer(tasks), gains_answer(causal, tasks), routing, nxt), tuple(diagnoses))
