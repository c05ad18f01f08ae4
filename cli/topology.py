"""`mmoe-inspect topology`: print the gates/experts/tasks found in a checkpoint and write an editable spec."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mmoe_inspect.topology.spec import spec_target_problem

from ._common import (
    EXIT_BAD_INPUT,
    CheckpointArg,
    LoadOptions,
    RunOptions,
    command,
    err,
    guarded,
    out,
)

EPILOG = """\
[bold]Examples[/bold]

  mmoe-inspect topology mmoe-demo/checkpoints/ple.pt --write ple.toml

  mmoe-inspect topology rechub.pt --trust-checkpoint --data eval.parquet --tasks a,b

  mmoe-inspect topology mmoe-demo/checkpoints/mmoe.pt --discover

Edit the written spec and pass it back with `report --spec ple.toml`.
"""


@command
def topology_command(
    checkpoint: CheckpointArg,
    write: Annotated[
        Path | None, typer.Option("--write", help="Write the topology as an editable TOML spec here.")
    ] = None,
    discover: Annotated[
        bool, typer.Option(help="Ignore the model's own declaration and run automatic discovery.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(help="Replace an existing spec file (only a spec this tool wrote, never another file)."),
    ] = False,
    *,
    load: LoadOptions,
    run: RunOptions,
) -> None:
    """Show which modules are gates (over which experts, for which task) and how sure discovery is.

    Models that declare no topology (torch-rechub, DeepCTR-Torch, your own) are discovered on the
    first rows of --data (or of the rows stored in the checkpoint).
    """
    with guarded(run.debug):
        problem = None if write is None else spec_target_problem(write, force)
        if problem is not None:
            err.print(f"[red]error:[/red] --write {escape(str(write))}: {escape(problem)}")
            raise typer.Exit(EXIT_BAD_INPUT)
        loaded = load.load(checkpoint, quiet=run.quiet)
        topo = loaded.topology(
            load.data,
            discover=discover,
            tasks=load.tasks,
            labels=load.labels,
            input=load.input,  # type: ignore[arg-type]
            features=load.features,
            collate=load.collate,
        )
        out.print(f"model: {type(loaded.model).__name__} ({loaded.form}, adapter {loaded.adapter.name})")
        out.print(topo.describe(), markup=False)
        for u in topo.unresolved:
            if u.snippet:
                out.print(f"\nspec snippet to start from ({u.line()}):", markup=False)
                out.print(u.snippet.rstrip(), markup=False)
        if write is not None:
            topo.save(write)
            out.print(f"spec written: {write}")
