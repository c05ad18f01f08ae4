"""The streaming engine: run the intact model and every intervened variant over the same batches.

Per batch the data is read and converted ONCE; then, by `strategy`:

* `"naive"`: one forward per variant (intact first): V+1 forwards of `b` rows.
* `"batched"`: the batch is stacked K times and ONE forward evaluates K variants (block k gets
  variant k's gate edits); groups are capped at `max_stack_rows` rows per forward. Variants that
  swap in another gate's intact rows run in a second stacked forward, after the intact block.
* `"cached"`: for the package's own OMoE/MMoE/PLE/CGC classes, re-mixing (`causal.remix`): the
  experts run once per batch and every variant's mixtures are re-mixed from their cached outputs,
  only what depends on an edited gate (a PLE's later levels, the towers) running again. For any
  other model, `"batched"` plus the expert cache: expert and gate modules whose input blocks are
  bitwise identical (all those before the first edited gate) run once on the sub-batch.

Stacking assumes the model treats rows independently (true in eval mode without cross-row ops); the
first batch checks it against a plain forward and falls back to `"naive"` (with a note) if not.
Per-row predictions are kept (`[n, T]` float32 per variant) for the bootstrap, up to `max_rows` rows, or
handed batch by batch to a streamed evaluation (`on_predictions`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from mmoe_inspect.binding import read_labels, task_predictions
from mmoe_inspect.causal.interventions import (
    Edit,
    GateIntervention,
    InterventionError,
    Replace,
    map_tensors,
    repeat_rows,
)
from mmoe_inspect.causal.remix import Remixer, remix_applies
from mmoe_inspect.data.call import call_model, input_rows
from mmoe_inspect.data.sources import TableSource, check_features
from mmoe_inspect.device import model_device, to_device
from mmoe_inspect.progress import Stage
from mmoe_inspect.recording.hooks import HookSession
from mmoe_inspect.recording.recorder import GateRecorder, checked_forward, model_mode
from mmoe_inspect.stats.worker import StatsWorker, spare_cores
from mmoe_inspect.topology.spec import TaskSpec, Topology

Strategy = Literal["naive", "batched", "cached"]
STRATEGIES: tuple[str, ...] = ("naive", "batched", "cached")
INTACT = "intact"
"""Key of the intact model's predictions."""

InputFn = Callable[[pd.DataFrame], Any]

REMIX_CHECK_ROWS = 64
"""Rows of the first batch on which re-mixed variants are compared with one forward per variant."""

MIN_BLOCK_ROWS = 256
"""Stacked strategies never cut a batch into sub-batches smaller than this (per-forward overhead)."""


@dataclass(frozen=True)
class PlannedVariant:
    """One intervened model: `key` (a hashable tuple naming it), `edits` `{gate: edit}`, table `meta`."""

    key: Hashable
    edits: Mapping[str, Edit]
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def needs_intact(self) -> bool:
        """True when an edit swaps in another gate's intact rows (so the intact forward must come first)."""
        return any(isinstance(e, Replace) and e.source is not None for e in self.edits.values())

    @property
    def signature(self) -> frozenset[tuple[str, Edit]]:
        return frozenset(self.edits.items())


@dataclass(frozen=True)
class BaselineRun:
    """A resolved baseline: its model, how to build its inputs, and which main-model tasks it predicts."""

    name: str
    model: nn.Module
    input_fn: InputFn
    tasks: tuple[TaskSpec, ...]  # its own output specs, named like the main model's tasks
    columns: tuple[str, ...] | None  # data columns it reads (None: unknown, read all)


