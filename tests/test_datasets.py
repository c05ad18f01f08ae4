"""Synthetic data sets and DataFrame → tensor batching."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mmoe_inspect.data.batches import dense_matrix, frame_to_inputs, frame_to_labels, iter_batches
from mmoe_inspect.data.schema import CategoricalFeature, FeatureSpec
from mmoe_inspect.data.sources import column_kinds, leading_columns
from mmoe_inspect.datasets import (
    ATTRS_KEY,
    make_recsys,
    make_synthetic,
    recsys_features,
    recsys_tasks,
    synthetic_features,
    synthetic_tasks,
)
from mmoe_inspect.topology.spec import TaskSpec

# ------------------------------------------------------------------------------ synthetic


def test_synthetic_shape_and_columns() -> None:
    frame = make_synthetic(500, 0.5, d=12, seed=3)
    assert frame.shape == (500, 14)
    assert list(frame.columns) == [f"x{j}" for j in range(12)] + ["y1", "y2"]
    assert set(frame.dtypes) == {np.dtype(np.float32)}
    assert synthetic_features(12).dense == tuple(frame.columns[:12])
    assert [(t.name, t.kind) for t in synthetic_tasks()] == [("y1", "regression"), ("y2", "regression")]


def test_synthetic_is_deterministic_by_seed() -> None:
    pd.testing.assert_frame_equal(make_synthetic(300, 0.9, seed=7), make_synthetic(300, 0.9, seed=7))
    assert not make_synthetic(300, 0.9, seed=7).equals(make_synthetic(300, 0.9, seed=8))


def test_synthetic_rows_extend_and_task_one_ignores_rho() -> None:
    """Task parameters depend on the seed only: y1 (= f(w1 = c*u1)) is the same for every rho and size."""
    small, large = make_synthetic(200, 0.2, seed=1), make_synthetic(400, 0.8, seed=1)
    pd.testing.assert_frame_equal(small.drop(columns="y2"), large.drop(columns="y2").iloc[:200])
    assert not np.allclose(small["y2"], large["y2"].iloc[:200])


def test_synthetic_label_correlation_rises_with_rho() -> None:
    corr = {
        rho: np.corrcoef(f["y1"], f["y2"])[0, 1]
        for rho in (0.0, 0.5, 0.9, 1.0)
        for f in [make_synthetic(20000, rho, seed=0)]
    }
    assert corr[0.0] < corr[0.5] < corr[0.9] < corr[1.0]
    assert abs(corr[0.0]) < 0.05
    assert corr[1.0] > 0.98


def test_synthetic_identical_tasks_differ_only_by_noise() -> None:
    frame = make_synthetic(20000, 1.0, noise_std=0.1, seed=0)
    assert np.std(frame["y1"] - frame["y2"]) == pytest.approx(0.1 * np.sqrt(2), rel=0.05)


def test_synthetic_refuses_bad_rho() -> None:
    with pytest.raises(ValueError, match="rho"):
        make_synthetic(10, 1.5)


# --------------------------------------------------------------------------------- recsys


@pytest.fixture(scope="module")
def recsys() -> pd.DataFrame:
    return make_recsys(40000, seed=0)


def test_recsys_columns_and_dtypes(recsys: pd.DataFrame) -> None:
    ids = ["user_id", "item_id", "category", "device"]
    dense = [f"d{j}" for j in range(8)]
    assert list(recsys.columns) == [*ids, *dense, "click", "purchase", "dwell"]
    assert all(recsys[c].dtype == np.int64 for c in ids)
    assert all(recsys[c].dtype == np.float32 for c in [*dense, "click", "purchase", "dwell"])


def test_recsys_positive_rates(recsys: pd.DataFrame) -> None:
    assert 0.17 < recsys["click"].mean() < 0.23
    assert 0.01 < recsys["purchase"].mean() < 0.03


def test_recsys_purchases_follow_clicks(recsys: pd.DataFrame) -> None:
    assert recsys.loc[recsys["purchase"] == 1, "click"].mean() > 0.9
    assert (recsys["dwell"].isna() == (recsys["click"] == 0)).all()


def test_recsys_is_deterministic_by_seed() -> None:
    pd.testing.assert_frame_equal(make_recsys(2000, seed=4), make_recsys(2000, seed=4))
    assert not make_recsys(2000, seed=4).equals(make_recsys(2000, seed=5))


def test_recsys_relatedness_ties_purchase_to_the_click_score() -> None:
    """Dwell carries the click score; with relatedness 1 purchases follow it, with 0 they do not."""

    def purchase_dwell_corr(relatedness: float) -> float:
        f = make_recsys(100000, relatedness=relatedness, seed=0)
        clicked = f[f["click"] == 1]
        return float(np.corrcoef(clicked["purchase"], clicked["dwell"])[0, 1])

    assert purchase_dwell_corr(1.0) > purchase_dwell_corr(0.0) + 0.05


def test_recsys_features_take_cardinalities_from_the_generator(tmp_path) -> None:
    frame = make_recsys(50, n_users=3000, n_items=700, seed=1)
    spec = recsys_features(frame, embed_dim=4)
    assert spec.dense == tuple(f"d{j}" for j in range(8))
    assert {c.name: c.cardinality for c in spec.categorical} == {
        "user_id": 3000,
        "item_id": 700,
        "category": 20,
        "device": 4,
    }
    assert frame["user_id"].max() < 3000 - 1  # 50 rows never reach the largest id
    path = tmp_path / "recsys.parquet"
    frame.to_parquet(path)
    assert pd.read_parquet(path).attrs[ATTRS_KEY] == frame.attrs[ATTRS_KEY]
    assert recsys_features(pd.read_parquet(path), embed_dim=4) == spec


def test_recsys_features_refuse_ids_beyond_cardinality() -> None:
    frame = make_recsys(100, seed=0)
    frame.attrs[ATTRS_KEY] = {**frame.attrs[ATTRS_KEY], "device": 1}
    with pytest.raises(ValueError, match="device"):
        recsys_features(frame)


def test_recsys_tasks() -> None:
    assert [(t.name, t.kind) for t in recsys_tasks()] == [("click", "binary"), ("purchase", "binary")]
    assert recsys_tasks(dwell=True)[-1].kind == "regression"


# -------------------------------------------------------------------------------- batches

SPEC = FeatureSpec(dense=("a", "b"), categorical=(CategoricalFeature("u", 10),))
FRAME = pd.DataFrame(
    {
        "a": np.arange(7, dtype=np.float64),
        "b": np.linspace(0, 1, 7),
        "u": np.array([0, 1, 2, 3, 4, 5, 9]),
        "click": [1, 0, 1, 0, 1, 0, 1],
        "dwell": [1.5, np.nan, 2.0, np.nan, 0.5, np.nan, 1.0],
    }
)
TASKS = (TaskSpec("click"), TaskSpec("dwell", "regression"))


def test_inputs_are_a_dict_with_categoricals() -> None:
    x = frame_to_inputs(FRAME, SPEC)
    assert isinstance(x, dict) and list(x) == ["a", "b", "u"]
    assert x["a"].dtype == torch.float32 and x["u"].dtype == torch.int64
    assert x["u"].tolist() == [0, 1, 2, 3, 4, 5, 9]


def test_inputs_are_one_tensor_without_categoricals() -> None:
    x = frame_to_inputs(FRAME, FeatureSpec(dense=("b", "a")))
    assert isinstance(x, torch.Tensor) and x.shape == (7, 2) and x.dtype == torch.float32
    assert x[:, 1].tolist() == list(range(7))


def test_pandas_categorical_columns_become_codes() -> None:
    frame = FRAME.assign(u=pd.Categorical(["x", "y", "x", "z", "y", "x", "z"]))
    assert frame_to_inputs(frame, SPEC)["u"].tolist() == [0, 1, 0, 2, 1, 0, 2]


def test_labels_keep_nan_for_missing_values() -> None:
    y = frame_to_labels(FRAME, TASKS)
    assert y.shape == (7, 2) and y.dtype == torch.float32
    assert y[:, 0].tolist() == [1, 0, 1, 0, 1, 0, 1]
    assert torch.isnan(y[:, 1]).tolist() == [False, True, False, True, False, True, False]


def test_missing_columns_are_named() -> None:
    with pytest.raises(KeyError, match="purchase"):
        frame_to_labels(FRAME, [TaskSpec("purchase")])
    with pytest.raises(KeyError, match="'u'"):
        frame_to_inputs(FRAME.drop(columns="u"), SPEC)


def test_batches_cover_every_row_once_with_offsets() -> None:
    batches = list(iter_batches(FRAME, SPEC, TASKS, batch_size=3))
    assert [b.offset for b in batches] == [0, 3, 6]
    assert torch.cat([b.inputs["a"] for b in batches]).tolist() == list(range(7))
    assert torch.cat([b.labels for b in batches]).shape == (7, 2)
    assert all(b.labels is None for b in iter_batches(FRAME, SPEC, batch_size=4))


# ------------------------------------------------------------- dense matrix (the per-batch conversion)


def _reference_matrix(frame: pd.DataFrame, cols: list[str]) -> np.ndarray:
    return np.array([[float(frame[c].iloc[r]) for c in cols] for r in range(len(frame))], dtype=np.float32)


@pytest.mark.parametrize(
    "layout",
    [
        "leading_slice",
        "leading_parquet_block",
        "reordered",
        "float64",
        "mixed_dtypes",
        "one_column",
        "one_row",
    ],
)
def test_dense_matrix_is_a_fresh_row_major_copy(tmp_path, layout: str) -> None:
    """Whatever pandas' block layout (a strided slice of a big frame, one decoded parquet block, a column
    take, a dtype conversion), the features come back as a C-contiguous float32 copy of their values
    that the model may modify without touching the frame."""
    rng = np.random.default_rng(1)
    big = pd.DataFrame(rng.normal(size=(50, 6)).astype(np.float32), columns=[f"x{i}" for i in range(6)])
    big["y"] = (rng.random(50) < 0.5).astype(np.float32)
    cols = ["x0", "x1", "x2", "x3", "x4", "x5"]
    if layout == "leading_slice":  # what a DataFrame source yields: rows 10..29 of the whole frame's block
        frame = big.iloc[10:30]
    elif layout == "leading_parquet_block":
        big.to_parquet(tmp_path / "f.parquet")
        frame = pd.read_parquet(tmp_path / "f.parquet").iloc[:20]
    elif layout == "reordered":
        frame, cols = big.iloc[5:25], ["x3", "x0", "x5"]
    elif layout == "float64":
        frame = big.astype(np.float64).iloc[3:40]
    elif layout == "mixed_dtypes":
        frame = big.assign(x1=big["x1"].astype(np.float64), x2=np.arange(50), s="text").iloc[7:19]
    elif layout == "one_column":
        frame, cols = big.iloc[2:9], ["x4"]
    else:
        frame = big.iloc[11:12]
    before = frame.copy(deep=True)
    x = dense_matrix(frame, cols)
    assert x.dtype == torch.float32 and x.is_contiguous() and x.shape == (len(frame), len(cols))
    np.testing.assert_array_equal(x.numpy(), _reference_matrix(frame, cols))
    x.mul_(0.0).add_(7.0)  # a model that works in place on its input
    pd.testing.assert_frame_equal(frame, before)


def test_column_kinds_and_leading_columns() -> None:
    frame = pd.DataFrame(
        {"a": [1.0, 2.0], "b": [1, 2], "c": ["x", "y"], "d": pd.Categorical(["p", "q"]), "e": [True, False]}
    )
    assert column_kinds(frame, ["e", "a", "c", "b", "d"]) == ["b", "f", "O", "i", "O"]
    assert column_kinds(frame[["a"]].assign(z=3.0), ["z", "a"]) == ["f", "f"]
    view = leading_columns(frame, ["a", "b"])
    assert list(view.columns) == ["a", "b"] and leading_columns(frame, ["b", "a"]).columns.tolist() == [
        "b",
        "a",
    ]
    assert leading_columns(frame, list(frame.columns)) is frame
