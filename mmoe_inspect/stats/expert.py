"""Streaming statistics of expert outputs: inactivity, output norms and exact linear CKA on a row sample."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mmoe_inspect.functional.similarity import linear_cka_from_moments
from mmoe_inspect.stats._base import SummaryMetric, batch_row_index, capped_sample, row_keys

__all__ = ["ExpertStats", "ExpertSummary"]

_F64 = torch.float64
_STACK_MAX_DIM = 32  # experts at most this wide get their per-row reductions on one stacked tensor
_PANEL_MIN_DIM = 256  # Σd from which the Gram update skips the lower block triangle (E smaller matmuls)


@dataclass(frozen=True, eq=False)
class ExpertSummary:
    """What `ExpertStats.compute` returns for ``E`` experts.

    ``zero_fraction``/``mean_norm`` use every finite row given to ``update`` (`inspect()` gives only the rows
    of its expert sample); ``cka`` uses the deterministic row sample
    (NaN for a pair involving an expert that is constant on the sample, e.g. a dead ReLU expert).
    """

    n: int  # finite rows
    n_sampled: int  # rows in the CKA sample
    sample_capped_rows: int  # sampled rows dropped by max_sample_per_update (0 = sample is batch-invariant)
    nonfinite_rows: int  # rows with a NaN/inf output in any expert (excluded)
    dims: tuple[int, ...]
    zero_fraction: Tensor  # [E] share of exactly-zero activations
    mean_norm: Tensor  # [E] mean L2 norm of the output rows
    cka: Tensor  # [E, E] linear CKA between experts' outputs (sample)


class ExpertStats(SummaryMetric):
    """Streaming expert-output statistics: zero fraction, mean L2 norm, and CKA from exact moments.

    ``update(outputs, row_index)`` takes ``[batch, E, d]`` or a sequence of ``E`` tensors
    ``[batch, d_e]``. On every row: per-expert count of exactly-zero activations and sum of row
    L2 norms (row norms in at least float32, summed in float64). On the rows whose
    ``row_hash(row_index, seed) < sample_rate`` (the same rows whatever the batching or sharding):
    ``Σz`` and ``ΣzᵀZ`` of the float64 concatenation ``z [rows, Σd]``, from which
    `linear_cka_from_moments` gives exact linear CKA for every expert pair. At most
    ``max_sample_per_update`` sampled rows (smallest keys) are used per update; rows dropped by
    that cap are counted (``sample_capped_rows``) because they break the batch invariance. Rows
    with a non-finite output (or a row norm overflowing float32) are counted and excluded. State
    size is ``O((Σd)²)``, independent of the number of rows; all states are SUM states.

    Cost: the exact float64 Gram update is ``sample_rate · batch · (Σd)²`` multiply-adds per update
    (8 experts x 64 units, 4096 rows, 5%: ~54 M, about 2-3 ms on one CPU core); lower
    ``sample_rate`` for wide experts.
    """

    def __init__(
        self,
        n_experts: int,
        dims: Sequence[int] | int,
        *,
        sample_rate: float = 0.05,
        max_sample_per_update: int = 512,
        seed: int = 0,
        sync_free: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(sync_free=sync_free, **kwargs)
        self.n_experts = int(n_experts)
        self.dims = (int(dims),) * self.n_experts if isinstance(dims, int) else tuple(int(d) for d in dims)
        if self.n_experts < 1 or len(self.dims) != self.n_experts or min(self.dims) < 1:
            raise ValueError(f"need n_experts >= 1 and one positive dim per expert, got {n_experts}, {dims}")
        if not 0.0 <= sample_rate <= 1.0 or max_sample_per_update < 0:
            raise ValueError(f"need 0 <= sample_rate <= 1 and max_sample_per_update >= 0, got {sample_rate}")
        self.sample_rate = float(sample_rate)
        self.max_sample_per_update = int(max_sample_per_update)
        self.seed = int(seed)
        d = sum(self.dims)
        # [Σd, E] 0/1: which expert each unit belongs to (per-expert sums of per-unit values by matmul)
        member = torch.repeat_interleave(
            torch.eye(self.n_experts, dtype=_F64), torch.tensor(self.dims), dim=0
        )
        self.register_buffer("_member", member, persistent=False)
        self.register_buffer("_dims_f", torch.tensor(self.dims, dtype=_F64), persistent=False)
        self.add_state("rows_seen", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("nonfinite", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("zero_count", torch.zeros(self.n_experts, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("sum_norm", torch.zeros(self.n_experts, dtype=_F64), dist_reduce_fx="sum")
        self.add_state("n_sampled", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("sample_capped", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("sum_z", torch.zeros(d, dtype=_F64), dist_reduce_fx="sum")
        self.add_state("gram", torch.zeros(d, d, dtype=_F64), dist_reduce_fx="sum")

    def _per_expert(self, outputs: Tensor | Sequence[Tensor]) -> tuple[list[Tensor], Tensor, list[Tensor]]:
        """``(per-expert outputs [batch, d_e], L2 norms [batch, E], blocks to count zeros in)``.

        Norms are computed in at least float32 (fp16 squares would overflow). The zero-count blocks
        are ``[batch, cols]`` matrices whose columns, in order, are the ``Σd`` expert units: the
        stacked input, one concatenation of narrow experts (one op instead of E small ones), or
        each wide expert's own output (no copy).
        """
        if isinstance(outputs, Tensor):
            if len(set(self.dims)) != 1:
                raise ValueError(f"a [batch, E, d] tensor needs equal dims, this ExpertStats has {self.dims}")
            if outputs.ndim != 3 or outputs.shape[1:] != (self.n_experts, self.dims[0]):
                raise ValueError(
                    f"expected outputs [batch, {self.n_experts}, {self.dims[0]}], got {tuple(outputs.shape)}"
                )
            x = outputs.detach().to(self.device)
            acc = torch.promote_types(x.dtype, torch.float32)
            norms = torch.linalg.vector_norm(x, dim=2, dtype=acc)
            return list(x.unbind(1)), norms, [x.reshape(x.shape[0], -1)]
        parts = [o.detach().to(self.device) for o in outputs]
        if len(parts) != self.n_experts or any(
            p.ndim != 2 or p.shape[1] != d or p.shape[0] != parts[0].shape[0]
            for p, d in zip(parts, self.dims, strict=True)
        ):
            raise ValueError(
                f"expected {self.n_experts} outputs [batch, d] with d = {self.dims}, "
                f"got {[tuple(p.shape) for p in parts]}"
            )
        acc = torch.promote_types(parts[0].dtype, torch.float32)
        narrow = max(self.dims) <= _STACK_MAX_DIM and len({p.dtype for p in parts}) == 1
        if narrow and len(set(self.dims)) == 1:
            # Narrow experts: one [batch, Σd] copy and one norm over its [batch, E, d] view beat 2E
            # small ops (~20-40 µs each, whatever their size).
            x = torch.cat(parts, dim=1)
            norms = torch.linalg.vector_norm(x.view(x.shape[0], self.n_experts, -1), dim=2, dtype=acc)
            return parts, norms, [x]
        norms = torch.stack([torch.linalg.vector_norm(p, dim=1, dtype=acc) for p in parts], dim=1)
        return parts, norms, [torch.cat(parts, dim=1)] if narrow else parts

    def _zero_counts(self, blocks: list[Tensor], ok: Tensor | None, n_ok: Tensor | int) -> Tensor:
        """Exactly-zero activations per expert ``[E]`` (float64) over the kept rows (``ok``; all if None).

        ``Σ|sign(x)|`` per column (1 per nonzero; NaN rows are masked first), then per expert
        through the ``[Σd, E]`` membership matrix: column sums are exact counts below 2^24 rows.
        """
        cols = []
        for m in blocks:
            acc = torch.float32 if m.shape[0] < 2**24 and m.dtype != _F64 else _F64
            nz = m.sign().abs_()
            if ok is not None:
                nz = torch.where(ok[:, None], nz, 0.0)
            cols.append(nz.sum(0, dtype=acc).to(_F64))
        nonzero = torch.cat(cols) @ self._member
        return n_ok * self._dims_f - nonzero

    def update(self, outputs: Tensor | Sequence[Tensor], row_index: Tensor | None = None) -> None:
        """Add a batch of expert outputs (``[batch, E, d]`` or ``E`` x ``[batch, d_e]``) with optional ``row_index``."""
        parts, norms, blocks = self._per_expert(outputs)
        b = norms.shape[0]
        rows = batch_row_index(row_index, self.rows_seen, b, norms.device)
        self.rows_seen.add_(b)
        sync_free = self._sync_free(norms.device)
        all_ok = not sync_free and math.isfinite(float(norms.sum()))  # one host read on CPU
        ok = None if all_ok else torch.isfinite(norms).all(1)  # None: every row is finite
        n_ok: Tensor | int = b
        if ok is not None:
            norms = torch.where(ok[:, None], norms, 0.0)
            n_ok = ok.sum()
            self.nonfinite.add_(b - n_ok)
        self.sum_norm.add_(norms.sum(0, dtype=_F64))
        self.zero_count.add_(self._zero_counts(blocks, ok, n_ok).round_().long())

        keys = row_keys(rows, self.seed, sync_free)
        hit = keys < self.sample_rate
        if ok is not None:
            hit &= ok
        cap = min(self.max_sample_per_update, b)
        sel, weight = capped_sample(torch.where(hit, keys, torch.inf), cap, sync_free)
        if len(blocks) == 1:  # already one [batch, Σd] matrix
            zs = blocks[0][sel].to(_F64)  # [sampled, Σd], only the sampled rows
        else:
            zs = torch.cat([p[sel] for p in parts], dim=1).to(_F64)
        if weight is not None:  # where, not multiply: unselected rows may hold NaN
            zs = torch.where(weight[:, None] > 0, zs, 0.0)
        n_hit = hit.sum()
        self.sample_capped.add_((n_hit - cap).clamp_min(0))
        self.n_sampled.add_(n_hit.clamp_max(cap))
        self.sum_z.add_(zs.sum(0))
        self._add_gram(zs)

    def _add_gram(self, zs: Tensor) -> None:
        """Add ``zsᵀzs`` to the ``gram`` state; only its upper block triangle (blocks ``a <= b``) is used.

        For wide experts, one matmul per expert block row ``zs[:, a]ᵀ zs[:, a:]`` skips the lower
        blocks (about ``(E - 1) / 2E`` of the multiply-adds); narrow ones take one full ``addmm``.
        `compute` mirrors the upper blocks, so both fillings (and their merges) give the same CKA.
        """
        if zs.shape[0] == 0:
            return
        if sum(self.dims) < _PANEL_MIN_DIM or self.n_experts == 1:
            self.gram.addmm_(zs.T, zs)
            return
        off = 0
        for d in self.dims:
            block = self.gram[off : off + d, off:]
            block.addmm_(zs[:, off : off + d].T, zs[:, off:])
            off += d

    def _full_gram(self) -> Tensor:
        """The symmetric ``[Σd, Σd]`` Gram from the upper block triangle of the ``gram`` state."""
        block = torch.repeat_interleave(
            torch.arange(self.n_experts, device=self.gram.device),
            torch.tensor(self.dims, device=self.gram.device),
        )
        lower = block[:, None] > block[None, :]
        return torch.where(lower, self.gram.T, self.gram)

    def compute(self) -> ExpertSummary:
        """Zero fractions, mean norms and the ``[E, E]`` CKA matrix (NaN means before any row)."""
        n_int = int(self.rows_seen - self.nonfinite)
        n_s = int(self.n_sampled)
        dims = torch.tensor(self.dims, dtype=_F64, device=self.sum_norm.device)
        return ExpertSummary(
            n=n_int,
            n_sampled=n_s,
            sample_capped_rows=int(self.sample_capped),
            nonfinite_rows=int(self.nonfinite),
            dims=self.dims,
            zero_fraction=self.zero_count.to(_F64) / (n_int * dims),
            mean_norm=self.sum_norm / n_int,
            cka=linear_cka_from_moments(float(n_s), self.sum_z, self._full_gram(), self.dims),
        )
