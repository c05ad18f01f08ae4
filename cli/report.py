"""`mmoe-inspect report`: inspect a checkpoint on data and write the HTML/PNG/JSON report."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ._common import (
    DATA,
    EXIT_FINDINGS,
    EXIT_NEEDS_INPUT,
    BuilderOpt,
    CheckpointArg,
    CollateOpt,
    DataOpt,
    DeviceOpt,
    FeaturesOpt,
    ImportOpt,
    InputOpt,
    LabelsOpt,
    ModelCodeOpt,
    TasksOpt,
    TrustOpt,
    err,
    guarded,
    load_for_cli,
    out,
)


class FailOn(str, Enum):
    never = "never"
    warning = "warning"
    critical = "critical"


def report_command(
    checkpoint: CheckpointArg,
    data: DataOpt = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Report folder to write.")] = Path("mmoe-report"),
    spec: Annotated[
        Path | None,
        typer.Option(
            "--spec", exists=True, dir_okay=False, help="Topology spec (TOML) overriding discovery."
        ),
    ] = None,
    trust_checkpoint: TrustOpt = False,
    builder: BuilderOpt = None,
    imports: ImportOpt = None,
    model_code: ModelCodeOpt = None,
    device: DeviceOpt = "cpu",
    tasks: TasksOpt = None,
    labels: LabelsOpt = None,
    input_kind: InputOpt = None,
    features: FeaturesOpt = None,
    collate: CollateOpt = None,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Rows per forward pass.", rich_help_panel=DATA)
    ] = 4096,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", "--max-rows", min=1, help="Inspect at most this many rows.", rich_help_panel=DATA
        ),
    ] = None,
    sample: Annotated[
        float | None,
        typer.Option(
            "--sample",
            metavar="FRACTION",
            help="Inspect this share of the rows, picked deterministically (before --limit).",
            rich_help_panel=DATA,
        ),
    ] = None,
    fail_on: Annotated[
        FailOn, typer.Option(help="Exit with code 3 when findings reach this severity (for CI gates).")
    ] = FailOn.never,
    force: Annotated[bool, typer.Option(help="Overwrite a non-report folder at --out.")] = False,
    debug: Annotated[bool, typer.Option(help="Show full tracebacks.")] = False,
) -> None:
    """Hook into a trained model, stream data through it, and write index.html, figures, metrics.json.

    Nothing is written unless the checkpoint loads and every row inspects cleanly.
    """
    with guarded(debug):
        from mmoe_inspect import InspectConfig
        from mmoe_inspect.reports import write_report

        loaded = load_for_cli(checkpoint, trust_checkpoint, builder, imports, model_code, device)
        if data is None and loaded.eval_frame is None and loaded.checkpoint is not None:
            from mmoe_inspect.inspector import resolve_topology

            topo = resolve_topology(loaded.model, spec)
            err.print(f"model {type(loaded.model).__name__}\n{topo.describe()}", markup=False)
            err.print("[red]error:[/red] this checkpoint stores no evaluation rows: pass --data FILE.parquet")
            raise typer.Exit(EXIT_NEEDS_INPUT)
        result = loaded.inspect(
            data,
            tasks=tasks,
            labels=labels,
            input=input_kind.value if input_kind is not None else None,
            features=features,
            collate=collate,
            topology=spec,
            config=InspectConfig(batch_size=batch_size, max_rows=limit, sample=sample),
            model_name=f"{type(loaded.model).__name__} ({checkpoint.name})",
        )
        index = write_report(result, out_dir, force=force)
    out.print(f"[bold]{result.verdict}[/bold]")
    for f in result.findings:
        out.print(f"  {f.severity:<8} {f.title}: {f.subject}")
    out.print(f"report: {index}")
    worst = result.worst_severity()
    if (fail_on is FailOn.critical and worst == "critical") or (
        fail_on is FailOn.warning and worst in ("critical", "warning")
    ):
        raise typer.Exit(EXIT_FINDINGS)
