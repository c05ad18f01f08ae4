"""The one recording loop: streaming routing statistics, and the pass that feeds them from a model.

`RoutingStats` holds every statistic of a recording pass (gate weights per gate, pairwise routing per
gate group, task outputs, expert similarity on a row sample), feeds them in chunks and turns them into
the analysis tables. `RoutingPass` runs a model's forward under gate hooks and feeds one batch at a
time. `inspect()`, the training monitor and every benchmark in `bench/` use these two, so what the
benchmarks time is what users run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from mmoe_inspect.analysis.tables import (
    divergence_tables,
    expert_tables,
    gate_groups,
    gate_tables,
    label_routing_table,
    task_table,
)
from mmoe_inspect.binding import task_predictions
from mmoe_inspect.data.call import input_rows
from mmoe_inspect.device import host, model_device, to_device
from mmoe_inspect.distributed import DistContext, configure_sync, sync_options
from mmoe_inspect.recording.recorder import GateRecorder, checked_forward
from mmoe_inspect.stats import ExpertStats, GateStats, PairwiseRoutingStats
from mmoe_inspect.stats.feed import SampledRows, StatsFeed
from mmoe_inspect.stats.outputs import TaskOutputStats
from mmoe_inspect.topology.spec import TaskSpec, Topology

__all__ = ["RoutingPass", "RoutingStats"]


class RoutingStats:
    """Every streaming statistic of one recording pass over `topology`, and the tables they give.

    `labelled` are the tasks whose labels come with the rows (binary ones split gate statistics by
    label); `outputs=False` skips the task-output statistics, `expert_rate=None` the expert ones
    (else the share of rows, chosen by row hash, whose expert outputs are compared). States follow
    torchmetrics' `Metric`: `reset`, `compute`, and (through `dist`) exact merges across ranks.
    `background=True` runs each chunk's updates in a worker thread (`mmoe_inspect.stats.worker`) while
    the caller goes on with the next batches (CPU states only; the same states, see `StatsFeed`);
    `flush`/`compute` wait for it and raise its errors, `close` stops it.
    """

    def __init__(
        self,
        topology: Topology,
        *,
        labelled: Sequence[TaskSpec] = (),
        labels_ignored: bool = False,
        label_hints: Mapping[str, str] | None = None,
        outputs: bool = True,
        expert_rate: float | None = None,
        reservoir_size: int = 2048,
        seed: int = 0,
        chunk_rows: int = 16_384,
        max_expert_rows_per_update: int | None = None,
        dist: DistContext | None = None,
        device: torch.device | None = None,
        background: bool = False,
    ) -> None:
        self.topology = topology
        self.labelled = tuple(labelled)
        self.labels_ignored = bool(labels_ignored)  # no task is judged, and none is reported as unlabelled
        self.label_hints = dict(
            label_hints or {}
        )  # {task: the data column closest to its missing label column}
        self.label_binary = [t for t in self.labelled if t.kind == "binary"]
        self.device = device if device is not None else torch.device("cpu")
        self.expert_rate = expert_rate
        self.seed = seed
        self._sync = sync_options(dist, self.device)
        self._max_expert_rows = max_expert_rows_per_update
        self.gate_stats = {
            g.name: GateStats(
                g.n_experts,
                label_names=tuple(t.name for t in self.label_binary),
                reservoir_size=reservoir_size,
                seed=seed,
                **self._sync,
            ).to(self.device)
            for g in topology.gates
        }
        self.groups = gate_groups(topology)
        self.pair_stats = {
            i: PairwiseRoutingStats(tuple(g.name for g in grp), grp[0].n_experts, **self._sync).to(
                self.device
            )
            for i, grp in enumerate(self.groups)
        }
        self.outputs = (
            configure_sync(TaskOutputStats([t.kind for t in topology.tasks]), dist, self.device).to(
                self.device
            )
            if outputs
            else None
        )
        self._inference = False  # whether the batches came under torch.inference_mode()
        self.feed = StatsFeed(
            self.gate_stats,
            list(self.pair_stats.values()),
            self.outputs,
            self.new_expert_stats if expert_rate is not None else None,
            chunk_rows=chunk_rows,
            # on an accelerator the updates are queued kernels already: a thread would add nothing
            background=background and self.device.type == "cpu",
        )

    def new_expert_stats(self, dims: Sequence[int]) -> ExpertStats:
        """Expert statistics for outputs of widths `dims` (built on the first expert chunk)."""
        kwargs: dict[str, Any] = (
            {} if self._max_expert_rows is None else {"max_sample_per_update": self._max_expert_rows}
        )
        return ExpertStats(
            len(dims), list(dims), sample_rate=self.expert_rate or 1.0, seed=self.seed, **kwargs, **self._sync
        ).to(self.device)

    @property
    def expert_stats(self) -> ExpertStats | None:
        return self.feed.expert_stats

    def add(self, gates: Mapping[str, torch.Tensor], row_index: torch.Tensor, **captures: Any) -> None:
        """One batch: gates `{name: [batch, E]}`, `row_index` int64 `[batch]` and the optional captures
        of `StatsFeed.add` (labels, predictions, expert outputs of the sampled rows)."""
        self._inference = torch.is_inference_mode_enabled()
        self.feed.add(gates, row_index, **captures)

    def flush(self) -> None:
        """Run the pending chunk updates (after the last batch; idempotent), in the autograd mode of the
        adds: states built under `torch.inference_mode()` can only be updated under it."""
        with torch.inference_mode(self._inference):
            self.feed.flush()

    def close(self, *, raise_errors: bool = True) -> None:
        """Stop the background worker, if any, after its update in flight (idempotent); later updates
        run in the caller. ``raise_errors=False`` when another exception is already propagating."""
        self.feed.close(raise_errors=raise_errors)

    def reset(self) -> None:
        """Empty every state (a new window of the training monitor); pending chunks are dropped."""
        self.feed.flush()
        for st in (*self.gate_stats.values(), *self.pair_stats.values()):
            st.reset()
        if self.outputs is not None:
            self.outputs.reset()
        self.feed.expert_stats = None

    def compute(self) -> tuple[dict[str, Any], dict[int, Any], Any | None, Any | None]:
        """Gate summaries by name, pair summaries by group, task outputs and experts (host copies).

        Under a distributed context this syncs across ranks (same order on every rank)."""
        self.flush()
        summaries = {name: host(st.compute()) for name, st in self.gate_stats.items()}
        pairs = {i: host(st.compute()) for i, st in self.pair_stats.items()}
        outputs = host(self.outputs.compute()) if self.outputs is not None else None
        experts = host(self.expert_stats.compute()) if self.expert_stats is not None else None
        return summaries, pairs, outputs, experts

    def tables(self, n_rows: int | None = None, expert_names: Sequence[str] = ()) -> dict[str, pd.DataFrame]:
        """The analysis tables (tasks, gates, divergence, label routing, experts) of the rows seen."""
        summaries, pairs, outputs, experts = self.compute()
        return self.tables_of(summaries, pairs, outputs, experts, n_rows, expert_names)

    def tables_of(
        self,
        summaries: Mapping[str, Any],
        pairs: Mapping[int, Any],
        outputs: Any | None,
        experts: Any | None,
        n_rows: int | None = None,
        expert_names: Sequence[str] = (),
    ) -> dict[str, pd.DataFrame]:
        """`tables` from already computed summaries (`compute()`), so they are computed (and synced) once."""
        topo = self.topology
        tables: dict[str, pd.DataFrame] = {
            "tasks": task_table(
                topo, outputs, n_rows, labels_ignored=self.labels_ignored, label_hints=self.label_hints
            )
        }
        if topo.has_gates:
            tables.update(gate_tables(topo, summaries))
            tables.update(divergence_tables(topo, summaries, pairs))
            tables["label_routing"] = label_routing_table(
                topo, summaries, [t.name for t in self.label_binary]
            )
            tables.update(expert_tables(topo, summaries, experts, list(expert_names)))
        return tables

    @staticmethod
    def arrays(
        summaries: Mapping[str, Any], experts: Any | None, expert_names: Sequence[str]
    ) -> dict[str, Any]:
        """The arrays the report draws: reservoirs, histograms, coactivation, expert CKA."""
        return {
            "reservoir": {name: s.reservoir.numpy() for name, s in summaries.items()},
            "weight_hist": {name: s.hist.numpy() for name, s in summaries.items()},
            "weight_hist_edges": {name: s.hist_edges.numpy() for name, s in summaries.items()},
            "entropy_hist": {name: s.entropy_hist.numpy() for name, s in summaries.items()},
            "entropy_hist_edges": {name: s.entropy_edges.numpy() for name, s in summaries.items()},
            "coactivation": {name: s.coactivation.numpy() for name, s in summaries.items()},
            "expert_cka": experts.cka.numpy() if experts is not None else None,
            "expert_cka_names": list(expert_names),
        }


forward = checked_forward
"""The recording pass's model call (a module global: a fault-injection test swaps it)."""


