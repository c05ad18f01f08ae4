"""`bench/paper_benchmark.py --quick` end to end, and the statistics its tables rest on.

The quick run trains every architecture of both sweeps on 2 seeds x 2 relatedness values with a
budget too small to converge, inspects each MMoE with the library, and writes tables, a summary JSON
and three figures. Checked: the files exist and the PNGs are images, every interval in the tables
is finite and holds its point (lo <= point <= hi), every MMoE was inspected, and the too-small
budget is reported as not converged (the benchmark must never pass an unconverged model silently).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is created
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_t_interval_matches_student_t() -> None:
    stats = pytest.importorskip("scipy.stats")
    report = _load("_paper_report")
    rng = np.random.default_rng(3)
    for n in (2, 5, 10, 31, 40):
        v = rng.normal(1.0, 2.0, n)
        mean, lo, hi = report.t_interval(v)
        want = stats.t.interval(0.95, n - 1, loc=v.mean(), scale=v.std(ddof=1) / math.sqrt(n))
        assert mean == pytest.approx(v.mean())
        half = (want[1] - want[0]) / 2
        assert lo == pytest.approx(want[0], abs=1e-3 * half) and hi == pytest.approx(want[1], abs=1e-3 * half)


def test_spearman_sees_a_planted_monotone_relation() -> None:
    report = _load("_paper_report")
    x = np.arange(30.0)
    noisy = np.exp(x / 5) + np.random.default_rng(0).normal(0.0, 3.0, 30)  # rising, not linear, not perfect
    r, lo, hi = report.spearman(x, noisy)
    assert 0.5 < r < 1.0 and 0.0 < lo <= r <= hi < 1.0
    r, lo, hi = report.spearman(x, np.random.default_rng(1).normal(size=30))  # unrelated: interval spans 0
    assert lo < 0.0 < hi
    r, lo, hi = report.spearman(x, -x)
    assert r == pytest.approx(-1.0) and math.isnan(lo)  # |r| = 1: no Fisher-z interval


@pytest.mark.slow
def test_quick_benchmark_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("paper_benchmark")
    bench.main(["--quick", "--out", str(tmp_path)])

    names = ["paper_benchmark.md", "paper_benchmark.json", "paper_benchmark_summary.json"]
    figures = [
        "paper_benchmark_routing.png",
        "paper_benchmark_curves.png",
        "paper_benchmark_trainability.png",
    ]
    for name in names + figures:
        assert (tmp_path / name).stat().st_size > 0, name
    for name in figures:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    report = json.loads((tmp_path / "paper_benchmark.json").read_text(encoding="utf-8"))
    tables = json.loads((tmp_path / "paper_benchmark_summary.json").read_text(encoding="utf-8"))
    # 2 rhos x 2 seeds: synthetic 5 models, recommender 4 models per cell
    assert len(report["runs"]) == 2 * 2 * (5 + 4)
    # every MMoE inspected without error: 2 synthetic configurations + the recommender
    assert len(report["views"]) == 2 * 2 * 3
    assert all("error" not in v for v in report["views"])
    for v in report["views"]:
        assert 0.0 <= v["jsd_per_row"] <= math.log(2) + 1e-9
        assert all(1.0 <= e <= 16.0 for e in v["effective_experts"].values())

    intervals = [(r["point"], r["lo"], r["hi"]) for r in tables["leads"] + tables["gains"] + tables["trend"]]
    intervals += [(r["mean"], r["lo"], r["hi"]) for r in tables["trainability"]]
    for key in ("jsd_per_row", "mi_normalized", "importance_cosine"):
        intervals += [(r[key], r[f"{key}_lo"], r[f"{key}_hi"]) for r in tables["routing"]]
    assert (
        len(tables["leads"]) == 2 * 2 * 3
        and len(tables["gains"]) == 2 * 7
        and len(tables["routing"]) == 2 * 3
    )
    for point, lo, hi in intervals:
        assert all(math.isfinite(x) for x in (point, lo, hi)), (point, lo, hi)
        assert lo <= point <= hi
    assert len(tables["trend"]) == 2 * 3  # lead at rho 0.5 minus lead at rho 1, per configuration and pair
    for row in tables["leads"] + tables["gains"] + tables["trend"]:
        assert row["n"] == 2  # paired over both seeds

    md = (tmp_path / "paper_benchmark.md").read_text(encoding="utf-8")
    assert "--quick (NOT the full run)" in md
    for heading in ("## Synthetic: paired leads", "## Recommender:", "## Trainability", "## The tool's view"):
        assert heading in md
    # 6 (synthetic) or 4 (recommender) epochs cannot reach a plateau: each run is named as not converged
    assert not any(r["converged"] for r in report["runs"])
    assert "Not converged: none" not in md
    assert capsys.readouterr().out.count("NOT CONVERGED:") == len(report["runs"])
