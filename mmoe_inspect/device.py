"""Where tensors live: the model's device, moving inputs there, and moving a whole model for one call.

One module for every pass (inspection, causal analyses, attributions, monitor), so they move inputs the
same way: tensors inside dicts, lists and tuples (a tuple input is the forward's positional arguments)
go to the model's device, pinned and non-blocking from the host to CUDA (no host wait per batch).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields, is_dataclass, replace
from typing import Any

import torch
from torch import nn

from mmoe_inspect._move import move_module, real_tensors
from mmoe_inspect.recording.recorder import RecordingError

__all__ = ["host", "model_device", "on_device", "to_device"]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter, else its first buffer (CPU for a model with neither)."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def to_device(x: Any, device: torch.device) -> Any:
    """`x` (a tensor, or dicts/lists/tuples of them) on `device`; other values unchanged, no copy when there."""
    if isinstance(x, torch.Tensor):
        if x.device == device:
            return x
        if device.type == "cuda" and x.device.type == "cpu":  # pinned + async: no host wait per batch
            return x.pin_memory().to(device, non_blocking=True)
        return x.to(device)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(to_device(v, device) for v in x)
    return x


def host(summary: Any) -> Any:
    """A computed summary (dataclass) with its tensors copied to the host (no-op on CPU)."""
    if not is_dataclass(summary) or isinstance(summary, type):
        return summary
    moved = {
        f.name: getattr(summary, f.name).cpu()
        for f in fields(summary)
        if isinstance(getattr(summary, f.name), torch.Tensor)
        and getattr(summary, f.name).device.type != "cpu"
    }
    return replace(summary, **moved) if moved else summary


@contextmanager
def on_device(model: nn.Module, device: str | torch.device | None) -> Iterator[None]:
    """The model on `device` for the block, then back where it was (no-op when None or already there).

    A device that is not available raises a `RecordingError` (one line) before anything moves.
    """
    if device is None:
        yield
        return
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise RecordingError(f"device {str(device)!r}: CUDA is not available on this machine")
    if target.type == "cuda" and target.index is not None and target.index >= torch.cuda.device_count():
        raise RecordingError(
            f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    tensors = real_tensors(model)  # a torch.func base module's meta tensors hold no data and stay
    where = {t.device for t in tensors}
    if (
        not tensors
        or where == {target}
        or (target.index is None and {d.type for d in where} == {target.type})
    ):
        yield
        return
    if len(where) > 1:
        raise RecordingError(
            f"the model is spread over {sorted(map(str, where))}: move it yourself instead of passing device="
        )
    original = where.pop()
    move_module(model, target)
    try:
        yield
    finally:
        move_module(model, original)
