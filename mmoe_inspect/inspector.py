"""`inspect(model, data, ...)`: bind a model to its data, record its routing in one pass, diagnose it,
and (when asked) run the causal analyses and attributions on the same binding.

The steps, each in its own module: `binding.bind` (source, inputs, topology, labels) ->
`routing_pass.RoutingPass` (hooks + streaming statistics) -> `analysis` (tables, findings, verdict)
-> `InspectionResult`; then `causal.run_causal` and `attribution.run_attribution`. The CLI calls this
function (through `LoadedModel.inspect`) once per model.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ._eager import eager_module
from ._limits import MAX_BATCH_ROWS
from ._memory import release_free_memory
from ._move import real_tensors
from ._validate import check_number
from .analysis._self_change import mark_nondeterministic, mark_self_change
from .analysis.findings import Thresholds, diagnose, routing_findings
from .analysis.verdict import verdict
from .attach import CausalAnalyses, run_attributions, run_causal_analyses
from .attribution.options import AttributionOptions
from .binding import Binding, InputFn, bind, expected_rows, read_labels
from .causal.options import CausalOptions
from .data.columns import check_segment_values
from .data.schema import FeatureSpec
from .data.sources import DataError, LabelValueError, ReadAhead, TableSource, require_columns, shard_rows
from .device import model_device, on_device, to_device
from .distributed import DistContext, agreed_errors, current_context, exchange
from .label_kinds import regression_fallback
from .progress import RECORDING, Progress, Stage, as_progress
from .recording.determinism import forward_variation
from .recording.fingerprint import changed_tensors, fingerprint
from .recording.recorder import RecordingError
from .results import InspectionResult
from .routing_pass import RoutingPass, RoutingStats
from .stats import ExpertStats
from .stats.worker import short_switch_interval
from .topology.spec import Topology

if TYPE_CHECKING:
    from .causal._engine import Collector

__all__ = ["InspectConfig", "inspect"]


@dataclass(frozen=True)
class InspectConfig:
    """Knobs of one inspection (all have documented defaults; checked on construction)."""

    batch_size: int = 4096
    max_rows: int | None = None
    reservoir_size: int = 2048
    record_experts: bool = True
    expert_sample_rate: float = 0.05  # used when the number of rows is unknown (CSV); else expert_sample_rows
    expert_sample_rows: int = (
        16_384  # rows sampled for expert CKA: bounded, so its cost does not grow with data
    )
    seed: int = 0
    sample: float | None = None  # keep this share of the rows (deterministic in `seed`), before max_rows
    # decode the data in a background thread at most this many rows ahead of the forward passes
    # (None: decode in the loop, one batch at a time); see `mmoe_inspect.data.sources.ReadAhead`
    read_ahead_rows: int | None = None
    # statistics are updated on chunks of at least this many rows (consecutive batches coalesced): the
    # same states, with the fixed per-update cost amortized (it rivals a small model's forward pass)
    stats_chunk_rows: int = 16_384
    # run each chunk's statistics updates in a worker thread while the next batches' forwards run (CPU,
    # while the torch threads leave a core spare; the same statistics either way): `mmoe_inspect.stats.worker`
    overlap_stats: bool = True

    def __post_init__(self) -> None:
        """Refuse a bad value here, in one line naming the field and its range (not deep inside the run)."""
        name = "InspectConfig"
        check_number(name, "batch_size", self.batch_size, low=1, high=MAX_BATCH_ROWS, integer=True)
        check_number(name, "max_rows", self.max_rows, low=1, integer=True, optional=True)
        check_number(name, "reservoir_size", self.reservoir_size, low=1, integer=True)
        check_number(name, "expert_sample_rate", self.expert_sample_rate, low=0.0, high=1.0, low_open=True)
        check_number(name, "expert_sample_rows", self.expert_sample_rows, low=1, integer=True)
        check_number(name, "seed", self.seed, low=0, high=2**32 - 1, integer=True)
        check_number(name, "sample", self.sample, low=0.0, high=1.0, low_open=True, optional=True)
        check_number(name, "read_ahead_rows", self.read_ahead_rows, low=1, integer=True, optional=True)
        check_number(name, "stats_chunk_rows", self.stats_chunk_rows, low=1, integer=True)


def _session(fn: Callable[..., InspectionResult]) -> Callable[..., InspectionResult]:
    """Around `inspect`: the model on `device=` for the call (and back), errors shared across ranks when
    `distributed=True` (see `mmoe_inspect.distributed`), and a check that the model was left as found."""

    @functools.wraps(fn)
    def wrapper(model: nn.Module, data: Any, **kwargs: Any) -> InspectionResult:
        model, _ = eager_module(model)  # a torch.compile wrapper: its eager module (the same parameters)
        _require_weights(model)
        ctx = current_context() if kwargs.get("distributed") else None
        with agreed_errors(ctx), on_device(model, kwargs.get("device")):
            before = fingerprint(model)
            result = fn(model, data, **kwargs)
            mark_self_change(result, changed_tensors(before, fingerprint(model)))
            return result

    return wrapper


def _require_weights(model: nn.Module) -> None:
    """A model whose every parameter and buffer is on the meta device (built under `torch.device("meta")`, its
    weights never loaded) holds shapes, no values: refused in one line instead of the first kernel without a
    meta implementation failing mid-pass. A torch.func base module on meta beside real stacked weights runs."""
    tensors = [*model.parameters(), *model.buffers()]
    if tensors and not real_tensors(model):
        raise RecordingError(
            f"every parameter and buffer of {type(model).__name__} is on the meta device (shapes, no values): "
            "load its weights first (model.to_empty(device='cpu'), then load_state_dict)"
        )


@_session
def inspect(
    model: nn.Module,
    data: pd.DataFrame | str | Path | TableSource,
    *,
    topology: Topology | str | Path | None = None,
    tasks: Sequence[str] | None = None,
    task_kinds: Sequence[str] | Mapping[str, str] | None = None,
    features: FeatureSpec | None = None,
    input_fn: InputFn | None = None,
    columns: Sequence[str] | None = None,
    labels: bool | Mapping[str, str] = True,
    config: InspectConfig | None = None,
    thresholds: Thresholds | None = None,
    model_name: str | None = None,
    causal: bool | Mapping[str, Any] | CausalOptions = False,
    attribution: bool | Mapping[str, Any] | AttributionOptions = False,
    progress: Progress | Callable[[int], None] | None = None,
    label: str | None = None,
    distributed: bool = False,
    device: str | torch.device | None = None,
    on_recorded: Callable[[InspectionResult], None] | None = None,
) -> InspectionResult:
    """Record every gate of `model` over `data` and diagnose its routing.

    `data` is a DataFrame or a parquet/CSV path (streamed in batches of `config.batch_size`). The
    topology comes from `topology` (a `Topology` or a TOML spec path), else the model's own
    `topology()`, else discovery on the first rows (`tasks` names the outputs of a `[batch, T]`
    tensor, `task_kinds` gives "binary"/"regression" per task). `input_fn` turns a chunk of rows into
    model inputs; `columns` names the data columns it reads (checked to exist, be numeric and finite;
    only they and the label columns are read). Label columns named by the tasks are used when present;
    `labels={task: column}` names them explicitly (they must exist), `labels=False` ignores them.
    Binary labels must be 0/1 (NaN = missing). `config.sample` / `config.max_rows` thin the rows.
    `causal=True` (or `CausalOptions(baselines=..., segment_by=..., n_boot=..., max_rows=...)`, or a
    dict of `run_causal` keywords) also runs the causal analyses on the labelled rows the inspection
    read (same `sample`, at most `max_rows`) and attaches them as `result.causal`; when they cannot run
    (no labels, gates that cannot be intervened on) the reason is in `result.skipped["causal"]`.
    `attribution=True` (or `AttributionOptions(budget_seconds=..., sample_rows=...)`, or a dict) attaches
    Captum feature attributions of gates, experts and tasks as `result.attribution`, or the reason
    they are absent in `result.skipped["attribution"]`. A `segment_by` column is checked before the
    recording pass. `progress` (a `mmoe_inspect.progress.Progress`) sees every stage, named after
    `label` (default: the model's name): "inspecting m.pt", "attributions ...", "causal analyses of
    m.pt (pass k)", ticked once per batch; a plain callable `progress(rows_done)` sees the recording
    pass only.
    The model is left exactly as found: hooks removed, every module's mode restored, parameters and
    gradients untouched.

    `on_recorded(result)` is called once, with the result of the recording pass (topology, tables,
    findings, arrays), before the attributions and causal analyses run and attach theirs (where the
    result is returned: one process, or rank 0). It lets a caller start work that reads only the
    recording, such as the report's routing figures (`mmoe_inspect.reports.EarlyFigures`); it must not
    change the result.

    `device` ("cuda", "cuda:1", ...) runs the model there for this call (moved back afterwards);
    inputs go to the model's device, statistics stay on it and reach the host at `compute()`.
    `distributed=True` needs an initialized `torch.distributed` process group: each rank records
    its shard of the rows, the statistics are combined across ranks and every rank returns the
    result of all rows (equal to a single-process run's); the causal analyses and attributions run
    on rank 0 only, on the same rows a single process would use. An error on any rank is raised on
    every rank (see `mmoe_inspect.distributed`).

    Examples::

        >>> result = inspect(model, "eval.parquet")
        >>> result.table("utilization")      # gate x expert mean weights
        >>> [f.title for f in result.findings]
    """
    call = {k: v for k, v in locals().items() if k not in ("model", "data")}  # for a rerun (see below)
    cfg = config or InspectConfig()
    th = thresholds or Thresholds()
    causal_opts = CausalOptions.of(causal)
    attribution_opts = AttributionOptions.of(attribution)
    shown = progress_label(model_name or type(model).__name__, label)
    reporter = as_progress(progress)
    binding = bind(
        model,
        data,
        topology=topology,
        tasks=tasks,
        task_kinds=task_kinds,
        features=features,
        input_fn=input_fn,
        columns=columns,
        labels=labels,
    )
    if causal_opts is not None and causal_opts.segment_by is not None:  # fail now, not after the pass
        require_columns(binding.source, [causal_opts.segment_by], what="segment")
        head = next(iter(binding.source.iter_frames(256, [causal_opts.segment_by])), None)
        if head is not None:
            check_segment_values(head[causal_opts.segment_by], causal_opts.segment_by, binding.source.name)
    try:
        dist_ctx = current_context() if distributed else None
        unchanged = fingerprint(model)
        with contextlib.ExitStack() as stack:
            # single process: the causal analyses are planned first, so that their data pass can ride along the
            # recording pass (one read of the rows, see `CausalPlan.rider`); distributed: after it, on rank 0
            analyses = rider = None
            if causal_opts is not None and dist_ctx is None:
                analyses = stack.enter_context(
                    CausalAnalyses(model, binding, causal_opts, cfg, progress=reporter, label=shown)
                )
                rider = analyses.rider(lambda: binding.example(cfg.batch_size))
            result = record(
                model,
                binding,
                cfg,
                th,
                model_name=model_name or type(model).__name__,
                progress=Stage(
                    reporter, f"{RECORDING} {shown}", expected_rows(binding.source, cfg.sample, cfg.max_rows)
                ),
                dist=dist_ctx,
                ride=None if rider is None else _ride(rider, binding, analyses),
                ride_columns=None if rider is None else _ride_columns(binding, analyses),
                ride_end=None if rider is None else rider.end,
            )
            if rider is not None:
                rider.close()  # its hooks: the attributions' forwards are not the recording's
            # a self-changing model is not run again; ranks of a distributed run would run it out of step
            if dist_ctx is None and not changed_tensors(unchanged, fingerprint(model)):
                mark_nondeterministic(result, _forward_variation(model, binding))
            release_free_memory()  # the pass's freed chunks: back to the OS before the analyses allocate theirs
            if dist_ctx is not None and not dist_ctx.is_main:  # rank 0 runs what follows on the bounded rows
                return result
            if on_recorded is not None:
                on_recorded(result)
            if attribution_opts is not None:
                run_attributions(result, model, binding, attribution_opts, seed=cfg.seed, progress=reporter)
            if analyses is not None:
                analyses.attach(result, rider)
            elif causal_opts is not None:
                run_causal_analyses(result, model, binding, causal_opts, cfg, progress=reporter, label=shown)
    except LabelValueError as err:  # a kind settled on the first rows met a label that is not 0/1 later
        fallback = regression_fallback(binding.topology, getattr(err, "task", None), str(err))
        if fallback is None or distributed:  # ranks would rerun out of step
            raise
        kinds = {t.name: t.kind for t in fallback.tasks}  # settled already: not again on the first rows
        return inspect.__wrapped__(model, data, **{**call, "topology": fallback, "task_kinds": kinds})
    return result


def _forward_variation(model: nn.Module, binding: Binding) -> float:
    """How much two eval-mode forwards on the first rows differ (`forward_variation`); 0.0 when the model
    cannot be run on them here (the recording pass has already said so, or ran on other rows)."""
    try:
        return forward_variation(model, to_device(binding.example(), model_device(model)))
    except Exception:  # a check beside the pass: its failure is not the inspection's
        return 0.0


def _ride(
    rider: Collector, binding: Binding, analyses: CausalAnalyses | None
) -> Callable[[pd.DataFrame, Any, np.ndarray | None], None]:
    """The recording pass's call of the riding causal pass: each batch's rows, model input and, when both
    passes read the same label columns in the same order, the labels the recording pass read."""
    assert analyses is not None and analyses.plan is not None
    ours = [t.label_column for t in binding.topology.tasks]
    same = ours == [t.label_column for t in analyses.plan.topo.tasks]

    def ride(frame: pd.DataFrame, x: Any, labels: np.ndarray | None) -> None:
        rider.step(frame, x, binding.input_fn, labels if same else None)

    return ride


def _ride_columns(binding: Binding, analyses: CausalAnalyses | None) -> list[str] | None:
    """The columns the recording pass reads when the causal pass rides along: its own and the causal pass's
    (None: every column)."""
    assert analyses is not None and analyses.plan is not None
    theirs = analyses.plan.columns
    return None if theirs is None else binding.read_columns(*theirs)


def record(
    model: nn.Module,
    binding: Binding,
    cfg: InspectConfig,
    thresholds: Thresholds,
    *,
    model_name: str,
    progress: Stage | None = None,
    dist: DistContext | None = None,
    ride: Callable[[pd.DataFrame, Any, np.ndarray | None], None] | None = None,
    ride_columns: Sequence[str] | None = (),
    ride_end: Callable[[bool], None] | None = None,
) -> InspectionResult:
    """The recording pass over `binding`'s rows, diagnosed: an `InspectionResult` without causal analyses.

    With `dist`, each rank records its shard and the statistics are combined across ranks. `ride(frame,
    x, labels)` sees every batch after its forward (its rows, model input and the `[b, T]` labels read for
    the binding's tasks, None when unlabelled: another analysis's data pass riding along this one), reading `ride_columns` (None: every column; `()`: only the recording's); its time is
    kept apart (`meta["ride_seconds"]`, not in `record_seconds`). `ride_end(failed)` is called after the last
    batch, or when the pass raises, still inside the pass (hooks in place, the model in eval mode): the
    riding work a worker thread may still run ends there (is waited for, or stopped)."""
    source, topo = binding.source, binding.topology
    device = model_device(model)
    recorded = [e.name for e in topo.experts if e.module is not None] if cfg.record_experts else []
    # expert statistics use a deterministic row sample (row_hash < rate: the same rows for any batching or
    # sharding); the hooks copy only those rows, so their cost stays bounded as the data grows
    stats = RoutingStats(
        topo,
        labelled=binding.labelled,
        labels_ignored=binding.labels_ignored,
        label_hints=binding.label_hints,
        expert_rate=expert_sample_rate(cfg, expected_rows(source, cfg.sample, cfg.max_rows))
        if recorded
        else None,
        reservoir_size=cfg.reservoir_size,
        seed=cfg.seed,
        chunk_rows=cfg.stats_chunk_rows,
        # never cap (keeps the sample batch-invariant): a chunk holds < stats_chunk_rows + one batch
        max_expert_rows_per_update=max(cfg.batch_size, cfg.stats_chunk_rows) + cfg.batch_size,
        dist=dist,
        device=device,
        background=cfg.overlap_stats,
    )
    shard = None
    if dist is not None:  # this rank's rows; max_rows/sample are folded into the shard's stop
        shard = shard_rows(
            source,
            dist.rank,
            dist.world_size,
            max_rows=cfg.max_rows,
            sample=cfg.sample,
            seed=cfg.seed,
            block=cfg.batch_size,
        )
    read_ahead = ReadAhead(cfg.read_ahead_rows) if cfg.read_ahead_rows else None
    frames = source.iter_frames(
        cfg.batch_size,
        binding.read_columns() if ride is None or ride_columns == () else ride_columns,
        cfg.max_rows,
        sample=cfg.sample,
        seed=cfg.seed,
        shard=shard,
        read_ahead=read_ahead,
    )
    tasks = topo.tasks
    started = time.perf_counter()
    n_rows = 0
    ride_s = 0.0
    # worker threads (statistics, the riding causal work) get the GIL back soon after each op
    with (
        short_switch_interval(),
        RoutingPass(model, stats, experts=bool(recorded)) as rp,
        torch.inference_mode(),
    ):
        try:
            for frame in frames:
                binding.check(frame)
                index = frame.index
                read = read_labels(frame, tasks, source.name) if binding.labelled else None
                labels = torch.from_numpy(read) if read is not None else None
                x = binding.input_fn(frame)
                rp.step(
                    x,
                    labels=labels,
                    row_index=torch.from_numpy(index.to_numpy(dtype=np.int64, copy=True)),  # global positions
                    range_start=_range_start(index),
                )
                if ride is not None:
                    t0 = time.perf_counter()
                    ride(frame, x, read)
                    ride_s += time.perf_counter() - t0
                n_rows += len(frame)
                if progress is not None:
                    progress(n_rows)
        except BaseException:  # the riding worker stops here, while the model is still as the pass set it
            if ride_end is not None:
                ride_end(True)
            raise
        if ride_end is not None:
            t0 = time.perf_counter()
            ride_end(False)
            ride_s += time.perf_counter() - t0
        stats.flush()
    elapsed = time.perf_counter() - started - ride_s
    if dist is not None:  # every rank got here healthy; totals, and expert stats on rows-less ranks
        n_rows, elapsed, experts = _combine_ranks(
            dist, n_rows, elapsed, stats.expert_stats, stats.new_expert_stats
        )
        stats.feed.expert_stats = experts
    if n_rows == 0:
        raise DataError(f"{source.name} has no rows")
    if progress is not None:  # the stage's line once every rank is through
        progress.finish()

    summaries, pairs, outputs, experts_summary = stats.compute()  # syncs across ranks, then to the host
    tables = stats.tables_of(summaries, pairs, outputs, experts_summary, n_rows, recorded)
    findings = diagnose(tables, thresholds)
    result = InspectionResult(
        topology=topo,
        tables=tables,
        findings=findings,
        verdict=verdict(topo, tables, routing_findings(findings)),
        n_rows=n_rows,
        data_source=source.name,
        model_name=model_name,
        thresholds=thresholds,
        arrays=RoutingStats.arrays(summaries, experts_summary, recorded),
        meta={
            "record_seconds": elapsed,
            "rows_per_second": n_rows / max(elapsed, 1e-9),
            "features": list(binding.feature_columns or ()),  # input columns read (for the report)
            **_cfg_meta(cfg),
        },
    )
    if ride is not None:
        result.meta["ride_seconds"] = ride_s
    if read_ahead is not None:
        result.meta["read_ahead_peak_rows"] = read_ahead.peak  # this rank's high-water mark
    if dist is not None:
        result.meta["distributed"] = {"world_size": dist.world_size, "backend": dist.backend}
    return result


def progress_label(model_name: str, label: str | None) -> str:
    """What progress stages call the model: `label` when given, else its name."""
    return label if label else model_name


def expert_sample_rate(cfg: InspectConfig, n_rows: int | None) -> float:
    """Share of rows sampled for expert similarity: about `expert_sample_rows` rows in total when the row
    count is known (deterministic by row hash, so batching and sharding pick the same rows)."""
    if n_rows is None or n_rows <= 0:
        return cfg.expert_sample_rate
    return min(1.0, cfg.expert_sample_rows / n_rows)


def _combine_ranks(
    ctx: DistContext,
    n_rows: int,
    elapsed: float,
    expert_stats: ExpertStats | None,
    new_expert_stats: Callable[[Sequence[int]], ExpertStats],
) -> tuple[int, float, ExpertStats | None]:
    """A status exchange after the recording pass: total rows, slowest rank's time, and expert statistics
    on every rank (a rank without rows built none; every rank must take part in their sync)."""
    dims = list(expert_stats.dims) if expert_stats is not None else None
    everyone = exchange(ctx, (n_rows, elapsed, dims))
    known = next((d for _, _, d in everyone if d is not None), None)
    if expert_stats is None and known is not None:
        expert_stats = new_expert_stats(known)
    return sum(n for n, _, _ in everyone), max(t for _, t, _ in everyone), expert_stats


def _range_start(index: pd.Index) -> int | None:
    """The first row of a batch whose index is consecutive rows (a step-1 `RangeIndex`), else None."""
    return int(index.start) if isinstance(index, pd.RangeIndex) and index.step == 1 else None


def _cfg_meta(cfg: InspectConfig) -> dict[str, Any]:
    return {
        "batch_size": cfg.batch_size,
        "max_rows": cfg.max_rows,
        "reservoir_size": cfg.reservoir_size,
        "expert_sample_rate": cfg.expert_sample_rate,
        "expert_sample_rows": cfg.expert_sample_rows,
        "stats_chunk_rows": cfg.stats_chunk_rows,
        "seed": cfg.seed,
        "sample": cfg.sample,
    }
