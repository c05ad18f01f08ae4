"""HTML reports of an inspection: figures (PNG), sections, and an atomic report-folder writer.

>>> from mmoe_inspect.reports import write_report
>>> write_report(result, "out/report")   # → out/report/index.html
"""

from .display import GateUtilizationDisplay
from .figures import FIGURES, FigureSpec, render_figures
from .html import render_html, renderer
from .structure import Report, Section, get_report_structure
from .write import MARKER, ReportError, build_report, is_report, write_report

__all__ = [
    "FIGURES",
    "MARKER",
    "FigureSpec",
    "GateUtilizationDisplay",
    "Report",
    "ReportError",
    "Section",
    "build_report",
    "get_report_structure",
    "is_report",
    "render_figures",
    "render_html",
    "renderer",
    "write_report",
]