@dataclass
class Collected:
    """Everything the analyses need, per row: labels, predictions per variant/baseline, gate means."""

    tasks: tuple[TaskSpec, ...]
    row_index: np.ndarray  # [n] global row positions in the source
    labels: np.ndarray  # [n, T] float64, NaN = missing
    preds: dict[Hashable, np.ndarray]  # key -> [n, T] float32 (binary tasks as probabilities)
    gate_sums: dict[str, np.ndarray]  # gate -> [E] float64 sum of intact probabilities over rows
    gate_rows: dict[str, int]
    strategy: str
    forwards: int
    seconds: float
    n_read: int  # rows the pass read (more than `n_rows` when only the first ones were kept)
    cached_calls: int = 0  # expert/gate module calls the expert cache ran on one block instead of K
    remixed: bool = False  # variants were re-mixed from cached expert outputs (`causal.remix`)
    notes: list[str] = field(default_factory=list)
    beside: float = 0.0  # seconds of batch work a worker thread ran beside the feeding pass (`Collector`)

    @property
    def n_rows(self) -> int:
        """Rows whose per-row arrays are kept (`keep_rows`); `n_read` is every row the pass read."""
        return len(self.row_index)

    def mean_gate(self, gate: str) -> np.ndarray:
        return self.gate_sums[gate] / max(self.gate_rows.get(gate, 0), 1)


def predictions(out: Any, tasks: Sequence[TaskSpec]) -> Tensor:
    """`[rows, T]` float predictions in task order; binary tasks given as logits are passed through a sigmoid
    (`task_predictions`)."""
    return task_predictions(out, tasks)


def mean_gates(
    model: nn.Module,
    topology: Topology,
    source: TableSource,
    input_fn: InputFn,
    *,
    rows: int,
    batch_size: int,
    columns: Sequence[str] | None,
    sample: float | None = None,
    seed: int = 0,
    progress: Stage | None = None,
) -> dict[str, tuple[float, ...]]:
    """Each gate's mean probabilities `[E]` over the first `rows` rows of `source` (intact model);
    `sample`/`seed` thin the rows as `TableSource.iter_frames` does, `progress` sees the rows done."""
    sums = {g.name: torch.zeros(g.n_experts, dtype=torch.float64) for g in topology.gates}
    seen = {g.name: 0 for g in topology.gates}
    device = model_device(model)
    with GateRecorder(model, topology) as rec, torch.inference_mode():
        done = 0
        for frame in source.iter_frames(batch_size, columns, rows, sample=sample, seed=seed):
            checked_forward(model, to_device(input_fn(frame), device), done, len(frame))
            for name, g in rec.take().gates.items():
                sums[name] += g.double().sum(0).cpu()
                seen[name] += g.shape[0]
            done += len(frame)
            if progress is not None:
                progress(done)
    if progress is not None:
        progress.finish()
    return {k: tuple((v / max(seen[k], 1)).tolist()) for k, v in sums.items()}


