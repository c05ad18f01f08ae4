"""`inspect(model, data, ...)`: stream data through a model with gate hooks and build an `InspectionResult`."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ._plural import plural
from .analysis._self_change import mark_self_change
from .analysis.findings import Finding, Thresholds, diagnose, routing_findings
from .analysis.tables import (
    divergence_tables,
    expert_tables,
    gate_groups,
    gate_tables,
    label_routing_table,
    task_table,
)
from .data.call import call_model
from .data.schema import FeatureSpec
from .data.sources import (
    DataError,
    LabelValueError,
    NonNumericError,
    ReadAhead,
    TableSource,
    check_features,
    closest,
    require_columns,
    shard_rows,
)
from .distributed import DistContext, agreed_errors, configure_sync, current_context, exchange, sync_options
from .recording.fingerprint import changed_tensors, fingerprint
from .recording.recorder import GateRecorder, RecordingError
from .results import InspectionResult
from .stats import ExpertStats, GateStats, PairwiseRoutingStats
from .stats.feed import SampledRows, StatsFeed
from .stats.outputs import TaskOutputStats
from .topology.spec import TaskSpec, Topology

InputFn = Callable[[pd.DataFrame], Any]


@dataclass(frozen=True)
class InspectConfig:
    """Knobs of one inspection (all have documented defaults)."""

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


def resolve_topology(
    model: nn.Module,
    topology: Topology | str | Path | None,
    example: Callable[[], Any] | None = None,
    tasks: Sequence[str] | None = None,
    task_kinds: Sequence[str] | Mapping[str, str] | None = None,
) -> Topology:
    """An explicit topology/spec file wins; then the model's own declaration; then discovery on `example()`."""
    if isinstance(topology, Topology):
        return topology
    if topology is not None:
        return Topology.load(topology)
    declared = getattr(model, "topology", None)
    if callable(declared):
        topo = declared()
        if isinstance(topo, Topology):
            return topo
    if example is None:
        raise RecordingError("the model declares no topology and no example batch was given for discovery")
    from .topology.discovery import discover_topology

    return discover_topology(
        model, example(), task_names=list(tasks) if tasks is not None else None, task_kinds=task_kinds
    )


def default_input_fn(model: nn.Module, features: FeatureSpec | None) -> tuple[InputFn, FeatureSpec | None]:
    """Our reference models read `{feature: tensor}` (or `[batch, n_dense]`); their config names the features."""
    from .data.batches import frame_to_inputs

    if features is None:
        cfg = getattr(model, "config", None)
        features = getattr(cfg, "features", None)
    if not isinstance(features, FeatureSpec):
        raise RecordingError(
            "cannot tell how to turn data rows into model inputs: pass `features=FeatureSpec(...)` or `input_fn=`"
        )
    spec = features
    return (lambda frame: frame_to_inputs(frame, spec)), spec


def task_predictions(out: Any, tasks: Sequence[TaskSpec]) -> torch.Tensor:
    """Model output (dict, `[batch, T]` tensor, or list/tuple) → `[batch, T]` float predictions in task order.

    A fresh tensor; for the usual `[batch]` outputs one op in all (the stack).
    """
    cols = []
    for i, t in enumerate(tasks):
        key = t.output if t.output is not None else (t.name if isinstance(out, dict) else i)
        try:
            if isinstance(out, dict):
                v = out[key]
            elif isinstance(out, torch.Tensor):
                v = out[:, int(key)] if out.dim() == 2 else out
            else:
                v = out[int(key)]
        except (KeyError, IndexError, ValueError, TypeError, OverflowError, RuntimeError) as exc:
            from .topology._task_outputs import output_error

            raise output_error(t.name, key, out, exc) from None
        if v.requires_grad:
            v = v.detach()
        if v.dim() != 1:
            v = v.reshape(v.shape[0], -1)[:, t.column]
        if v.dtype != torch.float32:
            v = v.float()
        cols.append(v)
    return torch.stack(cols, dim=1)


