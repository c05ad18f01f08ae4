"""The layers under `inspect()`: `bind` (a model bound to its rows), the one recording loop
(`RoutingStats` + `RoutingPass`), typed analysis options, stage-by-stage progress and skip reasons,
and `LoadedModel.inspect` with loaded baselines (the call `mmoe-inspect report` makes)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mmoe_inspect.binding import bind, read_labels
from mmoe_inspect.causal.options import CausalOptions
from mmoe_inspect.data.schema import FeatureSpec
from mmoe_inspect.data.sources import DataError
from mmoe_inspect.inspector import InspectConfig, inspect
from mmoe_inspect.routing_pass import RoutingPass, RoutingStats
from mmoe_inspect.testing.planted import PlantedMMoE

N_FEATURES = 6
FEATURES = FeatureSpec.dense_only(N_FEATURES)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2500, N_FEATURES)).astype("float32")
    df = pd.DataFrame(x, columns=list(FEATURES.dense))
    df["ctr"] = (x[:, 0] + 0.5 * rng.normal(size=len(df)) > 0.3).astype("float64")
    df["cvr"] = (rng.random(len(df)) < 0.05).astype("float64")
    return df


def model() -> PlantedMMoE:
    return PlantedMMoE(n_features=N_FEATURES, gate_modes={"ctr": "specialized", "cvr": "learned"}, seed=1)


def test_bind_resolves_columns_topology_and_labels(frame) -> None:
    m = model()
    b = bind(m, frame, features=FEATURES)
    assert b.feature_columns == tuple(FEATURES.dense)
    assert [t.name for t in b.labelled] == ["ctr", "cvr"] and b.label_columns == {"ctr": "ctr", "cvr": "cvr"}
    assert b.read_columns("segment") == [*FEATURES.dense, "ctr", "cvr", "segment"]
    assert [g.name for g in b.topology.gates] == [g.name for g in m.topology().gates]
    renamed = frame.rename(columns={"cvr": "bought"})
    b2 = bind(m, renamed, features=FEATURES, labels={"cvr": "bought"})
    assert b2.label_columns == {"ctr": "ctr", "cvr": "bought"}
    assert bind(m, frame, features=FEATURES, labels=False).labelled == ()
    with pytest.raises(DataError, match=r"labels name task\(s\) \['cvx'\].*did you mean 'cvr'"):
        bind(m, frame, features=FEATURES, labels={"cvx": "cvr"})


def test_read_labels_is_nan_where_absent_and_refuses_non_binary(frame) -> None:
    tasks = model().topology().tasks
    got = read_labels(frame.drop(columns=["cvr"]).iloc[:5], tasks, "f")
    assert got.shape == (5, 2) and np.isnan(got[:, 1]).all() and np.array_equal(got[:, 0], frame["ctr"][:5])
    bad = frame.iloc[:5].assign(ctr=[0, 1, 2, 0, 1])
    with pytest.raises(DataError, match=r"holds 2 .*binary labels must be 0 or 1"):
        read_labels(bad, tasks, "f")


def test_routing_pass_by_hand_gives_inspect_tables(frame) -> None:
    """The loop `inspect()` runs is the library's `RoutingPass`: driving it by hand over the same rows,
    in other batch sizes, gives the same tables (the statistics are batch-invariant)."""
    m = model()
    cfg = InspectConfig(batch_size=700, record_experts=False)
    result = inspect(m, frame, features=FEATURES, config=cfg)
    b = bind(m, frame, features=FEATURES)
    stats = RoutingStats(b.topology, labelled=b.labelled, seed=cfg.seed, chunk_rows=1000)
    with RoutingPass(m, stats, experts=False) as rp, torch.inference_mode():
        for start in range(0, len(frame), 300):
            chunk = frame.iloc[start : start + 300]
            rp.step(b.input_fn(chunk), labels=torch.from_numpy(read_labels(chunk, b.topology.tasks, "f")))
    assert rp.n_rows == len(frame)
    tables = stats.tables(rp.n_rows)
    for name in ("utilization", "gate_metrics", "task_divergence", "mutual_information", "tasks"):
        pd.testing.assert_frame_equal(
            tables[name], result.table(name), check_exact=False, rtol=1e-6, atol=1e-9
        )
    assert not any(m_._forward_hooks for m_ in m.modules())  # hooks gone after the pass


class Recorder:
    """A `Progress` that keeps every event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, int | None]] = []

    def start(self, stage: str, total: int | None, unit: str = "rows"):
        self.events.append(("start", stage, total))
        return lambda done, total=None: self.events.append(("tick", stage, done))

    def finish(self, stage: str) -> None:
        self.events.append(("finish", stage, None))


