"""Figures of the causal section, drawn from `result.causal` (a `mmoe_inspect.causal.CausalResult`).

Each returns None when its analysis did not run (no causal result, no gates, no segment column), so
the report shows a notice instead. Built without pyplot, inside `plot_context()`, like `routing_figures.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from mmoe_inspect.analysis.review import fmt_signed
from mmoe_inspect.causal.segments import MIN_SEGMENT_ROWS, SEGMENT_COLUMNS
from mmoe_inspect.results import InspectionResult

from ._draw import _annot_size, _heatmap, _short
from ._style import CMAP_LIFT, SHARED_COLOR, WIDTH_IN, new_figure, plot_context, task_colors

PRIMARY_METRIC = {"binary": "auc", "regression": "mse"}
METRIC_NAMES = {"auc": "AUC", "logloss": "log loss", "mse": "MSE", "mae": "MAE"}
HIGHER_IS_BETTER = {"auc": True, "logloss": False, "mse": False, "mae": False}
ABLATION_MODE = "renormalize"  # the report's importance heatmap; the CSV holds every mode
MAX_SEGMENT_GATES = 4  # panels of the segment figure (the table keeps every gate)
TOP_SEGMENTS = 8  # segments per gate drawn (those farthest from the gate's overall mean)
NS_TEXT = "n.s."  # marks an interval that includes zero


# ----------------------------------------------------------------------------- selections
def task_kinds(result: InspectionResult) -> dict[str, str]:
    topo = result.causal.topology if result.causal is not None else result.topology
    return {t.name: t.kind for t in topo.tasks}


def ablation_mode(ablation: pd.DataFrame) -> str | None:
    """The mode the report shows: renormalize when it ran, else the first mode in the table."""
    if ablation.empty:
        return None
    modes = list(dict.fromkeys(ablation["mode"]))
    return ABLATION_MODE if ABLATION_MODE in modes else modes[0]


def importance_rows(result: InspectionResult) -> pd.DataFrame:
    """Ablation rows the report shows: one mode, each task's primary metric (AUC / MSE), table order."""
    c = result.causal
    if c is None or c.ablation.empty:
        return pd.DataFrame()
    mode = ablation_mode(c.ablation)
    kinds = task_kinds(result)
    abl = c.ablation[c.ablation["mode"] == mode]
    keep = abl["metric"] == abl["task"].map(lambda t: PRIMARY_METRIC.get(kinds.get(t, "binary"), "auc"))
    order = {t: i for i, t in enumerate(kinds)}
    rows = abl[keep]
    return (
        rows.assign(_o=rows["task"].map(order))
        .sort_values("_o", kind="stable")
        .drop(columns="_o")
        .reset_index(drop=True)
    )


def counterfactual_rows(result: InspectionResult) -> pd.DataFrame:
    """Counterfactual rows on each task's primary metric, grouped by task in topology order."""
    c = result.causal
    if c is None or c.counterfactuals.empty:
        return pd.DataFrame()
    kinds = task_kinds(result)
    cf = c.counterfactuals
    cf = cf[cf["metric"] == cf["task"].map(lambda t: PRIMARY_METRIC.get(kinds.get(t, "binary"), "auc"))]
    order = {t: i for i, t in enumerate(kinds)}
    return (
        cf.assign(_o=cf["task"].map(order)).sort_values("_o", kind="stable").drop(columns="_o")
    ).reset_index(drop=True)


def counterfactual_label(row: pd.Series, ambiguous: bool, shared: frozenset[str] = frozenset()) -> str:
    """'click's gate', 'uniform gate', 'mean gate'; when a task has the same replacement for its own and
    for a shared gate (PLE, OMoE), which of them is meant."""
    name = str(row["counterfactual"])
    if name.startswith("gate_of:"):
        label = f"{name[len('gate_of:') :]}'s gate"
    elif name == "uniform":
        label = "uniform gate"
    elif name == "mean_gate":
        label = "mean gate"
    else:
        label = name.replace("_", " ")
    if not ambiguous:
        return label
    gates = [g.strip() for g in str(row["gates"]).split(",")]
    if set(gates) <= shared:
        return f"{label} for shared {_short(', '.join(gates), 24)}"
    return f"{label} for its own gate" + ("s" if len(gates) > 1 else "")


