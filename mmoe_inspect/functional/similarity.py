"""Linear CKA (Kornblith et al., 2019) between feature sets, directly or from streaming moments."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["linear_cka", "linear_cka_from_moments"]

# centered / raw second moment of a block at or below which it counts as constant: float32 outputs that
# differ only by rounding (~1e-7 relative) give ~1e-14; real variation, however small, is far above
_CONSTANT_REL_VAR = 1e-10


def linear_cka(x: Tensor, y: Tensor) -> Tensor:
    """Linear CKA of two feature sets on the same rows, ``x [n, dx], y [n, dy] -> []``.

    ``CKA = ||Xcᵀ Yc||²_F / (||Xcᵀ Xc||_F ||Ycᵀ Yc||_F)`` with column-centered ``Xc``, ``Yc``; in
    ``[0, 1]``, invariant to rotations and isotropic scaling; NaN when either side is constant.
    """
    xc = x - x.mean(0, keepdim=True)
    yc = y - y.mean(0, keepdim=True)
    num = (xc.T @ yc).square().sum()
    den = torch.linalg.matrix_norm(xc.T @ xc) * torch.linalg.matrix_norm(yc.T @ yc)
    return num / den


def linear_cka_from_moments(n: Tensor | float, sum_z: Tensor, gram: Tensor, dims: Sequence[int]) -> Tensor:
    """Linear CKA between every pair of feature blocks from streaming moments, ``-> [G, G]``.

    ``z = concat(block_1, ..., block_G)`` has ``Σd`` columns with block sizes ``dims``;
    ``sum_z [Σd] = Σ_rows z`` and ``gram [Σd, Σd] = Σ_rows zᵀz`` over ``n`` rows. The centered
    cross-products ``C = gram - sum_z sum_zᵀ / n`` give
    ``CKA[a, b] = ||C_ab||²_F / (||C_aa||_F ||C_bb||_F)``, the same number as :func:`linear_cka` on
    the rows themselves. NaN for pairs involving a block that is constant over the rows.
    """
    dims = [int(d) for d in dims]
    if sum(dims) != sum_z.shape[-1] or gram.shape != (sum_z.shape[-1], sum_z.shape[-1]):
        raise ValueError(f"dims {dims} do not match sum_z {tuple(sum_z.shape)} / gram {tuple(gram.shape)}")
    c = gram - torch.outer(sum_z, sum_z) / n
    # Block sums of C∘C through a [G, Σd] membership matrix: F[a, b] = ||C_ab||²_F.
    member = torch.repeat_interleave(
        torch.eye(len(dims), dtype=gram.dtype, device=gram.device),
        torch.tensor(dims, device=gram.device),
        dim=1,
    )
    f = member @ c.square() @ member.T
    diag = f.diagonal().sqrt()
    # A block whose centered variance is within rounding of zero is constant: its C is cancellation
    # noise (CKA of noise can even exceed 1), so its pairs are NaN like those of an exactly constant one.
    raw = member @ gram.diagonal().abs()
    spread = member @ c.diagonal().clamp_min(0)
    constant = spread <= _CONSTANT_REL_VAR * raw
    cka = f / torch.outer(diag, diag)
    return cka.masked_fill(constant[:, None] | constant[None, :], math.nan)
