"""Hostile inputs, round 5b (session 12's FINDINGS items 4, 5, 6, 7, 10, 11), each a named test.

Items: 7 a label column only some files of a parquet folder have, 10 a spec that contradicts the model,
6 a monitor log path that is not a run log, 5 a run log of another model, 4 huge segment labels,
11 AUC spill folders of killed runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

import mmoe_inspect
from mmoe_inspect import FeatureSpec, inspect
from mmoe_inspect._text import LABEL_CHARS
from mmoe_inspect.causal.segments import SegmentRouting
from mmoe_inspect.causal.streamed import spill_prefix
from mmoe_inspect.checkpoint import save_checkpoint
from mmoe_inspect.cli.main import app
from mmoe_inspect.data.sources import MissingColumnError, TableSource
from mmoe_inspect.models import MMoE
from mmoe_inspect.monitor import GateMonitor
from mmoe_inspect.recording.recorder import RecordingError
from mmoe_inspect.topology.spec import TopologyError

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


# =========================================================================== 10: a spec that contradicts the model
def test_gate_declared_logits_whose_rows_are_probabilities_is_refused() -> None:
    model = small_mmoe()
    topo = model.topology()
    wrong = replace(topo, gates=(replace(topo.gates[0], output="logits"), *topo.gates[1:]))
    with pytest.raises(
        RecordingError, match=r"gate 'click' \(gates\.0\) is declared output = \"logits\".*\"probs\""
    ):
        inspect(model, rows(), topology=wrong)
    inspect(model, rows(), topology=topo)  # the same gates declared as probabilities are recorded


def test_two_tasks_reading_one_output_are_refused() -> None:
    topo = small_mmoe().topology()
    with pytest.raises(TopologyError, match=r"tasks 'click' and 'buy' both read the model output 'buy'"):
        replace(topo, tasks=(replace(topo.tasks[0], output="buy"), *topo.tasks[1:]))
    with pytest.raises(TopologyError, match=r"both read the model output 'click'"):  # left out: read by name
        replace(topo, tasks=(replace(topo.tasks[0], output=None), replace(topo.tasks[1], output="click")))


def test_two_gates_serving_one_task_while_another_has_none_are_refused() -> None:
    topo = small_mmoe().topology()
    with pytest.raises(
        TopologyError, match=r"gates \['click', 'buy'\] all serve task 'click' at level 0.*\['buy'\]"
    ):
        replace(topo, gates=(topo.gates[0], replace(topo.gates[1], task="click")))


def test_one_module_declared_gate_and_expert_is_refused() -> None:
    topo = small_mmoe().topology()
    with pytest.raises(
        TopologyError, match=r"module 'gates\.1' is declared both as gate 'buy' and as expert 'e2'"
    ):
        replace(topo, experts=(*topo.experts[:2], replace(topo.experts[2], module="gates.1")))


# =========================================================================== 6: a monitor log path that is no run log
def test_monitor_never_rewrites_a_file_that_is_not_its_run_log(tmp_path: Path) -> None:
    model = small_mmoe()
    user = tmp_path / "eval.parquet"
    rows().to_parquet(user)
    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"user": 1}\n')
    before = {p: p.read_bytes() for p in (user, notes)}
    for path in (user, notes):
        with pytest.raises(
            ValueError, match=r"exists and is not a GateMonitor run log.*never changes another file"
        ):
            GateMonitor(model, every=2, log_path=path).open()
    assert {p: p.read_bytes() for p in (user, notes)} == before
    assert all(not m._forward_hooks for m in model.modules())
    # a run log this tool wrote (marker in the parquet schema) is resumed; so is one written before the marker
    log = tmp_path / "run.parquet"
    model.train()
    with GateMonitor(model, every=2, log_path=log) as mon:
        for _ in range(2):
            model(torch.randn(64, 3))
            mon.step()
    assert pq.read_schema(log).metadata[b"mmoe-inspect"] == b"run-log"
    pd.read_parquet(log).to_parquet(tmp_path / "old.parquet")  # pandas drops our marker
    for path in (log, tmp_path / "old.parquet"):
        GateMonitor(model, every=2, log_path=path).open().close()


# =========================================================================== 5: a run log of another model
def _run_log(gates: list[str], windows: int = 2) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "step": 10 * (w + 1),
                "gate": g,
                "task": "",
                "w_e0": 0.5,
                "w_e1": 0.5,
                "findings": "[]",
                "loss": 0.5,
            }
            for w in range(windows)
            for g in gates
        ]
    )


def test_run_log_gates_the_model_lacks_are_said_and_not_drawn(tmp_path: Path) -> None:
    ckpt = save_checkpoint(tmp_path / "m.pt", small_mmoe(), eval_frame=rows())
    mixed, foreign = tmp_path / "mixed.parquet", tmp_path / "foreign.parquet"
    _run_log(["click", "buy", *(f"g{i}" for i in range(40))]).to_parquet(mixed)
    _run_log([f"g{i}" for i in range(400)]).to_parquet(foreign)
    for log, kept, words in (
        (mixed, {"click", "buy"}, "names 40 gate(s) the model does not have ('g0', 'g1'"),
        (foreign, {f"g{i}" for i in range(9)}, "none of the run log's 400 gate(s)"),
    ):
        out = tmp_path / log.stem
        result = CliRunner().invoke(
            app,
            [
                str(a)
                for a in ("report", ckpt, "--out", out, "--run", log, "--no-causal", "--no-attributions")
            ],
        )
        assert result.exit_code == 0, result.output
        text = " ".join(result.output.split())
        assert f"warning: --run: the run log {words}" in text or f"warning: --run: {words}" in text, text
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        assert {r["gate"] for r in metrics["training"]["run_log"]} == kept
        assert words in metrics["meta"]["training_note"]
        html = (out / "index.html").read_text(encoding="utf-8")
        section = html[html.index('id="training"') :]
        assert "The run log does not match this model" in section[: section.index("</section>")]
    assert "another model" in metrics["meta"]["training_note"] and "first 9 of them are drawn" in text


# =========================================================================== 4: huge segment labels
_READ_SEGMENTS = """
import resource, sys
from mmoe_inspect.data.sources import TableSource
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
values = set()
for chunk in TableSource.of(sys.argv[1]).iter_frames(1000, ["seg", "x0"]):
    values.update(chunk["seg"])
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(len(values), max(map(len, values)), grown // 1024)
"""


def test_huge_segment_values_are_capped_when_read(tmp_path: Path) -> None:
    frame = rows(n=300)
    frame["seg"] = ["A" * 1_000_000 + str(i % 3) for i in range(len(frame))]  # 300 MB decoded, tiny on disk
    path = tmp_path / "data.parquet"
    frame.to_parquet(path)
    assert path.stat().st_size < 10_000_000
    env = {**os.environ, "PYTHONPATH": str(Path(mmoe_inspect.__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", _READ_SEGMENTS, str(path)], capture_output=True, text=True, env=env, check=True
    )
    distinct, longest, grown_mb = map(int, done.stdout.split())
    assert distinct == 3 and longest == LABEL_CHARS  # distinct values stay distinct (hash suffix)
    assert grown_mb < 100, grown_mb  # was > 300 MB: every row decoded its own 1 MB string
    # a DataFrame (or CSV) source: the segment table names each segment in at most LABEL_CHARS characters
    seg = SegmentRouting("seg", small_mmoe().topology().gates)
    probs = torch.full((len(frame), 3), 1 / 3)
    seg.update(frame["seg"], {"click": probs, "buy": probs})
    labels = set(seg.table()["segment"])
    assert len(labels) == 3 and all(len(s) == LABEL_CHARS and "…#" in s for s in labels)


# =========================================================================== 11: AUC spills of killed runs
def test_a_later_run_removes_the_auc_spill_of_a_killed_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # TMPDIR of this run
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid names no process now
    mine = spill_prefix()
    assert mine.startswith("mmoe-inspect-auc-") and mine.endswith(f"-{os.getpid()}-")
    host = mine[: -len(f"{os.getpid()}-")]
    stale = tmp_path / f"{host}{dead.pid}-abcd_123"
    live = tmp_path / f"{host}{os.getppid()}-abcd_123"  # a live process's spill
    for folder in (stale, live, tmp_path / "mmoe-inspect-auc-x1y2z3w4", tmp_path / "target"):
        folder.mkdir()
        (folder / "0.f32").write_bytes(b"\0" * 64)
    (tmp_path / f"{host}{dead.pid}-link_123").symlink_to(tmp_path / "target")  # a link is never followed
    (tmp_path / f"{host}{dead.pid}-file_123").write_bytes(b"user")
    result = inspect(small_mmoe(), rows(), causal={"n_boot": 0})
    assert result.causal is not None
    left = sorted(p.name for p in tmp_path.iterdir())
    assert stale.name not in left and live.name in left
    assert {
        "mmoe-inspect-auc-x1y2z3w4",
        "target",
        f"{host}{dead.pid}-link_123",
        f"{host}{dead.pid}-file_123",
    } <= set(left)
    assert (tmp_path / "target" / "0.f32").exists()
    assert not [n for n in left if n.startswith(mine)]  # this run's own spill is gone after it
