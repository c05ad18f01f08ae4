"""The report's fast paths give what the plain paths give.

* `save_png` (one draw) writes the bytes `Figure.savefig` writes (two draws), for every figure of a
  real report and the overview slide;
* `render_figures` on two processes writes the same files as on one, and a figure that fails or a
  helper process that dies is handled as in a serial run (the error raises here; the figures are all
  written);
* `sample_frame` reading only the chosen rows (parquet, DataFrame) picks the rows the streaming scan
  picks (CSV, and the old loop written out here);
* Integrated Gradients of targets sharing one forward equal those of one forward per target.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import mmoe_inspect as mi
from mmoe_inspect.attribution import sample_frame
from mmoe_inspect.data.sources import TableSource
from mmoe_inspect.datasets import make_recsys, recsys_features, recsys_tasks
from mmoe_inspect.models import ModelConfig, build_model
from mmoe_inspect.reports import figures as figures_module
from mmoe_inspect.reports import render_figures
from mmoe_inspect.reports._render import (
    CpuSample,
    can_fork_helper,
    cpu_sample,
    forced_workers,
    free_cpus,
    helper_pays_off,
    parse_cpu_sample,
)
from mmoe_inspect.reports._style import save_png, save_png_savefig
from mmoe_inspect.reports.figures import FigureSpec, all_figures
from mmoe_inspect.reports.overview import OVERVIEW_DPI, overview_figure

two_cpus = pytest.mark.skipif(not can_fork_helper(), reason="needs Linux (fork) and two CPUs")


@pytest.fixture(scope="module")
def result() -> mi.InspectionResult:
    """A real inspection with every figure's data: MMoE, causal analyses with segments, attributions."""
    frame = make_recsys(2000, seed=2)
    torch.manual_seed(4)
    config = ModelConfig(
        "mmoe", recsys_features(frame), tuple(recsys_tasks()), {"n_experts": 4, "expert_hidden": (16,)}
    )
    model = build_model(config).eval()
    return mi.inspect(
        model,
        frame,
        causal={"n_boot": 20, "segment_by": "device"},
        attribution={"sample_rows": 32, "n_steps": 4},
    )


def test_one_draw_writes_the_bytes_savefig_writes(result, tmp_path: Path) -> None:
    drawn = 0
    jobs = [(name, spec.draw, 110) for name, spec in all_figures().items()]
    for name, draw, dpi in [*jobs, ("overview", overview_figure, OVERVIEW_DPI)]:
        fig = draw(result)
        if fig is None:
            continue
        save_png(fig, tmp_path / f"{name}_once.png", dpi)
        save_png_savefig(draw(result), tmp_path / f"{name}_savefig.png", dpi)
        once, ref = (
            (tmp_path / f"{name}_once.png").read_bytes(),
            (tmp_path / f"{name}_savefig.png").read_bytes(),
        )
        assert once.startswith(b"\x89PNG") and once == ref, name
        drawn += 1
    assert drawn >= 15  # every inspection figure and the overview


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


@pytest.fixture(scope="module")
def serial(result, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], dict[str, bytes]]:
    """The figures drawn by one process: the written mapping and the files."""
    folder = tmp_path_factory.mktemp("serial")
    return render_figures(result, folder, workers=1), _files(folder)


