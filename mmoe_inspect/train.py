"""Train and evaluate multi-task models on a DataFrame: Adam, per-task losses, early stopping.

Losses: binary cross-entropy on the predicted probability for binary tasks, squared error for
regression tasks, each averaged over the rows whose label is not NaN, summed over tasks. Works with
any model whose forward returns `{task name: tensor [batch]}`; tasks and features default to the
model's `.config` (the reference models in `mmoe_inspect.models`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmoe_inspect.data.batches import Inputs, frame_to_inputs, frame_to_labels, n_rows, take, to_device
from mmoe_inspect.data.schema import FeatureSpec
from mmoe_inspect.models.config import TaskLike, as_tasks
from mmoe_inspect.topology.spec import TaskSpec

Metrics = dict[str, dict[str, float]]
"""`{task: {metric: value}}`: "auc" and "logloss" for binary tasks, "mse" for regression tasks."""


@dataclass(frozen=True)
class EpochStats:
    """One epoch: mean training loss, validation loss (NaN without validation rows) and its parts."""

    epoch: int
    train_loss: float
    val_loss: float
    val_task_loss: dict[str, float]
    seconds: float


@dataclass(frozen=True)
class TrainResult:
    """What `fit` did: per-epoch history, the epoch whose weights were kept, why it stopped, metrics."""

    history: tuple[EpochStats, ...]
    best_epoch: int
    stop_reason: str  # "epochs", "patience" or "time"
    val_metrics: Metrics = field(default_factory=dict)
    n_train: int = 0
    n_val: int = 0
    seconds: float = 0.0


def _config_value(model: nn.Module, given: object, name: str) -> object:
    """`given`, or the model's `config.<name>` when `given` is None."""
    if given is not None:
        return given
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"pass {name}= for a model without a .config")
    return getattr(config, name)


def _defaults(
    model: nn.Module, tasks: Sequence[TaskLike] | None, features: FeatureSpec | None
) -> tuple[tuple[TaskSpec, ...], FeatureSpec]:
    """Tasks and features to use: the given ones, else the model's config."""
    task_specs = as_tasks(_config_value(model, tasks, "tasks"))  # type: ignore[arg-type]
    return task_specs, _config_value(model, features, "features")  # type: ignore[return-value]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _loss_sums(
    outputs: dict[str, Tensor], labels: Tensor, tasks: Sequence[TaskSpec]
) -> tuple[Tensor, Tensor]:
    """Per-task summed losses `[n_tasks]` and counts of labelled rows `[n_tasks]` for one batch."""
    sums, counts = [], []
    for j, task in enumerate(tasks):
        y = labels[:, j]
        known = ~torch.isnan(y)
        y = torch.where(known, y, 0.0)
        pred = outputs[task.name]
        loss = F.binary_cross_entropy(pred, y, reduction="none") if task.kind == "binary" else (pred - y) ** 2
        sums.append((loss * known).sum())
        counts.append(known.sum())
    return torch.stack(sums), torch.stack(counts)


def _per_task_mean(sums: Tensor, counts: Tensor) -> Tensor:
    return sums / counts.clamp(min=1)


@torch.no_grad()
def _predict_inputs(model: nn.Module, inputs: Inputs, batch_size: int) -> dict[str, Tensor]:
    """Predictions `{task: [rows]}` on CPU for all rows of `inputs`, in eval mode (mode restored after)."""
    was_training = model.training
    model.eval()
    device = _device(model)
    try:
        parts: dict[str, list[Tensor]] = {}
        for start in range(0, n_rows(inputs), batch_size):
            out = model(to_device(take(inputs, slice(start, start + batch_size)), device))
            for name, pred in out.items():
                parts.setdefault(name, []).append(pred.detach().cpu())
    finally:
        model.train(was_training)
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


def predict(
    model: nn.Module, frame: pd.DataFrame, features: FeatureSpec | None = None, *, batch_size: int = 8192
) -> dict[str, Tensor]:
    """Model outputs `{task: tensor [rows]}` for every row of `frame` (eval mode, no gradients)."""
    spec: FeatureSpec = _config_value(model, features, "features")  # type: ignore[assignment]
    return _predict_inputs(model, frame_to_inputs(frame, spec), batch_size)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties get average ranks; NaN with one class."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(labels) > 0.5
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based mean rank of each distinct score
    rank_sum = float(average_rank[inverse][positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def _metrics(preds: dict[str, Tensor], labels: Tensor, tasks: Sequence[TaskSpec]) -> Metrics:
    out: Metrics = {}
    for j, task in enumerate(tasks):
        y = labels[:, j].numpy().astype(np.float64)
        p = preds[task.name].numpy().astype(np.float64)
        known = ~np.isnan(y)
        y, p = y[known], p[known]
        if task.kind == "binary":
            q = np.clip(p, 1e-7, 1 - 1e-7)
            logloss = float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))) if len(y) else math.nan
            out[task.name] = {"auc": roc_auc(p, y), "logloss": logloss}
        else:
            out[task.name] = {"mse": float(np.mean((p - y) ** 2)) if len(y) else math.nan}
    return out


