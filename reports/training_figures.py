"""Figures of the training section, drawn from `result.training` (a `GateMonitor` run log, one row per gate
per window): utilization, entropy, task divergence and loss over the training steps, with the step at which
each finding first appeared marked by a vertical line. Text never sits on the data: a line's step is
written above the plot area and the findings it marks are named in the legend below the panels. Each returns None without a run log (or without
the columns it draws), so the report shows a notice instead.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from mmoe_inspect.results import InspectionResult

from ._draw import MAX_PANELS, _short
from ._style import SHARED_COLOR, grid_shape, new_figure, plot_context, task_colors

SEVERITY_COLORS = {"critical": "#c62828", "warning": "#ef8f00", "info": "#1565c0"}


def run_log(result: InspectionResult) -> pd.DataFrame:
    """The run log sorted by step (empty without one)."""
    frame = result.training
    if frame is None or not isinstance(frame, pd.DataFrame) or frame.empty or "step" not in frame:
        return pd.DataFrame()
    return frame.sort_values("step", kind="stable")


def timeline(result: InspectionResult) -> pd.DataFrame:
    """`collapse_timeline` of the run log (empty without one)."""
    from mmoe_inspect.monitor import collapse_timeline

    frame = run_log(result)
    return collapse_timeline(frame) if not frame.empty else pd.DataFrame()


def log_gates(frame: pd.DataFrame) -> list[str]:
    """Gates of the run log in the order they were logged."""
    return list(dict.fromkeys(str(g) for g in frame["gate"]))


def _gate_title(frame: pd.DataFrame, gate: str) -> str:
    task = frame.loc[frame["gate"] == gate, "task"].iloc[0] if "task" in frame else ""
    return gate if not task or task == gate else f"{gate} ({task})"


def mark_findings(ax: Axes, marks: pd.DataFrame, label: bool = True) -> list[Line2D]:
    """A vertical dotted line at each step where findings first appeared (findings of the same step share
    one line, colored by the most severe), its step written just above the plot area (never over the
    data). Returns legend handles naming each line's findings ("step 20: collapsed_gate (click)"), for a
    legend outside the axes; none when `label` is False."""
    handles: list[Line2D] = []
    if marks.empty:
        return handles
    span = ax.get_xlim()
    last_tag = -np.inf
    for step, group in marks.groupby("first_step", sort=True):
        severity = min(
            group["severity"], key=lambda s: list(SEVERITY_COLORS).index(s) if s in SEVERITY_COLORS else 9
        )
        color = SEVERITY_COLORS.get(str(severity), "#555555")
        ax.axvline(float(step), color=color, ls=":", lw=1.5, zorder=4)
        at = (float(step) - span[0]) / ((span[1] - span[0]) or 1.0)
        if (
            0.0 <= at <= 1.0 and at - last_tag > 0.06
        ):  # tags closer than that would collide: the legend has it
            ax.text(
                at,
                1.01,
                f"{int(step)}",
                transform=ax.transAxes,
                ha="center",
                va="bottom",
                fontsize=8,
                color=color,
            )
            last_tag = at
        if label:
            subjects: dict[str, list[str]] = {}
            for row in group.itertuples(index=False):
                subjects.setdefault(str(row.code), []).append(str(row.subject))
            text = "; ".join(f"{code} ({', '.join(subs)})" for code, subs in subjects.items())
            text = f"step {int(step)}: {text}"
            handles.append(
                Line2D(
                    [], [], color=color, ls=":", lw=1.5, label=text if len(text) <= 70 else text[:69] + "…"
                )
            )
    return handles


def _bottom_legend(fig: Figure, handles: list, ncols: int = 4) -> None:
    """One legend below every panel (outside the plot areas, so it never covers a line); labels unique."""
    unique: dict[str, object] = {}
    for h in handles:
        unique.setdefault(h.get_label(), h)
    if unique:
        fig.legend(
            list(unique.values()),
            list(unique),
            loc="outside lower center",
            ncols=max(1, min(len(unique), ncols)),
            frameon=False,
            fontsize=9,
        )


def _marks_for(marks: pd.DataFrame, gate: str | None) -> pd.DataFrame:
    if marks.empty or gate is None:
        return marks
    return marks[marks["gate"] == gate]


def training_utilization(result: InspectionResult) -> Figure | None:
    """Per gate: the mean weight of each expert (`w_<expert>`) in every window, against the step."""
    frame = run_log(result)
    wcols = [c for c in frame.columns if str(c).startswith("w_")] if not frame.empty else []
    if not wcols:
        return None
    gates = log_gates(frame)[:MAX_PANELS]
    marks = timeline(result)
    nrows, ncols = grid_shape(len(gates))
    palette = [f"C{i % 10}" for i in range(len(wcols))]  # one color per expert in every panel
    with plot_context():
        fig = new_figure(2.9 * nrows + 1.4)
        axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
        handles: list = []
        for ax, gate in zip(axes.flat, gates, strict=False):
            sub = frame[frame["gate"] == gate]
            for c, color in zip(wcols, palette, strict=True):
                if sub[c].notna().any():
                    ax.plot(
                        sub["step"], sub[c], marker="o", ms=2.5, lw=1.4, color=color, label=_short(str(c)[2:])
                    )
            ax.set_ylim(0, 1.02)
            ax.set_title(_short(_gate_title(frame, gate), 30), loc="left", pad=14)
            ax.set_xlabel("training step")
            handles += ax.get_legend_handles_labels()[0]
            handles += mark_findings(ax, _marks_for(marks, gate))
        _bottom_legend(fig, handles, ncols=6)
        for ax in axes.flat[len(gates) :]:
            ax.set_visible(False)
        for ax in axes[:, 0]:
            ax.set_ylabel("mean gate weight")
        fig.suptitle("Expert utilization over training, per gate", x=0.01, ha="left")
    return fig


def training_entropy(result: InspectionResult) -> Figure | None:
    """Effective experts and normalized per-row entropy of every gate, against the step."""
    frame = run_log(result)
    if frame.empty or "effective_experts" not in frame:
        return None
    gates = log_gates(frame)
    colors = task_colors(result.topology.task_names)
    tasks = {g: str(frame.loc[frame["gate"] == g, "task"].iloc[0]) if "task" in frame else "" for g in gates}
    one_gate_per_task = len(set(tasks.values())) == len(gates)  # else colors by task would repeat
    marks = timeline(result)
    with plot_context():
        fig = new_figure(4.2)
        axes = fig.subplots(1, 2)
        for ax, col, label in (
            (axes[0], "effective_experts", "effective experts"),
            (axes[1], "normalized_entropy", "normalized entropy"),
        ):
            if col not in frame:
                ax.set_visible(False)
                continue
            for gate in gates:
                sub = frame[frame["gate"] == gate]
                ax.plot(
                    sub["step"],
                    sub[col],
                    marker="o",
                    ms=2.5,
                    lw=1.4,
                    color=colors.get(tasks[gate], SHARED_COLOR) if one_gate_per_task else None,
                    label=_short(_gate_title(frame, gate), 24),
                )
            if col == "effective_experts" and "n_experts" in frame:
                ax.set_ylim(0, float(np.nanmax(frame["n_experts"])) + 0.3)
            else:
                ax.set_ylim(0, 1.02)
            ax.set_xlabel("training step")
            ax.set_ylabel(label)
        handles = axes[0].get_legend_handles_labels()[0]
        for ax in axes:
            if ax.get_visible():
                handles += mark_findings(ax, marks, label=ax is axes[0])
        _bottom_legend(fig, handles)
        fig.suptitle("Gate entropy over training", x=0.01, ha="left")
    return fig


def divergence_pairs(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """Task-gate pairs with a `tv_<other>` column in the run log, each pair once."""
    pairs: list[tuple[str, str]] = []
    seen: set[frozenset[str]] = set()
    for gate in log_gates(frame):
        sub = frame[frame["gate"] == gate]
        for c in frame.columns:
            if str(c).startswith("tv_") and sub[c].notna().any():
                other = str(c)[3:]
                key = frozenset((gate, other))
                if key not in seen:
                    seen.add(key)
                    pairs.append((gate, other))
    return pairs


def training_divergence(result: InspectionResult) -> Figure | None:
    """Mean per-row total variation between the gates of every pair of tasks, against the step."""
    frame = run_log(result)
    pairs = divergence_pairs(frame) if not frame.empty else []
    if not pairs:
        return None
    marks = timeline(result)
    with plot_context():
        fig = new_figure(3.8)
        ax = fig.subplots()
        for a, b in pairs:
            sub = frame[frame["gate"] == a]
            ax.plot(sub["step"], sub[f"tv_{b}"], marker="o", ms=2.5, lw=1.4, label=_short(f"{a} ~ {b}", 30))
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("training step")
        ax.set_ylabel("total variation per row")
        handles = ax.get_legend_handles_labels()[0] + mark_findings(ax, marks)
        _bottom_legend(fig, handles)
        ax.set_title("Task-to-task routing divergence over training", loc="left", pad=14)
    return fig


def loss_steps(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per logged step with its `loss` (and `lr` when logged): the run log repeats them per gate."""
    if frame.empty or "loss" not in frame or not frame["loss"].notna().any():
        return pd.DataFrame()
    cols = ["step", "loss"] + (["lr"] if "lr" in frame and frame["lr"].notna().any() else [])
    return frame[cols].dropna(subset=["loss"]).drop_duplicates("step").sort_values("step")


def training_loss(result: InspectionResult) -> Figure | None:
    """The training loss logged with each window (and the learning rate when it changes), against the step."""
    steps = loss_steps(run_log(result))
    if steps.empty:
        return None
    marks = timeline(result)
    show_lr = "lr" in steps and steps["lr"].nunique() > 1
    with plot_context():
        fig = new_figure(3.8)
        axes = fig.subplots(1, 2 if show_lr else 1, squeeze=False)[0]
        ax = axes[0]
        ax.plot(
            steps["step"], steps["loss"], marker="o", ms=2.5, lw=1.4, color="#333333", label="training loss"
        )
        ax.set_xlabel("training step")
        ax.set_ylabel("loss (logged at the window's step)")
        ax.set_title("Training loss", loc="left", pad=14)
        handles = ax.get_legend_handles_labels()[0] + mark_findings(ax, marks)
        if show_lr:
            axes[1].plot(steps["step"], steps["lr"], marker="o", ms=2.5, lw=1.4, color="#1565c0")
            axes[1].set_xlabel("training step")
            axes[1].set_ylabel("learning rate")
            axes[1].set_title("Learning rate", loc="left", pad=14)
            mark_findings(axes[1], marks, label=False)
        _bottom_legend(fig, handles)
    return fig