@two_cpus
def test_two_processes_write_the_files_one_writes(result, serial, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    parallel = render_figures(result, tmp_path / "two", lambda d, t: calls.append((d, t)), workers=2)
    assert parallel == serial[0] and list(parallel) == list(serial[0])  # same figures, registry order
    assert _files(tmp_path / "two") == serial[1]
    total = len(all_figures())
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def _with_figure(monkeypatch: pytest.MonkeyPatch, name: str, draw) -> None:
    first = {name: FigureSpec(name, "routing", name, draw, "test")}
    monkeypatch.setattr(figures_module, "FIGURES", first | figures_module.FIGURES)


@two_cpus
def test_a_figure_that_fails_raises_here(result, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_result):
        raise ValueError("broken figure " + ("here" if os.getpid() == parent else "in the helper"))

    parent = os.getpid()
    _with_figure(monkeypatch, "broken", broken)
    with pytest.raises(ValueError, match="broken figure here"):
        render_figures(result, tmp_path / "figures", workers=2)


@two_cpus
@pytest.mark.parametrize("failure", ["raises", "dies"])
def test_what_the_helper_does_not_deliver_is_drawn_here(
    result, serial, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """Every figure fails in the helper process (an exception, or the process vanishing at its first
    figure): this process draws them all, and the folder is the serial one."""
    parent, drawn_here = os.getpid(), []

    def wrap(draw):
        def guarded(res):
            if os.getpid() != parent:
                if failure == "dies":
                    os._exit(3)
                raise RuntimeError("helper failure")
            drawn_here.append(draw)
            return draw(res)

        return guarded

    specs = {n: replace(s, draw=wrap(s.draw)) for n, s in figures_module.FIGURES.items()}
    monkeypatch.setattr(figures_module, "FIGURES", specs)
    written = render_figures(result, tmp_path / "two", workers=2)
    assert written == serial[0] and _files(tmp_path / "two") == serial[1]
    assert len(drawn_here) == len(specs)  # the helper delivered nothing: all were drawn here


def _streamed(source: TableSource, columns, n: int, seed: int, max_scan_rows) -> pd.DataFrame:
    """The streaming sample as `sample_frame` computed it before it read chosen rows only."""
    rng = np.random.default_rng(seed)
    kept, keys = None, np.empty(0)
    for chunk in source.iter_frames(8192, columns, max_scan_rows):
        frame = chunk if kept is None else pd.concat([kept, chunk])
        keys = np.concatenate([keys, rng.random(len(chunk))])
        if len(frame) > n:
            best = np.argpartition(keys, n)[:n]
            frame, keys = frame.iloc[best], keys[best]
        kept = frame
    return kept.sort_index()


@pytest.mark.parametrize(
    ("n", "seed", "max_scan"), [(300, 0, None), (50, 3, 12_000), (40_000, 1, None), (7, 2, 5)]
)
def test_sample_of_chosen_rows_equals_the_streamed_sample(tmp_path: Path, n, seed, max_scan) -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "v": np.arange(30_000, dtype=np.int64),
            "x": rng.standard_normal(30_000),
            "c": rng.integers(0, 9, 30_000),
        }
    )
    folder = tmp_path / "parts"
    folder.mkdir()
    df.iloc[:17_000].to_parquet(folder / "a.parquet", row_group_size=5000, index=False)
    df.iloc[17_000:].to_parquet(folder / "b.parquet", row_group_size=3000, index=False)
    df.to_csv(tmp_path / "rows.csv", index=False)
    cols = ["v", "x"]
    ref = _streamed(TableSource.of(df), cols, n, seed, max_scan)
    for data in (df, folder, tmp_path / "rows.csv"):
        got = sample_frame(TableSource.of(data), cols, n, seed, max_scan)
        pd.testing.assert_frame_equal(got, ref, check_dtype=False, check_index_type=False)
        assert got.index.to_numpy().tolist() == got["v"].tolist()
    pd.testing.assert_frame_equal(
        sample_frame(TableSource.of(folder), None, n, seed, max_scan),
        _streamed(TableSource.of(folder), None, n, seed, max_scan),
    )


def test_targets_sharing_a_forward_get_what_separate_forwards_give(monkeypatch: pytest.MonkeyPatch) -> None:
    """Integrated Gradients of gates, experts and tasks (embeddings included) computed on one forward per
    group of targets equal those of one forward per target, bit for bit (Captum equality of the latter
    is `test_attribution.test_gate_attributions_equal_captum_ig_on_the_input_layer`)."""
    import mmoe_inspect.attribution.run as attribution_run

    frame = make_recsys(600, seed=5)
    torch.manual_seed(1)
    config = ModelConfig("mmoe", recsys_features(frame), tuple(recsys_tasks()), {"n_experts": 3})
    model = build_model(config).eval()
    groups: list[list[str]] = []
    plain = attribution_run.integrated_gradients

    def counted(fwd, targets, *args):
        groups.append([t.key for t in targets])
        return plain(fwd, targets, *args)

    monkeypatch.setattr(attribution_run, "integrated_gradients", counted)
    shared = mi.attribution.run_attribution(model, frame, sample_rows=24, n_steps=5, budget_seconds=None)
    assert [len(g) for g in groups] == [2, 3, 2]  # gates, experts, tasks: one forward each
    monkeypatch.setattr(attribution_run, "_share_forwards", lambda work: {t.key: [t] for t in work})
    alone = mi.attribution.run_attribution(model, frame, sample_rows=24, n_steps=5, budget_seconds=None)
    assert list(shared.per_row) == list(alone.per_row) and len(shared.per_row) == 2 + 3 + 2
    for key, values in shared.per_row.items():
        assert np.array_equal(values, alone.per_row[key]), key
    pd.testing.assert_frame_equal(shared.convergence, alone.convergence)
    pd.testing.assert_frame_equal(shared.gate_attributions, alone.gate_attributions)


