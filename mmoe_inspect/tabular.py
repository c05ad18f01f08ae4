"""Table plumbing shared by every result object: JSON-safe records and CSV files of named DataFrames."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmoe_inspect._text import csv_safe


def json_safe(obj: Any) -> Any:
    """NaN/inf → None, numpy scalars → Python, tuples → lists (recursively)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is pd.NA or obj is pd.NaT:
        return None
    return obj


def table_records(tables: Mapping[str, pd.DataFrame]) -> dict[str, list[dict[str, Any]]]:
    """Every table as JSON-safe records, full float precision."""
    return {name: json_safe(frame.to_dict(orient="records")) for name, frame in tables.items()}


def save_tables(tables: Mapping[str, pd.DataFrame], folder: str | Path, prefix: str = "") -> list[Path]:
    """Write every non-empty table as `<prefix><name>.csv` into `folder`; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, frame in tables.items():
        if frame.empty:
            continue
        path = folder / f"{prefix}{name}.csv"
        csv_safe(frame).to_csv(path, index=False)  # a name like "=HYPERLINK(...)" stays text
        paths.append(path)
    return paths