class RoutingPass:
    """A model's forward under gate hooks, feeding `RoutingStats` one batch at a time.

    Use as a context manager (the hooks are removed on exit, also on errors, and the statistics'
    background worker, if any, is stopped: an interrupted pass leaves no thread behind). `step(x, ...)` runs one
    forward on input `x` (moved to the model's device) and returns the model's output; the expert
    hooks copy only the rows of the expert sample (chosen on the host by row hash: the same rows for
    any batching or sharding, and no device sync).
    """

    def __init__(self, model: nn.Module, stats: RoutingStats, *, experts: bool = True) -> None:
        self.model = model
        self.stats = stats
        topo = stats.topology
        self.device = model_device(model)
        self.expert_names = (
            [e.name for e in topo.experts if e.module is not None]
            if experts and stats.expert_rate is not None
            else []
        )
        self._sample = SampledRows(stats.expert_rate or 1.0, stats.seed) if self.expert_names else None
        cols = [topo.tasks.index(t) for t in stats.label_binary]
        self._bin_cols = _column_picker(cols, self.device)
        self._recorder = GateRecorder(model, topo, experts=bool(self.expert_names))
        self.n_rows = 0

    def __enter__(self) -> RoutingPass:
        self._recorder.__enter__()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            self._recorder.__exit__(exc_type, *exc)
        finally:  # an update in flight finishes (a torch op cannot be stopped), then the thread ends
            self.stats.close(raise_errors=exc_type is None)

    def step(
        self,
        x: Any,
        *,
        labels: torch.Tensor | None = None,
        row_index: torch.Tensor | None = None,
        range_start: int | None = None,
    ) -> Any:
        """One batch: `x` the model input, `labels` `[batch, T]` float (NaN = missing) or None,
        `row_index` int64 `[batch]` global row positions (default: consecutive after the rows seen),
        `range_start` the first row when the batch is consecutive rows (a faster sample lookup)."""
        rec = self._recorder
        if row_index is None:
            row_index = torch.arange(self.n_rows, self.n_rows + input_rows(x), dtype=torch.int64)
            range_start = self.n_rows
        x = to_device(x, self.device)
        sampled = self._sample.take(row_index, range_start) if self._sample is not None else None
        if sampled is not None:
            rec.expert_rows = to_device(sampled[0], self.device)
        out = forward(self.model, x, self.n_rows, int(row_index.shape[0]))
        cap = rec.take()
        b = int(row_index.shape[0])
        row_index = to_device(row_index, self.device)
        stats = self.stats
        labels = to_device(labels, self.device) if stats.labelled and labels is not None else None
        outs = [cap.experts[n] for n in self.expert_names if n in cap.experts]
        stats.add(
            cap.gates,
            row_index,
            labels_binary=self._bin_cols(labels) if stats.label_binary and labels is not None else None,
            predictions=task_predictions(out, stats.topology.tasks) if stats.outputs is not None else None,
            labels=labels,
            experts=outs if self.expert_names and len(outs) == len(self.expert_names) else None,
            expert_rows=None if sampled is None else rec.expert_rows,
            expert_row_index=None if sampled is None else to_device(sampled[1], self.device),
        )
        self.n_rows += b
        return out


def _column_picker(cols: Sequence[int], device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """`t -> t[:, cols]` for `[batch, T]` tensors on `device`: a view (no op on the data) when `cols` are
    consecutive, else one `index_select` with an index built once."""
    if cols and list(cols) == list(range(cols[0], cols[0] + len(cols))):
        first, stop = cols[0], cols[0] + len(cols)
        return lambda t: t if (first == 0 and stop == t.shape[1]) else t[:, first:stop]
    index = torch.tensor(list(cols), dtype=torch.int64, device=device)
    return lambda t: t.index_select(1, index)