def evaluate(
    model: nn.Module,
    frame: pd.DataFrame,
    tasks: Sequence[TaskLike] | None = None,
    features: FeatureSpec | None = None,
    *,
    batch_size: int = 8192,
) -> Metrics:
    """Per-task metrics on `frame` (rows with a NaN label are left out of that task's metric)."""
    task_specs, features = _defaults(model, tasks, features)
    preds = _predict_inputs(model, frame_to_inputs(frame, features), batch_size)
    return _metrics(preds, frame_to_labels(frame, task_specs), task_specs)


def _validation_loss(
    model: nn.Module, inputs: Inputs, labels: Tensor, tasks: Sequence[TaskSpec], batch_size: int
) -> Tensor:
    """Per-task mean validation loss `[n_tasks]` over all labelled rows."""
    preds = _predict_inputs(model, inputs, batch_size)
    return _per_task_mean(*_loss_sums(preds, labels, tasks))


def _split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random (train, validation) row positions; validation gets round(n * val_fraction) rows (≥ 1 if > 0)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    if n - n_val < 1:
        raise ValueError(f"{n} rows leave nothing to train on with val_fraction={val_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def fit(
    model: nn.Module,
    frame: pd.DataFrame,
    *,
    tasks: Sequence[TaskLike] | None = None,
    features: FeatureSpec | None = None,
    epochs: int = 10,
    batch_size: int = 512,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    val_fraction: float = 0.1,
    patience: int = 2,
    seed: int = 0,
    max_seconds: float | None = None,
    verbose: bool = False,
    on_step: Callable[[int, int, float], None] | None = None,
) -> TrainResult:
    """Train `model` in place with Adam on `frame`; returns the history and validation metrics.

    A random `val_fraction` of the rows (seeded) is held out; after each epoch the summed per-task
    validation loss is measured, training stops after `patience` epochs without improvement, and the
    best epoch's weights are restored. Without validation rows the last weights are kept.
    `max_seconds` stops within the running epoch once exceeded. Shuffling, the split and dropout are
    seeded by `seed` (the global torch RNG state is restored afterwards). The model ends in eval mode.
    `on_step(step, epoch, loss)` is called after every optimizer step (steps count from 1), e.g. to
    drive a `mmoe_inspect.monitor.GateMonitor`.
    """
    task_specs, features = _defaults(model, tasks, features)
    train_rows, val_rows = _split(len(frame), val_fraction, seed)
    train_frame, val_frame = frame.iloc[train_rows], frame.iloc[val_rows]
    x_train, y_train = frame_to_inputs(train_frame, features), frame_to_labels(train_frame, task_specs)
    x_val, y_val = frame_to_inputs(val_frame, features), frame_to_labels(val_frame, task_specs)
    device = _device(model)
    params = [p for p in model.parameters() if p.requires_grad]
    fused = device.type in ("cpu", "cuda") and all(
        p.is_floating_point() for p in params
    )  # faster steps (bench/results/small_ops.md)
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)
    deadline = None if max_seconds is None else time.perf_counter() + max_seconds
    start_time = time.perf_counter()

    history: list[EpochStats] = []
    best_loss, best_epoch, best_state = math.inf, -1, None
    stop_reason = "epochs"
    step = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        shuffler = torch.Generator().manual_seed(seed)
        for epoch in range(epochs):
            epoch_start = time.perf_counter()
            model.train()
            loss_total, n_batches = 0.0, 0
            for idx in torch.randperm(len(train_rows), generator=shuffler).split(batch_size):
                outputs = model(to_device(take(x_train, idx), device))
                loss = _per_task_mean(*_loss_sums(outputs, y_train[idx].to(device), task_specs)).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step_loss = loss.detach().item()
                loss_total, n_batches = loss_total + step_loss, n_batches + 1
                step += 1
                if on_step is not None:
                    on_step(step, epoch, step_loss)
                if deadline is not None and time.perf_counter() > deadline:
                    stop_reason = "time"
                    break
            val_task = (
                _validation_loss(model, x_val, y_val, task_specs, 8192).tolist()
                if len(val_rows)
                else [math.nan] * len(task_specs)
            )
            val_loss = float(sum(val_task))
            history.append(
                EpochStats(
                    epoch,
                    loss_total / max(n_batches, 1),
                    val_loss,
                    {t.name: float(v) for t, v in zip(task_specs, val_task, strict=True)},
                    time.perf_counter() - epoch_start,
                )
            )
            if verbose:
                print(f"epoch {epoch}: train {history[-1].train_loss:.5f} val {val_loss:.5f}")
            if len(val_rows) and val_loss < best_loss:
                best_loss, best_epoch = val_loss, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if stop_reason == "time":
                break
            if len(val_rows) and epoch - best_epoch >= patience:
                stop_reason = "patience"
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = len(history) - 1
    model.eval()
    val_metrics = _metrics(_predict_inputs(model, x_val, 8192), y_val, task_specs) if len(val_rows) else {}
    return TrainResult(
        history=tuple(history),
        best_epoch=best_epoch,
        stop_reason=stop_reason,
        val_metrics=val_metrics,
        n_train=len(train_rows),
        n_val=len(val_rows),
        seconds=time.perf_counter() - start_time,
    )
