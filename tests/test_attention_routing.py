"""Routing by attention: a per-task query attends over the stacked expert outputs (keys = values = experts),
and the attention weights over the E experts are that task's gate. Written with `nn.MultiheadAttention`
(weights returned or not: `need_weights=False`), with `F.scaled_dot_product_attention` (the softmax hidden in
one op, recomputed from the q/k the op received), and with one query per task in one call. The s13 sweep found
these read as "No gates found: Shared-Bottom" (exit 0) with a planted collapsed or identical gate. Attention
whose keys are the input's fields (a learned query pooling field embeddings) stays gate-less. Attribute and
class names avoid the MoE vocabulary on purpose."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from eight_feature_frames import FEATURES, TASKS, codes, frame, inspect
from torch import nn

from mmoe_inspect.causal import GateIntervention, InterventionError, Replace
from mmoe_inspect.topology.discovery import discover_topology

E, H = 4, 16


class AttentionRanker(nn.Module):
    """Four MLPs stacked `[B, E, H]`; per task a query `q_t = Linear_t(x)` attends over them with a learned
    per-task prior `[E]` added to the scores (a float attention mask). `style`: "mha" (`nn.MultiheadAttention`,
    weights returned), "mha_noweights" (`need_weights=False`), "mha_zero_attn" (`add_zero_attn`: a fifth key that
    is no expert), "mha_per_head" (per-head weights returned), "sdpa" (projections of its own, 2 heads,
    `F.scaled_dot_product_attention`), "mha_queries" (both tasks' queries `[B, T, H]` in one call)."""

    def __init__(self, style: str, plant: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.style = style
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(len(FEATURES), H), nn.ReLU()) for _ in range(E))
        self.q_proj = nn.ModuleList(nn.Linear(len(FEATURES), H) for _ in TASKS)
        self.prior = nn.Parameter(torch.zeros(len(TASKS), E))
        self.attn = nn.MultiheadAttention(H, num_heads=1, batch_first=True)
        self.k_lin, self.v_lin, self.o_lin = nn.Linear(H, H), nn.Linear(H, H), nn.Linear(H, H)
        self.heads = nn.ModuleList(nn.Linear(H, 1) for _ in TASKS)
        with torch.no_grad():  # scores = 2 q . e: the query Linear decides the mix
            self.attn.in_proj_weight[:H].copy_(torch.eye(H) * 2)
            self.attn.in_proj_weight[H : 2 * H].copy_(torch.eye(H))
            self.k_lin.weight.copy_(torch.eye(H) * 2)
            for q in self.q_proj:
                q.weight.mul_(4)
            if plant == "collapsed":
                self.q_proj[0].weight.zero_()
                self.q_proj[0].bias.zero_()
                self.prior[0, 0] = 20.0
            elif plant == "identical":
                self.q_proj[1].load_state_dict(self.q_proj[0].state_dict())

    def mix(self, t: int, q: torch.Tensor, ex: torch.Tensor) -> torch.Tensor:
        """Task `t`'s attention over the experts `ex` `[B, E, H]` with query `q` `[B, 1, H]` -> `[B, H]`."""
        mask = self.prior[t].view(1, E)
        if self.style == "sdpa":
            b = ex.shape[0]
            k = self.k_lin(ex).view(b, E, 2, H // 2).transpose(1, 2)
            v = self.v_lin(ex).view(b, E, 2, H // 2).transpose(1, 2)
            qh = q.view(b, 1, 2, H // 2).transpose(1, 2)
            h = F.scaled_dot_product_attention(qh, k, v, attn_mask=mask, scale=1.0)
            return self.o_lin(h.transpose(1, 2).reshape(b, H))
        if self.style == "mha_zero_attn":  # a zero key/value added: 5 positions for 4 experts
            self.attn.add_zero_attn = True  # (the call pads the mask itself)
        per_head = self.style == "mha_per_head"
        h, _ = self.attn(
            q,
            ex,
            ex,
            attn_mask=mask,
            need_weights=self.style in ("mha", "mha_per_head"),
            average_attn_weights=not per_head,
        )
        return h.squeeze(1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ex = torch.stack([m(x) for m in self.mlps], 1)
        if self.style == "mha_queries":
            q = torch.stack([p(x) for p in self.q_proj], 1)  # [B, T, H]
            h, _ = self.attn(q, ex, ex, attn_mask=self.prior, need_weights=False)
            mixed = [h[:, t] for t in range(len(TASKS))]
        else:
            mixed = [self.mix(t, p(x).unsqueeze(1), ex) for t, p in enumerate(self.q_proj)]
        return {
            n: torch.sigmoid(head(m)).squeeze(-1) for n, head, m in zip(TASKS, self.heads, mixed, strict=True)
        }


class FieldQueryPooling(nn.Module):
    """Shared-Bottom: field embeddings `x_f * v_f` `[B, F, H]` (or, `modules`, a `Linear(1, H)` per column) pooled
    by a learned query through `nn.MultiheadAttention` (attention over the input's fields, not experts)."""

    def __init__(self, modules: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.modules_per_field = nn.ModuleList(nn.Linear(1, H) for _ in FEATURES) if modules else None
        self.emb = nn.Parameter(torch.randn(len(FEATURES), H))
        self.query = nn.Parameter(torch.randn(1, 1, H))
        self.attn = nn.MultiheadAttention(H, num_heads=2, batch_first=True)
        self.heads = nn.ModuleList(nn.Linear(H, 1) for _ in TASKS)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        fields = x.unsqueeze(-1) * self.emb
        if self.modules_per_field is not None:
            fields = torch.stack([m(x[:, i : i + 1]) for i, m in enumerate(self.modules_per_field)], 1)
        h, _ = self.attn(self.query.expand(x.shape[0], -1, -1), fields, fields, need_weights=False)
        return {
            n: torch.sigmoid(head(h.squeeze(1))).squeeze(-1)
            for n, head in zip(TASKS, self.heads, strict=True)
        }


STYLES = ["mha", "mha_noweights", "sdpa", "mha_queries"]


@pytest.mark.parametrize("style", STYLES)
def test_attention_over_the_experts_is_each_tasks_gate(style: str) -> None:
    result = inspect(AttentionRanker(style, "collapsed"))
    gates = result.topology.gates
    assert sorted(g.task for g in gates) == sorted(TASKS)
    assert all(g.experts == tuple(f"mlps.{i}" for i in range(E)) for g in gates)
    assert any(n.startswith("gate(s) click, buy are attention weights") for n in result.topology.notes)
    assert codes(result).get("collapsed_gate") == {"click"}


@pytest.mark.parametrize("style", STYLES)
def test_identical_attention_routing_is_found(style: str) -> None:
    result = inspect(AttentionRanker(style, "identical"))
    assert "tasks_route_identically" in codes(result)


@pytest.mark.parametrize("style", ["mha_noweights", "sdpa"])
def test_healthy_attention_routing_has_no_routing_fault(style: str) -> None:
    result = inspect(AttentionRanker(style, "healthy"))
    assert len(result.topology.gates) == len(TASKS)
    assert not {"collapsed_gate", "tasks_route_identically", "dead_expert"} & set(codes(result))


def test_an_attention_gate_is_read_but_never_edited() -> None:
    model = AttentionRanker("mha_noweights", "healthy").eval()
    x = torch.tensor(frame()[FEATURES].to_numpy()[:64])
    topo = discover_topology(model, x, task_names=list(TASKS))
    with GateIntervention(model, topo) as iv, torch.inference_mode():
        iv.plan([{}], block_rows=64, capture=True)
        model(x)
        assert iv.captured["click"].shape == (64, E)
        iv.plan([{"click": Replace(probs=torch.full((E,), 1.0 / E))}], block_rows=64)
        with pytest.raises(InterventionError, match="attention weights"):
            model(x)


@pytest.mark.parametrize("modules", [False, True], ids=["inline", "module-per-column"])
def test_a_learned_query_over_field_embeddings_stays_gate_less(modules: bool) -> None:
    result = inspect(FieldQueryPooling(modules))
    assert not result.topology.gates
    assert not result.topology.unresolved


@pytest.mark.parametrize("style", ["mha_zero_attn", "mha_per_head"])
def test_attention_over_the_experts_that_cannot_be_read_is_never_a_shared_bottom(style: str) -> None:
    result = inspect(AttentionRanker(style, "collapsed"))
    assert not result.topology.gates
    items = [u for u in result.topology.unresolved if "attention over 4 expert outputs" in u.what]
    assert items and items[0].where == "attn"
    assert result.verdict.startswith("Could not verify the routing")
