"""Hostile inputs, round 5b (session 12's FINDINGS items 4, 5, 6, 7, 10, 11), each a named test.

Items: 7 a label column only some files of a parquet folder have, 10 a spec that contradicts the model,
6 a monitor log path that is not a run log, 5 a run log of another model, 4 huge segment labels,
11 AUC spill folders of killed runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mmoe_inspect import FeatureSpec, inspect
from mmoe_inspect.data.sources import MissingColumnError, TableSource
from mmoe_inspect.models import MMoE

N = 400


def rows(seed: int = 0, n: int = N) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({f"x{i}": rng.normal(size=n).astype("float32") for i in range(3)})
    frame["click"] = rng.integers(0, 2, n).astype("float32")
    frame["buy"] = rng.integers(0, 2, n).astype("float32")
    return frame


def small_mmoe() -> MMoE:
    torch.manual_seed(0)
    return MMoE(
        FeatureSpec.dense_only(3), ["click", "buy"], n_experts=3, expert_hidden=(8,), tower_hidden=(4,)
    ).eval()


# =========================================================================== 7: partial label columns
def test_label_column_in_some_files_of_a_folder_is_read_where_present(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    rows(0).to_parquet(folder / "a.parquet")
    rows(1).drop(columns=["click"]).to_parquet(folder / "b.parquet")
    source = TableSource.of(folder)
    assert "click" in source.columns() and source.partial_columns() == {"click": folder / "b.parquet"}
    result = inspect(small_mmoe(), folder)
    tasks = result.table("tasks").set_index("task")
    assert tasks.loc["click", "n_labelled"] == N and tasks.loc["buy", "n_labelled"] == 2 * N
    assert not [f for f in result.findings if f.code == "task_unlabelled"]


def test_feature_column_missing_from_one_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    rows(0).to_parquet(folder / "a.parquet")
    rows(1).drop(columns=["x2"]).to_parquet(folder / "b.parquet")
    with pytest.raises(MissingColumnError, match=r"b\.parquet lacks feature column\(s\) \['x2'\] that other"):
        inspect(small_mmoe(), folder)