def test_progress_sees_every_stage_and_analyses_run_on_the_same_binding(frame) -> None:
    rec = Recorder()
    result = inspect(
        model(),
        frame,
        features=FEATURES,
        config=InspectConfig(batch_size=1000),
        causal=CausalOptions(n_boot=0, extra={"analyses": ("ablation",), "mean_gate_rows": 1000}),
        attribution={"sample_rows": 16, "n_steps": 2},
        progress=rec,
        label="m.pt",
    )
    stages = list(dict.fromkeys(s for _, s, _ in rec.events))
    assert stages == [
        "inspecting m.pt",
        "attributions (gates, experts, tasks)",
        "causal analyses of m.pt (pass 1)",  # a hand-written model: its own pass (no ride along the recording)
        "causal analyses of m.pt (evaluation)",
    ]
    for stage in stages:
        kinds = [k for k, s, _ in rec.events if s == stage]
        assert kinds[0] == "start" and kinds[-1] == "finish" and kinds.count("finish") == 1, stage
        ticks = [d for k, s, d in rec.events if s == stage and k == "tick"]
        assert ticks == sorted(ticks) and ticks, stage
    assert [d for k, s, d in rec.events if s == "inspecting m.pt" and k == "tick"][-1] == len(frame)
    assert result.causal is not None and result.attribution is not None and result.skipped == {}
    assert result.causal.n_rows == len(frame)
    rows: list[int] = []
    inspect(model(), frame, features=FEATURES, config=InspectConfig(batch_size=1000), progress=rows.append)
    assert rows == [1000, 2000, 2500]  # a plain callable: the recording pass's rows only


def test_an_analysis_that_cannot_run_says_why_and_the_inspection_stays(frame) -> None:
    unlabelled = frame.drop(columns=["ctr", "cvr"])
    result = inspect(model(), unlabelled, features=FEATURES, causal=True)
    assert result.causal is None and "no label column for any task" in result.skipped["causal"]
    assert result.n_rows == len(frame)
    with pytest.raises(DataError, match="segment"):  # a missing segment column fails before the pass
        inspect(model(), frame, features=FEATURES, causal=CausalOptions(segment_by="device"))


def test_options_read_dicts_and_refuse_bad_values() -> None:
    opts = CausalOptions.of({"n_boot": 5, "strategy": "naive", "intervals": "bootstrap"})
    assert opts is not None and opts.n_boot == 5 and opts.intervals == "bootstrap"
    assert dict(opts.extra) == {"strategy": "naive"}
    assert CausalOptions.of(False) is None and CausalOptions.of(True) == CausalOptions()
    with pytest.raises(ValueError, match="intervals"):
        CausalOptions(intervals="jackknife")
    with pytest.raises(ValueError, match="set by inspect"):
        CausalOptions(extra={"labels": {}})
    with pytest.raises(TypeError, match="causal must be"):
        CausalOptions.of("yes")


def test_loaded_model_inspect_with_loaded_baselines_is_the_report_call(demo_dir) -> None:
    """The README's example: a loaded checkpoint inspected with a loaded single-task baseline."""
    from mmoe_inspect.loading import load_model

    loaded = load_model(demo_dir / "checkpoints" / "mmoe.pt")
    single = load_model(demo_dir / "checkpoints" / "purchase_only.pt")
    result = loaded.inspect(
        demo_dir / "eval.parquet",
        config=InspectConfig(max_rows=600),
        causal=CausalOptions(baselines={"single": single}, segment_by="category", n_boot=0),
    )
    gains = result.causal.baseline_gains
    assert set(gains["baseline"]) == {"single"} and set(gains["task"]) == {"purchase"}
    assert result.n_rows == result.causal.n_rows == 600 and not result.causal.segments.empty
    assert result.model_name.endswith("(mmoe.pt)")


def test_causal_analyses_read_every_row_within_a_stated_memory_budget(frame) -> None:
    from mmoe_inspect.causal import run_causal
    from mmoe_inspect.causal.run import bytes_per_row

    m = model()
    kw = dict(features=FEATURES, analyses=("ablation",), n_boot=0, batch_size=500)
    every = run_causal(m, frame, **kw)
    assert every.n_rows == len(frame) and not any("evaluated the first" in n for n in every.notes)
    per_row = every.meta["bytes_per_row"]
    sets = 1 + every.meta["variants"]
    # analytic intervals stream the losses and spill the AUC scores: the memory a row takes does not grow
    # with the number of prediction sets; the bootstrap keeps every set's rows in memory
    assert (
        per_row
        == bytes_per_row(sets, 2, intervals="analytic")
        == bytes_per_row(10 * sets, 2, intervals="analytic")
    )
    assert every.meta["rows_cap"] >= len(frame)
    assert every.meta["spilled_bytes"] == len(frame) * 2 * 4 * sets  # both tasks are binary
    boot = run_causal(m, frame, intervals="bootstrap", **kw)
    assert boot.meta["bytes_per_row"] == bytes_per_row(sets, 2) > 5 * per_row
    capped = run_causal(m, frame, memory_budget=per_row * 1200, **kw)
    assert capped.n_rows == 1200  # the pass stops at the cap
    assert capped.meta["rows_cap"] == 1200
    assert any("memory budget" in n and "raise memory_budget" in n for n in capped.notes), capped.notes
    assert any("(max_rows)" in n for n in run_causal(m, frame, max_rows=1000, **kw).notes)
