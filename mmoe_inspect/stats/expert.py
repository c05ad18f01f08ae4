"""Streaming statistics of expert outputs: inactivity, output norms and linear CKA (streamed moments) on a row sample."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mmoe_inspect.functional.sampling import row_hash
from mmoe_inspect.functional.similarity import linear_cka_from_moments
from mmoe_inspect.stats._base import SummaryMetric, batch_row_index, capped_sample

__all__ = ["ExpertStats", "ExpertSummary"]

_F64 = torch.float64
_STACK_MAX_DIM = 32  # experts at most this wide get their per-row reductions on one stacked tensor
_PANEL_MIN_DIM = 256  # Σd from which the Gram update skips the lower block triangle (E smaller matmuls)
# output dtypes whose sampled rows get the float32 centered Gram product (others: the float64 one)
_FLOAT32_GRAM = frozenset({torch.float32, torch.float16, torch.bfloat16})
# per-expert largest row norm (0 = dead expert) with which the float32 product keeps its precision: centered
# squares stay normal floats (spreads the constant guard keeps are >= 1e-5 of the values) and their sums
# over up to ~1e7 rows finite; outside, the host path takes the float64 product
_FLOAT32_GRAM_NORMS = (1e-10, 1e15)


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


def _exact_float32_matmul(device: torch.device) -> bool:
    """Whether float32 matmuls on ``device`` run in IEEE float32: not when the user's precision
    settings (``torch.set_float32_matmul_precision("high")``, ``allow_tf32``, ...) let them use TF32 or
    bfloat16 internally (about 3 digits), nor on devices whose float32 matmuls are not known here."""
    matmul = getattr(torch.backends, {"cpu": "mkldnn", "cuda": "cuda"}.get(device.type, ""), None)
    precision = getattr(getattr(matmul, "matmul", None), "fp32_precision", None)  # torch >= 2.9
    if isinstance(precision, str):
        return precision in ("ieee", "none")  # the effective setting ("none": nothing set, IEEE)
    if device.type not in ("cpu", "cuda"):
        return False
    return torch.get_float32_matmul_precision() == "highest" and not (
        device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    )


def _add_product(out: Tensor, a: Tensor, b: Tensor, u: Tensor | None, v: Tensor | None) -> None:
    """``out += aᵀb (+ u v)``: float64 ``out [p, q]``; ``a [m, p]``, ``b [m, q]`` float64 (one
    ``addmm``) or float32 (product in float32, added in float64); ``u [p, r]``, ``v [r, q]`` float64."""
    if a.dtype == out.dtype:
        out.addmm_(a.T, b)
    else:
        out.add_(a.T @ b)
    if u is not None and v is not None:
        out.addmm_(u, v)


class ExpertStats(SummaryMetric):
    """Streaming expert-output statistics: zero fraction, mean L2 norm, and CKA from streamed moments.

    ``update(outputs, row_index)`` takes ``[batch, E, d]`` or a sequence of ``E`` tensors
    ``[batch, d_e]``. On every row: per-expert count of exactly-zero activations and sum of row
    L2 norms (row norms in at least float32, summed in float64). On the rows whose
    ``row_hash(row_index, seed) < sample_rate`` (the same rows whatever the batching or sharding):
    ``Σz`` and ``ΣzᵀZ`` (float64 sums) of the concatenation ``z [rows, Σd]``, from which
    `linear_cka_from_moments` gives linear CKA for every expert pair. float64 outputs get an exact
    float64 Gram product; float32 and 16-bit ones a float32 product on rows centered by each
    update's mean (`_add_moments_centered`): CKA within a few 1e-7 of float64 `linear_cka` on the
    same rows (measured <= 2.5e-7, ``bench/expert_gram_bench.py``), whatever the mean / spread
    ratio, and batch- and merge-invariant to that precision. They too get the float64 product
    where float32 matmuls are not IEEE float32 (TF32 / bfloat16 settings, see
    `_exact_float32_matmul`) and, on the host path, in an update whose row norms leave
    ``_FLOAT32_GRAM_NORMS`` (float32 squares would underflow or overflow; accelerators, which
    read nothing back, do not check). At most
    ``max_sample_per_update`` sampled rows (smallest keys) are used per update; rows dropped by
    that cap are counted (``sample_capped_rows``) because they break the batch invariance. Rows
    with a non-finite output (or a row norm overflowing float32) are counted and excluded. State
    size is ``O((Σd)²)``, independent of the number of rows; all states are SUM states.

    Cost: the Gram update is ``sample_rate · batch · (Σd)²`` multiply-adds per update (about half
    of them for wide experts, see `_add_gram`), in float32 for float32 outputs (timings in
    `bench/results/small_ops.md`); lower ``sample_rate`` for wide experts.
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
            return list(x.unbind(1)), norms, [x.reshape(x.shape[0], sum(self.dims))]
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
            # small ops, each with a fixed cost whatever its size (bench/results/small_ops.md).
            x = torch.cat(parts, dim=1)
            norms = torch.linalg.vector_norm(
                x.view(x.shape[0], self.n_experts, self.dims[0]), dim=2, dtype=acc
            )
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
        all_ok, peaks = False, None
        if not sync_free:  # one host read: each expert's largest row norm (NaN/inf if any row is)
            peaks = norms.amax(0).tolist() if b else []
            all_ok = all(math.isfinite(p) for p in peaks)
        ok = None if all_ok else torch.isfinite(norms).all(1)  # None: every row is finite
        n_ok: Tensor | int = b
        if ok is not None:
            norms = torch.where(ok[:, None], norms, 0.0)
            n_ok = ok.sum()
            self.nonfinite.add_(b - n_ok)
        self.sum_norm.add_(norms.sum(0, dtype=_F64))
        zeros = self._zero_counts(blocks, ok, n_ok).round_()
        self.zero_count.add_(zeros.long())

        keys = row_hash(rows, self.seed)
        hit = keys < self.sample_rate
        if ok is not None:
            hit &= ok
        cap = min(self.max_sample_per_update, b)
        sel, weight = capped_sample(torch.where(hit, keys, torch.inf), cap, sync_free)
        # [sampled, Σd], only the sampled rows; when every row is (inspect() gives only the rows of its
        # expert sample), no gather: sel is then 0..b-1 (nonzero's order, no cap)
        every = weight is None and sel.shape[0] == b
        if len(blocks) == 1:  # already one [batch, Σd] matrix
            zs = blocks[0] if every else blocks[0][sel]
        else:
            zs = torch.cat(parts if every else [p[sel] for p in parts], dim=1)
        n_hit = hit.sum()
        self.sample_capped.add_((n_hit - cap).clamp_min(0))
        self.n_sampled.add_(n_hit.clamp_max(cap))
        if (
            zs.dtype in _FLOAT32_GRAM
            and _exact_float32_matmul(zs.device)
            and (peaks is None or (all_ok and self._float32_holds(peaks, zeros, n_ok)))
        ):
            self._add_moments_centered(zs, weight)
            return
        zs = zs.to(_F64)
        if weight is not None:  # where, not multiply: unselected rows may hold NaN
            zs = torch.where(weight[:, None] > 0, zs, 0.0)
        self.sum_z.add_(zs.sum(0))
        self._add_gram(zs)

    def _float32_holds(self, peaks: list[float], zeros: Tensor, n_ok: Tensor | int) -> bool:
        """Whether every expert's largest row norm (``peaks``, float32) is in ``_FLOAT32_GRAM_NORMS``
        or the expert is exactly zero on every row (a 0 norm may also be float32 squares underflowing);
        ``zeros [E]`` are this update's zero counts."""
        lo, hi = _FLOAT32_GRAM_NORMS
        if all(lo <= p <= hi for p in peaks):
            return True
        dead = (zeros == n_ok * self._dims_f).tolist()  # a second host read, only in this case
        return all(lo <= p <= hi or (p == 0.0 and all_zero) for p, all_zero in zip(peaks, dead, strict=True))

    def _add_moments_centered(self, zs: Tensor, weight: Tensor | None) -> None:
        """Add the raw moments ``Σz``, ``Σzᵀz`` of float32 (or 16-bit) sampled rows ``zs [m, Σd]``.

        The Gram product runs in float32 (twice the speed of float64) on ``y = z - c``, the rows
        centered by ``c``, this update's float64 mean rounded to float32, and goes back to the raw
        float64 state by Chan's parallel formula: ``Σzᵀz = Σyᵀy + c s_yᵀ + s_y cᵀ + n c cᵀ`` with
        ``s_y = Σy`` (exact for any ``c``). float32 rounding is then relative to the centered spread
        of the update, not to the raw magnitude (``mean >> std`` would lose its variation otherwise),
        and the states stay raw float64 sums (merge and distributed sums unchanged).
        ``weight`` (0/1 ``[m]``, accelerators) marks the rows really in the sample.
        """
        if zs.shape[0] == 0:
            return
        z = zs.float()
        n: Tensor | float = float(z.shape[0])
        keep = None
        if weight is not None:  # where, not multiply: unselected rows may hold NaN
            keep = weight[:, None] > 0
            z = torch.where(keep, z, 0.0)
            n = weight.sum()
        s = z.sum(0, dtype=_F64)  # [Σd]
        c = (s / (n if keep is None else n.clamp_min(1.0))).float()  # [Σd] float32 center
        y = z - c
        if keep is not None:
            y = torch.where(keep, y, 0.0)
        c64 = c.to(_F64)
        s_y = s - n * c64  # Σy over the sampled rows
        self.sum_z.add_(s)
        # rank-3 correction U[Σd, 3] V[3, Σd] = c s_yᵀ + s_y cᵀ + n c cᵀ, in float64
        self._add_gram(y, torch.stack([c64, s_y, n * c64], dim=1), torch.stack([s_y, c64, c64]))

    def _add_gram(self, zs: Tensor, u: Tensor | None = None, v: Tensor | None = None) -> None:
        """Add ``zsᵀzs`` (+ ``u v`` when given) to the ``gram`` state; only its upper block triangle
        (blocks ``a <= b``) is used.

        ``zs [m, Σd]`` is float64, or float32 with a float64 low-rank correction ``u [Σd, r]``,
        ``v [r, Σd]`` (see `_add_moments_centered`). For wide experts, one matmul per expert block
        row ``zs[:, a]ᵀ zs[:, a:]`` skips the lower blocks (about ``(E - 1) / 2E`` of the
        multiply-adds); narrow ones take one full product.
        `compute` mirrors the upper blocks, so both fillings (and their merges) give the same CKA.
        """
        if zs.shape[0] == 0:
            return
        if sum(self.dims) < _PANEL_MIN_DIM or self.n_experts == 1:
            _add_product(self.gram, zs, zs, u, v)
            return
        off = 0
        for d in self.dims:
            rows = slice(off, off + d)
            _add_product(
                self.gram[rows, off:],
                zs[:, rows],
                zs[:, off:],
                None if u is None else u[rows],
                None if v is None else v[:, off:],
            )
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
