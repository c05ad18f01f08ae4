"""`write_report`: build the whole report folder in a temp folder next to the target, then swap it in.

`write_folder` is the atomic machinery itself (also used by `write_diff`, built on `_replace`): any
folder of ours carries the marker file listing the files written, and only those are ever replaced.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mmoe_inspect._text import csv_safe
from mmoe_inspect.errors import MmoeInspectError
from mmoe_inspect.results import METRICS_SCHEMA_VERSION, InspectionResult

from ._replace import replace_folder
from .figures import render_figures
from .html import render_html
from .overview import OVERVIEW_DPI, overview_figure
from .structure import get_report_structure

if TYPE_CHECKING:
    from .early import EarlyFigures

MARKER = ".mmoe-inspect-report"
OVERVIEW = "overview.png"
# Everything a report (or diff) folder holds; anything else in a target folder belongs to the user.
REPORT_ENTRIES = (MARKER, "index.html", OVERVIEW, "metrics.json", "figures", "tables")
DIFF_ENTRIES = (MARKER, "index.html", "diff.json", "figures")
OWN_ENTRIES = tuple(dict.fromkeys(REPORT_ENTRIES + DIFF_ENTRIES))


class ReportError(MmoeInspectError, RuntimeError):
    """The report could not be written (target folder refused, or a figure/table failed)."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mmoe-inspect")
    except PackageNotFoundError:
        return "dev"


def is_report(folder: str | Path) -> bool:
    """True when `folder` holds a report written by `write_report` (it carries the marker file)."""
    return (Path(folder) / MARKER).is_file()


def write_marker(folder: Path, kind: str) -> None:
    marker = {
        "tool": "mmoe-inspect",
        "kind": kind,
        "version": _version(),
        "metrics_schema": METRICS_SCHEMA_VERSION,
    }
    (folder / MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")


def build_report(
    result: InspectionResult,
    folder: str | Path,
    progress: Callable[[int, int], None] | None = None,
    *,
    early: EarlyFigures | None = None,
) -> Path:
    """Write the report files into an existing empty `folder` (no atomicity; `write_report` wraps this);
    `progress(done, total)` follows the figures, `early` brings the figures drawn while the analyses ran
    (see `render_figures`)."""
    folder = Path(folder)
    overview = ("overview", overview_figure, folder / OVERVIEW, OVERVIEW_DPI)  # drawn with the figures
    written: list[Path] = []

    def data_files() -> None:  # while a figure helper process draws its last figures (if there is one)
        (folder / "metrics.json").write_text(result.to_json(indent=2) + "\n", encoding="utf-8")
        written.extend(result.save_tables(folder / "tables"))
        if result.findings:
            csv_safe(result.findings_frame()).to_csv(folder / "tables" / "findings.csv", index=False)

    figures = render_figures(
        result, folder / "figures", progress, extra=[overview], meanwhile=data_files, early=early
    )
    report = get_report_structure(
        result,
        {name: f"figures/{file}" for name, file in figures.items()},
        [p.stem for p in written],
        overview=OVERVIEW,
    )
    (folder / "index.html").write_text(render_html(report, version=_version()), encoding="utf-8")
    write_marker(folder, "report")
    return folder / "index.html"


def write_report(
    result: InspectionResult,
    out_dir: str | Path,
    *,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    early: EarlyFigures | None = None,
) -> Path:
    """Write `result` as a report folder at `out_dir` and return the path of its `index.html`.

    The folder holds `index.html` (opens offline: inline CSS, relative images), `overview.png` (one
    16:9 slide), `figures/*.png`, `metrics.json` (= `result.to_metrics()`), `tables/*.csv` and a
    marker file. Everything is
    written into a temp folder next to `out_dir` and moved into place only when complete: on
    any error the temp folder is removed and a previous report is left untouched.

    A previous report at `out_dir` is replaced (only the files its marker lists). A non-empty folder
    that is not a report is refused (`ReportError`) unless `force=True`; then the report's files are
    added beside the user's, and a user file at a path the report writes is refused, never replaced.
    `progress(done, total)` is called as the figures are drawn (the CLI's progress bar). `early`: an
    `EarlyFigures` given to `inspect(on_recorded=early.start)` for this result, whose helper process drew
    the recording pass's figures while the analyses ran (the same files; see `reports.early`).

    Examples::

        >>> path = write_report(result, "out/report")   # out/report/index.html
    """
    out = write_folder(out_dir, lambda tmp: build_report(result, tmp, progress, early=early), force=force)
    return out / "index.html"


def write_folder(
    out_dir: str | Path,
    build: Callable[[Path], object],
    *,
    force: bool = False,
    entries: tuple[str, ...] = REPORT_ENTRIES,
) -> Path:
    """Run `build(tmp)` on a fresh temp folder next to `out_dir`, then swap it in as `out_dir` (returned).

    `build` writes the folder's files (a marker among them); on any error nothing changes at `out_dir`.
    Only files the tool wrote there before (listed in the marker) are replaced; the user's files are
    kept, a user file at a path the report writes is refused (also with `force`), and a non-empty
    folder without a marker needs `force`. Crash-safe by construction: see `_replace`.
    """
    return replace_folder(
        out_dir, build, force=force, marker=MARKER, legacy_entries=OWN_ENTRIES, error=ReportError
    )
