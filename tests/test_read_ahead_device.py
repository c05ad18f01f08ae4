"""Bounded read-ahead (a file far larger than the bound is read whole, holding at most the bound) and the
`--device` path (the same code on CPU; a CUDA device on a machine without CUDA is one clear line)."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from mmoe_inspect import InspectConfig, inspect
from mmoe_inspect.cli.main import app
from mmoe_inspect.data.schema import FeatureSpec
from mmoe_inspect.data.sources import ReadAhead, TableSource
from mmoe_inspect.recording.recorder import RecordingError
from mmoe_inspect.testing.planted import PlantedMMoE

N_ROWS, N_FEATURES = 60_000, 6
FEATURES = FeatureSpec.dense_only(N_FEATURES)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60,000 rows in row groups of 20,000: 20x the read-ahead bound used below."""
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        rng.normal(size=(N_ROWS, N_FEATURES)).astype("float32"), columns=list(FEATURES.dense)
    )
    frame["ctr"] = (rng.random(N_ROWS) < 0.3).astype("float64")
    frame["row"] = np.arange(N_ROWS)
    path = tmp_path_factory.mktemp("read_ahead") / "big.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=20_000)
    return path


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "mmoe-inspect-read-ahead"]


def test_a_file_larger_than_the_read_ahead_is_read_whole_holding_at_most_the_bound(big: Path) -> None:
    meter = ReadAhead(3000)
    seen = 0
    for chunk in TableSource.of(big).iter_frames(1000, ["x0", "row"], read_ahead=meter):
        assert (chunk["row"].to_numpy() == chunk.index.to_numpy()).all()  # in order, nothing lost
        seen += len(chunk)
        time.sleep(0.0005)  # a consumer slower than decoding: the thread runs ahead until the bound
    assert seen == N_ROWS
    assert 2000 <= meter.peak <= 3000  # it did read ahead, and never held more than the bound
    assert not _reader_threads()


def test_inspect_with_read_ahead_sees_every_row_and_the_same_statistics(big: Path) -> None:
    model = PlantedMMoE(N_FEATURES, n_experts=4, gate_modes={"ctr": "specialized", "cvr": "learned"}).eval()
    plain = inspect(model, big, features=FEATURES, config=InspectConfig(batch_size=2000))
    ahead = inspect(
        model, big, features=FEATURES, config=InspectConfig(batch_size=2000, read_ahead_rows=6000)
    )
    assert ahead.n_rows == plain.n_rows == N_ROWS
    assert 0 < ahead.meta["read_ahead_peak_rows"] <= 6000
    for name, table in plain.tables.items():
        pd.testing.assert_frame_equal(ahead.tables[name], table, obj=name)  # same batches: identical
    assert [f.to_dict() for f in ahead.findings] == [f.to_dict() for f in plain.findings]


def test_read_ahead_stops_its_thread_and_passes_on_errors(big: Path) -> None:
    frames = TableSource.of(big).iter_frames(1000, ["x0"], read_ahead=ReadAhead(5000))
    next(frames)
    frames.close()  # the caller stops early: the thread ends
    assert not _reader_threads()
    with pytest.raises(KeyError, match="nope"):  # raised in the reading thread, surfaces in the caller
        list(TableSource.of(pd.read_parquet(big)).iter_frames(100, ["nope"], read_ahead=ReadAhead(500)))
    assert not _reader_threads()
    with pytest.raises(ValueError, match="at least one row"):
        ReadAhead(0)


# --------------------------------------------------------------------------- device
def _state_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        h.update(name.encode() + str(t.device).encode() + t.detach().cpu().numpy().tobytes())
    return h.hexdigest()


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]  # every device this machine has


@pytest.mark.parametrize("device", DEVICES)
def test_inspect_on_a_device_equals_cpu_and_leaves_the_model_where_it_was(big: Path, device: str) -> None:
    model = PlantedMMoE(N_FEATURES, n_experts=4, gate_modes={"ctr": "specialized", "cvr": "collapsed"}).eval()
    before = _state_hash(model)
    cfg = InspectConfig(batch_size=4096, max_rows=12_000)
    ref = inspect(model, big, features=FEATURES, config=cfg)
    got = inspect(model, big, features=FEATURES, config=cfg, device=device)
    assert _state_hash(model) == before  # same device, same bits
    assert got.n_rows == ref.n_rows == 12_000
    for name, table in ref.tables.items():
        pd.testing.assert_frame_equal(got.tables[name], table, rtol=1e-5, obj=name)
    assert [f.code for f in got.findings] == [f.code for f in ref.findings]
    assert all(isinstance(v, np.ndarray) for v in got.arrays["reservoir"].values())  # results on the host


def test_a_cuda_device_without_cuda_is_one_clear_error(big: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # this machine, or one like it
    model = PlantedMMoE(N_FEATURES, n_experts=4).eval()
    before = _state_hash(model)
    with pytest.raises(RecordingError, match="CUDA is not available"):
        inspect(model, big, features=FEATURES, device="cuda")
    assert _state_hash(model) == before

    torch.save(model, big.parent / "planted.pt")
    out = big.parent / "report"
    args = ["report", big.parent / "planted.pt", "--trust-checkpoint", "--data", big, "--device", "cuda"]
    args += ["--features", ",".join(FEATURES.dense), "--out", out]
    for extra in ([], ["--distributed"]):  # also before joining a process group
        result = CliRunner().invoke(app, [str(a) for a in [*args, *extra]])
        assert result.exit_code == 2, result.output
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and "CUDA is not available" in lines[0], lines
        assert not out.exists()
