"""Two inspections side by side (before/after retraining, MMoE vs OMoE on the same rows).

`diff_results(a, b)` compares the headline numbers, the gates both have, and the findings (keyed by
code and subject: which appeared in B, which went away, which stayed). `write_diff(a, b, path)`
writes a small report folder atomically: `index.html`, both routing heatmaps as PNG, `diff.json`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mmoe_inspect.analysis.codes import SEVERITY_ORDER
from mmoe_inspect.analysis.findings import Finding
from mmoe_inspect.results import InspectionResult

from ._draw import _heatmap, _short, gate_color, gate_label
from ._style import CMAP_WEIGHT, WIDTH_IN, close, new_figure, plot_context, save_png
from .html import render_html
from .items import (
    Cell,
    FigureItem,
    FindingList,
    Item,
    KeyValues,
    Notice,
    Report,
    Section,
    TableItem,
    Verdict,
    finding_view,
    fmt_value,
)
from .routing_figures import routing_panels
from .write import DIFF_ENTRIES, _version, write_folder, write_marker

DIFF_SCHEMA_VERSION = "1.0"
GATE_METRICS = ("effective_experts", "normalized_entropy", "input_dependence", "max_mean_weight")


@dataclass
class RoutingDiff:
    """What changed from `a` to `b`: headline numbers, per-gate numbers, findings by (code, subject)."""

    a: InspectionResult
    b: InspectionResult
    headline: pd.DataFrame  # metric, a, b, change
    gates: pd.DataFrame  # gate, task, metric, a, b, change (gates present in both)
    appeared: list[Finding]
    gone: list[Finding]
    kept: list[Finding]

    @property
    def only_a(self) -> list[str]:
        return [g for g in self.a.gate_names if g not in set(self.b.gate_names)]

    @property
    def only_b(self) -> list[str]:
        return [g for g in self.b.gate_names if g not in set(self.a.gate_names)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: both results' metrics, the comparison tables, the finding changes."""
        return _plain(
            {
                "schema_version": DIFF_SCHEMA_VERSION,
                "a": self.a.to_metrics(),
                "b": self.b.to_metrics(),
                "headline": self.headline.to_dict(orient="records"),
                "gates": self.gates.to_dict(orient="records"),
                "findings_appeared": [f.to_dict() for f in self.appeared],
                "findings_gone": [f.to_dict() for f in self.gone],
                "findings_kept": [f.to_dict() for f in self.kept],
                "gates_only_in_a": self.only_a,
                "gates_only_in_b": self.only_b,
            }
        )


def _plain(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf → None, numpy scalars → Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, str):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def headline_numbers(result: InspectionResult) -> dict[str, float]:
    """Named numbers compared by `diff` (NaN when a model has none, e.g. no task pairs)."""
    nums: dict[str, float] = {"rows inspected": float(result.n_rows)}
    for sev in ("critical", "warning", "info"):
        nums[f"{sev} findings"] = float(sum(f.severity == sev for f in result.findings))
    gm = result.table("gate_metrics")
    nums["gates"] = float(len(result.topology.gates))
    nums["experts"] = float(len(result.topology.experts))
    if not gm.empty:
        rel = gm["effective_experts"] / gm["n_experts"]
        nums["lowest effective experts / E"] = float(rel.min())
        nums["mean input dependence"] = float(gm["input_dependence"].mean())
    mi = result.table("mutual_information")
    nums["normalized task-expert MI (max)"] = float(mi["normalized"].max()) if not mi.empty else math.nan
    div = result.table("task_divergence")
    nums["per-row TV, most similar task pair"] = float(div["tv_per_row"].min()) if not div.empty else math.nan
    tasks = result.table("tasks")
    for rec in tasks.itertuples(index=False):
        if getattr(rec, "kind", "") == "binary" and "auc" in tasks:
            nums[f"AUC {rec.task}"] = float(rec.auc)
        elif "mse" in tasks:
            nums[f"MSE {rec.task}"] = float(rec.mse)
    return nums


def _key(f: Finding) -> tuple[str, str]:
    return (f.code, f.subject)


def diff_results(a: InspectionResult, b: InspectionResult) -> RoutingDiff:
    """Compare two inspections of (usually) the same rows."""
    ha, hb = headline_numbers(a), headline_numbers(b)
    names = list(dict.fromkeys([*ha, *hb]))
    headline = pd.DataFrame(
        [
            {
                "metric": n,
                "a": ha.get(n, math.nan),
                "b": hb.get(n, math.nan),
                "change": hb.get(n, math.nan) - ha.get(n, math.nan),
            }
            for n in names
        ],
        columns=["metric", "a", "b", "change"],
    )
    rows = []
    ga, gb = a.table("gate_metrics"), b.table("gate_metrics")
    if not ga.empty and not gb.empty:
        ia, ib = ga.set_index("gate"), gb.set_index("gate")
        for gate in [g for g in ia.index if g in ib.index]:
            for m in GATE_METRICS:
                if m in ia.columns and m in ib.columns:
                    va, vb = float(ia.at[gate, m]), float(ib.at[gate, m])
                    rows.append(
                        {
                            "gate": gate,
                            "task": ia.at[gate, "task"],
                            "metric": m,
                            "a": va,
                            "b": vb,
                            "change": vb - va,
                        }
                    )
    gates = pd.DataFrame(rows, columns=["gate", "task", "metric", "a", "b", "change"])
    ka, kb = {_key(f): f for f in a.findings}, {_key(f): f for f in b.findings}

    def ranked(fs: list[Finding]) -> list[Finding]:
        return sorted(fs, key=lambda f: (SEVERITY_ORDER.get(f.severity, 9), f.code, f.subject))

    return RoutingDiff(
        a=a,
        b=b,
        headline=headline,
        gates=gates,
        appeared=ranked([f for k, f in kb.items() if k not in ka]),
        gone=ranked([f for k, f in ka.items() if k not in kb]),
        kept=ranked([f for k, f in kb.items() if k in ka]),
    )