def segment_column(result: InspectionResult) -> str:
    c = result.causal
    col = c.meta.get("segment_by") if c is not None else None
    return str(col) if col else "segment"


def judged(segments: pd.DataFrame) -> pd.Series:
    """Per segment row: False when its routing difference is within sampling noise (`beyond_noise`
    False); a row without the test (a table from an older run, a missing value) counts as judged."""
    if "beyond_noise" not in segments:
        return pd.Series(True, index=segments.index)
    return segments["beyond_noise"].map(lambda v: True if pd.isna(v) else bool(v)).astype(bool)


def ranked_segments(segments: pd.DataFrame, n: int) -> pd.DataFrame:
    """Per gate (in table order), up to `n` segments: those beyond noise by JSD (largest first), then
    the ones too small to judge, by rows (largest first), only to fill the rest: never above a judged one."""
    order = {g: i for i, g in enumerate(dict.fromkeys(segments["gate"]))}
    ok = judged(segments)
    frame = segments.assign(
        _o=segments["gate"].map(order),
        _j=ok,
        _k=np.where(ok, segments["jsd"].astype(float), segments["rows"].astype(float)),
    )
    frame = frame.sort_values(["_o", "_j", "_k"], ascending=[True, False, False], kind="stable")
    return frame.groupby("gate", sort=False, group_keys=False).head(n).drop(columns=["_o", "_j", "_k"])


def too_small_text(row: Mapping[str, Any]) -> str:
    """Why a segment is not judged: `too few rows to judge (3 < 30)` below `MIN_SEGMENT_ROWS`, else
    `within noise for 37 rows (a difference this small needs 579)`; "" for a segment beyond noise (or
    from a table without the test)."""
    flag = row.get("beyond_noise")
    if flag is None or pd.isna(flag) or bool(flag):
        return ""
    rows = int(row["rows"])
    if rows < MIN_SEGMENT_ROWS:
        return f"too few rows to judge ({rows:,} < {MIN_SEGMENT_ROWS})"
    need = row.get("min_rows")
    if need is None or pd.isna(need):
        return f"within noise for {rows:,} rows"
    return f"within noise for {rows:,} rows (a difference this small needs {int(need):,})"


# ----------------------------------------------------------------------------- figures
def _ns_hatch(ax: Axes, i: int, j: int) -> None:
    ax.add_patch(Rectangle((j, i), 1, 1, fill=False, hatch="///", edgecolor="#9a9a9a", linewidth=0, zorder=3))


def causal_importance(result: InspectionResult) -> Figure | None:
    """Task × expert ablation importance (primary metric), hatched and marked "n.s." where not significant
    (the table's `significant`: Holm-adjusted across its cells, never on too few rows)."""
    rows = importance_rows(result)
    if rows.empty:
        return None
    tasks = list(dict.fromkeys(rows["task"]))
    experts = list(dict.fromkeys(rows["expert"]))
    shape = (len(tasks), len(experts))
    value, sig = np.full(shape, np.nan), np.zeros(shape, bool)
    metric_of: dict[str, str] = {}
    for r in rows.itertuples(index=False):
        i, j = tasks.index(r.task), experts.index(r.expert)
        value[i, j], sig[i, j] = r.importance, bool(r.significant)  # Holm-adjusted over the table
        metric_of[r.task] = r.metric
    if not np.isfinite(value).any():
        return None
    metrics = set(metric_of.values())
    shared_scale = len(metrics) == 1
    if shared_scale:  # one metric: one color scale, symmetric around 0
        color = value
        lim = float(np.nanmax(np.abs(value))) or 1.0
    else:  # AUC next to MSE: each row on its own scale (the annotations keep the raw values)
        row_max = np.nanmax(np.abs(value), axis=1, keepdims=True)
        color = value / np.where(row_max > 0, row_max, 1.0)
        lim = 1.0
    row_names = [f"{_short(t, 30)} ({METRIC_NAMES.get(metric_of[t], metric_of[t])})" for t in tasks]
    level_of = {e.name: e.level for e in result.causal.topology.experts}
    levels = [level_of.get(e, 0) for e in experts]
    metric = METRIC_NAMES.get(next(iter(metrics)), "metric") if shared_scale else "metric"
    with plot_context():
        fig = new_figure(0.62 * len(tasks) + 2.4)
        ax = fig.subplots()
        _heatmap(
            ax,
            color,
            row_names,
            experts,
            cmap=CMAP_LIFT,
            vmin=-lim,
            vmax=lim,
            cbar_label=f"{metric} lost without the expert" if shared_scale else "importance / row maximum",
            annotate=False,
        )
        size = _annot_size(WIDTH_IN - 3.5, len(experts), 6)
        for i in range(shape[0]):
            for j in range(shape[1]):
                v = value[i, j]
                if not np.isfinite(v):
                    continue
                ns = not sig[i, j]
                strong = abs(color[i, j]) > 0.6 * lim
                text = fmt_signed(v) + (f"\n{NS_TEXT}" if ns else "")
                ax.text(
                    j + 0.5,
                    i + 0.5,
                    text,
                    ha="center",
                    va="center",
                    fontsize=size,
                    color="white" if strong else "#222222",
                    zorder=4,
                )
                if ns:
                    _ns_hatch(ax, i, j)
        for j in range(1, len(levels)):
            if levels[j] != levels[j - 1]:
                ax.axvline(j, color="#222222", lw=2)
        ax.set_xlabel("expert removed from every gate (weights renormalized)")
        ax.set_ylabel("task (metric)")
        fig.legend(
            handles=[
                Patch(facecolor="white", edgecolor="#9a9a9a", hatch="///", label="CI includes 0 (n.s.)")
            ],
            loc="outside lower right",
            frameon=False,
        )
        fig.suptitle(
            "Expert ablation: how much worse each task gets without each expert",
            x=0.01,
            ha="left",
        )
    return fig


