"""The report's Training section: `demo --monitor` writes a run log and shows it; `report --run` with the
run log of a real collapsing training run shows the step the collapse started, on the page and in
metrics.json; `fit(on_step=...)` drives a monitor step by step."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from mmoe_inspect.cli.main import app
from mmoe_inspect.datasets import make_recsys, recsys_features, recsys_tasks
from mmoe_inspect.models import MMoE, ModelConfig, build_model
from mmoe_inspect.monitor import GateMonitor, collapse_timeline, read_run_log
from mmoe_inspect.train import fit

runner = CliRunner()
TASKS = ("click", "purchase")


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def collapsed_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[tuple[str, str], int]]:
    """The run log of the high-learning-rate MMoE run of test_monitor.py (its gates collapse)."""
    df = make_recsys(4096, seed=0)
    x = torch.tensor(df[[f"d{j}" for j in range(8)]].to_numpy()) + 1.0
    y = torch.tensor(df[list(TASKS)].to_numpy())
    torch.manual_seed(0)
    model = MMoE(8, TASKS, n_experts=4, expert_hidden=(16,), tower_hidden=(8,), dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.3)
    gen = torch.Generator().manual_seed(0)
    log = tmp_path_factory.mktemp("collapse") / "run.jsonl"
    model.train()
    with GateMonitor(model, every=10, log_path=log) as mon:
        for _ in range(120):
            idx = torch.randint(0, x.shape[0], (256,), generator=gen)
            out = model(x[idx])
            loss = sum(F.binary_cross_entropy(out[t], y[idx, j]) for j, t in enumerate(TASKS))
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(epoch=0, loss=loss.item(), lr=0.3)
    assert ("collapsed_gate", "click") in mon.first_seen
    return log, dict(mon.first_seen)


def test_demo_monitor_writes_the_run_log_and_the_training_section(demo_dir: Path) -> None:
    log = demo_dir / "run_log.jsonl"
    run = read_run_log(log)
    assert set(run["gate"]) == set(TASKS) and run["step"].is_monotonic_increasing
    assert run["step"].nunique() >= 5 and "loss" in run
    html = (demo_dir / "report" / "index.html").read_text(encoding="utf-8")
    assert 'id="training"' in html and "No training run log" not in html
    for fig in ("training_utilization", "training_entropy", "training_divergence"):
        assert (demo_dir / "report" / "figures" / f"{fig}.png").read_bytes()[:4] == b"\x89PNG"
        assert f'id="fig-{fig}"' in html and f'id="howto-fig-{fig}"' in html
    metrics = json.loads((demo_dir / "report" / "metrics.json").read_text(encoding="utf-8"))
    assert len(metrics["training"]["run_log"]) == len(run)
    assert (demo_dir / "report" / "tables" / "training_run_log.csv").exists()


def test_report_run_shows_when_the_gates_collapsed(demo_dir: Path, collapsed_log, tmp_path: Path) -> None:
    from test_report_numbers import untraceable

    log, first_seen = collapsed_log
    out = tmp_path / "report"
    ckpt = demo_dir / "checkpoints" / "mmoe.pt"
    result = invoke("report", ckpt, "--out", out, "--run", log, "--no-causal", "--no-attributions", "--quiet")
    assert result.exit_code == 0, result.output
    html = (out / "index.html").read_text(encoding="utf-8")
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    timeline = {(r["code"], r["subject"]): r for r in metrics["training"]["timeline"]}
    expected = collapse_timeline(read_run_log(log))
    assert len(timeline) == len(expected) == len(first_seen)
    for gate in TASKS:
        start = first_seen[("collapsed_gate", gate)]
        assert timeline[("collapsed_gate", gate)]["first_step"] == start
    section = html[html.index('id="training"') :]
    section = section[: section.index("</section>")]
    assert 'id="table-training_timeline"' in section and 'id="fig-training_utilization"' in section
    start = min(first_seen[("collapsed_gate", g)] for g in TASKS)
    assert re.search(rf"collapsed_gate.*from step {start}\b", section, re.S)
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", section, re.S)
    assert any("collapsed_gate" in r and f">{first_seen[('collapsed_gate', 'click')]}<" in r for r in rows)
    assert untraceable(out)[0] == []


def test_report_without_or_with_a_bad_run_log(demo_dir: Path, tmp_path: Path) -> None:
    ckpt = demo_dir / "checkpoints" / "mmoe.pt"
    bad = tmp_path / "run.csv"
    bad.write_text("step,gate\n1,click\n")
    for path in (bad, tmp_path / "missing.jsonl"):
        result = invoke("report", ckpt, "--out", tmp_path / "r", "--run", path, "--no-causal", "--quiet")
        assert result.exit_code == 2, result.output
        assert "--run" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
    from types import SimpleNamespace

    from mmoe_inspect.reports.training_section import training_section

    section = training_section(SimpleNamespace(training=None), {}, set())  # type: ignore[arg-type]
    assert section.anchor == "training" and len(section.items) == 1
    assert "No training run log: pass --run RUN_LOG (or demo --monitor)" in section.items[0].text


def test_fit_calls_on_step_once_per_step() -> None:
    frame = make_recsys(2000, seed=0)
    config = ModelConfig("mmoe", recsys_features(frame), tuple(recsys_tasks()), {"n_experts": 2})
    torch.manual_seed(0)
    model = build_model(config)
    calls: list[tuple[int, int, float]] = []
    res = fit(model, frame, epochs=2, batch_size=500, patience=5, on_step=lambda *a: calls.append(a))
    per_epoch = -(-res.n_train // 500)
    assert [s for s, _, _ in calls] == list(range(1, 2 * per_epoch + 1))
    assert [e for _, e, _ in calls] == [0] * per_epoch + [1] * per_epoch
    assert all(isinstance(v, float) and v > 0 for *_, v in calls)


def test_training_figures_keep_text_off_the_data_and_plot_the_loss(collapsed_log) -> None:
    """The collapsing run: every training figure (loss included) is drawn, and no text box covers a line or a
    legend (the finding labels used to run through the lines and the legend); the check itself catches a
    label written on a line."""
    from types import SimpleNamespace

    from figure_checks import text_overlaps
    from matplotlib.figure import Figure

    from mmoe_inspect.reports.figures import TRAINING_FIGURES

    log, _ = collapsed_log
    result = SimpleNamespace(training=read_run_log(log), topology=SimpleNamespace(task_names=TASKS))
    drawn = {name: spec.draw(result) for name, spec in TRAINING_FIGURES.items()}  # type: ignore[arg-type]
    assert set(drawn) == {"training_loss", "training_utilization", "training_entropy", "training_divergence"}
    for name, fig in drawn.items():
        assert fig is not None, name
        assert text_overlaps(fig) == [], name
    loss_ax = drawn["training_loss"].axes[0]
    assert len(loss_ax.lines[0].get_xdata()) == read_run_log(log)["step"].nunique()
    labels = [t.get_text() for t in drawn["training_utilization"].legends[0].get_texts()]
    assert any(t.startswith("step ") and "collapsed_gate" in t for t in labels)

    bad = Figure()
    ax = bad.subplots()
    ax.plot([0, 10], [0, 1], label="e0")
    ax.text(5, 0.5, "collapsed_gate (click)", ha="center", va="center")
    assert text_overlaps(bad) == ["'collapsed_gate (click)' covers line 'e0'"]
