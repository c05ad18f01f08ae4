"""`mmoe-inspect report`: inspect a checkpoint on data and write the HTML/PNG/JSON report."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mmoe_inspect.reports._replace import out_dir_problem

from ._common import (
    EXIT_FINDINGS,
    FAIL_ON_HELP,
    CheckpointArg,
    LoadOptions,
    OptionError,
    RunOptions,
    SpecOpt,
    command,
    err,
    guarded,
    out,
    parse_fail_on,
    print_findings,
)
from ._distributed import distributed_run
from ._pipeline import inspect_checkpoint, parse_baselines, read_run
from ._write import default_out_dir, write_report_with_progress

ATTRIBUTION_BUDGET_S = 30.0  # default --attribution-budget (seconds): AttributionOptions' default
ATTRIBUTION_ROWS = 256  # default --attribution-rows: AttributionOptions' default

CAUSAL = "Causal analyses"
ATTRIBUTIONS = "Feature attributions"
DISTRIBUTED = "Distributed runs"


class Intervals(str, Enum):
    """How `report` computes the causal analyses' confidence intervals (see `Evaluation`)."""

    analytic = "analytic"
    bootstrap = "bootstrap"


EPILOG = """\
[bold]Examples[/bold]

  mmoe-inspect report mmoe-demo/checkpoints/mmoe.pt                 (writes mmoe-report-mmoe/)

  mmoe-inspect report model.pt --trust-checkpoint --data eval.parquet \\
    --tasks click,purchase --baseline sb=shared_bottom.pt --segment-by device

  mmoe-inspect report model.pt --data eval.parquet --fail-on critical

  mmoe-inspect report model.pt --data eval.parquet --run run_log.jsonl

  torchrun --nproc-per-node 4 -m mmoe_inspect.cli report model.pt --data eval.parquet

Writes OUT/index.html (OUT defaults to mmoe-report-<checkpoint name>; a previous report there is replaced with a notice), OUT/overview.png (one 16:9 slide), OUT/figures/*.png, OUT/metrics.json and OUT/tables/*.csv. The causal analyses run when the data has label columns; feature attributions (Captum) run on a sample of rows within --attribution-budget seconds. Exit code 3 when --fail-on matches. Python: mmoe_inspect.reports.write_report(result, "OUT").
"""


