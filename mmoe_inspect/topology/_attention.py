"""Attention ops that hide their softmax: `F.multi_head_attention_forward` (what `nn.MultiheadAttention` runs)
and `F.scaled_dot_product_attention`. The tracer and the function taps see each as ONE call, so the
attention weights `softmax(q k^T * scale + mask)` that decide the mix of the values are no tensor of the
traced forward when the call does not return them (`need_weights=False`, and always for SDPA). This module
names their operands and recomputes those weights from the call's own arguments, head-averaged
`[batch, L, S]` (as `nn.MultiheadAttention` returns them with `need_weights=True`), so that attention over
a stack of expert outputs (a per-task query over keys = values = experts) can be read as a gate.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F

ATTENTION_OPS = frozenset({"multi_head_attention_forward", "scaled_dot_product_attention"})
WEIGHTS_POS = 1
"""Output position under which the tracer records an attention call's head-averaged weights (the place of
`nn.MultiheadAttention`'s returned weights; read by a function tap with `arg` -2)."""

_MHA = inspect.signature(F.multi_head_attention_forward)
_SDPA_NAMES = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")


def bound(op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The call's arguments by name (None when they do not bind)."""
    try:
        if op == "multi_head_attention_forward":
            b = _MHA.bind(*args, **kwargs)
            b.apply_defaults()
            return dict(b.arguments)
        if op == "scaled_dot_product_attention":
            if len(args) > len(_SDPA_NAMES):
                return None
            got = dict(zip(_SDPA_NAMES, args, strict=False))
            got.update(kwargs)
            return got if all(k in got for k in _SDPA_NAMES[:3]) else None
    except TypeError:
        return None
    return None


def source_axis(op: str, key_ndim: int) -> int | None:
    """The axis of the key/value operand holding the attended positions (S): `[S, B, E]` for
    `multi_head_attention_forward` (batched), `[..., S, d]` for SDPA."""
    if op == "multi_head_attention_forward":
        return 0 if key_ndim == 3 else None
    return key_ndim - 2 if key_ndim >= 3 else None


def attention_weights(op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """The head-averaged attention weights `[batch, L, S]` of one attention call, recomputed from its
    arguments (eval semantics: no dropout). None when the call is unbatched, adds key positions of its own
    (`bias_k`, `add_zero_attn`: S would not be the keys given) or its arguments do not bind."""
    a = bound(op, args, kwargs)
    if a is None:
        return None
    try:
        if op == "multi_head_attention_forward":
            q = a["query"]
            if not isinstance(q, torch.Tensor) or q.dim() != 3:
                return None
            if a["bias_k"] is not None or a["add_zero_attn"] or a["static_k"] is not None:
                return None
            a.update(need_weights=True, average_attn_weights=True, training=False, dropout_p=0.0)
            _, w = F.multi_head_attention_forward(**a)
            return w
        q, k = a["query"], a["key"]
        if not isinstance(q, torch.Tensor) or not isinstance(k, torch.Tensor) or q.dim() < 3 or k.dim() < 3:
            return None
        if a.get("enable_gqa") and k.dim() >= 3 and q.shape[-3] != k.shape[-3]:
            k = k.repeat_interleave(q.shape[-3] // k.shape[-3], -3)
        scale = a.get("scale")
        scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
        scores = (q @ k.transpose(-2, -1)) * scale
        mask = a.get("attn_mask")
        if a.get("is_causal"):
            keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
            scores = scores.masked_fill(~keep, float("-inf"))
        if isinstance(mask, torch.Tensor):
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        w = torch.softmax(scores, dim=-1)
        return w.reshape(w.shape[0], -1, *w.shape[-2:]).mean(1) if w.dim() > 3 else w
    except (RuntimeError, TypeError, ValueError, KeyError):
        return None


def returned_weights(out: Any) -> bool:
    """Whether an attention call's output already holds its weights as a tensor (second output)."""
    return isinstance(out, tuple) and len(out) > WEIGHTS_POS and isinstance(out[WEIGHTS_POS], torch.Tensor)
