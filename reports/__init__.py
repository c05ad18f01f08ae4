"""HTML/PNG/JSON reports of an inspection: figures, sections, the overview slide, an atomic folder writer.

`write_report(result, path)` is the Python equivalent of `mmoe-inspect report`: it writes
`index.html` (offline: inline CSS, relative images, no script), `overview.png` (one 16:9 slide),
`figures/*.png`, `metrics.json` (`result.to_metrics()`) and `tables/*.csv`, atomically.
`write_diff(a, b, path)` is the equivalent of `mmoe-inspect diff --out`.

The library (`mmoe_inspect`) never imports `mmoe_inspect.reports` or `mmoe_inspect.cli` (rendering
pulls in matplotlib, seaborn and Jinja2, and stays optional for callers that only want numbers), so
`InspectionResult` has no `save_report` method: call `write_report` from this module instead.

Examples::

    >>> from mmoe_inspect.reports import write_report
    >>> write_report(result, "out/report")            # → out/report/index.html
    >>> from mmoe_inspect.reports import write_diff
    >>> write_diff(before, after, "out/diff")         # → out/diff/index.html
"""

from .diff import RoutingDiff, diff_results, write_diff
from .display import GateUtilizationDisplay
from .early import EarlyFigures
from .figures import FIGURES, TRAINING_FIGURES, FigureSpec, render_figures
from .html import render_html, renderer
from .overview import overview_figure, write_overview
from .structure import Report, Section, get_report_structure, headline_cards
from .write import MARKER, ReportError, build_report, is_report, write_folder, write_report

__all__ = [
    "FIGURES",
    "MARKER",
    "TRAINING_FIGURES",
    "EarlyFigures",
    "FigureSpec",
    "GateUtilizationDisplay",
    "Report",
    "ReportError",
    "RoutingDiff",
    "Section",
    "build_report",
    "diff_results",
    "get_report_structure",
    "headline_cards",
    "is_report",
    "overview_figure",
    "render_figures",
    "render_html",
    "renderer",
    "write_diff",
    "write_folder",
    "write_overview",
    "write_report",
]
