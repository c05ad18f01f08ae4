"""Golden test: the demo's numbers on a fixed seed equal the checked-in copies in `tests/golden/demo/`.

The session's demo (conftest's `demo_dir`: `mmoe-inspect demo --rows 5000 --monitor`, seed 0, one torch
thread) writes `report/metrics.json`, `report/tables/*.csv` and `model_comparison.csv`; each is compared
with its golden copy, every value, floats within rel 1e-9 / abs 1e-12 (two runs on one machine agree
bit for bit; the tolerance only absorbs the last digits of a different summation order). A refactor
that must not change results (issue 18: binding layer, one recording loop, typed results) keeps this
test green; anything else shows up here, path by path.

Two tiers. Where the copies were made (`platform.json`: torch build, CPU kernel set, architecture,
vendor) the comparison is exact as above; on another CPU the float32 model rounds differently and
training carries that into every number, so there the exact test skips (saying so in the `-ra`
summary) and the cross-platform one compares every key, string and integer exactly and floats within
rel 1e-3 / abs 1e-5 (the measured spread, with margin: see CROSS_PLATFORM).

Not compared, and only these (VOLATILE below, each with its reason): wall-clock timings and rates.
The absolute path of the demo folder is replaced by `<demo>` before comparing (so `data` is compared
as `<demo>/eval.parquet`, not skipped).

Golden files change only with a deliberate, reviewed change of numbers: a change that is meant to move
results (a new statistic, a fixed bug, another default), named in its commit message, with the golden
diff reviewed like code. Regenerate them with

    MMOE_REGENERATE_GOLDEN=1 python -m pytest -p no:cacheprovider tests/test_golden.py
    # or: python tests/test_golden.py --regenerate   (runs the line above)

then read `git diff tests/golden/` before committing it. The numbers depend on the torch build and the
CPU's kernels (training amplifies the last bit): the copies were made with torch 2.13.0 (CPU) on x86-64;
another torch version may need a regeneration, which is then a reviewed change like any other.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

GOLDEN = Path(__file__).parent / "golden" / "demo"
REGENERATE_ENV = "MMOE_REGENERATE_GOLDEN"
EXACT = (1e-9, 1e-12)  # (rel, abs) on the platform the copies were made on: two runs agree bit for bit
# On another CPU kernel set the float32 model rounds differently (measured on this machine by forcing
# ATEN_CPU_CAPABILITY=avx2 and =default: every difference is a float, the largest 1.4e-4 relative
# above 1e-6 absolute, from an AUC whose ranking swapped two rows that differ in the last float32 bit).
CROSS_PLATFORM = (1e-3, 1e-5)

VOLATILE: dict[str, str] = {  # dotted path in metrics.json -> why it varies from run to run
    "meta.record_seconds": "wall-clock time of the recording pass",
    "meta.rows_per_second": "rows over wall-clock time",
    "meta.ride_seconds": "wall-clock time of the causal work riding along the recording pass",
    "causal.meta.prepare_seconds": "wall-clock time of the causal pre-pass and first-batch check",
    "causal.meta.collect_seconds": "wall-clock time of the causal passes",
    "causal.meta.collect_beside_seconds": "wall-clock time of the riding causal work in its worker thread",
    "causal.meta.evaluate_seconds": "wall-clock time of the causal bootstrap",
    "causal.meta.seconds": "wall-clock time of the causal analyses",
    "attribution.meta.seconds": "wall-clock time of the attributions",
    "attribution.meta.seconds_per_output": "wall-clock time per attribution target",
}
DEMO_PATH = "<demo>"  # stands for the demo's tmp folder in every string


def _without_volatile(value: Any, path: str = "") -> Any:
    if isinstance(value, dict):
        return {
            k: _without_volatile(v, f"{path}.{k}" if path else k)
            for k, v in value.items()
            if (f"{path}.{k}" if path else k) not in VOLATILE
        }
    if isinstance(value, list):
        return [_without_volatile(v, path) for v in value]
    return value


def _replace_path(value: Any, folders: tuple[str, ...]) -> Any:
    if isinstance(value, dict):
        return {k: _replace_path(v, folders) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_path(v, folders) for v in value]
    if isinstance(value, str):
        for folder in folders:
            value = value.replace(folder, DEMO_PATH)
    return value


def normalized_metrics(metrics_file: Path, demo: Path) -> dict[str, Any]:
    """metrics.json without the VOLATILE keys, the demo folder's absolute path written as `<demo>`."""
    metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    folders = tuple(sorted({str(demo.resolve()), str(demo.absolute())}, key=len, reverse=True))
    return _replace_path(_without_volatile(metrics), folders)


def _same_float(a: float, b: float, tol: tuple[float, float]) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or math.isclose(a, b, rel_tol=tol[0], abs_tol=tol[1])


