"""Multi-task MoE models written in the styles of public multi-task libraries (re-implemented, not copied).

Each class reproduces how one library wires its experts and gates, at toy size (10-16 inputs, 4 experts
of 8 units, 2 tasks), because that wiring (stacking order, mixing op, output container) is what gate
discovery has to cope with. Every `forward` is what the library's user runs; `forward(...,
return_gates=True)` also returns the exact gate tensors the mixture used (`{gate key: [batch, E]}`), for
the corpus's truth. Only torch is imported: these files are also passed to `--model-code`.
"""

from __future__ import annotations

import torch
from torch import nn


def _mlp(n_in: int, hidden: int, dropout: float = 0.0) -> nn.Sequential:
    """Linear -> ReLU -> Dropout: the one-layer expert of every library here."""
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(dropout))


class LibMTLStyleMMoE(nn.Module):
    """LibMTL `architecture/MMoE.py` style: experts stacked FIRST (`[E, B, H]`), per-task gates are
    `Sequential(Linear, Softmax(dim=-1))` in a ModuleDict, mixing by `einsum('ij..., ji -> j...')`.

    Input `[B, 10]` float; output `{task: P(task) [B]}`.
    """

    def __init__(self, n_features: int = 10, n_experts: int = 4, hidden: int = 8, tasks=("click", "like")):
        super().__init__()
        self.task_name = list(tasks)
        self.experts_shared = nn.ModuleList(_mlp(n_features, hidden, 0.1) for _ in range(n_experts))
        self.gate_specific = nn.ModuleDict(
            {t: nn.Sequential(nn.Linear(n_features, n_experts), nn.Softmax(dim=-1)) for t in self.task_name}
        )
        self.decoders = nn.ModuleDict({t: nn.Linear(hidden, 1) for t in self.task_name})

    def forward(self, inputs: torch.Tensor, return_gates: bool = False):
        experts_shared_rep = torch.stack([e(inputs) for e in self.experts_shared])  # [E, B, H]
        out, gates = {}, {}
        for task in self.task_name:
            selector = self.gate_specific[task](torch.flatten(inputs, start_dim=1))  # [B, E]
            gates[task] = selector
            gate_rep = torch.einsum("ij..., ji -> j...", experts_shared_rep, selector)  # [B, H]
            out[task] = torch.sigmoid(self.decoders[task](gate_rep)).squeeze(-1)
        return (out, gates) if return_gates else out


class FuxiMMoELayer(nn.Module):
    """FuxiCTR `MMoE_Layer` style: expert MLPs, gate MLPs emitting logits, ONE `nn.Softmax` module
    applied to every task's logits, experts stacked on dim 1 and mixed by `sum(g.unsqueeze(-1) * ex, 1)`."""

    def __init__(self, num_experts: int, num_tasks: int, input_dim: int, hidden: int):
        super().__init__()
        self.num_experts = num_experts
        self.num_tasks = num_tasks
        self.experts = nn.ModuleList(_mlp(input_dim, hidden) for _ in range(num_experts))
        self.gate = nn.ModuleList(
            nn.Sequential(nn.Linear(input_dim, 8), nn.ReLU(), nn.Linear(8, num_experts))
            for _ in range(num_tasks)
        )
        self.gate_activation = nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor):
        experts_output = torch.stack(
            [self.experts[i](x) for i in range(self.num_experts)], dim=1
        )  # [B, E, H]
        mmoe_output, gates = [], []
        for i in range(self.num_tasks):
            gate_output = self.gate_activation(self.gate[i](x))  # [B, E]
            gates.append(gate_output)
            mmoe_output.append(torch.sum(gate_output.unsqueeze(-1) * experts_output, dim=1))
        return mmoe_output, gates


