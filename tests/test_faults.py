"""Faults mid-run: the model comes back exactly as found, and the report folder is whole or untouched.

Part 1 injects a fault into every pass that runs the model (recording through `inspect`, with a
declared and with a discovered topology, the causal analyses, the attributions): a module that raises
on its k-th call, a user's own forward hook that raises on its k-th call, and a data batch whose
input function raises on batch k (k = mid-way through the pass, counted on a clean run first).
Parameters and buffers (hashes, BatchNorm running statistics included), `.grad`, `requires_grad`,
every module's training flag, every hook dict (ours gone, the user's kept) and torch's global hooks
and grad mode are compared before and after.

Part 2 interrupts report writing: SIGINT, SIGTERM and SIGHUP to a real `mmoe-inspect report` process
(mid-inspection and mid-figure), a full disk (ENOSPC after half a file), an I/O error in the final rename (whole folder
and `--force` into a folder holding user files), a refused temp folder, and a foreign folder without `--force`.
Each leaves the previous report byte for byte, or nothing, and no temp folder beside it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from mmoe_inspect import FeatureSpec, inspect
from mmoe_inspect.attribution import run_attribution
from mmoe_inspect.causal import run_causal
from mmoe_inspect.checkpoint import save_checkpoint
from mmoe_inspect.cli.main import app
from mmoe_inspect.inspector import InspectConfig
from mmoe_inspect.models import MMoE
from mmoe_inspect.reports import ReportError, write_report
from mmoe_inspect.reports import _replace as report_replace
from mmoe_inspect.testing.planted import PlantedMMoE

N_FEATURES = 6
COLS = [f"x{i}" for i in range(N_FEATURES)]
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# =========================================================================== part 1: model untouched
def fingerprint(model: nn.Module) -> dict[str, Any]:
    """Everything inspection could change: values, grads, flags, modes, hooks (per module and global)."""
    h = hashlib.sha256()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(f"{name}:{t.requires_grad}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    hook_dicts = (
        "_forward_hooks",
        "_forward_pre_hooks",
        "_backward_hooks",
        "_backward_pre_hooks",
        "_state_dict_hooks",
        "_load_state_dict_pre_hooks",
    )
    g = torch.nn.modules.module
    return {
        "values": h.hexdigest(),
        "grads": {
            n: None if p.grad is None else hashlib.sha256(p.grad.numpy().tobytes()).hexdigest()
            for n, p in model.named_parameters()
        },
        "modes": [(n, m.training) for n, m in model.named_modules()],
        "hooks": [(n, [len(getattr(m, d)) for d in hook_dicts]) for n, m in model.named_modules()],
        "global_hooks": [
            len(g._global_forward_hooks),
            len(g._global_forward_pre_hooks),
            len(g._global_backward_hooks),
            len(g._global_backward_pre_hooks),
        ],
        "grad_mode": (torch.is_grad_enabled(), torch.is_inference_mode_enabled()),
    }


class Undeclared(nn.Module):
    """The planted MMoE without its `topology()`: inspection must discover the gates."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


class RaiseOnCall(nn.Module):
    """Runs `inner` but raises on its `k`-th call (`k = 0`: never; counts calls either way)."""

    def __init__(self, inner: nn.Module, k: int = 0) -> None:
        super().__init__()
        self.inner, self.k, self.calls = inner, k, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.k:
            raise RuntimeError(f"injected fault: module call {self.calls}")
        return self.inner(x)


def messy_model() -> PlantedMMoE:
    """A half-trained user's model: train mode with one gate in eval, a BatchNorm in train mode (its
    running statistics move on any train-mode forward), gradients on some parameters, a frozen tower."""
    model = PlantedMMoE(N_FEATURES, n_experts=4, gate_modes={"ctr": "specialized"}, seed=3)
    model.experts[0] = nn.Sequential(nn.BatchNorm1d(N_FEATURES), model.experts[0])
    x = torch.randn(64, N_FEATURES)
    model.train()
    model(x).sum().backward()
    model.gates["cvr"].eval()
    for p in model.towers[0].parameters():
        p.requires_grad_(False)
    for i, p in enumerate(model.parameters()):
        if i % 3 == 0:
            p.grad = None
    return model


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, N_FEATURES)).astype("float32")
    df = pd.DataFrame(x, columns=COLS)
    df["ctr"] = (x[:, 0] > 0.3).astype("float32")
    df["cvr"] = (rng.random(600) < 0.2).astype("float32")
    return df


