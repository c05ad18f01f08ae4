"""Hostile inputs, round 5 (session 12's sweep): each broke a promise before its fix.

A pickle holding the string "mmoe-inspect/checkpoint" was taken for our checkpoint, so its refusal named only
torch's first complaint and hid `posix.system` (and a trusted whole module holding the string was refused);
duplicate feature names fed one column into two input slots; a sparse stored evaluation column crashed;
`LOCAL_RANK=abc` and Ctrl-C while the commands were imported gave tracebacks; `diff` printed -0.000, a
timestamp label was read as milliseconds, and 1e300 in a CSV feature printed numpy's overflow warning.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_hostile_round2 import one_error_line, run  # the same CLI runner and one-line-error check
from test_hostile_round2b import rows, small_mmoe

from mmoe_inspect.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from mmoe_inspect.data.schema import CategoricalFeature, FeatureSpec
from mmoe_inspect.errors import CheckpointError


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


# ================================================================== 2: duplicate feature names
def test_a_checkpoint_naming_a_feature_twice_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    """`summary` fed x0 into x1's slot without a word; `report` ended in an internal error."""

    def twice(payload: dict) -> None:
        payload["model_config"]["features"]["dense"][1] = "x0"
        payload["features"]["dense"][1] = "x0"

    bad = _edited(checkpoint, tmp_path / "twice.pt", twice)
    with pytest.raises(CheckpointError, match=r"feature 'x0' is named twice"):
        load_checkpoint(bad)
    for command in ("summary", "check"):
        line = one_error_line(*run(command, bad))
        assert "'x0' is named twice" in line, line
    line = one_error_line(*run("report", bad, "--out", tmp_path / "out", "--no-causal"))
    assert "'x0' is named twice" in line and not (tmp_path / "out").exists()


def test_a_feature_named_twice_across_dense_and_categorical_is_refused() -> None:
    with pytest.raises(ValueError, match=r"feature 'x1' is named twice"):
        FeatureSpec(dense=("x0", "x1"), categorical=(CategoricalFeature("x1", 4),))


def test_features_named_twice_on_the_command_line_are_refused(checkpoint: Path, data: Path) -> None:
    line = one_error_line(*run("summary", checkpoint, "--data", data, "--features", "x0,x1,x0"))
    assert "x0" in line and "more than once" in line, line


# ================================================================== 3: sparse tensors
def test_a_sparse_stored_column_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    """A sparse COO column with an index far outside its size loaded, then crashed converting to numpy."""

    def sparse(payload: dict) -> None:
        cols = payload["eval_sample"]["columns"]
        n = cols["x0"].shape[0]
        cols["x0"] = torch.sparse_coo_tensor(
            torch.tensor([[0, 50_000_000]]), torch.tensor([1.0, 2.0]), (n,), check_invariants=False
        )

    bad = _edited(checkpoint, tmp_path / "sparse.pt", sparse)
    with pytest.raises(CheckpointError, match=r"columns\['x0'\] is a sparse_coo tensor"):
        load_checkpoint(bad)
    line = one_error_line(*run("report", bad, "--out", tmp_path / "out", "--no-causal", "--no-attributions"))
    assert "sparse_coo" in line and not (tmp_path / "out").exists()


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support")
def test_a_sparse_weight_is_refused_at_the_door(checkpoint: Path, tmp_path: Path) -> None:
    def sparse(payload: dict) -> None:
        key = next(k for k, v in payload["state_dict"].items() if v.dim() == 2)
        payload["state_dict"][key] = payload["state_dict"][key].to_sparse_csr()

    line = one_error_line(*run("summary", _edited(checkpoint, tmp_path / "csr.pt", sparse)))
    assert "sparse_csr tensor" in line, line


# ================================================================== 4, 5: the entry point's imports
def _entry(args: list[str], env: dict[str, str], prelude: str = "") -> subprocess.CompletedProcess:
    """`mmoe-inspect ARGS` as the console script runs it (`from mmoe_inspect.cli.main import main`)."""
    code = f"{prelude}\nimport sys\nsys.argv = ['mmoe-inspect', *{args!r}]\nfrom mmoe_inspect.cli.main import main\nmain()"
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, **env},
    )


def test_a_local_rank_that_is_no_number_is_one_line(checkpoint: Path) -> None:
    """torchmetrics reads int(LOCAL_RANK) when imported: a 48-line traceback and exit 1 for every command."""
    done = _entry(["summary", str(checkpoint)], {"LOCAL_RANK": "abc"})
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "error: LOCAL_RANK='abc' in the environment is not a whole number (torchrun sets it to the process's "
        "rank on its machine); unset it, or set it to 0 for a single process"
    ]


# A real SIGINT, sent while the commands' imports run (when torchmetrics is about to be imported).
_CTRL_C_WHILE_IMPORTING = """
import os, signal, sys
# a process started in the background by a non-interactive shell inherits SIGINT ignored (and Python then
# installs no KeyboardInterrupt handler): restore Python's, as in a terminal
signal.signal(signal.SIGINT, signal.default_int_handler)

class _CtrlC:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "torchmetrics":
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, _CtrlC)
"""