class _Runner:
    """Evaluates the intact model and the variants on one batch, by `strategy`."""

    def __init__(
        self,
        model: nn.Module,
        topology: Topology,
        variants: Sequence[PlannedVariant],
        strategy: str,
        max_stack_rows: int,
        iv: GateIntervention,
        remix: bool = True,
    ) -> None:
        self.model, self.topology, self.iv = model, topology, iv
        self.variants = list(variants)
        self.strategy = strategy
        self.max_stack_rows = max_stack_rows
        self.forwards = 0
        self.checked = strategy == "naive"
        self.notes: list[str] = []
        self.remix: Remixer | None = None
        if remix and strategy == "cached" and self.variants and remix_applies(model, topology) is None:
            self.remix = Remixer(model, topology, [v.edits for v in self.variants])
        self.remixed = False  # whether re-mixing passed its first-batch check and is in use

    def _remixed(
        self, x: Any, b: int, taps: Mapping[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Every variant of the batch by re-mixing cached expert outputs: `[1 + V, b, T]` and the intact gates
        (`taps`: see `Remixer.run`)."""
        assert self.remix is not None
        out = self.remix.run(x, taps)
        self.forwards += 1
        p = predictions(out, self.topology.tasks)
        k = 1 + len(self.variants)
        if p.shape[0] != k * b:
            raise InterventionError(f"re-mixing gave {p.shape[0]} rows for {k} variants of {b} rows")
        return p.reshape(k, b, -1), dict(self.remix.captured)

    def _check_remix(self, x: Any, b: int) -> tuple[Tensor, dict[str, Tensor]] | None:
        """Re-mixed results of the first batch if they match plain forwards (intact rows) and one forward per
        variant on the first rows; else None, with a note, and re-mixing is not used again."""
        assert self.remix is not None
        plain = self._forward(x, [{}], b, capture=False)[0]
        why = ""
        try:
            out, captured = self._remixed(x, b)
        except (InterventionError, KeyError) as exc:
            why = f"it failed ({exc})"
        else:
            n = min(b, REMIX_CHECK_ROWS)
            xs = map_tensors(x, lambda t: t[:n] if t.dim() else t)
            ref, _ = self._naive(xs, n)
            if set(captured) != {g.name for g in self.topology.gates}:
                why = "it did not reach every gate of the topology"
            elif not torch.allclose(plain, out[0], rtol=1e-4, atol=1e-6, equal_nan=True):
                why = "its intact predictions differ from a plain forward"
            elif not torch.allclose(ref, out[:, :n], rtol=1e-4, atol=1e-6, equal_nan=True):
                why = "its variant predictions differ from one forward per variant"
        if why:
            self.notes.append(
                f"re-mixing cached expert outputs was not used: {why}; ran the hook-based expert cache"
            )
            self.remix = None
            return None
        self.remixed = True
        return out, captured

    def _forward(self, x: Any, variants: list[Mapping[str, Edit]], b: int, capture: bool) -> Tensor:
        self.iv.plan(variants, b, capture=capture)
        k = len(variants)
        out = call_model(self.model, repeat_rows(x, k) if k > 1 else x)
        self.forwards += 1
        p = predictions(out, self.topology.tasks)
        if p.shape[0] != k * b:
            raise RuntimeError(f"the model returned {p.shape[0]} rows for an input of {k * b} rows")
        return p.reshape(k, b, -1)

    def run(
        self, x: Any, b: int, taps: Mapping[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Predictions `[1 + V, b, T]` (intact first, then the variants in order) and the intact gates.
        `taps`: intact module outputs of the model's own forward on `x`, for a re-mixer that passed its check."""
        if self.remix is not None:
            if self.remixed:
                return self._remixed(x, b, taps)
            checked = self._check_remix(x, b)
            if checked is not None:
                return checked
        if self.strategy != "naive" and not self.checked:
            plain = self._forward(x, [{}], b, capture=False)[0]
            out, captured = self._stacked(x, b)
            self.checked = True
            if torch.allclose(plain, out[0], rtol=1e-4, atol=1e-6, equal_nan=True):
                return out, captured
            self.notes.append(
                f"strategy {self.strategy!r} gave different intact predictions in a stacked forward (the model "
                "mixes rows, e.g. batch statistics); fell back to 'naive' (one forward per variant)"
            )
            self.strategy = "naive"
        if self.strategy == "naive":
            return self._naive(x, b)
        return self._stacked(x, b)

    def _naive(self, x: Any, b: int) -> tuple[Tensor, dict[str, Tensor]]:
        outs = [self._forward(x, [{}], b, capture=True)[0]]
        captured = dict(self.iv.captured)
        self.iv.sources = captured
        for v in self.variants:
            outs.append(self._forward(x, [v.edits], b, capture=False)[0])
        return torch.stack(outs), captured

    def _stacked(self, x: Any, b: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Sub-batches of `sub` rows, each stacked into forwards of at most `max_stack_rows` rows.

        Keeping the stacked forward small (cache-sized activations) matters more on CPU than one huge
        forward: the batch is cut into sub-batches so that all variants of one pass fit in one forward.
        """
        first = [i for i, v in enumerate(self.variants) if not v.needs_intact]
        second = [i for i, v in enumerate(self.variants) if v.needs_intact]
        widest = 1 + max(len(first), len(second))
        sub = min(b, max(MIN_BLOCK_ROWS, self.max_stack_rows // widest))
        per = max(1, self.max_stack_rows // sub)  # blocks per forward
        outs: list[Tensor] = []
        caps: list[dict[str, Tensor]] = []
        for start in range(0, b, sub):
            stop = min(b, start + sub)
            xs = map_tensors(x, lambda t, start=start, stop=stop: t[start:stop] if t.dim() else t)
            n = stop - start
            results: dict[int, Tensor] = {}
            head = first[: per - 1]
            block = self._forward(xs, [{}] + [self.variants[i].edits for i in head], n, capture=True)
            intact = block[0]
            captured = dict(self.iv.captured)
            results.update({i: block[1 + k] for k, i in enumerate(head)})
            self.iv.sources = captured
            for group in (first[per - 1 :], second):
                for g0 in range(0, len(group), per):
                    idx = group[g0 : g0 + per]
                    block = self._forward(xs, [self.variants[i].edits for i in idx], n, capture=False)
                    results.update({i: block[k] for k, i in enumerate(idx)})
            outs.append(torch.stack([intact] + [results[i] for i in range(len(self.variants))]))
            caps.append(captured)
        merged = {g: torch.cat([c[g] for c in caps]) for g in caps[0]}
        return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)), merged


def _unique(variants: Sequence[PlannedVariant]) -> list[PlannedVariant]:
    """The variants with distinct edits, first occurrence kept, in order."""
    seen: dict[frozenset[tuple[str, Edit]], PlannedVariant] = {}
    for v in variants:
        seen.setdefault(v.signature, v)
    return list(seen.values())


def prediction_sets(
    variants: Sequence[PlannedVariant], baselines: Sequence[BaselineRun] = ()
) -> dict[Hashable, int]:
    """Each prediction set's position on the first axis of `collect`'s per-batch predictions: the intact
    model 0, the distinct variants 1..U (identical variants share one), then the baselines."""
    by_signature = {v.signature: i for i, v in enumerate(_unique(variants), start=1)}
    positions: dict[Hashable, int] = {INTACT: 0}
    positions.update({v.key: by_signature[v.signature] for v in variants})
    first = 1 + len(by_signature)
    positions.update({("baseline", bl.name): first + i for i, bl in enumerate(baselines)})
    return positions


def collect(
    model: nn.Module,
    topology: Topology,
    source: TableSource,
    input_fn: InputFn,
    *,
    variants: Sequence[PlannedVariant] = (),
    baselines: Sequence[BaselineRun] = (),
    columns: Sequence[str] | None = None,
    feature_columns: Sequence[str] = (),
    strategy: str = "cached",
    batch_size: int = 4096,
    max_rows: int | None = 200_000,
    max_stack_rows: int = 16_384,
    on_batch: Callable[[pd.DataFrame, dict[str, Tensor]], None] | None = None,
    sample: float | None = None,
    seed: int = 0,
    progress: Stage | None = None,
    remix: bool = True,
    on_predictions: Callable[[np.ndarray, np.ndarray], None] | None = None,
    keep_rows: int | None = None,
) -> Collected:
    """Stream `source` once; per batch run the intact model, every variant and every baseline.

    `columns` are the data columns to read (None: all); `feature_columns` are checked to be numeric
    and finite in every chunk; `sample`/`seed` thin the rows as `TableSource.iter_frames` does and
    `progress` sees the rows done. `on_batch(frame, intact_gates)` sees each
    chunk with the intact gate probabilities `{gate: [b, E]}` (segment statistics use it).
    Identical variants (same edits) are evaluated once and share their predictions. `remix=False`
    keeps strategy "cached" on the hook-based expert cache (benchmarks compare the two).
    `on_predictions(labels [b, T], preds [K, b, T])` sees every batch's labels and the float32 predictions of
    every set, positioned as `prediction_sets(variants, baselines)` says (streamed evaluation); then the
    result keeps per-row predictions of the intact model and the baselines only, for the first `keep_rows`
    rows (None: all).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    if batch_size < 1 or max_stack_rows < 1:
        raise ValueError("batch_size and max_stack_rows must be positive")
    unique = _unique(variants)
    device = model_device(model)
    feature_cols = list(feature_columns)
    started = time.perf_counter()
    iv = GateIntervention(model, topology, dedupe=strategy == "cached")
    runner = _Runner(model, topology, unique, strategy, max_stack_rows, iv, remix)
    batches = Collector(
        topology,
        runner,
        variants=variants,
        baselines=baselines,
        source=source.name,
        on_batch=on_batch,
        on_predictions=on_predictions,
        keep_rows=keep_rows,
    )
    with iv, torch.no_grad():  # not inference_mode: the expert cache keys on tensor version counters
        for frame in source.iter_frames(batch_size, columns, max_rows, sample=sample, seed=seed):
            if feature_cols:
                check_features(frame, feature_cols, source.name)
            batches.step(frame, to_device(input_fn(frame), device))
            if progress is not None:
                progress(batches.done)
    if progress is not None:
        progress.finish()
    if not batches.done:
        raise ValueError(f"{source.name} has no rows")
    return batches.finish(time.perf_counter() - started, deduped_calls=iv.deduped_calls)


def remix_runner(
    model: nn.Module,
    topology: Topology,
    variants: Sequence[PlannedVariant],
    example: Any,
    max_stack_rows: int = 16_384,
) -> _Runner | None:
    """A runner that evaluates every variant by re-mixing alone (no hooks: it can run inside another pass
    over the same rows, e.g. the recording pass), when re-mixing applies to the model and passes the
    first-batch check on `example` (a model input, on the model's device); otherwise None."""
    unique = _unique(variants)
    if not unique or remix_applies(model, topology) is not None:
        return None
    try:
        b = input_rows(example)
    except ValueError:  # no batched tensor to check on: the pass of its own tells what is wrong
        return None
    iv = GateIntervention(model, topology, dedupe=True)
    runner = _Runner(model, topology, unique, "cached", max_stack_rows, iv, True)
    try:
        with iv, torch.no_grad():
            if runner._check_remix(example, b) is None:
                return None
    except Exception:  # the model fails on its first rows: the pass that reads them reports it in one line
        return None
    runner.remix = Remixer(model, topology, [v.edits for v in unique])  # fresh work buffers for the pass
    runner.forwards = 0
    return runner


class IntactTaps(HookSession):
    """Keeps, by reference, the outputs of `paths`' modules in the model's last forward (`take()`): riding
    along another pass's forward, the re-mixer takes the experts' and gates' outputs `[b, D]` / `[b, E]`
    from it instead of running them again (`Remixer.tap_paths`). Modes are left alone."""

    training_mode = None

    def __init__(self, model: nn.Module, paths: Sequence[str]) -> None:
        super().__init__(model)
        self.paths = list(paths)
        self.last: dict[str, Tensor] = {}

    def _register(self) -> None:
        modules = dict(self.model.named_modules())
        for path in self.paths:
            self.add_handle(modules[path].register_forward_hook(self._keeper(path)))

    def _keeper(self, path: str) -> Callable[..., None]:
        def keep(module: nn.Module, args: Any, out: Any) -> None:
            if isinstance(out, Tensor):
                self.last[path] = out

        return keep

    def take(self, batch: int, rows: int) -> dict[str, Tensor]:
        """The outputs kept since the last `take`, cut to their first `rows` rows; empty unless every path's
        output is there with `batch` rows (the forward of the batch in hand)."""
        last, self.last = self.last, {}
        if len(last) != len(self.paths) or any(t.dim() == 0 or t.shape[0] != batch for t in last.values()):
            return {}
        return {p: t if batch == rows else t[:rows] for p, t in last.items()}

    def _closing(self) -> None:
        self.last = {}


RIDE_QUEUED = 2
"""Batches a background `Collector` holds at most (one worked on, one waiting): the caller's next forward
need not wait for the worker to finish the batch before."""


class Collector:
    """The per-batch half of `collect`: the intact model, every variant and every baseline on one batch of
    rows, then the per-row arrays and gate sums kept for the analyses (`finish`).

    `collect` feeds it from its own pass over the data; `causal.run.CausalPlan.rider` feeds it from another
    pass over the same rows (the recording pass), with a `remix_runner`. `limit` caps the rows it takes.

    `background=True` (the rider, on CPU): once the re-mixer passed its first-batch check and the batch's
    intact taps hold every expert and gate it reads, and no hook sits on a module it calls (`_unhooked`),
    the batch's work runs in a worker thread (`StatsWorker`: in order, at most `RIDE_QUEUED` batches,
    on the caller's number of intra-op threads, errors re-raised in the caller) while the caller goes on
    with the next forward, whenever the CPU has a core spare for each of its torch threads (`spare_cores`).
    The baselines run in the caller. The same work on the same tensors in the same order: the same
    results. The feeding pass calls `end` before it ends, also when it raises (its eval mode and hooks
    still in place).
    """

    def __init__(
        self,
        topology: Topology,
        runner: _Runner,
        *,
        variants: Sequence[PlannedVariant] = (),
        baselines: Sequence[BaselineRun] = (),
        source: str = "the data",
        on_batch: Callable[[pd.DataFrame, dict[str, Tensor]], None] | None = None,
        on_predictions: Callable[[np.ndarray, np.ndarray], None] | None = None,
        keep_rows: int | None = None,
        limit: int | None = None,
        taps: IntactTaps | None = None,
        background: bool = False,
    ) -> None:
        self.topology, self.runner, self.source = topology, runner, source
        self.taps = taps
        self.unique = _unique(variants)
        self.positions = prediction_sets(variants, baselines)
        self.baselines = list(baselines)
        self.on_batch, self.on_predictions = on_batch, on_predictions
        self.keep = None if keep_rows is None else max(0, keep_rows)
        self.limit = limit
        self.device = device = model_device(runner.model)
        # on the model's device until the pass ends: no per-batch host copy
        self.preds_parts: list[Tensor] = []
        self.base_parts: dict[str, list[np.ndarray]] = {bl.name: [] for bl in baselines}
        self.label_parts: list[np.ndarray] = []
        self.index_parts: list[np.ndarray] = []
        self.gate_totals = {
            g.name: torch.zeros(g.n_experts, dtype=torch.float64, device=device) for g in topology.gates
        }
        self.gate_rows = {g.name: 0 for g in topology.gates}
        self.done = 0  # rows whose work is done
        self.taken = 0  # rows taken (done, or in the worker)
        self.busy = 0.0  # seconds the caller spent in `step` and waiting for the worker
        self.beside = 0.0  # seconds of batch work the worker ran beside the caller
        # the worker computes on as many intra-op threads as the caller: the same kernels, the same bits
        self._worker = (
            StatsWorker(queued=RIDE_QUEUED, threads=torch.get_num_threads())
            if background and self.device.type == "cpu"
            else None
        )
        self._hook_free: bool | None = None

    @property
    def full(self) -> bool:
        """True once `limit` rows were taken (later batches are ignored)."""
        return self.limit is not None and self.taken >= self.limit

    def step(
        self, frame: pd.DataFrame, x: Any, input_fn: InputFn | None = None, labels: np.ndarray | None = None
    ) -> None:
        """One batch: `frame` its rows, `x` the model input built from them (moved to the model's device),
        `labels` `[b, T]` as `read_labels` gives them for this collector's tasks when the caller has read them
        (else they are read here). Rows past `limit` are dropped; when that cuts the batch, `input_fn`
        rebuilds `x` from the rows kept."""
        if self.full:
            self.close()
            return
        t0 = time.perf_counter()
        full_rows = len(frame)
        if self.limit is not None and self.taken + len(frame) > self.limit:
            frame = frame.iloc[: self.limit - self.taken]
            if input_fn is None:
                raise ValueError("a batch cut at the row limit needs input_fn to rebuild its model input")
            x = input_fn(frame)
        x = to_device(x, self.device)
        b = len(frame)
        taps = self.taps.take(full_rows, b) if self.taps is not None else None
        self.taken += b
        # the baselines run here (their input functions and models are the user's, maybe not thread-safe),
        # with the intervention's hooks neutral: a baseline sharing modules with the model (the model itself)
        # must not see the variants planned for the model's last forward
        if self.baselines:
            self.runner.iv.plan([{}], b)
        base = [_baseline_batch(bl, frame, self.topology.tasks) for bl in self.baselines]
        if self._overlaps(taps):
            self._worker.submit(lambda: self._timed(frame, x, b, taps, labels, base))  # type: ignore[union-attr]
        else:
            if self._worker is not None:
                self._worker.wait()  # timed with this step, not also as a wait
            self._batch(frame, x, b, taps, labels, base)
        self.busy += time.perf_counter() - t0

    def _overlaps(self, taps: Mapping[str, Tensor] | None) -> bool:
        """Whether this batch's work goes to the worker (see the class doc)."""
        remix = self.runner.remix
        return (
            self._worker is not None
            and self.runner.remixed
            and remix is not None
            and taps is not None
            and set(remix.tap_paths()) <= set(taps)
            and spare_cores() >= torch.get_num_threads()  # the worker's team of as many threads gets cores
            and self._unhooked(remix.tap_paths())
        )

    def _unhooked(self, tapped: Sequence[str]) -> bool:
        """No hook can fire from the worker: no global module hook, and none on a module the re-mixer may
        call (every module but the model itself and the tapped experts and gates, which it takes from the
        taps). Checked once, at the first batch that could go to the worker (the pass's hooks in place)."""
        if self._hook_free is None:
            from torch.nn.modules import module as torch_module

            skip = tuple(f"{p}." for p in tapped)
            self._hook_free = not any(
                getattr(torch_module, name, None)
                for name in ("_global_forward_hooks", "_global_forward_pre_hooks")
            ) and not any(
                m._forward_hooks or m._forward_pre_hooks
                for name, m in self.runner.model.named_modules()
                if name and name not in tapped and not name.startswith(skip)
            )
        return self._hook_free

    def _timed(self, *args: Any) -> None:
        t0 = time.perf_counter()
        self._batch(*args)
        self.beside += time.perf_counter() - t0

    def wait(self) -> None:
        """Wait for the batches in the worker, if any (a batch's error is raised here). The feeding pass calls
        this before it ends, so that they run under its settings (the model in eval mode, its hooks)."""
        if self._worker is not None:
            t0 = time.perf_counter()
            self._worker.wait()
            self.busy += time.perf_counter() - t0

    def end(self, failed: bool) -> None:
        """The feeding pass's last call, still inside it: `wait` (`failed=False`), or, when the pass is
        raising, stop the worker without raising: the batch it runs finishes, the queued ones are skipped
        (their results would be thrown away, and they must not run once the pass restored the model)."""
        if not failed:
            self.wait()
        elif self._worker is not None:
            self._worker.close(raise_errors=False, cancel=True)

    def _batch(
        self,
        frame: pd.DataFrame,
        x: Any,
        b: int,
        taps: Mapping[str, Tensor] | None,
        labels: np.ndarray | None,
        base: list[np.ndarray],
    ) -> None:
        """The batch's work: every variant, the kept rows, the gate sums (in the caller or the worker); `base`
        the baselines' predictions `[b, T]` each."""
        tasks = self.topology.tasks
        out, captured = self.runner.run(x, b, taps)
        labels = read_labels(frame, tasks, self.source) if labels is None else labels[:b]
        kept = b if self.keep is None else max(0, min(b, self.keep - self.done))
        if self.on_predictions is not None:
            host = out.float().cpu().numpy()
            if base:
                host = np.concatenate([host, np.stack(base)])
            self.on_predictions(labels, host)
        if kept:  # streamed: only the intact model's rows are kept (the result's prediction columns)
            part = out[:1, :kept].clone() if self.on_predictions is not None else out[:, :kept]
            self.preds_parts.append(part.float())
            self.label_parts.append(labels[:kept])
            self.index_parts.append(frame.index.to_numpy(dtype=np.int64)[:kept])
            for bl, part in zip(self.baselines, base, strict=True):
                self.base_parts[bl.name].append(part[:kept])
        for name, g in captured.items():
            self.gate_totals[name] += g.double().sum(0)
            self.gate_rows[name] += g.shape[0]
        if self.on_batch is not None:
            self.on_batch(frame, {k: v.cpu() for k, v in captured.items()})
        self.done += b

    def finish(self, seconds: float | None = None, deduped_calls: int = 0) -> Collected:
        """The rows taken as a `Collected` (`seconds`: the pass's time, default the time spent in `step`); the
        taps' hooks are removed."""
        self.close()
        tasks, runner = self.topology.tasks, self.runner
        k = 1 if self.on_predictions is not None else 1 + len(self.unique)
        stacked = (
            torch.cat(self.preds_parts, dim=1).cpu().numpy()
            if self.preds_parts
            else np.zeros((k, 0, len(tasks)), dtype=np.float32)
        )  # [1 + V (streamed: 1), kept rows, T]
        preds: dict[Hashable, np.ndarray] = {}
        for key, pos in self.positions.items():
            if pos < k:
                preds[key] = stacked[pos]
        for bl in self.baselines:
            parts = self.base_parts[bl.name]
            preds[("baseline", bl.name)] = (
                np.concatenate(parts) if parts else np.zeros((0, len(tasks)), dtype=np.float32)
            )
        notes = list(runner.notes)
        if deduped_calls == 0 and runner.strategy == "cached" and self.unique and not runner.remixed:
            notes.append(
                "expert cache: no expert or gate module had identical input blocks; ran as 'batched'"
            )
        return Collected(
            tasks=tasks,
            row_index=np.concatenate(self.index_parts) if self.index_parts else np.zeros(0, dtype=np.int64),
            labels=np.concatenate(self.label_parts) if self.label_parts else np.zeros((0, len(tasks))),
            n_read=self.done,
            preds=preds,
            gate_sums={name: t.cpu().numpy() for name, t in self.gate_totals.items()},
            gate_rows=self.gate_rows,
            strategy=runner.strategy,
            forwards=runner.forwards,
            seconds=self.busy if seconds is None else seconds,
            cached_calls=deduped_calls,
            remixed=runner.remixed,
            notes=notes,
            beside=self.beside,
        )

    def close(self, *, raise_errors: bool = True) -> None:
        """Wait for the worker and stop it, remove the taps' hooks (idempotent). With
        `raise_errors=False` (another exception is propagating) a failed batch's error is dropped."""
        try:
            if self._worker is not None:
                t0 = time.perf_counter()
                self._worker.close(raise_errors=raise_errors)
                self.busy += time.perf_counter() - t0
        finally:
            if self.taps is not None:
                self.taps.close()


def _baseline_batch(bl: BaselineRun, frame: pd.DataFrame, tasks: Sequence[TaskSpec]) -> np.ndarray:
    """A baseline's predictions `[b, T]` in the main model's task order (NaN for tasks it lacks)."""
    device = model_device(bl.model)
    out = np.full((len(frame), len(tasks)), np.nan, dtype=np.float32)
    with model_mode(bl.model, training=False):
        p = predictions(call_model(bl.model, to_device(bl.input_fn(frame), device)), bl.tasks)
    names = [t.name for t in tasks]
    for j, t in enumerate(bl.tasks):
        if t.name in names:
            out[:, names.index(t.name)] = p[:, j].float().cpu().numpy()
    return out