def compare_json(golden: Any, now: Any, tol: tuple[float, float], path: str = "") -> list[str]:
    """Every difference between two JSON values, as 'path: golden -> now' (types must match: an int
    that became a float is a change of the file)."""
    where = path or "<top>"
    if type(golden) is not type(now):
        return [f"{where}: {golden!r} ({type(golden).__name__}) -> {now!r} ({type(now).__name__})"]
    if isinstance(golden, dict):
        out = [f"{where}: key {k!r} is gone" for k in golden if k not in now]
        out += [f"{where}: new key {k!r} = {now[k]!r:.80}" for k in now if k not in golden]
        for k in golden:
            if k in now:
                out += compare_json(golden[k], now[k], tol, f"{path}.{k}" if path else k)
        return out
    if isinstance(golden, list):
        if len(golden) != len(now):
            return [f"{where}: {len(golden)} items -> {len(now)}"]
        return [
            d
            for i, (g, n) in enumerate(zip(golden, now, strict=True))
            for d in compare_json(g, n, tol, f"{path}[{i}]")
        ]
    if isinstance(golden, float):
        return [] if _same_float(golden, now, tol) else [f"{where}: {golden!r} -> {now!r}"]
    return [] if golden == now else [f"{where}: {golden!r:.120} -> {now!r:.120}"]


def _number(text: str) -> tuple[float, bool] | None:
    """The cell as a float and whether it is written as an integer; None when it is not a number."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value, text.strip().lstrip("+-").isdigit()


def compare_csv(golden_file: Path, now_file: Path, name: str, tol: tuple[float, float]) -> list[str]:
    """Every difference between two CSV files: header, row count, then cell by cell (numbers within the
    tolerance when both are written the same way, integer or not; other cells exactly)."""
    with golden_file.open(newline="", encoding="utf-8") as f:
        golden = list(csv.reader(f))
    with now_file.open(newline="", encoding="utf-8") as f:
        now = list(csv.reader(f))
    if not golden or not now or golden[0] != now[0]:
        return [f"{name}: header {golden[:1]} -> {now[:1]}"]
    header = golden[0]
    if len(golden) != len(now):
        return [f"{name}: {len(golden) - 1} rows -> {len(now) - 1}"]
    out = []
    for i, (g_row, n_row) in enumerate(zip(golden[1:], now[1:], strict=True), start=1):
        if len(g_row) != len(n_row):
            out.append(f"{name} row {i}: {len(g_row)} cells -> {len(n_row)}")
            continue
        for column, g, n in zip(header, g_row, n_row, strict=True):
            if g == n:
                continue
            g_num, n_num = _number(g), _number(n)
            if g_num and n_num and g_num[1] == n_num[1] and _same_float(g_num[0], n_num[0], tol):
                continue
            out.append(f"{name} row {i} {column}: {g!r:.80} -> {n!r:.80}")
    return out


def demo_outputs(demo: Path) -> dict[str, Path]:
    """The compared files of a demo folder, by their name under the golden folder."""
    report = demo / "report"
    files = {"model_comparison.csv": demo / "model_comparison.csv"}
    files.update({f"tables/{p.name}": p for p in sorted((report / "tables").glob("*.csv"))})
    return files


def write_golden(demo: Path, golden: Path = GOLDEN) -> None:
    """Replace the golden copies with this demo's files (metrics.json normalized, as compared)."""
    if golden.exists():
        shutil.rmtree(golden)
    (golden / "tables").mkdir(parents=True)
    metrics = normalized_metrics(demo / "report" / "metrics.json", demo)
    text = json.dumps(metrics, indent=1, ensure_ascii=False, allow_nan=True) + "\n"
    (golden / "metrics.json").write_text(text, encoding="utf-8")
    for name, path in demo_outputs(demo).items():
        shutil.copyfile(path, golden / name)


def differences(demo: Path, golden: Path = GOLDEN, tol: tuple[float, float] = EXACT) -> list[str]:
    """Every difference between a demo folder's outputs and the golden copies (empty: identical)."""
    out = compare_json(
        json.loads((golden / "metrics.json").read_text(encoding="utf-8")),
        normalized_metrics(demo / "report" / "metrics.json", demo),
        tol,
        "metrics.json",
    )
    now = demo_outputs(demo)
    kept = {f"tables/{p.name}" for p in (golden / "tables").glob("*.csv")} | {"model_comparison.csv"}
    out += [f"{name}: no longer written" for name in sorted(kept - set(now))]
    out += [f"{name}: new file (no golden copy)" for name in sorted(set(now) - kept)]
    for name in sorted(kept & set(now)):
        out += compare_csv(golden / name, now[name], name, tol)
    return out