class FuxiCTRStyleMMoE(nn.Module):
    """FuxiCTR `MMoE` model style: dense features through an embedding-like projection, the MMoE layer,
    one tower per label, outputs `{f"{label}_pred": P [B]}`."""

    def __init__(self, n_features: int = 12, labels=("click", "like"), n_experts: int = 4, hidden: int = 8):
        super().__init__()
        self.labels = list(labels)
        self.embedding_layer = nn.Linear(n_features, 12)
        self.mmoe_layer = FuxiMMoELayer(n_experts, len(self.labels), 12, hidden)
        self.tower = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, 4), nn.ReLU(), nn.Linear(4, 1)) for _ in labels
        )

    def forward(self, inputs: torch.Tensor, return_gates: bool = False):
        feature_emb = self.embedding_layer(inputs)
        expert_output, gates = self.mmoe_layer(feature_emb)
        tower_output = [self.tower[i](expert_output[i]) for i in range(len(self.labels))]
        y_pred = [torch.sigmoid(t).squeeze(-1) for t in tower_output]
        return_dict = {f"{label}_pred": y_pred[i] for i, label in enumerate(self.labels)}
        if return_gates:
            return return_dict, {f"{label}_pred": gates[i] for i, label in enumerate(self.labels)}
        return return_dict


