"""The causal data pass riding along `inspect()`'s recording pass: one read of the rows, the same numbers as a
pass of its own (`run_causal`), the same rows under `sample` and row limits, nothing left behind on errors."""

from __future__ import annotations

import tempfile

import numpy as np
import pandas as pd
import pytest
import torch

from mmoe_inspect import InspectConfig, inspect
from mmoe_inspect.causal import CausalOptions, run_causal
from mmoe_inspect.data.sources import DataError
from mmoe_inspect.datasets import make_recsys, recsys_features, recsys_tasks
from mmoe_inspect.models import PLE, MMoE, SharedBottom
from mmoe_inspect.testing.planted import EinsumMMoE

TABLES = (
    "task_metrics",
    "ablation",
    "counterfactuals",
    "sparse_gains",
    "baseline_gains",
    "segments",
    "predictions",
)


def _recsys(tmp_path, n: int = 10_000):
    frame = make_recsys(n, seed=1)
    path = tmp_path / "eval.parquet"
    frame.to_parquet(path)
    torch.manual_seed(0)
    features, tasks = recsys_features(frame), recsys_tasks()
    return path, features, tasks


def _same_tables(a, b) -> None:
    """Equal up to float rounding: riding along, the re-mixer takes the experts' and gates' outputs from the
    model's own forward instead of its fused copy of the experts (an AUC moves by a flipped near-tie, about
    1 / (positives x negatives)). The ablation's p-values to 1e-2: such a change of a near-zero effect with a
    standard error about as small moves its p-value by more (`significant` must agree exactly)."""
    for name in TABLES:
        x, y = getattr(a, name), getattr(b, name)
        p = [c for c in ("p_value", "p_adjusted") if c in x.columns]
        pd.testing.assert_frame_equal(x.drop(columns=p), y.drop(columns=p), rtol=1e-5, atol=2e-6, obj=name)
        pd.testing.assert_frame_equal(x[p], y[p], rtol=0, atol=1e-2, obj=name)
    assert a.n_rows == b.n_rows
    assert a.notes == b.notes


def test_rides_along_and_equals_a_pass_of_its_own(tmp_path) -> None:
    path, features, tasks = _recsys(tmp_path)
    model = MMoE(features, tasks, n_experts=4, expert_hidden=(16,), tower_hidden=(8,))
    single = SharedBottom(features, [tasks[1]], bottom_hidden=(8,), tower_hidden=(4,))
    opts = {"baselines": {"single": single}, "segment_by": "device"}
    res = inspect(model, path, causal=CausalOptions(**opts))
    ride = res.causal
    assert ride.meta["rode_along"] is True and ride.meta["remixed"] is True
    # the causal work is timed in the pass's ride calls (plus the worker's close after it): both clocks run,
    # and the causal clock never holds the recording's own time (no ratio: it moves with the machine's load)
    assert res.meta["ride_seconds"] > 0 and ride.meta["collect_seconds"] > 0
    assert ride.meta["collect_seconds"] < res.meta["ride_seconds"] + res.meta["record_seconds"]
    alone = run_causal(model, path, **opts)
    assert alone.meta["rode_along"] is False
    _same_tables(ride, alone)
    assert set(ride.segments["segment"]) == {"0", "1", "2", "3"}
    assert "single:purchase" in ride.predictions
    # the recording itself is what `check` sees
    plain = inspect(model, path)
    pd.testing.assert_frame_equal(res.table("utilization"), plain.table("utilization"), check_exact=True)


