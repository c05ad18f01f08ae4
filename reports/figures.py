"""Figures of a report: each function takes an `InspectionResult` and returns a `Figure` (or None when
its data is empty). Figures are built directly (no pyplot), inside `plot_context()`.

`FIGURES` is the registry the report uses: name → `FigureSpec` (section, title, reading guide);
`TRAINING_FIGURES` holds the Training section's figures, drawn from a run log.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch

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
    CMAP_SIMILARITY,
    CMAP_WEIGHT,
    SHARED_COLOR,
    WIDTH_IN,
    close,
    grid_shape,
    new_figure,
    plot_context,
    save_png,
    task_colors,
)
from .attribution_figures import attribution_experts, attribution_gate_heatmaps, attribution_gate_vs_task
from .causal_figures import causal_counterfactuals, causal_importance, causal_segments
from .training_figures import training_divergence, training_entropy, training_loss, training_utilization

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
        order = [e for e in _experts_on_level(result, int(level)) if e in set(sub["expert"])]
        hues = [gate_label(result, g) for g in _gates_on_level(result, int(level))]
        hues = [h for h in hues if h in set(sub["gate"])]
        if len(order) * len(hues) <= MAX_VIOLINS:
            panels.append((f"Level {level}" if multi else "", sub, order, hues))
        else:
            for h in hues:
                rows = sub[sub["gate"] == h]
                x = [e for e in order if e in set(rows["expert"])]
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


# ----------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class FigureSpec:
    """One report figure: where it goes, what it is called, how a reviewer should read it."""

    name: str
    section: str
    title: str
    draw: Callable[[InspectionResult], Figure | None]
    howto: str


FIGURES: dict[str, FigureSpec] = {
    s.name: s
    for s in (
        FigureSpec(
            "effective_experts",
            "summary",
            "Effective experts per gate",
            effective_experts,
            "How many experts each gate really uses: exp of the entropy of its average weights. It equals the number "
            "of experts when the gate spreads its weight evenly on average, and 1 when one expert gets everything. "
            "Near 1 means a collapsed gate; close to E is fine only if individual rows still route differently.",
        ),
        FigureSpec(
            "task_expert_heatmap",
            "routing",
            "Mean gate weight per task and expert",
            task_expert_heatmap,
            "Each row is a gate (the task it serves), each column an expert, each cell the average weight that gate "
            "gives that expert. Rows that look alike mean the tasks use the experts alike; a column that is pale in "
            "every row is an expert nobody uses; a row with one dark cell is a gate that relies on one expert. Gray "
            "cells are experts a gate cannot choose (PLE's task-specific experts of other tasks).",
        ),
        FigureSpec(
            "expert_utilization",
            "routing",
            "Expert utilization per gate",
            expert_utilization,
            "The PLE paper's view: per gate, the bar is the average weight of each expert and the black line its "
            "standard deviation across rows. Tall bars with short lines = an expert used the same way for every row; "
            "long lines = the gate switches experts depending on the input (real routing). The dashed line is the "
            "uniform share 1/E.",
        ),
        FigureSpec(
            "weight_distributions",
            "routing",
            "Distribution of per-row gate weights",
            weight_distributions,
            "For a sample of rows, the spread of each expert's weight, one violin per task gate. Thin violins stuck "
            "at 1/E mean a uniform gate; violins piled at 0 and 1 mean a polarized (hard) gate; violins of different "
            "tasks at different heights mean the tasks prefer different experts.",
        ),
        FigureSpec(
            "gate_entropy",
            "routing",
            "Per-row gate entropy",
            gate_entropy,
            "How spread each row's gate is. At the left line ('one expert', entropy 0) a row uses a single expert; "
            "at the right line ('uniform', log E) it averages all experts evenly. A healthy gate sits between the "
            "two; everything at the right is a uniform gate, everything at the left a collapsed or polarized one.",
        ),
        FigureSpec(
            "coactivation",
            "routing",
            "Expert co-activation",
            coactivation,
            "For each gate and pair of experts, the average product of their weights on the same row divided by "
            "what it would be if the gate picked them independently. Red (above 1×) means the two experts are "
            "weighted together, acting as a team; blue (below 1×) means they replace each other (a row uses one or "
            "the other). All near 1× (white) means the gate's weights barely change from row to row. Experts marked "
            "(~0) get under a tenth of the uniform share 1/E from the gate: their ratios divide by almost nothing "
            "and would read as huge, so their rows and columns are gray.",
        ),
        FigureSpec(
            "task_divergence",
            "routing",
            "Task-to-task routing divergence",
            task_divergence,
            "For every pair of tasks whose gates mix the same experts, how different their weights are on the same "
            "row, averaged over rows. 0 (white) means the two tasks route identically: the multi-gate model has "
            "become a one-gate model for them. Total variation is the share of weight that would have to move, "
            "from 0 to 1. With two tasks there is one pair, so the figure is one bar per measure.",
        ),
        FigureSpec(
            "label_routing",
            "routing",
            "Label-conditioned routing",
            label_routing,
            "For each gate of the last level and each binary label, the average weight of every expert on rows "
            "whose label is 1 minus its average on rows whose label is 0. Red cells: the gate leans on that expert "
            "for positives; blue: for negatives; white: routing does not depend on the outcome. A gate whose own "
            "task's row (listed first) is all white routes the same way whatever the label.",
        ),
        FigureSpec(
            "causal_importance",
            "causal",
            "Expert ablation: importance per task and expert",
            causal_importance,
            "Each cell is how much worse a task gets (on its main metric: AUC for binary tasks, MSE for "
            "regression) when one expert is removed from every gate and the remaining weights are rescaled. Red: "
            "the task needs that expert; blue: the task does better without it; near 0: the expert does nothing "
            "for the task. Hatched cells marked n.s. have an interval that includes zero: no measurable "
            "effect on these rows. Experts that matter to one task only are specialized; an expert that matters "
            "to every task is shared.",
        ),
        FigureSpec(
            "causal_counterfactuals",
            "causal",
            "Gate counterfactuals",
            causal_counterfactuals,
            "Each bar is the change of a task's main metric when its own gate is replaced: by another task's gate "
            "(does the task need its own routing?), by a uniform gate (does routing matter at all?), or by its mean "
            "gate, the same weights for every row (does per-row routing matter?). Black lines are 95% intervals; "
            "pale hatched bars have an interval that includes zero. A large drop means the gate does real work.",
        ),
        FigureSpec(
            "causal_segments",
            "causal",
            "Segment routing",
            causal_segments,
            "For the segments of one data column (e.g. device or category) that route most differently, the "
            "average gate weight of each expert in that segment minus the gate's average over all rows. Red: the "
            "segment leans on that expert; blue: it avoids it. A gate that keys on the column shows strong colors; "
            "pale rows mean every segment is routed alike.",
        ),
        FigureSpec(
            "attribution_gates",
            "attribution",
            "Attributions: features behind each gate",
            attribution_gate_heatmaps,
            "One panel per task gate (the first few; the CSV has every gate): each column is an expert, each row "
            "an input feature (the top features over the gates shown, in the same order in every panel), each cell the feature's share of everything that moves "
            "the gate's weight on that expert (Integrated Gradients, mean |attribution| over the sampled rows; a "
            "column sums to 1 over all features). A column dominated by one or two dark cells means the gate "
            "sends rows to that expert based on those features; an evenly pale column means no single feature "
            "decides it. Categorical features are attributed at their embeddings, summed over the embedding "
            "dimensions.",
        ),
        FigureSpec(
            "attribution_gate_vs_task",
            "attribution",
            "Attributions: a gate's top features against its task's",
            attribution_gate_vs_task,
            "Per task gate, its top features by share of the gate's total attribution (solid bars), and the share "
            "the same features have in the attribution of the task's own prediction (hatched bars). Bars of "
            "similar length mean the gate routes on the features the task predicts from; a feature with a long "
            "solid bar and a short hatched one steers routing without driving the prediction directly. The "
            "agreement table gives the rank correlation over all features and the overlap of the top features.",
        ),
        FigureSpec(
            "attribution_experts",
            "attribution",
            "Attributions: features behind each expert",
            attribution_experts,
            "Each column is an expert, each row an input feature (the top features over all experts), each cell "
            "the feature's share of the attribution of the expert's output size (L2 norm). Experts with near "
            "identical columns respond to the same inputs (candidates for redundancy, compare the CKA figure); "
            "an expert whose column differs from the others is specialized on those features.",
        ),
        FigureSpec(
            "expert_similarity",
            "experts",
            "Expert similarity (linear CKA)",
            expert_similarity,
            "How similar the outputs of two experts are on the same rows (linear CKA: 1 = the same function up "
            "to rotation and scale, 0 = unrelated). Bright off-diagonal cells are redundant experts, often caused "
            "by identical initialization; thick lines separate levels.",
        ),
        FigureSpec(
            "task_outputs",
            "tasks",
            "Task outputs",
            task_outputs,
            "Per task, the observed label rate next to the average prediction (they should be close for a "
            "calibrated model), and the ranking quality (AUC: 0.5 = chance, 1 = perfect; exact, the same value as "
            "everywhere in the report) or the mean squared error for regression tasks.",
        ),
    )
}


TRAINING_FIGURES: dict[str, FigureSpec] = {
    s.name: s
    for s in (
        FigureSpec(
            "training_utilization",
            "training",
            "Training: expert utilization over the steps",
            training_utilization,
            "One panel per gate: each line is an expert's mean gate weight in one window of training steps, "
            "plotted at the window's last step. Lines that stay apart and keep moving mean the gate is still "
            "learning to route; one line climbing to 1 while the others fall to 0 is a gate collapsing onto one "
            "expert, and the dotted line marks the step at which the monitor first flagged it.",
        ),
        FigureSpec(
            "training_entropy",
            "training",
            "Training: gate entropy over the steps",
            training_entropy,
            "Left: effective experts (exp of the entropy of the window's mean gate), from the number of experts "
            "(even use) down to 1 (one expert gets everything). Right: the mean per-row entropy divided by log E, "
            "from 1 (every row averages all experts) to 0 (every row picks one expert). A healthy run usually "
            "lowers per-row entropy while keeping several effective experts; both falling together is a collapse.",
        ),
        FigureSpec(
            "training_divergence",
            "training",
            "Training: task divergence over the steps",
            training_divergence,
            "For every pair of task gates over the same experts, the mean per-row total variation between their "
            "weights in each window (0 = the two tasks route identically, 1 = on disjoint experts). A curve that "
            "falls to 0 means the task gates converged to the same routing, and the multi-gate model acts as a "
            "one-gate model from that step on.",
        ),
        FigureSpec(
            "training_loss",
            "training",
            "Training: loss over the steps",
            training_loss,
            "The training loss the loop logged with each window (`mon.step(loss=...)`), and the learning rate "
            "when it changed. Read a finding's dotted line against it: a gate that collapses while the loss "
            "stalls or jumps points at the step size (learning rate) or the input scale, not at the data.",
        ),
    )
}
"""Figures of the Training section, drawn from `result.training` (a GateMonitor run log) only: kept apart
from `FIGURES`, whose figures all draw from the inspection itself."""


def all_figures() -> dict[str, FigureSpec]:
    """Every figure a report may draw: `FIGURES`, then `TRAINING_FIGURES` (read at call time)."""
    return {**FIGURES, **TRAINING_FIGURES}


def render_figures(
    result: InspectionResult, folder: str | Path, progress: Callable[[int, int], None] | None = None
) -> dict[str, str]:
    """Draw every registered figure that has data and save it as `<folder>/<name>.png`; name → file name.

    `progress(done, total)` is called after each registered figure (drawn or skipped for lack of data).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    specs = all_figures()
    for i, (name, spec) in enumerate(specs.items()):
        if progress is not None:
            progress(i, len(specs))
        fig = spec.draw(result)
        if fig is None:
            continue
        try:
            save_png(fig, folder / f"{name}.png")
        finally:
            close(fig)
        written[name] = f"{name}.png"
    if progress is not None:
        progress(len(specs), len(specs))
    return written
