"""`move_module`: `model.to(device)` that leaves meta tensors where they are.

A model built the `torch.func` way (`stack_module_state` + `vmap(functional_call(base, ...))`, PyTorch's
model-ensembling tutorial) keeps a `base` module on the meta device: it holds no data, only the shapes the
stacked parameters are called with. `nn.Module.to` refuses to copy it ("Cannot copy out of meta tensor").
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["move_module", "real_tensors"]


def real_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The model's parameters and buffers that hold data (not on the meta device)."""
    return [t for t in (*model.parameters(), *model.buffers()) if not t.is_meta]


def move_module(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Move every parameter and buffer that holds data to `device` (in place, like `model.to`); meta
    tensors stay meta."""
    if len(real_tensors(model)) == sum(1 for _ in (*model.parameters(), *model.buffers())):
        return model.to(device)
    target = torch.device(device)
    return model._apply(lambda t: t if t.is_meta else t.to(target))
