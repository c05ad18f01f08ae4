"""The two attribution methods, each for one target over the sampled rows.

* `integrated_gradients`: Captum's `IntegratedGradients` on a forward function of the attribution
  space (dense columns and embedding outputs, see `_inputs`); Captum computes gradients with
  `torch.autograd.grad` on its own interpolated inputs, so parameters' `.grad` are never touched.
* `ablation`: Captum's `FeatureAblation` on the raw input columns (works for ids that no embedding
  reads): attribution = output − output with that feature set to its baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmoe_inspect.attribution._inputs import InputLayer, tile
from mmoe_inspect.attribution._targets import AttributionSession, Target

ABLATION_ROWS_PER_FORWARD = 16_384
"""FeatureAblation evaluates up to this many rows (perturbed copies of the sample) per forward."""


@dataclass(frozen=True)
class TargetAttribution:
    """Per-row attributions of one target: `values` `[rows, K, F]`, convergence `delta` `[rows, K]`
    (NaN for ablation) and the output change `change` = f(x) − f(baseline) `[rows, K]` (NaN for ablation)."""

    values: np.ndarray
    delta: np.ndarray
    change: np.ndarray


class Forward:
    """Captum's forward_func: attribution-space tensors `[N, ...]` (N = k × rows) → target outputs `[N, K]`."""

    def __init__(self, session: AttributionSession, layer: InputLayer, base: Any, rows: int) -> None:
        self.session, self.layer, self.base, self.rows = session, layer, base, rows
        self._tiled: dict[int, Any] = {}
        self.target: Target | None = None

    def inputs(self, n: int) -> Any:
        k, rest = divmod(n, self.rows)
        if rest:
            raise RuntimeError(f"Captum passed {n} rows, not a multiple of the {self.rows} sampled rows")
        if k not in self._tiled:
            self._tiled[k] = tile(self.base, k)
        return self._tiled[k]

    def parts(self, *parts: Tensor) -> Tensor:
        assert self.target is not None
        n_dense = len(self.layer.dense)
        x = self.layer.with_dense(self.inputs(parts[0].shape[0]), parts[:n_dense])
        y = self.session.run(x, self.target, parts[n_dense:] if len(parts) > n_dense else None)
        # every part joins the graph with gradient 0, so an input the target ignores gets 0, not an error
        anchor = sum(p.sum().to(y.dtype) for p in parts) * 0.0
        return y + anchor

    def raw(self, *columns: Tensor) -> Tensor:
        assert self.target is not None
        x = self.layer.with_raw(self.inputs(columns[0].shape[0]), columns)
        return self.session.run(x, self.target, None)


def integrated_gradients(
    fwd: Forward,
    target: Target,
    parts: tuple[Tensor, ...],
    baselines: tuple[Tensor, ...],
    n_steps: int,
) -> TargetAttribution:
    """Integrated Gradients (Gauss-Legendre, `n_steps`) for every output of `target`; delta = Σ attr − Δf."""
    from captum.attr import IntegratedGradients

    fwd.target = target
    ig = IntegratedGradients(fwd.parts)
    ig.gradient_func = summed_gradients
    with torch.no_grad():
        change = (fwd.parts(*parts) - fwd.parts(*baselines)).double().cpu().numpy()
    values = []
    for k in range(len(target.outputs)):
        attrs = ig.attribute(parts, baselines=baselines, target=k, n_steps=n_steps, method="gausslegendre")
        values.append(fwd.layer.reduce(attrs))
    out = np.stack(values, axis=1)
    return TargetAttribution(out, out.sum(axis=2) - change, change)


def summed_gradients(
    forward_fn: Callable[..., Tensor],
    inputs: tuple[Tensor, ...],
    target_ind: Any = None,
    additional_forward_args: Any = None,
) -> tuple[Tensor, ...]:
    """Captum's `compute_gradients` (same signature, same result) without its per-row cost.

    Captum differentiates `torch.unbind(outputs)`: one scalar per interpolated row (n_steps x rows of
    them), each given its own `ones_like` gradient, which costs more than the forward and backward
    themselves on a small model. `autograd.grad` of several outputs is the gradient of their sum, so
    differentiating `outputs.sum()` once gives the same tensors (`[n_steps * rows, ...]` per input).
    """
    from captum._utils.common import _run_forward

    with torch.autograd.set_grad_enabled(True):
        outputs = _run_forward(forward_fn, inputs, target_ind, additional_forward_args)
        if not isinstance(outputs, Tensor) or outputs[0].numel() != 1:
            raise RuntimeError("the attribution target must give one value per row")
        return torch.autograd.grad(outputs.sum(), inputs)


def ablation(
    fwd: Forward, target: Target, columns: tuple[Tensor, ...], baselines: tuple[Tensor, ...]
) -> TargetAttribution:
    """FeatureAblation of each feature's whole column (all its width) for every output of `target`."""
    from captum.attr import FeatureAblation

    fwd.target = target
    fa = FeatureAblation(fwd.raw)
    masks = tuple(torch.full((1, *c.shape[1:]), i, dtype=torch.long) for i, c in enumerate(columns))
    per_eval = max(1, min(len(columns), ABLATION_ROWS_PER_FORWARD // max(fwd.rows, 1)))
    values = []
    with torch.no_grad():
        for k in range(len(target.outputs)):
            attrs = fa.attribute(
                columns, baselines=baselines, target=k, feature_mask=masks, perturbations_per_eval=per_eval
            )
            values.append(np.stack([_first(a) for a in attrs], axis=1))
    out = np.stack(values, axis=1)
    nan = np.full(out.shape[:2], np.nan)
    return TargetAttribution(out, nan, nan.copy())


def _first(attr: Tensor) -> np.ndarray:
    """FeatureAblation gives every element of a feature group the group's value: take one per row."""
    return attr.detach().reshape(attr.shape[0], -1)[:, 0].double().cpu().numpy()


def dense_baselines(parts: Sequence[Tensor], mean: bool) -> tuple[Tensor, ...]:
    """Zeros, or the sample mean broadcast over the rows, per attribution-space tensor."""
    if mean:
        return tuple(p.mean(dim=0, keepdim=True).expand_as(p).clone() for p in parts)
    return tuple(torch.zeros_like(p) for p in parts)


def reference_value(column: Tensor, is_id: bool, mean: bool) -> Tensor:
    """Ablation baseline `[1, ...]` of one raw column: the most frequent id (row) for ids, else zero or the mean."""
    if is_id:
        flat = column.reshape(column.shape[0], -1).cpu().numpy()
        values, counts = np.unique(flat, axis=0, return_counts=True)
        mode = torch.from_numpy(values[int(np.argmax(counts))].copy()).to(column.device, column.dtype)
        return mode.reshape(1, *column.shape[1:])
    if mean:
        return column.float().mean(dim=0, keepdim=True).to(column.dtype)
    return torch.zeros((1, *column.shape[1:]), dtype=column.dtype, device=column.device)