def kernel_platform() -> dict[str, str]:
    """What decides the float32 rounding of the demo's training: the torch build, the CPU kernels torch
    dispatches to, the CPU's architecture and vendor (MKL picks its code path by vendor)."""
    import platform

    import torch

    vendor = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("vendor_id"):
                vendor = line.split(":", 1)[1].strip()
                break
    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
        "cpu_vendor": vendor or platform.processor(),
    }


def _report(found: list[str], what: str) -> str:
    shown = "\n".join(found[:40]) + (f"\n... and {len(found) - 40} more" if len(found) > 40 else "")
    return (
        f"the demo's outputs differ from tests/golden/demo/ {what} in {len(found)} place(s) "
        f"(golden -> now):\n{shown}\nIf this change of numbers is intended, regenerate with "
        f"{REGENERATE_ENV}=1 (see this file's docstring) and have the golden diff reviewed."
    )


def test_demo_metrics_and_tables_equal_the_golden_copies(demo_dir: Path) -> None:
    """Exactly (rel 1e-9 / abs 1e-12) where the copies were made; elsewhere the test below compares."""
    if os.environ.get(REGENERATE_ENV) == "1":
        write_golden(demo_dir)
        (GOLDEN / "platform.json").write_text(
            json.dumps(kernel_platform(), indent=1) + "\n", encoding="utf-8"
        )
        pytest.skip(
            f"{REGENERATE_ENV}=1: golden files rewritten in {GOLDEN}; review `git diff tests/golden/`"
        )
    assert (GOLDEN / "metrics.json").exists(), f"no golden files: run with {REGENERATE_ENV}=1 once"
    made_on = json.loads((GOLDEN / "platform.json").read_text(encoding="utf-8"))
    here = kernel_platform()
    if here != made_on:
        pytest.skip(
            f"golden files made on {made_on}, this machine is {here}: float32 kernels round differently, "
            "so only the cross-platform comparison runs (regenerate locally for an exact before/after check)"
        )
    found = differences(demo_dir, tol=EXACT)
    assert not found, _report(found, "exactly")


def test_demo_metrics_and_tables_equal_the_golden_copies_on_any_cpu(demo_dir: Path) -> None:
    """On any CPU: every key, row, string and integer as in the copies, floats within float32 rounding
    of another kernel set (CROSS_PLATFORM)."""
    if os.environ.get(REGENERATE_ENV) == "1":
        pytest.skip(f"{REGENERATE_ENV}=1: the golden files are being rewritten")
    found = differences(demo_dir, tol=CROSS_PLATFORM)
    assert not found, _report(
        found, f"beyond float32 rounding (rel {CROSS_PLATFORM[0]}, abs {CROSS_PLATFORM[1]})"
    )


def test_the_comparison_sees_small_changes(demo_dir: Path, tmp_path: Path) -> None:
    """The comparison itself, on a copy of the demo: a relative change of 1e-7 in one metric and in one
    table cell, and a renamed key, are each reported; a change of 1e-13 is within the tolerance."""
    demo = tmp_path / "demo"
    shutil.copytree(demo_dir, demo, ignore=shutil.ignore_patterns("*.pt", "*.png", "*.parquet", "*.html"))
    golden = tmp_path / "golden"
    write_golden(demo, golden)
    assert differences(demo, golden) == []

    metrics_file = demo / "report" / "metrics.json"
    metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    auc = metrics["tables"]["tasks"][0]["auc"]
    metrics["tables"]["tasks"][0]["auc"] = auc * (1 + 1e-13)
    metrics_file.write_text(json.dumps(metrics), encoding="utf-8")
    assert differences(demo, golden) == []
    metrics["tables"]["tasks"][0]["auc"] = auc * (1 + 1e-7)
    metrics["meta"]["record_seconds"] = 1e6  # volatile: never reported
    metrics["n_rows_renamed"] = metrics.pop("n_rows")
    metrics_file.write_text(json.dumps(metrics), encoding="utf-8")
    found = differences(demo, golden)
    assert any(d.startswith("metrics.json.tables.tasks[0].auc:") for d in found), found
    assert "metrics.json: key 'n_rows' is gone" in found and len(found) == 3, found

    table = demo / "report" / "tables" / "utilization.csv"
    rows = list(csv.reader(table.open(newline="", encoding="utf-8")))
    column = next(j for j, c in enumerate(rows[1]) if _number(c) and not _number(c)[1] and float(c) != 0)
    rows[1][column] = repr(float(rows[1][column]) * (1 + 1e-7))
    with table.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    assert any(
        d.startswith(f"tables/utilization.csv row 1 {rows[0][column]}:") for d in differences(demo, golden)
    )


if __name__ == "__main__":  # python tests/test_golden.py --regenerate
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit("usage: python tests/test_golden.py --regenerate")
    os.environ[REGENERATE_ENV] = "1"
    sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-rs", __file__]))
