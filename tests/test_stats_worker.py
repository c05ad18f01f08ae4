"""The statistics worker thread of the recording pass (`mmoe_inspect.stats.worker`,
`InspectConfig.overlap_stats`): the same tables as the synchronous pass, errors and Ctrl-C surface in
the caller without a hang, and the model and the process are left as found (no hooks, no thread)."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch

from mmoe_inspect.data.schema import FeatureSpec
from mmoe_inspect.inspector import InspectConfig, inspect
from mmoe_inspect.routing_pass import RoutingStats
from mmoe_inspect.stats import feed as feed_module
from mmoe_inspect.stats.outputs import TaskOutputStats
from mmoe_inspect.stats.worker import StatsWorker
from mmoe_inspect.testing.planted import PlantedMMoE

N_FEATURES = 6
FEATURES = FeatureSpec.dense_only(N_FEATURES)
# 2,500 rows in batches of 200, statistics chunks of >= 500 rows: 5 chunks, so several updates run in
# the worker while the next forwards run; the expert sample is 1,000 rows (40 %)
CFG = dict(batch_size=200, stats_chunk_rows=500, expert_sample_rows=1000, seed=3)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2500, N_FEATURES)).astype("float32")
    df = pd.DataFrame(x, columns=list(FEATURES.dense))
    df["ctr"] = (x[:, 0] + 0.5 * rng.normal(size=len(df)) > 0.3).astype("float64")
    df["cvr"] = (rng.random(len(df)) < 0.05).astype("float64")
    df.loc[::7, "cvr"] = np.nan  # missing labels take the masked paths
    return df


def model() -> PlantedMMoE:
    return PlantedMMoE(n_features=N_FEATURES, gate_modes={"ctr": "specialized", "cvr": "learned"}, seed=1)


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("mmoe-stats")]


def model_snapshot(m: torch.nn.Module) -> dict[str, object]:
    return {
        "params": {k: v.detach().clone() for k, v in m.state_dict().items()},
        "modes": {n: mod.training for n, mod in m.named_modules()},
    }


def assert_as_found(m: torch.nn.Module, before: dict[str, object]) -> None:
    for mod in m.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks and not mod._backward_hooks
    after = model_snapshot(m)
    assert after["modes"] == before["modes"]
    for k, v in before["params"].items():  # type: ignore[union-attr]
        assert torch.equal(v, after["params"][k]), k  # type: ignore[index]
    deadline = time.monotonic() + 5
    while worker_threads() and time.monotonic() < deadline:  # a closed pool's thread exits at once
        time.sleep(0.01)
    assert not worker_threads()


def test_worker_gives_the_tables_of_the_synchronous_pass(frame, monkeypatch) -> None:
    """Every table and array of `inspect()` is identical (exactly) with the statistics in the worker
    thread and in the caller; the worker really ran the chunk updates, one chunk at a time."""
    threads: list[str] = []
    real = feed_module.update_gates

    def update_gates(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(feed_module, "update_gates", update_gates)
    monkeypatch.setattr(feed_module, "spare_cores", lambda: 1)  # as on a machine with a core to spare
    m = model()
    m.train()  # inspect() switches to eval mode for the pass and back
    before = model_snapshot(m)
    results = {}
    for overlap in (False, True):
        threads.clear()
        cfg = InspectConfig(**CFG, overlap_stats=overlap)
        results[overlap] = inspect(m, frame, features=FEATURES, config=cfg)
        assert len(threads) == 5
        assert all(t.startswith("mmoe-stats") for t in threads) == overlap
        assert_as_found(m, before)
    sync, worker = results[False], results[True]
    assert sync.tables.keys() == worker.tables.keys()
    for name, table in sync.tables.items():
        pd.testing.assert_frame_equal(table, worker.tables[name], check_exact=True, obj=name)
    assert sync.tables["tasks"]["auc"].notna().all()
    for key, value in sync.arrays.items():
        other = worker.arrays[key]
        if isinstance(value, dict):
            assert value.keys() == other.keys()
            for k in value:
                np.testing.assert_array_equal(value[k], other[k], err_msg=f"{key}.{k}")
        elif value is None or isinstance(value, list):
            assert value == other, key
        else:
            np.testing.assert_array_equal(value, other, err_msg=key)


def test_no_spare_core_runs_the_updates_in_the_caller_with_the_same_tables(frame, monkeypatch) -> None:
    """With no spare core (torch threads = cores) the worker stays idle: each chunk's update runs in the
    caller (a thread beside a forward that fills the cores slows it), and the tables are identical."""
    where: set[str] = set()
    real_gates = feed_module.update_gates

    def update_gates(*args, **kwargs):
        where.add(threading.current_thread().name)
        return real_gates(*args, **kwargs)

    m = model()
    sync = inspect(m, frame, features=FEATURES, config=InspectConfig(**CFG, overlap_stats=False))
    monkeypatch.setattr(feed_module, "update_gates", update_gates)
    monkeypatch.setattr(feed_module, "spare_cores", lambda: 0)
    caller = inspect(m, frame, features=FEATURES, config=InspectConfig(**CFG))
    assert where == {"MainThread"}
    for name, table in sync.tables.items():
        pd.testing.assert_frame_equal(table, caller.tables[name], check_exact=True, obj=name)
    assert not worker_threads()


@pytest.mark.parametrize("spare", [True, False], ids=["overlapped", "in the caller"])
def test_an_error_in_a_statistic_surfaces_with_its_message_and_leaves_the_model_as_found(
    frame, monkeypatch, spare: bool
) -> None:
    """A statistic that raises in the worker (third chunk) stops the pass: the caller gets that error
    (type and message), the hooks are removed, the model is untouched and the thread is gone."""
    calls = []
    real = TaskOutputStats.update

    def failing(self, preds, labels=None):
        calls.append(threading.current_thread().name)
        if len(calls) == 3:
            raise ValueError("planted failure in a statistic")
        return real(self, preds, labels)

    monkeypatch.setattr(TaskOutputStats, "update", failing)
    monkeypatch.setattr(
        feed_module, "spare_cores", lambda: 1 if spare else 0
    )  # 0: the update runs in the caller
    m = model()
    before = model_snapshot(m)
    with pytest.raises(ValueError, match="planted failure in a statistic"):
        inspect(m, frame, features=FEATURES, config=InspectConfig(**CFG))
    assert len(calls) == 3  # no update ran after the failure
    assert calls[-1].startswith("mmoe-stats") if spare else calls[-1] == "MainThread"
    assert_as_found(m, before)


@pytest.mark.parametrize("where", ["forward", "waiting"])
def test_ctrl_c_stops_the_worker_and_leaves_the_model_as_found(frame, monkeypatch, where: str) -> None:
    """A real SIGINT, delivered while the caller runs a forward (`forward`) or while it waits for a slow
    update in the worker (`waiting`), raises KeyboardInterrupt in the caller promptly (no hang); the
    update in flight finishes, the thread ends, the hooks are removed and the model is as found."""
    real = feed_module.update_gates
    started = threading.Event()
    job_ends: list[float] = []
    closes: list[tuple[float, bool]] = []

    def slow(*args, **kwargs):
        started.set()
        if where == "waiting":
            time.sleep(2.0)  # the caller fills the next chunk meanwhile and waits for this one
        out = real(*args, **kwargs)
        job_ends.append(time.monotonic())
        return out

    real_close = RoutingStats.close

    def close(self, *, raise_errors: bool = True) -> None:
        closes.append((time.monotonic(), raise_errors))
        real_close(self, raise_errors=raise_errors)

    monkeypatch.setattr(feed_module, "update_gates", slow)
    monkeypatch.setattr(RoutingStats, "close", close)
    monkeypatch.setattr(feed_module, "spare_cores", lambda: 1)  # the update in the worker
    # a non-interactive shell starts background jobs with SIGINT ignored (a suite run with `&`): restore
    # Python's own handler for this test, as an interactive Ctrl-C would find it
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    m = model()
    before = model_snapshot(m)
    batches = []

    def input_fn(chunk: pd.DataFrame) -> torch.Tensor:
        batches.append(len(chunk))
        if where == "forward" and len(batches) == 6:  # the first chunk's update was handed over at batch 3
            assert started.wait(5)
            signal.raise_signal(signal.SIGINT)
        return torch.from_numpy(chunk[list(FEATURES.dense)].to_numpy(dtype=np.float32, copy=True))

    timer = None
    if where == "waiting":  # the caller blocks in the worker wait at the second chunk (batch 6)
        timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            inspect(m, frame, input_fn=input_fn, columns=list(FEATURES.dense), config=InspectConfig(**CFG))
    finally:
        if timer is not None:
            timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - t0 < 10
    assert len(batches) < 13  # stopped before the end of the data
    assert len(closes) == 1 and closes[0][1] is False  # the pass closed the worker, the interrupt kept
    if where == "waiting":  # the interrupt reached the caller while the update was still running
        assert len(batches) == 6 and job_ends and closes[0][0] < job_ends[0]
    assert_as_found(m, before)


def test_worker_runs_jobs_in_order_one_at_a_time_in_the_callers_modes() -> None:
    worker = StatsWorker()
    log: list[tuple[int, bool, bool]] = []
    gate = threading.Event()

    def job(i: int):
        def run() -> None:
            if i == 0:
                assert gate.wait(5)
            log.append((i, torch.is_inference_mode_enabled(), torch.is_grad_enabled()))

        return run

    n_threads = torch.get_num_threads()
    with torch.inference_mode():
        worker.submit(job(0))
    assert torch.get_num_threads() == n_threads  # the worker's one intra-op thread is its own
    done = threading.Event()

    def second() -> None:  # blocks until job 0 is done: at most one job in flight
        with torch.no_grad():
            worker.submit(job(1))
        done.set()

    t = threading.Thread(target=second)
    t.start()
    assert not done.wait(0.2) and log == []
    gate.set()
    assert done.wait(5)
    t.join()
    worker.wait()
    assert log == [(0, True, False), (1, False, False)]
    worker.close()
    worker.close()  # idempotent
    with pytest.raises(RuntimeError, match="after close"):
        worker.submit(job(2))


def test_worker_error_is_raised_once_and_stops_later_jobs() -> None:
    worker = StatsWorker()
    ran: list[int] = []

    def bad() -> None:
        raise KeyError("stat went wrong")

    worker.submit(bad)
    with pytest.raises(KeyError, match="stat went wrong"):
        worker.submit(lambda: ran.append(1))  # the failed job's error, and this job does not run
    worker.wait()  # raised once
    worker.submit(bad)
    worker.close(raise_errors=False)  # another exception is propagating: dropped, no hang
    assert ran == []


def test_background_is_cpu_only() -> None:
    """On an accelerator the updates stay in the caller (they are queued kernels: no thread, no sync)."""
    topo = model().topology()
    assert RoutingStats(topo, background=True).feed.background
    assert not RoutingStats(topo).feed.background
    assert not RoutingStats(topo, background=True, device=torch.device("meta")).feed.background


def test_a_queue_of_two_holds_one_job_waiting_beside_the_running_one() -> None:
    worker = StatsWorker(queued=2)
    log: list[int] = []
    gate = threading.Event()

    def job(i: int):
        def run() -> None:
            if i == 0:
                assert gate.wait(5)
            log.append(i)

        return run

    worker.submit(job(0))
    worker.submit(job(1))  # does not wait: one running, one waiting
    done = threading.Event()

    def third() -> None:  # waits until job 0 is done: at most two pending
        worker.submit(job(2))
        done.set()

    t = threading.Thread(target=third)
    t.start()
    assert not done.wait(0.2) and log == []
    gate.set()
    assert done.wait(5)
    t.join()
    worker.close()
    assert log == [0, 1, 2]
    with pytest.raises(ValueError, match="queued"):
        StatsWorker(queued=0)


def test_a_failed_job_skips_the_jobs_queued_after_it() -> None:
    worker = StatsWorker(queued=3)
    ran: list[int] = []
    gate = threading.Event()

    def bad() -> None:
        assert gate.wait(5)
        raise KeyError("ride went wrong")

    worker.submit(bad)
    worker.submit(lambda: ran.append(1))  # queued behind the failing job
    gate.set()
    with pytest.raises(KeyError, match="ride went wrong"):
        worker.wait()
    worker.close()
    assert ran == []  # skipped: nothing runs after a failed job


def test_the_short_switch_interval_comes_back_and_refuses_nonsense() -> None:
    import sys

    from mmoe_inspect.stats.worker import short_switch_interval

    before = sys.getswitchinterval()
    with pytest.raises(ValueError, match="> 0"), short_switch_interval(0):
        pass
    with short_switch_interval(0.001), short_switch_interval(0.0005):
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    assert sys.getswitchinterval() == before
    with pytest.raises(KeyError), short_switch_interval(0.001):
        raise KeyError("inside")
    assert sys.getswitchinterval() == before
