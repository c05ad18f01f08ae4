"""GateMonitorCallback with a real `lightning.Trainer` on CPU: a reference MMoE trained at a collapsing
learning rate logs the collapse and the step it started, `stop_on` ends the run there, a healthy run
logs nothing and trains exactly as without the callback; validation forwards are not counted; no hook
outlives `fit`, also when training raises; TensorBoard scalars land in the trainer's logger."""

from __future__ import annotations

import importlib
import json
import sys
import warnings

import lightning as L  # in the `test` extra
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

import mmoe_inspect
from mmoe_inspect.datasets import make_recsys
from mmoe_inspect.models import MMoE
from mmoe_inspect.monitor import collapse_timeline, read_run_log
from mmoe_inspect.monitor.lightning import GateMonitorCallback

TASKS = ("click", "purchase")


class MMoEModule(L.LightningModule):
    """A reference MMoE under Lightning: BCE summed over tasks, Adam at `lr`; `losses` keeps every
    training-step loss and `val_rows` counts the validation rows seen."""

    def __init__(self, lr: float, dropout: float = 0.0, raise_at: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = MMoE(8, TASKS, n_experts=4, expert_hidden=(16,), tower_hidden=(8,), dropout=dropout)
        self.lr = lr
        self.raise_at = raise_at
        self.losses: list[float] = []
        self.val_rows = 0

    def _loss(self, batch):
        x, y = batch
        out = self.model(x)
        return sum(F.binary_cross_entropy(out[t], y[:, j]) for j, t in enumerate(TASKS))

    def training_step(self, batch, batch_idx):
        if self.raise_at is not None and self.global_step == self.raise_at:
            raise RuntimeError("boom")
        loss = self._loss(batch)
        self.losses.append(float(loss.detach()))
        return {"loss": loss}

    def validation_step(self, batch, batch_idx):
        assert not self.model.training
        self.val_rows += batch[0].shape[0]
        return self._loss(batch)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


@pytest.fixture(scope="module")
def loaders() -> tuple[TensorDataset, TensorDataset]:
    """Un-normalized dense context (mean 1) `[4096, 8]` with labels `[4096, 2]` to train; its first 512
    rows validate (the gates' behaviour is what is tested, not generalization)."""
    df = make_recsys(4096, seed=0)
    x = torch.tensor(df[[f"d{j}" for j in range(8)]].to_numpy()) + 1.0
    y = torch.tensor(df[list(TASKS)].to_numpy())
    return TensorDataset(x, y), TensorDataset(x[:512], y[:512])


def _fit(module, loaders, callbacks, tmp_path, *, steps: int = 120, logger=False, accumulate: int = 1):
    train, val = loaders
    gen = torch.Generator().manual_seed(0)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        accumulate_grad_batches=accumulate,
        logger=logger,
        callbacks=callbacks,
        default_root_dir=tmp_path,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
        val_check_interval=7,  # validation inside each epoch (16 batches): eval-mode forwards between steps
        deterministic=True,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(num_workers|bottleneck|log_every_n_steps).*")
        trainer.fit(
            module,
            DataLoader(train, batch_size=256, shuffle=True, generator=gen, drop_last=True),
            DataLoader(val, batch_size=256),
        )
    return trainer


def _no_hooks(model: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_collapsing_lr_logs_the_collapse_step_and_tensorboard_mirrors_the_run_log(loaders, tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    module = MMoEModule(lr=0.5)
    log = tmp_path / "run.jsonl"
    cb = GateMonitorCallback(every=10, log_path=log)
    logger = TensorBoardLogger(tmp_path / "tb", name="mmoe")
    trainer = _fit(module, loaders, [cb], tmp_path, logger=logger)
    assert trainer.global_step == 120 and _no_hooks(module)
    assert module.val_rows > 0  # validation ran between training steps ...

    run = read_run_log(log)
    assert list(run["step"].unique()) == list(range(10, 121, 10))
    # ... and none of its rows were counted: 10 training batches of 256 per window, nothing else.
    assert (run["window_rows"] == 2560).all() and (run["window_forwards"] == 10).all()
    assert run["lr"].eq(0.5).all()
    click = run[run["gate"] == "click"]
    for k, (_, row) in enumerate(click.iterrows()):
        assert row["loss"] == pytest.approx(sum(module.losses[10 * k : 10 * k + 10]) / 10, rel=1e-12)
    assert click["epoch"].tolist() == [(s - 1) // 16 for s in click["step"]]

    timeline = collapse_timeline(run)
    for gate in TASKS:
        start = cb.first_seen[("collapsed_gate", gate)]
        first = timeline[(timeline["code"] == "collapsed_gate") & (timeline["subject"] == gate)].iloc[0]
        assert first["first_step"] == start and 10 < start <= 60
        g = run[run["gate"] == gate].set_index("step")
        assert (g.loc[g.index < start, "max_mean_weight"] < 0.9).all()
        assert g.loc[start, "max_mean_weight"] >= 0.9 and g.iloc[-1]["effective_experts"] < 1.5

    # TensorBoard: the trainer's logger got every window, tags and values equal to the run log's rows.
    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for _, row in run.iterrows():
        gate, step = row["gate"], int(row["step"])
        expected = {
            f"gates/{gate}/entropy": row["normalized_entropy"],
            f"gates/{gate}/max_utilization": row["max_mean_weight"],
            f"gates/{gate}/effective_experts": row["effective_experts"],
            **{f"gates/{gate}/utilization/e{i}": row[f"w_e{i}"] for i in range(4)},
            f"gates/{gate}/divergence/{'purchase' if gate == 'click' else 'click'}": row[
                "tv_purchase" if gate == "click" else "tv_click"
            ],
            f"gates/{gate}/findings": len(json.loads(row["findings"])),
        }
        assert set(expected) <= tags
        for tag, value in expected.items():
            [event] = [e for e in acc.Scalars(tag) if e.step == step]
            assert event.value == pytest.approx(value, rel=1e-6, abs=1e-7), (tag, step)
        hist = next(e for e in acc.Histograms(f"gates/{gate}/weights") if e.step == step).histogram_value
        assert hist.num == row["window_rows"] * 4 and hist.sum == pytest.approx(row["window_rows"], rel=1e-6)
        for i in range(4):
            h = next(
                e for e in acc.Histograms(f"gates/{gate}/weights/e{i}") if e.step == step
            ).histogram_value
            assert h.num == row["window_rows"] and sum(h.bucket) == row["window_rows"]
            assert h.sum / h.num == pytest.approx(row[f"w_e{i}"], rel=1e-9)
    assert len(acc.Scalars("gates/click/entropy")) == 12


def test_stop_on_collapse_ends_the_run_at_the_first_collapsed_window(loaders, tmp_path) -> None:
    module = MMoEModule(lr=0.5)
    seen = []
    cb = GateMonitorCallback(every=10, stop_on=("collapsed_gate",), on_finding=lambda f, s: seen.append(s))
    trainer = _fit(module, loaders, [cb], tmp_path)
    assert cb.stopped_by is not None
    finding, step = cb.stopped_by
    assert finding.code == "collapsed_gate" and step == min(seen)
    assert trainer.global_step == step < 120 and len(module.losses) == step
    assert cb.rows[-1]["step"] == step and _no_hooks(module)

    # `on_finding` returning True stops too (here: on the first finding of any kind).
    module = MMoEModule(lr=0.5)
    cb = GateMonitorCallback(every=10, on_finding=lambda f, s: True, tensorboard=False)
    trainer = _fit(module, loaders, [cb], tmp_path)
    assert trainer.global_step == cb.stopped_by[1] == min(cb.first_seen.values()) < 120


def test_healthy_run_shows_nothing_and_trains_as_without_the_callback(loaders, tmp_path) -> None:
    """lr 0.003 with dropout (the hooks must not draw random numbers) and 2-batch gradient accumulation."""
    plain = MMoEModule(lr=0.003, dropout=0.2)
    torch.manual_seed(1)
    _fit(plain, loaders, [], tmp_path, steps=30, accumulate=2)
    watched = MMoEModule(lr=0.003, dropout=0.2)
    cb = GateMonitorCallback(every=10, topology=watched.model.topology(), module="model")
    torch.manual_seed(1)
    trainer = _fit(watched, loaders, [cb], tmp_path, steps=30, accumulate=2)
    assert trainer.global_step == 30
    for (name, p), q in zip(plain.named_parameters(), watched.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert cb.first_seen == {} and len(cb.rows) == 3 * 2
    assert [r["step"] for r in cb.rows[::2]] == [10, 20, 30]
    # A step = one optimizer step = 2 batches of 256.
    assert all(r["window_forwards"] == 20 and r["window_rows"] == 5120 for r in cb.rows)
    assert all(r["max_mean_weight"] < 0.9 and r["effective_experts"] > 1.5 for r in cb.rows)
    assert _no_hooks(watched)


def test_an_exception_in_training_removes_the_hooks_and_logs_the_partial_window(loaders, tmp_path) -> None:
    module = MMoEModule(lr=0.01, raise_at=13)
    log = tmp_path / "run.parquet"
    cb = GateMonitorCallback(every=5, log_path=log)
    with pytest.raises(RuntimeError, match="boom"):
        _fit(module, loaders, [cb], tmp_path)
    assert _no_hooks(module)
    run = read_run_log(log)
    assert run["step"].unique().tolist() == [5, 10, 13]
    assert run.iloc[-1]["window_steps"] == 3 and run.iloc[-1]["step_start"] == 11


def test_a_module_without_topology_is_one_clear_error(loaders, tmp_path) -> None:
    class Bare(MMoEModule):
        def __init__(self) -> None:
            super().__init__(lr=0.01)
            self.model.topology = None  # an instance attribute hides the method

    module = Bare()
    with pytest.raises(ValueError, match=r"module='attribute\.path'"):
        _fit(module, loaders, [GateMonitorCallback(every=5)], tmp_path, steps=2)
    assert _no_hooks(module)


def test_without_lightning_the_monitor_works_and_the_callback_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "lightning", None)  # `import lightning` now fails
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.setattr(mmoe_inspect, "monitor", sys.modules["mmoe_inspect.monitor"])  # restored too
    for name in [n for n in sys.modules if n.startswith("mmoe_inspect.monitor")]:
        monkeypatch.delitem(sys.modules, name)  # restored after the test
    fresh = importlib.import_module("mmoe_inspect.monitor")
    assert fresh.GateMonitor.__module__ == "mmoe_inspect.monitor.monitor"
    with pytest.raises(ImportError, match=r'pip install "mmoe-inspect\[lightning\]"'):
        importlib.import_module("mmoe_inspect.monitor.lightning")
    with pytest.raises(ImportError, match=r'pip install "mmoe-inspect\[lightning\]"'):
        fresh.GateMonitorCallback  # noqa: B018
    monkeypatch.undo()
    import mmoe_inspect.monitor as m

    assert m.GateMonitorCallback is GateMonitorCallback