def _session(fn: Callable[..., InspectionResult]) -> Callable[..., InspectionResult]:
    """Around `inspect`: the model on `device=` for the call (and back), errors shared across ranks when
    `distributed=True` (see `mmoe_inspect.distributed`)."""

    @functools.wraps(fn)
    def wrapper(model: nn.Module, data: Any, **kwargs: Any) -> InspectionResult:
        ctx = current_context() if kwargs.get("distributed") else None
        with agreed_errors(ctx), _on_device(model, kwargs.get("device")):
            before = fingerprint(model)
            result = fn(model, data, **kwargs)
            mark_self_change(result, changed_tensors(before, fingerprint(model)))
            return result

    return wrapper


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
    causal: bool | Mapping[str, Any] = False,
    attribution: bool | Mapping[str, Any] = False,
    progress: Callable[[int], None] | None = None,
    distributed: bool = False,
    device: str | torch.device | None = None,
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
    `causal=True` (or a dict of `mmoe_inspect.causal.run_causal` options such as `baselines`,
    `segment_by`, `n_boot`, `max_rows`) also runs the causal analyses on the labelled rows and attaches
    them as `result.causal`; without labels they are skipped with a note. `attribution=True` (or a dict
    of `mmoe_inspect.attribution.run_attribution` options such as `sample_rows`, `budget_seconds`)
    attaches Captum feature attributions of gates, experts and tasks as `result.attribution`.
    `progress(rows_done)`, when given, is called once after each batch of the recording pass with
    the number of rows processed so far (for progress bars; keep it cheap, it runs in the loop).
    The model is left exactly as found: hooks removed, every module's mode restored, parameters and
    gradients untouched.

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
    cfg = config or InspectConfig()
    if cfg.sample is not None and not 0.0 < cfg.sample <= 1.0:
        raise DataError(f"sample must be a fraction in (0, 1], got {cfg.sample}")
    th = thresholds or Thresholds()
    source = TableSource.of(data)
    spec_features = features
    if input_fn is None:
        input_fn, spec_features = default_input_fn(model, features)
    if columns is not None:
        feature_cols: list[str] | None = list(columns)
    else:
        feature_cols = list(spec_features.names) if spec_features is not None else None
    if feature_cols:
        require_columns(source, feature_cols)
    topo = resolve_topology(
        model,
        topology,
        example=lambda: _example_batch(source, input_fn, feature_cols),
        tasks=tasks,
        task_kinds=task_kinds,
    )
    if isinstance(labels, Mapping):
        topo = _with_labels(topo, labels, source)
    columns = set(source.columns())
    labelled = [t for t in topo.tasks if labels is not False and t.label_column in columns]
    label_binary = [t for t in labelled if t.kind == "binary"]
    read_cols = None if feature_cols is None else feature_cols + [t.label_column for t in labelled]
    dist_ctx = current_context() if distributed else None
    device = _model_device(model)
    sync = sync_options(dist_ctx, device)  # statistics sync across ranks at compute(), or never

    gate_stats = {
        g.name: GateStats(
            g.n_experts,
            label_names=tuple(t.name for t in label_binary),
            reservoir_size=cfg.reservoir_size,
            seed=cfg.seed,
            **sync,
        ).to(device)
        for g in topo.gates
    }
    groups = gate_groups(topo)
    pair_stats = {
        i: PairwiseRoutingStats(tuple(g.name for g in grp), grp[0].n_experts, **sync).to(device)
        for i, grp in enumerate(groups)
    }
    outputs = configure_sync(TaskOutputStats([t.kind for t in topo.tasks]), dist_ctx, device).to(device)
    recorded_experts = [e.name for e in topo.experts if e.module is not None] if cfg.record_experts else []

    # expert statistics use a deterministic row sample (row_hash < rate: the same rows for any batching or
    # sharding); the hooks copy only those rows, so their cost stays bounded as the data grows
    expert_rate = _expert_sample_rate(cfg, _expected_rows(cfg, source)) if recorded_experts else 1.0

    def new_expert_stats(dims: Sequence[int]) -> ExpertStats:
        return ExpertStats(
            len(dims),
            list(dims),
            sample_rate=expert_rate,
            # never cap (keeps the sample batch-invariant): a chunk holds < stats_chunk_rows + one batch
            max_sample_per_update=max(cfg.batch_size, cfg.stats_chunk_rows) + cfg.batch_size,
            seed=cfg.seed,
            **sync,
        ).to(device)

    shard = None
    if dist_ctx is not None:  # this rank's rows; max_rows/sample are folded into the shard's stop
        shard = shard_rows(
            source,
            dist_ctx.rank,
            dist_ctx.world_size,
            max_rows=cfg.max_rows,
            sample=cfg.sample,
            seed=cfg.seed,
            block=cfg.batch_size,
        )
    read_ahead = ReadAhead(cfg.read_ahead_rows) if cfg.read_ahead_rows else None
    expert_sample = SampledRows(expert_rate, cfg.seed) if recorded_experts else None
    bin_cols = _column_picker([topo.tasks.index(t) for t in label_binary], device)
    feed = StatsFeed(
        gate_stats, list(pair_stats.values()), outputs, new_expert_stats, chunk_rows=cfg.stats_chunk_rows
    )
    started = time.perf_counter()
    n_rows = 0
    with GateRecorder(model, topo, experts=bool(recorded_experts)) as rec, torch.inference_mode():
        for frame in source.iter_frames(
            cfg.batch_size,
            read_cols,
            cfg.max_rows,
            sample=cfg.sample,
            seed=cfg.seed,
            shard=shard,
            read_ahead=read_ahead,
        ):
            if feature_cols:
                check_features(frame, feature_cols, source.name)
            row_index = torch.from_numpy(frame.index.to_numpy(dtype=np.int64, copy=True))  # global positions
            # rows of this batch in the expert sample (None: all), chosen on the host: no device sync
            sampled = expert_sample.take(row_index, _range_start(frame.index)) if expert_sample else None
            if sampled is not None:
                rec.expert_rows = _to_device(sampled[0], device)
            x = _to_device(input_fn(frame), device)
            out = _forward(model, x, n_rows, len(frame))
            cap = rec.take()
            b = len(frame)
            row_index = _to_device(row_index, device)
            lab_all = _to_device(_labels(frame, topo.tasks, columns, source.name), device)
            lab_bin = bin_cols(lab_all) if label_binary else None
            outs = [cap.experts[n] for n in recorded_experts if n in cap.experts]
            feed.add(
                cap.gates,
                row_index,
                labels_binary=lab_bin,
                predictions=task_predictions(out, topo.tasks),
                labels=lab_all if labelled else None,
                experts=outs if recorded_experts and len(outs) == len(recorded_experts) else None,
                expert_rows=None if sampled is None else rec.expert_rows,
                expert_row_index=None if sampled is None else _to_device(sampled[1], device),
            )
            n_rows += b
            if progress is not None:
                progress(n_rows)
        feed.flush()
    expert_stats = feed.expert_stats
    elapsed = time.perf_counter() - started
    if dist_ctx is not None:  # every rank got here healthy; totals, and expert stats on rows-less ranks
        n_rows, elapsed, expert_stats = _combine_ranks(
            dist_ctx, n_rows, elapsed, expert_stats, new_expert_stats
        )
    if n_rows == 0:
        raise DataError(f"{source.name} has no rows")

    # compute() syncs across ranks (same order on every rank), then results go to the host
    summaries = {name: _host(st.compute()) for name, st in gate_stats.items()}
    pairs = {i: _host(st.compute()) for i, st in pair_stats.items()}
    exp_summary = _host(expert_stats.compute()) if expert_stats is not None else None
    tables: dict[str, pd.DataFrame] = {"tasks": task_table(topo, _host(outputs.compute()), n_rows)}
    if topo.has_gates:
        tables.update(gate_tables(topo, summaries))
        tables.update(divergence_tables(topo, summaries, pairs))
        tables["label_routing"] = label_routing_table(topo, summaries, [t.name for t in label_binary])
        tables.update(expert_tables(topo, summaries, exp_summary, recorded_experts))
    findings = diagnose(tables, th)
    arrays = {
        "reservoir": {name: s.reservoir.numpy() for name, s in summaries.items()},
        "weight_hist": {name: s.hist.numpy() for name, s in summaries.items()},
        "weight_hist_edges": {name: s.hist_edges.numpy() for name, s in summaries.items()},
        "entropy_hist": {name: s.entropy_hist.numpy() for name, s in summaries.items()},
        "entropy_hist_edges": {name: s.entropy_edges.numpy() for name, s in summaries.items()},
        "coactivation": {name: s.coactivation.numpy() for name, s in summaries.items()},
        "expert_cka": exp_summary.cka.numpy() if exp_summary is not None else None,
        "expert_cka_names": recorded_experts,
    }
    result = InspectionResult(
        topology=topo,
        tables=tables,
        findings=findings,
        verdict=verdict(topo, tables, routing_findings(findings)),
        n_rows=n_rows,
        data_source=source.name,
        model_name=model_name or type(model).__name__,
        thresholds=th,
        arrays=arrays,
        meta={
            "record_seconds": elapsed,
            "rows_per_second": n_rows / max(elapsed, 1e-9),
            "features": list(feature_cols) if feature_cols else [],  # input columns read (for the report)
            **_cfg_meta(cfg),
        },
    )
    if read_ahead is not None:
        result.meta["read_ahead_peak_rows"] = read_ahead.peak  # this rank's high-water mark
    if dist_ctx is not None:
        result.meta["distributed"] = {"world_size": dist_ctx.world_size, "backend": dist_ctx.backend}
        if not dist_ctx.is_main:  # rank 0 runs what follows on the bounded rows; the others are done
            return result
    if causal:
        options = dict(causal) if isinstance(causal, Mapping) else {}
        if not labelled:
            result.meta["causal_skipped"] = (
                "no label columns for any task: causal analyses need labelled rows"
            )
        else:
            from mmoe_inspect.causal import run_causal

            options.setdefault("batch_size", cfg.batch_size)
            options.setdefault("seed", cfg.seed)
            causal_result = run_causal(
                model,
                source,
                topology=topo,
                input_fn=input_fn,
                columns=feature_cols,
                labels={t.name: t.label_column for t in labelled},
                **options,
            )
            result.attach_causal(causal_result)  # a collapsed gate's severity follows its measured impact
    if attribution:
        from mmoe_inspect.attribution import run_attribution

        options = dict(attribution) if isinstance(attribution, Mapping) else {}
        options.setdefault("seed", cfg.seed)
        result.attribution = run_attribution(
            model, source, topology=topo, input_fn=input_fn, features=feature_cols, **options
        )
    return result


