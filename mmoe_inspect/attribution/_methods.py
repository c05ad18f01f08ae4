"""The two attribution methods, each for one target over the sampled rows.

* `integrated_gradients`: Captum's `IntegratedGradients` computation (reproduced step for step, the
  same numbers) on a forward function of the attribution space (dense columns and embedding outputs,
  see `_inputs`), one forward shared by several targets; gradients come from `torch.autograd.grad`
  on the interpolated inputs, so parameters' `.grad` are never touched.
* `ablation`: Captum's `FeatureAblation` on the raw input columns (works for ids that no embedding
  reads): attribution = output − output with that feature set to its baseline.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmoe_inspect.attribution._inputs import InputLayer, tile
from mmoe_inspect.attribution._targets import AttributionSession, Target

ABLATION_ROWS_PER_FORWARD = 16_384
"""FeatureAblation evaluates up to this many rows (perturbed copies of the sample) per forward."""
IG_OUTPUTS_PER_FORWARD = 32
"""Integrated Gradients shares one forward among consecutive targets of one kind up to this many
outputs in all (a target with more outputs has a forward of its own)."""


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
        return y + _anchor(parts, y.dtype)

    def parts_many(self, targets: Sequence[Target], parts: Sequence[Tensor]) -> list[Tensor]:
        """`parts` for several targets from one forward: each target's outputs `[N, K]`, anchored as in `parts`."""
        n_dense = len(self.layer.dense)
        x = self.layer.with_dense(self.inputs(parts[0].shape[0]), parts[:n_dense])
        ys = self.session.run_many(x, targets, parts[n_dense:] if len(parts) > n_dense else None)
        return [y + _anchor(parts, y.dtype) for y in ys]

    def raw(self, *columns: Tensor) -> Tensor:
        assert self.target is not None
        x = self.layer.with_raw(self.inputs(columns[0].shape[0]), columns)
        return self.session.run(x, self.target, None)


def _anchor(parts: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
    """A scalar 0 that depends on every part (gradient 0 to each element), so each part joins the graph.

    Zero also when a part holds NaN/inf (a NaN embedding row): `sum(p) * 0` would be NaN there and add
    NaN to every row's output, not only to the rows that are NaN."""
    return sum((p * 0.0).nan_to_num(0.0, 0.0, 0.0).sum().to(dtype) for p in parts)  # type: ignore[return-value]


def integrated_gradients(
    fwd: Forward,
    targets: Sequence[Target],
    parts: tuple[Tensor, ...],
    baselines: tuple[Tensor, ...],
    n_steps: int,
) -> Iterator[TargetAttribution]:
    """Integrated Gradients (Gauss-Legendre, `n_steps`) of every output of each target, in order;
    delta = Σ attr − Δf.

    Captum's `IntegratedGradients.attribute`, step for step (its alphas and step sizes, the same
    interpolated batch, its step-weighted sum of the gradients, times input − baseline: the same
    numbers), except that the targets share ONE forward of the interpolated batch and each output
    is one backward pass from it: Captum would run the whole model again for every output of every
    target (and backpropagate through a per-row `unbind` of the outputs), which made attributions
    cost several times the model's work. The forward runs when the first attribution is asked for.
    """
    step_sizes, alphas = gauss_legendre(n_steps)
    scaled = tuple(
        torch.cat([b + alpha * (p - b) for alpha in alphas], dim=0).requires_grad_()
        for p, b in zip(parts, baselines, strict=True)
    )
    with torch.no_grad():
        changes = [
            (y1 - y0).double().cpu().numpy()
            for y1, y0 in zip(fwd.parts_many(targets, parts), fwd.parts_many(targets, baselines), strict=True)
        ]
    with torch.enable_grad():
        outputs = fwd.parts_many(targets, scaled)
    weights = [torch.tensor(step_sizes).float().view(n_steps, 1).to(g.device) for g in scaled]
    for y, change, t in zip(outputs, changes, targets, strict=True):
        values = []
        for k in range(len(t.outputs)):
            with torch.enable_grad():
                grads = torch.autograd.grad(y[:, k].sum(), scaled, retain_graph=True)
            total = tuple(  # Captum's step-weighted sum over the steps (its `_reshape_and_sum`)
                torch.sum(
                    (g.contiguous().view(n_steps, -1) * w).reshape(
                        (n_steps, g.shape[0] // n_steps, *g.shape[1:])
                    ),
                    dim=0,
                )
                for g, w in zip(grads, weights, strict=True)
            )
            attrs = tuple(tg * (p - b) for tg, p, b in zip(total, parts, baselines, strict=True))
            values.append(fwd.layer.reduce(attrs))
        out = np.stack(values, axis=1)
        yield TargetAttribution(out, out.sum(axis=2) - change, change)


def gauss_legendre(n_steps: int) -> tuple[list[float], list[float]]:
    """Captum's Gauss-Legendre step sizes and alphas on [0, 1] (its `gauss_legendre_builders`, the same
    floats), without importing `captum.attr` (which loads every Captum method) for two lines of numpy."""
    nodes, weights = np.polynomial.legendre.leggauss(n_steps)
    return (0.5 * weights).tolist(), (0.5 * (1 + nodes)).tolist()


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
    """Zeros, or the sample mean broadcast over the rows, per attribution-space tensor `[rows, ...]`.

    The mean is taken over the rows whose values are all finite: one NaN/inf row (a NaN embedding
    row, a NaN input) would otherwise make the baseline, and so every row's attributions, NaN."""
    if mean:
        return tuple(_finite_mean(p).expand_as(p).clone() for p in parts)
    return tuple(torch.zeros_like(p) for p in parts)


def _finite_mean(p: Tensor) -> Tensor:
    """`[1, ...]` mean of `p` `[rows, ...]` over its all-finite rows (over every row when none is)."""
    finite = torch.isfinite(p.reshape(p.shape[0], -1)).all(dim=1)
    rows = p if bool(finite.all()) or not bool(finite.any()) else p[finite]
    return rows.mean(dim=0, keepdim=True)


def reference_value(column: Tensor, is_id: bool, mean: bool) -> Tensor:
    """Ablation baseline `[1, ...]` of one raw column: the most frequent id (row) for ids, else zero or the mean."""
    if is_id:
        flat = column.reshape(column.shape[0], -1).cpu().numpy()
        values, counts = np.unique(flat, axis=0, return_counts=True)
        mode = torch.from_numpy(values[int(np.argmax(counts))].copy()).to(column.device, column.dtype)
        return mode.reshape(1, *column.shape[1:])
    if mean:
        return _finite_mean(column.float()).to(column.dtype)
    return torch.zeros((1, *column.shape[1:]), dtype=column.dtype, device=column.device)
