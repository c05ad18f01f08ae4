"""Figures of the Attributions section, drawn from `result.attribution` (an
`mmoe_inspect.attribution.AttributionResult`).

Each returns None when its table is empty (no attribution result, a target skipped by the budget), so
the report shows a notice instead. Built without pyplot, inside `plot_context()`, like `routing_figures.py`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from mmoe_inspect.results import InspectionResult

from ._draw import _annot_size, _heatmap, _short
from ._style import SHARED_COLOR, WIDTH_IN, grid_shape, new_figure, plot_context, task_colors

MAX_ATTRIBUTION_GATES = 4  # gate panels per figure (the tables and CSVs keep every gate)
MAX_HEATMAP_FEATURES = 12  # feature rows per heatmap panel: the gate's (or experts') top features
TOP_FEATURES = 8  # bars per gate in the gate-vs-task figure
CMAP_ATTRIBUTION = "Oranges"


def attribution_tables(result: InspectionResult) -> dict[str, pd.DataFrame]:
    a = result.attribution
    return dict(a.tables) if a is not None else {}


def _table(result: InspectionResult, name: str) -> pd.DataFrame:
    frame = attribution_tables(result).get(name)
    return frame if frame is not None else pd.DataFrame()


def attribution_gates_shown(result: InspectionResult) -> list[str]:
    """Gates drawn: those with attributions, task gates first in topology order, at most MAX_ATTRIBUTION_GATES."""
    ga = _table(result, "gate_attributions")
    if ga.empty:
        return []
    have = list(dict.fromkeys(ga["gate"]))
    order = {t: i for i, t in enumerate(result.topology.task_names)}
    task_of = dict(zip(ga["gate"], ga["task"], strict=False))
    ranked = sorted(
        have,
        key=lambda g: (
            task_of.get(g) is None or pd.isna(task_of.get(g)),
            order.get(task_of.get(g), len(order)),
        ),
    )
    return ranked[:MAX_ATTRIBUTION_GATES]


def _gate_title(result: InspectionResult, gate: str, task: object, level: object) -> str:
    who = str(task) if isinstance(task, str) else "shared"
    title = _short(who if who == gate else f"{who} ({gate})", 30)
    if len(result.topology.levels) > 1 and level is not None and not pd.isna(level):
        title += f" · level {int(level)}"
    return title


def _suffix(shown: int, total: int, what: str) -> str:
    return f" (first {shown} of {total} {what})" if shown < total else ""


def shared_feature_order(attributions: pd.DataFrame) -> list[str]:
    """Features by their mean share over every gate and expert of `attributions` (largest first, ties by
    name): the one row order of every panel, so a feature sits on the same row in each gate's panel."""
    mean = attributions.groupby("feature", sort=True)["share"].mean().fillna(0.0)
    return list(mean.sort_values(ascending=False, kind="stable").index.astype(str))


def attribution_gate_heatmaps(result: InspectionResult) -> Figure | None:
    """Per gate: feature × expert share of mean |attribution| of the gate weight (each column sums to 1);
    the features in one order in every panel (`shared_feature_order`)."""
    ga = _table(result, "gate_attributions")
    gates = attribution_gates_shown(result)
    if ga.empty or not gates:
        return None
    shown = ga[ga["gate"].isin(gates)]
    order = shared_feature_order(shown)
    n_all = len(order)
    feats = order[:MAX_HEATMAP_FEATURES]
    panels = []
    for gate in gates:
        sub = ga[ga["gate"] == gate]
        experts = list(dict.fromkeys(sub["expert"]))
        grid = sub.pivot_table(index="feature", columns="expert", values="share", aggfunc="mean")
        values = grid.reindex(index=feats, columns=experts).to_numpy(dtype=float)
        first = sub.iloc[0]
        panels.append((gate, first["task"], first["level"], feats, n_all, experts, values))
    rows, cols = grid_shape(len(panels), max_cols=2)
    n_feat = max(len(p[3]) for p in panels)
    vmax = max(float(np.nanmax(p[6])) if np.isfinite(p[6]).any() else 0.0 for p in panels) or 1.0
    with plot_context():
        fig = new_figure(rows * (0.34 * n_feat + 1.6) + 0.8)
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
        panel_in = WIDTH_IN / cols - 1.8
        for ax, (gate, task, level, feats, n_all, experts, values) in zip(axes, panels, strict=False):
            _heatmap(
                ax,
                values,
                feats,
                experts,
                cmap=CMAP_ATTRIBUTION,
                vmin=0.0,
                vmax=vmax,
                fmt=".2f",
                annotate=values.size <= 144,
                annot_size=_annot_size(panel_in, len(experts), 4),
            )
            ax.set_title(
                _gate_title(result, gate, task, level)
                + (f" · top {len(feats)} of {n_all}" if n_all > len(feats) else ""),
                loc="left",
            )
            ax.set_xlabel("expert whose gate weight is attributed")
            ax.set_ylabel("feature")
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        sm = fig.colorbar(axes[0].collections[0], ax=list(axes[: len(panels)]), shrink=0.85)
        sm.set_label("share of the expert's mean |attribution|")
        n_gates = len(list(dict.fromkeys(ga["gate"])))
        fig.suptitle(
            "Which features move each gate's weight on each expert" + _suffix(len(panels), n_gates, "gates"),
            x=0.01,
            ha="left",
        )
    return fig


