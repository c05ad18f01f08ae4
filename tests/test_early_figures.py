"""The recording pass's figures drawn early (`reports.EarlyFigures`) are the files a serial run writes.

`inspect(on_recorded=early.start)` forks a helper process as soon as the recording pass is done; it draws
`RECORDING_FIGURES` while the attributions and causal analyses run, and `write_report(early=early)`
takes its files. Checked here on a real inspection (MMoE, causal analyses with segments, attributions):
byte-identical figures and report files; `on_recorded` sees the result before the analyses; a helper
that fails, dies or is slow is covered by this process; a result changed after the start is never
shown with stale figures; the helper and its temp folder are gone after the `with` block, also on errors.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import mmoe_inspect as mi
from mmoe_inspect.datasets import make_recsys, recsys_features, recsys_tasks
from mmoe_inspect.models import ModelConfig, build_model
from mmoe_inspect.reports import EarlyFigures, render_figures, write_report
from mmoe_inspect.reports import figures as figures_module
from mmoe_inspect.reports._render import CpuSample, can_fork_helper
from mmoe_inspect.reports.early import free_cpus_over
from mmoe_inspect.reports.figures import FIGURES, RECORDING_FIGURES

two_cpus = pytest.mark.skipif(not can_fork_helper(), reason="needs Linux (fork) and two CPUs")
ANALYSES = {
    "causal": {"n_boot": 20, "segment_by": "device"},
    "attribution": {"sample_rows": 32, "n_steps": 4},
}


@pytest.fixture(scope="module")
def model_and_frame():
    frame = make_recsys(2000, seed=2)
    torch.manual_seed(4)
    config = ModelConfig(
        "mmoe", recsys_features(frame), tuple(recsys_tasks()), {"n_experts": 4, "expert_hidden": (16,)}
    )
    return build_model(config).eval(), frame


@pytest.fixture(scope="module")
def result(model_and_frame) -> mi.InspectionResult:
    model, frame = model_and_frame
    return mi.inspect(model, frame, **ANALYSES)


@pytest.fixture(scope="module")
def serial(result, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], dict[str, bytes]]:
    folder = tmp_path_factory.mktemp("serial")
    return render_figures(result, folder, workers=1), _files(folder)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_the_recording_figures_read_only_the_recording() -> None:
    assert set(FIGURES) >= RECORDING_FIGURES
    sections = {FIGURES[k].section for k in RECORDING_FIGURES}
    assert sections <= {"summary", "routing", "experts", "tasks"}
    assert not any(k.startswith(("causal", "attribution")) for k in RECORDING_FIGURES)


def test_on_recorded_sees_the_recording_before_the_analyses(model_and_frame) -> None:
    model, frame = model_and_frame
    seen: list[tuple] = []

    def on_recorded(r: mi.InspectionResult) -> None:
        seen.append((r, r.causal, r.attribution, set(r.tables)))

    out = mi.inspect(model, frame, on_recorded=on_recorded, **ANALYSES)
    assert len(seen) == 1
    same, causal, attribution, tables = seen[0]
    assert same is out and causal is None and attribution is None
    assert {"utilization", "gate_metrics", "tasks"} <= tables
    assert out.causal is not None and out.attribution is not None  # attached after the call

    seen.clear()
    mi.inspect(model, frame, on_recorded=on_recorded)  # no analyses: still called, once
    assert len(seen) == 1


@two_cpus
def test_a_report_with_early_figures_is_the_serial_report(model_and_frame, tmp_path: Path) -> None:
    model, frame = model_and_frame
    with EarlyFigures(workers=2) as early:
        res = mi.inspect(model, frame, on_recorded=early.start, **ANALYSES)
        assert early.started
        folder = early._folder
        assert folder is not None and folder.is_dir()
        assert early.claim(res) == RECORDING_FIGURES  # the helper's files are the ones used
        write_report(res, tmp_path / "early", early=early)
        assert not early.started  # finished: helper joined, temp folder removed
    assert not folder.exists()
    write_report(res, tmp_path / "plain")
    a, b = _files(tmp_path / "early"), _files(tmp_path / "plain")
    assert len(a) >= 17 and a == b  # every figure and the overview slide, byte for byte
    for name in ("index.html", "metrics.json"):
        assert (tmp_path / "early" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()


@two_cpus
def test_progress_counts_every_figure_once(result, serial, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    with EarlyFigures(workers=2) as early:
        early.start(result)
        written = render_figures(result, tmp_path / "f", lambda d, t: calls.append((d, t)), early=early)
    assert written == serial[0] and list(written) == list(serial[0]) and _files(tmp_path / "f") == serial[1]
    total = len(figures_module.all_figures())
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def _in_helper(monkeypatch: pytest.MonkeyPatch, behave) -> list[str]:
    """Wrap every recording figure's drawing function: `behave(key)` runs in the helper process; the keys
    drawn in this process are returned (appended as they are drawn)."""
    parent, here = os.getpid(), []

    def wrap(key, draw):
        def guarded(res):
            if os.getpid() != parent:
                behave(key)
            else:
                here.append(key)
            return draw(res)

        return guarded

    specs = {n: replace(s, draw=wrap(n, s.draw)) if n in RECORDING_FIGURES else s for n, s in FIGURES.items()}
    monkeypatch.setattr(figures_module, "FIGURES", specs)
    return here


@two_cpus
@pytest.mark.parametrize("failure", ["raises", "dies"])
def test_what_the_helper_does_not_deliver_is_drawn_here(
    result, serial, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    def behave(_key):
        if failure == "dies":
            os._exit(3)
        raise RuntimeError("helper failure")

    here = _in_helper(monkeypatch, behave)
    with EarlyFigures(workers=2) as early:
        early.start(result)
        time.sleep(0.5)  # the helper fails at its first figure meanwhile
        written = render_figures(result, tmp_path / "f", early=early)
    assert written == serial[0] and _files(tmp_path / "f") == serial[1]
    assert sorted(here) == sorted(RECORDING_FIGURES)  # all drawn here


@two_cpus
def test_this_process_takes_what_a_slow_helper_has_not_begun(
    result, serial, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = _in_helper(monkeypatch, lambda _key: time.sleep(1.0))
    with EarlyFigures(workers=2) as early:
        early.start(result)
        written = render_figures(result, tmp_path / "f", early=early)
    assert written == serial[0] and _files(tmp_path / "f") == serial[1]
    assert 0 < len(here) < len(RECORDING_FIGURES)  # the helper drew a few, this process the rest


@two_cpus
def test_a_result_changed_after_the_start_gets_fresh_figures(
    result, serial, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = _in_helper(monkeypatch, lambda _key: None)
    with EarlyFigures(workers=2) as early:
        early.start(result)
        folder = early._folder
        changed = replace(result, tables=dict(result.tables))  # another object: the same numbers
        assert early.claim(changed) == frozenset() and not early.started and not folder.exists()
        # one process (a `_render` helper would draw some of them in another process, unseen by `here`)
        written = render_figures(changed, tmp_path / "f", workers=1, early=early)
    assert written == serial[0] and _files(tmp_path / "f") == serial[1]
    assert sorted(here) == sorted(RECORDING_FIGURES)

    with EarlyFigures(workers=2) as early:  # the same object, a table replaced in it
        early.start(result)
        saved = result.tables["utilization"]
        try:
            result.tables["utilization"] = saved.copy()
            assert early.claim(result) == frozenset() and not early.started
        finally:
            result.tables["utilization"] = saved


@two_cpus
def test_an_error_stops_the_helper_and_removes_its_folder(result) -> None:
    with pytest.raises(KeyboardInterrupt), EarlyFigures(workers=2) as early:
        early.start(result)
        proc, folder = early._proc, early._folder
        assert proc.is_alive() and folder.is_dir()
        raise KeyboardInterrupt
    assert not proc.is_alive() and not folder.exists()


def test_no_helper_where_it_does_not_pay_off(result, serial, tmp_path: Path, monkeypatch) -> None:
    with EarlyFigures(workers=1) as early:
        early.start(result)
        assert not early.started
        assert render_figures(result, tmp_path / "f", workers=1, early=early) == serial[0]
    monkeypatch.setenv("MMOE_INSPECT_FIGURE_WORKERS", "1")
    with EarlyFigures() as early:
        early.start(result)
        assert not early.started


@pytest.mark.parametrize(
    ("busy", "own", "free"),
    [
        (100, 100, 2.0),  # all busy ticks are this process's (its torch threads and the statistics worker)
        (150, 100, 1.5),  # others took half a CPU
        (200, 100, 1.0),
        (200, 0, 0.0),
        (100, 300, 2.0),  # own ticks beyond the window's (a clock skew) count as nothing of others
    ],
)
def test_free_cpus_over_the_recording(busy: int, own: int, free: float) -> None:
    before = CpuSample(busy=0, total=0, own=0, cpus=2)
    after = CpuSample(busy=busy, total=200, own=own, cpus=2)  # a window of 100 ticks per CPU
    assert free_cpus_over(before, after) == pytest.approx(free)
