"""Hostile inputs, round 5 (session 12's sweep): each broke a promise before its fix.

A pickle holding the string "mmoe-inspect/checkpoint" was taken for our checkpoint, so its refusal named only
torch's first complaint and hid `posix.system` (and a trusted whole module holding the string was refused);
duplicate feature names fed one column into two input slots; a sparse stored evaluation column crashed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from test_hostile_round2 import one_error_line, run  # the same CLI runner and one-line-error check
from test_hostile_round2b import rows, small_mmoe

from mmoe_inspect.checkpoint import FORMAT, save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt5") / "mmoe.pt", small_mmoe(), eval_frame=rows())


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data5") / "eval.parquet"
    rows().to_parquet(path)
    return path


def _edited(checkpoint: Path, target: Path, edit) -> Path:
    payload = torch.load(checkpoint, weights_only=True)
    edit(payload)
    torch.save(payload, target)
    return target


class _Executor:
    """Unpickles as a call of os.system (never unpickled here: the point is what the refusal names)."""

    def __reduce__(self):
        return (os.system, ("true",))


# ================================================================== 1: the refusal cannot lie
def test_the_format_string_does_not_change_the_refusal(tmp_path: Path) -> None:
    """With "mmoe-inspect/checkpoint" in the file, the refusal was torch's first unsupported global only."""
    lines = {}
    for folder, extra in (("plain", {}), ("format", {"format": FORMAT})):
        (tmp_path / folder).mkdir()
        torch.save({**extra, "model": small_mmoe(), "hook": _Executor()}, tmp_path / folder / "m.pt")
        lines[folder] = one_error_line(*run("summary", tmp_path / folder / "m.pt"))
    line = lines["format"]
    system = f"{os.system.__module__}.system"  # posix.system
    assert f"WARNING: {system} can load files" in line, line  # before the list, which the terminal cuts
    assert f"it would import {system}, mmoe_inspect.models.moe.MMoE" in line, line
    assert "not an mmoe-inspect checkpoint" not in line
    assert line == lines["plain"]  # the same refusal, string or not


def test_a_trusted_module_that_holds_the_format_string_loads(tmp_path: Path, data: Path) -> None:
    model = small_mmoe()
    model.comment = FORMAT  # an attribute that merely holds the string
    torch.save(model, tmp_path / "model.pt")
    code, text = run("summary", tmp_path / "model.pt", "--trust-checkpoint", "--data", data)
    assert code == 0, text
    assert "not an mmoe-inspect checkpoint" not in text


def test_a_training_dict_that_holds_the_format_string_loads_like_one(
    checkpoint: Path, tmp_path: Path, data: Path
) -> None:
    """A training dict holding the string (no format entry) was refused as "not an mmoe-inspect checkpoint"."""
    payload = torch.load(checkpoint, weights_only=True)
    torch.save(
        {"state_dict": payload["state_dict"], "model_config": payload["model_config"], "note": FORMAT},
        tmp_path / "train.pt",
    )
    code, text = run("summary", tmp_path / "train.pt", "--data", data)
    assert code == 0, text
