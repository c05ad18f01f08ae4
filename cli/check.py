"""`mmoe-inspect check`: the findings as a terminal table and an exit code for CI."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from mmoe_inspect._plural import plural
from mmoe_inspect.analysis import codes

from ._common import (
    EXIT_CANNOT_JUDGE,
    EXIT_CHECK_FAILED,
    FAIL_ON_HELP,
    CheckpointArg,
    LoadOptions,
    RunOptions,
    SpecOpt,
    command,
    guarded,
    out,
    parse_fail_on,
)
from ._pipeline import inspect_checkpoint

EPILOG = """\
[bold]Examples[/bold]

  mmoe-inspect check model.pt --data eval.parquet

  mmoe-inspect check model.pt --data eval.parquet --fail-on collapsed,dead-expert

  mmoe-inspect check rechub.pt --trust-checkpoint --data eval.parquet --tasks a,b -q

Exit codes: 0 when no finding matches --fail-on (default: warning or worse), 1 when one does, 2 on bad input (checkpoint, data or option), 4 when the routing cannot be judged (discovery left gate-like items unresolved: pass --spec, or --allow-unresolved to judge only what was found) or when the only matching findings are tasks that cannot be judged (no labelled rows, labels of one class, too few rows: task_unlabelled, single_class_labels, too_few_labels). "internal error" with exit code 1 is a bug: rerun with --debug.
"""

SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "blue"}


@command
def check_command(
    checkpoint: CheckpointArg,
    spec: SpecOpt = None,
    fail_on: Annotated[
        str,
        typer.Option(
            "--fail-on",
            metavar="FINDINGS",
            help=f"Findings that fail the check (exit 1). {FAIL_ON_HELP} Same rules as `report --fail-on`.",
        ),
    ] = "warning",
    allow_unresolved: Annotated[
        bool,
        typer.Option(
            "--allow-unresolved",
            help="Judge only the gates that were found even when discovery left gate-like items unresolved "
            f"(default: exit {EXIT_CANNOT_JUDGE}, the routing cannot be judged).",
        ),
    ] = False,
    *,
    load: LoadOptions,
    run: RunOptions,
) -> None:
    """Diagnose a model's gates on data: findings as a table, exit 1 when a listed finding is present."""
    with guarded(run.debug):
        rule = parse_fail_on(fail_on)
        result = inspect_checkpoint(checkpoint, load, run, spec=spec)
        failing = rule.failing(result.findings)
    topo = result.topology
    unjudged = not topo.judgeable
    if unjudged:
        out.print(f"[bold red]CANNOT JUDGE:[/] {escape(result.verdict)}")
        for u in topo.unresolved:
            out.print(f"  unresolved: {escape(u.line())}")
        out.print(
            "  see `mmoe-inspect topology CHECKPOINT --write spec.toml` for a spec to fill in, then --spec spec.toml"
        )
    unjudged_tasks = [f for f in result.findings if f.code in codes.UNJUDGED_TASK_CODES]
    if unjudged_tasks:  # said first: whether these tasks work was not judged
        names = ", ".join(dict.fromkeys(f.subject for f in unjudged_tasks))
        out.print(
            f"[bold yellow]CANNOT JUDGE TASK(S):[/] {escape(names)}: no labelled rows, too few, or labels of one "
            "class or value (pass --labels task=column, or more labelled rows)"
        )
    fails = {id(f) for f in failing}
    if result.findings:
        out.print(f"[bold]Findings for {escape(result.model_name)}[/bold] ({len(result.findings)})")
        for f in result.findings:  # one block per finding: no table, so nothing is cut in a CI log
            evidence = ", ".join(f"{k}={_short_value(v)}" for k, v in f.evidence.items())
            mark = "FAIL " if id(f) in fails else ""
            out.print(
                f"{mark}[{SEVERITY_STYLE.get(f.severity, '')}]{f.severity}[/] {f.code} "
                f"[bold]{escape(f.subject)}[/bold]: {escape(f.title)}"
            )
            out.print(f"    evidence: {escape(evidence)}")
            out.print(f"    remedy: {escape(f.remedy)}")
        out.print(
            f"details: mmoe-inspect report {escape(str(checkpoint))} (Summary: diagnosis, evidence, next steps)"
        )
    else:
        out.print(f"No findings for {escape(result.model_name)}.")
    out.print(f"[bold]{escape(result.verdict)}[/bold]")
    if unjudged and not allow_unresolved:
        out.print(
            f"check cannot judge: the routing was not verified (exit {EXIT_CANNOT_JUDGE}); pass --spec with the "
            "gates, or --allow-unresolved to judge only what was found"
        )
        raise typer.Exit(EXIT_CANNOT_JUDGE)
    # a task that cannot be judged (no labels, one class, too few rows) is neither a pass nor a model failure
    model_failing = [f for f in failing if f.code not in codes.UNJUDGED_TASK_CODES]
    if model_failing:
        out.print(
            f"check failed: {plural(len(model_failing), 'finding')} "
            f"{'matches' if len(model_failing) == 1 else 'match'} --fail-on {rule.describe()}"
            + (f"; {escape(names)} also not judged" if unjudged_tasks else "")
        )
        raise typer.Exit(EXIT_CHECK_FAILED)
    if failing:
        names = ", ".join(dict.fromkeys(f.subject for f in failing))  # every one an unjudged task
        out.print(
            f"check cannot judge: task(s) {escape(names)} could not be judged on these rows (exit "
            f"{EXIT_CANNOT_JUDGE}, not a model failure: no other finding matches --fail-on {rule.describe()}); "
            "pass --labels task=column, or more labelled rows"
        )
        raise typer.Exit(EXIT_CANNOT_JUDGE)
    out.print(f"check passed: no finding matches --fail-on {rule.describe()}")


def _short_value(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)