@pytest.mark.parametrize(
    ("config", "options", "rows"),
    [
        (InspectConfig(), CausalOptions(max_rows=5_000), 5_000),  # cut inside the second batch of 4096
        (InspectConfig(max_rows=7_000, batch_size=1_000), CausalOptions(), 7_000),
        (InspectConfig(sample=0.5, seed=3), CausalOptions(), None),
    ],
)
def test_ride_along_reads_the_rows_a_pass_of_its_own_reads(tmp_path, config, options, rows) -> None:
    path, features, tasks = _recsys(tmp_path)
    model = MMoE(features, tasks, n_experts=3, expert_hidden=(8,), tower_hidden=(4,))
    res = inspect(model, path, config=config, causal=options)
    assert res.causal.meta["rode_along"] is True
    limits = [n for n in (config.max_rows, options.max_rows) if n is not None]
    alone = run_causal(
        model,
        path,
        max_rows=min(limits) if limits else None,
        sample=config.sample,
        seed=config.seed,
        batch_size=config.batch_size,
    )
    _same_tables(res.causal, alone)
    if rows is not None:
        assert res.causal.n_rows == rows
    else:  # sampled: the rows the recording read, and the rows a standalone sampled pass reads
        assert res.causal.n_rows == res.n_rows
        np.testing.assert_array_equal(res.causal.predictions["row"], alone.predictions["row"])


def test_ple_and_bootstrap_ride_along(tmp_path) -> None:
    path, features, tasks = _recsys(tmp_path, n=6_000)
    model = PLE(features, tasks, n_specific=1, n_levels=2, n_experts=2, expert_hidden=(8,), tower_hidden=(4,))
    res = inspect(model, path, causal=CausalOptions(intervals="bootstrap", n_boot=20))
    assert res.causal.meta["rode_along"] is True
    _same_tables(res.causal, run_causal(model, path, intervals="bootstrap", n_boot=20))


def test_models_that_cannot_ride_get_a_pass_of_their_own(tmp_path) -> None:
    model = EinsumMMoE(n_features=8)  # not a package model: the variants need hooks
    x = model.example_input(3_000)
    with torch.no_grad():
        p = model(x)
    frame = pd.DataFrame(x.numpy(), columns=[f"f{i}" for i in range(8)])
    rng = np.random.default_rng(0)
    for t, v in p.items():
        frame[t] = (rng.random(len(frame)) < v.numpy()).astype(np.float32)
    cols = [f"f{i}" for i in range(8)]

    def fn(df: pd.DataFrame) -> torch.Tensor:
        return torch.from_numpy(df[cols].to_numpy(np.float32, copy=True))

    res = inspect(model, frame, input_fn=fn, columns=cols, causal=True)
    assert res.causal is not None and res.causal.meta["rode_along"] is False
    assert "ride_seconds" not in res.meta
    assert len(res.causal.ablation) > 0

    # a baseline that shares modules with the model: its forward would fire the recording hooks
    path, features, tasks = _recsys(tmp_path, n=3_000)
    mmoe = MMoE(features, tasks, n_experts=2, expert_hidden=(8,), tower_hidden=(4,))
    res = inspect(mmoe, path, causal=CausalOptions(baselines={"itself": mmoe}))
    assert res.causal.meta["rode_along"] is False


def test_an_error_mid_pass_leaves_no_spill_and_no_hooks(tmp_path, monkeypatch) -> None:
    frame = make_recsys(9_000, seed=2)
    features, tasks = recsys_features(frame), recsys_tasks()
    frame.loc[8_500, features.dense[0]] = np.nan  # the third batch of 4096
    path = tmp_path / "bad.parquet"
    frame.to_parquet(path)
    spill = tmp_path / "spill"
    spill.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill))
    model = MMoE(features, tasks, n_experts=2, expert_hidden=(8,), tower_hidden=(4,))
    hooks_before = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    with pytest.raises(DataError, match=r"NaN|finite"):
        inspect(model, path, causal=True)
    assert list(spill.iterdir()) == []
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()] == hooks_before


def test_remixer_takes_the_tapped_intact_outputs() -> None:
    """Riding along, the experts and gates are not run again: the re-mixer's intact rows and variants follow
    the taps it is given (here those of another batch), equal to re-mixing that batch itself."""
    from mmoe_inspect.causal._engine import IntactTaps, _unique
    from mmoe_inspect.causal.ablation import ablation_variants
    from mmoe_inspect.causal.remix import Remixer

    torch.manual_seed(0)
    model = MMoE(6, ("ctr", "cvr"), n_experts=3, expert_hidden=(8,), tower_hidden=(4,)).eval()
    topo = model.topology()
    variants = _unique(ablation_variants(topo)[0])
    remixer = Remixer(model, topo, [v.edits for v in variants])
    assert remixer.tap_paths() == ["experts.0", "experts.1", "experts.2", "gates.0", "gates.1"]
    x, other = torch.randn(64, 6), torch.randn(64, 6)
    with torch.no_grad(), IntactTaps(model, remixer.tap_paths()) as taps:
        model(other)
        tapped = taps.take(64, 64)
        model(other)
        assert taps.take(32, 32) == {}  # outputs of another batch size: not this batch's
        own = {k: v.clone() for k, v in remixer.run(other).items()}
        via_taps = remixer.run(x, tapped)
    assert not any(m._forward_hooks for m in model.modules())
    for task in ("ctr", "cvr"):
        torch.testing.assert_close(via_taps[task], own[task], rtol=1e-5, atol=1e-6)