def causal_counterfactuals(result: InspectionResult) -> Figure | None:
    """Per task: change of its primary metric when its gate is replaced, with its paired CI as error bar."""
    cf = counterfactual_rows(result)
    if cf.empty:
        return None
    colors = task_colors(list(task_kinds(result)))
    shared = frozenset(g.name for g in result.causal.topology.gates if g.task is None)
    panels = list(dict.fromkeys(cf["metric"]))
    heights = [int((cf["metric"] == m).sum()) for m in panels]
    with plot_context():
        fig = new_figure(0.36 * sum(heights) + 1.3 * len(panels) + 1.0)
        axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
        for ax, metric in zip(axes, panels, strict=True):
            sub = cf[cf["metric"] == metric].reset_index(drop=True)
            counts = sub.groupby(["task", "counterfactual"])["counterfactual"].transform("size")
            labels = [
                f"{_short(str(r['task']), 20)} · {counterfactual_label(r, bool(n > 1), shared)}"
                for (_, r), n in zip(sub.iterrows(), counts, strict=True)
            ]
            y = np.arange(len(sub))
            change = sub["change"].to_numpy(float)
            lo, hi = sub["lo"].to_numpy(float), sub["hi"].to_numpy(float)
            sig = sub["significant"].to_numpy(bool)
            col = [colors.get(str(t), SHARED_COLOR) for t in sub["task"]]
            for yi, v, c, s in zip(y, change, col, sig, strict=True):
                ax.barh(
                    yi,
                    v,
                    0.62,
                    color=to_rgba(c, 0.9 if s else 0.3),
                    edgecolor=c,
                    hatch=None if s else "//",
                    linewidth=0.8,
                    zorder=2,
                )
            err = np.vstack([np.clip(change - lo, 0, None), np.clip(hi - change, 0, None)])
            ax.errorbar(
                change, y, xerr=err, fmt="none", ecolor="#222222", elinewidth=1.3, capsize=3, zorder=3
            )
            ax.axvline(0, color="#333333", lw=1)
            ax.set_yticks(y, labels)
            ax.invert_yaxis()
            tasks = list(sub["task"])
            for k in range(1, len(tasks)):
                if tasks[k] != tasks[k - 1]:
                    ax.axhline(k - 0.5, color="#bbbbbb", lw=1)
            span = float(np.nanmax(np.abs(np.r_[lo, hi, change, 1e-6])))
            ax.set_xlim(-span * 1.35, span * 1.35)
            for yi, v, top, bottom in zip(y, change, hi, lo, strict=True):
                x = max(v, top) if v >= 0 else min(v, bottom)
                ax.text(
                    x + (0.03 if v >= 0 else -0.03) * span,
                    yi,
                    fmt_signed(v),
                    va="center",
                    ha="left" if v >= 0 else "right",
                    fontsize=9.5,
                )
            name = METRIC_NAMES.get(metric, metric)
            better = "right" if HIGHER_IS_BETTER.get(metric, True) else "left"
            ax.set_xlabel(f"change in {name} vs the intact model (better to the {better}; bar: 95% CI)")
            ax.grid(axis="y", visible=False)
        fig.legend(
            handles=[
                Patch(facecolor="#777777", label="CI excludes 0"),
                Patch(facecolor="#777777", alpha=0.35, hatch="//", label="CI includes 0 (n.s.)"),
            ],
            loc="outside lower center",
            ncols=2,
            frameon=False,
        )
        fig.suptitle(
            "Gate counterfactuals: each task with another gate in place of its own", x=0.01, ha="left"
        )
    return fig


