"""`TaskOutputStats`: streaming, mergeable summaries of each task's predictions and labels."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mmoe_inspect.stats._base import SummaryMetric


@dataclass
class TaskOutputSummary:
    """(Not frozen: torchmetrics' compute wrapper rebuilds dataclass outputs.) Per task (in the order given): prediction moments, label rate/mean, binned AUC (binary), MSE (regression)."""

    n: torch.Tensor  # [T] rows with a finite prediction
    mean_prediction: torch.Tensor  # [T]
    std_prediction: torch.Tensor  # [T]
    n_labelled: torch.Tensor  # [T] rows with a finite label and prediction
    label_mean: torch.Tensor  # [T] positive rate for binary tasks
    auc: torch.Tensor  # [T] NaN for regression or one-class labels
    mse: torch.Tensor  # [T] NaN for binary tasks
    prediction_hist: torch.Tensor  # [T, n_bins] over [0, 1] (binary) — counts
    out_of_range: (
        torch.Tensor
    )  # [T] binary predictions outside [0, 1] (logits where probabilities were expected)


class TaskOutputStats(SummaryMetric):
    """Prediction/label sums per task; AUC from per-class prediction histograms (resolution 1/n_bins).

    `update(preds [batch, T], labels [batch, T] | None)`; NaN labels mean "missing". On CPU one
    host read skips all masking when every prediction and label is finite; on accelerators (or
    with ``sync_free=True``) it makes no host reads. Both paths give the same states.
    """

    def __init__(self, kinds: Sequence[str], n_bins: int = 1000, *, sync_free: bool | None = None) -> None:
        super().__init__(sync_free=sync_free)
        self.kinds = tuple(kinds)
        self.n_bins = n_bins
        t = len(self.kinds)
        self.register_buffer("_binary", torch.tensor([k == "binary" for k in self.kinds]), persistent=False)
        self.register_buffer("_offsets", torch.arange(t) * n_bins, persistent=False)
        for name in ("n", "sum", "sumsq", "n_lab", "sum_lab", "sse", "out_of_range"):
            self.add_state(name, torch.zeros(t, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("hist_pos", torch.zeros(t, n_bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("hist_neg", torch.zeros(t, n_bins, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        p = preds.detach().to(torch.float64)  # [B, T]
        y = None if labels is None else labels.detach().to(device=p.device, dtype=torch.float64)
        b, t = p.shape
        total = p.sum() if y is None else p.sum() + y.sum()
        fast = not self._sync_free(p.device) and math.isfinite(float(total))  # every value finite
        ok = None if fast else torch.isfinite(p)
        pz = p if ok is None else torch.where(ok, p, 0.0)
        self.n += b if ok is None else ok.sum(0)
        self.sum += pz.sum(0)
        self.sumsq += (pz * pz).sum(0)
        out = ((pz < 0) | (pz > 1)) & self._binary
        self.out_of_range += (out if ok is None else out & ok).sum(0)
        if y is None:
            return
        lab = None if fast else ok & torch.isfinite(y)
        yz = y if lab is None else torch.where(lab, y, 0.0)
        self.n_lab += b if lab is None else lab.sum(0)
        self.sum_lab += yz.sum(0)
        sq = (pz - yz).square_()
        self.sse += (sq if lab is None else torch.where(lab, sq, 0.0)).sum(0)
        # One bincount: slot 2 · (task bin) + (label > 0.5), unlabelled rows to a dummy slot at the end.
        bins = (pz.clamp(0, 1) * self.n_bins).long().clamp_(max=self.n_bins - 1).add_(self._offsets)
        slots = bins.mul_(2).add_(yz > 0.5)
        if lab is not None:
            slots.masked_fill_(~lab, 2 * t * self.n_bins)
        counts = torch.bincount(slots.view(-1), minlength=2 * t * self.n_bins + 1)
        counts = counts[: 2 * t * self.n_bins].view(t, self.n_bins, 2)
        self.hist_neg += counts[..., 0]
        self.hist_pos += counts[..., 1]

    def compute(self) -> TaskOutputSummary:
        n = self.n.clamp_min(1)
        mean = self.sum / n
        var = (self.sumsq / n - mean**2).clamp_min(0)
        nl = self.n_lab.clamp_min(1)
        binary = self._binary.to(self.n.device)
        return TaskOutputSummary(
            n=self.n.clone(),
            mean_prediction=torch.where(self.n > 0, mean, torch.nan),
            std_prediction=torch.where(self.n > 0, var.sqrt(), torch.nan),
            n_labelled=self.n_lab.clone(),
            label_mean=torch.where(self.n_lab > 0, self.sum_lab / nl, torch.nan),
            auc=torch.where(binary, binned_auc(self.hist_pos, self.hist_neg), torch.nan),
            mse=torch.where(~binary & (self.n_lab > 0), self.sse / nl, torch.nan),
            prediction_hist=self.hist_pos + self.hist_neg,
            out_of_range=self.out_of_range.clone(),
        )


def binned_auc(hist_pos: torch.Tensor, hist_neg: torch.Tensor) -> torch.Tensor:
    """AUC `[T]` from per-class score histograms `[T, n_bins]`: P(score_pos > score_neg), ties counted half."""
    neg_below = torch.cumsum(hist_neg, dim=1) - hist_neg  # negatives in strictly lower bins
    wins = (hist_pos * (neg_below + 0.5 * hist_neg)).sum(1)
    total = hist_pos.sum(1) * hist_neg.sum(1)
    return torch.where(total > 0, wins / total.clamp_min(1), torch.nan)