def test_ctrl_c_while_the_commands_are_imported_is_one_line(checkpoint: Path) -> None:
    done = _entry(["summary", str(checkpoint)], {}, prelude=_CTRL_C_WHILE_IMPORTING)
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == ["interrupted; nothing was written"]


# ================================================================== 6: small messages
def test_diff_never_prints_a_signed_zero(tmp_path: Path) -> None:
    """Sharper gates (weights x 1.0005) change effective experts by under 0.0005: printed as -0.000."""
    a = save_checkpoint(tmp_path / "a.pt", small_mmoe(), eval_frame=rows())
    sharper = small_mmoe()
    with torch.no_grad():
        for name, p in sharper.named_parameters():
            if name.startswith("gates"):
                p.mul_(1.0005)
    b = save_checkpoint(tmp_path / "b.pt", sharper, eval_frame=rows())
    code, text = run("diff", a, b, "--quiet")
    assert code == 0, text
    assert "-0.000" not in text and "+0.000" not in text, text
    effective = [ln for ln in text.splitlines() if "effective experts" in ln and "click" in ln]
    assert effective and effective[0].rstrip(" │").endswith("0.000"), text


def test_a_timestamp_label_column_is_refused_as_not_numeric(checkpoint: Path, tmp_path: Path) -> None:
    """A timestamp label holding 1970-01-01 00:00:01 was reported as "holds 1000" (its milliseconds)."""
    frame = rows()
    frame["click"] = pd.to_datetime(frame["click"].astype("int64"), unit="s").astype("datetime64[ms]")
    frame.to_parquet(tmp_path / "eval.parquet")
    line = one_error_line(*run("summary", checkpoint, "--data", tmp_path / "eval.parquet"))
    assert "label column 'click'" in line and "timestamps (dtype datetime64[ms])" in line, line
    assert "holds 1000" not in line


def test_a_float64_feature_beyond_float32_is_one_line_without_numpy_warnings(
    checkpoint: Path, tmp_path: Path
) -> None:
    """The causal pre-pass cast 1e300 to float32 first: numpy's "overflow encountered in cast" on stderr."""
    frame = rows()
    frame["x0"] = frame["x0"].astype(np.float64)
    frame.loc[300, "x0"] = 1e300
    frame.to_csv(tmp_path / "eval.csv", index=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = one_error_line(
            *run("report", checkpoint, "--data", tmp_path / "eval.csv", "--out", tmp_path / "o")
        )
    assert "'x0'" in line and "beyond float32's range" in line and "row 300: 1e+300" in line, line
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in caught]
    assert not (tmp_path / "o").exists()


def test_a_valid_sparse_buffer_in_a_state_dict_is_kept_and_a_malformed_one_refused(tmp_path: Path) -> None:
    """A graph model's sparse adjacency buffer is its own state: refusing it left no way to load the model
    (a dense copy does not load into a sparse buffer). Its indices are checked against its size instead."""
    from mmoe_inspect.loading._payload import check_tensors

    path = tmp_path / "sd.pt"
    path.write_bytes(b"x")
    adj = torch.sparse_coo_tensor(torch.tensor([[0, 1, 3], [1, 2, 0]]), torch.ones(3), (4, 4))
    check_tensors({"adj": adj, "w": torch.ones(2)}, "state_dict", path)  # kept
    bad = torch.sparse_coo_tensor(
        torch.tensor([[0, 50_000_000], [1, 2]]), torch.ones(2), (4, 4), check_invariants=False
    )
    with pytest.raises(CheckpointError, match=r"state_dict\['adj'\] is a malformed sparse tensor"):
        check_tensors({"adj": bad}, "state_dict", path)
    with pytest.raises(CheckpointError, match=r"is a sparse_coo tensor; only dense"):
        check_tensors({"x0": adj}, "eval_sample columns", path)


def test_a_model_with_a_sparse_buffer_binds_and_is_fingerprinted() -> None:
    """The trial forwards compared buffers with torch.equal, which sparse tensors refuse: the model's inputs
    were "not understood" (exit 2) although only the restore check failed."""
    from torch import nn

    from mmoe_inspect.loading import bind_inputs
    from mmoe_inspect.recording.fingerprint import changed_tensors, fingerprint

    class Graph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            idx = torch.tensor([[0, 1, 2], [1, 2, 0]])
            self.register_buffer("adj", torch.sparse_coo_tensor(idx, torch.ones(3), (3, 3)).coalesce())
            self.lin = nn.Linear(3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.lin(torch.sparse.mm(self.adj, x.T).T)).squeeze(-1)

    model = Graph().eval()
    df = pd.DataFrame(np.random.default_rng(0).normal(size=(40, 3)), columns=["a", "b", "c"])
    before = fingerprint(model)
    binding = bind_inputs(model, df)
    assert binding.input_fn is not None and changed_tensors(before, fingerprint(model)) == []
    with torch.no_grad():
        model.adj.values().mul_(2)  # a changed sparse value is seen
    assert changed_tensors(before, fingerprint(model)) == ["adj"]
