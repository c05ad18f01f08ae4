"""The one call convention for model inputs (a tuple means positional arguments), and what counts as a
per-row prediction in a model's output.

An input function returns what the model's `forward` takes: a tensor `[batch, D]`, a dict of
tensors, or, for a forward of several tensors (`forward(categorical, numerical)`), a tuple of them.
`call_model(model, x)` is `model(*x)` for a tuple and `model(x)` otherwise, as discovery's trace
calls it; a forward that takes ONE tuple gets it wrapped in a 1-tuple: `((ids, dense),)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn


def call_model(model: nn.Module, x: Any) -> Any:
    """`model(*x)` for a tuple of arguments, `model(x)` for anything else (a tensor, a dict, a list)."""
    if isinstance(x, tuple):
        return model(*x)
    return model(x)


def input_rows(x: Any) -> int:
    """Rows of a model input: the first dimension of its first tensor (of a dict's values, a list's or a
    tuple's items, depth first); a ValueError when it holds no tensor with a dimension."""
    if isinstance(x, torch.Tensor) and x.dim():
        return int(x.shape[0])
    values = x.values() if isinstance(x, dict) else x if isinstance(x, list | tuple) else ()
    for v in values:
        try:
            return input_rows(v)
        except ValueError:
            continue
    raise ValueError("cannot tell the number of rows of the model input: pass row_index=")


def is_two_class(t: Any, batch: int) -> bool:
    """A two-class distribution per row `[batch, 2]` (PaddleRec's census towers): column 1 is P(positive)."""
    if not (
        isinstance(t, torch.Tensor) and t.ndim == 2 and tuple(t.shape) == (batch, 2) and t.is_floating_point()
    ):
        return False
    with torch.no_grad():
        v = t.detach().double()
        return bool(torch.isfinite(v).all() and v.min() >= 0 and ((v.sum(1) - 1).abs() <= 1e-4).all())


def plain_output(out: Any) -> Any:
    """A model output as the readers of task predictions take it: a dataclass instance (a hand-written
    `@dataclass` of per-task tensors) as the dict of its fields, in field order; anything else unchanged."""
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
    return out
