"""Did the model change itself while it was inspected? Parameters and buffers fingerprinted before and after.

Inspection only runs the model's forward (hooks removed, modes restored), but a model may write to
itself in forward: bump a counter buffer, update a running statistic in eval mode, nudge a weight.
Then every batch sees a different model and no number of the inspection describes the model that
was handed in. The tool cannot undo such writes; it detects them and says so.

A fingerprint holds, per parameter and buffer (by name): the tensor object's identity (a buffer
reassigned in forward is a new object), shape, dtype, its autograd version counter (bumped by
every in-place op, also under `no_grad`/`inference_mode`), and a float64 checksum of its values
(which also sees writes through `.data`, which bypass the version counter). The checksums are one
reduction per tensor on the tensor's device and one host read in all, two fingerprints per
inspection: small against the inspection itself (timing in `bench/results/small_ops.md`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelFingerprint:
    """Per parameter/buffer name: `(identity, shape, dtype, version)` and a float64 checksum."""

    meta: dict[str, tuple[int, tuple[int, ...], torch.dtype, int]]
    sums: dict[str, float]


def fingerprint(model: nn.Module) -> ModelFingerprint:
    """The fingerprint of every parameter and buffer of `model` (no copy of the values is kept)."""
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    meta: dict[str, tuple[int, tuple[int, ...], torch.dtype, int]] = {}
    sums: list[torch.Tensor] = []
    with torch.no_grad():
        for name, t in named:
            meta[name] = (id(t), tuple(t.shape), t.dtype, _version(t))
            sums.append(_checksum(t))
    values = torch.stack([s.cpu() for s in sums]).tolist() if sums else []
    return ModelFingerprint(meta, dict(zip(meta, values, strict=True)))


def changed_tensors(before: ModelFingerprint, after: ModelFingerprint) -> list[str]:
    """Names of the parameters/buffers added, removed, replaced or edited between two fingerprints."""
    names = list(dict.fromkeys([*before.meta, *after.meta]))
    out = []
    for name in names:
        a, b = before.meta.get(name), after.meta.get(name)
        if a != b:
            out.append(name)
            continue
        x, y = before.sums[name], after.sums[name]
        if x != y and not (x != x and y != y):  # NaN == NaN here: an unchanged NaN weight is unchanged
            out.append(name)
    return out


def _version(t: torch.Tensor) -> int:
    try:
        return int(t._version)
    except RuntimeError:  # inference tensors have no version counter
        return -1


def _checksum(t: torch.Tensor) -> torch.Tensor:
    """A float64 scalar that changes when any value of `t` changes (sum of values plus a position-weighted sum)."""
    if t.is_meta or t.numel() == 0:
        return torch.zeros((), dtype=torch.float64)
    if t.layout == torch.sparse_coo:  # a graph model's adjacency buffer: its values and where they sit
        c = t.detach().coalesce()
        return _checksum(c._values()) + _checksum(c._indices())
    if t.layout != torch.strided:
        return _checksum(t.detach().to_dense())
    flat = t.detach().reshape(-1)
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    # accumulated in float64 without a float64 copy; the weights (1, 2, 1, 2, ...) make a swap of two
    # neighbouring values visible too
    return flat.sum(dtype=torch.float64) + flat[1::2].sum(dtype=torch.float64)
