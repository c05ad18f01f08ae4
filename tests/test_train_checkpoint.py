"""Training, evaluation metrics and checkpoints of the reference models."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from mmoe_inspect.checkpoint import FORMAT, CheckpointError, load_checkpoint, save_checkpoint
from mmoe_inspect.datasets import make_recsys, recsys_features, recsys_tasks
from mmoe_inspect.models import CGC, PLE, MMoE, ModelConfig, MultiTaskModel, OMoE, SharedBottom
from mmoe_inspect.train import evaluate, fit, predict, roc_auc

TASKS = recsys_tasks(dwell=True)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train fastest on one thread; two threads on a busy 2-core machine spin for seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def recsys() -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = make_recsys(36000, seed=0)
    return frame.iloc[:30000], frame.iloc[30000:]


def _features(frame: pd.DataFrame):
    return recsys_features(frame, embed_dim=8)


ARCHS = [
    pytest.param(
        lambda f: SharedBottom(f, TASKS, bottom_hidden=(64,), tower_hidden=(16,)), id="shared_bottom"
    ),
    pytest.param(lambda f: OMoE(f, TASKS, n_experts=4, expert_hidden=(32,), tower_hidden=(16,)), id="omoe"),
    pytest.param(lambda f: MMoE(f, TASKS, n_experts=4, expert_hidden=(32,), tower_hidden=(16,)), id="mmoe"),
    pytest.param(lambda f: PLE(f, TASKS, n_levels=2, expert_hidden=(32,), tower_hidden=(16,)), id="ple"),
    pytest.param(lambda f: CGC(f, TASKS, n_experts=2, expert_hidden=(32,), tower_hidden=(16,)), id="cgc"),
]


# ------------------------------------------------------------------------------- training


@pytest.mark.slow
@pytest.mark.parametrize("build", ARCHS)
def test_every_architecture_learns_click(
    build: Callable[..., MultiTaskModel], recsys: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    train, test = recsys
    torch.manual_seed(0)
    model = build(_features(train))
    result = fit(model, train, epochs=2, batch_size=256, lr=3e-3, seed=0)
    assert len(result.history) == 2 and result.stop_reason == "epochs"
    assert all(math.isfinite(e.train_loss) and math.isfinite(e.val_loss) for e in result.history)
    assert result.n_train + result.n_val == len(train) and result.n_val == 3000
    assert not model.training
    metrics = evaluate(model, test)
    assert metrics["click"]["auc"] > 0.6
    assert set(metrics) == {"click", "purchase", "dwell"}
    # dwell is NaN on non-clicks: those rows are masked, and the model beats predicting the mean
    assert metrics["dwell"]["mse"] < float(test["dwell"].var())
    assert result.val_metrics["click"]["auc"] > 0.6


def test_fit_is_deterministic_given_the_seed(recsys: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    train = recsys[0].iloc[:4000]

    def trained() -> dict[str, torch.Tensor]:
        torch.manual_seed(5)
        model = MMoE(_features(train), TASKS, n_experts=2, expert_hidden=(8,), dropout=0.1)
        fit(model, train, epochs=1, batch_size=256, seed=3)
        return model.state_dict()

    a, b = trained(), trained()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fit_without_validation_keeps_last_weights(recsys: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    train = recsys[0].iloc[:2000]
    model = OMoE(_features(train), ["click"], n_experts=2, expert_hidden=(8,))
    result = fit(model, train, epochs=2, val_fraction=0.0)
    assert result.best_epoch == 1 and result.n_val == 0 and result.val_metrics == {}
    assert all(math.isnan(e.val_loss) for e in result.history)


def test_fit_stops_on_time_budget(recsys: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    train = recsys[0].iloc[:4000]
    model = MMoE(_features(train), TASKS, n_experts=2, expert_hidden=(8,))
    result = fit(model, train, epochs=50, batch_size=64, max_seconds=0.0)
    assert result.stop_reason == "time" and len(result.history) == 1 and result.best_epoch == 0


def test_fit_stops_after_patience_and_restores_best(recsys: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    """A learning rate far too high makes validation loss stall; the best epoch's weights come back."""
    train = recsys[0].iloc[:3000]
    torch.manual_seed(0)
    model = SharedBottom(_features(train), ["click"], bottom_hidden=(8,))
    result = fit(model, train, epochs=30, lr=3.0, patience=1, val_fraction=0.3)
    assert result.stop_reason == "patience"
    assert len(result.history) == result.best_epoch + 2
    best = result.history[result.best_epoch].val_loss
    assert best == min(e.val_loss for e in result.history)
    val_rows = train.iloc[np.sort(np.random.default_rng(0).permutation(len(train))[:900])]
    expected = torch.nn.functional.binary_cross_entropy(
        predict(model, val_rows)["click"], torch.tensor(val_rows["click"].to_numpy())
    )
    assert float(expected) == pytest.approx(best, rel=1e-5)


