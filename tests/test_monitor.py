"""GateMonitor: a real high-learning-rate run collapses its gates and the run log shows when; a healthy
run shows nothing; the monitor leaves training bit-identical; findings equal the post-hoc ones."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from mmoe_inspect.analysis.findings import Thresholds
from mmoe_inspect.datasets import make_recsys
from mmoe_inspect.inspector import InspectConfig, inspect
from mmoe_inspect.models import MMoE, OMoE
from mmoe_inspect.monitor import GateMonitor, collapse_timeline, read_run_log

TASKS = ("click", "purchase")


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    """Un-normalized dense context (mean 1, a common real-world slip) `[4096, 8]` and labels `[4096, 2]`."""
    df = make_recsys(4096, seed=0)
    x = torch.tensor(df[[f"d{j}" for j in range(8)]].to_numpy()) + 1.0
    y = torch.tensor(df[list(TASKS)].to_numpy())
    return x, y


def _model(dropout: float = 0.0, cls: type = MMoE) -> torch.nn.Module:
    torch.manual_seed(0)
    return cls(8, TASKS, n_experts=4, expert_hidden=(16,), tower_hidden=(8,), dropout=dropout)


def _train(model, data, lr: float, steps: int, monitor: GateMonitor | None = None) -> None:
    """Adam, batches of 256 drawn with a fixed generator, BCE summed over tasks."""
    x, y = data
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (256,), generator=gen)
        out = model(x[idx])
        loss = sum(F.binary_cross_entropy(out[t], y[idx, j]) for j, t in enumerate(TASKS))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if monitor is not None:
            monitor.step(epoch=0, loss=loss.item(), lr=lr)


def test_high_lr_run_logs_collapse_and_its_start(data, tmp_path) -> None:
    model = _model()
    seen: list[tuple[str, str, int]] = []
    log = tmp_path / "run.jsonl"
    with GateMonitor(
        model, every=10, log_path=log, on_finding=lambda f, s: seen.append((f.code, f.subject, s))
    ) as mon:
        _train(model, data, lr=0.3, steps=120, monitor=mon)

    run = read_run_log(log)
    assert len(run) == 12 * 2 and set(run["gate"]) == set(TASKS)
    assert list(run["step"].unique()) == list(range(10, 121, 10))
    assert (run["window_steps"] == 10).all() and (run["window_rows"] == 2560).all()
    weights = run[[f"w_e{i}" for i in range(4)]].sum(axis=1)
    assert weights.to_numpy() == pytest.approx(1.0, abs=1e-5)
    assert {"tv_purchase", "loss", "lr", "effective_experts", "polarized_share", "top_expert"} <= set(run)

    timeline = collapse_timeline(run)
    for gate in TASKS:
        start = mon.first_seen[("collapsed_gate", gate)]
        row = timeline[(timeline["code"] == "collapsed_gate") & (timeline["subject"] == gate)].iloc[0]
        assert row["first_step"] == start and row["gate"] == gate and row["severity"] == "critical"
        assert ("collapsed_gate", gate, start) in seen
        g = run[run["gate"] == gate].set_index("step")
        # Healthy before the start, collapsed from it to the end of the run.
        assert 10 < start <= 60
        before = g.loc[g.index < start]
        assert (before["max_mean_weight"] < 0.9).all() or (before["top_expert_top1_share"] < 0.9).all()
        assert g.loc[start, "max_mean_weight"] >= 0.9 and g.iloc[-1]["max_mean_weight"] >= 0.9
        assert g.iloc[-1]["effective_experts"] < 1.5
        assert g.loc[start, "effective_experts"] < g.iloc[0]["effective_experts"]
        assert "collapsed_gate" in g.loc[start, "findings"]
    # The callback fires once per (code, subject), at its first step.
    assert len(seen) == len(mon.first_seen) == len(timeline)
    assert {(c, s): st for c, s, st in seen} == mon.first_seen


def test_healthy_run_logs_no_findings(data) -> None:
    model = _model()
    with GateMonitor(model, every=10) as mon:
        _train(model, data, lr=0.003, steps=120, monitor=mon)
    run = pd.DataFrame(mon.rows)
    assert len(run) == 24 and mon.first_seen == {}
    assert collapse_timeline(run).empty
    assert (run["max_mean_weight"] < 0.9).all() and (run["effective_experts"] > 1.5).all()


def test_monitor_does_not_change_training(data) -> None:
    """Same seed with and without the monitor (dropout on: no random numbers drawn by hooks)."""
    plain = _model(dropout=0.2)
    torch.manual_seed(1)
    _train(plain, data, lr=0.01, steps=15)
    watched = _model(dropout=0.2)
    torch.manual_seed(1)
    with GateMonitor(watched, every=4) as mon:
        _train(watched, data, lr=0.01, steps=15, monitor=mon)
    for (name, p), q in zip(plain.named_parameters(), watched.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert len(mon.rows) == 4 * 2  # windows at 4, 8, 12 and the partial one (3 steps) at close
    assert mon.rows[-1]["window_steps"] == 3 and mon.rows[-1]["step"] == 15
    assert all(m.training for m in watched.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in watched.modules())


def test_window_findings_equal_post_hoc_diagnosis(data) -> None:
    model = _model()
    _train(model, data, lr=0.3, steps=40)
    model.eval()
    x, _ = data
    frame = pd.DataFrame(x.numpy(), columns=[f"x{i}" for i in range(8)])
    result = inspect(model, frame, labels=False, config=InspectConfig(batch_size=4096, record_experts=False))
    with torch.no_grad(), GateMonitor(model, every=1, train_only=False) as mon:
        model(x)
        findings = mon.step()
    assert findings is not None and findings
    assert [(f.code, f.subject) for f in findings] == [(f.code, f.subject) for f in result.findings]
    post = result.table("gate_metrics").set_index("gate")
    for row in mon.rows:
        assert row["max_mean_weight"] == pytest.approx(post.loc[row["gate"], "max_mean_weight"], abs=1e-9)
        assert row["polarized_share"] == pytest.approx(post.loc[row["gate"], "polarized_share"], abs=1e-9)


def test_eval_forwards_are_skipped_and_thresholds_apply(data) -> None:
    model = _model()
    x, _ = data
    strict = Thresholds(collapse_weight=0.0, collapse_top1=0.0)
    with GateMonitor(model, every=2, thresholds=strict) as mon:
        model.eval()
        with torch.no_grad():
            model(x[:64])
        mon.step()
        assert mon._window_forwards == 0
        model.train()
        model(x[:64])
        findings = mon.step()
    assert findings is not None and {f.code for f in findings} >= {"collapsed_gate"}
    assert mon.rows[0]["window_rows"] == 64 and mon.rows[0]["window_forwards"] == 1


def test_parquet_log_appends_and_hooks_go_on_exceptions(data, tmp_path) -> None:
    log = tmp_path / "run.parquet"
    model = _model(cls=OMoE)
    with GateMonitor(model, every=5, log_path=log) as mon:
        _train(model, data, lr=0.01, steps=10, monitor=mon)
    first = read_run_log(log)
    assert len(first) == 2 and list(first["gate"]) == ["shared", "shared"]
    assert not list(tmp_path.glob("*.tmp"))
    resumed = GateMonitor(model, every=5, log_path=log, start_step=10)
    with pytest.raises(RuntimeError, match="boom"), resumed as mon:
        _train(model, data, lr=0.01, steps=3, monitor=mon)
        raise RuntimeError("boom")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    run = read_run_log(log)
    assert len(run) == 3 and run.iloc[-1]["window_steps"] == 3  # partial window logged on the way out
    assert run["step"].tolist() == [5, 10, 13] and run.iloc[-1]["step_start"] == 11


def test_jsonl_survives_a_truncated_last_line_and_rejects_bad_arguments(data, tmp_path) -> None:
    log = tmp_path / "run.jsonl"
    model = _model()
    with GateMonitor(model, every=2, log_path=log) as mon:
        _train(model, data, lr=0.01, steps=4, monitor=mon)
    text = log.read_text()
    assert all(json.loads(line)["gate"] in TASKS for line in text.splitlines())
    log.write_text(text + '{"step": 6, "ga')
    assert len(read_run_log(log)) == 4
    with pytest.raises(ValueError, match="every"):
        GateMonitor(model, every=0)
    with GateMonitor(model, every=2) as mon, pytest.raises(ValueError, match="clashes"):
        mon.step(gate=1.0)
    with pytest.raises(ValueError, match="stride"):
        GateMonitor(model, every=2, stride=3)
    with pytest.raises(ValueError, match="must end in"):
        GateMonitor(model, log_path=tmp_path / "run.csv")


def test_ple_gates_log_their_own_experts_and_stride_thins_forwards(data, tmp_path) -> None:
    from mmoe_inspect.models import PLE

    model = _model(cls=PLE)
    log = tmp_path / "ple.parquet"
    with GateMonitor(model, every=4, stride=2, log_path=log) as mon:
        _train(model, data, lr=0.01, steps=8, monitor=mon)
    run = read_run_log(log)
    topo = model.topology()
    assert len(run) == 2 * len(topo.gates) and (run["window_forwards"] == 2).all()
    assert (run["window_rows"] == 512).all()
    for gate in topo.gates:
        row = run[run["gate"] == gate.name].iloc[0]
        cols = [c for c in run if c.startswith("w_") and pd.notna(row[c])]
        assert sorted(cols) == sorted(f"w_{e}" for e in gate.experts)
        assert row[cols].sum() == pytest.approx(1.0, abs=1e-5)