def verdict(topology: Topology, tables: dict[str, pd.DataFrame], findings: list[Finding]) -> str:
    """One sentence that answers "do the experts serve different tasks?".

    When discovery saw gate-like computations it could not resolve (or is not confident), the routing
    cannot be judged and the sentence says so first, whatever the found gates look like.
    """
    if not topology.judgeable:
        return cannot_judge_sentence(topology)
    if not topology.has_gates:
        return "No gates found: this is a Shared-Bottom (or dense) multi-task model, so there is no routing to inspect."
    critical = [f for f in findings if f.severity == "critical"]
    if critical:
        kinds = sorted({f.title.lower() for f in critical})
        return f"Routing is unhealthy: {', '.join(kinds)} ({plural(len(critical), 'critical finding')})."
    mi = tables.get("mutual_information", pd.DataFrame())
    div = tables.get("task_divergence", pd.DataFrame())
    warn = [f for f in findings if f.severity == "warning"]
    tail = f"; {plural(len(warn), 'warning')} to review" if warn else ""
    if mi.empty or div.empty:
        return f"Gates recorded; no task gates share one expert set to compare directly{tail}."
    nmi = float(mi["normalized"].max())
    tv = float(div["tv_per_row"].max())
    evidence = f"per-row total variation up to {tv:.2f}, normalized task-expert MI {nmi:.2f}"
    if tv >= 0.5 or nmi >= 0.2:
        return f"Yes: the tasks route rows to clearly different experts ({evidence}){tail}."
    if tv >= 0.2:
        return f"Partly: the tasks share most experts but weight them differently ({evidence}){tail}."
    return f"Mostly shared: the tasks' gates route rows much alike ({evidence}){tail}."