@command
def report_command(
    checkpoint: CheckpointArg,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Report folder to write; a previous report there is replaced (with a notice).",
            show_default="mmoe-report-<checkpoint name>",
        ),
    ] = None,
    spec: SpecOpt = None,
    baseline: Annotated[
        list[str] | None,
        typer.Option(
            "--baseline",
            metavar="NAME=PATH",
            help="A model to measure the multi-task gain against (repeatable), e.g. a single-task or "
            "Shared-Bottom model trained on the same data; loaded with the same loading options.",
            rich_help_panel=CAUSAL,
        ),
    ] = None,
    segment_by: Annotated[
        str | None,
        typer.Option(
            "--segment-by",
            metavar="COLUMN",
            help="Data column whose values are segments: the report shows how each segment is routed.",
            rich_help_panel=CAUSAL,
        ),
    ] = None,
    no_causal: Annotated[
        bool,
        typer.Option(
            "--no-causal",
            help="Skip the causal analyses (expert ablation, gate counterfactuals, gains, segments). They run "
            "by default when the data has label columns, on every row read (within a 2 GiB memory budget for the "
            "per-row evaluation; a note says when it cuts the rows short).",
            rich_help_panel=CAUSAL,
        ),
    ] = False,
    bootstrap: Annotated[
        int,
        typer.Option(
            "--bootstrap",
            metavar="N",
            min=0,
            help="Bootstrap resamples for the confidence intervals of the causal analyses with --intervals "
            "bootstrap (0 = no intervals).",
            rich_help_panel=CAUSAL,
        ),
    ] = 200,
    intervals: Annotated[
        Intervals,
        typer.Option(
            "--intervals",
            help="Confidence intervals of the causal analyses: analytic (DeLong for AUC and AUC differences, "
            "normal intervals of per-row log loss / squared / absolute error and of their paired per-row "
            "differences; no resampling) or bootstrap (percentiles of --bootstrap paired row resamples).",
            rich_help_panel=CAUSAL,
        ),
    ] = Intervals.analytic,
    attributions: Annotated[
        bool,
        typer.Option(
            "--attributions/--no-attributions",
            help="Attribute each gate's weights, each expert's output and each task's prediction to the input "
            "features (Integrated Gradients, Captum) on a sample of rows: the report's Attributions section.",
            rich_help_panel=ATTRIBUTIONS,
        ),
    ] = True,
    attribution_budget: Annotated[
        float,
        typer.Option(
            "--attribution-budget",
            metavar="SECONDS",
            min=0,
            help="Time budget of the attributions; outputs not reached in time are skipped, and the report "
            "says which.",
            rich_help_panel=ATTRIBUTIONS,
        ),
    ] = ATTRIBUTION_BUDGET_S,
    attribution_rows: Annotated[
        int,
        typer.Option(
            "--attribution-rows",
            metavar="N",
            min=1,
            help="Rows sampled for the attributions.",
            rich_help_panel=ATTRIBUTIONS,
        ),
    ] = ATTRIBUTION_ROWS,
    fail_on: Annotated[
        str,
        typer.Option(
            "--fail-on",
            metavar="FINDINGS",
            help=f"Exit with code 3 (after writing the report) when a finding matches. {FAIL_ON_HELP} "
            "Same rules as `check --fail-on`, which exits 1 instead and defaults to warning.",
        ),
    ] = "never",
    run_log: Annotated[
        Path | None,
        typer.Option(
            "--run",
            metavar="RUN_LOG",
            help="A GateMonitor run log (.jsonl or .parquet) of the model's training: the report's Training "
            "section shows gate health over the steps and when each finding first appeared.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Write into a non-empty folder that is not a report.")] = False,
    distributed: Annotated[
        bool | None,
        typer.Option(
            "--distributed/--no-distributed",
            show_default="on when launched by torchrun with several processes",
            help="Run as one rank of a torchrun job: each rank records its shard of the rows, the statistics "
            "are combined across ranks (gloo on CPU, nccl on CUDA), rank 0 runs the causal analyses and "
            "attributions and writes the report.",
            rich_help_panel=DISTRIBUTED,
        ),
    ] = None,
    dist_timeout: Annotated[
        float,
        typer.Option(
            "--dist-timeout",
            metavar="SECONDS",
            min=1,
            help="How long a rank waits for the others at a collective before failing (a rank that died "
            "silently, or rank 0 still running the causal analyses).",
            rich_help_panel=DISTRIBUTED,
        ),
    ] = 1800.0,
    *,
    load: LoadOptions,
    run: RunOptions,
) -> None:
    """Inspect a model's gates on data and write index.html, an overview slide, figures and metrics.json.

    Nothing is written unless the checkpoint loads and every row inspects cleanly.
    """
    with guarded(run.debug):
        rule = parse_fail_on(fail_on)
        baselines = parse_baselines(baseline)
        training = read_run(run_log) if run_log is not None else None
        if no_causal and (baselines or segment_by):
            raise OptionError("--baseline and --segment-by need the causal analyses: drop --no-causal")
        out_dir = out_dir if out_dir is not None else default_out_dir(checkpoint)
        problem = out_dir_problem(out_dir)  # refused now, not after the whole run
        if problem is not None:
            raise OptionError(f"--out: {problem}")
        from mmoe_inspect.attribution.options import AttributionOptions
        from mmoe_inspect.causal.options import CausalOptions

        request = (
            None if no_causal else CausalOptions(baselines, segment_by, bootstrap, intervals=intervals.value)
        )
        attribution = AttributionOptions(attribution_budget, attribution_rows) if attributions else None
        from mmoe_inspect.reports import EarlyFigures

        with distributed_run(distributed, load, dist_timeout) as (dist, load), EarlyFigures() as early:
            result = inspect_checkpoint(
                checkpoint,
                load,
                run,
                spec=spec,
                causal=request,
                attribution=attribution,
                dist=dist,
                on_recorded=early.start,  # the routing figures are drawn while the analyses run
            )
            if dist is not None and not dist.is_main:
                return  # rank 0 writes the report (after every rank passed the last status exchange)
            if training is not None:
                from mmoe_inspect.monitor import fit_to_model

                training, note = fit_to_model(training, [g.name for g in result.topology.gates])
                if note is not None:  # another model's log is not drawn as this model's training unsaid
                    err.print(f"[yellow]warning:[/yellow] --run: {escape(note)}")
                    result.meta["training_note"] = note
            result.training = training
            index = write_report_with_progress(result, out_dir, force=force, run=run, early=early)
    out.print(f"[bold]{escape(result.verdict)}[/bold]")
    print_findings(result.findings)
    out.print(f"report:   {index}")
    out.print(f"overview: {index.parent / 'overview.png'}")
    if rule.failing(result.findings):
        raise typer.Exit(EXIT_FINDINGS)
