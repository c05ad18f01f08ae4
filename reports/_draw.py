"""Drawing helpers shared by every report figure: names on axes, gate labels and colors, heatmaps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mmoe_inspect.results import InspectionResult
from mmoe_inspect.topology.spec import GateSpec

from ._style import SHARED_COLOR, task_colors

MAX_PANELS = 9  # gates drawn per multi-panel figure; the tables keep every gate
LABEL_CHARS = 22  # longer tick labels are shortened in the middle (tables keep full names)


# ----------------------------------------------------------------------------- helpers
def gate_label(result: InspectionResult, g: GateSpec) -> str:
    """How a gate is named in figures: its task, or "shared" for a gate serving no single task; the gate's
    own name is added when that would be ambiguous on its level."""
    same = [o for o in result.topology.gates if o.level == g.level and o.task == g.task]
    base = g.task if g.task is not None else "shared"
    return base if len(same) <= 1 else f"{base} ({g.name})"


def gate_color(result: InspectionResult, g: GateSpec) -> str:
    return task_colors(result.topology.task_names).get(g.task or "", SHARED_COLOR)


def _multi_level(result: InspectionResult) -> bool:
    return len(result.topology.levels) > 1


def _panel_title(result: InspectionResult, g: GateSpec) -> str:
    title = _short(gate_label(result, g), 26)
    return f"{title} · level {g.level}" if _multi_level(result) else title


def _shown_gates(result: InspectionResult, gates: Sequence[GateSpec] | None = None) -> list[GateSpec]:
    gates = list(result.topology.gates if gates is None else gates)
    return gates[:MAX_PANELS]


def _suptitle(fig: Figure, text: str, result: InspectionResult, shown: int | None = None) -> None:
    total = len(result.topology.gates)
    if shown is not None and shown < total:
        text += f" (first {shown} of {total} gates)"
    fig.suptitle(text, x=0.01, ha="left")


def _rotate(ax: Axes, labels: Sequence[str]) -> None:
    if len(labels) > 5 or max((len(s) for s in labels), default=0) > 8:
        for t in ax.get_xticklabels():
            t.set_rotation(35)
            t.set_ha("right")
            t.set_rotation_mode("anchor")


def _short(text: str, n: int = LABEL_CHARS) -> str:
    """`text` shortened in the middle to at most `n` characters ("cgc_layers.0…specific.1")."""
    text = str(text)
    if len(text) <= n:
        return text
    head = (n - 1) // 2
    return text[:head] + "…" + text[len(text) - (n - 1 - head) :]


def _short_ticks(ax: Axes, labels: Sequence[str]) -> None:
    """Categorical x tick labels, shortened and rotated when long or many."""
    ax.set_xticks(np.arange(len(labels)), [_short(t) for t in labels])
    _rotate(ax, [_short(t) for t in labels])


def _experts_on_level(result: InspectionResult, level: int) -> list[str]:
    mixed = {e for g in result.topology.gates if g.level == level for e in g.experts}
    ordered = [e.name for e in result.topology.experts if e.name in mixed]
    return ordered + sorted(mixed - set(ordered))


def _gates_on_level(result: InspectionResult, level: int) -> list[GateSpec]:
    order = {t: i for i, t in enumerate(result.topology.task_names)}
    gates = [g for g in result.topology.gates if g.level == level]
    return sorted(gates, key=lambda g: (g.task is None, order.get(g.task or "", 0)))


def _heatmap(
    ax: Axes,
    values: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    *,
    cmap: str,
    vmin: float,
    vmax: float,
    fmt: str = ".2f",
    cbar_label: str | None = None,
    annotate: bool | None = None,
    annot_values: np.ndarray | None = None,
    annot_size: float = 10.0,
) -> None:
    import seaborn as sns

    mask = ~np.isfinite(values)
    annot: bool | np.ndarray = annotate if annotate is not None else values.size <= 144
    if annot is True:  # cell texts formatted here: never "-0.000" / "+0.000" for a value that rounds to 0
        shown = np.asarray(annot_values if annot_values is not None else values, dtype=float)
        annot = np.array([[_cell_text(v, fmt) for v in row] for row in shown], dtype=object)
        fmt = ""
    ax.set_facecolor("#f0f0f0")  # cells a gate does not mix
    sns.heatmap(
        pd.DataFrame(values, index=[_short(r, 40) for r in rows], columns=[_short(c) for c in cols]),
        ax=ax,
        mask=mask,
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        annot=annot,
        fmt=fmt,
        annot_kws={"fontsize": annot_size},
        linewidths=0.6,
        linecolor="white",
        cbar=cbar_label is not None,
        cbar_kws={"label": cbar_label, "shrink": 0.85} if cbar_label is not None else None,
        square=False,
    )
    ax.tick_params(axis="y", rotation=0)
    ax.grid(False)
    _rotate(ax, [_short(c) for c in cols])


def _cell_text(v: float, fmt: str) -> str:
    """`format(v, fmt)`, with a value that rounds to zero written unsigned ("0.000", not "-0.000")."""
    if not np.isfinite(v):
        return ""
    text = format(v, fmt)
    return text.lstrip("+-") if float(text) == 0 else text


def _annot_size(panel_in: float, n: int, chars: int = 4) -> float:
    """Annotation font size (pt) that fits `chars` characters in a cell of a `panel_in`-inch, n-cell panel."""
    cell_pt = panel_in / max(n, 1) * 72
    return float(np.clip(cell_pt / (0.62 * chars + 0.6), 6.5, 10.5))
