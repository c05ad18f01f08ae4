"""The one call convention for model inputs: a tuple means positional arguments.

An input function returns what the model's `forward` takes: a tensor `[batch, D]`, a dict of
tensors, or, for a forward of several tensors (`forward(categorical, numerical)`), a tuple of them.
`call_model(model, x)` is `model(*x)` for a tuple and `model(x)` otherwise, as discovery's trace
calls it; a forward that takes ONE tuple gets it wrapped in a 1-tuple: `((ids, dense),)`.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def call_model(model: nn.Module, x: Any) -> Any:
    """`model(*x)` for a tuple of arguments, `model(x)` for anything else (a tensor, a dict, a list)."""
    if isinstance(x, tuple):
        return model(*x)
    return model(x)
