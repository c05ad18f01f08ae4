"""`run_causal`: stream labelled data once through a model and its interventions, then build the tables."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from inspect import signature
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mmoe_inspect.binding import bind, expected_rows
from mmoe_inspect.causal._engine import (
    INTACT,
    STRATEGIES,
    Collected,
    Collector,
    InputFn,
    IntactTaps,
    PlannedVariant,
    collect,
    mean_gates,
    prediction_sets,
    remix_runner,
)
from mmoe_inspect.causal._finite import drop_nonfinite_rows, nonfinite_notes
from mmoe_inspect.causal.ablation import ABLATION_COLUMNS, ABLATION_MODES, ablation_table, ablation_variants
from mmoe_inspect.causal.counterfactual import (
    COUNTERFACTUAL_COLUMNS,
    counterfactual_table,
    counterfactual_variants,
)
from mmoe_inspect.causal.gains import (
    BASELINE_COLUMNS,
    SPARSE_COLUMNS,
    baseline_gain_table,
    resolve_baselines,
    sparse_gain_table,
    sparse_tasks,
)
from mmoe_inspect.causal.metrics import INTERVALS, TASK_METRICS, Evaluation
from mmoe_inspect.causal.remix import remix_applies
from mmoe_inspect.causal.result import CausalResult
from mmoe_inspect.causal.segments import SEGMENT_COLUMNS, SegmentRouting
from mmoe_inspect.causal.streamed import (
    EVAL_BYTES_PER_ROW,
    RANKING_PARALLEL_BYTES,
    EvaluationStream,
    StreamedEvaluation,
)
from mmoe_inspect.data.schema import FeatureSpec
from mmoe_inspect.data.sources import DataError, TableSource, require_columns
from mmoe_inspect.device import model_device, to_device
from mmoe_inspect.progress import Progress, Stage, as_progress
from mmoe_inspect.topology.spec import Topology

ANALYSES: tuple[str, ...] = ("ablation", "counterfactuals", "gains", "segments")

MEMORY_BUDGET = 2 * 2**30  # bytes the per-row evaluation state may take by default
PREDICTION_ROWS = 1_000_000  # rows of per-row predictions kept in `CausalResult.predictions` (analytic)


def bytes_per_row(
    sets: int, tasks: int, baselines: int = 0, intervals: str = "bootstrap", threads: int = 1
) -> int:
    """Bytes of memory the causal analyses need per evaluated row.

    "bootstrap" keeps every row in memory: per prediction set and task a float32 prediction (and its
    copy while the batches are joined) and two float64 per-row items (loss or AUC placement, one per
    metric); per task the float64 label and the result's prediction columns. "analytic" streams the
    losses and spills the AUC scores to disk, so memory holds one task's two sets at a time while they
    are ranked (`causal.streamed.EVAL_BYTES_PER_ROW`), whatever the number of sets and threads: further
    ranking threads hold at most `causal.streamed.RANKING_PARALLEL_BYTES` in all, a constant the row cap
    leaves aside (`threads`: torch's thread count; it does not change the bytes a row).
    """
    if intervals == "analytic":
        return EVAL_BYTES_PER_ROW
    return sets * tasks * (4 + 4 + 2 * 8) + tasks * (8 + (2 + baselines) * 8) + 16


def spill_bytes_per_row(sets: int, binary_tasks: int) -> int:
    """Disk bytes per evaluated row of the analytic evaluation: a float32 score per set and binary task (in a
    temporary folder, removed when the evaluation ends; each block's scores are stored positives first)."""
    return binary_tasks * 4 * sets


TASK_COLUMNS = ["task", "kind", "n_labelled", "positive_rate", "sparse", "metric", "value", "lo", "hi"]


def run_causal(
    model: nn.Module,
    data: pd.DataFrame | str | Path | TableSource,
    *,
    topology: Topology | str | Path | None = None,
    input_fn: InputFn | None = None,
    features: FeatureSpec | None = None,
    columns: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    baselines: Mapping[str, Any] | None = None,
    segment_by: str | None = None,
    analyses: Sequence[str] = ANALYSES,
    modes: Sequence[str] = ABLATION_MODES,
    sparse_threshold: float = 0.05,
    max_rows: int | None = None,
    memory_budget: int = MEMORY_BUDGET,
    prediction_rows: int = PREDICTION_ROWS,
    batch_size: int = 4096,
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int = 0,
    intervals: str = "analytic",
    strategy: str = "cached",
    max_stack_rows: int = 16_384,
    mean_gate_rows: int = 20_000,
    max_segments: int = 50,
    max_tracked_segments: int = 10_000,
    sample: float | None = None,
    progress: Progress | None = None,
    stage: str = "causal analyses",
) -> CausalResult:
    """Causal analyses of `model` on labelled `data`: expert ablation, gate counterfactuals, gains, segments.

    Data, topology and inputs are resolved as in `inspect()` (`topology`, `input_fn` / `features`,
    `columns`, `tasks` for discovery, `labels={task: column}`). Every row (at most `max_rows`) is
    streamed once in batches of `batch_size`. With analytic intervals (the default) the per-row losses
    are reduced to streaming moments as the batches pass and the AUC scores of every prediction set
    are spilled to a temporary folder on disk (`spill_bytes_per_row` bytes a row; ``TMPDIR`` picks the
    disk) and ranked one set at a time after the pass, so memory does not grow with the number of
    sets; with bootstrap intervals every set's per-row predictions, losses and placements stay in
    memory. Either way the rows are capped at `memory_budget` bytes (default 2 GiB) of
    `bytes_per_row(...)`; when that cap cuts the data short, a note says so and how to raise it
    (`result.meta["rows_cap"]`). `result.predictions` keeps the first `prediction_rows` rows (analytic;
    bootstrap: all). Before the pass, `mean_gate_rows` leading rows give each gate's mean for the
    `mean_gate` counterfactual.

    `analyses` picks among "ablation" (per expert, `modes` "renormalize"/"zero"), "counterfactuals",
    "gains" (sparse tasks: positive rate < `sparse_threshold`; `baselines={name: model | (model,
    input_fn or FeatureSpec) | Baseline}`) and "segments" (mean gate per value of column
    `segment_by`, at most `max_segments` segments plus "other"). Intervals at level `ci` are
    `intervals="analytic"` (DeLong for AUC and AUC differences, CLT of per-row losses and of paired
    per-row loss differences) or "bootstrap" (percentiles of `n_boot` paired row resamples seeded by
    `seed`; 0 = none).
    `strategy` is "naive" (one forward per variant), "batched" (variants stacked into one forward of
    at most `max_stack_rows` rows) or "cached" (the package's OMoE/MMoE/PLE/CGC: experts run once per
    batch and every variant is re-mixed from their outputs, checked on the first batch; other models:
    batched + expert outputs computed once when their inputs are identical); all give the same numbers. The model is left exactly as found.
    `sample` reads that share of the rows (deterministic in `seed`, the rows `inspect()` read with the
    same `InspectConfig.sample`); `progress` sees each pass over the data as stage
    "`stage` (pass k)".

    Examples::

        >>> res = run_causal(mmoe, "eval.parquet", baselines={"single": single_task, "sb": shared_bottom})
        >>> res.importance()            # task x expert AUC importance (renormalize)
        >>> res.baseline_gains          # task, positive rate, model / baseline metric, gain with CI
    """
    with CausalPlan.of(**locals()) as plan:
        return plan.finish(plan.collect())


class CausalPlan:
    """`run_causal` in steps, so that its data pass can ride along another pass over the same rows.

    Building it checks the arguments, binds the data, runs the mean-gate pre-pass, plans the variants and
    opens the streamed evaluation's spill; then either `collect()` runs the data pass, or `rider(example)`
    gives a `Collector` that another pass over the same rows (the recording pass of `inspect()`) feeds
    batch by batch; then `finish(collected)` evaluates and builds the `CausalResult`. Use it as a context
    manager: the spill folder is removed on exit, also on errors. `CausalPlan.of(model, data, **kw)` takes
    `run_causal`'s keywords, with its defaults.
    """

    @classmethod
    def of(cls, model: nn.Module, data: Any, *, quiet_prepass: bool = False, **kwargs: Any) -> CausalPlan:
        """A plan from `run_causal`'s arguments (its defaults fill the rest; an unknown keyword is a TypeError).
        `quiet_prepass` keeps the mean-gate pre-pass off the progress display (`inspect()` plans before its
        recording pass: a data error there is then the first line the user sees)."""
        bound = signature(run_causal).bind(model, data, **kwargs)
        bound.apply_defaults()
        return cls(bound.arguments, quiet_prepass=quiet_prepass)

    def __init__(self, args: Mapping[str, Any], *, quiet_prepass: bool = False) -> None:
        self.started = time.perf_counter()
        self.stream: EvaluationStream | None = None
        self._rider: Collector | None = None
        self.a = a = dict(args)
        analyses, intervals, strategy = a["analyses"], a["intervals"], a["strategy"]
        max_rows, memory_budget = a["max_rows"], a["memory_budget"]
        unknown = [x for x in analyses if x not in ANALYSES]
        if unknown:
            raise ValueError(f"analyses must be among {', '.join(ANALYSES)}, not {unknown}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
        if intervals not in INTERVALS:
            raise ValueError(f"intervals must be one of {', '.join(INTERVALS)}, not {intervals!r}")
        if max_rows is not None and max_rows < 1:
            raise ValueError(f"max_rows must be positive, got {max_rows}")
        if memory_budget < 1:
            raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
        if a["prediction_rows"] < 0:
            raise ValueError(f"prediction_rows must be >= 0, got {a['prediction_rows']}")
        model = a["model"]
        bound = bind(
            model,
            a["data"],
            topology=a["topology"],
            tasks=a["tasks"],
            features=a["features"],
            input_fn=a["input_fn"],
            columns=a["columns"],
            labels=dict(a["labels"]) if a["labels"] else True,
        )
        self.model = model
        self.source, self.input_fn, self.topo = bound.source, bound.input_fn, bound.topology
        source, topo, segment_by = self.source, self.topo, a["segment_by"]
        self.feature_cols = list(bound.feature_columns) if bound.feature_columns is not None else None
        self.notes: list[str] = []
        notes = self.notes
        self.passes = _Passes(as_progress(a["progress"]), a["stage"], source, a["sample"])
        have = set(source.columns())
        label_cols = [t.label_column for t in topo.tasks if t.label_column in have]
        unlabelled = [t.name for t in topo.tasks if t.label_column not in have]
        if unlabelled:
            notes.append(f"task(s) {unlabelled} have no label column in the data and are not evaluated")
        if not label_cols:
            raise DataError(
                f"{source.name} holds no label column of any task ({[t.label_column for t in topo.tasks]}); "
                "causal analyses need labels (pass labels={task: column})"
            )

        baselines = a["baselines"]
        self.runs, base_notes = resolve_baselines(baselines or {}, topo) if "gains" in analyses else ([], [])
        notes += base_notes
        if baselines and "gains" not in analyses:
            notes.append("baselines were given but 'gains' is not among the analyses; they were not run")
        for run in self.runs:
            if run.columns:
                require_columns(source, list(run.columns))
        if segment_by is not None:
            require_columns(source, [segment_by], what="segment")
        self.read_cols: list[str] | None = None
        if self.feature_cols is not None and all(r.columns is not None for r in self.runs):
            wanted = [*self.feature_cols, *label_cols, *(c for r in self.runs for c in r.columns or ())]
            if segment_by is not None:
                wanted.append(segment_by)
            self.read_cols = list(dict.fromkeys(wanted))

        self.abl_variants: list[PlannedVariant] = []
        self.cf_variants: list[PlannedVariant] = []
        if not topo.has_gates:
            notes.append(f"{topo.why_no_gates}: no ablation, counterfactuals or segments")
        else:
            if "ablation" in analyses or "gains" in analyses:
                self.abl_variants, n = ablation_variants(topo, a["modes"])
                notes += n
            if "counterfactuals" in analyses or "gains" in analyses:
                means = mean_gates(
                    model,
                    topo,
                    source,
                    self.input_fn,
                    rows=a["mean_gate_rows"],
                    batch_size=a["batch_size"],
                    columns=self.feature_cols if self.read_cols is not None else None,
                    sample=a["sample"],
                    seed=a["seed"],
                    progress=None if quiet_prepass else self.passes.next(a["mean_gate_rows"]),
                )
                self.cf_variants, n = counterfactual_variants(topo, means)
                notes += n
        self.variants = self.abl_variants + self.cf_variants

        n_sets = 1 + len({v.signature for v in self.variants}) + len(self.runs)
        self.ranking_threads = max(1, min(torch.get_num_threads(), os.cpu_count() or 1))
        self.per_row = bytes_per_row(n_sets, len(topo.tasks), len(self.runs), intervals, self.ranking_threads)
        # analytic: extra ranking threads may hold up to RANKING_PARALLEL_BYTES of the budget, whatever the rows
        parallel = RANKING_PARALLEL_BYTES if intervals == "analytic" and self.ranking_threads > 1 else 0
        self.rows_cap = max(1, (memory_budget - min(parallel, memory_budget // 2)) // self.per_row)
        self.limit = self.rows_cap if max_rows is None else min(max_rows, self.rows_cap)

        self.segments: SegmentRouting | None = None
        if segment_by is not None and "segments" in analyses and topo.has_gates:
            self.segments = SegmentRouting(segment_by, topo.gates, max_tracked=a["max_tracked_segments"])
        if intervals == "analytic":
            self.stream = EvaluationStream(topo.tasks, prediction_sets(self.variants, self.runs), ci=a["ci"])
            # a disk too small for the spill fails now, not after most of the pass
            self.stream.check_room(expected_rows(source, a["sample"], self.limit))
        self.dropped = np.zeros(len(topo.tasks), dtype=np.int64)
        self.rode_along = False
        self.prepare_seconds = time.perf_counter() - self.started  # binding, mean-gate pre-pass, spill

    # ---------------------------------------------------------------------------------- the pass
    def _on_batch(self, frame: pd.DataFrame, gates: dict) -> None:
        assert self.segments is not None
        self.segments.update(frame[self.a["segment_by"]], gates)

    def _on_predictions(self, labels: np.ndarray, preds: np.ndarray) -> None:
        assert self.stream is not None
        bad = np.isfinite(labels) & ~np.isfinite(preds[0])  # the intact model's NaN rows leave every set
        if bad.any():
            labels = np.where(bad, np.nan, labels)
            self.dropped[:] += bad.sum(0)
        self.stream.update(labels, preds)

    def collect(self) -> Collected:
        """The data pass of its own: every row (at most the plan's limit), read once."""
        a = self.a
        return collect(
            self.model,
            self.topo,
            self.source,
            self.input_fn,
            variants=self.variants,
            baselines=self.runs,
            columns=self.read_cols,
            feature_columns=self.feature_cols or (),
            strategy=a["strategy"],
            batch_size=a["batch_size"],
            max_rows=self.limit,
            max_stack_rows=a["max_stack_rows"],
            on_batch=self._on_batch if self.segments is not None else None,
            sample=a["sample"],
            seed=a["seed"],
            progress=self.passes.next(self.limit),
            on_predictions=self._on_predictions if self.stream is not None else None,
            keep_rows=a["prediction_rows"] if self.stream is not None else None,
        )

    def rider(self, example: Callable[[], Any]) -> Collector | None:
        """A `Collector` that another pass over the plan's rows (same source, `sample` and order) feeds with
        each batch's frame and model input, when the variants can be evaluated without hooks (re-mixing, see
        `causal.remix`, checked on `example()`, a first-batch model input) and no baseline shares a module
        with the model; otherwise None (run `collect()` after that pass). The frames must hold `columns`
        (None: every column)."""
        t0 = time.perf_counter()
        a = self.a
        if a["strategy"] != "cached" or not self.variants or remix_applies(self.model, self.topo) is not None:
            return None
        mine = {id(m) for m in self.model.modules()}
        if any(id(m) in mine for r in self.runs for m in r.model.modules()):
            return None
        x = to_device(example(), model_device(self.model))
        runner = remix_runner(self.model, self.topo, self.variants, x, a["max_stack_rows"])
        self.prepare_seconds += time.perf_counter() - t0
        if runner is None:
            return None
        self.rode_along = True
        assert runner.remix is not None
        paths = runner.remix.tap_paths()
        taps = IntactTaps(self.model, paths) if paths else None
        if taps is not None:
            taps.attach()  # removed by the collector's finish, or by `close`
        self._rider = Collector(
            self.topo,
            runner,
            variants=self.variants,
            baselines=self.runs,
            source=self.source.name,
            on_batch=self._on_batch if self.segments is not None else None,
            on_predictions=self._on_predictions if self.stream is not None else None,
            keep_rows=a["prediction_rows"] if self.stream is not None else None,
            limit=self.limit,
            taps=taps,
            background=True,  # the batch work beside the recording pass's next forward, where a core is spare
        )
        return self._rider

    @property
    def columns(self) -> list[str] | None:
        """The data columns the causal pass reads (None: every column)."""
        return self.read_cols

    # ---------------------------------------------------------------------------------- results
    def finish(self, collected: Collected) -> CausalResult:
        """Evaluate the collected rows (rank the spilled scores, or the bootstrap) and build the tables."""
        a, topo, notes = self.a, self.topo, self.notes
        analyses, intervals, sparse_threshold = a["analyses"], a["intervals"], a["sparse_threshold"]
        max_rows, memory_budget, segment_by = a["max_rows"], a["memory_budget"], a["segment_by"]
        notes += collected.notes
        if collected.n_read >= self.limit:
            if self.limit < (max_rows or self.limit + 1):
                notes.append(
                    f"evaluated the first {collected.n_read:,} rows: the evaluation's {self.per_row:,} bytes a "
                    f"row would exceed the memory budget of {memory_budget / 2**30:.2g} GiB beyond them (raise "
                    "memory_budget, or sample the rows)"
                )
            else:
                notes.append(f"evaluated the first {collected.n_read:,} rows (max_rows)")
        if not collected.n_read:
            raise ValueError(f"{self.source.name} has no rows")
        t_eval = time.perf_counter()
        shown = self.passes.evaluation(collected.n_read)  # ranking / bootstrap: a line of its own
        shown(0)
        ev: Evaluation | StreamedEvaluation
        stream = self.stream
        if stream is not None:
            ev = stream.finish(threads=self.ranking_threads)
            spilled = stream.spilled_bytes
            ranked_on = stream.threads_used
            notes += nonfinite_notes(topo.tasks, self.dropped, [ev.n_labelled(t.name) for t in topo.tasks])
            if collected.n_rows < collected.n_read:
                notes.append(
                    f"result.predictions holds the first {collected.n_rows:,} of the {collected.n_read:,} rows "
                    "(prediction_rows); every value was computed on all of them"
                )
            self.close()
        else:
            labels, dropped_notes = drop_nonfinite_rows(collected.labels, collected.preds[INTACT], topo.tasks)
            notes += dropped_notes
            ev = Evaluation(
                labels,
                topo.tasks,
                collected.preds,
                n_boot=a["n_boot"],
                seed=a["seed"],
                ci=a["ci"],
                intervals=intervals,
            )
            spilled, ranked_on = 0, 0
        shown(collected.n_read)
        shown.finish()
        sparse = set(sparse_tasks(ev, sparse_threshold))

        task_rows = []
        for t in topo.tasks:
            if ev.n_labelled(t.name) == 0:
                continue
            for metric in TASK_METRICS[t.kind]:
                lo, hi = ev.interval(INTACT, t.name, metric)
                task_rows.append(
                    {
                        "task": t.name,
                        "kind": t.kind,
                        "n_labelled": ev.n_labelled(t.name),
                        "positive_rate": ev.positive_rate(t.name),
                        "sparse": t.name in sparse,
                        "metric": metric,
                        "value": ev.value(INTACT, t.name, metric),
                        "lo": lo,
                        "hi": hi,
                    }
                )
        abl_variants, cf_variants, runs = self.abl_variants, self.cf_variants, self.runs
        abl = ablation_table(ev, abl_variants) if abl_variants else pd.DataFrame(columns=ABLATION_COLUMNS)
        cfs = (
            counterfactual_table(ev, cf_variants)
            if cf_variants
            else pd.DataFrame(columns=COUNTERFACTUAL_COLUMNS)
        )
        sparse_tab = pd.DataFrame(columns=SPARSE_COLUMNS)
        base_tab = pd.DataFrame(columns=BASELINE_COLUMNS)
        if "gains" in analyses:
            means_seen = {g: collected.mean_gate(g) for g in collected.gate_sums if collected.gate_rows[g]}
            sparse_tab = sparse_gain_table(ev, topo, means_seen, abl, cfs, sparse_threshold)
            base_tab = baseline_gain_table(ev, [r.name for r in runs], sparse_threshold)
            if not sparse:
                notes.append(f"no binary task has a positive rate below {sparse_threshold:g}: no sparse task")
        if "ablation" not in analyses:
            abl = pd.DataFrame(columns=ABLATION_COLUMNS)
        if "counterfactuals" not in analyses:
            cfs = pd.DataFrame(columns=COUNTERFACTUAL_COLUMNS)
        segments = self.segments
        seg_tab = (
            segments.table(a["max_segments"])
            if segments is not None
            else pd.DataFrame(columns=SEGMENT_COLUMNS)
        )
        if segments is not None and segments.overflowed:
            notes.append(
                f"column {segment_by!r} has more than {a['max_tracked_segments']:,} distinct values; later new "
                "values were summed into 'other'"
            )

        pred_cols: dict[str, np.ndarray] = {"row": collected.row_index}
        for j, t in enumerate(topo.tasks):
            pred_cols[f"label:{t.name}"] = collected.labels[:, j]
            pred_cols[f"model:{t.name}"] = collected.preds[INTACT][:, j]
            for r in runs:
                col = collected.preds[("baseline", r.name)][:, j]
                if np.isfinite(col).any():
                    pred_cols[f"{r.name}:{t.name}"] = col
        return CausalResult(
            topology=topo,
            task_metrics=pd.DataFrame(task_rows, columns=TASK_COLUMNS),
            ablation=abl,
            counterfactuals=cfs,
            sparse_gains=sparse_tab,
            baseline_gains=base_tab,
            segments=seg_tab,
            predictions=pd.DataFrame(pred_cols),
            n_rows=collected.n_read,
            notes=list(dict.fromkeys(notes)),
            meta={
                "data": self.source.name,
                "strategy": collected.strategy,
                "forwards": collected.forwards,
                "cached_calls": collected.cached_calls,
                "remixed": collected.remixed,
                "rode_along": self.rode_along,
                "prepare_seconds": self.prepare_seconds,
                "collect_seconds": collected.seconds,
                # of the riding work, the seconds a worker thread ran beside the recording pass (not in
                # collect_seconds, which is what the work added to the pass's time)
                "collect_beside_seconds": collected.beside,
                "evaluate_seconds": time.perf_counter() - t_eval,
                # riding along, the pass's time is the recording's: only the causal work is counted
                "seconds": self.prepare_seconds + collected.seconds + time.perf_counter() - t_eval,
                "intervals": intervals,
                "n_boot": ev.n_boot if intervals == "bootstrap" else None,
                "ci": a["ci"],
                "seed": a["seed"],
                "max_rows": max_rows,
                "memory_budget": memory_budget,
                "bytes_per_row": self.per_row,
                "rows_cap": self.rows_cap,
                "spilled_bytes": spilled,
                "ranking_threads": ranked_on,
                "prediction_rows": a["prediction_rows"] if stream is not None else None,
                "batch_size": a["batch_size"],
                "mean_gate_rows": a["mean_gate_rows"],
                "sparse_threshold": sparse_threshold,
                "variants": len(self.variants),
            },
        )

    def close(self) -> None:
        """Remove the spill folder and the rider's hooks (idempotent)."""
        if self._rider is not None:  # closed already, unless an error cut the pass short: never raise over it
            self._rider.close(raise_errors=False)
        if self.stream is not None:
            self.stream.close()

    def __enter__(self) -> CausalPlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Passes:
    """Names the passes over the data ("causal analyses of m.pt (pass 2)") for the progress display."""

    def __init__(self, progress: Progress, stage: str, source: TableSource, sample: float | None) -> None:
        self.progress, self.stage, self.count = progress, stage, 0
        self.source, self.sample = source, sample

    def next(self, limit: int | None) -> Stage:
        """The next pass, reading at most `limit` rows."""
        self.count += 1
        total = expected_rows(self.source, self.sample, limit)
        return Stage(self.progress, f"{self.stage} (pass {self.count})", limit if total is None else total)

    def evaluation(self, rows: int) -> Stage:
        """The evaluation of the `rows` collected (AUC ranking or bootstrap), after the data pass."""
        return Stage(self.progress, f"{self.stage} (evaluation)", rows)
