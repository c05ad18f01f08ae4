"""Shared look of every figure: scoped rc settings, one color per task, colormaps, sizes."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import matplotlib as mpl
from matplotlib.figure import Figure

DPI = 110
WIDTH_IN = 10.5  # ~1150 px at DPI: fills a 1200 px page column
PNG_OPTIONS = {"compress_level": 3}
"""Pillow's PNG options: zlib level 3 encodes a report's figures in two thirds of the time of the default
level 6 (0.22 s against 0.32 s for the 1M-row report's 16 PNGs), for files 8% larger (1.30 MB against
1.20 MB); level 1 is no faster. Same pixels: PNG is lossless."""
SHARED_COLOR = "#6b6b6b"  # gates that serve no single task (PLE shared gate, OMoE's one gate)
# seaborn "colorblind" without its gray (kept for shared gates)
TASK_COLORS = (
    "#0173b2",
    "#de8f05",
    "#029e73",
    "#d55e00",
    "#cc78bc",
    "#ca9161",
    "#56b4e9",
    "#ece133",
    "#fbafe4",
)
CMAP_WEIGHT = "YlGnBu"  # mean gate weights, co-activation
CMAP_DIVERGENCE = "OrRd"  # task-to-task divergence
CMAP_SIMILARITY = "Purples"  # expert CKA
CMAP_LIFT = "RdBu_r"  # co-activation relative to chance (diverging around 1x)

_RC: dict[str, Any] = {
    "text.parse_math": False,  # task/expert names are user data: never parse "$...$"
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "axes.titleweight": "bold",
    "axes.titlesize": 13,
    "axes.labelsize": 12,
    "xtick.labelsize": 10.5,
    "ytick.labelsize": 10.5,
    "legend.fontsize": 10.5,
    "legend.title_fontsize": 11,
    "figure.titlesize": 15,
    "figure.titleweight": "bold",
    "font.size": 11,
    "svg.hashsalt": "mmoe-inspect",
}


@contextmanager
def plot_context() -> Iterator[None]:
    """Seaborn "whitegrid" look plus our rc settings, restored on exit (never leaks into the caller)."""
    import seaborn as sns

    with ExitStack() as stack:
        stack.enter_context(mpl.rc_context())
        stack.enter_context(sns.axes_style("whitegrid"))
        mpl.rcParams.update(_RC)
        yield


def new_figure(height_in: float, width_in: float = WIDTH_IN) -> Figure:
    """A pyplot-free Figure with constrained layout (call inside `plot_context`)."""
    return Figure(figsize=(width_in, max(height_in, 2.0)), dpi=DPI, layout="constrained")


def save_png(fig: Figure, path: Path, dpi: int = DPI) -> None:
    """Render `fig` to `path` as PNG (inside the plot context, so draw-time rc values match).

    One draw: `Figure.savefig` draws a figure with a layout engine twice (a layout pass that draws
    every artist without rendering, then the rendering draw), which is a third of a report's figure
    time. Drawing once on an Agg canvas runs the same constrained layout and renders the same
    pixels; they are written as `savefig` writes them (`matplotlib.image.imsave`, same metadata and
    `PNG_OPTIONS`),
    so the file is byte for byte what `savefig` writes (a test compares them).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.image import imsave

    buf = io.BytesIO()
    with plot_context():
        if fig.dpi != dpi:
            fig.set_dpi(dpi)
        canvas = FigureCanvasAgg(fig)
        facecolor = fig.get_facecolor()
        fig.set_facecolor(mpl.rcParams["savefig.facecolor"])  # what savefig paints the background with
        try:
            canvas.draw()
        finally:
            fig.set_facecolor(facecolor)
        imsave(
            buf,
            canvas.buffer_rgba(),
            format="png",
            origin="upper",
            dpi=dpi,
            metadata={"Software": None},
            pil_kwargs=dict(PNG_OPTIONS),
        )
    path.write_bytes(buf.getvalue())


def save_png_savefig(fig: Figure, path: Path, dpi: int = DPI) -> None:
    """`save_png` through `Figure.savefig` (two draws): the reference the tests compare `save_png` with."""
    buf = io.BytesIO()
    with plot_context():
        fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None}, pil_kwargs=dict(PNG_OPTIONS))
    path.write_bytes(buf.getvalue())


def close(fig: Figure) -> None:
    """Release a figure (ours are never registered with pyplot): its pixel buffer now, its artists when
    the garbage collector next runs. `Figure.clear()` would first reset every Axes to its defaults
    (new ticks, spines, formatters), a tenth of a report's figure time spent on objects thrown away."""
    canvas = fig.canvas
    if "renderer" in vars(canvas):  # FigureCanvasAgg keeps its last renderer (the RGBA buffer)
        del canvas.renderer


def task_colors(task_names: Sequence[str]) -> dict[str, str]:
    """One stable color per task, in topology order; every figure uses this mapping."""
    return {t: TASK_COLORS[i % len(TASK_COLORS)] for i, t in enumerate(task_names)}


def grid_shape(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(n, max_cols)
    return (n + cols - 1) // cols, cols
