"""GateMonitor's TensorBoard output, read back from the event files with tensorboard's EventAccumulator:
every window's per-gate scalars equal the run log's row, the weight histograms hold the window's rows
with the run log's mean weights; a user's writer is flushed, not closed; a missing tensorboard package is
one clear line."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_monitor import TASKS
from test_monitor import _train as train
from torch.utils.tensorboard import SummaryWriter

from mmoe_inspect.datasets import make_recsys
from mmoe_inspect.models import PLE, MMoE
from mmoe_inspect.monitor import GateMonitor, read_run_log


def _train(model, lr: float, steps: int, mon: GateMonitor) -> None:
    """test_monitor's training loop on 2,048 rows of make_recsys (dense features shifted by 1)."""
    df = make_recsys(2048, seed=0)
    x = torch.tensor(df[[f"d{j}" for j in range(8)]].to_numpy()) + 1.0
    y = torch.tensor(df[list(TASKS)].to_numpy())
    train(model, (x, y), lr, steps, mon)


def _events(log_dir) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def _at(events, step: int):
    [event] = [e for e in events if e.step == step]
    return event


def test_scalars_and_histograms_equal_the_run_log(tmp_path) -> None:
    torch.manual_seed(0)
    model = MMoE(8, TASKS, n_experts=4, expert_hidden=(16,), tower_hidden=(8,))
    log, tb = tmp_path / "run.jsonl", tmp_path / "tb"
    with GateMonitor(model, every=10, log_path=log, tensorboard=tb) as mon:
        _train(model, lr=0.3, steps=45, mon=mon)
    run = read_run_log(log)
    assert run["step"].unique().tolist() == [10, 20, 30, 40, 45]
    acc = _events(tb)
    experts = [f"e{i}" for i in range(4)]
    names = (
        "entropy",
        "max_utilization",
        "effective_experts",
        "findings",
        *(f"utilization/{e}" for e in experts),
    )
    expected_tags = {f"gates/{g}/{name}" for g in TASKS for name in names}
    expected_tags |= {"gates/click/divergence/purchase", "gates/purchase/divergence/click"}
    assert set(acc.Tags()["scalars"]) == expected_tags
    assert set(acc.Tags()["histograms"]) == {
        f"gates/{g}/weights{s}" for g in TASKS for s in ("", *(f"/{e}" for e in experts))
    }
    for _, row in run.iterrows():
        g, step, other = row["gate"], int(row["step"]), "purchase" if row["gate"] == "click" else "click"
        pairs = [
            ("entropy", "normalized_entropy"),
            ("max_utilization", "max_mean_weight"),
            ("effective_experts", "effective_experts"),
            (f"divergence/{other}", f"tv_{other}"),
            *((f"utilization/{e}", f"w_{e}") for e in experts),
        ]
        for tag, column in pairs:
            assert _at(acc.Scalars(f"gates/{g}/{tag}"), step).value == pytest.approx(
                row[column], rel=1e-6, abs=1e-7
            )
        assert _at(acc.Scalars(f"gates/{g}/findings"), step).value == len(json.loads(row["findings"]))
        everything = _at(acc.Histograms(f"gates/{g}/weights"), step).histogram_value
        assert everything.num == 4 * row["window_rows"] and len(everything.bucket) == 100
        for e in experts:
            h = _at(acc.Histograms(f"gates/{g}/weights/{e}"), step).histogram_value
            assert h.num == sum(h.bucket) == row["window_rows"]
            assert h.sum / h.num == pytest.approx(row[f"w_{e}"], rel=1e-9)
            assert 0.0 <= h.min <= h.sum / h.num <= h.max <= 1.0
    # The collapse shows on TensorBoard as it does in the run log: findings counted from its first window.
    start = mon.first_seen[("collapsed_gate", "click")]
    findings = {e.step: e.value for e in acc.Scalars("gates/click/findings")}
    assert findings[start] >= 1 and all(v == 0 for s, v in findings.items() if s < start)


def test_a_users_writer_is_flushed_not_closed_and_nan_columns_are_left_out(tmp_path) -> None:
    torch.manual_seed(0)
    model = PLE(8, TASKS, n_experts=2, n_specific=1, expert_hidden=(16,), tower_hidden=(8,))
    writer = SummaryWriter(log_dir=str(tmp_path))
    with GateMonitor(model, every=5, tensorboard=writer) as mon:
        _train(model, lr=0.01, steps=5, mon=mon)
    writer.add_scalar("after/close", 1.0, 0)  # still open
    writer.close()
    tags = set(_events(tmp_path).Tags()["scalars"])
    assert "after/close" in tags
    for row in mon.rows:
        own = {c[2:] for c, v in row.items() if c.startswith("w_") and not math.isnan(v)}
        logged = {t.rsplit("/", 1)[1] for t in tags if t.startswith(f"gates/{row['gate']}/utilization/")}
        assert logged == own  # a PLE gate mixes its own experts only


def test_without_tensorboard_or_with_a_bad_writer_the_monitor_says_what_to_do(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    torch.manual_seed(0)
    model = MMoE(8, TASKS, n_experts=2, expert_hidden=(4,), tower_hidden=(4,))
    mon = GateMonitor(model, tensorboard=tmp_path / "tb")
    with pytest.raises(ImportError, match=r'pip install "mmoe-inspect\[tensorboard\]"'):
        mon.open()
    with pytest.raises(TypeError, match="log directory or a SummaryWriter"):
        GateMonitor(model, tensorboard=True).open()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
