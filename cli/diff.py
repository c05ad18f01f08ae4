"""`mmoe-inspect diff`: two checkpoints side by side on the same data."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ._common import LoadOptions, RunOptions, command, err, guarded, out

EPILOG = """\
[bold]Examples[/bold]

  mmoe-inspect diff before.pt after.pt --data eval.parquet

  mmoe-inspect diff omoe.pt mmoe.pt --out omoe-vs-mmoe

Both checkpoints are read with the same loading options and inspected on the same rows. With --out, also writes OUT/index.html (both routing heatmaps side by side), OUT/figures/*.png and OUT/diff.json.
"""

CheckpointA = Annotated[
    Path,
    typer.Argument(resolve_path=True, show_default=False, metavar="A", help="The first checkpoint (before)."),
]
CheckpointB = Annotated[
    Path,
    typer.Argument(resolve_path=True, show_default=False, metavar="B", help="The second checkpoint (after)."),
]


def _rounded(v: float, fmt: str) -> str:
    """`format(v, fmt)`, a value that rounds to zero unsigned: "0.000", never "-0.000" or "+0.000"."""
    text = format(v, fmt)
    return text.lstrip("+-") if float(text) == 0 else text


def _num(v: float, metric: str) -> str:
    if math.isnan(v):
        return "—"
    if v.is_integer() and ("rows" in metric or "findings" in metric or metric in ("gates", "experts")):
        return f"{int(v):,}"
    return _rounded(v, ".3f")


def _change(v: float, metric: str) -> str:
    if math.isnan(v):
        return "—"
    if v == 0:
        return "="
    if v.is_integer() and ("rows" in metric or "findings" in metric or metric in ("gates", "experts")):
        return f"{int(v):+,}"
    return _rounded(v, "+.3f")  # a change under 0.0005 is "0.000" ("=" is kept for no change at all)


@command
def diff_command(
    a: CheckpointA,
    b: CheckpointB,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Also write an HTML/PNG comparison folder here.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Write into a non-empty folder that is not ours.")] = False,
    *,
    load: LoadOptions,
    run: RunOptions,
) -> None:
    """Compare two checkpoints on the same rows: routing, headline numbers, findings that appeared or went away."""
    with guarded(run.debug):
        from mmoe_inspect.reports import diff_results, write_diff

        from ._pipeline import inspect_checkpoint

        rows = None
        if load.data is None:  # the same rows for both: A's stored ones (each has its own otherwise)
            rows = load.load(a, quiet=True).eval_frame
            if rows is not None and not run.quiet:
                err.print(f"note: both checkpoints are inspected on the rows stored in {escape(a.name)}")
        ra = inspect_checkpoint(a, load, run, label=f"A ({a.name})", rows=rows)
        rb = inspect_checkpoint(b, load, run, label=f"B ({b.name})", rows=rows)
        d = diff_results(ra, rb)
        index = write_diff(ra, rb, out_dir, force=force) if out_dir is not None else None
    out.print(f"[bold]A[/bold] {escape(ra.model_name)}: {escape(ra.verdict)}")
    out.print(f"[bold]B[/bold] {escape(rb.model_name)}: {escape(rb.verdict)}")
    head = Table(title="Headline numbers", title_justify="left")
    for col, just in (("", "left"), ("A", "right"), ("B", "right"), ("B − A", "right")):
        head.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in d.headline.itertuples(index=False):
        head.add_row(
            escape(str(r.metric)), _num(r.a, r.metric), _num(r.b, r.metric), _change(r.change, r.metric)
        )
    out.print(head)
    if not d.gates.empty:
        gates = Table(title="Gates in both", title_justify="left")
        for col, just in (
            ("gate", "left"),
            ("metric", "left"),
            ("A", "right"),
            ("B", "right"),
            ("B − A", "right"),
        ):
            gates.add_column(col, justify=just)  # type: ignore[arg-type]
        for r in d.gates.itertuples(index=False):
            gates.add_row(
                escape(str(r.gate)),
                str(r.metric).replace("_", " "),
                _num(r.a, ""),
                _num(r.b, ""),
                _change(r.change, ""),
            )
        out.print(gates)
    for label, names in (("A", d.only_a), ("B", d.only_b)):
        if names:
            out.print(f"gates only in {label}: {escape(', '.join(names))}")
    for title, findings in (("appeared in B", d.appeared), ("went away", d.gone), ("in both", d.kept)):
        out.print(f"[bold]Findings {title}[/bold] ({len(findings)})" + ("" if findings else ": none"))
        for f in findings:
            out.print(f"  {f.severity:<8} {f.code:<28} {escape(f.subject)}")
    if index is not None:
        out.print(f"diff:     {index}")