def cannot_judge_sentence(topology: Topology) -> str:
    """ "Could not verify the routing: ..." with the first unresolved item (or the low confidence)."""
    items = topology.unresolved
    if items:
        more = f" (and {len(items) - 1} more)" if len(items) > 1 else ""
        found = (
            f"; {plural(len(topology.gates), 'gate')} {'was' if len(topology.gates) == 1 else 'were'} found and "
            "reported, but the routing as a whole is unverified"
            if topology.has_gates
            else ""
        )
        return (
            f"Could not verify the routing: {items[0].line()}{more}{found}. See Topology, and pass a spec "
            "naming the gate (--spec) to judge it."
        )
    return (
        f"Could not verify the routing: discovery is not confident about the gates (confidence "
        f"{topology.confidence:.2f}). See Topology, and pass a spec (--spec) to judge it."
    )


def _labels(frame: pd.DataFrame, tasks: Sequence[TaskSpec], columns: set[str], source: str) -> torch.Tensor:
    """`[batch, T]` float labels, NaN where the column is absent or the value missing; binary ones 0/1."""
    cols = []
    for t in tasks:
        if t.label_column in columns and t.label_column in frame:
            raw = frame[t.label_column]
            try:
                if isinstance(raw.dtype, np.dtype) and raw.dtype.kind in "biuf":  # already numbers
                    values = raw.to_numpy(dtype=np.float64, copy=True)
                else:
                    values = pd.to_numeric(raw).to_numpy(dtype="float64", copy=True)
            except (ValueError, TypeError):
                raise NonNumericError(
                    f"label column {t.label_column!r} of task {t.name!r} in {source} is not numeric "
                    f"(dtype {raw.dtype})"
                ) from None
            if t.kind == "binary":
                bad = ~np.isnan(values) & (values != 0) & (values != 1)
                if bad.any():
                    i = int(np.argmax(bad))
                    raise LabelValueError(
                        f"label column {t.label_column!r} of binary task {t.name!r} in {source} holds "
                        f"{values[i]:g} (row {frame.index[i]}); binary labels must be 0 or 1 (NaN = missing)"
                    )
            cols.append(torch.from_numpy(values))
        else:
            cols.append(torch.full((len(frame),), float("nan"), dtype=torch.float64))
    return torch.stack(cols, dim=1)


