"""The `mmoe-inspect` command line: thin Typer commands over the library's Python API.

Every command takes the same loading options (see `_common.LoadOptions`) and `--quiet/--seed/--debug`.
Imported by the entry point `main.main` (which guards this import) and as `mmoe_inspect.cli.main.app`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from . import check, demo, diff, report, summary, topology
from ._common import version_callback

app = typer.Typer(
    name="mmoe-inspect",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode="rich",
    help="Gate analysis for multi-task Mixture-of-Experts models: do the experts serve different tasks?",
    epilog="Start with [bold]mmoe-inspect demo --out mmoe-demo[/bold], then "
    "[bold]mmoe-inspect COMMAND --help[/bold] for examples. Every command reading a checkpoint takes the same "
    "loading options. Exit codes: 0 fine; 1 a bug (for check: a --fail-on finding); 2 bad input; "
    "3 report --fail-on; 4 check cannot judge the routing; 130 interrupted.",
)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Inspect the gates of MMoE / OMoE / PLE models (and say so plainly for Shared-Bottom)."""


for _name, _module, _fn in (
    ("report", report, report.report_command),
    ("check", check, check.check_command),
    ("summary", summary, summary.summary_command),
    ("diff", diff, diff.diff_command),
    ("topology", topology, topology.topology_command),
    ("demo", demo, demo.demo_command),
):
    app.command(_name, epilog=_module.EPILOG, no_args_is_help=_name != "demo")(_fn)