@pytest.mark.parametrize("n_steps", [1, 4, 16, 50])
def test_gauss_legendre_steps_are_captums(n_steps: int) -> None:
    from captum.attr._utils.approximation_methods import approximation_parameters

    from mmoe_inspect.attribution._methods import gauss_legendre

    step_sizes, alphas = approximation_parameters("gausslegendre")
    assert gauss_legendre(n_steps) == (step_sizes(n_steps), alphas(n_steps))


def test_figure_workers_env_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMOE_INSPECT_FIGURE_WORKERS", "1")
    assert forced_workers() == 1
    monkeypatch.setenv("MMOE_INSPECT_FIGURE_WORKERS", "2")
    assert forced_workers() == (2 if can_fork_helper() else 1)
    monkeypatch.delenv("MMOE_INSPECT_FIGURE_WORKERS")
    assert forced_workers() is None  # measured


def _proc_stat(cpu0: tuple[int, ...], cpu1: tuple[int, ...]) -> str:
    """/proc/stat as Linux writes it: user nice system idle iowait irq softirq steal guest guest_nice."""
    line = " ".join
    total = tuple(a + b for a, b in zip(cpu0, cpu1, strict=True))
    return (
        f"cpu  {line(map(str, total))}\ncpu0 {line(map(str, cpu0))}\ncpu1 {line(map(str, cpu1))}\n"
        "intr 15406709 0 0 0\nctxt 123\nbtime 1700000000\nprocesses 14000\n"
    )


def _self_stat(utime: int, stime: int) -> str:
    """/proc/self/stat: pid (comm) state ... utime and stime are fields 14 and 15; comm may hold spaces."""
    return f"4242 (python x) S 1 4242 4242 0 -1 4194304 100 0 0 0 {utime} {stime} 0 0 20 0 3 0 77 1 1 1\n"


def _sample(cpu0, cpu1, own: int):
    return parse_cpu_sample(_proc_stat(cpu0, cpu1), _self_stat(own, 0), {0, 1})


def test_cpu_samples_parse_proc_stat() -> None:
    got = parse_cpu_sample(
        _proc_stat((10, 1, 5, 100, 4, 0, 2, 3, 7, 0), (20, 0, 5, 50, 0, 1, 0, 0, 0, 0)),
        _self_stat(30, 12),
        {0, 1},
    )
    # busy: everything but idle and iowait, guest not counted twice (it is in user already)
    assert got == CpuSample(busy=(10 + 1 + 5 + 2 + 3) + (20 + 5 + 1), total=125 + 76, own=42, cpus=2)
    only_cpu1 = parse_cpu_sample(_proc_stat((10,) * 8, (20, 0, 5, 50, 0, 1, 0, 0)), _self_stat(1, 1), {1})
    assert only_cpu1 == CpuSample(busy=26, total=76, own=2, cpus=1)  # this process's affinity only
    assert (
        parse_cpu_sample(_proc_stat((1,) * 8, (1,) * 8), _self_stat(1, 1), {0, 1, 2}) is None
    )  # CPU 2 unlisted
    assert parse_cpu_sample("cpu0 a b c\n", _self_stat(1, 1), {0}) is None
    assert parse_cpu_sample(_proc_stat((1,) * 8, (1,) * 8), "4242 (x) S 1", {0, 1}) is None


# two samples 10 ticks (100 ms) apart on a 2-CPU machine: (user, nice, system, idle, iowait, irq, softirq, steal)
T0 = ((1000, 0, 100, 5000, 10, 0, 5, 0), (2000, 0, 200, 4000, 20, 0, 5, 0))


def _after(busy0: int, busy1: int, iowait1: int = 0) -> tuple[tuple[int, ...], tuple[int, ...]]:
    a, b = T0
    return (
        (a[0] + busy0, a[1], a[2], a[3] + 10 - busy0, a[4], a[5], a[6], a[7]),
        (b[0] + busy1, b[1], b[2], b[3] + 10 - busy1 - iowait1, b[4] + iowait1, b[5], b[6], b[7]),
    )