class EmbeddingLayer(nn.Module):
    """MTReclib-style: one embedding table over all categorical fields, shifted by per-field offsets."""

    def __init__(self, field_dims, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(sum(field_dims), embed_dim)
        offsets = torch.tensor([0, *list(torch.tensor(field_dims).cumsum(0)[:-1].tolist())], dtype=torch.long)
        self.register_buffer("offsets", offsets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(x + self.offsets.unsqueeze(0))  # [B, fields, embed]


class MTReclibStyleMMoE(nn.Module):
    """MTReclib `MMoEModel` style: `forward(categorical_x, numerical_x)`, embeddings + numerical Linear
    flattened, experts stacked on dim 1, gates `Sequential(Linear, Softmax(dim=1))`,
    `torch.bmm(gate.unsqueeze(1), fea).squeeze(1)`, a LIST of per-task probabilities out."""

    def __init__(
        self,
        field_dims=(5, 7, 4),
        numerical_num: int = 6,
        embed_dim: int = 4,
        n_experts: int = 4,
        hidden: int = 8,
        task_num: int = 2,
    ):
        super().__init__()
        self.embedding = EmbeddingLayer(field_dims, embed_dim)
        self.numerical_layer = nn.Linear(numerical_num, embed_dim)
        self.embed_output_dim = (len(field_dims) + 1) * embed_dim
        self.task_num = task_num
        self.expert_num = n_experts
        self.expert = nn.ModuleList(_mlp(self.embed_output_dim, hidden, 0.2) for _ in range(n_experts))
        self.tower = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(task_num))
        self.gate = nn.ModuleList(
            nn.Sequential(nn.Linear(self.embed_output_dim, n_experts), nn.Softmax(dim=1))
            for _ in range(task_num)
        )

    def _embed(self, categorical_x, numerical_x):
        categorical_emb = self.embedding(categorical_x)
        numerical_emb = self.numerical_layer(numerical_x).unsqueeze(1)
        return torch.cat([categorical_emb, numerical_emb], 1).view(-1, self.embed_output_dim)

    def forward(self, categorical_x, numerical_x, return_gates: bool = False):
        emb = self._embed(categorical_x, numerical_x)
        gate_value = [self.gate[i](emb).unsqueeze(1) for i in range(self.task_num)]  # [B, 1, E]
        fea = torch.cat(
            [self.expert[i](emb).unsqueeze(1) for i in range(self.expert_num)], dim=1
        )  # [B, E, H]
        task_fea = [torch.bmm(gate_value[i], fea).squeeze(1) for i in range(self.task_num)]
        results = [torch.sigmoid(self.tower[i](task_fea[i]).squeeze(1)) for i in range(self.task_num)]
        if return_gates:
            return results, {f"task_{i}": gate_value[i].squeeze(1) for i in range(self.task_num)}
        return results


class MTReclibStyleOMoE(MTReclibStyleMMoE):
    """MTReclib `OMoEModel` style: one gate for all tasks, mixture by the `@` operator."""

    def __init__(self, **kw):
        super().__init__(**kw)
        del self.gate
        self.gate = nn.Sequential(nn.Linear(self.embed_output_dim, self.expert_num), nn.Softmax(dim=1))

    def forward(self, categorical_x, numerical_x, return_gates: bool = False):
        emb = self._embed(categorical_x, numerical_x)
        gate_value = self.gate(emb).unsqueeze(1)
        fea = torch.cat([self.expert[i](emb).unsqueeze(1) for i in range(self.expert_num)], dim=1)
        fea = (gate_value @ fea).squeeze(1)
        results = [torch.sigmoid(self.tower[i](fea).squeeze(1)) for i in range(self.task_num)]
        return (results, {"shared": gate_value.squeeze(1)}) if return_gates else results


class KerasMMoEPort(nn.Module):
    """A PyTorch port of keras-mmoe's `MMoE` layer (census-income example): experts are ONE kernel
    `[F, H, E]` applied by `tensordot` (experts LAST: `[B, H, E]`), gates are bare parameters (no module),
    mixing `sum(expert_outputs * gate.unsqueeze(1), dim=2)`; tasks `income` and `marital`, list output."""

    def __init__(self, n_features: int = 10, units: int = 8, num_experts: int = 4, num_tasks: int = 2):
        super().__init__()
        self.expert_kernels = nn.Parameter(torch.randn(n_features, units, num_experts) * 0.3)
        self.expert_bias = nn.Parameter(torch.zeros(units, num_experts))
        self.gate_kernels = nn.ParameterList(
            nn.Parameter(torch.randn(n_features, num_experts) * 0.3) for _ in range(num_tasks)
        )
        self.gate_bias = nn.ParameterList(nn.Parameter(torch.zeros(num_experts)) for _ in range(num_tasks))
        self.towers = nn.ModuleList(
            nn.Sequential(nn.Linear(units, 4), nn.ReLU(), nn.Linear(4, 1)) for _ in range(num_tasks)
        )

    def forward(self, inputs: torch.Tensor, return_gates: bool = False):
        expert_outputs = torch.relu(torch.tensordot(inputs, self.expert_kernels, dims=1) + self.expert_bias)
        outputs, gates = [], {}
        for i, (kernel, bias) in enumerate(zip(self.gate_kernels, self.gate_bias, strict=False)):
            gate_output = torch.softmax(inputs @ kernel + bias, dim=1)  # [B, E]
            gates[("income", "marital")[i]] = gate_output
            weighted = expert_outputs * gate_output.unsqueeze(1)  # [B, H, E]
            outputs.append(torch.sigmoid(self.towers[i](torch.sum(weighted, dim=2))).squeeze(-1))
        return (outputs, gates) if return_gates else outputs


class PaddleRecStyleMMoE(nn.Module):
    """PaddleRec `MMoELayer` style: each expert a Linear + ReLU, outputs CONCATENATED `[B, E*H]` and
    reshaped `[B, E, H]` (experts in the middle), gates `softmax(Linear)`, mixing by einsum, and each
    tower ends in a 2-class softmax (PaddleRec's census example): outputs a list of `[B, 2]`."""

    def __init__(self, feature_size: int = 12, expert_num: int = 4, expert_size: int = 8, gate_num: int = 2):
        super().__init__()
        self.expert_num = expert_num
        self.expert_size = expert_size
        self._param_expert = nn.ModuleList(nn.Linear(feature_size, expert_size) for _ in range(expert_num))
        self._param_gate = nn.ModuleList(nn.Linear(feature_size, expert_num) for _ in range(gate_num))
        self._param_tower = nn.ModuleList(nn.Linear(expert_size, 4) for _ in range(gate_num))
        self._param_tower_out = nn.ModuleList(nn.Linear(4, 2) for _ in range(gate_num))

    def forward(self, input_data: torch.Tensor, return_gates: bool = False):
        expert_outputs = [torch.relu(e(input_data)) for e in self._param_expert]
        expert_concat = torch.cat(expert_outputs, dim=1).reshape(-1, self.expert_num, self.expert_size)
        output_layers, gates = [], {}
        for i, gate in enumerate(self._param_gate):
            cur_gate = torch.softmax(gate(input_data), dim=1)
            gates[f"task_{i}"] = cur_gate
            cur_gate_expert = torch.einsum("beh,be->bh", expert_concat, cur_gate)
            tower = torch.relu(self._param_tower[i](cur_gate_expert))
            output_layers.append(torch.softmax(self._param_tower_out[i](tower), dim=1))
        return (output_layers, gates) if return_gates else output_layers
