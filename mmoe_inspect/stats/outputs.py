"""`TaskOutputStats`: streaming, mergeable summaries of each task's predictions and labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchmetrics import Metric


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


class TaskOutputStats(Metric):
    """Prediction/label sums per task; AUC from per-class prediction histograms (resolution 1/n_bins).

    `update(preds [batch, T], labels [batch, T] | None)`; NaN labels mean "missing".
    """

    full_state_update = False

    def __init__(self, kinds: Sequence[str], n_bins: int = 1000) -> None:
        super().__init__()
        self.kinds = tuple(kinds)
        self.n_bins = n_bins
        t = len(self.kinds)
        self.register_buffer("_binary", torch.tensor([k == "binary" for k in self.kinds]), persistent=False)
        for name in ("n", "sum", "sumsq", "n_lab", "sum_lab", "sse", "out_of_range"):
            self.add_state(name, torch.zeros(t, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("hist_pos", torch.zeros(t, n_bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("hist_neg", torch.zeros(t, n_bins, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        p = preds.detach().to(torch.float64)
        ok = torch.isfinite(p)
        pz = torch.where(ok, p, torch.zeros_like(p))
        self.n += ok.sum(0)
        self.sum += pz.sum(0)
        self.sumsq += (pz * pz).sum(0)
        binary = self._binary.to(p.device)
        self.out_of_range += (((pz < 0) | (pz > 1)) & ok & binary).sum(0)
        if labels is None:
            return
        y = labels.detach().to(torch.float64)
        lab = ok & torch.isfinite(y)
        yz = torch.where(lab, y, torch.zeros_like(y))
        self.n_lab += lab.sum(0)
        self.sum_lab += yz.sum(0)
        self.sse += torch.where(lab, (pz - yz) ** 2, torch.zeros_like(yz)).sum(0)
        bins = (pz.clamp(0, 1) * self.n_bins).long().clamp_(max=self.n_bins - 1)  # [batch, T]
        t = p.shape[1]
        flat = bins + torch.arange(t, device=p.device) * self.n_bins
        pos = (lab & (yz > 0.5)).to(torch.float64)
        neg = (lab & (yz <= 0.5)).to(torch.float64)
        self.hist_pos += torch.bincount(flat.flatten(), pos.flatten(), minlength=t * self.n_bins).view(t, -1)
        self.hist_neg += torch.bincount(flat.flatten(), neg.flatten(), minlength=t * self.n_bins).view(t, -1)

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