@pytest.mark.parametrize(
    ("busy0", "busy1", "own", "iowait1", "free", "pays"),
    [
        (10, 0, 10, 0, 2.0, True),  # this process draws on one CPU, the other idle: fork
        (10, 1, 10, 0, 1.9, True),  # a little noise on the other CPU
        (10, 0, 10, 6, 2.0, True),  # waiting for the disk is idle
        (10, 10, 10, 0, 1.0, False),  # another job takes the other CPU: one process
        (10, 6, 10, 0, 1.4, False),  # the other CPU mostly taken
        (10, 4, 10, 0, 1.6, True),
        (10, 10, 20, 0, 1.0, False),  # our own other threads (torch spinning) take it: they count as busy
        (10, 10, 0, 0, 0.0, False),  # both CPUs taken by others
    ],
)
def test_helper_pays_off_when_a_cpu_is_free_now(busy0, busy1, own, iowait1, free, pays) -> None:
    before = _sample(*T0, own=500)
    after = _sample(*_after(busy0, busy1, iowait1), own=500 + own)
    assert free_cpus(before, after) == pytest.approx(free)
    assert helper_pays_off(before, after) is pays


def test_no_helper_without_samples() -> None:
    s = _sample(*T0, own=5)
    assert not helper_pays_off(None, s) and not helper_pays_off(s, None)
    assert free_cpus(s, s) == 0.0  # no time passed: nothing known
    assert cpu_sample() is None or cpu_sample().cpus == len(os.sched_getaffinity(0))


@two_cpus
@pytest.mark.parametrize("idle", [True, False])
def test_helper_forks_only_when_the_cpus_were_free(
    result, serial, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, idle: bool
) -> None:
    """The window's samples decide (here fabricated): a free CPU gets a helper after the first figure, a
    busy machine none; the files are the serial ones either way."""
    from mmoe_inspect.reports import _render

    monkeypatch.delenv("MMOE_INSPECT_FIGURE_WORKERS", raising=False)
    samples = iter([_sample(*T0, own=0), _sample(*_after(10, 0 if idle else 10), own=10)])
    monkeypatch.setattr(_render, "cpu_sample", lambda: next(samples))
    parent, pids = os.getpid(), tmp_path / "pids"
    pids.mkdir()

    def wrap(name, draw):
        def recorded(res):
            (pids / name).write_text(str(os.getpid()))
            return draw(res)

        return recorded

    specs = {n: replace(s, draw=wrap(n, s.draw)) for n, s in figures_module.FIGURES.items()}
    monkeypatch.setattr(figures_module, "FIGURES", specs)
    written = render_figures(result, tmp_path / "figs")
    assert written == serial[0] and _files(tmp_path / "figs") == serial[1]
    who = {p.name: int(p.read_text()) for p in pids.iterdir()}
    assert who[figures_module.OPENER] == parent  # drawn here while the CPUs were measured
    helped = {n for n, pid in who.items() if pid != parent}
    assert bool(helped) is idle, helped
    assert next(samples, None) is None  # measured once: before and after the first figure


def test_drawing_order_opens_short_then_slowest_first() -> None:
    keys = ["task_outputs", "training_loss", "overview", "effective_experts", "weight_distributions"]
    order = figures_module.drawing_order(keys)
    assert order[0] == figures_module.OPENER
    assert order[1:] == ["weight_distributions", "overview", "task_outputs", "training_loss"]
    assert set(figures_module.FIGURE_SECONDS) <= set(all_figures()) | {"overview"}


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=two_cpus)])
def test_meanwhile_runs_once_beside_the_figures(result, serial, tmp_path: Path, workers: int) -> None:
    """The caller's other work (`write_report`'s tables and metrics.json) runs once, in this process,
    on one process as on two; the figures are the serial ones."""
    calls: list[int] = []
    written = render_figures(
        result, tmp_path / "f", workers=workers, meanwhile=lambda: calls.append(os.getpid())
    )
    assert calls == [os.getpid()]
    assert written == serial[0] and _files(tmp_path / "f") == serial[1]


@two_cpus
def test_no_helper_in_a_process_group(tmp_path: Path) -> None:
    """A rank of a torch.distributed group (torchrun's rank 0 writes the report) forks no helper: its
    communication threads and sockets would be copied into the fork."""
    import torch.distributed as dist

    from mmoe_inspect.reports._render import render_all

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert not can_fork_helper()
        pids: list[int] = []
        jobs = [(f"j{i}", lambda _r: pids.append(os.getpid()), tmp_path / f"{i}.png", 50) for i in range(6)]
        render_all(None, jobs, workers=2)
        assert pids == [os.getpid()] * 6  # all drawn here
    finally:
        dist.destroy_process_group()
    assert can_fork_helper()


@two_cpus
def test_a_helper_that_cannot_start_leaves_the_figures_to_this_process(
    result, serial, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mmoe_inspect.reports._render as render

    def refused(*_args, **_kwargs):
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(render, "fork_helper", refused)
    written = render_figures(result, tmp_path / "f", workers=2)
    assert written == serial[0] and _files(tmp_path / "f") == serial[1]
