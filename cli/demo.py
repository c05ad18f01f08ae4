"""`mmoe-inspect demo`: train the seed architectures on generated data and report on the MMoE."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from ._common import RunOptions, command, guarded, out, print_findings

if TYPE_CHECKING:
    from rich.table import Table

    from mmoe_inspect.demo import DemoComparison

EPILOG = """\
[bold]Examples[/bold]

  mmoe-inspect demo --out mmoe-demo

  mmoe-inspect demo --out small-demo --rows 5000 --seed 1 --quiet

  mmoe-inspect demo --out mmoe-demo --monitor

The printed table scores every model on the same held-out rows with 95% paired intervals (DeLong for AUC, normal for log loss; also OUT/model_comparison.csv), and the lines below it say whether the differences support the seed's claims (MMoE > OMoE > Shared-Bottom; MMoE helps the sparse purchase task): supported, contradicted, or not shown (not significant). Then open mmoe-demo/report/index.html. The report measures the MMoE's multi-task gain against the Shared-Bottom and a purchase-only model, and shows segment routing by the data's 'category' column.
"""

DEMO_SEGMENT_COLUMN = "category"
DEMO_BASELINES = ("shared_bottom", "purchase_only")  # MTL gain against both (the demo trains them)


@command
def demo_command(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for data, checkpoints and the report.")
    ] = Path("mmoe-demo"),
    rows: Annotated[int, typer.Option(min=2000, help="Rows of generated recommender data.")] = 60_000,
    force: Annotated[
        bool, typer.Option(help="Write into OUT/report even if it is not a report folder.")
    ] = False,
    monitor: Annotated[
        bool,
        typer.Option(
            "--monitor",
            help="Watch the MMoE's gates while it trains (GateMonitor): OUT/run_log.jsonl and the report's "
            "Training section.",
        ),
    ] = False,
    *,
    run: RunOptions,
) -> None:
    """Train Shared-Bottom, OMoE, MMoE and PLE on click/purchase data, then inspect the MMoE's gates."""
    with guarded(run.debug):
        from mmoe_inspect.attribution.options import AttributionOptions
        from mmoe_inspect.causal.options import CausalOptions
        from mmoe_inspect.demo import run_demo

        from ._common import LoadOptions
        from ._pipeline import inspect_checkpoint
        from ._write import write_report_with_progress

        log = (lambda _m: None) if run.quiet else (lambda m: out.print(f"  {escape(m)}"))
        demo = run_demo(out_dir, n_rows=rows, seed=run.seed, log=log, monitor=monitor)
        out.print(comparison_table(demo.comparison))
        for line in demo.comparison.lines():
            out.print(f"  {escape(line)}", soft_wrap=True)  # whole sentences in a CI log
        baselines = {n: demo.checkpoints[n] for n in DEMO_BASELINES if n in demo.checkpoints}
        request = CausalOptions(baselines=baselines, segment_by=DEMO_SEGMENT_COLUMN)
        from mmoe_inspect.reports import EarlyFigures

        with EarlyFigures() as early:  # as `report`: the routing figures drawn while the analyses run
            result = inspect_checkpoint(
                demo.checkpoints["mmoe"],
                LoadOptions(data=demo.eval_path),
                run,
                causal=request,
                attribution=AttributionOptions(),
                label="the MMoE",
                model_name="MMoE (demo)",
                on_recorded=early.start,
            )
            if demo.run_log is not None:
                from mmoe_inspect.monitor import read_run_log

                result.training = read_run_log(demo.run_log)
            index = write_report_with_progress(result, out_dir / "report", force=force, run=run, early=early)
    out.print(f"[bold]{escape(result.verdict)}[/bold]")
    print_findings(result.findings)
    out.print(f"checkpoints: {out_dir / 'checkpoints'}")
    out.print(f"eval data:   {demo.eval_path}")
    if demo.run_log is not None:
        out.print(f"run log:     {demo.run_log}")
    out.print(f"report:      {index}")


def comparison_table(comparison: DemoComparison) -> Table:
    """The demo's models side by side on the same test rows: AUC and log loss per task with their
    paired 95% intervals (the seed claims they test are printed below it)."""
    from rich.table import Table

    from mmoe_inspect.analysis.review import fmt_interval
    from mmoe_inspect.demo import MODEL_NAMES

    frame = comparison.table
    how = (
        "95% paired intervals: DeLong for AUC, normal for log loss"
        if comparison.intervals == "analytic"
        else f"95% paired-bootstrap intervals, {comparison.n_boot} resamples"
    )
    table = Table(title=f"Test metrics on the same {comparison.n_rows:,} held-out rows ({how})")
    table.add_column("model")
    table.add_column("task")
    table.add_column("AUC [95% CI]", justify="right", no_wrap=True)
    table.add_column("log loss [95% CI]", justify="right", no_wrap=True)
    for model in dict.fromkeys(frame["model"]):
        for r in frame[frame["model"] == model].to_dict(orient="records"):
            if r["auc"] != r["auc"] and r["logloss"] != r["logloss"]:
                continue  # a model that does not predict the task (the purchase-only model's click)
            cells = [
                fmt_interval(float(r[m]), float(r[f"{m}_lo"]), float(r[f"{m}_hi"]))
                for m in ("auc", "logloss")
            ]
            table.add_row(MODEL_NAMES.get(model, model), str(r["task"]), *cells)
    return table
