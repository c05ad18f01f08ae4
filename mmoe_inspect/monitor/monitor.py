"""`GateMonitor`: forward hooks on a model in training, gate statistics per window of N steps, a run log.

The hooks are the `GateRecorder`'s (same topology, same per-call bookkeeping, same copy-on-capture of
`gate_probabilities`), registered WITHOUT the recorder's switch to eval mode: the model trains as it
would without the monitor (no mode change, no autograd edges, no random numbers drawn). Each training
forward's gates `[batch, E]` go into `GateStats` per gate and `PairwiseRoutingStats` per group of
task gates over the same experts; every `every` calls of `step()` the window's statistics become the
same tables as a post-hoc inspection (`gate_tables`, `divergence_tables`, `expert_tables`) and the
same `diagnose()` runs on them.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from mmoe_inspect._validate import check_number
from mmoe_inspect.analysis import codes
from mmoe_inspect.analysis.findings import Finding, Thresholds, diagnose
from mmoe_inspect.analysis.tables import compared_pairs, gate_groups
from mmoe_inspect.monitor.log import LOG_MARKER, ours
from mmoe_inspect.monitor.tensorboard import TensorBoardSink
from mmoe_inspect.recording.recorder import GateRecorder, RecordingError
from mmoe_inspect.routing_pass import RoutingStats
from mmoe_inspect.topology.spec import GateSpec, Topology

FindingCallback = Callable[[Finding, int], Any]

# Columns of `gate_metrics` copied into each run-log row.
_METRIC_COLUMNS = (
    "level",
    "n_experts",
    "effective_experts",
    "normalized_entropy",
    "entropy_of_mean",
    "input_dependence",
    "polarized_share",
    "max_mean_weight",
    "top_expert",
    "top_expert_top1_share",
    "importance_cv2",
    "load_cv2",
    "switch_balance",
    "nonfinite_rows",
    "not_normalized_rows",
)


_INT_COLUMNS = frozenset(("level", "n_experts", "nonfinite_rows", "not_normalized_rows"))
_RESERVED = frozenset(
    (
        "step",
        "step_start",
        "epoch",
        "window_steps",
        "window_forwards",
        "window_rows",
        "gate",
        "task",
        "findings",
        *_METRIC_COLUMNS,
    )
)


class _TrainingHooks(GateRecorder):
    """`GateRecorder` hooks (gates only) that leave every module's mode alone; `on_forward()` is
    called after each forward of the model while hooked (it calls `take()`)."""

    training_mode = None  # `HookSession`: the model keeps training as it would without the monitor

    def __init__(self, model: nn.Module, topology: Topology, on_forward: Callable[[], None]) -> None:
        super().__init__(model, topology, experts=False)
        self._on_forward = on_forward

    def _end_forward(self, _module: nn.Module, _args: Any, _out: Any) -> None:
        self._on_forward()

    def _register(self) -> None:
        super()._register()  # gate hooks and function taps; no expert hooks (experts=False)
        self.add_handle(self.model.register_forward_hook(self._end_forward))


class GateMonitor:
    """Watch a model's gates while it trains; one run-log row per gate per window of `every` steps.

    `topology`: a `Topology` or spec path; default the model's own `topology()`. Only forwards run
    with `model.training` True are counted (`train_only=False` counts every forward, e.g. validation
    passes too). `log_path` ending in ``.jsonl`` appends one JSON line per row, flushed per window;
    ``.parquet`` is rewritten atomically (temp file + replace) after every window, keeping rows
    already in an existing file. `on_finding(finding, step)` runs when a finding's (code, subject)
    first appears; `first_seen[(code, subject)]` holds that step. `start_step` continues the step count
    of a resumed run (steps are counted by `step()` calls). `stride=k` records the forwards of every
    k-th step only (steps 1, 1 + k, ... of each window) to cut the cost on small models. Captured
    gates are buffered (copies, at most about `buffer_rows` rows per gate) and added to the statistics
    in bulk, so small batches do not pay the per-update cost each step. Scalars given to `step()` are
    averaged over the window's steps. On exit (also on exceptions) the last partial window is
    logged and every hook is removed.

    `tensorboard`: a log directory (a `SummaryWriter` is opened there and closed on exit) or a writer
    object (torch's or tensorboardX's `SummaryWriter`, Lightning's ``logger.experiment``; flushed,
    not closed): each window also becomes per-gate scalars and weight histograms there (tags in
    `mmoe_inspect.monitor.tensorboard`).

    Example::

        >>> with GateMonitor(model, every=50, log_path="run.jsonl") as mon:
        ...     for step in range(1000):
        ...         loss = train_step(model)
        ...         mon.step(epoch=0, loss=loss)
        >>> mon.first_seen.get(("collapsed_gate", "click"))   # step, or None
    """

    def __init__(
        self,
        model: nn.Module,
        topology: Topology | str | Path | None = None,
        *,
        every: int = 50,
        log_path: str | Path | None = None,
        thresholds: Thresholds | None = None,
        on_finding: FindingCallback | None = None,
        train_only: bool = True,
        start_step: int = 0,
        stride: int = 1,
        buffer_rows: int = 65_536,
        tensorboard: Any = None,
    ) -> None:
        self._check_window(every, stride)
        check_number("GateMonitor", "buffer_rows", buffer_rows, low=1, integer=True)
        check_number("GateMonitor", "start_step", start_step, low=0, integer=True)
        self.stride = int(stride)
        self.buffer_rows = int(buffer_rows)
        self.model = model
        self.topology = _resolve(model, topology)
        if not self.topology.has_gates:
            raise RecordingError("the topology has no gates: there is no routing to monitor")
        self.every = int(every)
        self.thresholds = thresholds or Thresholds()
        self.on_finding = on_finding
        self.train_only = train_only
        self.log_path = Path(log_path) if log_path is not None else None
        if self.log_path is not None and self.log_path.suffix not in (".jsonl", ".parquet"):
            raise ValueError(f"log_path must end in .jsonl or .parquet, got {self.log_path.name!r}")
        self.first_seen: dict[tuple[str, str], int] = {}
        self.findings: list[Finding] = []  # findings of the last logged window
        self.rows: list[dict[str, Any]] = []  # every row logged by this monitor
        self.global_step = int(start_step)
        self._groups = gate_groups(self.topology)
        self._hooks: _TrainingHooks | None = None
        self.tensorboard = tensorboard
        self._tb: TensorBoardSink | None = None
        self._parquet_rows: list[dict[str, Any]] = []
        self._reset_window()

    @staticmethod
    def _check_window(every: int, stride: int) -> None:
        """ValueError unless `every` >= 1 and 1 <= `stride` <= `every` are ints."""
        if int(every) != every or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        if int(stride) != stride or not 1 <= stride <= every:
            raise ValueError(f"stride must be an int in [1, every], got {stride!r}")

    # -------------------------------------------------------------- lifecycle
    def __enter__(self) -> GateMonitor:
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def open(self) -> GateMonitor:
        """Register the hooks (idempotent); `close()` removes them."""
        if self._hooks is None:
            if self.log_path is not None and self.log_path.exists():
                if not self.log_path.is_file() or not ours(self.log_path):
                    raise ValueError(
                        f"log_path {self.log_path} exists and is not a GateMonitor run log; the monitor "
                        "appends to its own logs only and never changes another file: name a new file"
                    )
                if self.log_path.suffix == ".parquet":
                    self._parquet_rows = pd.read_parquet(self.log_path).to_dict("records")
            if self.tensorboard is not None:
                self._tb = TensorBoardSink(self.tensorboard, self.topology)
            try:
                hooks = _TrainingHooks(self.model, self.topology, self._record)
                self._hooks = hooks.__enter__()
            except BaseException:
                self._close_tensorboard()
                raise
        return self

    def close(self, log_partial: bool = True) -> None:
        """Log the partial window (if it saw rows and `log_partial`), then remove every hook; idempotent."""
        try:
            if (
                log_partial
                and self._hooks is not None
                and self._window_steps > 0
                and self._window_forwards > 0
            ):
                self._flush()
        finally:
            try:
                if self._hooks is not None:
                    hooks, self._hooks = self._hooks, None
                    hooks.close()
            finally:
                self._close_tensorboard()

    def _close_tensorboard(self) -> None:
        if self._tb is not None:
            tb, self._tb = self._tb, None
            tb.close()

    # ---------------------------------------------------------------- stepping
    def step(
        self, epoch: int | None = None, *, global_step: int | None = None, **scalars: float
    ) -> list[Finding] | None:
        """Mark the end of one training step; logs a window every `every` calls.

        `global_step`: the trainer's own step count after this step (e.g. Lightning's
        ``trainer.global_step``), used as the run log's step instead of counting calls. `scalars`
        (loss, lr, ...) must be numbers. Returns the window's findings when a window was logged at
        this step, else None.
        """
        self.global_step = self.global_step + 1 if global_step is None else int(global_step)
        self._window_steps += 1
        if epoch is not None:
            self._epoch = int(epoch)
        for k, v in scalars.items():
            if k in _RESERVED or k.startswith(("w_", "tv_")):
                raise ValueError(f"scalar name {k!r} clashes with a run-log column; rename it")
            v = float(v.item() if isinstance(v, torch.Tensor) else v)
            self._scalars.setdefault(k, []).append(v)
        if self._window_steps >= self.every:
            return self._flush()
        return None

    # ------------------------------------------------------------- internals
    def _reset_window(self) -> None:
        topo = self.topology
        if not hasattr(self, "_stats"):  # the buffer below does the chunking: every add is an update
            self._stats = RoutingStats(topo, outputs=False, reservoir_size=0, chunk_rows=1)
        else:
            self._stats.reset()
        self._window_start = self.global_step + 1
        self._window_steps = 0
        self._window_forwards = 0
        self._buffer: dict[str, list[torch.Tensor]] = {g.name: [] for g in topo.gates}
        self._buffered_rows = 0
        self._scalars: dict[str, list[float]] = {}
        self._epoch: int | None = getattr(self, "_epoch", None)

    def _record(self) -> None:
        """After a forward: keep the copied gates `[batch, E]`; statistics are updated in bulk (`_drain`)."""
        assert self._hooks is not None
        cap = self._hooks.take()
        if (self.train_only and not self.model.training) or self._window_steps % self.stride:
            return
        for name, parts in self._buffer.items():
            parts.append(cap.gates[name])
        self._buffered_rows += next(iter(cap.gates.values())).shape[0]
        self._window_forwards += 1
        if self._buffered_rows >= self.buffer_rows:
            self._drain()

    def _drain(self) -> None:
        """Add the buffered gates to the window's statistics in one update per gate (and per gate group).

        One update of many rows gives the same sums as many small ones (the statistics are exact SUM
        states) and pays the per-update fixed cost once.
        """
        if not self._buffered_rows:
            return
        with torch.no_grad():
            gates = {name: torch.cat(parts).cpu() for name, parts in self._buffer.items()}
            self._stats.add(gates, torch.arange(self._buffered_rows, dtype=torch.int64))
        self._buffer = {name: [] for name in self._buffer}
        self._buffered_rows = 0

    def _flush(self) -> list[Finding]:
        """Summarize the window → tables → findings → run-log rows; start a new window."""
        if self._window_forwards == 0:
            self._reset_window()
            self.findings = []
            return []
        self._drain()
        summaries, pairs, _, _ = self._stats.compute()
        tables = self._stats.tables_of(summaries, pairs, None, None)
        findings = diagnose(tables, self.thresholds)
        step = self.global_step
        new = []
        for f in findings:
            key = (f.code, f.subject)
            if key not in self.first_seen:
                self.first_seen[key] = step
                new.append(f)
        rows = self._rows(tables, pairs, summaries, findings)
        self.rows.extend(rows)
        self.findings = findings
        self._write(rows)
        if self._tb is not None:
            self._tb.write(rows, summaries)
        self._reset_window()
        if self.on_finding is not None:
            for f in new:
                self.on_finding(f, step)
        return findings

    def _rows(
        self,
        tables: Mapping[str, pd.DataFrame],
        pairs: Mapping[int, Any],
        summaries: Mapping[str, Any],
        findings: list[Finding],
    ) -> list[dict[str, Any]]:
        scalars = {k: statistics.fmean(v) for k, v in self._scalars.items()}
        metrics = tables["gate_metrics"].set_index("gate")
        tv = _tv_to_others(self._groups, pairs)
        out = []
        for g in self.topology.gates:
            m = metrics.loc[g.name]
            row: dict[str, Any] = {
                "step": self.global_step,
                "step_start": self._window_start,
                "epoch": self._epoch,
                "window_steps": self._window_steps,
                "window_forwards": self._window_forwards,
                "window_rows": int(m["n_rows"]),
                "gate": g.name,
                "task": g.task or "",
            }
            for c in _METRIC_COLUMNS:
                v = m[c]
                row[c] = v if isinstance(v, str) else int(v) if c in _INT_COLUMNS else float(v)
            mean = summaries[g.name].mean
            for e, expert in enumerate(g.experts):
                row[f"w_{expert}"] = float(mean[e])
            row.update({f"tv_{other}": v for other, v in tv.get(g.name, {}).items()})
            row["findings"] = json.dumps(
                [[f.code, f.severity, f.subject] for f in findings if _concerns(f, g, self.topology)]
            )
            row.update(scalars)
            out.append(row)
        return out

    def _write(self, rows: list[dict[str, Any]]) -> None:
        if self.log_path is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.log_path.suffix == ".jsonl":
            with self.log_path.open("a", encoding="utf-8") as fh:
                for r in rows:
                    fh.write(json.dumps({k: _json_value(v) for k, v in r.items()}) + "\n")
                fh.flush()
            return
        self._parquet_rows.extend(rows)
        tmp = self.log_path.with_name(self.log_path.name + ".tmp")
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(pd.DataFrame(self._parquet_rows), preserve_index=False)
        pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), **LOG_MARKER}), tmp)
        os.replace(tmp, self.log_path)


def _resolve(model: nn.Module, topology: Topology | str | Path | None) -> Topology:
    """An explicit topology or spec path, else the model's declared `topology()`."""
    if isinstance(topology, Topology):
        return topology
    if topology is not None:
        return Topology.load(topology)
    declared = getattr(model, "topology", None)
    topo = declared() if callable(declared) else None
    if not isinstance(topo, Topology):
        raise RecordingError(
            "the model declares no topology: pass topology= (a Topology, or a spec file from "
            "`mmoe-inspect topology`)"
        )
    return topo


