"""The `mmoe-inspect` command line: thin Typer commands over the library's Python API."""

from __future__ import annotations

from typing import Annotated

import typer

from . import demo, report, topology
from ._common import version_callback

app = typer.Typer(
    name="mmoe-inspect",
    no_args_is_help=True,
    add_completion=False,
    help="Gate analysis for multi-task Mixture-of-Experts models: do the experts serve different tasks?",
)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Inspect the gates of MMoE / OMoE / PLE models (and say so plainly for Shared-Bottom)."""


app.command("demo")(demo.demo_command)
app.command("report")(report.report_command)
app.command("topology")(topology.topology_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
