"""`mmoe-inspect report`: inspect a checkpoint on data and write the HTML/PNG/JSON report."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ._common import EXIT_FINDINGS, EXIT_NEEDS_INPUT, err, guarded, out


class FailOn(str, Enum):
    never = "never"
    warning = "warning"
    critical = "critical"


def report_command(
    checkpoint: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, resolve_path=True, help="Model checkpoint (.pt).")
    ],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            exists=True,
            dir_okay=False,
            resolve_path=True,
            help="Evaluation rows (.parquet or .csv).",
        ),
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Report folder to write.")] = Path("mmoe-report"),
    spec: Annotated[
        Path | None,
        typer.Option(
            "--spec", exists=True, dir_okay=False, help="Topology spec (TOML) overriding discovery."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Rows per forward pass.")] = 4096,
    max_rows: Annotated[int | None, typer.Option(min=1, help="Inspect at most this many rows.")] = None,
    fail_on: Annotated[
        FailOn, typer.Option(help="Exit with code 3 when findings reach this severity (for CI gates).")
    ] = FailOn.never,
    force: Annotated[bool, typer.Option(help="Overwrite a non-report folder at --out.")] = False,
    debug: Annotated[bool, typer.Option(help="Show full tracebacks.")] = False,
) -> None:
    """Hook into a trained model, stream data through it, and write index.html, figures, metrics.json."""
    with guarded(debug):
        from mmoe_inspect import InspectConfig, inspect
        from mmoe_inspect.checkpoint import load_checkpoint
        from mmoe_inspect.reports import write_report

        loaded = load_checkpoint(checkpoint)
        source = data if data is not None else loaded.eval_frame
        if source is None:
            from mmoe_inspect.inspector import resolve_topology

            topo = resolve_topology(loaded.model, spec)
            err.print(f"model {type(loaded.model).__name__}\n{topo.describe()}")
            err.print("[red]error:[/red] this checkpoint stores no evaluation rows: pass --data FILE.parquet")
            raise typer.Exit(EXIT_NEEDS_INPUT)
        result = inspect(
            loaded.model,
            source,
            topology=spec,
            features=loaded.features,
            config=InspectConfig(batch_size=batch_size, max_rows=max_rows),
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
