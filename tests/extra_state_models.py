"""A small MMoE whose expert bank carries extra state (`nn.Module.get_extra_state` / `set_extra_state`), saved
as `<bank>._extra_state` in its state_dict, as TransformerEngine's FP8 layers and quantization observers do.

`kind` says what the extra state is: `plain` a dict of plain values, `tensor` a tensor, `meta` a dataclass
(`Meta`, which weights-only loading does not rebuild), `hostile` an object whose unpickling runs a command.
Used by `tests/test_extra_state.py` as `--model-code` (a copy, loaded under its own name).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from torch import nn

N_FEATURES = 8
N_EXPERTS = 3
TASKS = ("click", "buy")


@dataclasses.dataclass
class Meta:
    version: int = 2
    scale: float = 0.5


class Hostile:
    """Unpickling it runs `touch <marker>`: a stand-in for any command a file could carry."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class Bank(nn.Module):
    """`N_EXPERTS` ReLU experts `[B, 6]` stacked to `[B, E, 6]`, with a calibration record as extra state."""

    def __init__(self, kind: str, marker: str = "") -> None:
        super().__init__()
        self.kind = kind
        self.marker = marker
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(N_FEATURES, 6), nn.ReLU()) for _ in range(N_EXPERTS)
        )
        self.record: Any = None

    def get_extra_state(self) -> Any:
        if self.kind == "plain":
            return {"version": 2, "scale": 0.5, "name": "fp8", "history": [1.0, 2.0]}
        if self.kind == "tensor":
            return torch.arange(3.0)
        if self.kind == "meta":
            return Meta()
        return Hostile(self.marker)

    def set_extra_state(self, state: Any) -> None:
        self.record = state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([e(x) for e in self.experts], dim=1)


class ExtraStateMMoE(nn.Module):
    def __init__(self, kind: str = "plain", marker: str = "") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.bank = Bank(kind, marker)
        self.gates = nn.ModuleDict({t: nn.Linear(N_FEATURES, N_EXPERTS) for t in TASKS})
        self.towers = nn.ModuleDict({t: nn.Linear(6, 1) for t in TASKS})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ex = self.bank(x)  # [B, E, 6]
        out = {}
        for t in TASKS:
            g = torch.softmax(self.gates[t](x), dim=1)  # [B, E]
            out[t] = torch.sigmoid(self.towers[t]((g.unsqueeze(-1) * ex).sum(1))).squeeze(1)
        return out


def build_plain() -> ExtraStateMMoE:
    return ExtraStateMMoE("plain")


def build_tensor() -> ExtraStateMMoE:
    return ExtraStateMMoE("tensor")


def build_meta() -> ExtraStateMMoE:
    return ExtraStateMMoE("meta")
