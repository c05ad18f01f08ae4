"""Door checks for what a checkpoint declares, before any of it is used or materialized.

`check_payload` checks an mmoe-inspect checkpoint's payload (loaded with `weights_only=True`, so
only tensors and plain values): every field has the type the format says, the stored evaluation
columns are 1-D tensors of one length, no tensor is on the meta device or of a sparse (non-strided)
layout, and the memory the tensors would take once materialized (shape x element size: a stride-0
tensor takes little file space but its full size when converted) stays under `_limits.TENSOR_BYTES`.
`check_model_size` counts a model's parameters on the meta device (nothing allocated) against
`_limits.MODEL_PARAMS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmoe_inspect import _limits as limits
from mmoe_inspect._limits import human_bytes
from mmoe_inspect.errors import CheckpointError, first_line


def _error(message: str) -> Exception:
    return CheckpointError(message)


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes `t` takes once materialized (its logical size, not its storage's)."""
    return t.numel() * t.element_size()


def _check_sparse(t: torch.Tensor, what: str, *, dense_only: bool) -> None:
    """A non-strided tensor: refused where only dense values are read (stored evaluation columns); in a
    state_dict (a graph model's sparse adjacency buffer) a COO tensor is kept when its indices lie inside its
    size (torch.load does not check them), anything else is refused."""
    layout = str(t.layout).removeprefix("torch.")
    if dense_only or t.layout != torch.sparse_coo:
        raise _error(
            f"{what} is a {layout} tensor; only dense (strided) tensors are read here: save it with .to_dense()"
        )
    try:
        torch.sparse_coo_tensor(t._indices(), t._values(), t.shape, check_invariants=True)
    except (RuntimeError, ValueError) as exc:
        raise _error(
            f"{what} is a malformed sparse tensor ({first_line(exc, default='invalid indices')})"
        ) from None


def check_tensors(tensors: Mapping[str, Any], where: str, path: Path) -> None:
    """Every value a real dense tensor (not meta, not sparse or another layout); their materialized total
    under the memory limit."""
    total = 0
    for key, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise _error(f"{path}: {where}[{str(key)[:60]!r}] is a {type(t).__name__}, not a tensor")
        if t.is_meta:
            raise _error(f"{path}: {where}[{str(key)[:60]!r}] is a meta tensor (a shape without values)")
        if t.layout != torch.strided:  # sparse indices are not checked against their size by torch.load
            _check_sparse(t, f"{path}: {where}[{str(key)[:60]!r}]", dense_only=where != "state_dict")
        total += tensor_bytes(t)
    cap = limits.TENSOR_BYTES.value
    if total > cap:
        raise _error(
            f"{path}: its {where} would take {human_bytes(total)} in memory (over the {human_bytes(cap)} "
            f"limit; the file is {human_bytes(path.stat().st_size)}); {limits.TENSOR_BYTES.hint()}"
        )


def check_payload(payload: Mapping[str, Any], path: Path) -> None:
    """The payload's fields have the declared types and bounded sizes (one-line CheckpointError)."""
    if not isinstance(payload["model_config"], Mapping):
        raise _error(f"{path}: model_config is a {type(payload['model_config']).__name__}, not a dict")
    state = payload["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise _error(f"{path}: state_dict is not a dict of named tensors")
    check_tensors(state, "state_dict", path)
    sample = payload["eval_sample"]
    if not isinstance(sample, Mapping) or not isinstance(sample.get("columns", {}), Mapping):
        raise _error(f"{path}: eval_sample is not a dict with a 'columns' dict")
    n_rows = sample.get("n_rows", 0)
    if isinstance(n_rows, bool) or not isinstance(n_rows, int) or n_rows < 0:
        raise _error(f"{path}: eval_sample n_rows is {str(n_rows)[:40]!r}, not a row count")
    columns = sample.get("columns", {})
    check_tensors(columns, "eval_sample columns", path)
    lengths = {}
    for name, col in columns.items():
        if not isinstance(name, str) or col.dim() != 1:
            raise _error(f"{path}: eval_sample column {str(name)[:60]!r} is not a named 1-D tensor")
        lengths[name] = col.shape[0]
    if len(set(lengths.values())) > 1:
        short = min(lengths, key=lengths.get)
        raise _error(
            f"{path}: eval_sample columns have different lengths ({short!r} has {lengths[short]} rows, "
            f"others up to {max(lengths.values())})"
        )
    if lengths and n_rows > 0 and next(iter(lengths.values())) != n_rows:
        raise _error(
            f"{path}: eval_sample says {n_rows} rows but its columns hold {next(iter(lengths.values()))}"
        )
    metrics = payload.get("metrics", {})
    if not isinstance(metrics, Mapping):
        raise _error(f"{path}: metrics is a {type(metrics).__name__}, not a dict")


MAX_COUNT = 1024
"""Largest expert, task or level count (and hidden-layer list) a reference model's config may declare: the
build makes one module per unit of these counts, so a config saying `n_experts = 10**30` would build modules
until memory runs out before any size check could count their parameters."""


def check_model_counts(params: Mapping[str, Any], n_tasks: int, where: str) -> None:
    """The config's counts (integer params, lengths of list params, tasks) are at most `MAX_COUNT`: a
    one-line CheckpointError before anything is built."""
    counts = {"tasks": n_tasks}
    for key, value in params.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            counts[key] = value
        elif isinstance(value, (tuple, list)):
            counts[f"len({key})"] = len(value)
    for key, n in counts.items():
        if n > MAX_COUNT and (key == "tasks" or key.startswith("len(") or key.startswith("n_")):
            shown = str(n) if len(str(n)) <= 20 else f"a {len(str(n))}-digit number"
            raise _error(
                f"{where} declares {key} = {shown}, over the {MAX_COUNT} a model can plausibly have; the "
                "file is damaged or not a real checkpoint"
            )


def check_model_size(build: Callable[[], nn.Module], where: str) -> None:
    """Build the model on the meta device (no memory) and refuse one over the parameter limit."""
    try:
        with torch.device("meta"):
            model = build()
    except Exception:  # the real build reports the problem with its own message
        return
    n = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    cap = limits.MODEL_PARAMS.value
    if n > cap:
        raise _error(
            f"{where} describes a model with {n:,} parameters, over the {cap:,} limit (about "
            f"{human_bytes(n * 4)} as float32); {limits.MODEL_PARAMS.hint()}"
        )
