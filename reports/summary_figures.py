"""Figures of the summary, experts and tasks sections, drawn from the inspection itself: effective experts
per gate, expert similarity (linear CKA), task outputs.

Each function takes an `InspectionResult` and returns a `Figure` (or None when its data is empty);
figures are built directly (no pyplot), inside `plot_context()`, like `routing_figures.py`.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from mmoe_inspect.results import InspectionResult

from ._draw import _heatmap, _panel_title, _short, _short_ticks, gate_color
from ._style import CMAP_SIMILARITY, SHARED_COLOR, WIDTH_IN, new_figure, plot_context, task_colors


def expert_similarity(result: InspectionResult) -> Figure | None:
    """Linear CKA between the outputs of every pair of experts (1 = same function up to rotation/scale)."""
    cka = result.arrays.get("expert_cka")
    names = list(result.arrays.get("expert_cka_names") or [])
    if cka is None or not names:
        return None
    m = np.asarray(cka, dtype=float)
    if m.shape != (len(names), len(names)):
        return None
    side = min(8.5, 2.0 + 0.55 * len(names))
    with plot_context():
        fig = new_figure(side + 0.5, width_in=min(WIDTH_IN, side + 2.2))
        ax = fig.subplots()
        _heatmap(
            ax,
            m,
            names,
            names,
            cmap=CMAP_SIMILARITY,
            vmin=0.0,
            vmax=1.0,
            cbar_label="linear CKA",
            annotate=len(names) <= 12,
        )
        ax.set_aspect("equal")
        levels = {e.name: e.level for e in result.topology.experts}
        lv = [levels.get(n) for n in names]
        for i in range(1, len(lv)):
            if lv[i] != lv[i - 1]:
                ax.axhline(i, color="#222222", lw=2)
                ax.axvline(i, color="#222222", lw=2)
        fig.suptitle("Expert similarity (linear CKA)", x=0.01, ha="left")
    return fig


def task_outputs(result: InspectionResult) -> Figure | None:
    """Per task: label rate (or mean) vs mean prediction, and exact AUC (binary) / MSE (regression)."""
    tasks = result.table("tasks")
    if tasks.empty or "mean_prediction" not in tasks:
        return None
    colors = task_colors(result.topology.task_names)

    def column(name: str) -> np.ndarray:
        return tasks[name].to_numpy(dtype=float) if name in tasks else np.full(len(tasks), np.nan)

    names = np.asarray([str(t) for t in tasks["task"]], dtype=object)
    binary = (tasks["kind"] == "binary").to_numpy()
    pred, auc, mse = column("mean_prediction"), column("auc"), column("mse")
    label = np.where(binary, column("positive_rate"), column("label_mean"))
    # (kind, title, rows): binary and regression means never share an axis (different scales)
    panels: list[tuple[str, str, np.ndarray]] = []
    if binary.any():
        panels.append(("means", "Label rate vs mean prediction" if binary.all() else "Binary tasks", binary))
    if (~binary).any():
        panels.append(
            ("means", "Label mean vs mean prediction" if (~binary).all() else "Regression tasks", ~binary)
        )
    if (binary & np.isfinite(auc)).any():
        panels.append(("auc", "AUC", binary & np.isfinite(auc)))
    if (~binary & np.isfinite(mse)).any():
        panels.append(("mse", "MSE", ~binary & np.isfinite(mse)))
    if not panels:
        return None
    kinds = {kind for kind, _, _ in panels}
    widths = [int(rows.sum()) * (2 if kind == "means" else 1) + 1.5 for kind, _, rows in panels]
    with plot_context():
        fig = new_figure(4.2 + (0.4 if len(names) > 5 else 0))
        axes = fig.subplots(1, len(panels), squeeze=False, width_ratios=widths)[0]
        for ax, (kind, title, rows) in zip(axes, panels, strict=True):
            sel = np.flatnonzero(rows)
            x = np.arange(len(sel))
            color = [colors.get(t, SHARED_COLOR) for t in names[sel]]
            if kind == "means":
                _task_means(ax, x, label[sel], pred[sel], color, as_pct=bool(binary[sel].all()))
            else:
                values = auc[sel] if kind == "auc" else mse[sel]
                ax.bar(x, values, 0.6, color=color)
                if kind == "auc":
                    ax.axhline(0.5, color="#333333", ls="--", lw=1)
                    chance = ax.secondary_yaxis("right")  # named beside the axis, not over the bars
                    chance.set_yticks([0.5], ["chance"])
                    chance.tick_params(length=0, labelsize=9.5, colors="#333333")
                    ax.set_ylim(0.0, 1.08)
                for xi, v in zip(x, values, strict=True):
                    ax.text(xi, v, f"{v:.3f}", ha="center", va="bottom", fontsize=10)
            ax.set_title(title, loc="left")
            ax.set_xlim(-0.6, len(sel) - 0.4)
            _short_ticks(ax, list(names[sel]))
            ax.grid(axis="x", visible=False)
        legend = [
            Patch(facecolor="#cccccc", edgecolor="#888888", hatch="//", label="label rate / label mean"),
            Patch(facecolor="#666666", label="mean prediction"),
        ]
        fig.legend(handles=legend, loc="outside lower center", ncols=2, frameon=False)
        title = "Task outputs (exact AUC)" if "auc" in kinds else "Task outputs"
        fig.suptitle(title, x=0.01, ha="left")
    return fig


def _task_means(
    ax: Axes, x: np.ndarray, label: np.ndarray, pred: np.ndarray, color: list[str], as_pct: bool
) -> None:
    """Hatched bar = label rate (or mean), solid bar = mean prediction, each with its value on top."""
    ax.bar(x - 0.2, label, 0.4, color=color, alpha=0.4, hatch="//", edgecolor=color)
    ax.bar(x + 0.2, pred, 0.4, color=color)
    top = float(np.nanmax(np.r_[label, pred, 0.0]))
    ax.set_ylim(0, top * 1.2 if top > 0 else 1.0)
    for xs, values in ((x - 0.2, label), (x + 0.2, pred)):
        for xi, v in zip(xs, values, strict=True):
            if np.isfinite(v):
                ax.text(
                    xi,
                    max(v, 0.0),
                    f"{v:.1%}" if as_pct else f"{v:.3g}",
                    ha="center",
                    va="bottom",
                    fontsize=9.5,
                )
    ax.set_ylabel("share of rows" if as_pct else "value")


def effective_experts(result: InspectionResult) -> Figure | None:
    """Effective number of experts exp(H(mean gate)) per gate, against the number of experts it mixes."""
    gm = result.table("gate_metrics")
    if gm.empty:
        return None
    order = {g.name: i for i, g in enumerate(result.topology.gates)}
    gm = gm.assign(_o=gm["gate"].map(order)).sort_values("_o")
    specs = {g.name: g for g in result.topology.gates}
    labels = [_panel_title(result, specs[n]) if n in specs else str(n) for n in gm["gate"]]
    colors = [gate_color(result, specs[n]) if n in specs else SHARED_COLOR for n in gm["gate"]]
    y = np.arange(len(gm))
    with plot_context():
        fig = new_figure(1.2 + 0.45 * len(gm))
        ax = fig.subplots()
        ax.barh(
            y, gm["n_experts"], 0.7, color="none", edgecolor="#999999", ls="--", label="experts mixed (E)"
        )
        ax.barh(y, gm["effective_experts"], 0.7, color=colors, label="effective experts")
        ax.set_yticks(y, [_short(t, 30) for t in labels])
        ax.invert_yaxis()
        e_max = int(gm["n_experts"].max())
        ax.set_xlim(0, e_max)  # the axis ends at E: nothing beyond the largest possible value
        ax.set_xticks(np.arange(0, e_max + 1, max(1, math.ceil(e_max / 10))))
        values = ax.secondary_yaxis("right")  # "2.10 of 4" beside each bar, outside the plot area
        values.set_yticks(
            y,
            [
                f"{eff:.2f} of {int(n)}"
                for eff, n in zip(gm["effective_experts"], gm["n_experts"], strict=True)
            ],
        )
        values.tick_params(length=0, labelsize=10)
        ax.set_xlabel("experts (effective = exp(entropy of the mean gate))")
        fig.legend(*ax.get_legend_handles_labels(), frameon=False, loc="outside lower center", ncols=2)
        ax.grid(axis="y", visible=False)
        ax.set_title("Effective number of experts per gate", loc="left")
    return fig
