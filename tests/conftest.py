"""Shared test setup: deterministic seeds, one torch thread (tiny models on 2 shared cores), Agg plots,
and the demo trained once per session (`demo_dir`)."""

from __future__ import annotations

import os
import re
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TERMINAL_WIDTH", "200")
os.environ.setdefault("_TYPER_FORCE_DISABLE_TERMINAL", "1")

import pytest
import torch
from hypothesis import settings

torch.set_num_threads(1)

# CI draws the same property-test examples on every run (a landing never hangs on a fresh draw);
# local runs draw new ones, so the fuzz tests keep finding what they have not seen.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    torch.manual_seed(0)


DEMO_ROWS = 5000  # trains in seconds; its 20% eval split is the 1000 rows the tests count
DEMO_ARGS = ("demo", "--rows", str(DEMO_ROWS), "--monitor")  # seed 0 (the default)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`mmoe-inspect demo --rows 5000 --monitor` run once for the whole session, through the CLI: the four
    architectures and the purchase-only model trained on seed 0, the MMoE under a GateMonitor
    (`run_log.jsonl` and the report's Training section), the report with its causal and attribution
    sections in `report/`, and the command's terminal output in `demo-output.txt`.

    Shared by every test that needs the trained demo (test_cli, test_report_browser,
    test_training_section, test_golden): read it, never write into it (write under `tmp_path`)."""
    from typer.testing import CliRunner

    from mmoe_inspect.cli.main import app

    out = tmp_path_factory.mktemp("demo")
    torch.manual_seed(0)  # the autouse seed is function-scoped; the demo seeds itself, this keeps it so
    result = CliRunner().invoke(app, [*DEMO_ARGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.exception is None
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", result.output)
    (out / "demo-output.txt").write_text(text, encoding="utf-8")
    return out
