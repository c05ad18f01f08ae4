"""`mmoe-inspect summary`: the headline numbers of a model's routing as terminal tables."""

from __future__ import annotations

import math

from rich.markup import escape
from rich.table import Table

from mmoe_inspect.analysis.review import fmt_interval

from ._common import CheckpointArg, LoadOptions, RunOptions, SpecOpt, command, guarded, out
from ._pipeline import inspect_checkpoint

EPILOG = """\
[bold]Examples[/bold]

  mmoe-inspect summary mmoe-demo/checkpoints/mmoe.pt

  mmoe-inspect summary model.pt --trust-checkpoint --data eval.parquet --sample 0.1

The same numbers as the report's headline cards; `check` lists the findings, `report` draws everything.
"""


def fmt(v: object, digits: int = 3) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        return f"{v:,.0f}" if v.is_integer() and abs(v) >= 1000 else f"{v:.{digits}f}"
    return str(v)


STATUS_STYLE = {"ok": "green", "problem": "bold red", "unknown": "yellow"}


def print_review(result: object) -> None:
    """The review's questions, each with its one-line answer and evidence (same words as the report)."""
    review = result.review  # type: ignore[attr-defined]
    for a in review.answers:
        out.print(
            f"[bold]{escape(a.question)}[/bold] [{STATUS_STYLE.get(a.status, '')}]{escape(a.answer)}[/]"
        )
        for e in a.evidence:
            out.print(f"    {escape(e)}")
    for d in review.diagnoses[:3]:
        out.print(
            f"  [{STATUS_STYLE['problem'] if d.severity == 'critical' else 'yellow'}]{d.severity}[/] {escape(d.title)}: {escape(d.summary)}"
        )
        if d.impact:
            out.print(f"      measured impact: {escape(d.impact)}")
        if d.causes:
            out.print(f"      likely causes: {escape('; '.join(d.causes[:3]))}")
        out.print(f"      next: {escape(d.steps[0])}" if d.steps else "")


@command
def summary_command(
    checkpoint: CheckpointArg,
    spec: SpecOpt = None,
    *,
    load: LoadOptions,
    run: RunOptions,
) -> None:
    """Print the headline table of a model's routing: verdict, per-gate numbers, task metrics."""
    with guarded(run.debug):
        from mmoe_inspect.reports import headline_cards

        result = inspect_checkpoint(checkpoint, load, run, spec=spec)
        cards = headline_cards(result)
    topo = result.topology
    out.print(f"[bold]{escape(result.model_name)}[/bold] on {escape(result.data_source)}")
    print_review(result)
    head = Table(title="Headline", title_justify="left")
    head.add_column("")
    head.add_column("value", justify="right")
    head.add_column("note")
    for c in cards:
        head.add_row(escape(c.label), escape(c.value), escape(c.hint))
    out.print(head)
    gm = result.table("gate_metrics")
    if not gm.empty:
        gates = Table(title="Gates", title_justify="left")
        for col in (
            "gate",
            "task",
            "level",
            "effective experts",
            "norm. entropy",
            "input dependence",
            "top expert",
        ):
            gates.add_column(col, justify="left" if col in ("gate", "task", "top expert") else "right")
        for r in gm.itertuples(index=False):
            gates.add_row(
                escape(str(r.gate)),
                escape(str(r.task) or "shared"),
                str(r.level),
                f"{fmt(float(r.effective_experts), 2)} of {int(r.n_experts)}",
                fmt(float(r.normalized_entropy)),
                fmt(float(r.input_dependence)),
                f"{escape(str(r.top_expert))} ({fmt(float(r.max_mean_weight), 2)})",
            )
        out.print(gates)
    elif result.topology.unresolved:  # gate-like items discovery could not read: not a gate-less model
        out.print(f"No gates recorded: {escape(result.topology.why_no_gates)}.")
    else:
        out.print("No gates: a Shared-Bottom (or dense) model routes nothing.")
    tasks = result.table("tasks")
    if not tasks.empty:
        t = Table(title="Tasks", title_justify="left")
        for col in (
            "task",
            "kind",
            "label rate / mean",
            "mean prediction",
            "AUC [95% CI] / MSE",
            "log loss (base rate)",
        ):
            t.add_column(col, justify="left" if col in ("task", "kind") else "right")
        for r in tasks.to_dict(orient="records"):
            binary = r.get("kind") == "binary"
            label = r.get("positive_rate") if binary else r.get("label_mean")
            if binary:
                score = fmt_interval(
                    float(r.get("auc", math.nan)),
                    float(r.get("auc_lo", math.nan)),
                    float(r.get("auc_hi", math.nan)),
                )
                if r.get("at_chance"):
                    score += " AT CHANCE"
                elif r.get("too_few_labels") is True:
                    score += " NOT JUDGED (too few rows)"
                ll = f"{fmt(float(r.get('logloss', math.nan)), 4)} ({fmt(float(r.get('base_rate_logloss', math.nan)), 4)})"
            else:
                score, ll = fmt(float(r.get("mse", math.nan))), "—"
                if r.get("too_few_labels") is True:
                    score += " NOT JUDGED (too few rows)"
                elif r.get("beats_label_mean") is False:
                    score += " NO BETTER THAN THE MEAN"
            t.add_row(
                escape(str(r["task"])),
                str(r.get("kind", "")),
                fmt(float(label)) if label is not None else "—",
                fmt(float(r.get("mean_prediction", math.nan))),
                escape(score),
                ll,
            )
        out.print(t)
    n = {s: sum(f.severity == s for f in result.findings) for s in ("critical", "warning", "info")}
    out.print(
        f"{int(result.n_rows):,} rows · {len(topo.tasks)} tasks · {len(topo.gates)} gates · "
        f"{len(topo.experts)} experts · findings: {n['critical']} critical, {n['warning']} warning, "
        f"{n['info']} info (details: mmoe-inspect check)"
    )
