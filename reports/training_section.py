"""The report's Training section, built from `result.training` (a `GateMonitor` run log, see
`mmoe_inspect.monitor`): gate health over the training steps and the step at which each finding first
appeared. Without a run log it says how to get one.
"""

from __future__ import annotations

from collections.abc import Mapping

from mmoe_inspect.analysis.timeline import TIMELINE_COLUMNS
from mmoe_inspect.results import InspectionResult

from .figures import TRAINING_FIGURES
from .items import FigureItem, Item, KeyValues, Notice, Paragraph, Section, fmt_value, table_item
from .training_figures import log_gates, run_log, timeline

INTRO = (
    "How the gates behaved while the model trained, from the run log a GateMonitor wrote: each point is one "
    "window of training steps. Dotted vertical lines mark the step at which a finding first appeared (the step is "
    "written above the plot, the findings are named in the legend)."
)
NO_RUN_LOG = "No training run log: pass --run RUN_LOG (or demo --monitor)."

TRAINING_TABLE_HOWTO: dict[str, tuple[str, str]] = {
    "training_timeline": (
        "When each finding appeared (table)",
        "One row per finding seen during training: the step count at the end of the first window that showed "
        "it (first step) and its epoch, the last window that still showed it (last step) and in how many "
        "windows it was seen. A critical finding whose last step is the end of the run never recovered; one "
        "that stops early was transient. Read the first step against the learning-rate schedule and the loss: "
        "a collapse right after a learning-rate increase or warm-up end points at the step size.",
    ),
}


def training_tables_shown(result: InspectionResult) -> set[str]:
    """Names of the training tables the page shows (for the reading guide)."""
    return {"training_timeline"} if not timeline(result).empty else set()


def _figure(name: str, figures: Mapping[str, str]) -> list[FigureItem]:
    return [FigureItem(name, figures[name], TRAINING_FIGURES[name].title)] if name in figures else []


def training_section(result: InspectionResult, figures: Mapping[str, str], csv_names: set[str]) -> Section:
    frame = run_log(result)
    if frame.empty:
        return Section("training", "Training", (Notice(NO_RUN_LOG, "info"),), INTRO)
    gates = log_gates(frame)
    pairs = [
        ("first logged step", fmt_value(int(frame["step"].min()))),
        ("last logged step", fmt_value(int(frame["step"].max()))),
        ("gates", ", ".join(gates)),
    ]
    if "epoch" in frame and frame["epoch"].notna().any():
        pairs.append(("last epoch", fmt_value(int(frame["epoch"].max()))))
    items: list[Item] = [KeyValues(tuple(pairs))]
    if result.meta.get("training_note"):  # gates the model lacks (`mmoe_inspect.monitor.fit_to_model`)
        items.append(
            Notice(f"The run log does not match this model: {result.meta['training_note']}.", "warning")
        )
    for name in ("training_loss", "training_utilization", "training_entropy", "training_divergence"):
        items += _figure(name, figures)
    marks = timeline(result)
    if marks.empty:
        items.append(Paragraph("No finding appeared in any window of the run log."))
    else:
        critical = marks[marks["severity"] == "critical"]
        if not critical.empty:
            first = critical.iloc[0]
            items.append(
                Notice(
                    f"{first['code']} on {first['subject']} from step {fmt_value(int(first['first_step']))}.",
                    "critical",
                )
            )
        csv = "tables/training_run_log.csv" if "training_run_log" in csv_names else None
        items.append(
            table_item(
                "training_timeline",
                marks[["severity", *(c for c in TIMELINE_COLUMNS if c != "severity")]],
                title="When each finding first appeared",
                description="One row per finding, earliest first; the run log (CSV) has every window.",
                csv=csv,
                howto=True,
            )
        )
    return Section("training", "Training", tuple(items), INTRO)
