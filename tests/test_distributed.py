"""Distributed runs: row shards cover every row once, real gloo ranks equal one process, errors reach
every rank, and `torchrun ... report` writes the single-process report (rank 0 only)."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_expert_gram_precision import CKA_FLOAT32_ATOL

from mmoe_inspect import InspectConfig, inspect
from mmoe_inspect.data.schema import FeatureSpec
from mmoe_inspect.data.sources import RowShard, TableSource, shard_rows
from mmoe_inspect.distributed import DistributedError, current_context
from mmoe_inspect.testing.planted import PlantedMMoE

N_ROWS, N_FEATURES = 5001, 6  # 5001: the row count divides by neither 2 nor the row-group size
FEATURES = FeatureSpec.dense_only(N_FEATURES)
CONFIGS = {  # name -> InspectConfig: every way the rows can be thinned, uneven shards, an empty rank
    "all": InspectConfig(batch_size=512),
    "sample+limit": InspectConfig(batch_size=300, sample=0.7, max_rows=3001, seed=5),
    "one row": InspectConfig(batch_size=512, max_rows=1),  # rank 1 gets no rows
}


def _model() -> PlantedMMoE:
    # deterministic: the same weights in every process; a dead expert and specialized gates (findings)
    return PlantedMMoE(
        N_FEATURES, n_experts=4, gate_modes={"ctr": "specialized", "cvr": "collapsed"}, dead_experts=(3,)
    ).eval()


def _write_rows(root: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N_ROWS, N_FEATURES)).astype("float32")
    frame = pd.DataFrame(x, columns=list(FEATURES.dense))
    frame["ctr"] = (x[:, 0] + 0.5 * rng.normal(size=N_ROWS) > 0.8).astype("float64")
    frame["cvr"] = (rng.random(N_ROWS) < 0.03).astype("float64")
    paths = {"rows": root / "rows.parquet", "nan": root / "nan.parquet", "csv": root / "rows.csv"}
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), paths["rows"], row_group_size=700)
    frame.to_csv(paths["csv"], index=False)
    frame.loc[4000, "x2"] = np.nan  # in rank 1's half only
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), paths["nan"], row_group_size=700)
    folder = root / "parts"
    folder.mkdir()
    for i, start in enumerate(range(0, N_ROWS, 1800)):
        part = pa.Table.from_pandas(frame.iloc[start : start + 1800], preserve_index=False)
        pq.write_table(part, folder / f"part-{i}.parquet", row_group_size=500)
    paths["folder"] = folder
    return paths


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _write_rows(tmp_path_factory.mktemp("dist"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- shards
def _positions(source: TableSource, batch: int, **kw: Any) -> np.ndarray:
    chunks = [c.index.to_numpy() for c in source.iter_frames(batch, ["x0"], **kw)]
    return np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)


@pytest.mark.parametrize("kind", ["rows", "folder", "csv", "frame"])
@pytest.mark.parametrize(
    "max_rows, sample", [(None, None), (2500, None), (None, 0.3), (1234, 0.6), (99_999, 0.5), (1, None)]
)
def test_shards_hold_every_row_exactly_once(
    rows, kind: str, max_rows: int | None, sample: float | None
) -> None:
    source = TableSource.of(pd.read_parquet(rows["rows"]) if kind == "frame" else rows[kind])
    expected = _positions(source, 256, max_rows=max_rows, sample=sample, seed=3)
    for world in (2, 3, 7):
        got = []
        for rank in range(world):
            shard = shard_rows(source, rank, world, max_rows=max_rows, sample=sample, seed=3, block=256)
            mine = _positions(source, 256, max_rows=max_rows, sample=sample, seed=3, shard=shard)
            assert all(shard.ranges(int(p), int(p) + 1) for p in mine[:50])  # it only reads its own rows
            got.append(mine)
        merged = np.concatenate(got)
        assert len(merged) == len(expected), (world, kind)  # none twice ...
        assert np.array_equal(np.sort(merged), expected)  # ... and none missing
        if max_rows == 1:
            assert [len(g) for g in got][1:] == [0] * (world - 1)  # ranks without rows are fine


def test_row_values_follow_their_positions_in_a_shard(rows) -> None:
    frame = pd.read_parquet(rows["rows"])
    source = TableSource.of(rows["rows"])
    shard = shard_rows(source, 1, 3, block=400)
    # contiguous thirds of 5001 rows, in whole batches of 400: rank 1 batches rows as one process does
    assert shard == RowShard(1, 3, block=2000, stop=N_ROWS)
    chunks = list(source.iter_frames(400, ["x0", "x1"], shard=shard))
    got = pd.concat(chunks)
    assert [c.index[0] for c in chunks] == list(range(2000, 4000, 400)) and {len(c) for c in chunks} == {400}
    pd.testing.assert_frame_equal(got, frame.loc[2000:3999, ["x0", "x1"]])
    assert (
        list(source.iter_frames(400, ["x0"], shard=shard_rows(source, 2, 3, block=400)))[-1].index[-1] == 5000
    )


# --------------------------------------------------------------------------- real gloo ranks
def _digest(result: Any) -> dict[str, Any]:
    """What must equal a single-process run: rows, tables, findings, verdict, reservoir samples."""
    return {
        "n_rows": result.n_rows,
        "tables": result.tables,
        "findings": [f.to_dict() for f in result.findings],
        "verdict": result.verdict,
        "reservoir": result.arrays["reservoir"],
        "coactivation": result.arrays["coactivation"],
        "cka": result.arrays["expert_cka"],
    }


def _rank_worker(rank: int, world: int, port: int, root: str) -> None:
    """One rank: inspect with distributed=True under every config, then on data that fails on rank 1."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    out: dict[str, Any] = {}
    try:
        model = _model()
        for name, cfg in CONFIGS.items():
            out[name] = _digest(
                inspect(model, Path(root) / "rows.parquet", features=FEATURES, config=cfg, distributed=True)
            )
        try:
            inspect(
                model, Path(root) / "nan.parquet", features=FEATURES, config=CONFIGS["all"], distributed=True
            )
        except Exception as exc:  # every rank must get the error of rank 1
            out["error"] = (type(exc).__name__, str(exc))
    finally:
        with open(Path(root) / f"rank{rank}.pkl", "wb") as fh:
            pickle.dump(out, fh)
        dist.destroy_process_group()