def _tv_to_others(
    groups: list[tuple[GateSpec, ...]], pairs: Mapping[int, Any]
) -> dict[str, dict[str, float]]:
    """`{gate: {other gate: mean per-row total variation}}` within each group of comparable task gates."""
    out: dict[str, dict[str, float]] = {}
    for i, grp in enumerate(groups):
        tv = pairs[i].tv
        for g in grp:
            out[g.name] = {}
        for a, b in compared_pairs(grp):  # two tasks' gates of one call, as in the task_divergence table
            out[grp[a].name][grp[b].name] = float(tv[a, b])
            out[grp[b].name][grp[a].name] = float(tv[a, b])
    return out


def _concerns(f: Finding, gate: GateSpec, topology: Topology) -> bool:
    """Whether a finding is about this gate: its own, a task pair it serves, or an expert it mixes."""
    if f.subject == gate.name:
        return True
    if " ~ " in f.subject:  # two tasks, or two gates where one layer runs twice (`click#1 ~ buy#1`)
        return gate.name in f.subject.split(" ~ ") or (
            gate.task is not None and gate.task in f.subject.split(" ~ ")
        )
    return f.code in (codes.DEAD_EXPERT, codes.INACTIVE_EXPERT) and f.subject in gate.experts


def _json_value(v: Any) -> Any:
    """NaN/inf → null (strict JSON); everything else as is."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