def test_roc_auc_matches_sklearn_including_ties() -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(3000) < 0.3
    scores = np.round(rng.random(3000) + 0.3 * labels, 1)  # many ties
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert math.isnan(roc_auc(scores, np.zeros(3000)))


# ---------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("build", ARCHS)
def test_checkpoint_round_trip_is_bit_identical(
    build: Callable[..., MultiTaskModel], recsys: tuple[pd.DataFrame, pd.DataFrame], tmp_path: Path
) -> None:
    test = recsys[1]
    torch.manual_seed(1)
    model = build(_features(test)).eval()
    path = save_checkpoint(tmp_path / "model.pt", model, eval_frame=test, metrics={"click": {"auc": 0.7}})
    loaded = load_checkpoint(path)
    assert not loaded.model.training
    assert loaded.config == model.config and loaded.tasks == model.tasks and loaded.features == model.features
    assert loaded.metrics == {"click": {"auc": 0.7}}
    before, after = predict(model, test), predict(loaded.model, test)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"], "no temporary file left behind"


def test_checkpoint_is_plain_data_for_weights_only(
    recsys: tuple[pd.DataFrame, pd.DataFrame], tmp_path: Path
) -> None:
    test = recsys[1]
    model = MMoE(_features(test), TASKS, n_experts=2, expert_hidden=(8,))
    path = save_checkpoint(
        tmp_path / "m.pt", model, eval_frame=test, max_eval_rows=500, metrics={"n": np.int64(3)}
    )
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["format_version"] == 1
    assert ModelConfig.from_dict(raw["model_config"]) == model.config
    assert raw["tasks"][2] == {"name": "dwell", "kind": "regression", "output": "dwell", "probability": False}
    assert raw["metrics"] == {"n": 3} and isinstance(raw["metrics"]["n"], int)
    sample = raw["eval_sample"]
    assert sample["n_rows"] == 500 and sample["source_rows"] == len(test)
    assert list(sample["columns"]) == [*model.features.names, "click", "purchase", "dwell"]
    assert all(col.shape == (500,) for col in sample["columns"].values())

    def plain(value: object) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return isinstance(value, (torch.Tensor, str, int, float, bool))

    assert plain(raw)


def test_checkpoint_eval_frame_keeps_rows_dtypes_and_missing_labels(
    recsys: tuple[pd.DataFrame, pd.DataFrame], tmp_path: Path
) -> None:
    test = recsys[1]
    model = CGC(_features(test), TASKS, expert_hidden=(8,))
    loaded = load_checkpoint(save_checkpoint(tmp_path / "c.pt", model, eval_frame=test, max_eval_rows=1000))
    frame = loaded.eval_frame
    assert frame is not None and len(frame) == 1000
    assert frame["user_id"].dtype == np.int64 and frame["d0"].dtype == np.float32
    assert frame["dwell"].isna().equals(frame["click"] == 0)
    merged = frame.merge(test, on=["user_id", "item_id", "d0"], suffixes=("", "_src"))
    assert len(merged) == 1000 and (merged["click"] == merged["click_src"]).all()
    assert evaluate(loaded.model, frame)["click"]["auc"] == pytest.approx(
        evaluate(model, frame)["click"]["auc"]
    )


def test_checkpoint_without_eval_rows(tmp_path: Path) -> None:
    loaded = load_checkpoint(save_checkpoint(tmp_path / "x.pt", MMoE(3, ["a"])))
    assert loaded.eval_frame is None and loaded.metrics == {}


def test_save_refuses_models_without_config(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="config"):
        save_checkpoint(tmp_path / "x.pt", torch.nn.Linear(2, 2))


@pytest.mark.parametrize(
    ("write", "message"),
    [
        pytest.param(lambda p: p.write_text("not a checkpoint\n"), "weights_only=True refused", id="text"),
        pytest.param(lambda p: p.write_bytes(b""), "empty or truncated", id="empty"),
        pytest.param(lambda p: torch.save(MMoE(3, ["a"]), p), "Unsupported global", id="whole-module-pickle"),
        pytest.param(lambda p: torch.save({"weights": torch.ones(2)}, p), "no format entry", id="plain-dict"),
        pytest.param(
            lambda p: torch.save({"format": FORMAT, "format_version": 2}, p), "version 2", id="future"
        ),
        pytest.param(lambda p: torch.save({"format": FORMAT, "format_version": 1}, p), "lacks", id="damaged"),
    ],
)
def test_foreign_files_raise_one_line_checkpoint_error(
    write: Callable[[Path], object], message: str, tmp_path: Path
) -> None:
    path = tmp_path / "thing.pt"
    write(path)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_mismatched_weights_raise_checkpoint_error(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", MMoE(3, ["a"], n_experts=2))
    raw = torch.load(path, weights_only=True)
    raw["model_config"]["params"]["n_experts"] = 3
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="cannot rebuild"):
        load_checkpoint(path)
