"""The report as a tree of named sections (stable anchors) built from an `InspectionResult`.

Pure data: no HTML here (`html.py` renders each item type through an explicit renderer registry).
Every section is always present: when its inputs are absent (a model without gates, no label
columns, no causal analyses, no baseline) it says so in a notice instead of disappearing.

One module (over ~450 lines) on purpose: one builder per core section over shared item helpers; the
causal, attribution and training sections already live in their own `*_section.py` modules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from mmoe_inspect._plural import plural
from mmoe_inspect.analysis import codes
from mmoe_inspect.analysis.codes import SEVERITY_ORDER
from mmoe_inspect.analysis.review import Review
from mmoe_inspect.analysis.verdict import NMI_DIFFERENT, TV_DIFFERENT
from mmoe_inspect.results import TABLE_DESCRIPTIONS, InspectionResult
from mmoe_inspect.topology.spec import Topology

from .attribution_section import ATTRIBUTION_TABLE_HOWTO, attribution_section, attribution_tables_shown
from .causal_section import CAUSAL_TABLE_HOWTO, causal_section, causal_tables_shown
from .figures import FIGURES, all_figures
from .items import (
    COLLAPSE_ROWS,
    BulletList,
    Card,
    Cell,
    Diagnoses,
    DiagnosisView,
    FigureItem,
    FindingList,
    FindingView,
    Headline,
    HowTo,
    Item,
    KeyValues,
    Notice,
    Paragraph,
    Questions,
    QuestionView,
    Report,
    Section,
    Subheading,
    TableItem,
    Verdict,
    finding_view,
    fmt_value,
    table_item,
)
from .training_section import TRAINING_TABLE_HOWTO, training_section, training_tables_shown

__all__ = [
    "COLLAPSE_ROWS",
    "SECTION_BUILDERS",
    "BulletList",
    "Card",
    "Cell",
    "FigureItem",
    "FindingList",
    "FindingView",
    "Headline",
    "HowTo",
    "Item",
    "KeyValues",
    "Notice",
    "Paragraph",
    "Report",
    "Section",
    "Subheading",
    "TableItem",
    "Verdict",
    "diagnoses_item",
    "finding_view",
    "fmt_value",
    "get_report_structure",
    "headline_cards",
    "questions_item",
    "specialization_context",
    "table_item",
]

MAX_FEATURES_IN_SUMMARY = 12
NO_GATES = (
    "This model has no gates: no module routes rows between experts (a Shared-Bottom or dense multi-task "
    "model), so there is no routing to inspect."
)


def unverified_text(topo: Topology) -> str:
    """Why the routing of this model cannot be judged (unresolved gate-like items or low confidence)."""
    if topo.unresolved:
        what = "; ".join(u.line() for u in topo.unresolved[:3])
        more = f" (and {len(topo.unresolved) - 3} more)" if len(topo.unresolved) > 3 else ""
        return (
            f"Routing not verified: discovery saw {plural(len(topo.unresolved), 'gate-like item')} it could not "
            f"resolve: {what}{more}. This is not a Shared-Bottom verdict: name the gates in a spec file "
            "(`mmoe-inspect topology MODEL --write spec.toml`, fill in the suggested [[gates]]) and pass it "
            "with --spec."
        )
    return (
        f"Routing not verified: discovery's confidence is {topo.confidence:.2f}; confirm the gates in a spec "
        "file (`mmoe-inspect topology MODEL --write spec.toml`) and pass it with --spec."
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
    kw.setdefault("description", TABLE_DESCRIPTIONS.get(name, ""))
    return [table_item(name, frame, csv=csv, **kw)]


def features_of(result: InspectionResult) -> list[str]:
    """The input columns the model read (recorded in `result.meta["features"]` by the CLI), else []."""
    feats = result.meta.get("features") or []
    return [str(f) for f in feats]


def headline_cards(result: InspectionResult) -> list[Card]:
    """The headline numbers (page cards, overview PNG, `mmoe-inspect summary`): label, value, hint."""
    return list(_headline(result).cards)


def questions_item(review: Review) -> Questions:
    return Questions(tuple(QuestionView(a.question, a.answer, a.status, a.evidence) for a in review.answers))


def diagnoses_item(review: Review) -> Diagnoses:
    return Diagnoses(
        tuple(
            DiagnosisView(d.title, d.severity, d.summary, d.impact, d.causes, d.steps, d.findings)
            for d in review.diagnoses
        )
    )


def specialization_context(result: InspectionResult) -> str | None:
    """Why a high task-expert MI / TV is NOT specialisation here (a collapsed gate, a dead or inactive
    top expert), or None when the headline numbers mean what they say. The caller attaches it only to a
    value that is high (`_is_high`): a collapse explains a difference between the tasks, never its absence."""
    gm = result.table("gate_metrics")
    if gm.empty:
        return None
    bad_experts = {f.subject for f in result.findings if f.code in (codes.DEAD_EXPERT, codes.INACTIVE_EXPERT)}
    collapsed = {f.subject for f in result.findings if f.code == codes.COLLAPSED_GATE}
    for r in gm.to_dict(orient="records"):
        if r["gate"] in collapsed:
            tail = " (an inactive/dead expert)" if r["top_expert"] in bad_experts else ""
            return f"high only because gate {r['gate']} collapsed onto {r['top_expert']}{tail}: not specialisation"
    return None


def _is_high(value: object, threshold: float) -> bool:
    """True when a headline MI/TV value is at least the verdict's threshold for "the tasks route
    differently" (`analysis.verdict`): only then can a collapse be what makes it high."""
    try:
        return float(value) >= threshold  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


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
    context = specialization_context(result)
    mi = result.table("mutual_information")
    if not mi.empty and mi["normalized"].notna().any():
        best = mi.loc[mi["normalized"].idxmax()]
        high = _is_high(best["normalized"], NMI_DIFFERENT)
        cards.append(
            Card(
                "normalized task-expert MI",
                f"{best['normalized']:.3f}",
                context if context and high else "0 = tasks share experts alike, 1 = fully split",
            )
        )
    div = result.table("task_divergence")
    if not div.empty and div["tv_per_row"].notna().any():
        low = div.loc[div["tv_per_row"].idxmin()]
        pair = f"{low['task_a']} ~ {low['task_b']}"
        label = "most similar task pair" if len(div) > 1 else "task routing difference"
        hint = f"{pair}: per-row TV, 0 = same routing, 1 = disjoint"
        high = _is_high(low["tv_per_row"], TV_DIFFERENT)
        cards.append(
            Card(label, f"TV {low['tv_per_row']:.3f}", f"{hint}; {context}" if context and high else hint)
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
    review = result.review
    items: list[Item] = [
        questions_item(review),
        diagnoses_item(review),
        KeyValues(
            (
                ("model", result.model_name),
                ("architecture", topo.architecture or "not stated"),
                ("data", result.data_source),
                ("rows", fmt_value(int(result.n_rows))),
                ("tasks", ", ".join(topo.task_names)),
                *_features_pair(result),
            )
        ),
    ]
    if not topo.judgeable:
        items.insert(0, Notice(unverified_text(topo), "critical"))
    elif not topo.has_gates:
        items.append(Notice(NO_GATES + " Task outputs are still reported below.", "info"))
    if result.meta.get("unreliable"):  # the model changed itself during inspection: said before anything
        items.insert(0, Notice(str(result.meta["unreliable"]), "critical"))
    items.append(_headline(result))
    ranked = sorted(result.findings, key=lambda f: SEVERITY_ORDER.get(f.severity, 9))
    items.append(
        FindingList(
            tuple(finding_view(f) for f in ranked),
            title="Every finding (codes and evidence, as in check and metrics.json)",
        )
    )
    items.extend(_figures("summary", figures))
    items.extend(_gate_summary(result))
    return Section("summary", "Summary", tuple(items))


def _features_pair(result: InspectionResult) -> list[tuple[str, str]]:
    feats = features_of(result)
    if not feats:
        return []
    shown = ", ".join(feats[:MAX_FEATURES_IN_SUMMARY])
    if len(feats) > MAX_FEATURES_IN_SUMMARY:
        shown += f", … ({fmt_value(len(feats))} in all)"
    return [("features", shown)]


def routing_section(result: InspectionResult, figures: Mapping[str, str], csv_names: set[str]) -> Section:
    topo = result.topology
    if not topo.has_gates:
        text = (
            NO_GATES if topo.judgeable else unverified_text(topo)
        ) + " No routing figures or tables are drawn."
        items: list[Item] = [Notice(text, "info" if topo.judgeable else "critical")]
    else:
        items = [*_figures("routing", figures)]
        for name in (
            "gate_metrics",
            "utilization",
            "task_divergence",
            "mutual_information",
            "specialization",
            "label_routing",
        ):
            items.extend(_table(result, name, csv_names))
        groups = {(g.level, g.experts) for g in topo.gates if g.task is not None}
        task_gates = [g for g in topo.gates if g.task is not None]
        if result.table("task_divergence").empty and len(task_gates) > 1 and len(groups) == len(task_gates):
            items.append(
                Notice(
                    "No two task gates mix the same experts (as in PLE, where each task also has its own "
                    "experts), so there is no row-by-row task divergence or task-expert mutual information.",
                    "info",
                )
            )
        if result.table("label_routing").empty:
            items.append(
                Notice(
                    "No label-conditioned routing: the data has no binary label column for any task "
                    "(name them with --labels task=column).",
                    "info",
                )
            )
    return Section(
        "routing",
        "Routing",
        tuple(items),
        "How each gate spreads its weight over the experts, and whether tasks route differently.",
    )


def experts_section(result: InspectionResult, figures: Mapping[str, str], csv_names: set[str]) -> Section:
    items: list[Item] = []
    if not result.topology.has_gates and result.topology.judgeable:
        items.append(
            Notice(
                "No experts to compare: without gates the model has no experts in the MoE sense (one shared "
                "bottom feeds every tower).",
                "info",
            )
        )
    items.extend(_table(result, "experts", csv_names))
    shown = _figures("experts", figures)
    items.extend(shown)
    if result.topology.has_gates and not shown:
        items.append(
            Notice(
                "No expert similarity: expert outputs were not recorded (the experts are computed inline, "
                "with no module of their own to hook).",
                "info",
            )
        )
    red = result.table(codes.REDUNDANT_EXPERTS)
    if not red.empty:
        red = red.sort_values("cka", ascending=False, na_position="last")
        csv = "tables/redundant_experts.csv" if codes.REDUNDANT_EXPERTS in csv_names else None
        items.append(
            table_item(
                codes.REDUNDANT_EXPERTS,
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
    feats = features_of(result)
    if feats:
        items.append(KeyValues((("input features", ", ".join(feats)),)))
    if topo.unresolved:
        items.append(Notice(unverified_text(topo), "critical"))
        items.append(
            BulletList(
                "Unresolved (gate-like, not recorded)",
                tuple(
                    f"{u.line()}. Start a spec from: {u.snippet.splitlines()[0]} … (written in full by "
                    "`mmoe-inspect topology MODEL --write spec.toml`)"
                    if u.snippet
                    else u.line()
                    for u in topo.unresolved
                ),
            )
        )
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
        items.append(
            Paragraph(
                "No gates were found."
                if topo.judgeable
                else "No gates were recorded: discovery left gate-like items unresolved (above)."
            )
        )
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
    entries += [
        (spec.title, f"fig-{name}", spec.howto) for name, spec in all_figures().items() if name in figures
    ]
    shown = causal_tables_shown(result)
    entries += [
        (title, f"table-{name}", text) for name, (title, text) in CAUSAL_TABLE_HOWTO.items() if name in shown
    ]
    shown = attribution_tables_shown(result)
    entries += [
        (title, f"table-{name}", text)
        for name, (title, text) in ATTRIBUTION_TABLE_HOWTO.items()
        if name in shown
    ]
    shown = training_tables_shown(result)
    entries += [
        (title, f"table-{name}", text)
        for name, (title, text) in TRAINING_TABLE_HOWTO.items()
        if name in shown
    ]
    return Section(
        "how-to-read",
        "How to read this",
        (HowTo(tuple(entries)),),
        "One paragraph per figure and causal table.",
    )


SECTION_BUILDERS = (
    summary_section,
    routing_section,
    causal_section,
    attribution_section,
    training_section,
    experts_section,
    tasks_section,
    topology_section,
    howto_section,
)


def get_report_structure(
    result: InspectionResult,
    figures: Mapping[str, str] | None = None,
    tables: Sequence[str] = (),
    overview: str | None = None,
) -> Report:
    """Sections of the report for `result`. `figures`: figure name → image path relative to index.html;
    `tables`: names of tables written as `tables/<name>.csv` (linked from the page); `overview`: path of
    the one-page overview PNG (linked at the top)."""
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
        data=shown_source(result.data_source),
        sections=tuple(sections),
        overview=overview,
    )


def shown_source(source: str) -> str:
    """The data source as the page and slide show it: a file's name, never the absolute (often temporary)
    path of the machine that wrote the report; other descriptions ("in-memory DataFrame") unchanged."""
    from pathlib import PurePath

    text = str(source)
    return PurePath(text).name if PurePath(text).is_absolute() and PurePath(text).name else text
