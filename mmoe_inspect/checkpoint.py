"""Safe checkpoints of reference models, with a bounded sample of evaluation rows.

Format ("mmoe-inspect/checkpoint", version 1): one `torch.save`d dict that loads with
`torch.load(path, weights_only=True)`; it holds only tensors, str, int, float, bool, lists and dicts:

    {
      "format": "mmoe-inspect/checkpoint",
      "format_version": 1,
      "model_config": ModelConfig.to_dict(),   # {"architecture", "features", "tasks", "params"}
      "state_dict": {parameter/buffer name: tensor},
      "tasks": [{"name", "kind", "output", "label"?, "probability"}, ...],
      "features": FeatureSpec.to_dict(),       # {"dense": [...], "categorical": [{name, cardinality, embed_dim}]}
      "eval_sample": {
        "columns": {column: tensor [n_rows]},  # features (float32 dense, int64 ids) and labels (float32, NaN = missing)
        "n_rows": int,                         # 0 when no evaluation rows were stored
        "source_rows": int,                    # rows of the frame the sample was drawn from
      },
      "metrics": {task: {metric: float}},      # whatever the caller passed, e.g. fit()'s val_metrics
      "created": "2025-01-01T00:00:00+00:00", # ISO 8601, UTC
      "mmoe_inspect_version": "0.1.0",
    }

The evaluation sample is at most `max_eval_rows` rows (default 20000) drawn without replacement
with a fixed seed, kept in their original order. Files are written to a temporary file beside the
target and moved into place with `os.replace`, so a reader never sees a half-written checkpoint.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from mmoe_inspect.data.batches import column_tensor, frame_to_columns
from mmoe_inspect.data.schema import FeatureSpec
from mmoe_inspect.errors import CheckpointError, first_line
from mmoe_inspect.models.build import build_model
from mmoe_inspect.models.config import ModelConfig, task_to_dict
from mmoe_inspect.topology.spec import TaskSpec

FORMAT = "mmoe-inspect/checkpoint"
FORMAT_VERSION = 1
_REQUIRED = ("model_config", "state_dict", "eval_sample")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class NotOurFormatError(CheckpointError):
    """The file is no mmoe-inspect checkpoint: weights-only loading refused it, or it has no format entry.

    `load_model` then treats it as any other file (its pickle-scan refusal names every import), so a file
    merely holding the string "mmoe-inspect/checkpoint" is judged the same as without it."""


def is_weights_only_refusal(exc: BaseException) -> bool:
    """Whether `exc` is torch's refusal of a global outside the weights-only allowlist (not damage)."""
    text = str(exc)
    return "Weights only load failed" in text or "Unsupported global" in text or "WeightsUnpickler" in text


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A loaded checkpoint: the model (eval mode), its config, tasks, features, eval rows and metrics."""

    model: nn.Module
    config: ModelConfig
    tasks: tuple[TaskSpec, ...]
    features: FeatureSpec
    eval_frame: pd.DataFrame | None
    metrics: dict[str, Any]
    created: str
    mmoe_inspect_version: str


def _version() -> str:
    try:
        return metadata.version("mmoe-inspect")
    except metadata.PackageNotFoundError:
        return "unknown"


def _plain(value: Any, where: str) -> Any:
    """`value` as tensors, str, int, float, bool, lists and dicts only (numpy scalars unwrapped)."""
    if isinstance(value, (str, bool, int, float, Tensor)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where}: {type(value).__name__} cannot go into a weights_only checkpoint")


def _require_features(frame: pd.DataFrame, features: FeatureSpec) -> None:
    """A one-line `ValueError` when `frame` lacks a feature column of the model (not pandas' KeyError).

    Reference models built with an int (`MMoE(8, ...)`) name their inputs x0..x7; a frame with other
    column names needs renaming, or the model needs a `FeatureSpec` with those names.
    """
    missing = [c for c in features.names if c not in frame.columns]
    if not missing:
        return
    shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
    hint = (
        f"the model was built with an int, which names its inputs {features.names[0]}..{features.names[-1]}: "
        "rename the columns (eval_frame.set_axis(...)) or build the model with "
        "features=FeatureSpec(dense=[your column names])"
        if _default_names(features)
        else "pass a frame with the model's feature columns (model.config.features.names)"
    )
    raise ValueError(f"eval_frame lacks the model's feature column(s) {shown}; {hint}")


def _default_names(features: FeatureSpec) -> bool:
    """True when `features` are the x0..x{n-1} names an int gives (`FeatureSpec.dense_only(n)`)."""
    return not features.categorical and features.dense == tuple(f"x{i}" for i in range(len(features.dense)))


def _eval_sample(
    frame: pd.DataFrame | None, features: FeatureSpec, tasks: tuple[TaskSpec, ...], max_rows: int
) -> dict[str, Any]:
    """Feature and label columns of at most `max_rows` rows of `frame`, as tensors `[n_rows]`."""
    if frame is not None:
        _require_features(frame, features)
    if frame is None or max_rows <= 0 or len(frame) == 0:
        return {"columns": {}, "n_rows": 0, "source_rows": 0 if frame is None else len(frame)}
    sample = frame
    if len(frame) > max_rows:
        rows = np.sort(np.random.default_rng(0).choice(len(frame), size=max_rows, replace=False))
        sample = frame.iloc[rows]
    columns = frame_to_columns(sample, features)
    for task in tasks:
        if task.label_column in sample.columns and task.label_column not in columns:
            columns[task.label_column] = column_tensor(sample[task.label_column], torch.float32)
    return {"columns": columns, "n_rows": len(sample), "source_rows": len(frame)}


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    eval_frame: pd.DataFrame | None = None,
    max_eval_rows: int = 20000,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Write `model` (a reference model with `.config`) and a sample of `eval_frame` atomically to `path`."""
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise TypeError("save_checkpoint needs a reference model from mmoe_inspect.models (with a .config)")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "tasks": [task_to_dict(t) for t in config.tasks],
        "features": config.features.to_dict(),
        "eval_sample": _eval_sample(eval_frame, config.features, config.tasks, max_eval_rows),
        "metrics": _plain(dict(metrics or {}), "metrics"),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mmoe_inspect_version": _version(),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


_ENFORCE = re.compile(r"^\s*\[enforce fail at [^\]]*\]\s*\.?\s*")


def _one_line(exc: BaseException) -> str:
    """The gist of an exception in one line: torch's weights-only refusal reason, colour codes stripped."""
    if isinstance(exc, EOFError):
        return "the file is empty or truncated"
    text = _ANSI.sub("", str(exc))
    text = text.split("WeightsUnpickler error:", 1)[-1]  # the specific reason inside torch's long refusal
    text = _ENFORCE.sub(
        "", text
    )  # "[enforce fail at inline_container.cc:340] . reason": the cut kept only "]"
    line = first_line(text, default="")
    line = line.split(". ", 1)[0] if line else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _state_dict_problem(exc: RuntimeError) -> str:
    """`load_state_dict`'s error in one line: its first mismatch (a key, a shape) and how many more."""
    details = [ln.strip() for ln in _ANSI.sub("", str(exc)).splitlines()[1:] if ln.strip()]
    if not details:
        return _one_line(exc)
    first = details[0].rstrip(".")
    first = first if len(first) <= 240 else first[:237] + "..."
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return (
        f"its state_dict does not fit its model_config: {first}{more}; the file was edited or saved from "
        "another model: save the model again with save_checkpoint"
    )


def _read(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    """The validated payload dict of a checkpoint file."""
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except OSError:
        raise
    except Exception as exc:
        error = NotOurFormatError if is_weights_only_refusal(exc) else CheckpointError
        raise error(
            f"{path} is not an mmoe-inspect checkpoint (torch.load with weights_only=True refused it: "
            f"{_one_line(exc)})"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise NotOurFormatError(f"{path} is not an mmoe-inspect checkpoint (no format entry {FORMAT!r})")
    version = payload.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        shown = repr(version)[:40]
        raise CheckpointError(
            f"{path} has checkpoint format version {shown}; this mmoe-inspect reads versions 1 to "
            f"{FORMAT_VERSION}: upgrade mmoe-inspect or save the checkpoint again"
            if FORMAT_VERSION > 1
            else f"{path} has checkpoint format version {shown}; this mmoe-inspect reads only version 1: "
            "upgrade mmoe-inspect or save the checkpoint again"
        )
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise CheckpointError(f"{path} is a damaged mmoe-inspect checkpoint: it lacks {missing}")
    from mmoe_inspect.loading._payload import check_payload

    check_payload(payload, path)
    return payload


def _numpy_column(col: torch.Tensor) -> np.ndarray:
    """A stored evaluation column as numpy; dtypes numpy lacks (bfloat16) as float32, which holds them exactly."""
    col = col.cpu()
    if col.dtype == torch.bfloat16:
        col = col.float()
    return col.numpy()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Read a checkpoint written by `save_checkpoint`; the model is rebuilt, loaded and put in eval mode."""
    path = Path(path)
    payload = _read(path, map_location)
    from mmoe_inspect.loading._payload import check_model_counts, check_model_size

    try:
        config = ModelConfig.from_dict(payload["model_config"])
        check_model_counts(config.params, len(config.tasks), f"{path}: its model_config")
        check_model_size(lambda: build_model(config), f"{path}: its model_config")
        model = build_model(config)
        try:
            model.load_state_dict(payload["state_dict"])
        except RuntimeError as exc:  # torch lists every mismatch on lines of their own after a heading
            raise CheckpointError(f"{path}: cannot rebuild the model: {_state_dict_problem(exc)}") from exc
    except CheckpointError:
        raise
    except (ValueError, TypeError, RuntimeError, KeyError, AttributeError, IndexError, OverflowError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild the model: {_one_line(exc)}") from exc
    model.to(map_location).eval()
    sample = payload["eval_sample"]
    eval_frame = (
        pd.DataFrame({name: _numpy_column(col) for name, col in sample["columns"].items()})
        if sample.get("n_rows", 0) > 0
        else None
    )
    return LoadedCheckpoint(
        model=model,
        config=config,
        tasks=config.tasks,
        features=config.features,
        eval_frame=eval_frame,
        metrics=payload.get("metrics", {}),
        created=payload.get("created", ""),
        mmoe_inspect_version=payload.get("mmoe_inspect_version", "unknown"),
    )