def _with_labels(topo: Topology, labels: Mapping[str, str], source: TableSource) -> Topology:
    """`topo` with each task in `labels` reading its label from the named column (which must exist)."""
    names = list(topo.task_names)
    unknown = [t for t in labels if t not in names]
    if unknown:
        hint = "".join(closest(t, names) for t in unknown[:1])
        raise DataError(
            f"labels name task(s) {unknown}{hint} but the model's tasks are {', '.join(names)}; "
            "name the tasks with --tasks or fix --labels"
        )
    require_columns(source, list(labels.values()), what="label")
    tasks = tuple(replace(t, label=labels[t.name]) if t.name in labels else t for t in topo.tasks)
    return replace(topo, tasks=tasks)


def _example_batch(source: TableSource, input_fn: InputFn, feature_cols: list[str] | None) -> Any:
    for frame in source.iter_frames(64, feature_cols, max_rows=64):
        if feature_cols:
            check_features(frame, feature_cols, source.name)
        return input_fn(frame)
    raise DataError(f"{source.name} has no rows")


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


def _host(summary: Any) -> Any:
    """A computed summary (dataclass) with its tensors copied to the host (no-op on CPU)."""
    if not is_dataclass(summary):
        return summary
    moved = {
        f.name: getattr(summary, f.name).cpu()
        for f in fields(summary)
        if isinstance(getattr(summary, f.name), torch.Tensor)
        and getattr(summary, f.name).device.type != "cpu"
    }
    return replace(summary, **moved) if moved else summary