def _segment_gates(result: InspectionResult, seg: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(seg["gate"]))
    topo = result.causal.topology if result.causal is not None else result.topology
    top = max(topo.levels) if topo.gates else 0
    final = [g.name for g in topo.gates if g.level == top and g.name in present]
    return (final or present)[:MAX_SEGMENT_GATES]


def causal_segments(result: InspectionResult) -> Figure | None:
    """Per final-level gate: mean weight per segment minus the gate's overall mean (largest JSD first)."""
    c = result.causal
    if c is None or c.segments.empty:
        return None
    seg = c.segments
    gates = _segment_gates(result, seg)
    topo = c.topology
    known = {g.name: g for g in topo.gates}
    panels = []
    for name in gates:
        sub = seg[seg["gate"] == name]
        experts = (
            list(known[name].experts)
            if name in known
            else [c for c in seg.columns if c not in SEGMENT_COLUMNS]
        )
        experts = [e for e in experts if e in sub.columns]
        w = sub[experts].to_numpy(float)
        share = sub["share"].to_numpy(float)
        overall = (w * share[:, None]).sum(0) / max(share.sum(), 1e-12)
        top = ranked_segments(sub, TOP_SEGMENTS)
        diff = top[experts].to_numpy(float) - overall[None, :]
        small = ~judged(top).to_numpy()
        diff[small] = np.nan  # too few rows: its difference is noise, drawn as a grey row, not a color
        labels = [
            f"{_short(str(s), 18)} ({sh:.0%} rows)" + (" · within noise" if tiny else "")
            for s, sh, tiny in zip(top["segment"], top["share"], small, strict=True)
        ]
        panels.append((name, experts, diff, labels))
    finite = [np.abs(p[2][np.isfinite(p[2])]) for p in panels]
    lim = max(max((float(f.max()) for f in finite if f.size), default=0.0), 0.02)
    heights = [len(p[3]) for p in panels]
    with plot_context():
        fig = new_figure(0.42 * sum(heights) + 1.1 * len(panels) + 1.2)
        axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
        for ax, (name, experts, diff, labels) in zip(axes, panels, strict=True):
            _heatmap(
                ax,
                diff,
                labels,
                experts,
                cmap=CMAP_LIFT,
                vmin=-lim,
                vmax=lim,
                fmt="+.3f",
                cbar_label="segment − overall",
                annotate=diff.size <= 200,
                annot_size=_annot_size(WIDTH_IN - 4.0, len(experts), 6),
            )
            g = known.get(name)
            who = g.task if g is not None and g.task is not None else "shared"
            title = f"gate {_short(name, 30)}" + ("" if who == name else f" (serves {who})")
            ax.set_title(title, loc="left")
            ax.set_ylabel(segment_column(result))
        axes[-1].set_xlabel("expert")
        if any(np.isnan(p[2]).all(axis=1).any() for p in panels):
            fig.legend(
                handles=[
                    Patch(
                        facecolor="#f0f0f0", label="within sampling noise for the segment's size: not judged"
                    )
                ],
                loc="outside lower center",
                frameon=False,
            )
        fig.suptitle(
            f"Segment routing by {segment_column(result)}: mean gate weight per segment minus the overall mean",
            x=0.01,
            ha="left",
        )
    return fig
