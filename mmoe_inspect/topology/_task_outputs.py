"""The one-line error for a task whose `output` (spec key or index) is not in what the model returns.

A spec is hand-edited, so a task's `output` may name a key the model's output dict lacks, or an
index past its output tensor's columns (or one too large for any integer). That is a spec error
(exit 2) naming the task and what the output holds, not an internal KeyError/IndexError.
"""

from __future__ import annotations

from typing import Any

import torch

from mmoe_inspect._text import cut, printable
from mmoe_inspect.topology.spec import TopologyError


def describe_output(out: Any) -> str:
    """What a model's forward returned, in a few words: keys of a dict, shape of a tensor, length of a list."""
    if isinstance(out, dict):
        return f"a dict with keys {cut([printable(repr(k)) for k in out], 8)}"
    if isinstance(out, torch.Tensor):
        cols = f", so indices 0..{out.shape[1] - 1}" if out.dim() == 2 and out.shape[1] else ""
        return f"a tensor of shape {tuple(out.shape)}{cols}"
    if isinstance(out, (list, tuple)):
        return f"a {type(out).__name__} of {len(out)} item(s), so indices 0..{len(out) - 1}"
    return f"a {type(out).__name__}"


def output_error(task: str, key: Any, out: Any, exc: BaseException) -> TopologyError:
    """`TopologyError`: task `task`'s output `key` cannot be taken from the model's output `out`."""
    shown = printable(repr(key))
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return TopologyError(
        f"task {printable(task)!r}: its output {shown} is not in what the model returns "
        f"({describe_output(out)}; {type(exc).__name__}); fix the task's `output` in the spec"
    )