def dense(frame: pd.DataFrame) -> torch.Tensor:
    return torch.from_numpy(frame[COLS].to_numpy(np.float32, copy=True))


PASSES: dict[str, Callable[[nn.Module, pd.DataFrame, Callable], object]] = {
    "inspect": lambda m, df, fn: inspect(
        m, df, input_fn=fn, columns=COLS, config=InspectConfig(batch_size=100)
    ),
    "inspect-discovered": lambda m, df, fn: inspect(
        Undeclared(m),
        df,
        input_fn=fn,
        columns=COLS,
        tasks=["ctr", "cvr"],
        config=InspectConfig(batch_size=100),
    ),
    "causal": lambda m, df, fn: run_causal(m, df, input_fn=fn, columns=COLS, batch_size=150, n_boot=0),
    "attribution": lambda m, df, fn: run_attribution(
        m, df, input_fn=fn, features=COLS, sample_rows=24, n_steps=4, budget_seconds=None
    ),
}
FAULTS = ("module-raises", "user-hook-raises", "batch-raises")


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("pass_name", list(PASSES))
def test_model_untouched_when_a_fault_hits_mid_pass(pass_name: str, fault: str, rows: pd.DataFrame) -> None:
    run = PASSES[pass_name]
    model = messy_model()
    model.towers[1] = RaiseOnCall(model.towers[1])  # counts calls on the clean run
    batches = {"n": 0}

    def counting_input(frame: pd.DataFrame) -> torch.Tensor:
        batches["n"] += 1
        return dense(frame)

    hook_calls = {"n": 0}

    def user_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:  # the user's own hook
        hook_calls["n"] += 1
        if hook_calls["n"] == hook_calls.get("raise_at"):
            raise RuntimeError(f"injected fault: hook call {hook_calls['n']}")

    handle = model.experts[2].register_forward_hook(user_hook)
    try:
        before = fingerprint(model)
        run(model, rows, counting_input)  # clean run: nothing changes, and the calls are counted
        assert fingerprint(model) == before
        module_calls, n_batches, n_hooks = model.towers[1].calls, batches["n"], hook_calls["n"]
        assert module_calls >= 3 and n_hooks >= 3 and n_batches >= 1

        batches["n"] = hook_calls["n"] = model.towers[1].calls = 0
        if fault == "module-raises":
            model.towers[1].k = 3
        elif fault == "user-hook-raises":
            hook_calls["raise_at"] = 3
        raise_at = max(1, (n_batches + 1) // 2)

        def faulty_input(frame: pd.DataFrame) -> torch.Tensor:
            batches["n"] += 1
            if fault == "batch-raises" and batches["n"] == raise_at:
                raise RuntimeError(f"injected fault: batch {batches['n']}")
            return dense(frame)

        with pytest.raises(Exception, match="injected fault") as err:
            run(model, rows, faulty_input)
        assert "injected fault" in str(err.value)
        assert fingerprint(model) == before  # the user's hook is still there; ours are gone
    finally:
        handle.remove()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# =========================================================================== part 2: reports
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small reference MMoE checkpoint with its evaluation rows (`report CKPT` needs nothing else)."""
    root = tmp_path_factory.mktemp("ckpt")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({c: rng.normal(size=400).astype("float32") for c in COLS[:3]})
    frame["click"] = rng.integers(0, 2, 400).astype("float32")
    frame["buy"] = rng.integers(0, 2, 400).astype("float32")
    torch.manual_seed(0)
    model = MMoE(
        FeatureSpec.dense_only(3), ["click", "buy"], n_experts=3, expert_hidden=(8,), tower_hidden=(4,)
    )
    return save_checkpoint(root / "mmoe.pt", model, eval_frame=frame)


REPORT_ARGS = ["--no-causal", "--no-attributions", "--quiet"]


@pytest.fixture(scope="module")
def previous(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished report, copied as the "previous report" each test tries to replace."""
    out = tmp_path_factory.mktemp("previous") / "report"
    result = CliRunner().invoke(app, ["report", str(checkpoint), "--out", str(out), *REPORT_ARGS])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def inspected(checkpoint: Path):
    """The checkpoint's inspection, written by the tests that call `write_report` themselves."""
    from mmoe_inspect.loading import load_model

    return load_model(checkpoint).inspect()


def tree(folder: Path) -> dict[str, str]:
    """Relative path → sha256 of every file under `folder` (what "intact" means, byte for byte)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def copy_of(previous: Path, parent: Path) -> Path:
    import shutil

    out = parent / "report"
    shutil.copytree(previous, out)
    return out


def assert_nothing_beside(parent: Path, *names: str) -> None:
    assert sorted(p.name for p in parent.iterdir()) == sorted(names)  # no .report.tmp-* / .report.old-*


# A real `mmoe-inspect report` process; `stage` says where it parks (and writes READY) to be interrupted.
# Ctrl-C raises KeyboardInterrupt as in a terminal, also when the suite runs as a background job (a
# non-interactive shell starts background jobs with SIGINT ignored, and children inherit that).
INTERRUPTED_RUN = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
from dataclasses import replace
from pathlib import Path

stage, ready = sys.argv[1], Path(sys.argv[2])

def park():
    ready.write_text("ready")
    time.sleep(60)

if stage == "figures":
    from mmoe_inspect.reports.figures import FIGURES
    draw = FIGURES["coactivation"].draw
    FIGURES["coactivation"] = replace(FIGURES["coactivation"], draw=lambda r: (park(), draw(r))[1])
else:
    import mmoe_inspect.routing_pass as insp
    forward, calls = insp.forward, []
    def slow_forward(*a):
        calls.append(1)
        if len(calls) == 2:
            park()
        return forward(*a)
    insp.forward = slow_forward

from mmoe_inspect.cli.main import app
sys.argv = ["mmoe-inspect", *sys.argv[3:]]
app()
"""


@pytest.mark.parametrize(
    ("stage", "sig"),
    [
        ("inspection", signal.SIGINT),
        ("figures", signal.SIGINT),
        ("figures", signal.SIGTERM),  # `timeout`, a CI cancel, `docker stop`: left a half report before
        ("inspection", signal.SIGHUP),  # the terminal closed
    ],
)
def test_a_signal_mid_run_leaves_the_previous_report(
    stage: str, sig: signal.Signals, checkpoint: Path, previous: Path, tmp_path: Path
) -> None:
    out = copy_of(previous, tmp_path)
    before = tree(out)
    ready = tmp_path.parent / f"ready-{stage}-{os.getpid()}"
    ready.unlink(missing_ok=True)
    args = ["report", str(checkpoint), "--out", str(out), "--batch-size", "100", *REPORT_ARGS]
    proc = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_RUN, stage, str(ready), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MPLBACKEND": "Agg", "COLUMNS": "200"},
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never reached its parking point"
            time.sleep(0.05)
        temps = [p.name for p in tmp_path.iterdir() if p.name.startswith(".report.tmp-")]
        assert (
            temps if stage == "figures" else not temps
        )  # mid-write: half a report exists, in the temp folder
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        ready.unlink(missing_ok=True)
    if sig == signal.SIGINT:
        assert proc.returncode == 130, stderr
        assert "interrupted" in ANSI.sub("", stderr) and "Traceback" not in stderr
    else:
        assert proc.returncode == 128 + sig, stderr
        assert f"terminated ({sig.name})" in ANSI.sub("", stderr) and "Traceback" not in stderr
    assert tree(out) == before
    assert_nothing_beside(tmp_path, "report")


def test_disk_full_mid_file_leaves_the_previous_report(
    inspected, previous: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = inspected
    out = copy_of(previous, tmp_path)
    before = tree(out)
    real_write_text = Path.write_text

    def full_disk(self: Path, data: str, *args, **kwargs) -> int:
        if self.name == "index.html":  # the last big file: half of it lands, then the disk is full
            real_write_text(self, data[: len(data) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_text(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(ReportError, match="No space left on device"):
        write_report(result, out)
    assert tree(out) == before
    assert_nothing_beside(tmp_path, "report")


@pytest.mark.parametrize("how", ["exchange", "two-renames"])
def test_io_error_in_the_final_rename_restores_the_previous_report(
    how: str, inspected, previous: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The final swap fails (the atomic exchange, or the second rename where exchange is missing)."""
    result = inspected
    out = copy_of(previous, tmp_path)
    before = tree(out)
    real_replace, calls = os.replace, []

    def failing_exchange(a, b) -> bool:
        if how == "two-renames":
            return False
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(b))

    def flaky_replace(src, dst) -> None:
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(report_replace, "exchange", failing_exchange)
    monkeypatch.setattr(report_replace.os, "replace", flaky_replace)
    with pytest.raises(ReportError, match=r"Input/output error\); what was there before is unchanged"):
        write_report(result, out)
    assert tree(out) == before
    assert_nothing_beside(tmp_path, "report")


def test_io_error_while_keeping_the_users_files_changes_nothing(
    inspected, previous: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report folder holding user files: linking them into the new folder fails half-way; nothing changes."""
    result = inspected
    out = copy_of(previous, tmp_path)
    for name in ("notes.txt", "more.txt", "last.txt"):
        (out / name).write_text("the user's", encoding="utf-8")  # now a report with user files in it
    before = tree(out)
    real_link, linked = os.link, []

    def flaky_link(src, dst) -> None:
        linked.append(dst)
        if len(linked) == 2:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
        real_link(src, dst)

    monkeypatch.setattr(report_replace.os, "link", flaky_link)
    with pytest.raises(ReportError, match=r"Input/output error"):
        write_report(result, out, force=True)
    assert len(linked) == 2
    assert tree(out) == before
    assert_nothing_beside(tmp_path, "report")


def test_refused_temp_folder_is_one_line_and_touches_nothing(
    checkpoint: Path, previous: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only parent folder (simulated: the tests run as root, which ignores permission bits)."""
    out = copy_of(previous, tmp_path)
    before = tree(out)
    real_mkdir = Path.mkdir

    def read_only(self: Path, *args, **kwargs) -> None:
        if self.parent == tmp_path:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    result = CliRunner().invoke(app, ["report", str(checkpoint), "--out", str(out), *REPORT_ARGS])
    text = ANSI.sub("", result.output)
    assert result.exit_code == 2, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Permission denied" in lines[0] and "Traceback" not in text
    assert tree(out) == before
    assert_nothing_beside(tmp_path, "report")


def test_foreign_folder_needs_force_on_the_command_line(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "data.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    before = tree(out)
    result = CliRunner().invoke(app, ["report", str(checkpoint), "--out", str(out), *REPORT_ARGS])
    text = ANSI.sub("", result.output)
    assert result.exit_code == 2 and "--force" in text and "Traceback" not in text, text
    assert tree(out) == before
    assert_nothing_beside(tmp_path, "mine")
    result = CliRunner().invoke(app, ["report", str(checkpoint), "--out", str(out), "--force", *REPORT_ARGS])
    assert result.exit_code == 0, result.output
    assert (out / "data.csv").read_text(encoding="utf-8") == "a,b\n1,2\n"
    assert (out / "index.html").is_file()
    assert_nothing_beside(tmp_path, "mine")
