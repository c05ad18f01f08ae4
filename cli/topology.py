"""`mmoe-inspect topology`: print the gates/experts/tasks found in a checkpoint and write an editable spec."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import EXIT_BAD_INPUT, err, guarded, out


def topology_command(
    checkpoint: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, resolve_path=True, help="Model checkpoint (.pt).")
    ],
    write: Annotated[
        Path | None, typer.Option("--write", help="Write the topology as an editable TOML spec here.")
    ] = None,
    discover: Annotated[
        bool, typer.Option(help="Ignore the model's own declaration and run automatic discovery.")
    ] = False,
    force: Annotated[bool, typer.Option(help="Overwrite an existing spec file.")] = False,
    debug: Annotated[bool, typer.Option(help="Show full tracebacks.")] = False,
) -> None:
    """Show which modules are gates (over which experts, for which task) and how sure discovery is."""
    with guarded(debug):
        from mmoe_inspect.checkpoint import load_checkpoint
        from mmoe_inspect.data.batches import frame_to_inputs
        from mmoe_inspect.inspector import resolve_topology
        from mmoe_inspect.topology.discovery import discover_topology

        loaded = load_checkpoint(checkpoint)
        if discover:
            if loaded.eval_frame is None:
                err.print("[red]error:[/red] discovery needs a sample batch; this checkpoint stores none")
                raise typer.Exit(EXIT_BAD_INPUT)
            example = frame_to_inputs(loaded.eval_frame.iloc[:64], loaded.features)
            topo = discover_topology(loaded.model, example, task_names=[t.name for t in loaded.tasks])
        else:
            topo = resolve_topology(loaded.model, None)
        out.print(f"model: {type(loaded.model).__name__}")
        out.print(topo.describe(), markup=False)
        if write is not None:
            if write.exists() and not force:
                err.print(f"[red]error:[/red] {write} exists; pass --force to overwrite it")
                raise typer.Exit(EXIT_BAD_INPUT)
            topo.save(write)
            out.print(f"spec written: {write}")
