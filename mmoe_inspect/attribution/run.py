"""`run_attribution`: which input features drive each gate, each expert and each task, within a time budget."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from mmoe_inspect.attribution._inputs import (
    AttributionError,
    EmbeddingCall,
    InputLayer,
    build_input_layer,
    probe_embeddings,
)
from mmoe_inspect.attribution._methods import (
    IG_OUTPUTS_PER_FORWARD,
    Forward,
    TargetAttribution,
    ablation,
    dense_baselines,
    integrated_gradients,
    reference_value,
)
from mmoe_inspect.attribution._tables import attribution_tables
from mmoe_inspect.attribution._targets import TARGET_GROUPS, AttributionSession, Target, list_targets
from mmoe_inspect.attribution.result import (
    AttributionResult,
)
from mmoe_inspect.binding import default_input_fn, resolve_topology
from mmoe_inspect.data.inputs import InputColumn
from mmoe_inspect.data.schema import FeatureSpec
from mmoe_inspect.data.sources import TableSource, check_features, require_columns
from mmoe_inspect.device import model_device, to_device
from mmoe_inspect.recording.recorder import model_mode
from mmoe_inspect.topology.spec import Topology

InputFn = Callable[[pd.DataFrame], Any]
Baseline = Literal["default", "zero", "mean"]
Method = Literal["auto", "integrated_gradients", "ablation"]
BASELINES: tuple[str, ...] = ("default", "zero", "mean")
METHODS: tuple[str, ...] = ("auto", "integrated_gradients", "ablation")
TARGETS: tuple[str, ...] = tuple(TARGET_GROUPS)


def run_attribution(
    model: nn.Module,
    data: pd.DataFrame | str | Path | TableSource,
    *,
    topology: Topology | str | Path | None = None,
    input_fn: InputFn | None = None,
    features: Sequence[str] | FeatureSpec | None = None,
    tasks: Sequence[str] | None = None,
    sample_rows: int = 256,
    n_steps: int = 16,
    budget_seconds: float | None = 30.0,
    seed: int = 0,
    targets: Sequence[str] = TARGETS,
    baseline: Baseline = "default",
    method: Method = "auto",
    delta_tolerance: float = 0.05,
    max_scan_rows: int | None = 1_000_000,
    progress: Callable[[int, int], None] | None = None,
) -> AttributionResult:
    """Attribute every gate weight, expert output norm and task prediction of `model` to its input features.

    Rows: a uniform sample of `sample_rows` rows (seeded by `seed`) from the first `max_scan_rows`
    rows of `data`. Inputs, topology and feature names resolve as in `inspect()`: `input_fn` turns
    rows into model input (default: the reference model's own); `features` names the data columns
    in input order (else `input_fn.names`, else the model's `FeatureSpec`); `topology` or discovery
    (`tasks` names the outputs). Tables use these names: the dataset's own column names.

    Method (`method="auto"`): Integrated Gradients (Captum, `n_steps` Gauss-Legendre steps) with dense
    features attributed in the input and categorical ones at their embedding outputs (summed over
    the embedding dims); if some id feature reaches no embedding module, FeatureAblation of every
    feature instead (`method` forces either). Baselines (`baseline`): "default" = zeros for dense
    features (the mean of a standardized column) and the mean embedding of the sampled rows for
    categorical ones; "zero" = zeros for both; "mean" = the sample mean for both. Ablation sets an id
    feature to its most frequent value in the sample and a dense one to zero ("mean": its mean).

    `targets` orders the work ("gates", "experts", "tasks"); one target at a time runs until
    `budget_seconds` (None = no limit; counted from the call, data reading included) would be
    exceeded, and the rest is listed in `result.skipped`; `progress(done, total)` is called after each
    target (the CLI's progress bar). Convergence deltas above
    `delta_tolerance` × the attribution sum are flagged. The model is left exactly as found
    (modes restored, hooks removed, parameters and their `.grad` untouched), also when a forward raises.

    Examples::

        >>> res = run_attribution(mmoe, "eval.parquet", budget_seconds=30)
        >>> res.gate_attributions      # gate, task, level, expert, feature, mean_abs, mean_signed, share
        >>> res.top_features("purchase")   # ['price', 'user_id', ...]
    """
    started = time.perf_counter()
    _validate(sample_rows, n_steps, budget_seconds, targets, baseline, method, delta_tolerance)
    source = TableSource.of(data)
    fn, columns = _resolve_inputs(model, input_fn, features)
    read = [c.name for c in columns] if columns is not None else None
    if read:
        require_columns(source, read)
    frame = sample_frame(source, read, sample_rows, seed, max_scan_rows)
    if read:
        check_features(frame, read, source.name)
    topo = resolve_topology(model, topology, example=lambda: fn(frame.iloc[:64]), tasks=tasks)
    groups = list(dict.fromkeys(targets))
    work, notes = list_targets(model, topo, groups)

    device = model_device(model)
    with torch.inference_mode(False):
        x = to_device(fn(frame), device)
        if isinstance(x, tuple):  # positional arguments (forward(categorical, numerical)): no layout for them
            raise AttributionError(
                f"the model takes {len(x)} positional input(s); attributions support one [batch, D] tensor "
                "or a dict of tensors"
            )
        if columns is None:
            columns = _columns_of(x)
        calls: list[EmbeddingCall] = []
        with torch.no_grad(), model_mode(model, training=False), probe_embeddings(model, calls):
            model(x)
        layer = build_input_layer(x, columns, calls)
        if layer.rows != len(frame):
            raise AttributionError(f"input_fn returned {layer.rows} rows for {len(frame)} data rows")
        notes += layer.notes
        used = _method(layer, method, notes)
        outcome, skipped, per_call = _attribute(
            model, layer, x, calls, work, used, baseline, n_steps, budget_seconds, started, progress
        )
    if skipped:
        notes.append(
            f"time budget of {budget_seconds:g}s reached: covered {len(outcome)} of {len(work)} targets; "
            f"skipped {', '.join(skipped)} (raise budget_seconds or lower sample_rows / n_steps)"
        )
    shown = layer.features if used == "ablation" else layer.attributed
    result = attribution_tables(topo, outcome, layer, shown, used, n_steps, delta_tolerance, notes)
    result.rows = frame.index.to_numpy()
    result.skipped = skipped
    result.topology = topo
    result.meta = {
        "method": used,
        "n_rows": len(frame),
        "n_steps": n_steps if used == "integrated_gradients" else None,
        "baseline": baseline,
        "budget_seconds": budget_seconds,
        "seconds": time.perf_counter() - started,
        "seconds_per_output": per_call,
        "input": layer.layout.name,
        "dense_features": [s.feature for s in layer.dense],
        "embedding_features": [f"{s.feature}@{s.module}[{s.call}]" for s in layer.embeddings],
        "unreached_features": list(layer.unreached),
        "seed": seed,
        "nonfinite_rows": result.meta["nonfinite_rows"],  # left out of every table (NaN/inf attributions)
    }
    return result


# ----------------------------------------------------------------------------------------- steps
def _validate(
    sample_rows: int,
    n_steps: int,
    budget: float | None,
    targets: Sequence[str],
    baseline: str,
    method: str,
    tolerance: float,
) -> None:
    if sample_rows < 1:
        raise ValueError(f"sample_rows must be positive, got {sample_rows}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be positive, got {n_steps}")
    if budget is not None and budget < 0:
        raise ValueError(f"budget_seconds must be >= 0 or None, got {budget}")
    if isinstance(targets, str) or not targets or any(t not in TARGETS for t in targets):
        raise ValueError(f"targets must be a non-empty list among {', '.join(TARGETS)}, not {targets!r}")
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, not {baseline!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if not tolerance > 0:
        raise ValueError(f"delta_tolerance must be positive, got {tolerance}")


def _resolve_inputs(
    model: nn.Module, input_fn: InputFn | None, features: Sequence[str] | FeatureSpec | None
) -> tuple[InputFn, list[InputColumn] | None]:
    """The row → input function and the feature columns in input order (None: read from the input)."""
    if input_fn is None:
        fn, spec = default_input_fn(model, features if isinstance(features, FeatureSpec) else None)
        if spec is None:  # pragma: no cover - default_input_fn raises without a spec
            raise AttributionError("no feature spec for the model's input")
        if (
            features is not None
            and not isinstance(features, FeatureSpec)
            and set(features) != set(spec.names)
        ):
            raise AttributionError(
                f"features {list(features)} are not the model's own {list(spec.names)}; pass input_fn= to "
                "feed the model from other columns"
            )
        return fn, _spec_columns(spec)
    if isinstance(features, FeatureSpec):
        return input_fn, _spec_columns(features)
    known = {c.name: c for c in getattr(input_fn, "columns", ()) if isinstance(c, InputColumn)}
    if features is not None:
        return input_fn, [known.get(n, InputColumn(n)) for n in features]
    if known:
        return input_fn, list(known.values())
    names = getattr(input_fn, "names", None)
    return input_fn, [InputColumn(n) for n in names] if names else None


def _spec_columns(spec: FeatureSpec) -> list[InputColumn]:
    return [InputColumn(n, "float32") for n in spec.dense] + [
        InputColumn(c.name, "int64", 1, c.cardinality) for c in spec.categorical
    ]


def _columns_of(x: Any) -> list[InputColumn]:
    """Feature columns read off the input: dict keys (`key[i]` per column of a `[batch, w]` entry), or
    `x0..x{D-1}` for a `[batch, D]` tensor."""
    if isinstance(x, dict):
        out = []
        for k, v in x.items():
            if isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape[1] > 1:
                out += [InputColumn(f"{k}[{i}]") for i in range(v.shape[1])]
            else:
                out.append(InputColumn(str(k), None, None))
        return out
    if isinstance(x, torch.Tensor) and x.dim() == 2:
        return [InputColumn(f"x{i}") for i in range(x.shape[1])]
    raise AttributionError(f"cannot name the features of a {type(x).__name__} input: pass features=[...]")


def sample_frame(
    source: TableSource, columns: Sequence[str] | None, n: int, seed: int, max_scan_rows: int | None
) -> pd.DataFrame:
    """A uniform sample of `n` rows of the first `max_scan_rows` (index = row position, sorted).

    Every row draws a seeded random key (in row order) and the `n` smallest keys are kept. When the
    source knows its row count (parquet, DataFrame) the keys are drawn at once and only the chosen
    rows are read (`TableSource.take_rows`); a CSV is streamed, keeping the `n` smallest keys so far.
    Both give the same rows: the keys are one random stream either way.
    """
    rng = np.random.default_rng(seed)
    total = source.n_rows()
    if total:
        scanned = total if max_scan_rows is None else min(total, max_scan_rows)
        if scanned > 0:
            keys = rng.random(scanned)
            best = np.arange(scanned) if scanned <= n else np.sort(np.argpartition(keys, n)[:n])
            taken = source.take_rows(best, columns)
            if taken is not None:
                return taken
            rng = np.random.default_rng(seed)
    kept: pd.DataFrame | None = None
    keys = np.empty(0)
    for chunk in source.iter_frames(8192, columns, max_scan_rows):
        frame = chunk if kept is None else pd.concat([kept, chunk])
        keys = np.concatenate([keys, rng.random(len(chunk))])
        if len(frame) > n:
            best = np.argpartition(keys, n)[:n]
            frame, keys = frame.iloc[best], keys[best]
        kept = frame
    assert kept is not None  # iter_frames raises on an empty source
    return kept.sort_index()


def _method(layer: InputLayer, method: str, notes: list[str]) -> str:
    if not layer.features:
        raise AttributionError("the model input has no features to attribute")
    if method == "ablation":
        return "ablation"
    if layer.unreached:
        if method == "auto":
            notes.append(
                f"feature(s) {list(layer.unreached)} are ids that no embedding module reads (not differentiable): "
                "attributed every feature by FeatureAblation instead of Integrated Gradients"
            )
            return "ablation"
        notes.append(
            f"feature(s) {list(layer.unreached)} are ids that no embedding module reads: held at their values "
            "and left out of the tables (method='ablation' attributes them)"
        )
    if not layer.part_features:
        raise AttributionError(
            "no input feature is differentiable or read by an embedding; use method='ablation'"
        )
    return "integrated_gradients"


def _attribute(
    model: nn.Module,
    layer: InputLayer,
    x: Any,
    calls: Sequence[EmbeddingCall],
    work: Sequence[Target],
    used: str,
    baseline: str,
    n_steps: int,
    budget: float | None,
    started: float,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, tuple[Target, TargetAttribution]], list[str], float | None]:
    """Run the method target by target until the budget would be exceeded; returns done, skipped, s/output."""
    rows = layer.rows
    if used == "integrated_gradients":
        parts = layer.parts(x, calls)
        n_dense = len(layer.dense)
        base = dense_baselines(parts[:n_dense], baseline == "mean") + dense_baselines(
            parts[n_dense:], baseline != "zero"
        )
    else:
        raw = layer.raw(x)
        ref = tuple(
            reference_value(c, f in layer.ids, baseline == "mean")
            for f, c in zip(layer.features, raw, strict=True)
        )
    done: dict[str, tuple[Target, TargetAttribution]] = {}
    per_output: float | None = None
    spent, outputs = 0.0, 0
    shared = _share_forwards(work) if used == "integrated_gradients" else {}
    with AttributionSession(model, layer, work) as session:
        fwd = Forward(session, layer, x, rows)
        running = None
        for i, target in enumerate(work):
            now = time.perf_counter()
            if budget is not None:
                estimate = per_output * len(target.outputs) if per_output is not None else 0.0
                if now - started + estimate > budget:
                    return done, [t.key for t in work[i:]], per_output
            if used == "integrated_gradients":
                if target.key in shared:  # the first of a group of targets sharing one forward
                    group = shared[target.key]
                    running = zip(group, integrated_gradients(fwd, group, parts, base, n_steps), strict=True)
                assert running is not None
                of, res = next(running)
                assert of.key == target.key
            else:
                res = ablation(fwd, target, raw, ref)
            spent += time.perf_counter() - now
            outputs += len(target.outputs)
            per_output = spent / outputs
            done[target.key] = (target, res)
            if progress is not None:
                progress(i + 1, len(work))
    return done, [], per_output


def _share_forwards(work: Sequence[Target]) -> dict[str, list[Target]]:
    """Groups of consecutive targets of one kind, up to `IG_OUTPUTS_PER_FORWARD` outputs, keyed by
    their first target: each group's Integrated Gradients run on one forward."""
    groups: dict[str, list[Target]] = {}
    current: list[Target] = []
    for t in work:
        if current and (
            t.kind != current[0].kind
            or sum(len(c.outputs) for c in current) + len(t.outputs) > IG_OUTPUTS_PER_FORWARD
        ):
            current = []
        if not current:
            groups[t.key] = current
        current.append(t)
    return groups


# ----------------------------------------------------------------------------------------- tables
