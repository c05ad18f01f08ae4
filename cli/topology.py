"""`mmoe-inspect topology`: print the gates/experts/tasks found in a checkpoint and write an editable spec."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import (
    EXIT_BAD_INPUT,
    BuilderOpt,
    CheckpointArg,
    CollateOpt,
    DataOpt,
    DeviceOpt,
    FeaturesOpt,
    ImportOpt,
    InputOpt,
    ModelCodeOpt,
    TasksOpt,
    TrustOpt,
    err,
    guarded,
    load_for_cli,
    out,
)


def topology_command(
    checkpoint: CheckpointArg,
    write: Annotated[
        Path | None, typer.Option("--write", help="Write the topology as an editable TOML spec here.")
    ] = None,
    discover: Annotated[
        bool, typer.Option(help="Ignore the model's own declaration and run automatic discovery.")
    ] = False,
    data: DataOpt = None,
    trust_checkpoint: TrustOpt = False,
    builder: BuilderOpt = None,
    imports: ImportOpt = None,
    model_code: ModelCodeOpt = None,
    device: DeviceOpt = "cpu",
    tasks: TasksOpt = None,
    input_kind: InputOpt = None,
    features: FeaturesOpt = None,
    collate: CollateOpt = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing spec file.")] = False,
    debug: Annotated[bool, typer.Option(help="Show full tracebacks.")] = False,
) -> None:
    """Show which modules are gates (over which experts, for which task) and how sure discovery is.

    Models that declare no topology (torch-rechub, DeepCTR-Torch, your own) are discovered on the
    first rows of --data (or of the rows stored in the checkpoint).
    """
    with guarded(debug):
        if write is not None and write.exists() and not force:
            err.print(f"[red]error:[/red] {write} exists; pass --force to overwrite it")
            raise typer.Exit(EXIT_BAD_INPUT)
        loaded = load_for_cli(checkpoint, trust_checkpoint, builder, imports, model_code, device)
        topo = loaded.topology(
            data,
            discover=discover,
            tasks=tasks,
            input=input_kind.value if input_kind is not None else None,
            features=features,
            collate=collate,
        )
        out.print(f"model: {type(loaded.model).__name__} ({loaded.form}, adapter {loaded.adapter.name})")
        out.print(topo.describe(), markup=False)
        if write is not None:
            topo.save(write)
            out.print(f"spec written: {write}")