def routing_comparison(a: InspectionResult, b: InspectionResult) -> Figure | None:
    """A's and B's mean gate weights (last level) side by side, on one color scale."""
    panels = [(label, r, (routing_panels(r) or [None])[-1]) for label, r in (("A", a), ("B", b))]
    finite = [float(np.nanmax(p[3])) for *_, p in panels if p is not None and np.isfinite(p[3]).any()]
    if not finite:
        return None
    vmax = max(finite)
    rows = max((len(p[1]) for *_, p in panels if p is not None), default=1)
    widths = [max(len(p[2]), 2) if p is not None else 2 for *_, p in panels]
    with plot_context():
        fig = new_figure(0.6 * rows + 2.2, WIDTH_IN)
        axes = fig.subplots(1, 2, width_ratios=widths)
        for k, (ax, (label, r, panel)) in enumerate(zip(axes, panels, strict=True)):
            ax.set_title(f"{label}: {_short(r.model_name, 40)}", loc="left")
            if panel is None:
                ax.axis("off")
                ax.text(0.5, 0.5, "no gates", ha="center", va="center", fontsize=13, color="#5b6475")
                continue
            level, gates, experts, values = panel
            _heatmap(
                ax,
                values,
                [gate_label(r, g) for g in gates],
                experts,
                cmap=CMAP_WEIGHT,
                vmin=0.0,
                vmax=vmax,
                cbar_label="mean gate weight" if k == 1 else None,
                annotate=values.size <= 100,
            )
            ax.set_xlabel("expert" + (f" (level {level})" if len(routing_panels(r)) > 1 else ""))
        axes[0].set_ylabel("gate (task)")
        fig.suptitle("Mean gate weight per task and expert: A | B (one color scale)", x=0.01, ha="left")
    return fig


def effective_comparison(a: InspectionResult, b: InspectionResult) -> Figure | None:
    """Effective experts per gate for A and B, side by side on one axis range."""
    frames = [(label, r, r.table("gate_metrics")) for label, r in (("A", a), ("B", b))]
    if all(gm.empty for *_, gm in frames):
        return None
    top = max(float(gm["n_experts"].max()) for *_, gm in frames if not gm.empty)
    rows = max(len(gm) for *_, gm in frames)
    with plot_context():
        fig = new_figure(0.45 * rows + 1.8, WIDTH_IN)
        axes = fig.subplots(1, 2)
        for ax, (label, r, gm) in zip(axes, frames, strict=True):
            ax.set_title(f"{label}: {_short(r.model_name, 40)}", loc="left")
            if gm.empty:
                ax.axis("off")
                ax.text(0.5, 0.5, "no gates", ha="center", va="center", fontsize=13, color="#5b6475")
                continue
            specs = {g.name: g for g in r.topology.gates}
            y = np.arange(len(gm))
            colors = [gate_color(r, specs[n]) if n in specs else "#6b6b6b" for n in gm["gate"]]
            ax.barh(y, gm["n_experts"], 0.7, color="none", edgecolor="#999999", ls="--")
            ax.barh(y, gm["effective_experts"], 0.7, color=colors)
            for yi, (eff, n) in enumerate(zip(gm["effective_experts"], gm["n_experts"], strict=True)):
                ax.text(float(n) + 0.08, yi, f"{eff:.2f} of {int(n)}", va="center", fontsize=10)
            labels = [gate_label(r, specs[n]) if n in specs else str(n) for n in gm["gate"]]
            ax.set_yticks(y, [_short(t, 24) for t in labels])
            ax.invert_yaxis()
            ax.set_xlim(0, top * 1.25 + 0.5)
            ax.set_xlabel("effective experts (dashed: experts mixed)")
            ax.grid(axis="y", visible=False)
        fig.suptitle("Effective number of experts per gate: A | B", x=0.01, ha="left")
    return fig


def _save(fig: Figure | None, path: Path) -> bool:
    if fig is None:
        return False
    try:
        save_png(fig, path)
    finally:
        close(fig)
    return True


