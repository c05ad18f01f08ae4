"""Evaluation rows for corpus models (numpy + pandas only) and their conversion to model inputs.

Labels are 0/1 floats with both classes present: the first task ~30% positives (from the first
feature), the second a sparse ~5% (from the second feature), a third ~50% (from the third).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

POSITIVE_RATES = (0.3, 0.05, 0.5)


def add_labels(
    frame: pd.DataFrame, signal: np.ndarray, labels: Sequence[str], rng: np.random.Generator
) -> None:
    """`labels[k]` from `signal[:, k]` plus noise, thresholded at the quantile giving `POSITIVE_RATES[k]`."""
    n = len(frame)
    for k, col in enumerate(labels):
        score = signal[:, k] + 0.5 * rng.normal(size=n)
        cut = np.quantile(score, 1.0 - POSITIVE_RATES[k])
        y = (score > cut).astype("float64")
        y[0], y[1] = 1.0, 0.0  # both classes present whatever n
        frame[col] = y


def dense_frame(n: int, seed: int, features: Sequence[str], labels: Sequence[str]) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(features))).astype("float32")
    frame = pd.DataFrame(x, columns=list(features))
    add_labels(frame, x[:, : len(labels)], labels, rng)
    return frame


def categorical_frame(
    n: int, seed: int, field_dims: Sequence[int], n_numerical: int, labels: Sequence[str]
) -> pd.DataFrame:
    """Columns `c0..` (int64 ids below each field's size), then `n0..` (float32)."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({f"c{i}": rng.integers(0, d, n).astype("int64") for i, d in enumerate(field_dims)})
    num = rng.normal(size=(n, n_numerical)).astype("float32")
    for j in range(n_numerical):
        frame[f"n{j}"] = num[:, j]
    add_labels(frame, num[:, : len(labels)], labels, rng)
    return frame


def sequence_frame(
    n: int, seed: int, seq_len: int, n_items: int, n_dense: int, labels: Sequence[str]
) -> pd.DataFrame:
    """`item` (target id), `hist0..` (behaviour ids, right-padded with 0), `d0..` dense floats."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"item": rng.integers(1, n_items, n).astype("int64")})
    lengths = rng.integers(1, seq_len + 1, n)
    for i in range(seq_len):
        ids = rng.integers(1, n_items, n)
        frame[f"hist{i}"] = np.where(i < lengths, ids, 0).astype("int64")
    dense = rng.normal(size=(n, n_dense)).astype("float32")
    for j in range(n_dense):
        frame[f"d{j}"] = dense[:, j]
    add_labels(frame, dense[:, : len(labels)], labels, rng)
    return frame


def as_tensor(frame: pd.DataFrame, columns: Sequence[str]) -> torch.Tensor:
    """`[B, len(columns)]` float32 in column order."""
    return torch.from_numpy(np.ascontiguousarray(frame[list(columns)].to_numpy(dtype="float32")))


def as_dict(frame: pd.DataFrame, columns: Sequence[str]) -> dict[str, torch.Tensor]:
    """`{column: [B]}`: int64 for integer columns, float32 otherwise."""
    out = {}
    for c in columns:
        v = frame[c].to_numpy()
        out[c] = torch.from_numpy(
            np.ascontiguousarray(v.astype("int64" if v.dtype.kind in "iu" else "float32"))
        )
    return out
