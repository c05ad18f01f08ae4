"""Building blocks of the reference models: input layer, MLP, softmax gate, task tower, mixture."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Union

import torch
from torch import Tensor, nn

from mmoe_inspect.data.schema import FeatureSpec

ModelInput = Union[Tensor, Mapping[str, Tensor]]
"""A float tensor `[batch, n_dense]` (no categorical features) or `{feature name: tensor [batch]}`."""


class MLP(nn.Sequential):
    """Linear → ReLU (→ Dropout) per width in `hidden`: `[batch, in_dim]` → `[batch, hidden[-1]]`.

    With no widths it is the identity and `out_dim == in_dim`.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], dropout: float = 0.0) -> None:
        layers: list[nn.Module] = []
        width = in_dim
        for out in hidden:
            layers += [nn.Linear(width, out), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = out
        super().__init__(*layers)
        self.out_dim = width


class Gate(nn.Sequential):
    """Softmax gate: `[batch, in_dim]` → probabilities `[batch, n_experts]` (rows sum to 1)."""

    def __init__(self, in_dim: int, n_experts: int, hidden: Sequence[int] = ()) -> None:
        body = MLP(in_dim, hidden)
        super().__init__(*body, nn.Linear(body.out_dim, n_experts), nn.Softmax(dim=1))
        self.n_experts = n_experts


class Tower(nn.Module):
    """Task head: MLP → 1 unit, `[batch, in_dim]` → `[batch]`; a probability (sigmoid) for binary tasks."""

    def __init__(self, in_dim: int, hidden: Sequence[int], binary: bool, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = MLP(in_dim, hidden, dropout)
        self.out = nn.Linear(self.body.out_dim, 1)
        self.binary = binary

    def forward(self, x: Tensor) -> Tensor:
        y = self.out(self.body(x)).squeeze(-1)
        return torch.sigmoid(y) if self.binary else y


class FeatureInput(nn.Module):
    """Input layer: dense columns then one embedding per categorical feature → `[batch, input_dim]`.

    Accepts `{name: tensor [batch]}` (dense float, categorical integer ids) or, when the spec has no
    categorical features, a float tensor `[batch, n_dense]` whose columns follow `spec.dense`.
    """

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__()
        self.dense = tuple(spec.dense)
        self.categorical = tuple(c.name for c in spec.categorical)
        self.embeddings = nn.ModuleList(nn.Embedding(c.cardinality, c.embed_dim) for c in spec.categorical)
        self.out_dim = spec.input_dim

    def forward(self, x: ModelInput) -> Tensor:
        if isinstance(x, Tensor):
            if self.categorical:
                raise TypeError(
                    f"this model has categorical features {list(self.categorical)}: pass a dict of columns"
                )
            return x.float()
        parts = [torch.stack([x[name] for name in self.dense], dim=1).float()] if self.dense else []
        parts += [emb(x[name]) for name, emb in zip(self.categorical, self.embeddings, strict=True)]
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def stack_experts(experts: nn.ModuleList, x: Tensor) -> Tensor:
    """Run every expert on `x` `[batch, in_dim]` → `[batch, n_experts, dim]`."""
    return torch.stack([expert(x) for expert in experts], dim=1)


def mix(gate: Tensor, stacked: Tensor) -> Tensor:
    """Gate-weighted sum of experts: gate `[batch, E]`, stacked `[batch, E, dim]` → `[batch, dim]`."""
    return torch.bmm(gate.unsqueeze(1), stacked).squeeze(1)
