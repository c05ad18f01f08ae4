"""The report's Causal section, built from `result.causal` (a `mmoe_inspect.causal.CausalResult`).

Every part says why when its analysis did not run: no causal result at all (no labels, turned off),
no gates (Shared-Bottom: no ablation, counterfactuals or segments), no sparse task, no baseline
model given, no segment column given.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from mmoe_inspect.causal.counterfactual import COUNTERFACTUAL_COLUMNS
from mmoe_inspect.causal.metrics import describe_intervals
from mmoe_inspect.results import InspectionResult

from .causal_figures import (
    ablation_mode,
    counterfactual_rows,
    importance_rows,
    ranked_segments,
    segment_column,
    too_small_text,
)
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
    "What the experts and gates actually do for each task: the model is run again with one expert removed, "
    "or with a task's gate replaced, and the task metrics on the labelled rows are compared with the intact "
    "model. Intervals are paired on the same rows: by default DeLong's for AUC and normal (CLT) intervals of the "
    "per-row losses for log loss, MSE and MAE; with `--intervals bootstrap` a paired bootstrap of the rows (the "
    "'intervals' line below says which)."
)
TOP_SEGMENT_ROWS = 10  # per gate, in the segment table (the CSV has them all)

CAUSAL_TABLE_HOWTO: dict[str, tuple[str, str]] = {
    "causal_task_metrics": (
        "Task metrics of the intact model (table)",
        "The reference every change below is measured against: each task's AUC and log loss (binary tasks) or "
        "MSE and MAE (regression) on the labelled rows, with its interval (lo to hi). A wide interval "
        "means few labelled rows or few positives: treat small changes with care.",
    ),
    "causal_importance": (
        "Expert importance (table)",
        "One row per task and expert: the task's metric with the expert (intact), without it (ablated), and "
        "the importance = how much worse the task gets without it (positive = the expert matters for the "
        "task, negative = the task does better without it), with its own 95% interval lo to hi. 'significant' is "
        "yes when the effect stays beyond noise after adjusting for the table's many cells (Holm over every "
        "expert, task and metric of one mode: the CSV has p_value and p_adjusted), and never on too few "
        "labelled rows of a class; otherwise the effect cannot be told apart from noise on these rows.",
    ),
    "causal_counterfactuals": (
        "Gate counterfactuals (table)",
        "One row per task and replacement gate: another task's gate (does the task need its own gate?), a "
        "uniform gate (does routing matter at all?), or the task's mean gate, the same weights for every row "
        "(does per-row routing matter?). 'change' is the metric with the replacement minus the intact "
        "metric; 'worse' says whether that change hurts the task.",
    ),
    "causal_sparse_gains": (
        "Sparse-target gains (table)",
        "For each sparse task (few positives, e.g. purchases): 'shared dependence' is the share of its expert "
        "importance that sits on experts the dense tasks use (near 1 = the sparse task lives off what the "
        "dense tasks learned, the usual argument for multi-task training); the change columns say what happens "
        "to its AUC under a uniform gate, its mean gate, or the dense task's gate. Only significant "
        "importances count (above 0 after the ablation table's Holm adjustment): without one, 'top expert' and 'shared dependence' are "
        "empty and the note says why.",
    ),
    "causal_baseline_gains": (
        "MTL gain against baselines (table)",
        "The PLE paper's multi-task gain: the model's metric minus the baseline's on the same rows (sign "
        "flipped for losses, so positive always means the multi-task model is better), with a paired interval. "
        "A gain whose interval excludes zero (significant = yes) is a real improvement over the baseline; on "
        "fewer than 10 labelled rows of a class no difference is called significant (too_few_labels in the CSV); "
        "sparse tasks are where multi-task training is expected to help most.",
    ),
    "causal_segments": (
        "Segment routing (table)",
        "The average gate per value of the chosen data column (a segment), for the segments farthest from the "
        "gate's overall average (JSD: 0 = routed like everyone else). Segments that route very differently "
        "show what the gate keys on; if every segment routes alike, the gate ignores that column.",
    ),
}


def causal_tables_shown(result: InspectionResult) -> set[str]:
    """Names of the causal tables the page shows (for the reading guide)."""
    c = result.causal
    if c is None:
        return set()
    shown = set()
    if not c.task_metrics.empty:
        shown.add("causal_task_metrics")
    if not importance_rows(result).empty:
        shown.add("causal_importance")
    if not counterfactual_rows(result).empty:
        shown.add("causal_counterfactuals")
    if not c.sparse_gains.empty:
        shown.add("causal_sparse_gains")
    if not c.baseline_gains.empty:
        shown.add("causal_baseline_gains")
    if not c.segments.empty:
        shown.add("causal_segments")
    return shown


def _csv(name: str, csv_names: set[str]) -> str | None:
    return f"tables/{name}.csv" if name in csv_names else None


def _columns(frame: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    return frame[[c for c in cols if c in frame.columns]]


def _figure(name: str, figures: Mapping[str, str]) -> list[FigureItem]:
    return [FigureItem(name, figures[name], FIGURES[name].title)] if name in figures else []


def baseline_names(result: InspectionResult) -> list[str]:
    """Baselines that ran: prefixes of the prediction columns other than `row`, `label:` and `model:`."""
    c = result.causal
    if c is None:
        return []
    names = [str(col).split(":", 1)[0] for col in c.predictions.columns if ":" in str(col)]
    return [n for n in dict.fromkeys(names) if n not in ("label", "model")]


def causal_section(result: InspectionResult, figures: Mapping[str, str], csv_names: set[str]) -> Section:
    c = result.causal
    if c is None:
        reason = result.skip_reason("causal") or (
            "they were not requested (`inspect(..., causal=True)`; `mmoe-inspect report` runs them when the "
            "data has label columns)"
        )
        return Section("causal", "Causal", (Notice(f"No causal analyses: {reason}.", "info"),), INTRO)
    gated = c.topology.has_gates
    meta = c.meta
    pairs = [("labelled rows", f"{int(c.n_rows):,}")]
    pairs.append(("intervals", describe_intervals(meta.get("intervals"), meta.get("n_boot"))))
    if meta.get("ci") is not None:
        pairs.append(("interval level", f"{float(meta['ci']) * 100:g}%"))
    items: list[Item] = [KeyValues(tuple(pairs))]
    if not c.task_metrics.empty:
        items.append(
            _tm_table(c.task_metrics, csv_names),
        )

    # ---- ablation
    items.append(Subheading("Expert ablation", "causal-ablation"))
    imp = importance_rows(result)
    if imp.empty:
        why = c.topology.why_no_gates if not gated else "see the notes"
        items.append(Notice(f"No expert ablation: {why}.", "info"))
    else:
        items += _figure("causal_importance", figures)
        mode = ablation_mode(c.ablation)
        items.append(
            table_item(
                "causal_importance",
                _columns(
                    imp,
                    [
                        "task",
                        "expert",
                        "owner",
                        "level",
                        "metric",
                        "intact",
                        "ablated",
                        "importance",
                        "lo",
                        "hi",
                        "significant",
                    ],
                ),
                title="Importance per task and expert",
                description=f"Mode '{mode}': the expert's weight is removed from every gate that mixes it"
                + (" and the other weights are rescaled to sum to 1." if mode == "renormalize" else ".")
                + " Each task on its primary metric; every mode and metric is in the CSV.",
                csv=_csv("causal_ablation", csv_names),
                howto=True,
            )
        )

    # ---- counterfactuals
    items.append(Subheading("Gate counterfactuals", "causal-counterfactuals"))
    cf = counterfactual_rows(result)
    if cf.empty:
        why = c.topology.why_no_gates if not gated else "see the notes"
        items.append(Notice(f"No gate counterfactuals: {why}.", "info"))
    else:
        items += _figure("causal_counterfactuals", figures)
        items.append(
            table_item(
                "causal_counterfactuals",
                _columns(cf, COUNTERFACTUAL_COLUMNS),
                title="Change per task and replacement gate",
                description="Each task on its primary metric; every metric is in the CSV.",
                csv=_csv("causal_counterfactuals", csv_names),
                howto=True,
            )
        )

    # ---- sparse-target gains
    items.append(Subheading("Sparse-target gains", "causal-sparse"))
    if c.sparse_gains.empty:
        threshold = meta.get("sparse_threshold")
        below = f" below {float(threshold):g}" if threshold is not None else ""
        items.append(
            Notice(f"No sparse task: no binary task has a positive rate{below} on the labelled rows.", "info")
        )
    else:
        items.append(
            table_item(
                "causal_sparse_gains",
                sparse_view(c.sparse_gains),
                title="Per sparse task",
                description="Changes are in AUC (counterfactual minus intact) with their interval [lo, hi]; "
                "the CSV has every column.",
                csv=_csv("causal_sparse_gains", csv_names),
                howto=True,
            )
        )

    # ---- baselines
    items.append(Subheading("MTL gain against baselines", "causal-baselines"))
    if c.baseline_gains.empty:
        names = baseline_names(result)
        if names:
            text = (
                f"No MTL gain: {'the baseline' if len(names) == 1 else 'the baselines'} {', '.join(names)} "
                f"{'predicts' if len(names) == 1 else 'predict'} none of the labelled tasks "
                "(tasks are matched by name)."
            )
        elif (
            not gated and not c.topology.unresolved
        ):  # the model is a Shared-Bottom: no point comparing to one
            text = (
                "No baseline model was given, so there is no MTL gain: compare against a single-task model "
                "trained on the same data with --baseline NAME=PATH (Python: causal={'baselines': {name: model}})."
            )
        else:
            text = (
                "No baseline model was given, so there is no MTL gain: compare against a single-task model or "
                "a Shared-Bottom trained on the same data with --baseline NAME=PATH "
                "(Python: causal={'baselines': {name: model}})."
            )
        items.append(Notice(text, "info"))
    else:
        items.append(
            table_item(
                "causal_baseline_gains",
                _columns(
                    c.baseline_gains,
                    [
                        "task",
                        "baseline",
                        "metric",
                        "model",
                        "baseline_value",
                        "gain",
                        "lo",
                        "hi",
                        "significant",
                        "sparse",
                        "positive_rate",
                        "n_labelled",
                    ],
                ),
                title="Gain per task, baseline and metric",
                description="gain = model − baseline (baseline − model for losses): positive = the multi-task "
                "model is better.",
                csv=_csv("causal_baseline_gains", csv_names),
                howto=True,
            )
        )

    # ---- segments
    items.append(Subheading("Segment routing", "causal-segments"))
    if c.segments.empty:
        if not gated:
            text = f"No segment routing: {c.topology.why_no_gates}."
        else:
            text = (
                "No segment routing: no segment column was given (--segment-by COLUMN, e.g. a device or "
                "category column; Python: causal={'segment_by': 'column'})."
            )
        items.append(Notice(text, "info"))
    else:
        items += _figure("causal_segments", figures)
        top = ranked_segments(c.segments, TOP_SEGMENT_ROWS)
        top = top.assign(
            difference=[too_small_text(r) or "beyond noise" for r in top.to_dict(orient="records")]
        )
        judged = (top["difference"] == "beyond noise").any()
        lead = (
            f"Per gate, up to {TOP_SEGMENT_ROWS} segments farthest from its overall mean gate (JSD, nats), among "
            "those whose difference is beyond sampling noise for their size; segments not judged follow, largest "
            "first, marked (within noise, or too few rows: a random subset that small sits this far from the mean "
            "by chance). "
            if judged
            else "No segment routes differently beyond the sampling noise for its size: the rows are each gate's "
            "largest segments (by rows), each marked with why it is not judged (within noise, or too few rows). "
        )
        items.append(
            table_item(
                "causal_segments",
                _columns(
                    top, ["gate", "segment", "rows", "share", "jsd", "difference", "top_expert", "top_weight"]
                ),
                title=f"Segments of {segment_column(result)} that route most differently",
                description=lead + "The CSV has every segment with its mean weight on each expert.",
                csv=_csv("causal_segments", csv_names),
                howto=True,
            )
        )
    if c.notes:
        items.append(BulletList("Notes from the causal analyses", tuple(c.notes)))
    return Section("causal", "Causal", tuple(items), INTRO)


def ci_text(value: object, lo: object, hi: object) -> str:
    """`-0.002 [-0.060, 0.057]` (each number formatted like every table cell)."""
    if value is None or (isinstance(value, float) and value != value):
        return "—"
    return f"{fmt_value(value)} [{fmt_value(lo)}, {fmt_value(hi)}]"


def sparse_view(frame: pd.DataFrame) -> pd.DataFrame:
    """The sparse-gains table with each change and its interval in one cell."""
    rows = []
    for r in frame.to_dict(orient="records"):
        rows.append(
            {
                "task": r["task"],
                "positive_rate": r["positive_rate"],
                "auc": r["auc"],
                "shared_dependence": r["shared_dependence"],
                "dense_experts": r["dense_experts"],
                "top_expert": r.get("top_expert"),
                "top_importance": ci_text(r.get("top_importance"), r.get("top_lo"), r.get("top_hi")),
                "uniform gate": ci_text(r["uniform_change"], r["uniform_lo"], r["uniform_hi"]),
                "mean gate": ci_text(r["mean_gate_change"], r["mean_gate_lo"], r["mean_gate_hi"]),
                "dense task's gate": (
                    f"{r['swap_source']}: {ci_text(r['swap_change'], r['swap_lo'], r['swap_hi'])}"
                    if r.get("swap_source")
                    else "—"
                ),
                "note": r["note"] if isinstance(r.get("note"), str) else "",
            }
        )
    return pd.DataFrame(rows)


def _tm_table(frame: pd.DataFrame, csv_names: set[str]) -> TableItem:
    return table_item(
        "causal_task_metrics",
        _columns(
            frame, ["task", "kind", "metric", "value", "lo", "hi", "n_labelled", "positive_rate", "sparse"]
        ),
        title="Task metrics of the intact model",
        description="",
        csv=_csv("causal_task_metrics", csv_names),
        howto=True,
    )
