"""TensorBoard output of a `GateMonitor`: per-gate scalars and weight histograms, one point per window.

Tags (``<gate>`` the gate's name, ``<expert>`` an expert's, ``<other>`` another gate of the same group):

==========================================  =================================  ========================
tag                                         value                              run-log column
==========================================  =================================  ========================
``gates/<gate>/entropy``                    mean per-row entropy / log E       ``normalized_entropy``
``gates/<gate>/max_utilization``            largest mean weight of an expert   ``max_mean_weight``
``gates/<gate>/effective_experts``          exp(entropy of the mean gate)      ``effective_experts``
``gates/<gate>/utilization/<expert>``       mean weight on the expert          ``w_<expert>``
``gates/<gate>/divergence/<other>``         mean per-row total variation       ``tv_<other>``
``gates/<gate>/findings``                   findings concerning the gate       ``len(findings)``
``gates/<gate>/weights``  (histogram)       every weight of the window         (``GateStats`` histogram)
``gates/<gate>/weights/<expert>`` (hist.)   the expert's weights               (``GateStats`` histogram)
==========================================  =================================  ========================

The step is the run log's ``step`` (the monitor's step count at the end of the window). Histograms are
written from the window's ``GateStats`` histogram (100 bins over [0, 1]) with the exact count, sum
and sum of squares of the weights; min/max are the edges of the first/last non-empty bin. Any
object with ``add_scalar`` / ``add_histogram_raw`` / ``flush`` works as the writer (torch's
``SummaryWriter``, tensorboardX's, Lightning's ``TensorBoardLogger.experiment``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmoe_inspect.topology.spec import Topology

INSTALL_HINT = 'TensorBoard output needs the tensorboard package: pip install "mmoe-inspect[tensorboard]"'


def open_summary_writer(log_dir: str | Path) -> Any:
    """A `torch.utils.tensorboard.SummaryWriter` on `log_dir`; ImportError with the install line if
    tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return SummaryWriter(log_dir=str(log_dir))


def scalar_values(row: Mapping[str, Any]) -> dict[str, float]:
    """The TensorBoard scalars `{tag: value}` of one run-log row (one gate, one window); NaN values are
    left out (e.g. ``tv_*`` of a gate outside another gate's group)."""
    gate = row["gate"]
    out = {
        f"gates/{gate}/entropy": row["normalized_entropy"],
        f"gates/{gate}/max_utilization": row["max_mean_weight"],
        f"gates/{gate}/effective_experts": row["effective_experts"],
    }
    for key, value in row.items():
        if key.startswith("w_"):
            out[f"gates/{gate}/utilization/{key[2:]}"] = value
        elif key.startswith("tv_"):
            out[f"gates/{gate}/divergence/{key[3:]}"] = value
    out[f"gates/{gate}/findings"] = len(json.loads(row["findings"]))
    return {tag: float(v) for tag, v in out.items() if v is not None and math.isfinite(float(v))}


class TensorBoardSink:
    """Writes each logged window to a TensorBoard writer; `close()` closes it only if this sink opened it.

    `writer`: a log directory (a `SummaryWriter` is opened on it) or a writer object (used as is,
    flushed after every window, never closed here).
    """

    def __init__(self, writer: Any, topology: Topology) -> None:
        self._owned = isinstance(writer, (str, Path))
        if not self._owned and not all(
            hasattr(writer, m) for m in ("add_scalar", "add_histogram_raw", "flush")
        ):
            raise TypeError(
                f"tensorboard= takes a log directory or a SummaryWriter-like object, got {type(writer).__name__}"
            )
        self.writer = open_summary_writer(writer) if self._owned else writer
        self.topology = topology

    def write(self, rows: Sequence[Mapping[str, Any]], summaries: Mapping[str, Any]) -> None:
        """Scalars of every row and the weight histograms of every gate's window `GateSummary`."""
        w = self.writer
        for row in rows:
            step = int(row["step"])
            for tag, value in scalar_values(row).items():
                w.add_scalar(tag, value, step)
            gate = next(g for g in self.topology.gates if g.name == row["gate"])
            summary = summaries[gate.name]
            if summary.n == 0:
                continue
            counts = summary.hist.double()  # [E, n_bins]
            sums = summary.mean.double() * summary.n  # [E]
            squares = (summary.var.double() + summary.mean.double().square()) * summary.n  # [E]
            edges = summary.hist_edges.double()
            per_expert = [
                (f"gates/{gate.name}/weights/{e}", counts[i], sums[i], squares[i])
                for i, e in enumerate(gate.experts)
            ]
            everything = (f"gates/{gate.name}/weights", counts.sum(0), sums.sum(), squares.sum())
            for tag, c, s, s2 in (everything, *per_expert):
                _histogram(w, tag, c, float(s), float(s2), edges, step)
        w.flush()

    def close(self) -> None:
        if self._owned:
            self.writer.close()
        else:
            self.writer.flush()


def _histogram(
    writer: Any, tag: str, counts: Any, total: float, squares: float, edges: Any, step: int
) -> None:
    """One `add_histogram_raw` from bin counts `[n_bins]` and edges `[n_bins + 1]` (right edges as limits)."""
    nonzero = counts.nonzero().flatten()
    if nonzero.numel() == 0:
        return
    first, last = int(nonzero[0]), int(nonzero[-1])
    writer.add_histogram_raw(
        tag,
        min=float(edges[first]),
        max=float(edges[last + 1]),
        num=float(counts.sum()),
        sum=total,
        sum_squares=squares,
        bucket_limits=[float(v) for v in edges[1:]],
        bucket_counts=[float(v) for v in counts],
        global_step=step,
    )
