"""Text-overlap checks on drawn figures: no text box may cover plotted data (line vertices and the segments
between them, bars) or a legend. Works on the figure's own artists after a draw, in display pixels."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.text import Text
from matplotlib.transforms import Bbox

MARGIN_PX = 1.0  # a text box touching a bar's top edge (a value written on the bar) is not an overlap


def _inside(points: np.ndarray, box: Bbox) -> bool:
    x, y = points[:, 0], points[:, 1]
    return bool(
        (
            (x > box.x0 + MARGIN_PX)
            & (x < box.x1 - MARGIN_PX)
            & (y > box.y0 + MARGIN_PX)
            & (y < box.y1 - MARGIN_PX)
        ).any()
    )


def _line_points(line: Line2D) -> np.ndarray:
    """Display points of a line's path, densified along each segment (a segment can cross a box between
    two vertices; markers-only lines are their points); axvline/axhline are included."""
    xy = line.get_transform().transform(np.asarray(line.get_xydata(), dtype=float))
    xy = xy[np.isfinite(xy).all(axis=1)]
    if len(xy) < 2 or line.get_linestyle() in ("None", "none", "", " "):
        return xy  # markers only (error bar caps): the points, nothing between them
    t = np.linspace(0.0, 1.0, 40)[:, None, None]
    return (xy[:-1][None] * (1 - t) + xy[1:][None] * t).reshape(-1, 2)


def text_overlaps(fig: Figure) -> list[str]:
    """Every text box (axes texts and the figure's own texts, titles excluded) that covers a plotted line,
    a bar, or a legend: `["'label' covers line 'e0'", ...]`; empty when the figure is clean."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    legend_boxes = [leg.get_window_extent(renderer) for leg in legends]
    problems: list[str] = []
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        texts = [t for t in ax.texts if isinstance(t, Text) and t.get_visible() and t.get_text().strip()]
        lines = [ln for ln in ax.lines if ln.get_visible()]
        bars = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_visible() and p.get_fill()]
        for text in texts:
            box = text.get_window_extent(renderer)
            for line in lines:
                if _inside(_line_points(line), box):
                    problems.append(f"{text.get_text()!r} covers line {line.get_label()!r}")
            for bar in bars:
                if box.overlaps(bar.get_window_extent(renderer)) and _overlap_area(box, bar, renderer) > 4.0:
                    problems.append(f"{text.get_text()!r} covers a bar")
            for lbox in legend_boxes:
                if box.overlaps(lbox):
                    problems.append(f"{text.get_text()!r} covers a legend")
    return problems


def _overlap_area(box: Bbox, bar: Rectangle, renderer) -> float:
    other = bar.get_window_extent(renderer)
    w = min(box.x1, other.x1) - max(box.x0, other.x0) - 2 * MARGIN_PX
    h = min(box.y1, other.y1) - max(box.y0, other.y0) - 2 * MARGIN_PX
    return max(w, 0.0) * max(h, 0.0)
