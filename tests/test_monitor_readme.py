"""The README's "Gate health during training" examples run as printed (in a temporary folder) and do what
their comments say: the plain loop and the Lightning run both see the click gate collapse at step 20,
the Lightning run stops there, and its TensorBoard logger holds the gate scalars."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from mmoe_inspect.monitor import read_run_log

README = Path(__file__).parents[1] / "README.md"


def _examples() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Gate health during training") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


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
