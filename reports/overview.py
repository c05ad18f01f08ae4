"""The one-page overview PNG: verdict, routing heatmap and key numbers on one 16:9 slide.

`overview_figure(result)` builds it (pyplot-free, inside the shared plot context); `write_report`
saves it as `overview.png` next to `index.html`, which links it at the top.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from mmoe_inspect.analysis.findings import SEVERITY_ORDER
from mmoe_inspect.results import InspectionResult

from ._draw import _heatmap, _short, gate_label
from ._style import CMAP_WEIGHT, close, plot_context, save_png
from .figures import routing_panels
from .structure import headline_cards

SLIDE_IN = (40 / 3, 7.5)  # a 16:9 slide; at OVERVIEW_DPI = 1920 x 1080 pixels
OVERVIEW_DPI = 144
SEVERITY_COLORS = {"critical": "#c62828", "warning": "#b26a00", "info": "#1565c0", None: "#2e7d32"}
MAX_FINDINGS = 3  # listed by name on the slide (the count line says how many there are)
OVERVIEW_CARDS = (  # at most four: two rows of two
    "rows inspected",
    "fewest effective experts",
    "normalized task-expert MI",
    "most similar task pair",
)


def _cards(result: InspectionResult) -> list[tuple[str, str, str]]:
    cards = {c.label: c for c in headline_cards(result)}
    return [(c.label, c.value, c.hint) for c in (cards[k] for k in OVERVIEW_CARDS if k in cards)]


def _causal_line(result: InspectionResult) -> str | None:
    """The strongest significant expert importance, in words (None without causal results)."""
    from .causal_figures import METRIC_NAMES, importance_rows

    rows = importance_rows(result)
    if rows.empty:
        return None
    sig = rows[rows["significant"].astype(bool)]
    if sig.empty:
        return "Causal: no single expert's removal measurably changes any task."
    best = sig.loc[sig["importance"].abs().idxmax()]
    metric = METRIC_NAMES.get(str(best["metric"]), str(best["metric"]))
    verb = "loses" if best["importance"] > 0 else "gains"
    return (
        f"Causal: without expert {_short(str(best['expert']), 20)}, {_short(str(best['task']), 20)} {verb} "
        f"{abs(float(best['importance'])):.3f} {metric}."
    )


def overview_figure(result: InspectionResult) -> Figure:
    """Verdict (colored by the worst finding), the routing heatmap of the last level, key numbers."""
    severity = result.worst_severity()
    topo = result.topology
    accent = (
        SEVERITY_COLORS.get(severity, SEVERITY_COLORS[None]) if topo.has_gates else SEVERITY_COLORS["info"]
    )
    with plot_context():
        fig = Figure(figsize=SLIDE_IN, dpi=OVERVIEW_DPI)
        fig.patch.set_facecolor("white")
        # header band
        fig.patches.append(
            _rect(fig, (0.0, 0.80), 1.0, 0.20, "#16202f"),
        )
        fig.patches.append(_rect(fig, (0.0, 0.80), 0.012, 0.20, accent))
        fig.text(0.03, 0.955, "MMOE-INSPECT", color="#9fb3cc", fontsize=11, fontweight="bold", va="top")
        fig.text(
            0.03,
            0.915,
            _short(result.model_name, 70),
            color="white",
            fontsize=22,
            fontweight="bold",
            va="top",
        )
        fig.text(
            0.03,
            0.835,
            _short(
                f"{result.data_source}  ·  {', '.join(topo.task_names)}  ·  {len(topo.experts)} experts, "
                f"{len(topo.gates)} gates ({topo.architecture or 'architecture not stated'})",
                150,
            ),
            color="#c8d3e2",
            fontsize=11,
            va="bottom",
        )
        # verdict
        fig.text(0.03, 0.765, "VERDICT", color="#5b6475", fontsize=10.5, fontweight="bold", va="top")
        fig.text(
            0.03,
            0.735,
            textwrap.fill(result.verdict, 96),
            color=accent,
            fontsize=16,
            fontweight="bold",
            va="top",
            linespacing=1.3,
        )
        panels = routing_panels(result)
        left = fig.add_axes((0.09, 0.16, 0.47, 0.44))
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
            left.set_title(f"Mean gate weight per task and expert{where}", loc="left", fontsize=14)
        else:
            left.axis("off")
            _task_lines(left, result)
        # key numbers
        cards = _cards(result)
        x0, y0 = 0.62, 0.62
        for k, (label, value, hint) in enumerate(cards):
            col, row = k % 2, k // 2
            x, y = x0 + col * 0.19, y0 - row * 0.15
            fig.text(x, y, value, fontsize=22, fontweight="bold", color="#1d2330", va="top")
            fig.text(x, y - 0.058, label, fontsize=11, color="#1d2330", va="top")
            if hint:
                fig.text(x, y - 0.087, textwrap.fill(hint, 32), fontsize=9.5, color="#5b6475", va="top")
        # findings: the counts, then the worst few by name
        ranked = sorted(result.findings, key=lambda f: SEVERITY_ORDER.get(f.severity, 9))
        y = y0 - 0.15 * ((len(cards) + 1) // 2) - 0.01
        n = {s: sum(f.severity == s for f in result.findings) for s in ("critical", "warning", "info")}
        fig.text(
            x0,
            y,
            f"Findings: {n['critical']} critical · {n['warning']} warning · {n['info']} info",
            fontsize=13,
            fontweight="bold",
            color="#1d2330",
            va="top",
        )
        y -= 0.055
        lines = [(f.severity, f"{f.title}: {_short(f.subject, 28)}") for f in ranked[:MAX_FINDINGS]]
        if len(ranked) > MAX_FINDINGS:
            lines.append((None, f"… and {len(ranked) - MAX_FINDINGS} more in the report"))
        causal = _causal_line(result)
        if causal:
            lines.append(("causal", causal))
        for sev, text in lines:
            color = SEVERITY_COLORS.get(sev, "#1d2330") if sev != "causal" else "#1d2330"
            fig.text(x0, y, "●" if sev not in (None, "causal") else " ", color=color, fontsize=11, va="top")
            fig.text(x0 + 0.018, y, textwrap.fill(text, 58), color="#1d2330", fontsize=11, va="top")
            y -= 0.045 * (1 + text.count("\n") + len(text) // 58)
        fig.text(0.99, 0.015, "full report: index.html", color="#5b6475", fontsize=9, ha="right", va="bottom")
    return fig


def _task_lines(ax, result: InspectionResult) -> None:
    """For a model without gates: what it predicts per task, as large text."""
    ax.text(
        0.0, 1.0, "No gates: nothing routes rows between experts.", fontsize=15, color="#5b6475", va="top"
    )
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
