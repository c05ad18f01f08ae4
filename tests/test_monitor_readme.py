"""The README's "Gate health during training" examples run as printed (in a temporary folder) and do what
their comments say: the plain loop and the Lightning run both see the click gate collapse at step 20,
the Lightning run stops there, and its TensorBoard logger holds the gate scalars. The plain loop ends
with a saved checkpoint that the section's `mmoe-inspect report ... --run` line turns into a report
with a Training section (the monitor-to-report path, issue 16)."""

from __future__ import annotations

import re
import shlex
import warnings
from pathlib import Path

from typer.testing import CliRunner

from mmoe_inspect.cli.main import app
from mmoe_inspect.monitor import read_run_log

README = Path(__file__).parents[1] / "README.md"


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Gate health during training") :]
    return section[: section.index("\n## ", 1)]


def _examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", _section(), re.S)


def _report_line() -> list[str]:
    """The section's `mmoe-inspect report ...` command, as argv after the program name."""
    [block] = re.findall(r"```bash\n(.*?)```", _section(), re.S)
    [line] = [ln for ln in block.splitlines() if ln.startswith("mmoe-inspect report")]
    return shlex.split(line.split("#")[0])[1:]


def test_readme_monitor_examples_run_and_show_the_collapse(tmp_path, monkeypatch) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    blocks = _examples()
    assert len(blocks) == 3  # setup, plain PyTorch, Lightning
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)

    mon, monitor, trainer = namespace["mon"], namespace["monitor"], namespace["trainer"]
    assert mon.first_seen[("collapsed_gate", "click")] == 20
    run = read_run_log(tmp_path / "run_log.jsonl")
    assert len(run) == 4 * 2 and run["lr"].eq(0.5).all()  # 32 steps: windows at 10, 20, 30 and 32
    finding, step = monitor.stopped_by
    assert finding.code == "collapsed_gate" and step == 20 == trainer.global_step
    lit = read_run_log(tmp_path / "lit_run_log.jsonl")
    assert lit["step"].max() == 20
    [log_dir] = (tmp_path / "runs" / "lightning_logs").iterdir()
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    assert {"gates/click/max_utilization", "gates/purchase/entropy"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("gates/click/max_utilization")] == [10, 20]

    # the plain loop saved a checkpoint; the README's report line takes it with the run log
    args = _report_line()
    assert args[:2] == ["report", "mmoe.pt"] and "--run" in args
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = tmp_path / "mmoe-report-mmoe"  # the README's comment: named after the checkpoint
    html = (report / "index.html").read_text(encoding="utf-8")
    assert 'id="training"' in html and "No training run log" not in html
    assert (report / "figures" / "training_loss.png").is_file()  # loss was logged, so it is plotted
