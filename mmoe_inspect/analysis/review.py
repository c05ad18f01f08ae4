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

import numpy as np
import pandas as pd

from mmoe_inspect.functional.evidence import auc_verdict, class_counts

from . import codes
from .codes import SEVERITY_ORDER, Severity
from .findings import Finding, constant_output, ranks_inverted, routing_findings
from .ple_routing import ple_evidence, ple_uses
from .tables import auc_interval

Status = Literal["ok", "problem", "unknown"]

QUESTIONS: dict[str, str] = {
    "tasks": "Does every task work?",
    "gains": "Did multi-task training help?",
    "routing": "Do experts serve different tasks?",
    "next": "What should we do next?",
}
HARMLESS_IMPACT = 0.005  # an impact whose whole interval lies within ±this is a small measured impact
NO_BASELINE_HINT = (
    "no baseline given; rerun `report` with --baseline single=TASK_ONLY.pt and/or "
    "--baseline sb=SHARED_BOTTOM.pt (same data)"
)
NO_BASELINE_HINT_GATELESS = (
    "no baseline given; rerun `report` with --baseline single=TASK_ONLY.pt (same data)"
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
    """`0.712 [0.701, 0.723]`, no negative zero; the interval is left out when unknown, and a zero-width one
    (DeLong's at AUC 0 or 1, or on one row of a class: the normal approximation breaks down, it is not
    certainty) prints as `[n/a]`."""

    def f(v: float) -> str:
        s = f"{v:.{digits}f}"
        return s[1:] if s.startswith("-") and float(s) == 0 else s

    if math.isnan(value):
        return "—"
    if math.isnan(lo) or math.isnan(hi):
        return f(value)
    if lo == hi:
        return f"{f(value)} [n/a]"
    return f"{f(value)} [{f(lo)}, {f(hi)}]"


def fmt_signed(value: float, digits: int = 3) -> str:
    s = f"{value:+.{digits}f}"
    return s[1:] if float(s) == 0 else s


def fmt_signed_interval(value: float, lo: float, hi: float, digits: int = 3, unit: str = "") -> str:
    """`+0.006 [+0.002, +0.009]` for a difference and its interval, with as many digits (up to 6) as it
    takes for a bound that excludes 0 not to print as 0: `-0.003 [-0.006, 0.000]` read as "touches 0"
    next to the word "significant"."""
    for d in range(digits, 7):
        if not ((lo > 0 and float(f"{lo:.{d}f}") == 0) or (hi < 0 and float(f"{hi:.{d}f}") == 0)):
            break
    unit = f" {unit}" if unit else ""
    return f"{fmt_signed(value, d)}{unit} [{fmt_signed(lo, d)}, {fmt_signed(hi, d)}]"


def task_quality_lines(tasks: pd.DataFrame) -> list[tuple[str, str, str]]:
    """Per task: (task, evidence text, state): "ok", "bad" (at chance, in reverse, no better than its
    label mean, NaN/inf outputs) or "unjudged" (no labelled rows, binary labels all one class, labels
    that never vary)."""
    out = []
    for r in tasks.to_dict(orient="records"):
        name = str(r["task"])
        n_lab = _num(r.get("n_labelled"))
        bad_rows = _num(r.get("nonfinite_predictions"))
        nonfinite = (
            f" — NaN/inf PREDICTIONS on {int(bad_rows):,} rows (left out of its metrics)"
            if bad_rows > 0
            else ""
        )
        constant = " — its output is CONSTANT" if constant_output(r) else ""
        if not n_lab > 0:
            why = "no finite prediction" if _num(r.get("n_rows")) == 0 else "no labelled rows"
            out.append((name, f"{name}: not judged ({why}){nonfinite}", "bad" if nonfinite else "unjudged"))
            continue
        if r.get("kind") == "binary":
            auc = _num(r.get("auc"))
            if math.isnan(auc):
                text = f"{name}: not judged: AUC undefined (labels all one class, {int(n_lab):,} rows){nonfinite}"
                out.append((name, text, "bad" if nonfinite else "unjudged"))
                continue
            if r.get("too_few_labels") is True:
                n_pos = round(n_lab * _num(r.get("positive_rate")))
                text = (
                    f"{name}: not judged: AUC {fmt_interval(auc, _num(r.get('auc_lo')), _num(r.get('auc_hi')))} "
                    f"on {n_pos:,} positive / {int(n_lab) - n_pos:,} negative rows: too few to tell"
                )
                if r.get("worse_than_base_rate") is True:
                    text += "; its log loss is worse than the base rate's (miscalibrated)"
                text += nonfinite
                out.append((name, text, "bad" if nonfinite else "unjudged"))
                continue
            state = "ok"
            ll, base = _num(r.get("logloss")), _num(r.get("base_rate_logloss"))
            text = (
                f"{name}: AUC {fmt_interval(auc, _num(r.get('auc_lo')), _num(r.get('auc_hi')))}, "
                f"log loss {ll:.4f} vs {base:.4f} predicting the base rate ({_num(r.get('positive_rate')):.1%} "
                f"positives, {int(n_lab):,} rows)"
            )
            if ranks_inverted(r):
                text += f" — RANKS IN REVERSE ({_why_inverted(r)})"
                state = "bad"  # not a working task either
            elif r.get("at_chance"):
                text += " — AT CHANCE (AUC interval holds 0.5)"
                state = "bad"
            elif r.get("worse_than_base_rate") is True:
                text += " — ranks rows, but log loss worse than the base rate's (miscalibrated)"
        else:
            mse, var, r2 = _num(r.get("mse")), _num(r.get("label_var")), _num(r.get("r2"))
            if r.get("too_few_labels") is True:
                text = (
                    f"{name}: not judged: R² {fmt_interval(r2, _num(r.get('r2_lo')), _num(r.get('r2_hi')))} "
                    f"on {int(n_lab):,} rows: too few to tell{nonfinite}"
                )
                out.append((name, text, "bad" if nonfinite else "unjudged"))
                continue
            if math.isnan(mse) or r.get("beats_label_mean") not in (True, False):  # None, or NaN in a frame
                text = f"{name}: not judged: MSE {mse:.4g} but the labels never vary ({int(n_lab):,} rows)"
                out.append((name, text + nonfinite, "bad" if nonfinite else "unjudged"))
                continue
            text = (
                f"{name}: MSE {mse:.4g} vs {var:.4g} predicting the label mean (R² {r2:.3f}, label mean "
                f"{_num(r.get('label_mean')):.4g}, {int(n_lab):,} rows)"
            )
            state = "ok"
            if r.get("beats_label_mean") is False:
                text += " — NO BETTER THAN THE LABEL MEAN (R² <= 0)"
                state = "bad"
        if nonfinite:
            state = "bad"
        out.append((name, text + constant + nonfinite, state))
    return out


def tasks_answer(tasks: pd.DataFrame) -> Answer:
    lines = task_quality_lines(tasks)
    q = QUESTIONS["tasks"]
    if not lines or all(state == "unjudged" and "no labelled rows" in text for _, text, state in lines):
        return Answer(
            "tasks",
            q,
            "Cannot tell: no labelled rows (name the label columns with --labels task=column).",
            "unknown",
            tuple(text for _, text, _ in lines),
        )
    records = {str(r["task"]): r for r in tasks.to_dict(orient="records")}
    evidence = tuple(text for _, text, _ in lines)
    bad = [name for name, _, state in lines if state == "bad"]
    unjudged = [name for name, _, state in lines if state == "unjudged"]
    not_judged = (
        f"{', '.join(unjudged)} cannot be judged (no labelled rows, too few, or labels of one class or value)"
        if unjudged
        else ""
    )
    if bad:
        groups: dict[tuple[str, str], list[str]] = {}  # (singular, plural) -> tasks
        for b in bad:
            r = records[b]
            if _num(r.get("nonfinite_predictions")) > 0:
                what = ("gives NaN/inf predictions on some rows", "give NaN/inf predictions on some rows")
            elif ranks_inverted(r):
                what = (
                    f"is ranked in reverse ({_why_inverted(r)})",
                    f"are ranked in reverse ({_why_inverted(r)})",
                )
            elif r.get("kind") == "binary":
                what = ("is at chance (AUC interval holds 0.5)", "are at chance (AUC interval holds 0.5)")
            else:
                what = (
                    "is no better than predicting the label mean (R² <= 0)",
                    "are no better than predicting the label mean (R² <= 0)",
                )
            groups.setdefault(what, []).append(b)
        parts = [f"{', '.join(names)} {what[len(names) > 1]}" for what, names in groups.items()]
        if not_judged:
            parts.append(not_judged)
        return Answer("tasks", q, f"No: {'; '.join(parts)}.", "problem", evidence)
    if unjudged:
        return Answer(
            "tasks",
            q,
            f"Cannot tell for every task: {not_judged}; the others work.",
            "unknown",
            evidence,
        )
    loose = [str(r["task"]) for r in records.values() if r.get("worse_than_base_rate") is True]
    if loose:
        return Answer(
            "tasks",
            q,
            f"Partly: every labelled task works, but {', '.join(loose)} "
            f"{'predicts' if len(loose) == 1 else 'predict'} "
            "probabilities worse than the base rate (miscalibrated).",
            "unknown",
            evidence,
        )
    binary = any(r.get("kind") == "binary" for r in records.values())
    regression = any(r.get("kind") != "binary" for r in records.values())
    how = " and ".join(
        w for w, on in (("ranks rows above chance", binary), ("beats its label mean", regression)) if on
    )
    return Answer("tasks", q, f"Yes: every labelled task {how}.", "ok", evidence)


# ------------------------------------------------------------------------------------------ gains
def _gain_rows(table: pd.DataFrame, tasks: pd.DataFrame) -> tuple[pd.DataFrame, set[str]]:
    """The baseline-gains rows of each task's primary metric, the sparse task first, and the baselines that
    predict several tasks (themselves multi-task, a Shared-Bottom: a comparison with one weighs
    architectures, not multi-task training against single-task models)."""
    primary = table[_primary_metric(table, tasks)]
    if primary.empty:
        primary = table
    # the sparse task first: it is the one multi-task training is meant to help
    primary = primary.assign(_sparse=~primary["sparse"].astype(bool)).sort_values(
        ["_sparse", "task", "baseline"]
    )
    multi = {str(b) for b, g in table.groupby("baseline") if g["task"].nunique() > 1}
    return primary, multi


def single_task_losses(causal: Any | None, tasks: pd.DataFrame) -> list[str]:
    """`"buy vs single (-0.325 AUC)"` for each significant loss on a task's primary metric against a working
    single-task baseline: negative transfer, measured."""
    table = getattr(causal, "baseline_gains", None)
    if table is None or table.empty:
        return []
    primary, multi = _gain_rows(table, tasks)
    return [
        f"{r['task']} vs {r['baseline']} ({fmt_signed(_num(r['gain']))} "
        f"{'AUC' if r['metric'] == 'auc' else r['metric']})"
        for r in primary.to_dict(orient="records")
        if bool(r.get("significant"))
        and _num(r["gain"]) < 0
        and str(r["baseline"]) not in multi
        and not _baseline_at_chance(r)
    ]


def gains_answer(causal: Any | None, tasks: pd.DataFrame, *, gateless: bool = False) -> Answer:
    """ "Did multi-task training help?" from the baseline gains (`gateless`: the model is itself a
    Shared-Bottom, so only single-task baselines are suggested)."""
    q = QUESTIONS["gains"]
    table = getattr(causal, "baseline_gains", None)
    hint = NO_BASELINE_HINT_GATELESS if gateless else NO_BASELINE_HINT
    if causal is None or table is None or table.empty:
        return Answer("gains", q, "Not measured: " + hint + ".", "unknown")
    primary, multi = _gain_rows(table, tasks)
    evidence, better, worse, broken, unjudged = [], [], [], [], []
    for r in primary.to_dict(orient="records"):
        sig = bool(r.get("significant"))
        metric = "AUC" if r["metric"] == "auc" else str(r["metric"])
        tag = " (sparse)" if r.get("sparse") else ""
        few = _flag(r, "too_few_labels")
        verdict = (
            "cannot tell: " + _rows_text(r) + ", too few"
            if few
            else "significant"
            if sig
            else "not significant"
        )
        line = (
            f"{r['task']}{tag} vs {r['baseline']}: "
            f"{fmt_signed_interval(_num(r['gain']), _num(r['lo']), _num(r['hi']), unit=metric)}, {verdict}"
        )
        if _baseline_at_chance(r):
            # a gain over a baseline that does not work says nothing about multi-task training
            line += f" (the baseline itself is at chance: AUC {_num(r['baseline_value']):.3f})"
            broken.append(f"{r['baseline']} on {r['task']}")
        elif few:
            unjudged.append(f"{r['task']} vs {r['baseline']} ({_rows_text(r)}: too few to compare)")
        elif _baseline_verdict(r)[1]:
            # the task table's rule on the same rows: the baseline cannot be judged, nor a tie with it
            b = fmt_interval(
                _num(r["baseline_value"]), _num(r.get("baseline_lo")), _num(r.get("baseline_hi"))
            )
            line += f" (the baseline itself cannot be judged: AUC {b} on {_rows_text(r)})"
            if sig and _num(r["gain"]) != 0:
                kind = " (a multi-task baseline)" if str(r["baseline"]) in multi else ""
                (better if _num(r["gain"]) > 0 else worse).append(f"{r['task']} vs {r['baseline']}{kind}")
            else:
                unjudged.append(
                    f"{r['task']} vs {r['baseline']} (the baseline cannot be judged on {_rows_text(r)})"
                )
        elif sig and _num(r["gain"]) != 0:
            kind = " (a multi-task baseline)" if str(r["baseline"]) in multi else ""
            (better if _num(r["gain"]) > 0 else worse).append(f"{r['task']} vs {r['baseline']}{kind}")
        evidence.append(line)
    names = {m: "AUC" if m == "auc" else m for m in primary["metric"].unique()}
    primary_names = " / ".join(dict.fromkeys(names.values()))
    others = table.drop(index=primary.index, errors="ignore")
    other_sig = [
        f"{r['task']} vs {r['baseline']} ({r['metric']} {fmt_signed(_num(r['gain']), 4)})"
        for r in others.to_dict(orient="records")
        if bool(r.get("significant"))
    ]
    sparse = [str(t) for t in tasks.loc[_sparse_mask(tasks), "task"]] if not tasks.empty else []
    unmatched = [t for t in sparse if t not in set(primary["task"])]
    if worse:
        ans, status = f"No: the multi-task model is significantly worse on {', '.join(worse)}.", "problem"
    elif better:
        ans, status = f"Yes: a significant gain on {', '.join(better)}.", "ok"
    elif broken and len(broken) == len(primary):
        ans, status = (
            f"Cannot tell: every baseline is at chance on the tasks it predicts ({', '.join(broken)}), so no "
            "comparison with it can show whether multi-task training helped.",
            "unknown",
        )
        broken = []
    elif unjudged and len(unjudged) + len(broken) == len(primary):
        ans, status = (
            f"Cannot tell on these rows: {', '.join(unjudged)}.",
            "unknown",
        )
        unjudged = []
    else:
        ans, status = (
            f"Not shown: no {primary_names} difference from a working baseline is significant.",
            "unknown",
        )
        if other_sig:
            ans += f" Significant on a secondary metric: {', '.join(other_sig)}."
    if broken:
        ans += f" Not evidence either way: {', '.join(broken)} (the baseline is at chance)."
    if unjudged:
        ans += f" Cannot tell on these rows: {', '.join(unjudged)}."
    if unmatched:
        ans += f" No baseline predicts the sparse task {', '.join(unmatched)}."
    return Answer("gains", q, ans, status, tuple(evidence))


def _primary_metric(table: pd.DataFrame, tasks: pd.DataFrame) -> pd.Series:
    """Rows of a (task, metric) table on each task's primary metric: AUC for binary tasks, MSE otherwise."""
    kinds = dict(zip(tasks["task"], tasks["kind"], strict=False)) if not tasks.empty else {}
    return table["metric"] == table["task"].map(
        lambda t: "auc" if kinds.get(t, "binary") == "binary" else "mse"
    )


def _flag(row: dict[str, Any], column: str) -> bool:
    """A boolean column of a table row; absent (results saved before it existed) or NaN is False."""
    return row.get(column) is True or row.get(column) is np.True_


def _rows_text(row: dict[str, Any]) -> str:
    """`"3 positive / 47 negative rows"` of a binary baseline-gains row (`"12 rows"` otherwise)."""
    n, rate = _num(row.get("n_labelled")), _num(row.get("positive_rate"))
    if math.isnan(rate):
        return f"{int(n):,} rows" if n > 0 else "no rows"
    n_pos, n_neg = class_counts(n, rate)
    return f"{n_pos:,} positive / {n_neg:,} negative rows"


def _why_inverted(row: dict[str, Any]) -> str:
    """Why a task row is ranked in reverse: its AUC interval lies below 0.5, or (under 10 rows of a class, the
    interval not used) Mann-Whitney's test tells its AUC below 0.5 from 0.5."""
    if _num(row.get("auc_hi")) < 0.5:
        return "AUC interval below 0.5"
    return "AUC below 0.5 by Mann-Whitney's test on a handful of rows"


def _baseline_verdict(row: dict[str, Any]) -> tuple[bool, bool]:
    """(at chance, too few) of a baseline-gains row's baseline on its AUC, by the task table's rule
    (`functional.evidence.auc_verdict` on the baseline's DeLong interval: the table's `baseline_at_chance`,
    `baseline_too_few`). Rows saved before those columns existed: the same rule on a Hanley–McNeil interval."""
    if row.get("metric") != "auc":
        return False, False
    if "baseline_at_chance" in row and isinstance(row.get("baseline_at_chance"), bool | np.bool_):
        return _flag(row, "baseline_at_chance"), _flag(row, "baseline_too_few")
    auc, n, rate = (
        _num(row.get("baseline_value")),
        _num(row.get("n_labelled")),
        _num(row.get("positive_rate")),
    )
    if math.isnan(auc) or not n > 0 or math.isnan(rate):
        return False, False
    n_pos, n_neg = class_counts(n, rate)
    return auc_verdict(auc, *auc_interval(auc, n_pos, n_neg), n_pos, n_neg)


def _baseline_at_chance(row: dict[str, Any]) -> bool:
    """A baseline-gains row whose baseline is at chance on that task (`_baseline_verdict`): the baseline does
    not work there. Too few rows to judge it is not "at chance" (`baseline_too_few`)."""
    return _baseline_verdict(row)[0]


def _sparse_mask(tasks: pd.DataFrame) -> pd.Series:
    """Binary tasks with labelled rows whose positive rate is below 5% (the sparse targets)."""
    rate = pd.to_numeric(tasks.get("positive_rate"), errors="coerce")
    return (tasks["kind"] == "binary") & (rate > 0) & (rate < 0.05)


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


MEASURED_SMALL = ": measured impact small"


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
    if trow.get("beats_label_mean") is False:
        return (
            f"task {task} predicts no better than its label mean (R² {_num(trow.get('r2')):.3f})",
            "critical",
        )
    abl = _ablation(causal, task, expert) if task else None
    if abl is None and not task:
        return (
            "not measured for one task: this gate has no task of its own (a shared gate, or one whose task "
            "discovery could not trace)",
            None,
        )
    if abl is None:
        return ("impact not measured (run `report` with labelled data for the causal analyses)", None)
    imp, lo, hi, sig = _num(abl["importance"]), _num(abl["lo"]), _num(abl["hi"]), bool(abl["significant"])
    metric = "AUC" if abl["metric"] == "auc" else str(abl["metric"])
    change = -imp  # importance = how much worse without it; show the metric change
    # `significant` is Holm-adjusted over the ablation table: an interval off 0 can still be noise
    verdict = "significant" if sig else "not significant"
    if not sig and (lo > 0 or hi < 0):
        verdict += " once adjusted for the ablation table's many cells"
    text = (
        f"removing expert {expert} changes {task} {metric} by "
        f"{fmt_signed_interval(change, -hi, -lo)}, {verdict}"
    )
    if sig and imp <= -HARMLESS_IMPACT:  # the task is better without the expert its gate collapsed onto
        return (text + ": the collapse costs quality", "critical")
    if lo > -HARMLESS_IMPACT and hi < HARMLESS_IMPACT:  # the whole interval is small: measured harmless
        return (text + MEASURED_SMALL, "warning")
    if sig and imp > 0:  # the task needs the expert its gate collapsed onto: the severity stays
        return (
            text
            + ": the task depends on that expert; an ablation cannot tell whether a spread gate would do better",
            None,
        )
    if sig:
        return (text + ": the task is slightly better without that expert", None)
    # not significant, but the interval is too wide to call the impact small: the severity stays
    return (text + ": the interval is too wide to tell whether the collapse costs quality", None)


def rescale_by_impact(
    findings: list[Finding], tables: dict[str, pd.DataFrame], causal: Any | None
) -> list[Finding]:
    """Collapsed gates get the severity their measured impact supports: critical when the task is at
    chance or measurably better without the expert; a warning when the whole interval of the impact is
    small (a harmless collapse onto a duplicate expert); unchanged when nothing was measured or the interval
    is too wide to tell. The impact goes into the
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
    for code in (codes.TASK_IGNORES_OWN_EXPERTS, codes.TASK_IGNORES_SHARED_EXPERTS):
        for f in by_code.get(code, []):
            if _key(f) not in used:
                stories.append(_ple_side_story(f, findings, tables, used))
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
                _chance_causes(tables, [f.subject for f in chance]),
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
            "No urgent action: the measured impact is small and the duplicate carries the same function."
            if impact.endswith(MEASURED_SMALL)
            else "Its impact is not shown to be small: compare a retrain with distinct expert initialisations.",
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
    row = _task_row(tables, task)
    rate = _num(row.get("positive_rate"))
    if math.isnan(rate):
        data = "data: a wrong label column, or labels on another scale than the output"
    elif rate < 0.05:
        data = f"data: {rate:.1%} positives (too few positives to learn from, or a wrong label column)"
    else:
        data = f"data: a wrong label column ({rate:.1%} positives is enough to learn from)"
    causes = (
        "learning rate too high / input scale (the usual cause of a model that stops learning a task)",
        data,
        "loss weighting: the task's loss is too small next to the others",
        "capacity of the task's tower and experts",
    )
    if constant_output(row):
        return (
            "its output is constant on every row: a dead tower, a zeroed output layer or a disconnected head",
            *causes,
        )
    return causes


def _chance_causes(tables: dict[str, pd.DataFrame], names: list[str]) -> tuple[str, ...]:
    """Causes for one or several tasks at chance: each task's own positive rate (not the last one's for all),
    and when every labelled binary task is at chance at once, labels out of line with the rows first (a
    model that stopped learning rarely loses every task together; a shuffled or mis-joined label file does)."""
    if len(names) == 1:
        return _task_causes(tables, names[0])
    rates = [(n, _num(_task_row(tables, n).get("positive_rate"))) for n in names]
    shown = ", ".join(f"{n} {r:.1%}" for n, r in rates if not math.isnan(r))
    few = [n for n, r in rates if r < 0.05]
    data = (
        f"data: positives {shown}"
        + (f" (too few for {', '.join(few)})" if few else "")
        + ", or wrong label columns"
    )
    tasks = tables.get("tasks", pd.DataFrame())
    binary = tasks[tasks["kind"] == "binary"] if not tasks.empty and "kind" in tasks else tasks
    every = not binary.empty and set(map(str, binary["task"])) <= set(names)
    causes = (
        "learning rate too high / input scale (the usual cause of a model that stops learning a task)",
        data,
        "loss weighting: the tasks' losses are too small next to the others",
        "capacity of the tasks' towers and experts",
    )
    if every:
        lead = (
            "labels out of line with the rows: every task is at chance at once (a shuffled or mis-joined label "
            "file, or labels from another evaluation set)"
        )
        return (lead, data, *causes[:1], *causes[2:])
    return causes


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


def _ple_side_story(
    f: Finding, findings: list[Finding], tables: dict[str, pd.DataFrame], used: set[str]
) -> Diagnosis:
    """A PLE task gate that ignores its own experts (with those experts' dead/inactive findings) or the
    shared ones (with the shared experts it leaves to one other task: `shared_expert_single_task`)."""
    gate = f.subject
    util = tables.get("utilization", pd.DataFrame())
    experts = tables.get("experts", pd.DataFrame())
    mixed = [str(e) for e in util.loc[util["gate"] == gate, "expert"]] if not util.empty else []
    owners = dict(zip(experts["expert"], experts["owner"], strict=False)) if "owner" in experts else {}
    task = str(_gate_row(tables, gate).get("task") or "")
    members = [f]
    if f.code == codes.TASK_IGNORES_OWN_EXPERTS:
        for e in (e for e in mixed if owners.get(e) == task):
            members += _expert_flags(findings, e).values()
        title = f"Gate {gate} ignores task {task}'s own experts"
        steps = (
            f.remedy,
            f"If {task} does well without them, fewer (or no) task-specific experts for it free capacity.",
        )
    else:
        shared = {e for e in mixed if owners.get(e) == "shared"}
        members += [g for g in findings if g.code == codes.SHARED_EXPERT_SINGLE_TASK and g.subject in shared]
        title = f"Gate {gate} ignores the shared experts (task {task} learns alone)"
        steps = (f.remedy,)
    members = [m for m in members if _key(m) not in used]
    used.update(_key(m) for m in members)
    severity = min((m.severity for m in members), key=lambda s: SEVERITY_ORDER[s])
    return Diagnosis(title, severity, f.message, tuple(_key(m) for m in members), (), steps, "")


def _better_counterfactuals(causal: Any | None, tasks: pd.DataFrame) -> list[str]:
    """Gate counterfactuals that make a task significantly better on its primary metric (AUC, MSE), largest
    first, as sentences: evidence that the task's own gate routes it worse than another gate would."""
    cf = getattr(causal, "counterfactuals", None)
    if cf is None or cf.empty:
        return []
    hits = cf[_primary_metric(cf, tasks) & cf["significant"].astype(bool) & ~cf["worse"].astype(bool)]
    hits = hits.assign(_size=hits["change"].abs()).sort_values("_size", ascending=False)
    out = []
    for r in hits.to_dict(orient="records"):
        what = str(r["counterfactual"])
        how = {"uniform": "a uniform gate", "mean_gate": "its own mean gate, the same for every row"}.get(
            what, f"the gate of {what.split(':', 1)[1]}" if what.startswith("gate_of:") else what
        )
        metric = "AUC" if r["metric"] == "auc" else str(r["metric"]).upper()
        out.append(
            f"{r['task']} gets a better {metric} with {how} ("
            f"{fmt_signed_interval(_num(r['change']), _num(r['lo']), _num(r['hi']))}, gate counterfactual)"
        )
    return out


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
    if verdict.lower().startswith(("could not", "no gates", "no, by design")):
        routing_status = "unknown"
    ple = ple_evidence(ple_uses(tables)) if "(PLE/CGC)" in verdict else ()  # each task gate's split
    routing = Answer("routing", QUESTIONS["routing"], verdict, routing_status, ple)
    gains = gains_answer(causal, tasks, gateless=verdict.lower().startswith("no gates"))
    if verdict.lower().startswith("could not"):  # unverified routing: nothing below is "nothing urgent"
        nxt = Answer(
            "next",
            QUESTIONS["next"],
            "Name the gates discovery could not resolve: `mmoe-inspect topology MODEL --write spec.toml`, "
            "fill in the suggested [[gates]], then rerun with --spec spec.toml (the routing is unverified).",
            "problem",
            tuple(f"{d.severity}: {d.title}" for d in diagnoses[:5]),
        )
    elif (losses := single_task_losses(causal, tasks)) and (
        not diagnoses or diagnoses[0].severity != "critical"
    ):
        # a measured loss against a single-task model comes before warnings: recalibrating cannot fix ranking
        nxt = Answer(
            "next",
            QUESTIONS["next"],
            f"Negative transfer: the multi-task model is significantly worse than a single-task model on "
            f"{', '.join(losses)}. Look for task conflict before anything else: loss weights, a task-specific "
            "tower or experts (PLE/CGC), or train that task alone.",
            "problem",
            (gains.answer, *(f"{d.severity}: {d.title}" for d in diagnoses[:4])),
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
    elif better_routing := _better_counterfactuals(causal, tasks):
        nxt = Answer(
            "next",
            QUESTIONS["next"],
            f"No finding, but {better_routing[0]}: the task's own gate routes it measurably worse than that; "
            "look at how its gate was trained (loss weight, gate input, temperature).",
            "unknown",
            tuple(better_routing),
        )
    else:
        nxt = Answer("next", QUESTIONS["next"], "Nothing urgent: no findings.", "ok")
    return Review((tasks_answer(tasks), gains, routing, nxt), tuple(diagnoses))
