"""The report's figure registry and the loop that draws it.

`FIGURES` is the registry the report uses: name → `FigureSpec` (section, title, drawing function,
reading guide from `_guides.GUIDES`); `TRAINING_FIGURES` holds the Training section's figures, drawn
from a run log. The drawing functions live by subject: `routing_figures`, `summary_figures` (summary,
experts, tasks), `causal_figures`, `attribution_figures`, `training_figures`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.figure import Figure

from mmoe_inspect.results import InspectionResult

from ._guides import GUIDES
from ._render import Job, render_all
from ._style import DPI
from .attribution_figures import attribution_experts, attribution_gate_heatmaps, attribution_gate_vs_task
from .causal_figures import causal_counterfactuals, causal_importance, causal_segments
from .routing_figures import (
    coactivation,
    coactivation_lift,
    draw_utilization,
    expert_utilization,
    gate_entropy,
    label_routing,
    negligible_experts,
    routing_panels,
    task_divergence,
    task_expert_heatmap,
    weight_distributions,
)
from .summary_figures import effective_experts, expert_similarity, task_outputs
from .training_figures import training_divergence, training_entropy, training_loss, training_utilization

if TYPE_CHECKING:
    from .early import EarlyFigures  # which draws from this registry

__all__ = [  # the drawing helpers are re-exported: older code imports them from here
    "FIGURES",
    "TRAINING_FIGURES",
    "FigureSpec",
    "all_figures",
    "coactivation_lift",
    "draw_utilization",
    "negligible_experts",
    "render_figures",
    "routing_panels",
]


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
            GUIDES["effective_experts"],
        ),
        FigureSpec(
            "task_expert_heatmap",
            "routing",
            "Mean gate weight per task and expert",
            task_expert_heatmap,
            GUIDES["task_expert_heatmap"],
        ),
        FigureSpec(
            "expert_utilization",
            "routing",
            "Expert utilization per gate",
            expert_utilization,
            GUIDES["expert_utilization"],
        ),
        FigureSpec(
            "weight_distributions",
            "routing",
            "Distribution of per-row gate weights",
            weight_distributions,
            GUIDES["weight_distributions"],
        ),
        FigureSpec(
            "gate_entropy",
            "routing",
            "Per-row gate entropy",
            gate_entropy,
            GUIDES["gate_entropy"],
        ),
        FigureSpec(
            "coactivation",
            "routing",
            "Expert co-activation",
            coactivation,
            GUIDES["coactivation"],
        ),
        FigureSpec(
            "task_divergence",
            "routing",
            "Task-to-task routing divergence",
            task_divergence,
            GUIDES["task_divergence"],
        ),
        FigureSpec(
            "label_routing",
            "routing",
            "Label-conditioned routing",
            label_routing,
            GUIDES["label_routing"],
        ),
        FigureSpec(
            "causal_importance",
            "causal",
            "Expert ablation: importance per task and expert",
            causal_importance,
            GUIDES["causal_importance"],
        ),
        FigureSpec(
            "causal_counterfactuals",
            "causal",
            "Gate counterfactuals",
            causal_counterfactuals,
            GUIDES["causal_counterfactuals"],
        ),
        FigureSpec(
            "causal_segments",
            "causal",
            "Segment routing",
            causal_segments,
            GUIDES["causal_segments"],
        ),
        FigureSpec(
            "attribution_gates",
            "attribution",
            "Attributions: features behind each gate",
            attribution_gate_heatmaps,
            GUIDES["attribution_gates"],
        ),
        FigureSpec(
            "attribution_gate_vs_task",
            "attribution",
            "Attributions: a gate's top features against its task's",
            attribution_gate_vs_task,
            GUIDES["attribution_gate_vs_task"],
        ),
        FigureSpec(
            "attribution_experts",
            "attribution",
            "Attributions: features behind each expert",
            attribution_experts,
            GUIDES["attribution_experts"],
        ),
        FigureSpec(
            "expert_similarity",
            "experts",
            "Expert similarity (linear CKA)",
            expert_similarity,
            GUIDES["expert_similarity"],
        ),
        FigureSpec(
            "task_outputs",
            "tasks",
            "Task outputs",
            task_outputs,
            GUIDES["task_outputs"],
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
            GUIDES["training_utilization"],
        ),
        FigureSpec(
            "training_entropy",
            "training",
            "Training: gate entropy over the steps",
            training_entropy,
            GUIDES["training_entropy"],
        ),
        FigureSpec(
            "training_divergence",
            "training",
            "Training: task divergence over the steps",
            training_divergence,
            GUIDES["training_divergence"],
        ),
        FigureSpec(
            "training_loss",
            "training",
            "Training: loss over the steps",
            training_loss,
            GUIDES["training_loss"],
        ),
    )
}
"""Figures of the Training section, drawn from `result.training` (a GateMonitor run log) only: kept apart
from `FIGURES`, whose figures all draw from the inspection itself."""


def all_figures() -> dict[str, FigureSpec]:
    """Every figure a report may draw: `FIGURES`, then `TRAINING_FIGURES` (read at call time)."""
    return {**FIGURES, **TRAINING_FIGURES}


RECORDING_FIGURES = frozenset(
    {
        "effective_experts",
        "task_expert_heatmap",
        "expert_utilization",
        "weight_distributions",
        "gate_entropy",
        "coactivation",
        "task_divergence",
        "label_routing",
        "expert_similarity",
        "task_outputs",
    }
)
"""The figures drawn from the recording pass alone (`result.topology`, `result.tables`, `result.arrays`
as `inspect`'s recording pass leaves them; never findings, causal analyses, attributions or a run
log): `early.EarlyFigures` draws them while the analyses run."""


FIGURE_SECONDS = {
    "weight_distributions": 0.54,
    "attribution_gates": 0.47,
    "overview": 0.32,  # the report's overview slide (`write.build_report` draws it with the figures)
    "attribution_gate_vs_task": 0.30,
    "coactivation": 0.27,
    "attribution_experts": 0.23,
    "gate_entropy": 0.19,
    "expert_similarity": 0.17,
    "label_routing": 0.15,
    "expert_utilization": 0.14,
    "causal_importance": 0.14,
    "task_outputs": 0.13,
    "task_expert_heatmap": 0.11,
    "causal_counterfactuals": 0.10,
    "task_divergence": 0.09,
    "effective_experts": 0.09,
}
"""CPU seconds each figure took to draw and save (one process, warm, the 1M-row report of
`bench/report_stages_bench.py`): the figures are drawn slowest first, so that two processes taking
them from one counter finish together. Others (training figures, new ones) count as `DEFAULT_SECONDS`."""
DEFAULT_SECONDS = 0.1
OPENER = "effective_experts"
"""Drawn first, on its own, while `_render` measures whether a CPU is free for a helper process: short
(the helper starts after it), and drawn for every result."""


def drawing_order(keys: Sequence[str]) -> list[str]:
    """`keys` in the order they are drawn: `OPENER` first, then by `FIGURE_SECONDS`, slowest first (ties
    in the given order)."""
    rest = sorted((k for k in keys if k != OPENER), key=lambda k: -FIGURE_SECONDS.get(k, DEFAULT_SECONDS))
    return [OPENER, *rest] if OPENER in keys else rest


def render_figures(
    result: InspectionResult,
    folder: str | Path,
    progress: Callable[[int, int], None] | None = None,
    *,
    workers: int | None = None,
    extra: Sequence[Job] = (),
    meanwhile: Callable[[], None] | None = None,
    early: EarlyFigures | None = None,
) -> dict[str, str]:
    """Draw every registered figure that has data and save it as `<folder>/<name>.png`; name → file name
    (registry order).

    `progress(done, total)` is called as figures finish (drawn or skipped for lack of data). The figures
    are drawn on two processes where a CPU is free (`_render.render_all`; `workers=1` forces one, 2
    two); the files are the same either way. `extra` jobs `(key, draw, path, dpi)` (the report's
    overview slide) are drawn with them (in `drawing_order`) and are not counted or returned.
    `meanwhile()` is called once, while a helper process draws its last figures or after the figures
    (`_render.render_all`): the caller's other work, which must not depend on the figures.
    `early`: an `EarlyFigures` started on this result, whose helper has been drawing the
    `RECORDING_FIGURES` since the recording pass; the others are drawn first, then its files are taken
    (`EarlyFigures.finish`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specs = all_figures()
    done = 0

    def tick(key: str) -> None:
        nonlocal done
        if key in specs and key not in extra_keys:
            done += 1
            if progress is not None:
                progress(done, len(specs))

    extra_keys = {job[0] for job in extra}
    jobs = [*extra, *((n, specs[n].draw, folder / f"{n}.png", DPI) for n in specs)]
    rank = {k: i for i, k in enumerate(drawing_order([job[0] for job in jobs]))}
    jobs.sort(key=lambda job: rank[job[0]])
    if progress is not None:
        progress(0, len(specs))
    claimed = early.claim(result) if early is not None else frozenset()
    if claimed:
        own = [job for job in jobs if job[0] not in claimed]
        drawn = render_all(result, own, tick, early.workers_beside(workers))  # type: ignore[union-attr]
        drawn |= early.finish(result, folder, tick, meanwhile)  # type: ignore[union-attr]
    else:
        drawn = render_all(result, jobs, tick, workers, meanwhile)
    if progress is not None and done != len(specs):
        progress(len(specs), len(specs))
    return {name: f"{name}.png" for name in specs if name in drawn and name not in extra_keys}
