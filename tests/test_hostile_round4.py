"""Hostile inputs, round 4 (session 11's sweep): each broke a promise before its fix.

A model_config declaring 10**30 experts grew memory without bound while its size was being checked; a
bfloat16 stored evaluation column crashed; `--out .` replaced the caller's current directory; a private
folder's report was rebuilt in a world-readable temporary folder; a symbolic-link loop as `--out` crashed
after the whole pass; an infinite regression label was dropped as "missing"; a huge `--batch-size`
overflowed.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_hostile_round2 import one_error_line, run  # the same CLI runner and one-line-error check
from test_hostile_round2b import rows, small_mmoe

from mmoe_inspect.binding import read_labels
from mmoe_inspect.checkpoint import load_checkpoint, save_checkpoint
from mmoe_inspect.errors import CheckpointError
from mmoe_inspect.reports._replace import out_dir_problem, replace_folder
from mmoe_inspect.topology.spec import TaskSpec


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt4") / "mmoe.pt", small_mmoe(), eval_frame=rows())


def _edited(checkpoint: Path, target: Path, edit) -> Path:
    payload = torch.load(checkpoint, weights_only=True)
    edit(payload)
    torch.save(payload, target)
    return target


def test_an_absurd_expert_count_is_refused_before_anything_is_built(checkpoint: Path, tmp_path: Path) -> None:
    def huge(payload: dict) -> None:
        payload["model_config"]["params"]["n_experts"] = 10**30

    bomb = _edited(checkpoint, tmp_path / "bomb.pt", huge)
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"n_experts = a 31-digit number, over the 1024"):
        load_checkpoint(bomb)
    assert time.perf_counter() - started < 10  # refused at the door, not after building modules
    line = one_error_line(*run("summary", bomb))
    assert "n_experts" in line and "damaged" in line


def test_a_bfloat16_stored_column_loads_as_float32(checkpoint: Path, tmp_path: Path) -> None:
    def bf16(payload: dict) -> None:
        cols = payload["eval_sample"]["columns"]
        cols["x0"] = cols["x0"].to(torch.bfloat16)

    loaded = load_checkpoint(_edited(checkpoint, tmp_path / "bf16.pt", bf16))
    assert loaded.eval_frame is not None and loaded.eval_frame["x0"].dtype == np.float32
    expected = torch.tensor(rows()["x0"].to_numpy()).to(torch.bfloat16).float().numpy()
    assert np.array_equal(loaded.eval_frame["x0"].to_numpy(), expected)  # bfloat16 values, held exactly


def test_out_as_the_current_directory_is_refused_before_the_run(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    for out in (".", str(tmp_path)):  # the directory itself, or a folder holding it
        started = time.perf_counter()
        line = one_error_line(*run("report", checkpoint, "--out", out, "--force", "--no-causal"))
        assert "current directory" in line, line
        assert time.perf_counter() - started < 5  # before the pass
    assert (work / "notes.txt").read_text() == "mine" and Path.cwd() == work


def test_a_symlink_loop_as_out_is_refused_before_the_run(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    problem = out_dir_problem(tmp_path / "a")
    assert problem is not None and "cannot be resolved" in problem


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_a_private_folder_is_rebuilt_in_a_private_temporary_folder(tmp_path: Path) -> None:
    out = tmp_path / "private"
    out.mkdir(mode=0o700)
    os.chmod(out, 0o700)
    seen = {}

    def build(tmp: Path) -> None:
        seen["mode"] = stat.S_IMODE(tmp.stat().st_mode)
        (tmp / "marker.json").write_text('{"tool": "mmoe-inspect"}')

    replace_folder(out, build, force=True, marker="marker.json", legacy_entries=(), error=RuntimeError)
    assert seen["mode"] & 0o077 == 0, oct(seen["mode"])  # nobody else could read it while it was written
    assert stat.S_IMODE(out.stat().st_mode) == 0o700


def test_an_infinite_regression_label_is_refused_not_dropped() -> None:
    frame = pd.DataFrame({"spend": [1.0, np.inf, 2.0], "click": [0.0, 1.0, 0.0]})
    tasks = [TaskSpec("spend", "regression"), TaskSpec("click", "binary")]
    with pytest.raises(Exception, match=r"regression task 'spend' .* holds inf \(row 1\)"):
        read_labels(frame, tasks, "f.parquet")
    frame.loc[1, "spend"] = np.nan  # NaN is "missing"
    assert np.isnan(read_labels(frame, tasks, "f.parquet")[1, 0])


def test_a_label_almost_one_says_so() -> None:
    with pytest.raises(Exception, match=r"holds 1.000000000001 \(not exactly 1\)"):
        read_labels(pd.DataFrame({"click": [0.0, 1 + 1e-12]}), [TaskSpec("click")], "f")


def test_a_huge_batch_size_is_an_option_error(checkpoint: Path) -> None:
    code, text = run("summary", checkpoint, "--batch-size", "99999999999999999999")
    assert code == 2 and "16777216" in text and "Traceback" not in text


def test_diff_without_data_inspects_both_checkpoints_on_the_same_rows(tmp_path: Path) -> None:
    """Two checkpoints with the same weights but different stored rows: no difference may be reported."""
    a = save_checkpoint(tmp_path / "a.pt", small_mmoe(), eval_frame=rows(0))
    b = save_checkpoint(tmp_path / "b.pt", small_mmoe(), eval_frame=rows(1))
    code, text = run("diff", a, b)
    assert code == 0, text
    assert "both checkpoints are inspected on the rows stored in a.pt" in text
    auc = [ln for ln in text.splitlines() if "AUC click" in ln]
    assert auc and auc[0].rstrip().rstrip("│").rstrip().endswith("="), auc


def test_a_spec_that_leaves_out_the_gates_cannot_judge_the_routing(checkpoint: Path, tmp_path: Path) -> None:
    """A hand-written spec declaring no gates turned the MMoE into a Shared-Bottom that `check` passed."""
    spec = tmp_path / "spec.toml"
    assert run("topology", checkpoint, "--write", spec)[0] == 0
    text = spec.read_text(encoding="utf-8")
    spec.write_text(text[: text.index("[[gates]]")], encoding="utf-8")  # every gate removed
    code, out = run("check", checkpoint, "--spec", spec, "--fail-on", "never")
    assert code == 4, out
    assert "gates" in out and "declares no gate or expert there" in out


def test_a_spec_with_two_gates_on_one_tensor_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    assert run("topology", checkpoint, "--write", spec)[0] == 0
    spec.write_text(spec.read_text(encoding="utf-8").replace('module = "gates.1"', 'module = "gates.0"'))
    line = one_error_line(*run("check", checkpoint, "--spec", spec))
    assert "read the same tensor" in line


def test_a_run_writing_the_same_report_keeps_its_temporary_folder(tmp_path: Path) -> None:
    """Two reports into one --out at once: the second run removed the first's temporary folder as a
    leftover (the first then failed); a temporary folder whose run is alive is left alone, a dead run's is
    cleaned."""
    import subprocess
    import sys

    from mmoe_inspect.reports._replace import PARTIAL, clean_leftovers

    out = tmp_path / "report"
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        busy = tmp_path / ".report.tmp-aaaaaaaa"
        busy.mkdir()
        (busy / PARTIAL).write_text(f"{out}\npid {alive.pid}\n")
        (busy / "index.html").write_text("half")
        dead = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
        )
        gone = tmp_path / ".report.tmp-bbbbbbbb"
        gone.mkdir()
        (gone / PARTIAL).write_text(f"{out}\npid {int(dead.stdout)}\n")
        clean_leftovers(out)
        assert busy.is_dir() and (busy / "index.html").is_file()
        assert not gone.exists()
    finally:
        alive.kill()
        alive.wait()
