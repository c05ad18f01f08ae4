"""Where a report goes and how it is written from the CLI: the default folder, the notice when a previous
report is replaced, and a progress bar over the figures."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape

from ._common import RunOptions, err
from ._progress import Passes

if TYPE_CHECKING:
    from mmoe_inspect.reports import EarlyFigures
    from mmoe_inspect.results import InspectionResult


def default_out_dir(checkpoint: Path) -> Path:
    """`--out` when not given: `mmoe-report-<checkpoint stem>` (so reports of two checkpoints never share
    a folder), the stem reduced to letters, digits, `.`, `_` and `-`."""
    import re

    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", checkpoint.stem).strip("._") or "model"
    return Path(f"mmoe-report-{stem[:80]}")


def previous_report(out_dir: Path) -> str | None:
    """What the report already at `out_dir` showed ("MMoE (mmoe.pt)"), or None when it holds none."""
    import json

    from mmoe_inspect.reports.write import is_report

    if not is_report(out_dir):
        return None
    try:
        meta = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))
        return str(meta.get("model") or meta.get("model_name") or "a model")
    except (OSError, ValueError, AttributeError):
        return "a model"


def write_report_with_progress(
    result: InspectionResult,
    out_dir: Path,
    *,
    force: bool,
    run: RunOptions,
    early: EarlyFigures | None = None,
) -> Path:
    """`write_report` with a progress bar over the figures, and a notice when it replaces a previous report
    (its model named), so a report is never replaced silently; returns the path of `index.html`. `early`
    goes to `write_report`."""
    from mmoe_inspect.reports import write_report

    replaced = previous_report(out_dir)
    label = "figures, slide and tables"
    with Passes(run.quiet) as passes:
        tick = passes.bar(label, None, unit="figures")
        index = write_report(result, out_dir, force=force, progress=tick, early=early)
        passes.finish(label)
    if replaced is not None and not run.quiet:
        err.print(
            f"note: replaced the previous report in {escape(str(out_dir))} (it showed {escape(replaced)}); "
            "pass --out to keep reports of several models"
        )
    return index
