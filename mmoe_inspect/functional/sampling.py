"""Deterministic per-row keys for sampling rows identically whatever the batching or sharding."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["row_hash", "splitmix64"]

_MASK64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB


def _signed(c: int) -> int:
    """The int64 whose two's-complement bits are the unsigned 64-bit ``c``."""
    c &= _MASK64
    return c - (1 << 64) if c >= 1 << 63 else c


def splitmix64(x: int) -> int:
    """Reference splitmix64 finalizer on a Python int (unsigned 64-bit in, unsigned 64-bit out)."""
    z = x & _MASK64
    z = ((z ^ (z >> 30)) * _MUL1) & _MASK64
    z = ((z ^ (z >> 27)) * _MUL2) & _MASK64
    return z ^ (z >> 31)


def _xorshift_right_(z: Tensor, k: int) -> Tensor:
    """In place ``z ^= z >>> k`` with a logical (zero-filling) shift on an int64 tensor."""
    return z.bitwise_xor_(torch.bitwise_right_shift(z, k).bitwise_and_((1 << (64 - k)) - 1))


def row_hash(row_index: Tensor, seed: int = 0) -> Tensor:
    """Pseudo-random key in ``[0, 1)`` per row, ``int64 [batch] -> float64 [batch]``.

    ``key = (splitmix64(row_index · γ + splitmix64(seed)) >> 11) / 2⁵³`` in wrapping int64 arithmetic
    (γ = 0x9E3779B97F4A7C15). The key depends only on ``(row_index, seed)``, so "the k rows with the
    smallest keys" or "rows with key < rate" is the same row set for any batching or sharding.
    Keys are distinct for distinct rows except with probability ~n²/2⁵⁴. About 17 elementwise
    int64 ops, in place after the first (timing in `bench/results/small_ops.md`).
    """
    z = row_index.long() * _signed(_GAMMA)  # a new tensor: the in-place ops below never touch row_index
    z.add_(_signed(splitmix64(seed)))
    _xorshift_right_(z, 30).mul_(_signed(_MUL1))
    _xorshift_right_(z, 27).mul_(_signed(_MUL2))
    _xorshift_right_(z, 31)
    return z.bitwise_right_shift_(11).bitwise_and_((1 << 53) - 1).to(torch.float64).mul_(2.0**-53)
