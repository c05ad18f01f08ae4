"""Figures of the routing section, drawn from the inspection itself: mean weights and utilization, weight
distributions, entropy, co-activation, task divergence, label routing (one module: they share the
level/panel helpers and constants at the top; each figure is one function of 30-75 lines).

Each function takes an `InspectionResult` and returns a `Figure` (or None when its data is empty);
figures are built directly (no pyplot), inside `plot_context()`. The registry that names and orders
them for the report is `figures.FIGURES`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from mmoe_inspect.results import InspectionResult
from mmoe_inspect.topology.spec import GateSpec

from ._draw import (
    MAX_PANELS,
    _annot_size,
    _experts_on_level,
    _gates_on_level,
    _heatmap,
    _multi_level,
    _panel_title,
    _short,
    _short_ticks,
    _shown_gates,
    _suptitle,
    gate_color,
    gate_label,
)
from ._style import (
    CMAP_DIVERGENCE,
    CMAP_LIFT,
    CMAP_WEIGHT,
    WIDTH_IN,
    grid_shape,
    new_figure,
    plot_context,
)

RESERVOIR_ROWS = 600  # rows per gate drawn in the weight distributions
MAX_LABEL_ROWS = 24  # gate x label rows in the label-routing heatmap
LABEL_DIFF_FLOOR = 0.05  # color scale of that heatmap spans at least ±0.05 weight
MAX_VIOLINS = 32  # expert x gate violins side by side before splitting a level into one panel per gate


# ----------------------------------------------------------------------------- figures
def routing_panels(result: InspectionResult) -> list[tuple[int, list[GateSpec], list[str], np.ndarray]]:
    """Per level: its gates (task order), its experts and the `[gates, experts]` mean weights (NaN where a
    gate does not mix an expert). Empty when the result has no utilization table."""
    util = result.table("utilization")
    if util.empty:
        return []
    panels = []
    for level in result.topology.levels:
        gates, experts = _gates_on_level(result, level), _experts_on_level(result, level)
        values = np.full((len(gates), len(experts)), np.nan)
        col = {e: j for j, e in enumerate(experts)}
        for i, g in enumerate(gates):
            sub = util[util["gate"] == g.name]
            for row in sub.itertuples(index=False):
                if row.expert in col:
                    values[i, col[row.expert]] = row.mean
        panels.append((level, gates, experts, values))
    return panels


def task_expert_heatmap(result: InspectionResult) -> Figure | None:
    """Mean gate weight of every gate (row) on every expert (column); one panel per level."""
    panels = routing_panels(result)
    if not panels or not any(np.isfinite(v).any() for *_, v in panels):
        return None
    vmax = max(float(np.nanmax(v)) for *_, v in panels if np.isfinite(v).any())
    heights = [max(len(p[1]), 1) for p in panels]
    with plot_context():
        fig = new_figure(sum(0.55 * h + 1.5 for h in heights) + 0.4)
        axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
        for ax, (level, gates, experts, values) in zip(axes, panels, strict=True):
            _heatmap(
                ax,
                values,
                [gate_label(result, g) for g in gates],
                experts,
                cmap=CMAP_WEIGHT,
                vmin=0.0,
                vmax=vmax,
                cbar_label="mean gate weight",
                annotate=values.size <= 200,
            )
            ax.set_xlabel("expert")
            ax.set_ylabel("gate (task)")
            if len(panels) > 1:
                ax.set_title(f"Level {level}", loc="left")
        _suptitle(fig, "Mean gate weight per task and expert", result)
    return fig


def draw_utilization(
    ax: Axes, experts: Sequence[str], mean: Sequence[float], std: Sequence[float], color: str, title: str
) -> None:
    """PLE-paper utilization panel: bar = mean weight of each expert, error bar = its standard deviation."""
    x = np.arange(len(experts))
    mean_a, std_a = np.asarray(mean, float), np.asarray(std, float)
    ax.bar(x, mean_a, color=color, alpha=0.85, width=0.7, label="mean weight", zorder=2)
    ax.errorbar(
        x,
        mean_a,
        yerr=std_a,
        fmt="none",
        ecolor="#222222",
        elinewidth=1.4,
        capsize=4,
        label="std. deviation",
        zorder=3,
    )
    if len(experts):
        ax.axhline(1 / len(experts), color="#555555", ls="--", lw=1, label="uniform 1/E", zorder=1)
    _short_ticks(ax, list(experts))
    ax.set_title(title, loc="left")
    ax.set_ylim(0, utilization_top(mean_a, std_a))
    ax.grid(axis="x", visible=False)


def utilization_top(mean: np.ndarray, std: np.ndarray) -> float:
    """Upper y limit that shows every bar and error bar (weights live in [0, 1])."""
    top = float(np.nanmax(mean + std, initial=0.0))
    return min(1.05, max(top * 1.08, 1.3 / max(len(mean), 1), 0.05))


def expert_utilization(result: InspectionResult) -> Figure | None:
    """Per gate: mean weight (bar) and standard deviation (error bar) of each expert, as in the PLE paper."""
    util = result.table("utilization")
    if util.empty:
        return None
    gates = _shown_gates(result)
    nrows, ncols = grid_shape(len(gates))
    with plot_context():
        fig = new_figure(2.9 * nrows + 0.7)
        axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
        top = 0.0
        for ax, g in zip(axes.flat, gates, strict=False):
            sub = util[util["gate"] == g.name].set_index("expert").reindex(list(g.experts))
            mean, std = sub["mean"].to_numpy(dtype=float), sub["std"].to_numpy(dtype=float)
            draw_utilization(ax, list(g.experts), mean, std, gate_color(result, g), _panel_title(result, g))
            top = max(top, utilization_top(mean, std))
        axes.flat[0].set_ylim(0, top)  # shared y: one scale for every gate
        for ax in axes.flat[len(gates) :]:
            ax.set_visible(False)
        for ax in axes[:, 0]:
            ax.set_ylabel("gate weight")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=3, frameon=False)
        _suptitle(
            fig,
            "Expert utilization per gate (bar: mean weight, line: standard deviation)",
            result,
            len(gates),
        )
    return fig


def weight_distributions(result: InspectionResult) -> Figure | None:
    """Distribution of per-row gate weights for each expert: violins, one color per gate, panels per level
    (per gate when a level has too many expert x gate violins to read side by side)."""
    import seaborn as sns

    reservoir = result.arrays.get("reservoir") or {}
    frames = []
    for g in result.topology.gates:
        w = np.asarray(reservoir.get(g.name, np.empty((0, g.n_experts))), dtype=float)
        if w.ndim != 2 or w.shape[0] == 0 or w.shape[1] != g.n_experts:
            continue
        w = w[:RESERVOIR_ROWS]
        frames.append(
            pd.DataFrame(
                {
                    "level": g.level,
                    "gate": gate_label(result, g),
                    "expert": np.repeat(np.asarray(g.experts, dtype=object)[None, :], len(w), 0).ravel(),
                    "weight": w.ravel(),
                }
            )
        )
    if not frames:
        return None
    data = pd.concat(frames, ignore_index=True)
    palette = {gate_label(result, g): gate_color(result, g) for g in result.topology.gates}
    panels: list[tuple[str, pd.DataFrame, list[str], list[str]]] = []  # title, rows, x order, hue order
    multi = _multi_level(result)
    for level in sorted(data["level"].unique()):
        sub = data[data["level"] == level]
        present = set(sub["expert"].unique())  # once: `in set(column)` in the loop rebuilt it per expert
        order = [e for e in _experts_on_level(result, int(level)) if e in present]
        hues = [gate_label(result, g) for g in _gates_on_level(result, int(level))]
        gates_present = set(sub["gate"].unique())
        hues = [h for h in hues if h in gates_present]
        if len(order) * len(hues) <= MAX_VIOLINS:
            panels.append((f"Level {level}" if multi else "", sub, order, hues))
        else:
            for h in hues:
                rows = sub[sub["gate"] == h]
                in_rows = set(rows["expert"].unique())
                x = [e for e in order if e in in_rows]
                panels.append((f"{_short(h, 40)} · level {level}" if multi else _short(h, 40), rows, x, [h]))
    panels = panels[:MAX_PANELS]
    single_hue = all(len(p[3]) == 1 for p in panels)
    with plot_context():
        fig = new_figure((2.6 if single_hue else 3.6) * len(panels) + 0.9)
        axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
        for ax, (title, sub, order, hues) in zip(axes, panels, strict=True):
            sns.violinplot(
                data=sub,
                x="expert",
                y="weight",
                hue="gate",
                order=order,
                hue_order=hues,
                palette=palette,
                cut=0,
                density_norm="width",
                inner="quart",
                linewidth=0.8,
                saturation=0.9,
                legend=len(hues) > 1,
                ax=ax,
            )
            ax.set_ylim(-0.02, 1.02)
            ax.set_ylabel("gate weight")
            ax.set_xlabel("expert")
            _short_ticks(ax, order)
            if title:
                ax.set_title(title, loc="left")
            if len(hues) > 1:
                ax.legend(title="gate (task)", loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        _suptitle(fig, "Distribution of per-row gate weights for each expert", result)
    return fig


def gate_entropy(result: InspectionResult) -> Figure | None:
    """Histogram of per-row gate entropy per gate, with 0 (one expert) and log E (uniform) marked."""
    hists = result.arrays.get("entropy_hist") or {}
    edges_all = result.arrays.get("entropy_hist_edges") or {}
    gates = [g for g in result.topology.gates if g.name in hists and np.asarray(hists[g.name]).sum() > 0]
    gates = gates[:MAX_PANELS]
    if not gates:
        return None
    gm = result.table("gate_metrics")
    mean_h = dict(zip(gm["gate"], gm["mean_entropy"], strict=True)) if not gm.empty else {}
    nrows, ncols = grid_shape(len(gates))
    with plot_context():
        fig = new_figure(2.8 * nrows + 0.7)
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for ax, g in zip(axes.flat, gates, strict=False):
            counts = np.asarray(hists[g.name], dtype=float)
            edges = np.asarray(edges_all[g.name], dtype=float)
            share = counts / counts.sum()
            color = gate_color(result, g)
            ax.stairs(share, edges, fill=True, color=color, alpha=0.75)
            log_e = math.log(g.n_experts) if g.n_experts > 1 else 1.0
            top = float(share.max()) * 1.25
            ax.set_ylim(0, top)
            for x in (0.0, log_e):
                ax.axvline(x, color="#333333", lw=1.3)
            marks = ax.secondary_xaxis("top")
            marks.set_xticks([0.0, log_e], ["one expert", "uniform"])
            marks.tick_params(length=0, labelsize=9.5, pad=1)
            marks.get_xticklabels()[0].set_ha("left")
            marks.get_xticklabels()[1].set_ha("right")
            if g.name in mean_h and np.isfinite(mean_h[g.name]):
                ax.axvline(mean_h[g.name], color="#222222", ls=":", lw=1.5, label="mean")
            ax.set_xlim(-0.04 * log_e, 1.04 * log_e)
            ax.set_title(_panel_title(result, g), loc="left")
            ax.set_xlabel(f"entropy (nats), log {g.n_experts} = {log_e:.2f}")
            ax.grid(axis="x", visible=False)
        for ax in axes.flat[len(gates) :]:
            ax.set_visible(False)
        for ax in axes[:, 0]:
            ax.set_ylabel("share of rows")
        _suptitle(fig, "Per-row gate entropy (dotted line: mean)", result, len(gates))
    return fig


LIFT_RANGE = 2.0  # colors saturate at 4x / 0.25x (log2 scale)


def coactivation_lift(m: np.ndarray) -> np.ndarray:
    """E[g_a g_b] / (E[g_a] E[g_b]) from the mean outer product `m` (row sums of m are the mean gate)."""
    mean = m.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = m / np.outer(mean, mean)
    lift[~np.isfinite(lift)] = np.nan
    np.fill_diagonal(lift, np.nan)  # E[g_a²]/E[g_a]² is a spread, not a pairing
    return lift


NEGLIGIBLE_SHARE = 0.1  # an expert whose mean weight is under a tenth of the uniform share 1/E


def negligible_experts(m: np.ndarray) -> np.ndarray:
    """Bool `[E]`: experts whose mean weight (row sums of the mean outer product `m`) is under
    `NEGLIGIBLE_SHARE / E`. Their co-activation ratio divides by a near-zero mean, so any tiny joint
    weight reads as a huge ratio (a 110x cell between two experts that both get ~0 weight): masked."""
    mean = np.asarray(m, dtype=float).sum(axis=1)
    return ~(mean >= NEGLIGIBLE_SHARE / max(len(mean), 1))


def coactivation(result: InspectionResult) -> Figure | None:
    """Per gate: how much more (or less) often two experts are weighted together than by chance; experts
    with negligible weight (`negligible_experts`) are masked (gray), their rows and columns not colored."""
    mats = result.arrays.get("coactivation") or {}
    gates = [
        g
        for g in result.topology.gates
        if g.n_experts >= 2 and np.asarray(mats.get(g.name, [])).shape == (g.n_experts, g.n_experts)
    ]
    gates = gates[:6]
    if not gates:
        return None
    nrows, ncols = grid_shape(len(gates))
    panel_in = min((WIDTH_IN - 1.2) / ncols, 3.2)
    with plot_context():
        fig = new_figure((0.75 * panel_in + 1.0) * nrows + 0.4)
        axes = fig.subplots(nrows, ncols, squeeze=False)
        any_masked = False
        for ax, g in zip(axes.flat, gates, strict=False):
            m = np.asarray(mats[g.name], dtype=float)
            lift = coactivation_lift(m)
            idle = negligible_experts(m)
            lift[idle, :] = lift[:, idle] = np.nan
            any_masked |= bool(idle.any())
            with np.errstate(divide="ignore"):
                color = np.log2(lift)
            color[np.isneginf(color)] = -LIFT_RANGE
            names = [f"{e} (~0)" if dead else e for e, dead in zip(g.experts, idle, strict=True)]
            _heatmap(
                ax,
                color,
                names,
                names,
                cmap=CMAP_LIFT,
                vmin=-LIFT_RANGE,
                vmax=LIFT_RANGE,
                fmt=".1f",
                annotate=g.n_experts <= 10,
                annot_values=lift,
                annot_size=_annot_size(panel_in, g.n_experts, 3),
            )
            ax.set_title(_panel_title(result, g), loc="left")
            ax.set_aspect("equal")
        for ax in axes.flat[len(gates) :]:
            ax.set_visible(False)
        ticks = np.arange(-LIFT_RANGE, LIFT_RANGE + 1)
        bar = fig.colorbar(
            ScalarMappable(Normalize(-LIFT_RANGE, LIFT_RANGE), CMAP_LIFT),
            ax=list(axes.flat[: len(gates)]),
            label="weighted together vs chance",
            shrink=0.8 if nrows > 1 else 0.65,
            ticks=ticks,
        )
        bar.ax.set_yticklabels([f"{2.0**t:g}×" for t in ticks])
        _suptitle(
            fig,
            "Expert co-activation: E[g_a·g_b] / (E[g_a]·E[g_b])  (1 = independent)"
            + ("\ngray: an expert with ~0 weight (its ratio would divide by ~0)" if any_masked else ""),
            result,
            len(gates),
        )
    return fig


def task_divergence(result: InspectionResult) -> Figure | None:
    """Task × task heatmaps of mean per-row total variation and Jensen-Shannon divergence between gates."""
    div = result.table("task_divergence")
    if div.empty:
        return None
    levels = sorted(div["level"].unique())
    metrics = [("tv_per_row", "mean per-row total variation", 1.0)]
    if "jsd_per_row" in div and div["jsd_per_row"].notna().any():
        metrics.append(("jsd_per_row", "mean per-row Jensen-Shannon (nats)", math.log(2)))
    else:
        metrics = [("jsd_mean_gates", "Jensen-Shannon of mean gates (nats)", math.log(2))]
    if metrics[0][0] == "tv_per_row" and not div["tv_per_row"].notna().any():
        metrics = metrics[1:]
    n_tasks = max(
        len(set(div.loc[div["level"] == lv, "task_a"]) | set(div.loc[div["level"] == lv, "task_b"]))
        for lv in levels
    )
    if n_tasks <= 2:  # one pair per level: one number per metric, not a 2 x 2 heatmap
        return _divergence_bars(div, levels, metrics)
    side = min(5.0, 1.2 + 0.75 * n_tasks)
    with plot_context():
        fig = new_figure(
            (side + 0.6) * len(levels) + 0.6, width_in=min(WIDTH_IN, (side + 1.8) * len(metrics))
        )
        axes = fig.subplots(len(levels), len(metrics), squeeze=False)
        for r, level in enumerate(levels):
            sub = div[div["level"] == level]
            order = [t for t in result.topology.task_names if t in set(sub["task_a"]) | set(sub["task_b"])]
            idx = {t: i for i, t in enumerate(order)}
            for c, (col, label, vmax) in enumerate(metrics):
                m = np.full((len(order), len(order)), np.nan)
                for row in sub.itertuples(index=False):
                    v = getattr(row, col)
                    m[idx[row.task_a], idx[row.task_b]] = m[idx[row.task_b], idx[row.task_a]] = v
                m[~np.isfinite(m)] = np.nan
                ax = axes[r, c]
                _heatmap(
                    ax,
                    m,
                    order,
                    order,
                    cmap=CMAP_DIVERGENCE,
                    vmin=0.0,
                    vmax=vmax,
                    fmt=".3f",
                    cbar_label=label,
                )
                ax.set_aspect("equal")
                if len(levels) > 1:
                    ax.set_title(f"Level {level}", loc="left")
        fig.suptitle("How differently task gates route the same rows (0 = identical)", x=0.01, ha="left")
    return fig


def _divergence_bars(div: pd.DataFrame, levels: list, metrics: list[tuple[str, str, float]]) -> Figure:
    """Two tasks: one bar per level and metric (the pair's divergence), its value written beside the
    axis, each axis running to the metric's maximum (1 for total variation, log 2 for Jensen-Shannon)."""
    rows = [div[div["level"] == lv].iloc[0] for lv in levels]
    names = [f"{_short(r.task_a, 18)} ~ {_short(r.task_b, 18)}" + (f" (level {lv})" if len(levels) > 1 else "")
             for r, lv in zip(rows, levels, strict=True)]  # fmt: skip
    y = np.arange(len(rows))
    with plot_context():
        fig = new_figure(1.6 + 0.5 * len(rows))
        axes = fig.subplots(1, len(metrics), squeeze=False)[0]
        for k, (ax, (col, label, vmax)) in enumerate(zip(axes, metrics, strict=True)):
            vals = np.array([float(getattr(r, col)) for r in rows])
            ax.barh(y, np.nan_to_num(vals), 0.6, color="#d7301f")
            ax.set_xlim(0, vmax)
            ax.set_yticks(y, names if k == 0 else [""] * len(names))  # the pair named once, on the left
            ax.invert_yaxis()
            ax.set_xlabel(label)
            ax.grid(axis="y", visible=False)
            side = ax.secondary_yaxis("right")
            side.set_yticks(y, ["—" if not np.isfinite(v) else f"{v:.3f}" for v in vals])
            side.tick_params(length=0, labelsize=10.5)
        fig.suptitle(
            "How differently the two task gates route the same rows (0 = identical)", x=0.01, ha="left"
        )
    return fig


def label_routing(result: InspectionResult) -> Figure | None:
    """Per final-level gate and binary label: mean weight of each expert on positive rows minus on negative rows."""
    lr = result.table("label_routing")
    if lr.empty:
        return None
    top_level = max(result.topology.levels)
    gates = [g for g in _gates_on_level(result, top_level) if g.name in set(lr["gate"])][:6]
    labels = [t for t in result.topology.task_names if t in set(lr["label"])]
    labels += sorted(set(lr["label"]) - set(labels))
    if not gates or not labels:
        return None
    experts = _experts_on_level(result, top_level)
    col = {e: j for j, e in enumerate(experts)}
    rows, names, groups = [], [], []
    for g in gates:
        own = [g.task] if g.task in labels else []
        for label in own + [x for x in labels if x not in own]:
            sub = lr[(lr["gate"] == g.name) & (lr["label"] == label)]
            diff = np.full(len(experts), np.nan)
            for r in sub.itertuples(index=False):
                if r.expert in col:
                    diff[col[r.expert]] = r.mean_positive - r.mean_negative
            rows.append(diff)
            names.append(f"{_short(gate_label(result, g), 16)} gate · {_short(label, 16)}")
            groups.append(g.name)
    rows, names, groups = rows[:MAX_LABEL_ROWS], names[:MAX_LABEL_ROWS], groups[:MAX_LABEL_ROWS]
    values = np.vstack(rows)
    if not np.isfinite(values).any():
        return None
    lim = max(float(np.nanmax(np.abs(values))), LABEL_DIFF_FLOOR)  # small gaps stay pale
    with plot_context():
        fig = new_figure(0.42 * len(rows) + 2.0)
        ax = fig.subplots()
        _heatmap(
            ax,
            values,
            names,
            experts,
            cmap=CMAP_LIFT,
            vmin=-lim,
            vmax=lim,
            fmt="+.3f",
            cbar_label="positive rows − negative rows",
            annotate=values.size <= 240,
            annot_size=_annot_size((WIDTH_IN - 4.0), len(experts), 6),
        )
        for i in range(1, len(groups)):
            if groups[i] != groups[i - 1]:
                ax.axhline(i, color="#222222", lw=2)
        ax.set_xlabel("expert")
        ax.set_ylabel("gate · label")
        fig.suptitle(
            "Label-conditioned routing: mean weight on positive minus negative rows",
            x=0.01,
            ha="left",
        )
    return fig
