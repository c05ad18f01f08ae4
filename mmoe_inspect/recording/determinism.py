"""Whether a model's eval-mode forward is deterministic: two forwards on the same rows must agree.

A gate with noise left on in eval mode (noisy top-k gating that ignores `self.training`, `F.dropout(...,
training=True)`, sampling) makes every routing statistic mix the input's routing with the noise: input
dependence overstates how the gates follow the rows, a uniform gate looks like a choosing one. The check
costs two forwards of a few rows; torch's random state is put back, so the model and the caller's random
stream are left as found.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmoe_inspect.data.call import call_model
from mmoe_inspect.recording.hooks import model_mode
from mmoe_inspect.topology._trace import iter_tensors

__all__ = ["forward_variation"]


def forward_variation(model: nn.Module, example: Any) -> float:
    """The largest absolute difference between the floating outputs of two eval-mode forwards of `model` on
    `example` (0.0 when they agree within `TOLERANCE` of the outputs' scale; NaN in one forward only is
    inf). Modes and random state are restored."""
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda), model_mode(model), torch.inference_mode():
        first = [t.detach().clone() for t in iter_tensors(call_model(model, example))]
        second = list(iter_tensors(call_model(model, example)))
    worst = 0.0
    for a, b in zip(first, second, strict=False):
        if a.shape != b.shape or not a.is_floating_point():
            continue
        both = torch.isfinite(a) & torch.isfinite(b)
        if bool((torch.isnan(a) != torch.isnan(b)).any()):
            return float("inf")
        if both.any():
            x, y = a[both].double(), b[both].double()
            diff = float((x - y).abs().max())
            # a few ULPs (atomics in a GPU's index_add_/scatter_add_ sum in any order) are not randomness
            if diff > TOLERANCE * max(1.0, float(x.abs().max())):
                worst = max(worst, diff)
    return worst


TOLERANCE = 1e-5
"""Relative output difference below which two forwards count as equal (float32 reduction order)."""
