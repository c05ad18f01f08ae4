"""Display objects for notebooks: compute once (`from_result`), plot many times (`plot(ax=None)`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmoe_inspect.results import InspectionResult

from ._draw import gate_label
from ._style import SHARED_COLOR, new_figure, plot_context, task_colors
from .routing_figures import draw_utilization


@dataclass
class GateUtilizationDisplay:
    """PLE-paper utilization of one gate: mean weight (bar) and standard deviation (line) per expert.

    Examples::

        >>> disp = GateUtilizationDisplay.from_result(result, gate="gate_0").plot()
        >>> disp.figure_.savefig("gate_0.png")
    """

    gate: str
    experts: Sequence[str]
    mean: np.ndarray
    std: np.ndarray
    label: str = ""
    color: str = SHARED_COLOR

    @classmethod
    def from_result(cls, result: InspectionResult, gate: str | None = None) -> GateUtilizationDisplay:
        """Read the `utilization` table of `result` for `gate` (default: the first gate)."""
        if not result.topology.has_gates:
            raise ValueError(
                "this result has no gates (Shared-Bottom model): nothing to display"
                if result.topology.judgeable
                else "this result has no recorded gates (discovery left gate-like items unresolved; see Topology)"
            )
        spec = result.topology.gate(gate) if gate is not None else result.topology.gates[0]
        util = result.table("utilization")
        if util.empty:
            raise ValueError("the result has no utilization table")
        sub = util[util["gate"] == spec.name].set_index("expert").reindex(list(spec.experts))
        return cls(
            gate=spec.name,
            experts=tuple(spec.experts),
            mean=sub["mean"].to_numpy(dtype=float),
            std=sub["std"].to_numpy(dtype=float),
            label=gate_label(result, spec),
            color=task_colors(result.topology.task_names).get(spec.task or "", SHARED_COLOR),
        )

    def plot(self, ax: Any | None = None, *, title: str | None = None) -> GateUtilizationDisplay:
        """Draw on `ax` (or on a new pyplot-free Figure); sets `ax_` and `figure_`, returns self."""
        with plot_context():
            if ax is None:
                fig = new_figure(4.0, width_in=min(10.5, 3.0 + 0.7 * len(self.experts)))
                ax = fig.subplots()
            draw_utilization(
                ax,
                self.experts,
                self.mean,
                self.std,
                self.color,
                title or f"Expert utilization: {self.label}",
            )
            ax.set_ylabel("gate weight")
            ax.legend(frameon=False, fontsize=9)
        self.ax_ = ax
        self.figure_ = ax.figure
        return self
