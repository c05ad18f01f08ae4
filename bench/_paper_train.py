"""Training loop of the paper benchmark: large-batch Adam on tensors, learning curves, a convergence verdict.

`mmoe_inspect.train.fit` reads a DataFrame and stops on patience at one learning rate; a sweep of
hundreds of models needs the rows as tensors once and a schedule that drives each model to its
plateau quickly. Here: Adam at `lr`; when the validation loss has not improved (by `min_delta`,
relative) for `plateau` epochs, the learning rate is cut by `factor`; training stops after the cut
that would take it below `lr * min_lr_ratio` (the loss plateaued at every rate: converged) or after
`max_epochs` (the budget ran out: converged only if the best validation loss improved by less than
`tol` (relative) over the last `window` epochs). The best epoch's weights are restored.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmoe_inspect.data.batches import Inputs, n_rows, take


@dataclass(frozen=True)
class Budget:
    """Optimizer and stopping settings (see the module docstring)."""

    lr: float = 1e-2
    batch_size: int = 512
    max_epochs: int = 200
    plateau: int = 4
    factor: float = 0.3
    min_lr_ratio: float = 1e-2
    min_delta: float = 1e-3
    window: int = 10
    tol: float = 5e-3


@dataclass(frozen=True)
class Trained:
    """One training run: per-epoch curves, the kept epoch, why it stopped, whether it converged."""

    train_loss: list[float]  # mean training loss per epoch (summed over tasks)
    val_loss: list[float]  # validation loss per epoch (summed over tasks)
    best_epoch: int
    stop_reason: str  # "plateau" (learning rate exhausted) or "budget" (max_epochs)
    converged: bool
    last_window_improvement: float  # relative drop of the best validation loss over the last `window` epochs
    seconds: float


def task_losses(outputs: dict[str, Tensor], labels: Tensor, tasks: Sequence[tuple[str, str]]) -> Tensor:
    """Per-task mean loss `[n_tasks]`: BCE on probabilities (binary) or squared error (regression)."""
    parts = []
    for j, (name, kind) in enumerate(tasks):
        pred, y = outputs[name], labels[:, j]
        if kind == "binary":
            parts.append(F.binary_cross_entropy(pred.clamp(1e-7, 1 - 1e-7), y))
        else:
            parts.append(F.mse_loss(pred, y))
    return torch.stack(parts)


@torch.no_grad()
def predict(model: nn.Module, inputs: Inputs, batch_size: int = 16384) -> dict[str, np.ndarray]:
    """`{task: [rows]}` float64 predictions in eval mode."""
    model.eval()
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, n_rows(inputs), batch_size):
        for name, pred in model(take(inputs, slice(start, start + batch_size))).items():
            parts.setdefault(name, []).append(pred.double().numpy())
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def _val_loss(model: nn.Module, inputs: Inputs, labels: Tensor, tasks: Sequence[tuple[str, str]]) -> float:
    preds = predict(model, inputs)
    out = {k: torch.from_numpy(v).float() for k, v in preds.items()}
    return float(task_losses(out, labels, tasks).sum())


def train(
    model: nn.Module,
    train_xy: tuple[Inputs, Tensor],
    val_xy: tuple[Inputs, Tensor],
    tasks: Sequence[tuple[str, str]],
    budget: Budget,
    seed: int,
) -> Trained:
    """Train `model` in place (see the module docstring); shuffling is seeded by `seed`."""
    start = time.perf_counter()
    x, y = train_xy
    optimizer = torch.optim.Adam(model.parameters(), lr=budget.lr)
    lr = budget.lr
    shuffler = torch.Generator().manual_seed(seed)
    train_curve: list[float] = []
    val_curve: list[float] = []
    best, best_epoch, best_state, since_best = math.inf, -1, None, 0
    stop_reason = "budget"
    for epoch in range(budget.max_epochs):
        model.train()
        total, steps = 0.0, 0
        for idx in torch.randperm(len(y), generator=shuffler).split(budget.batch_size):
            loss = task_losses(model(take(x, idx)), y[idx], tasks).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
        train_curve.append(total / steps)
        val = _val_loss(model, *val_xy, tasks)
        val_curve.append(val)
        if val < best * (1 - budget.min_delta):
            since_best = 0
        else:
            since_best += 1
        if val < best:
            best, best_epoch = val, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if since_best >= budget.plateau:
            lr *= budget.factor
            if lr < budget.lr * budget.min_lr_ratio:
                stop_reason = "plateau"
                break
            for group in optimizer.param_groups:
                group["lr"] = lr
            since_best = 0
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    w = budget.window
    before = min(val_curve[:-w]) if len(val_curve) > w else math.inf
    improvement = (before - min(val_curve)) / before if math.isfinite(before) and before > 0 else math.inf
    converged = stop_reason == "plateau" or improvement < budget.tol
    return Trained(
        train_curve,
        val_curve,
        best_epoch,
        stop_reason,
        bool(converged),
        float(improvement),
        time.perf_counter() - start,
    )
