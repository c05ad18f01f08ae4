"""The report's Attributions section, built from `result.attribution` (a
`mmoe_inspect.attribution.AttributionResult`).

Every part says why when it is absent: no attribution result at all (turned off, or the model's
inputs could not be attributed), no gates (Shared-Bottom), targets skipped by the time budget.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from mmoe_inspect.results import InspectionResult

from .attribution_figures import attribution_tables
from .figures import FIGURES
from .items import (
    BulletList,
    FigureItem,
    Item,
    KeyValues,
    Notice,
    Section,
    Subheading,
    TableItem,
    fmt_value,
    table_item,
)

INTRO = (
    "Which input features drive each gate, each expert and each task: Integrated Gradients (Captum) on a "
    "sample of rows, with categorical features attributed at their embeddings. Shares are of the mean "
    "absolute attribution, so they say how much a feature moves the output, not in which direction (the "
    "signed means are in the CSVs)."
)
TOP_ROWS = 5  # features per gate / task in the top-feature tables (the CSVs have every feature)
KIND_NAMES = {"gate": "gates", "expert": "experts", "task": "tasks"}

ATTRIBUTION_TABLE_HOWTO: dict[str, tuple[str, str]] = {
    "attribution_gate_task_agreement": (
        "Gate and task agreement (table)",
        "Per task gate: the Spearman rank correlation between how much each feature drives the gate and how "
        "much it drives the task's prediction (1 = same order, 0 = unrelated, negative = opposite), and the "
        "share of the gate's top features that are also among the task's top features. Low agreement means "
        "the gate routes on different inputs than the task predicts from: not wrong in itself, but worth "
        "knowing when explaining the routing.",
    ),
    "attribution_gate_features": (
        "Top features per gate (table)",
        "For each gate, the features that move its weights most: mean |attribution| summed over its experts, "
        "their share of the gate's total and their rank. A gate whose top two or three features carry most of "
        "the share routes on those features; the per-expert split is in the heatmap above and the CSV.",
    ),
    "attribution_task_features": (
        "Top features per task (table)",
        "For each task, the features its prediction responds to most (share of its mean |attribution|): the "
        "reference against which the gate's features are compared.",
    ),
    "attribution_convergence": (
        "Convergence of the attributions (table)",
        "Integrated Gradients' completeness check, per attributed output: the attributions of a row should sum "
        "to the output's change from the baseline. relative delta = the mean gap divided by the mean "
        "attribution sum; highlighted rows are above the tolerance (flagged = yes), where the attributions "
        "are approximate: raise the number of steps before reading them closely. FeatureAblation rows have "
        "no delta (—).",
    ),
}


def attribution_tables_shown(result: InspectionResult) -> set[str]:
    """Names of the attribution tables the page shows (for the reading guide)."""
    t = attribution_tables(result)
    if not t:
        return set()
    shown = set()
    if not t["gate_task_agreement"].empty:
        shown.add("attribution_gate_task_agreement")
    if not t["gate_features"].empty:
        shown.add("attribution_gate_features")
    if not t["task_attributions"].empty:
        shown.add("attribution_task_features")
    if not t["convergence"].empty:
        shown.add("attribution_convergence")
    return shown


def _csv(name: str, csv_names: set[str]) -> str | None:
    stem = f"attribution_{name}"
    return f"tables/{stem}.csv" if stem in csv_names else None


def _columns(frame: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    return frame[[c for c in cols if c in frame.columns]]


def _figure(name: str, figures: Mapping[str, str]) -> list[FigureItem]:
    return [FigureItem(name, figures[name], FIGURES[name].title)] if name in figures else []


def _grouped(targets: list[str]) -> str:
    """`["gate:click", "gate:buy", "expert:e0"]` → "gates click, buy · experts e0"."""
    groups: dict[str, list[str]] = {}
    for t in targets:
        kind, _, name = t.partition(":")
        groups.setdefault(kind, []).append(name or kind)
    return " · ".join(f"{KIND_NAMES.get(k, k)} {', '.join(v)}" for k, v in groups.items())


def _seconds(value: object) -> str:
    x = float(value)  # type: ignore[arg-type]
    return fmt_value(int(x) if x.is_integer() else x)


def _top(frame: pd.DataFrame, by: str, n: int) -> pd.DataFrame:
    """The `n` features of largest share per `by`, among those with a positive share (a feature whose
    attribution is 0 is not a "top" feature; an all-zero target has none, and the notes say so)."""
    informative = frame[frame["share"].astype(float) > 0]
    return (
        informative.sort_values([by, "share"], ascending=[True, False], kind="stable")
        .groupby(by, sort=False)
        .head(n)
    )


def _reason(result: InspectionResult) -> str:
    return str(
        result.skip_reason("attribution")
        or "they were not requested (run `mmoe-inspect report` with --attributions; Python: "
        "`inspect(..., attribution=True)`)"
    )


def attribution_section(result: InspectionResult, figures: Mapping[str, str], csv_names: set[str]) -> Section:
    a = result.attribution
    if a is None:
        return Section(
            "attributions",
            "Attributions",
            (Notice(f"Attributions were not computed: {_reason(result)}.", "info"),),
            INTRO,
        )
    meta = a.meta
    t = a.tables
    pairs = [("sampled rows", fmt_value(len(a.rows)))]
    if meta.get("method"):
        pairs.append(("method", str(meta["method"]).replace("_", " ")))
    if meta.get("n_steps") is not None and meta.get("method") == "integrated_gradients":
        pairs.append(("integration steps", fmt_value(int(meta["n_steps"]))))
    if meta.get("baseline"):
        pairs.append(("baseline", str(meta["baseline"])))
    pairs.append(("features", fmt_value(len(a.features))))
    if meta.get("seconds") is not None:
        budget = meta.get("budget_seconds")
        took = f"{fmt_value(float(meta['seconds']))} s"
        pairs.append(
            ("time", took + (f" of a {_seconds(budget)} s budget" if budget is not None else " (no budget)"))
        )
    pairs.append(("covered", _grouped(a.covered) or "nothing"))
    if a.skipped:
        pairs.append(("skipped (budget)", _grouped(a.skipped)))
    items: list[Item] = [KeyValues(tuple(pairs))]
    if a.skipped:
        items.append(
            Notice(
                f"The time budget ran out before every output was attributed: {len(a.skipped)} skipped "
                f"({_grouped(a.skipped)}). Raise --attribution-budget or lower --attribution-rows.",
                "warning",
            )
        )
    left_out = int(meta.get("nonfinite_rows") or 0)
    if left_out:
        kept = len(a.rows) - left_out
        tail = (
            f", which describe the other {fmt_value(kept)} rows"
            if kept
            else "; no row is left to describe them"
        )
        items.append(
            Notice(
                f"{fmt_value(left_out)} of {fmt_value(len(a.rows))} sampled rows have NaN/inf attributions for some "
                "output (the model's output or gate is not finite there): they are left out of the tables of "
                f"those outputs{tail}. The notes below name the outputs.",
                "warning",
            )
        )
    if a.flagged:
        items.append(
            Notice(
                f"Large convergence delta for {', '.join(a.flagged)}: those attributions are approximate "
                "(see the highlighted rows of the convergence table).",
                "warning",
            )
        )

    # ---- gates
    items.append(Subheading("Gates", "attribution-gates"))
    if t["gate_attributions"].empty:
        if not result.topology.has_gates:
            why = result.topology.why_no_gates
        elif any(s.startswith("gate:") for s in a.skipped):
            why = "the time budget ran out before the gates were attributed"
        else:
            why = "no gate was attributed (see the notes)"
        items.append(Notice(f"No gate attributions: {why}.", "info"))
    else:
        items += _figure("attribution_gates", figures)
        items += _figure("attribution_gate_vs_task", figures)
        if not t["gate_task_agreement"].empty:
            items.append(
                table_item(
                    "attribution_gate_task_agreement",
                    _columns(
                        t["gate_task_agreement"],
                        ["gate", "task", "rank_correlation", "top_overlap", "gate_top", "task_top"],
                    ),
                    title="Does each gate look at the same features as its task?",
                    description="Spearman correlation of the feature rankings, and the share of the gate's top "
                    "features among the task's top features.",
                    csv=_csv("gate_task_agreement", csv_names),
                    howto=True,
                )
            )
        items.append(
            table_item(
                "attribution_gate_features",
                _columns(
                    _top(t["gate_features"].sort_values("rank", kind="stable"), "gate", TOP_ROWS),
                    ["gate", "task", "rank", "feature", "share", "mean_abs"],
                ),
                title="Top features per gate",
                description=f"The {TOP_ROWS} features that move each gate's weights most; the CSVs have every "
                "feature, and every (gate, expert, feature) with its signed mean.",
                csv=_csv("gate_features", csv_names),
                howto=True,
            )
        )

    # ---- experts
    items.append(Subheading("Experts", "attribution-experts"))
    if t["expert_attributions"].empty:
        if not result.topology.experts:
            why = "the model has no experts"
        elif any(s.startswith("expert:") for s in a.skipped):
            why = "the time budget ran out before the experts were attributed"
        else:
            why = "expert outputs could not be attributed (see the notes)"
        items.append(Notice(f"No expert attributions: {why}.", "info"))
    else:
        items += _figure("attribution_experts", figures)

    # ---- tasks
    items.append(Subheading("Tasks", "attribution-tasks"))
    if t["task_attributions"].empty:
        why = (
            "the time budget ran out before the tasks were attributed"
            if any(s.startswith("task:") for s in a.skipped)
            else "no task prediction was attributed (see the notes)"
        )
        items.append(Notice(f"No task attributions: {why}.", "info"))
    else:
        items.append(
            table_item(
                "attribution_task_features",
                _columns(
                    _top(t["task_attributions"], "task", TOP_ROWS), ["task", "feature", "share", "mean_abs"]
                ),
                title="Top features per task",
                description=f"The {TOP_ROWS} features each task's prediction responds to most.",
                csv=_csv("task_attributions", csv_names),
                howto=True,
            )
        )

    # ---- convergence
    items.append(Subheading("Convergence", "attribution-convergence"))
    conv = t["convergence"]
    if conv.empty:
        items.append(
            Notice("No convergence check: no output was attributed with Integrated Gradients.", "info")
        )
    else:
        items.append(_convergence_table(conv, meta, csv_names))
    if a.notes:
        items.append(BulletList("Notes from the attributions", tuple(a.notes)))
    return Section("attributions", "Attributions", tuple(items), INTRO)


def _convergence_table(conv: pd.DataFrame, meta: Mapping[str, object], csv_names: set[str]) -> TableItem:
    flagged = (
        conv["flagged"].fillna(False).astype(bool)
        if "flagged" in conv
        else pd.Series(False, index=conv.index)
    )
    order = flagged.sort_values(ascending=False, kind="stable").index  # flagged rows first
    frame = conv.loc[order]
    n = int(flagged.sum())
    tol = meta.get("delta_tolerance")
    description = (
        f"{n} of {len(conv)} outputs above the tolerance, highlighted and listed first."
        if n
        else "Every output is within the tolerance."
    )
    if tol is not None:
        description += f" Tolerance on the relative delta: {tol}."
    return table_item(
        "attribution_convergence",
        _columns(
            frame,
            [
                "kind",
                "target",
                "output",
                "method",
                "n_rows",
                "n_steps",
                "relative_delta",
                "delta_mean_abs",
                "delta_max_abs",
                "flagged",
            ],
        ),
        title="Convergence delta per attributed output",
        description=description,
        csv=_csv("convergence", csv_names),
        howto=True,
        marked=list(flagged.loc[order]),
    )
