"""Multi-task MoE models whose expert mixing is invisible to a `TorchFunctionMode` tracer.

Each still shows gate-like evidence (a softmax over the experts whose values reach the outputs, or
Linear gate logits inside modules named `gates`/`experts`), so a tool must answer "could not verify
the routing", never "no gates". The mixing is done:

* `NumpyMixMMoE`: in numpy (`.numpy()`, numpy broadcasting, `torch.from_numpy`);
* `DisabledTorchFunctionMMoE`: inside `torch._C.DisableTorchFunction()`;
* `CustomOpMMoE`: by a `torch.library.custom_op` (one opaque op; its body is not traced);
* `AutogradFunctionMoE`: softmax AND mixing inside a custom `autograd.Function` computing in numpy;
* `ScriptedMixMMoE`: by a `torch.jit.script` function (TorchScript runs outside Python).

`forward(x, return_gates=True)` also returns the gate weights `{task: [B, E]}`. Only torch and numpy.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

TASKS = ("click", "like")


def _expert(n_in: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU())


class _Base(nn.Module):
    def __init__(self, n_features: int = 10, n_experts: int = 4, hidden: int = 8):
        super().__init__()
        self.experts = nn.ModuleList(_expert(n_features, hidden) for _ in range(n_experts))
        self.gates = nn.ModuleDict({t: nn.Linear(n_features, n_experts) for t in TASKS})
        self.towers = nn.ModuleDict({t: nn.Linear(hidden, 1) for t in TASKS})

    def mix(self, w: torch.Tensor, ex: torch.Tensor) -> torch.Tensor:  # [B, E], [B, E, H] -> [B, H]
        raise NotImplementedError

    def forward(self, x: torch.Tensor, return_gates: bool = False):
        ex = torch.stack([e(x) for e in self.experts], dim=1)
        out, used = {}, {}
        for t in TASKS:
            w = torch.softmax(self.gates[t](x), dim=1)
            used[t] = w
            out[t] = torch.sigmoid(self.towers[t](self.mix(w, ex))).squeeze(-1)
        return (out, used) if return_gates else out


class NumpyMixMMoE(_Base):
    """Mixture in numpy: no torch op sees the weights meet the experts."""

    def mix(self, w, ex):
        mixed = (w.detach().numpy()[:, :, None] * ex.detach().numpy()).sum(axis=1)
        return torch.from_numpy(np.ascontiguousarray(mixed, dtype=np.float32))


class DisabledTorchFunctionMMoE(_Base):
    """Mixture under `torch._C.DisableTorchFunction()`: `__torch_function__` modes are bypassed."""

    def mix(self, w, ex):
        with torch._C.DisableTorchFunction():
            return (w.unsqueeze(-1) * ex).sum(dim=1)


def _weighted_mix_op():
    """`torch.ops.mmoe_corpus.weighted_mix`, registered once per process (the file may be imported twice:
    as `corpus.unresolved` and by `--model-code`)."""
    try:
        return torch.ops.mmoe_corpus.weighted_mix
    except (AttributeError, RuntimeError):
        pass

    @torch.library.custom_op("mmoe_corpus::weighted_mix", mutates_args=())
    def weighted_mix(w: torch.Tensor, ex: torch.Tensor) -> torch.Tensor:
        return (w.unsqueeze(-1) * ex).sum(dim=1)

    @weighted_mix.register_fake
    def _(w, ex):
        return ex.new_empty(ex.shape[0], ex.shape[2])

    return torch.ops.mmoe_corpus.weighted_mix


_weighted_mix_op()


class CustomOpMMoE(_Base):
    """Mixture by a custom op: the tracer sees one op `weighted_mix.default`, not what it computes."""

    def mix(self, w, ex):
        return torch.ops.mmoe_corpus.weighted_mix(w, ex)


class _SoftmaxMix(torch.autograd.Function):
    """softmax(logits) over experts and the weighted sum, in numpy (like a hand-written kernel)."""

    @staticmethod
    def forward(ctx, logits, ex):
        lg = logits.detach().numpy().astype(np.float64)
        p = np.exp(lg - lg.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        mixed = (p[:, :, None] * ex.detach().numpy()).sum(axis=1)
        return torch.from_numpy(mixed.astype(np.float32))

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - inference-only corpus
        raise RuntimeError("inference only")


class AutogradFunctionMoE(_Base):
    """Gate logits from `gates.<task>` (a visible Linear), softmax and mixture inside `_SoftmaxMix`."""

    def forward(self, x: torch.Tensor, return_gates: bool = False):
        ex = torch.stack([e(x) for e in self.experts], dim=1)
        out, used = {}, {}
        for t in TASKS:
            logits = self.gates[t](x)
            if return_gates:  # the truth path only: the user's forward has no visible softmax
                used[t] = torch.softmax(logits.detach().double(), dim=1)
            out[t] = torch.sigmoid(self.towers[t](_SoftmaxMix.apply(logits, ex))).squeeze(-1)
        return (out, used) if return_gates else out


@torch.jit.script
def scripted_mix(w: torch.Tensor, ex: torch.Tensor) -> torch.Tensor:
    return torch.sum(w.unsqueeze(-1) * ex, dim=1)


class ScriptedMixMMoE(_Base):
    """Mixture by a TorchScript function: its ops run in the TorchScript interpreter, not in Python."""

    def mix(self, w, ex):
        return scripted_mix(w, ex)