def attribution_gate_vs_task(result: InspectionResult) -> Figure | None:
    """Per gate: its top features' shares of the gate's attribution next to their shares for its task."""
    gf = _table(result, "gate_features")
    gates = attribution_gates_shown(result)
    if gf.empty or not gates:
        return None
    ta = _table(result, "task_attributions")
    colors = task_colors(result.topology.task_names)
    rows, cols = grid_shape(len(gates), max_cols=2)
    with plot_context():
        fig = new_figure(rows * (0.36 * TOP_FEATURES + 1.5) + 0.9)
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
        for ax, gate in zip(axes, gates, strict=False):
            all_rows = gf[gf["gate"] == gate]
            sub = all_rows[all_rows["rank"].notna()].sort_values("rank").head(TOP_FEATURES)
            task = all_rows["task"].iloc[0]
            if sub.empty:  # every attribution 0 or not finite: no feature to rank (see the notes)
                ax.text(
                    0.5, 0.5, "no feature moves this gate", ha="center", va="center", transform=ax.transAxes
                )
                ax.set_axis_off()
                ax.set_title(_gate_title(result, gate, task, all_rows["level"].iloc[0]), loc="left")
                continue
            has_task = isinstance(task, str) and not ta.empty and (ta["task"] == task).any()
            feats = list(sub["feature"])
            y = np.arange(len(feats))
            color = colors.get(task, SHARED_COLOR) if isinstance(task, str) else SHARED_COLOR
            h = 0.4 if has_task else 0.7
            ax.barh(y - (h / 2 if has_task else 0), sub["share"], h, color=color, label="gate")
            if has_task:
                tshare = (
                    ta[ta["task"] == task].set_index("feature")["share"].reindex(feats).to_numpy(dtype=float)
                )
                ax.barh(
                    y + h / 2,
                    np.nan_to_num(tshare),
                    h,
                    color="white",
                    edgecolor=color,
                    hatch="///",
                    label="its task's prediction",
                )
            ax.set_yticks(y, [_short(f, 22) for f in feats])
            ax.invert_yaxis()
            ax.set_xlabel("share of total mean |attribution|")
            ax.grid(axis="y", visible=False)
            ax.set_title(_gate_title(result, gate, task, sub["level"].iloc[0]), loc="left")
        for ax in axes[len(gates) :]:
            ax.set_visible(False)
        handles = [
            Patch(facecolor="#6b6b6b", label="the gate's weights"),
            Patch(facecolor="white", edgecolor="#6b6b6b", hatch="///", label="its task's prediction"),
        ]
        fig.legend(handles=handles, frameon=False, loc="outside lower center", ncols=2)
        n_gates = len(list(dict.fromkeys(gf["gate"])))
        fig.suptitle(
            f"Top {TOP_FEATURES} features of each gate, and the same features for its task"
            + _suffix(len(gates), n_gates, "gates"),
            x=0.01,
            ha="left",
        )
    return fig


def attribution_experts(result: InspectionResult) -> Figure | None:
    """Feature × expert share of the mean |attribution| of each expert's output norm."""
    ea = _table(result, "expert_attributions")
    if ea.empty:
        return None
    experts = [e.name for e in result.topology.experts if e.name in set(ea["expert"])]
    experts += [e for e in dict.fromkeys(ea["expert"]) if e not in experts]
    grid = ea.pivot_table(index="feature", columns="expert", values="share", aggfunc="mean")
    order = grid.mean(axis=1).sort_values(ascending=False, kind="stable").index
    n_all = len(order)
    feats = list(order[:MAX_HEATMAP_FEATURES])
    if not feats:  # no finite share (every attribution 0 or NaN): nothing to draw, the notes say why
        return None
    values = grid.reindex(index=feats, columns=experts).to_numpy(dtype=float)
    vmax = float(np.nanmax(values)) if np.isfinite(values).any() else 1.0
    with plot_context():
        fig = new_figure(0.3 * len(feats) + 2.0)
        ax = fig.subplots()
        _heatmap(
            ax,
            values,
            feats,
            experts,
            cmap=CMAP_ATTRIBUTION,
            vmin=0.0,
            vmax=vmax or 1.0,
            fmt=".2f",
            cbar_label="share of the expert's mean |attribution|",
            annotate=values.size <= 200,
            annot_size=_annot_size(WIDTH_IN - 3.5, len(experts), 4),
        )
        ax.set_xlabel("expert (attribution of the L2 norm of its output)")
        ax.set_ylabel("feature")
        fig.suptitle(
            "Which features each expert responds to"
            + (f" (top {len(feats)} of {n_all} features)" if n_all > len(feats) else ""),
            x=0.01,
            ha="left",
        )
    return fig
