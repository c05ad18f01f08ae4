"""Data sources stream parquet/CSV in bounded chunks with one-line errors; task output stats merge exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mmoe_inspect.data.sources import DataError, TableSource, check_finite, require_columns
from mmoe_inspect.stats.outputs import TaskOutputStats, binned_auc


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "a": rng.normal(size=1000).astype("float32"),
            "b": rng.integers(0, 5, 1000),
            "y": rng.integers(0, 2, 1000),
        }
    )


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_file_streams_in_chunks_and_round_trips(tmp_path, frame, suffix) -> None:
    path = tmp_path / f"data{suffix}"
    frame.to_parquet(path) if suffix == ".parquet" else frame.to_csv(path, index=False)
    src = TableSource.of(path)
    assert src.columns() == ["a", "b", "y"]
    chunks = list(src.iter_frames(300, ["a", "y"]))
    assert [len(c) for c in chunks] == [300, 300, 300, 100]
    back = pd.concat(chunks, ignore_index=True)
    np.testing.assert_allclose(back["a"].to_numpy(), frame["a"].to_numpy(), rtol=1e-6)
    assert list(back.columns) == ["a", "y"]
    assert sum(len(c) for c in src.iter_frames(300, max_rows=450)) == 450


def test_bad_inputs_give_one_line_errors(tmp_path, frame) -> None:
    with pytest.raises(DataError, match="does not exist"):
        TableSource.of(tmp_path / "nope.parquet")
    with pytest.raises(DataError, match=r"must be \.parquet or \.csv"):
        TableSource.of(tmp_path)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        TableSource.of(empty).columns()
    header_only = tmp_path / "header.csv"
    header_only.write_text("a,b,y\n")
    with pytest.raises(DataError, match="no rows"):
        list(TableSource.of(header_only).iter_frames(10))
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="not a readable parquet"):
        TableSource.of(corrupt).columns()
    with pytest.raises(DataError, match=r"lacks feature column\(s\) \['zzz'\]"):
        require_columns(TableSource.of(frame), ["a", "zzz"])
    bad = frame.copy()
    bad.loc[7, "a"] = np.nan
    with pytest.raises(DataError, match=r"'a' .* 1 NaN/inf"):
        check_finite(bad, ["a", "b"], "eval.parquet")


def test_task_output_stats_match_reference_and_merge() -> None:
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(0)
    n = 5000
    y_click = (torch.rand(n, generator=g) < 0.3).double()
    p_click = (0.3 * y_click + 0.7 * torch.rand(n, generator=g)).clamp(0, 1)
    y_reg = torch.randn(n, generator=g, dtype=torch.float64)
    p_reg = y_reg + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    preds = torch.stack([p_click, p_reg], 1)
    labels = torch.stack([y_click, y_reg], 1)
    labels[:10, 0] = float("nan")  # missing labels are skipped

    whole = TaskOutputStats(["binary", "regression"])
    whole.update(preds, labels)
    a, b = TaskOutputStats(["binary", "regression"]), TaskOutputStats(["binary", "regression"])
    a.update(preds[:1234], labels[:1234])
    b.update(preds[1234:], labels[1234:])
    a.merge_state(b)
    s, m = whole.compute(), a.compute()
    for field in ("n", "mean_prediction", "n_labelled", "label_mean", "auc", "mse"):
        torch.testing.assert_close(getattr(s, field), getattr(m, field), equal_nan=True)
    ok = ~torch.isnan(labels[:, 0])
    exact = roc_auc_score(y_click[ok].numpy(), p_click[ok].numpy())
    assert abs(float(s.auc[0]) - exact) < 1e-9  # exact AUC (per-value label counts)
    assert bool(s.auc_exact[0])
    assert torch.isnan(s.auc[1]) and torch.isnan(s.mse[0])
    assert float(s.mse[1]) == pytest.approx(float(((p_reg - y_reg) ** 2).mean()), rel=1e-9)
    assert float(s.label_mean[0]) == pytest.approx(float(y_click[ok].mean()), rel=1e-12)
    assert float(s.n_labelled[0]) == n - 10


def test_binned_auc_edge_cases() -> None:
    perfect = binned_auc(torch.tensor([[0.0, 0.0, 5.0]]), torch.tensor([[5.0, 0.0, 0.0]]))
    tied = binned_auc(torch.tensor([[0.0, 4.0, 0.0]]), torch.tensor([[0.0, 4.0, 0.0]]))
    one_class = binned_auc(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]]))
    assert float(perfect) == 1.0 and float(tied) == 0.5 and torch.isnan(one_class).all()


def test_exact_auc_on_a_sparse_task_with_ties_and_the_truncation_fallback() -> None:
    """2%-positive task, float32 predictions with many ties, fed in chunks and merged in shards: the AUC
    equals sklearn's within 1e-9; past the distinct-value cap it is flagged inexact and stays close."""
    from sklearn.metrics import log_loss, roc_auc_score

    g = torch.Generator().manual_seed(3)
    n = 120_000
    y = (torch.rand(n, generator=g) < 0.02).double()
    p = torch.sigmoid(0.4 * y + torch.randn(n, generator=g)).float().double()
    p[::3] = torch.round(p[::3] * 50) / 50  # a third of the rows tie on 51 values
    stats = [TaskOutputStats(["binary"]) for _ in range(3)]
    for k, lo in enumerate(range(0, n, 9000)):
        stats[k % 3].update(p[lo : lo + 9000, None], y[lo : lo + 9000, None])
    stats[0].merge_state(stats[2])
    stats[1].merge_state(stats[0])
    s = stats[1].compute()
    assert float(s.auc[0]) == pytest.approx(roc_auc_score(y.numpy(), p.numpy()), abs=1e-9)
    assert float(s.logloss[0]) == pytest.approx(log_loss(y.numpy(), p.numpy()), abs=1e-9)
    capped = TaskOutputStats(["binary"], max_auc_values=500)
    capped.update(p[:, None], y[:, None])
    c = capped.compute()
    assert not bool(c.auc_exact[0]) and abs(float(c.auc[0]) - float(s.auc[0])) < 5e-3
