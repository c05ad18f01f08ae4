"""The report as a tree of named sections (stable anchors) built from an `InspectionResult`.

Pure data: no HTML here. `html.py` renders each item type through an explicit renderer registry.
Empty sections are left out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mmoe_inspect.analysis.findings import SEVERITY_ORDER, Finding
from mmoe_inspect.results import TABLE_DESCRIPTIONS, InspectionResult

from .figures import FIGURES

COLLAPSE_ROWS = 24  # longer tables render folded (<details>), still complete


# ----------------------------------------------------------------------------- items
@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Notice:
    """A highlighted sentence (severity: critical / warning / info)."""

    text: str
    severity: str = "info"


@dataclass(frozen=True)
class Verdict:
    text: str
    severity: str | None


@dataclass(frozen=True)
class Card:
    label: str
    value: str
    hint: str = ""


@dataclass(frozen=True)
class Headline:
    cards: tuple[Card, ...]


@dataclass(frozen=True)
class FindingView:
    severity: str
    code: str
    title: str
    subject: str
    message: str
    remedy: str
    evidence: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class FindingList:
    findings: tuple[FindingView, ...]
    empty_text: str = "No findings: no gate, expert or task pair crossed a diagnosis threshold."


@dataclass(frozen=True)
class FigureItem:
    name: str
    src: str
    title: str

    @property
    def anchor(self) -> str:
        return f"fig-{self.name}"


@dataclass(frozen=True)
class Cell:
    text: str
    numeric: bool = False


@dataclass(frozen=True)
class TableItem:
    name: str
    title: str
    description: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    csv: str | None = None

    @property
    def anchor(self) -> str:
        return f"table-{self.name}"

    @property
    def collapsed(self) -> bool:
        return len(self.rows) > COLLAPSE_ROWS


@dataclass(frozen=True)
class KeyValues:
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class BulletList:
    title: str
    items: tuple[str, ...]


@dataclass(frozen=True)
class HowTo:
    """Reading guide: (title, link anchor or "", paragraph) per entry."""

    entries: tuple[tuple[str, str, str], ...]


Item = (
    Paragraph
    | Notice
    | Verdict
    | Headline
    | FindingList
    | FigureItem
    | TableItem
    | KeyValues
    | BulletList
    | HowTo
)


@dataclass(frozen=True)
class Section:
    anchor: str
    title: str
    items: tuple[Item, ...]
    intro: str = ""


@dataclass(frozen=True)
class Report:
    """Everything the HTML page shows: page header fields and the ordered sections."""

    title: str
    model: str
    data: str
    sections: tuple[Section, ...] = field(default_factory=tuple)


# ----------------------------------------------------------------------------- formatting
_COUNT_HINTS = ("n_", "rows", "level", "count")


def fmt_value(v: Any, column: str | None = None) -> str:
    """A number or text as a reviewer wants to read it (NaN → "—", counts with separators, 3 decimals)."""
    if v is None or v is pd.NA or v is pd.NaT:
        return "—"
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if isinstance(v, int | np.integer):
        return f"{int(v):,}"
    if isinstance(v, float | np.floating):
        x = float(v)
        if math.isnan(x):
            return "—"
        if math.isinf(x):
            return "∞" if x > 0 else "-∞"
        countish = column is not None and any(h in column for h in _COUNT_HINTS)
        if x.is_integer() and (countish or abs(x) >= 1000):
            return f"{int(x):,}"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        if abs(x) >= 100:
            return f"{x:.1f}"
        if x == 0 or abs(x) >= 0.001:
            return f"{x:.3f}"
        return "<0.001" if x > 0 else ">-0.001"  # exact values are in the CSVs and metrics.json
    if isinstance(v, list | tuple):
        return ", ".join(str(x) for x in v)
    return str(v)


def table_item(
    name: str,
    frame: pd.DataFrame,
    *,
    title: str | None = None,
    description: str | None = None,
    csv: str | None = None,
) -> TableItem:
    """A DataFrame as pre-formatted cells (escaping happens in the template)."""
    cols = [str(c) for c in frame.columns]
    numeric = [
        pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
        for c in frame.columns
    ]
    rows = tuple(
        tuple(Cell(fmt_value(v, col), num) for v, col, num in zip(rec, cols, numeric, strict=True))
        for rec in frame.itertuples(index=False, name=None)
    )
    return TableItem(
        name=name,
        title=title or name.replace("_", " ").capitalize(),
        description=description if description is not None else TABLE_DESCRIPTIONS.get(name, ""),
        columns=tuple(c.replace("_", " ") for c in cols),
        rows=rows,
        csv=csv,
    )


def finding_view(f: Finding) -> FindingView:
    return FindingView(
        severity=f.severity,
        code=f.code,
        title=f.title,
        subject=f.subject,
        message=f.message,
        remedy=f.remedy,
        evidence=tuple((k.replace("_", " "), fmt_value(v, k)) for k, v in f.evidence.items()),
    )


# ----------------------------------------------------------------------------- sections
def _figures(section: str, figures: Mapping[str, str]) -> list[FigureItem]:
    return [
        FigureItem(name, figures[name], spec.title)
        for name, spec in FIGURES.items()
        if spec.section == section and name in figures
    ]


def _table(result: InspectionResult, name: str, csv_names: set[str], **kw: Any) -> list[TableItem]:
    frame = result.table(name)
    if frame.empty:
        return []
    csv = f"tables/{name}.csv" if name in csv_names else None
    return [table_item(name, frame, csv=csv, **kw)]


def _headline(result: InspectionResult) -> Headline:
    topo = result.topology
    counts = {s: sum(f.severity == s for f in result.findings) for s in ("critical", "warning", "info")}
    cards = [
        Card("rows inspected", fmt_value(int(result.n_rows))),
        Card("tasks", str(len(topo.tasks))),
        Card("gates", str(len(topo.gates))),
        Card("experts", str(len(topo.experts))),
    ]
    gm = result.table("gate_metrics")
    if not gm.empty:
        rel = gm["effective_experts"] / gm["n_experts"]
        worst = gm.loc[rel.idxmin()] if rel.notna().any() else None
        if worst is not None:
            cards.append(
                Card(
                    "fewest effective experts",
                    f"{worst['effective_experts']:.2f} of {int(worst['n_experts'])}",
                    f"gate {worst['gate']}",
                )
            )
    mi = result.table("mutual_information")
    if not mi.empty and mi["normalized"].notna().any():
        best = mi.loc[mi["normalized"].idxmax()]
        cards.append(
            Card(
                "normalized task-expert MI",
                f"{best['normalized']:.3f}",
                "0 = tasks share experts alike, 1 = fully split",
            )
        )
    div = result.table("task_divergence")
    if not div.empty and div["tv_per_row"].notna().any():
        low = div.loc[div["tv_per_row"].idxmin()]
        cards.append(
            Card(
                "most similar task pair",
                f"TV {low['tv_per_row']:.3f}",
                f"{low['task_a']} ~ {low['task_b']} (per row)",
            )
        )
    cards.append(
        Card(
            "findings",
            f"{counts['critical']} / {counts['warning']} / {counts['info']}",
            "critical / warning / info",
        )
    )
    return Headline(tuple(cards))


def _gate_summary(result: InspectionResult) -> list[TableItem]:
    gm = result.table("gate_metrics")
    if gm.empty:
        return []
    cols = [
        "gate",
        "task",
        "level",
        "n_experts",
        "effective_experts",
        "normalized_entropy",
        "input_dependence",
        "polarized_share",
        "top_expert",
        "max_mean_weight",
    ]
    frame = gm[[c for c in cols if c in gm]]
    return [
        table_item(
            "gate_summary",
            frame,
            title="Headline numbers per gate",
            description="Effective experts = exp(entropy of the mean gate); normalized entropy = mean per-row entropy "
            "/ log E; input dependence = how much weights change from row to row (0 = constant gate).",
            csv="tables/gate_metrics.csv",
        )
    ]


def summary_section(result: InspectionResult, figures: Mapping[str, str], csv_names: set[str]) -> Section:
    topo = result.topology
    items: list[Item] = [
        Verdict(result.verdict, result.worst_severity()),
        KeyValues(
            (
                ("model", result.model_name),
                ("architecture", topo.architecture or "not stated"),
                ("data", result.data_source),
                ("rows", fmt_value(int(result.n_rows))),
                ("tasks", ", ".join(topo.task_names)),
            )
        ),
    ]
    if not topo.has_gates:
        items.append(
            Notice(
                "This model has no gates: no module routes rows between experts (a Shared-Bottom or dense "
                "multi-task model), so there is no routing to inspect. Task outputs are still reported below.",
                "info",
            )
        )
    items.append(_headline(result))
    ranked = sorted(result.findings, key=lambda f: SEVERITY_ORDER.get(f.severity, 9))
    items.append(FindingList(tuple(finding_view(f) for f in ranked)))
    items.extend(_figures("summary", figures))
    items.extend(_gate_summary(result))
    return Section("summary", "Summary", tuple(items))


def routing_section(result: InspectionResult, figures: Mapping[str, str], csv_names: set[str]) -> Section:
    items: list[Item] = [*_figures("routing", figures)]
    for name in (
        "gate_metrics",
        "utilization",
        "task_divergence",
        "mutual_information",
        "specialization",
        "label_routing",
    ):
        items.extend(_table(result, name, csv_names))
    return Section(
        "routing",
        "Routing",
        tuple(items),
        "How each gate spreads its weight over the experts, and whether tasks route differently.",
    )


def experts_section(result: InspectionResult, figures: Mapping[str, str], csv_names: set[str]) -> Section:
    items: list[Item] = []
    items.extend(_table(result, "experts", csv_names))
    items.extend(_figures("experts", figures))
    red = result.table("redundant_experts")
    if not red.empty:
        red = red.sort_values("cka", ascending=False, na_position="last")
        csv = "tables/redundant_experts.csv" if "redundant_experts" in csv_names else None
        items.append(
            table_item(
                "redundant_experts",
                red,
                title="Expert pairs by similarity",
                description="Expert pairs on the same level, most similar first (linear CKA of their outputs; "
                f"≥ {result.thresholds.redundant_cka:g} is flagged as redundant).",
                csv=csv,
            )
        )
    return Section(
        "experts",
        "Experts",
        tuple(items),
        "What each expert receives and whether experts duplicate each other.",
    )


def tasks_section(result: InspectionResult, figures: Mapping[str, str], csv_names: set[str]) -> Section:
    items: list[Item] = [*_figures("tasks", figures), *_table(result, "tasks", csv_names)]
    return Section(
        "tasks", "Tasks", tuple(items), "What the model predicts for each task on the inspected rows."
    )


def topology_section(result: InspectionResult, figures: Mapping[str, str], csv_names: set[str]) -> Section:
    topo = result.topology
    items: list[Item] = [
        KeyValues(
            (
                ("architecture", topo.architecture or "not stated"),
                ("source", topo.source),
                ("confidence", f"{topo.confidence:.2f}"),
                ("levels", ", ".join(str(lv) for lv in topo.levels) or "—"),
                ("tasks / experts / gates", f"{len(topo.tasks)} / {len(topo.experts)} / {len(topo.gates)}"),
            )
        )
    ]
    if topo.confidence < 0.8:
        items.append(
            Notice(
                f"The topology was {topo.source} with confidence {topo.confidence:.2f}: check the gates and experts "
                "below, and pass a corrected spec file if any is wrong.",
                "warning",
            )
        )
    if topo.notes:
        items.append(BulletList("Notes", tuple(topo.notes)))
    tasks = pd.DataFrame(
        [
            {"task": t.name, "kind": t.kind, "output": t.output, "label column": t.label_column}
            for t in topo.tasks
        ]
    )
    items.append(table_item("topology_tasks", tasks, title="Tasks found", description=""))
    if topo.gates:
        gates = pd.DataFrame(
            [
                {
                    "gate": g.name,
                    "module": g.module,
                    "serves": g.task if g.task is not None else "shared",
                    "level": g.level,
                    "output": g.output,
                    "experts": ", ".join(g.experts),
                }
                for g in topo.gates
            ]
        )
        items.append(table_item("topology_gates", gates, title="Gates found", description=""))
    else:
        items.append(Paragraph("No gates were found."))
    if topo.experts:
        experts = pd.DataFrame(
            [
                {"expert": e.name, "module": e.module or "(inline)", "owner": e.owner, "level": e.level}
                for e in topo.experts
            ]
        )
        items.append(table_item("topology_experts", experts, title="Experts found", description=""))
    return Section(
        "topology", "Topology", tuple(items), "What the inspector took as tasks, experts and gates."
    )


_FINDINGS_HOWTO = (
    "Findings",
    "summary",
    "Each finding names a subject (a gate, an expert or a pair of tasks), the numbers that triggered it and a "
    "remedy. Critical (red) findings mean the routing does not do what the architecture promises; warnings "
    "(amber) deserve a look; info (blue) describes healthy-but-notable behavior. Thresholds are in metrics.json.",
)


def howto_section(result: InspectionResult, figures: Mapping[str, str], csv_names: set[str]) -> Section:
    entries = [_FINDINGS_HOWTO]
    entries += [(spec.title, f"fig-{name}", spec.howto) for name, spec in FIGURES.items() if name in figures]
    return Section("how-to-read", "How to read this", (HowTo(tuple(entries)),), "One paragraph per figure.")


SECTION_BUILDERS = (
    summary_section,
    routing_section,
    experts_section,
    tasks_section,
    topology_section,
    howto_section,
)


def get_report_structure(
    result: InspectionResult, figures: Mapping[str, str] | None = None, tables: Sequence[str] = ()
) -> Report:
    """Sections of the report for `result`. `figures`: figure name → image path relative to index.html;
    `tables`: names of tables written as `tables/<name>.csv` (linked from the page)."""
    figures = dict(figures or {})
    csv_names = set(tables)
    sections = []
    for build in SECTION_BUILDERS:
        section = build(result, figures, csv_names)
        if section.items:
            sections.append(section)
    return Report(
        title=f"mmoe-inspect report: {result.model_name}",
        model=result.model_name,
        data=result.data_source,
        sections=tuple(sections),
    )
