"""Shared test setup: deterministic seeds, one torch thread (tiny models on 2 shared cores), Agg plots."""

from __future__ import annotations

import os

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