def _ride(tmp_path, monkeypatch, spare: int, **options):
    """`inspect` with the causal work riding along; `spare` cores as the rider sees them (0: in the caller)."""
    import mmoe_inspect.causal._engine as engine

    monkeypatch.setattr(engine, "spare_cores", lambda: spare)
    path, features, tasks = _recsys(tmp_path, 13_000)
    torch.manual_seed(3)
    model = MMoE(features, tasks, n_experts=4, expert_hidden=(16,), tower_hidden=(8,))
    torch.manual_seed(4)
    single = SharedBottom(features, [tasks[1]], bottom_hidden=(8,), tower_hidden=(4,))
    opts = {"baselines": {"single": single}, "segment_by": "device", **options}
    return inspect(model, path, causal=CausalOptions(**opts)).causal


@pytest.mark.parametrize("options", [{}, {"max_rows": 10_000}], ids=["every row", "a row limit mid-batch"])
def test_the_riding_work_in_a_worker_thread_gives_the_tables_in_line(tmp_path, monkeypatch, options) -> None:
    """Beside the recording pass (a worker thread, a core spare) or in the caller: the same work on the same
    tensors in the same order, so the same tables to the last bit."""
    beside = _ride(tmp_path, monkeypatch, 1, **options)
    inline = _ride(tmp_path, monkeypatch, 0, **options)
    assert beside.meta["rode_along"] and beside.meta["remixed"]
    assert beside.meta["collect_beside_seconds"] > 0 and inline.meta["collect_beside_seconds"] == 0
    for name in TABLES:
        pd.testing.assert_frame_equal(
            getattr(beside, name), getattr(inline, name), check_exact=True, obj=name
        )
    assert beside.n_rows == inline.n_rows == (options.get("max_rows") or 13_000)
    assert beside.notes == inline.notes


def test_an_error_in_the_riding_worker_surfaces_and_leaves_nothing_behind(tmp_path, monkeypatch) -> None:
    import sys
    import threading

    import mmoe_inspect.causal._engine as engine
    from mmoe_inspect.causal.remix import Remixer

    monkeypatch.setattr(engine, "spare_cores", lambda: 1)
    calls = {"n": 0}
    run = Remixer.run

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # a batch past the first-batch check: in the worker thread
            assert threading.current_thread() is not threading.main_thread()
            raise RuntimeError("re-mix went wrong")
        return run(self, *args, **kwargs)

    monkeypatch.setattr(Remixer, "run", failing)
    path, features, tasks = _recsys(tmp_path, 20_000)
    model = MMoE(features, tasks, n_experts=2, expert_hidden=(8,), tower_hidden=(4,))
    hooks_before = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    interval = sys.getswitchinterval()
    with pytest.raises(RuntimeError, match="re-mix went wrong"):
        inspect(model, path, causal=True)
    assert calls["n"] == 3  # no batch ran after the failed one
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()] == hooks_before
    assert not [t for t in threading.enumerate() if t.name.startswith("mmoe-stats")]
    assert sys.getswitchinterval() == interval