def _assert_same(got: dict[str, Any], want: dict[str, Any], rtol: float) -> None:
    assert got["n_rows"] == want["n_rows"]
    assert got["verdict"] == want["verdict"]
    assert set(got["tables"]) == set(want["tables"])
    for name, table in want["tables"].items():
        if "cka" in table:  # float32 Gram product centered per update: the ranks' updates hold other rows
            np.testing.assert_allclose(
                got["tables"][name]["cka"], table["cka"], rtol=0, atol=CKA_FLOAT32_ATOL
            )
            table = table.assign(cka=got["tables"][name]["cka"])
        pd.testing.assert_frame_equal(got["tables"][name], table, rtol=rtol, atol=1e-12, obj=name)
    assert [(f["code"], f["subject"], f["title"], f["severity"]) for f in got["findings"]] == [
        (f["code"], f["subject"], f["title"], f["severity"]) for f in want["findings"]
    ]
    for g, w in zip(got["findings"], want["findings"], strict=True):
        for key, value in w["evidence"].items():
            other = g["evidence"][key]
            abs_tol = CKA_FLOAT32_ATOL if key == "cka" else 1e-12
            assert (
                math.isclose(other, value, rel_tol=rtol, abs_tol=abs_tol)
                if isinstance(value, float)
                else other == value
            )
    for name, sample in want["reservoir"].items():  # the same rows (row-hash keys), in the same order
        np.testing.assert_allclose(got["reservoir"][name], sample, rtol=rtol, atol=0)
    for name, co in want["coactivation"].items():
        np.testing.assert_allclose(got["coactivation"][name], co, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(got["cka"], want["cka"], rtol=0, atol=CKA_FLOAT32_ATOL)


def test_two_gloo_ranks_equal_one_process(rows) -> None:
    root = rows["rows"].parent
    # fork: the ranks inherit the imported modules (a spawn re-imports torch, ~5 s per rank)
    mp.start_processes(_rank_worker, args=(2, _free_port(), str(root)), nprocs=2, start_method="fork")
    model = _model()
    ranks = []
    for rank in range(2):
        with open(root / f"rank{rank}.pkl", "rb") as fh:
            ranks.append(pickle.load(fh))
    for name, cfg in CONFIGS.items():
        want = _digest(inspect(model, rows["rows"], features=FEATURES, config=cfg))
        assert want["findings"], "the planted model has findings to compare"
        # unsampled, the ranks' batches are one process's batches: only the cross-rank float64 sums differ;
        # sampled, batches hold other rows and the float32 forward differs in the last bits
        rtol = 1e-6 if cfg.sample else 1e-10
        for got in ranks:  # every rank holds the statistics of all rows
            _assert_same(got[name], want, rtol)
    assert ranks[0]["all"]["n_rows"] == N_ROWS and ranks[0]["sample+limit"]["n_rows"] == 3001
    # the error of rank 1 reached rank 0 (same class: the CLI maps it to the same exit code), no hang
    assert ranks[1]["error"][0] == ranks[0]["error"][0] == "NonFiniteError"
    assert "first at row 4000" in ranks[1]["error"][1]
    assert ranks[0]["error"][1].startswith("rank 1: feature column 'x2'")


def test_distributed_without_a_process_group_is_one_clear_error(rows) -> None:
    assert not dist.is_initialized()
    with pytest.raises(DistributedError, match=r"needs an initialized torch\.distributed process group"):
        current_context()
    with pytest.raises(DistributedError, match="process group"):
        inspect(_model(), rows["rows"], features=FEATURES, distributed=True)


# --------------------------------------------------------------------------- torchrun + the CLI
def _torchrun(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TERMINAL_WIDTH": "200"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "mmoe_inspect.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=cwd, env=env)


RUN_KEYS = {
    "record_seconds",
    "rows_per_second",
    "distributed",
    "seconds",
    "collect_seconds",
    "evaluate_seconds",
    "prepare_seconds",
    # a single process's causal data pass rides along its recording pass (one model call a batch); the
    # distributed one runs on rank 0 after the sharded recording, as a pass of its own
    "ride_seconds",
    "rode_along",
    "forwards",
}


def _comparable(node: Any) -> Any:
    """metrics.json without timings and the distributed note; floats rounded to 9 significant digits;
    CKA values (float32 Gram product, see `_cka_values`) replaced by a marker."""
    if isinstance(node, dict):
        return {k: "cka" if k == "cka" else _comparable(v) for k, v in node.items() if k not in RUN_KEYS}
    if isinstance(node, list):
        return [_comparable(v) for v in node]
    if isinstance(node, float):
        return float(f"{node:.9g}")
    return node


def _cka_values(node: Any) -> list[float]:
    """Every value under a "cka" key of metrics.json, in document order (NaN for null)."""
    if isinstance(node, dict):
        return [
            v
            for k, x in node.items()
            for v in ([np.nan if x is None else x] if k == "cka" else _cka_values(x))
        ]
    if isinstance(node, list):
        return [v for x in node for v in _cka_values(x)]
    return []


@pytest.fixture(scope="module")
def checkpoint(rows) -> Path:
    path = rows["rows"].parent / "planted.pt"
    torch.save(_model(), path)
    return path


def test_torchrun_report_equals_the_single_process_report(rows, checkpoint: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mmoe_inspect.cli.main import app

    common = ["--trust-checkpoint", "--data", rows["rows"], "--features", ",".join(FEATURES.dense)]
    common += ["--no-attributions", "--bootstrap", "20", "-q"]
    single = CliRunner().invoke(
        app, ["report", str(checkpoint), *map(str, common), "--out", str(tmp_path / "one")]
    )
    assert single.exit_code == 0, single.output
    run = _torchrun("report", checkpoint, *common, "--out", tmp_path / "two", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("report:") == 1  # rank 0 alone prints (and writes)
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["meta"]["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert two["causal"] is not None  # rank 0 ran the causal analyses on the single-process rows
    assert _comparable(two) == _comparable(one)
    assert len(_cka_values(one)) > 0  # the float32 CKA of ranks' and one process's updates: within the bound
    np.testing.assert_allclose(_cka_values(two), _cka_values(one), rtol=0, atol=CKA_FLOAT32_ATOL)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )


def _cli_rank(rank: int, world: int, port: int, args: list[str], out_dir: str) -> None:
    """One rank of the CLI as torchrun would start it (its environment), in a forked process."""
    from mmoe_inspect.cli.main import app

    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world)
    )
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    log = open(Path(out_dir) / f"rank{rank}.log", "w", encoding="utf-8")  # noqa: SIM115 (closed by _exit)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log  # the Rich consoles write to sys.stdout/sys.stderr
    try:
        app(args, prog_name="mmoe-inspect")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    log.flush()
    (Path(out_dir) / f"rank{rank}.code").write_text(str(code))
    os._exit(0)


def test_an_error_on_one_rank_ends_every_rank_with_one_line(rows, checkpoint: Path, tmp_path: Path) -> None:
    args = [
        "report",
        checkpoint,
        "--trust-checkpoint",
        "--data",
        rows["nan"],
        "--features",
        ",".join(FEATURES.dense),
    ]
    args += [
        "--batch-size",
        "500",
        "--out",
        tmp_path / "r",
    ]  # rank 1 holds rows 3000.. (batches of 500): the NaN
    mp.start_processes(
        _cli_rank,
        args=(2, _free_port(), [str(a) for a in args], str(tmp_path)),
        nprocs=2,
        start_method="fork",
    )
    codes = [int((tmp_path / f"rank{r}.code").read_text()) for r in range(2)]
    assert codes == [2, 2]  # every rank: bad input
    logs = [(tmp_path / f"rank{r}.log").read_text() for r in range(2)]
    assert logs[1] == ""  # ranks other than 0 print nothing
    lines = [ln for ln in logs[0].splitlines() if ln.strip()]
    assert len(lines) == 1 and re.match(r"error: rank 1: feature column 'x2' .* NaN", lines[0]), lines
    assert not (tmp_path / "r").exists()  # nothing written