def _comparison_table(
    name: str, frame: pd.DataFrame, title: str, description: str, first: list[str]
) -> TableItem:
    """A, B and B − A columns; counts (rows, findings, gates, experts) shown as counts."""

    def cell(v: float, count: bool, signed: bool = False) -> Cell:
        if count and not math.isnan(v):
            return Cell(f"{int(v):+,}" if signed and v else f"{int(v):,}", True)
        text = fmt_value(v)
        plus = signed and v > 0 and not text.startswith("<")
        return Cell(f"+{text}" if plus else text, True)

    rows = []
    for rec in frame.to_dict(orient="records"):
        metric = str(rec.get("metric", ""))
        count = metric.endswith(("findings", "rows inspected")) or metric in ("gates", "experts")
        names = [Cell(str(rec[c]).replace("_", " ")) for c in first]
        rows.append((*names, cell(rec["a"], count), cell(rec["b"], count), cell(rec["change"], count, True)))
    return TableItem(
        name=name, title=title, description=description, columns=(*first, "A", "B", "B − A"), rows=tuple(rows)
    )


def diff_structure(d: RoutingDiff, figures: dict[str, str]) -> Report:
    a, b = d.a, d.b
    summary: list[Item] = [
        KeyValues(
            (("A", a.model_name), ("B", b.model_name), ("data A", a.data_source), ("data B", b.data_source))
        ),
        Verdict(a.verdict, a.worst_severity(), "Verdict A"),
        Verdict(b.verdict, b.worst_severity(), "Verdict B"),
    ]
    if a.data_source != b.data_source or a.n_rows != b.n_rows:
        summary.append(Notice("A and B were inspected on different rows: compare with care.", "warning"))
    summary.append(_comparison_table("diff_headline", d.headline, "Headline numbers", "", ["metric"]))
    routing: list[Item] = [
        FigureItem(name, figures[name], title, howto=False)
        for name, title in (("routing", "Mean gate weight: A | B"), ("effective", "Effective experts: A | B"))
        if name in figures
    ]
    if not routing:
        routing.append(Notice("Neither model has gates: no routing to compare.", "info"))
    if not d.gates.empty:
        routing.append(
            _comparison_table(
                "diff_gates",
                d.gates,
                "Gates in both models",
                "Per gate present in both (matched by gate name).",
                ["gate", "task", "metric"],
            )
        )
    for label, names in (("A", d.only_a), ("B", d.only_b)):
        if names:
            routing.append(Notice(f"Gates only in {label}: {', '.join(names)}.", "info"))
    findings: list[Item] = [
        FindingList(
            tuple(finding_view(f) for f in d.appeared),
            empty_text="No finding appeared.",
            title=f"Appeared in B ({fmt_value(len(d.appeared))})",
            anchor="findings-appeared",
        ),
        FindingList(
            tuple(finding_view(f) for f in d.gone),
            empty_text="No finding went away.",
            title=f"Went away ({fmt_value(len(d.gone))})",
            anchor="findings-gone",
        ),
        FindingList(
            tuple(finding_view(f) for f in d.kept),
            empty_text="No finding is in both.",
            title=f"In both ({fmt_value(len(d.kept))})",
            anchor="findings-kept",
        ),
    ]
    return Report(
        title=f"mmoe-inspect diff: {a.model_name} vs {b.model_name}",
        model=f"{a.model_name}  vs  {b.model_name}",
        data=a.data_source if a.data_source == b.data_source else f"{a.data_source} / {b.data_source}",
        sections=(
            Section("summary", "Summary", tuple(summary)),
            Section("routing", "Routing", tuple(routing), "The same figures for A and B."),
            Section("findings", "Findings", tuple(findings), "Findings are matched by code and subject."),
        ),
        subtitle="Two checkpoints side by side on",
        links=(("diff.json", "diff.json"),),
    )


def build_diff(d: RoutingDiff, folder: Path) -> Path:
    """Write the diff files into an existing empty `folder` (`write_diff` wraps this atomically)."""
    figs = folder / "figures"
    figs.mkdir()
    written: dict[str, str] = {}
    for name, draw in (("routing", routing_comparison), ("effective", effective_comparison)):
        if _save(draw(d.a, d.b), figs / f"{name}.png"):
            written[name] = f"figures/{name}.png"
    (folder / "diff.json").write_text(
        json.dumps(d.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    (folder / "index.html").write_text(
        render_html(diff_structure(d, written), version=_version()), encoding="utf-8"
    )
    write_marker(folder, "diff")
    return folder / "index.html"


def write_diff(a: InspectionResult, b: InspectionResult, out_dir: str | Path, *, force: bool = False) -> Path:
    """Write the A-vs-B folder (`index.html`, `figures/`, `diff.json`) atomically; returns `index.html`.

    Same folder rules as `write_report`: a previous report or diff folder is replaced, a non-empty
    foreign folder is refused unless `force=True`.

    Examples::

        >>> write_diff(inspect(before, rows), inspect(after, rows), "out/diff")
    """
    d = diff_results(a, b)
    out = write_folder(out_dir, lambda tmp: build_diff(d, tmp), force=force, entries=DIFF_ENTRIES)
    return out / "index.html"
