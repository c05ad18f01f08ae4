"""Planting known routing into a corpus model's gate parameters (plain torch, deterministic).

A gate is planted through its final logit layer `(W [E, in], b [E])` (views into the model's own
parameters) plus any other gate parameters (`extra`, copied for "identical"):

* specialized: `W ~ N(0, scale^2 / in)`, `b = 0`, a different draw per gate: input-dependent routing
  that differs between tasks;
* collapsed: the collapsed gate gets `W = 0` and `b = big` on one expert (softmax/sparsemax: 0 elsewhere;
  sigmoid: `-big` elsewhere): >= 0.99 of the weight on that expert for every row;
* dead_expert: in every gate that mixes the dead expert, its row of `W` is 0 and its bias `-big`;
* identical: every task gate is a copy of the first one (same inputs, same parameters).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

BIG = 40.0


@dataclass
class GateParams:
    weight: torch.Tensor  # [E, in], a view of the model's parameter
    bias: torch.Tensor  # [E]
    extra: list[torch.Tensor] = field(default_factory=list)

    def tensors(self) -> list[torch.Tensor]:
        return [self.weight, self.bias, *self.extra]


@torch.no_grad()
def plant_logit_gates(
    gates: Mapping[str, GateParams],
    case: str,
    *,
    expert_names: Mapping[str, Sequence[str]],
    collapse: tuple[str, str],
    dead: str,
    identical: Sequence[str] = (),
    kind: str = "softmax",
    scale: float = 2.0,
    seed: int = 0,
    big: float = BIG,
) -> None:
    """Plant `case` into logit gates (`kind` "softmax"/"sparsemax"/"topk": one positive bias collapses;
    "sigmoid": +big on the collapse expert and -big elsewhere)."""
    gen = torch.Generator().manual_seed(seed)
    for p in gates.values():
        n_in = p.weight.shape[1]
        p.weight.copy_(torch.randn(p.weight.shape, generator=gen) * scale / math.sqrt(n_in))
        p.bias.zero_()
    if case == "collapsed":
        key, expert = collapse
        p = gates[key]
        col = list(expert_names[key]).index(expert)
        p.weight.zero_()
        p.bias.fill_(-big if kind == "sigmoid" else 0.0)
        p.bias[col] = big
    elif case == "dead_expert":
        for key, p in gates.items():
            if dead in expert_names[key]:
                col = list(expert_names[key]).index(dead)
                p.weight[col].zero_()
                p.bias[col] = -big
    elif case == "identical":
        first = gates[identical[0]]
        for key in identical[1:]:
            for dst, src in zip(gates[key].tensors(), first.tensors(), strict=False):
                dst.copy_(src)
    elif case not in ("specialized", "plain"):
        raise ValueError(f"unknown case {case!r}")


@torch.no_grad()
def plant_dselect(model, case: str, *, scale: float = 2.0, seed: int = 0) -> None:
    """DSelect-k (`paper_styles.DSelectKMMoE`, 4 experts = 2 code bits, 2 selectors): collapsed pushes every
    selector of the first task past +gamma/2 on both bits (expert 3 = code 11, exactly one-hot); dead forces
    selector 0's bit 0 and selector 1's bit 1 to 0 in every task, so expert 3 gets exactly 0."""
    gen = torch.Generator().manual_seed(seed)
    tasks = model.tasks
    for t in tasks:
        zw, ww = model.z_weight[t], model.w_weight[t]
        zw.copy_(torch.randn(zw.shape, generator=gen) * scale / math.sqrt(zw.shape[-1]))
        ww.copy_(torch.randn(ww.shape, generator=gen) * scale / math.sqrt(ww.shape[-1]))
        model.z_bias[t].zero_()
        model.w_bias[t].zero_()
    g = model.gamma
    if case == "collapsed":
        model.z_weight[tasks[0]].zero_()
        model.z_bias[tasks[0]].fill_(g)
    elif case == "dead_expert":
        for t in tasks:
            for s, bit in ((0, 0), (1, 1)):
                model.z_weight[t][s, bit].zero_()
                model.z_bias[t][s, bit] = -g
    elif case == "identical":
        for t in tasks[1:]:
            for name in ("z_weight", "z_bias", "w_weight", "w_bias"):
                getattr(model, name)[t].copy_(getattr(model, name)[tasks[0]])


SCALAR_ROWS = {
    "specialized": ([0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4]),
    "collapsed": ([0.0, 1.0, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4]),
    "dead_expert": ([0.6, 0.3, 0.1, 0.0], [0.15, 0.35, 0.5, 0.0]),
    "identical": ([0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]),
}


@torch.no_grad()
def plant_scalar(model, case: str) -> None:
    """Learned scalar mixture (`paper_styles.ScalarMixtureMTL`): one fixed vector per task (rows above)."""
    model.alpha.copy_(torch.tensor(SCALAR_ROWS[case]))