@contextmanager
def _on_device(model: nn.Module, device: str | torch.device | None) -> Iterator[None]:
    """The model on `device` for the block, then back where it was (no-op when None or already there).

    A device that is not available raises a `RecordingError` (one line) before anything moves.
    """
    if device is None:
        yield
        return
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise RecordingError(f"device {str(device)!r}: CUDA is not available on this machine")
    if target.type == "cuda" and target.index is not None and target.index >= torch.cuda.device_count():
        raise RecordingError(
            f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    tensors = [*model.parameters(), *model.buffers()]
    where = {t.device for t in tensors}
    if (
        not tensors
        or where == {target}
        or (target.index is None and {d.type for d in where} == {target.type})
    ):
        yield
        return
    if len(where) > 1:
        raise RecordingError(
            f"the model is spread over {sorted(map(str, where))}: move it yourself instead of passing device="
        )
    original = where.pop()
    model.to(target)
    try:
        yield
    finally:
        model.to(original)


def _range_start(index: pd.Index) -> int | None:
    """The first row of a batch whose index is consecutive rows (a step-1 `RangeIndex`), else None."""
    return int(index.start) if isinstance(index, pd.RangeIndex) and index.step == 1 else None


def _column_picker(cols: Sequence[int], device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """`t -> t[:, cols]` for `[batch, T]` tensors on `device`: a view (no op on the data) when `cols` are
    consecutive, else one `index_select` with an index built once."""
    if cols and list(cols) == list(range(cols[0], cols[0] + len(cols))):
        first, stop = cols[0], cols[0] + len(cols)
        return lambda t: t if (first == 0 and stop == t.shape[1]) else t[:, first:stop]
    index = torch.tensor(list(cols), dtype=torch.int64, device=device)
    return lambda t: t.index_select(1, index)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        if x.device == device:
            return x
        if device.type == "cuda" and x.device.type == "cpu":  # pinned + async: no host wait per batch
            return x.pin_memory().to(device, non_blocking=True)
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(_to_device(v, device) for v in x)
    return x


def _expected_rows(cfg: InspectConfig, source: TableSource) -> int | None:
    """Rows the inspection will see (None when unknown, e.g. CSV)."""
    n = source.n_rows()
    if n is None:
        return None
    if cfg.sample is not None:
        n = int(n * cfg.sample)
    return min(n, cfg.max_rows) if cfg.max_rows is not None else n


def _forward(model: nn.Module, x: Any, first_row: int, n: int) -> Any:
    """Run the model; a failing forward is reported as a bad model/input pair (one line), not as our bug."""
    try:
        return call_model(model, x)  # a tuple input is the forward's positional arguments
    except RecordingError:
        raise
    except Exception as exc:
        text = str(exc).strip().splitlines()
        detail = text[0] if text else type(exc).__name__
        raise RecordingError(
            f"the model's forward failed on rows {first_row}..{first_row + n - 1} "
            f"({type(exc).__name__}: {detail}); check the input mapping (--input/--features/--collate) "
            "or the model code"
        ) from exc


def _expert_sample_rate(cfg: InspectConfig, n_rows: int | None) -> float:
    """Share of rows sampled for expert similarity: about `expert_sample_rows` rows in total when the row
    count is known (deterministic by row hash, so batching and sharding pick the same rows)."""
    if n_rows is None or n_rows <= 0:
        return cfg.expert_sample_rate
    return min(1.0, cfg.expert_sample_rows / n_rows)


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
