"""The one-page overview PNG: verdict, routing heatmap and key numbers on one 16:9 slide.

`overview_figure(result)` builds it (pyplot-free, inside the shared plot context); `write_report`
saves it as `overview.png` next to `index.html`, which links it at the top.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from mmoe_inspect.results import InspectionResult

from ._draw import _heatmap, _short, gate_label
from ._style import CMAP_WEIGHT, close, plot_context, save_png
from .routing_figures import routing_panels
from .structure import shown_source

SLIDE_IN = (40 / 3, 7.5)  # a 16:9 slide; at OVERVIEW_DPI = 1920 x 1080 pixels
OVERVIEW_DPI = 144
SEVERITY_COLORS = {"critical": "#c62828", "warning": "#b26a00", "info": "#1565c0", None: "#2e7d32"}


STATUS_COLORS = {"ok": "#2e7d32", "problem": "#c62828", "unknown": "#b26a00"}
COLUMN_X = 0.53  # the review column: questions, answers and evidence
BOTTOM = 0.06  # nothing is drawn below this (the footer line sits there)


def _place(fig: Figure, renderer, x: float, y: float, text: str, **kw) -> float:
    """Draw `text` with its top at `y` (figure fraction); return the y just below its drawn box."""
    t = fig.text(x, y, text, va="top", **kw)
    box = t.get_window_extent(renderer)
    return box.y0 / fig.bbox.height - 0.008


def overview_figure(result: InspectionResult) -> Figure:
    """The routing heatmap of the last level (left) and the review's questions answered with their
    evidence (right), colored by status; every text is placed below the previous one's drawn box."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    severity = result.worst_severity()
    topo = result.topology
    accent = (
        SEVERITY_COLORS.get(severity, SEVERITY_COLORS[None])
        if topo.has_gates or not topo.judgeable
        else SEVERITY_COLORS["info"]
    )
    review = result.review
    with plot_context():
        fig = Figure(figsize=SLIDE_IN, dpi=OVERVIEW_DPI)
        renderer = FigureCanvasAgg(fig).get_renderer()
        fig.patch.set_facecolor("white")
        fig.patches.append(_rect(fig, (0.0, 0.84), 1.0, 0.16, "#16202f"))
        fig.patches.append(_rect(fig, (0.0, 0.84), 0.012, 0.16, accent))
        fig.text(0.03, 0.965, "MMOE-INSPECT", color="#9fb3cc", fontsize=11, fontweight="bold", va="top")
        fig.text(
            0.03, 0.93, _short(result.model_name, 70), color="white", fontsize=22, fontweight="bold", va="top"
        )
        fig.text(
            0.03,
            0.858,
            _short(
                f"{shown_source(result.data_source)}  ·  {', '.join(topo.task_names)}  ·  "
                f"{len(topo.experts)} experts, {len(topo.gates)} gates ({topo.architecture or 'architecture not stated'})"
                f"  ·  {int(result.n_rows):,} rows",
                150,
            ),
            color="#c8d3e2",
            fontsize=11,
            va="bottom",
        )
        panels = routing_panels(result)
        left = fig.add_axes((0.08, 0.12, 0.39, 0.58))
        if panels and np.isfinite(panels[-1][3]).any():
            level, gates, experts, values = panels[-1]
            _heatmap(
                left,
                values,
                [gate_label(result, g) for g in gates],
                experts,
                cmap=CMAP_WEIGHT,
                vmin=0.0,
                vmax=float(np.nanmax(values)),
                cbar_label="mean gate weight",
                annotate=values.size <= 80,
            )
            left.set_xlabel("expert")
            left.set_ylabel("gate (task)")
            where = f" (level {level})" if len(panels) > 1 else ""
            left.set_title(f"Mean gate weight per task and expert{where}", loc="left", fontsize=13)
        else:
            left.axis("off")
            _task_lines(left, result)
        y = 0.81
        for a in review.answers:
            if y < BOTTOM + 0.05:
                break
            y = _place(
                fig,
                renderer,
                COLUMN_X,
                y,
                a.question.upper(),
                color="#5b6475",
                fontsize=9.5,
                fontweight="bold",
            )
            y = _place(
                fig,
                renderer,
                COLUMN_X,
                y,
                textwrap.fill(a.answer, 54, max_lines=3, placeholder=" …"),
                color=STATUS_COLORS.get(a.status, "#1d2330"),
                fontsize=13,
                fontweight="bold",
                linespacing=1.2,
            )
            shown = a.evidence[: MAX_EVIDENCE.get(a.key, 0)]
            for e in shown:
                if y < BOTTOM + 0.03:
                    break
                y = _place(
                    fig,
                    renderer,
                    COLUMN_X + 0.012,
                    y,
                    textwrap.fill(e, 78, max_lines=2, placeholder=" …"),
                    color="#1d2330",
                    fontsize=10,
                    linespacing=1.15,
                )
            y -= 0.012
        fig.text(0.99, 0.015, "full report: index.html", color="#5b6475", fontsize=9, ha="right", va="bottom")
    return fig


MAX_EVIDENCE = {"tasks": 4, "gains": 3, "routing": 0, "next": 2}


def _task_lines(ax, result: InspectionResult) -> None:
    """For a model without gates: what it predicts per task, as large text."""
    topo = result.topology
    headline = (
        "No gates: nothing routes rows between experts."
        if topo.judgeable
        else f"Routing NOT verified: {len(topo.unresolved) or 'low-confidence'} gate-like item(s) unresolved."
    )
    ax.text(0.0, 1.0, headline, fontsize=15, color="#5b6475" if topo.judgeable else "#b3261e", va="top")
    tasks = result.table("tasks")
    y = 0.84
    for r in tasks.to_dict(orient="records")[:6]:
        if r.get("kind") == "binary":
            text = (
                f"{_short(str(r['task']), 24)}:  label rate {r.get('positive_rate', np.nan):.1%},  mean prediction "
                f"{r.get('mean_prediction', np.nan):.1%},  AUC {r.get('auc', np.nan):.3f}"
            )
        else:
            text = f"{_short(str(r['task']), 24)}:  MSE {r.get('mse', np.nan):.3f}"
        ax.text(0.0, y, text, fontsize=13, color="#1d2330", va="top")
        y -= 0.12


def _rect(fig: Figure, xy: tuple[float, float], w: float, h: float, color: str):
    from matplotlib.patches import Rectangle

    return Rectangle(xy, w, h, transform=fig.transFigure, facecolor=color, edgecolor="none", zorder=-1)


def write_overview(result: InspectionResult, path: str | Path) -> Path:
    """Draw the overview and save it as a 1920 x 1080 PNG at `path`."""
    path = Path(path)
    fig = overview_figure(result)
    try:
        save_png(fig, path, dpi=OVERVIEW_DPI)
    finally:
        close(fig)
    return path