def test_the_riding_workers_last_batches_end_inside_the_pass(tmp_path, monkeypatch) -> None:
    """A model handed over in training mode (dropout in the towers): the pass holds it in eval mode, and the
    worker's last batches end inside the pass, so they too run in eval mode; the tables equal the in-line
    ones, and the model is back in training mode afterwards."""
    import threading
    import time

    import mmoe_inspect.causal._engine as engine
    from mmoe_inspect.causal.remix import Remixer

    run, modes = Remixer.run, []

    def slow(self, *args, **kwargs):  # causal work slower than a forward: the worker lags behind the pass
        if threading.current_thread() is not threading.main_thread():
            time.sleep(0.05)
        modes.append(self.model.training)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(Remixer, "run", slow)
    path, features, tasks = _recsys(tmp_path, 13_000)
    results = {}
    for spare in (1, 0):
        monkeypatch.setattr(engine, "spare_cores", lambda spare=spare: spare)
        torch.manual_seed(3)
        model = MMoE(
            features, tasks, n_experts=4, expert_hidden=(16,), tower_hidden=(8,), dropout=0.5
        ).train()
        results[spare] = inspect(model, path, causal=True).causal
        assert model.training and all(m.training for m in model.modules())
    assert modes and not any(modes)
    assert results[1].meta["collect_beside_seconds"] > 0
    for name in TABLES:
        pd.testing.assert_frame_equal(
            getattr(results[1], name), getattr(results[0], name), check_exact=True, obj=name
        )


def test_a_hook_where_the_worker_would_run_keeps_the_riding_work_in_the_caller(tmp_path, monkeypatch) -> None:
    """A hook (the user's, or another tool's) on a module the re-mixer calls: it must not fire from a worker
    thread during the model's own forward, so the riding work stays in the caller."""
    import threading

    import mmoe_inspect.causal._engine as engine

    monkeypatch.setattr(engine, "spare_cores", lambda: 1)
    path, features, tasks = _recsys(tmp_path, 13_000)
    model = MMoE(features, tasks, n_experts=2, expert_hidden=(8,), tower_hidden=(4,))
    threads: set[int] = set()
    handle = model.towers[0].register_forward_hook(lambda *_: threads.add(threading.get_ident()))
    try:
        ride = inspect(model, path, causal=True).causal
    finally:
        handle.remove()
    assert ride.meta["rode_along"] and ride.meta["collect_beside_seconds"] == 0
    assert threads == {threading.main_thread().ident}


def test_an_error_mid_pass_stops_the_riding_worker_before_the_model_is_restored(
    tmp_path, monkeypatch
) -> None:
    """The recording pass raises at its 5th batch while the worker lags behind: the worker stops inside the
    pass (the batch it runs finishes, the queued ones are skipped), so no batch runs once the model handed
    over in training mode is back in it; the error is the pass's."""
    import threading
    import time

    import mmoe_inspect.causal._engine as engine
    import mmoe_inspect.inspector as inspector
    from mmoe_inspect.causal.remix import Remixer

    monkeypatch.setattr(engine, "spare_cores", lambda: 1)
    run, modes = Remixer.run, []

    def slow(self, *args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            time.sleep(0.1)
        modes.append(self.model.training)
        return run(self, *args, **kwargs)

    read, calls = inspector.read_labels, {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("the data went wrong")
        return read(*args, **kwargs)

    monkeypatch.setattr(Remixer, "run", slow)
    monkeypatch.setattr(inspector, "read_labels", failing)
    path, features, tasks = _recsys(tmp_path, 30_000)
    model = MMoE(features, tasks, n_experts=2, expert_hidden=(8,), tower_hidden=(4,), dropout=0.5).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="the data went wrong"):
        inspect(model, path, causal=True)
    time.sleep(0.3)  # a worker still running would record a training-mode batch meanwhile
    assert modes and not any(modes)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_baseline_sharing_modules_with_the_model_sees_no_variant(tmp_path) -> None:
    """The model as its own baseline (a pass of its own: it cannot ride along): its predictions are the
    model's, not those of a variant planned for the model's last forward."""
    path, features, tasks = _recsys(tmp_path, 6_000)
    torch.manual_seed(0)
    model = MMoE(features, tasks, n_experts=4, expert_hidden=(16,), tower_hidden=(8,))
    res = run_causal(model, path, baselines={"self": model}, batch_size=1024)
    p = res.predictions
    for task in tasks:
        np.testing.assert_allclose(p[f"self:{task.name}"], p[f"model:{task.name}"], rtol=1e-6, atol=1e-7)
