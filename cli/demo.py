"""`mmoe-inspect demo`: train the seed architectures on generated data and report on the MMoE."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import guarded, out


def demo_command(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for data, checkpoints and the report.")
    ] = Path("mmoe-demo"),
    rows: Annotated[int, typer.Option(min=2000, help="Rows of generated recommender data.")] = 60_000,
    seed: Annotated[int, typer.Option(help="Random seed for data and training.")] = 0,
    force: Annotated[bool, typer.Option(help="Overwrite a non-report folder at OUT/report.")] = False,
    debug: Annotated[bool, typer.Option(help="Show full tracebacks.")] = False,
) -> None:
    """Train Shared-Bottom, OMoE, MMoE and PLE on click/purchase data, then inspect the MMoE's gates."""
    with guarded(debug):
        from rich.table import Table

        from mmoe_inspect import inspect
        from mmoe_inspect.checkpoint import load_checkpoint
        from mmoe_inspect.demo import run_demo
        from mmoe_inspect.reports import write_report

        demo = run_demo(out_dir, n_rows=rows, seed=seed, log=lambda m: out.print(f"  {m}"))
        table = Table(title="Test metrics (held-out 20%)")
        for col in demo.metrics.columns:
            table.add_column(str(col), justify="left" if col == "model" else "right")
        for rec in demo.metrics.itertuples(index=False):
            table.add_row(*[v if isinstance(v, str) else f"{v:.4f}" for v in rec])
        out.print(table)
        loaded = load_checkpoint(demo.checkpoints["mmoe"])
        result = inspect(loaded.model, demo.eval_path, features=loaded.features, model_name="MMoE (demo)")
        index = write_report(result, out_dir / "report", force=force)
    out.print(f"[bold]{result.verdict}[/bold]")
    for f in result.findings:
        out.print(f"  {f.severity:<8} {f.title}: {f.subject}")
    out.print(f"checkpoints: {out_dir / 'checkpoints'}")
    out.print(f"eval data:   {demo.eval_path}")
    out.print(f"report:      {index}")
