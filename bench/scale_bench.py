"""Speed and scale of an inspection, in one run: recording ratios, streaming memory, report stages, ablation.

Run by hand from the repository root (not a unit test; about 10-15 minutes on 2 shared CPU cores)::

    python bench/scale_bench.py                       # everything
    python bench/scale_bench.py --parts recording,e2e --threads 1,2
    python bench/scale_bench.py --quick               # small sizes, few repetitions: checks the script runs

It builds its own models and data (nothing is downloaded) and prints side by side:

``recording``  (a) the recording pass vs the plain forward on PRE-BUILT tensors, batch 4096, under
    ``torch.inference_mode()``: everything `inspect()` does per batch with its DEFAULT config (gate
    and expert hooks, `GateStats` per gate, `PairwiseRoutingStats`, task outputs, `ExpertStats` at
    the sample rate `inspect()` uses on a ``--rate-rows``-row source, 16,384 / 1M by default), minus
    reading the data. Models: MMoE 8 experts [256, 128] on a 128-wide input, 3 tasks (target <= 1.10)
    and the MMoE paper's tiny model, 8 experts of 16 units, d = 100, 2 tasks (target <= 1.5). The
    harness is ``bench/record_bench.py``'s: interleaved shuffled repetitions, ratio = median of the
    per-repetition ratios (ratio of minima in brackets).
``e2e``  (b) the honest user comparison: the whole ``inspect(model, source)`` call vs a plain
    scoring loop that reads the same rows from the same source and runs the forward (DataFrame:
    ``df.iloc`` slices -> ``to_numpy(float32)`` -> ``torch.from_numpy``; parquet:
    ``pyarrow.ParquetFile.iter_batches`` -> numpy -> tensor). Interleaved, ratio of minima.
``memory``  rows/s and peak RSS of ``inspect(parquet)`` for 1M and 4M rows, each in a fresh child
    process (``bench/record_bench.py`` part 1); target: peak(4M) / peak(1M) <= 1.10.
``report``  `report` vs `check` on the same rows (``--report-rows``, 1M and 4M by default), each in a
    fresh child process per (rows, threads): `check` = load + recording pass; `report` = the call the
    CLI makes (`LoadedModel.inspect` with attributions and causal analyses on every row, and the
    report's `EarlyFigures` helper started by ``on_recorded`` as the CLI starts it) split by
    stage from the library's own progress events, then figures and HTML (timed by wrapping
    ``reports.write.render_figures``/``render_html``; the figures stage includes waiting for the early
    helper); the stages partition the wall time (work overlapped in a worker thread or the helper counts
    where the caller waits for it); peak RSS per run (``VmHWM``: the child's own, reset by exec, not
    ``ru_maxrss``, which folds in the parent's RSS at the fork; the early figures' helper process is not in
    it) and peak(largest) /
    peak(smallest) per thread count (target <= 1.25); the stage sum is cross-checked once against one
    end-to-end ``mmoe-inspect report`` process.
``ablation``  cached vs naive expert ablation over ``--ablation-rows`` rows
    (``bench/ablation_bench.py``).

The allocator: by default this process and the report part's children tune glibc's malloc as the
``mmoe-inspect`` command does at its start (`mmoe_inspect.allocator.tune_allocator`), so the recording,
e2e, report and ablation parts measure what a CLI user gets; ``--allocator system`` leaves glibc's
defaults (it sets ``MMOE_INSPECT_ALLOCATOR=system`` for every child, the CLI cross-check included), which
is what a library user gets without opting in. The memory part's children (``bench/record_bench.py``)
run the library's `inspect()` and never tune. The output says which was used.

Writes ``scale_bench.json`` and ``scale_bench.md`` under ``--out`` (default ``bench/results``) with the
machine, torch version, threads, load averages and git commit, so runs can be compared.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import record_bench as rb

RESULTS = Path(__file__).parent / "results"
PARTS = ("recording", "e2e", "memory", "report", "ablation")
EXPERT_SAMPLE_ROWS = 16_384  # InspectConfig.expert_sample_rows
CHUNK_BATCHES = 16_384 // 4096  # InspectConfig.stats_chunk_rows / batch: batches per statistics update


def log(msg: str) -> None:
    print(msg, flush=True)


def setup_allocator(choice: str) -> dict[str, Any]:
    """Tune glibc's malloc as the CLI does (`choice` "cli"), or leave it and tell every child to
    (`choice` "system"), before anything large is allocated; returns what was done, for the output."""
    from mmoe_inspect.allocator import ENV_VAR, tune_allocator

    if choice == "system":
        os.environ[ENV_VAR] = "system"  # inherited by the children, and the CLI cross-check
    t = tune_allocator()
    return {"choice": choice, "applied": t.applied, "reason": t.reason}


def machine() -> dict[str, Any]:
    import torch

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    return {
        "machine": platform.machine(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads_default": torch.get_num_threads(),
        **rb.code_version(),
    }


# --------------------------------------------------------------------------- (a) pre-built tensors
def part_recording(threads: list[int], rate_rows: int, quick: bool) -> dict[str, Any]:
    import torch

    rate = min(1.0, EXPERT_SAMPLE_ROWS / rate_rows)
    out: dict[str, Any] = {"expert_sample_rate": rate, "rate_rows": rate_rows, "models": {}}
    for name, spec in rb.overhead_models().items():
        model, d = spec["model"], spec["d"]
        x, lab = rb.make_inputs(model, d)
        plain = copy.deepcopy(model).eval()
        # as inspect() runs it (statistics in the worker thread, InspectConfig.overlap_stats), and the
        # synchronous pass (the statistics in the caller, as before session 6) for an A/B in one run
        rec = rb.RecordingPass(model, experts=True, outputs=True, sample_rate=rate, background=True)
        rec_sync = rb.RecordingPass(model, experts=True, outputs=True, sample_rate=rate)
        gates_only = rb.RecordingPass(model, experts=False, outputs=True, background=True)
        x0, lab0 = rb.make_inputs(model, d, seed=1)
        with torch.inference_mode():  # half a chunk: each timed call fills its chunk at its 2nd batch
            for p in (rec, rec_sync, gates_only):
                for _ in range(CHUNK_BATCHES // 2):
                    p.step(x0, lab0)
        entry: dict[str, Any] = {"target": spec["target"], "threads": {}}
        try:
            for nt in threads:
                torch.set_num_threads(nt)
                # a timed call = one statistics chunk of batches (inspect() updates its statistics once
                # per `stats_chunk_rows` rows), so every call carries its share of the updates; with the
                # worker thread it ends waiting for the chunk's update (submitted at its 2nd batch, so it
                # overlaps two forwards, not the four it overlaps in inspect()): nothing spills over
                fns = {
                    "plain": lambda m=plain, x=x: [m(x) for _ in range(CHUNK_BATCHES)],
                    "recording": lambda p=rec, x=x, lab=lab: (
                        [p.step(x, lab) for _ in range(CHUNK_BATCHES)],
                        p.wait(),
                    ),
                    "recording_sync": lambda p=rec_sync, x=x, lab=lab: [
                        p.step(x, lab) for _ in range(CHUNK_BATCHES)
                    ],
                    "recording_no_experts": lambda p=gates_only, x=x, lab=lab: (
                        [p.step(x, lab) for _ in range(CHUNK_BATCHES)],
                        p.wait(),
                    ),
                }
                big = "256" in name
                reps = (6 if quick else 30) if big else (10 if quick else 80)
                cpu: dict[str, list[float]] = {}
                with torch.inference_mode():
                    t = rb.interleaved(
                        fns,
                        reps,
                        min_block_s=0.02,
                        budget_s=5 if quick else 25,
                        cpu_times=cpu,
                        cpu_clock=time.process_time,  # the worker thread's CPU time counts too
                    )
                t = {k: [v / CHUNK_BATCHES for v in vs] for k, vs in t.items()}  # per batch
                cpu = {k: [v / CHUNK_BATCHES for v in vs] for k, vs in cpu.items()}
                row = {k: rb.mm(v) for k, v in t.items()}
                row["reps"] = len(t["plain"])
                row["noise_plain_median_over_min"] = statistics.median(t["plain"]) / min(t["plain"])
                for k in ("recording", "recording_sync", "recording_no_experts"):
                    row[k]["ratio"] = rb.paired_ratio(t[k], t["plain"])
                    row[k]["ratio_min"] = min(t[k]) / min(t["plain"])
                    if nt == 1:  # CPU time of the process (1 torch thread + the statistics worker)
                        row[k]["ratio_cpu"] = rb.paired_ratio(cpu[k], cpu["plain"])
                        row[k]["cpu_median_ms"] = statistics.median(cpu[k]) * 1e3
                entry["threads"][str(nt)] = row
                cpu_note = f", CPU-time x{row['recording']['ratio_cpu']:.3f}" if nt == 1 else ""
                log(
                    f"  (a) {name} threads={nt}: plain {row['plain']['median_ms']:.2f} ms, recording "
                    f"x{row['recording']['ratio']:.3f} (min x{row['recording']['ratio_min']:.3f}{cpu_note}), "
                    f"synchronous x{row['recording_sync']['ratio']:.3f}, "
                    f"without experts x{row['recording_no_experts']['ratio']:.3f}, noise {row['noise_plain_median_over_min']:.2f}"
                )
        finally:
            rec.close()
            rec_sync.close()
            gates_only.close()
        add_cpu_floor(entry)
        for nt, row in entry["threads"].items():
            if "cpu_floor" in row:
                log(
                    f"  (a) {name} threads={nt}: the cores allow no ratio below x{row['cpu_floor']:.3f} "
                    f"(1-thread CPU time / cores / plain wall); target {entry['target']}"
                )
        out["models"][name] = entry
    return out


def add_cpu_floor(entry: dict[str, Any]) -> None:
    """The lowest recording ratio the machine's cores allow at each thread count > 1, from the same run.

    The recording pass's work, measured as CPU time at 1 thread (the statistics worker's included), does
    not shrink on more threads (splitting an op adds work, never removes it), and `n` threads on `c`
    cores run at most `min(n, c)` of it at once: wall >= CPU(1 thread) / min(n, c), so ratio >=
    CPU(1 thread) / (min(n, c) x plain wall at n threads). A target below this floor cannot be met by
    overlapping or scheduling the statistics, only by making them cheaper (or by more cores)."""
    one = entry["threads"].get("1")
    if one is None or "cpu_median_ms" not in one["recording"]:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for nt, row in entry["threads"].items():
        if int(nt) > 1:
            row["cpu_floor"] = one["recording"]["cpu_median_ms"] / (
                min(int(nt), cores) * row["plain"]["median_ms"]
            )


# --------------------------------------------------------------------------- (b) end to end
def plain_frame_loop(model, df, cols: list[str]) -> int:
    import numpy as np
    import torch

    n = 0
    with torch.inference_mode():
        for s in range(0, len(df), rb.BATCH):
            x = torch.from_numpy(np.ascontiguousarray(df.iloc[s : s + rb.BATCH][cols].to_numpy(np.float32)))
            model(x)
            n += x.shape[0]
    return n


def plain_parquet_loop(model, path: Path, cols: list[str]) -> int:
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    n = 0
    with torch.inference_mode():
        for batch in pq.ParquetFile(path).iter_batches(rb.BATCH, columns=cols):
            x = torch.from_numpy(np.stack([c.to_numpy() for c in batch.columns], axis=1).astype(np.float32))
            model(x)
            n += x.shape[0]
    return n


def make_e2e_fns(model, plain, df, path: Path, feats) -> dict[str, Callable[[], Any]]:
    """The four timed calls of part (b): plain loop and inspect() on the DataFrame and the parquet file."""
    from mmoe_inspect.inspector import InspectConfig, inspect

    cols = list(feats.dense)
    return {
        "plain_frame": lambda: plain_frame_loop(plain, df, cols),
        "inspect_frame": lambda: inspect(model, df, features=feats, config=InspectConfig()),
        "plain_parquet": lambda: plain_parquet_loop(plain, path, cols),
        "inspect_parquet": lambda: inspect(model, path, features=feats, config=InspectConfig()),
    }


def part_e2e(
    threads: list[int], frame_batches: int, parquet_batches: int, quick: bool, tmp: Path
) -> dict[str, Any]:
    import torch

    from mmoe_inspect.data.schema import FeatureSpec

    out: dict[str, Any] = {"models": {}}
    for name, spec in rb.overhead_models().items():
        model, d = spec["model"], spec["d"]
        df = rb.make_frame(model, d, frame_batches)
        pdf = rb.make_frame(model, d, parquet_batches, seed=1)
        path = tmp / f"e2e_{d}.parquet"
        pdf.to_parquet(path, row_group_size=65536)
        feats = FeatureSpec.dense_only(d)
        plain = copy.deepcopy(model).eval()
        entry: dict[str, Any] = {
            "target": spec["target"],
            "frame_rows": len(df),
            "parquet_rows": len(pdf),
            "threads": {},
        }
        for nt in threads:
            torch.set_num_threads(nt)
            fns = make_e2e_fns(model, plain, df, path, feats)
            for fn in fns.values():  # warm-up
                fn()
            times = rb.shuffled_calls(fns, 2 if quick else 4, seed=nt)
            row: dict[str, Any] = {
                k: {"min_s": min(v), "median_s": statistics.median(v)} for k, v in times.items()
            }
            for src in ("frame", "parquet"):
                row[f"ratio_{src}"] = min(times[f"inspect_{src}"]) / min(times[f"plain_{src}"])
                row[f"ratio_{src}_median"] = statistics.median(times[f"inspect_{src}"]) / statistics.median(
                    times[f"plain_{src}"]
                )
            entry["threads"][str(nt)] = row
            log(
                f"  (b) {name} threads={nt}: inspect(DataFrame)/plain loop x{row['ratio_frame']:.2f}, "
                f"inspect(parquet)/plain loop x{row['ratio_parquet']:.2f}"
            )
        out["models"][name] = entry
    return out


# --------------------------------------------------------------------------- report stages
class StageClock:
    """A `mmoe_inspect.progress.Progress` that notes when each stage of the library's run ends: the
    report's stages are timed from the library's own events, not from a copy of its pipeline."""

    def __init__(self) -> None:
        self.ends: list[tuple[str, float]] = []

    def start(self, stage: str, total: int | None, unit: str = "rows") -> Callable[..., None]:
        return lambda *_: None

    def finish(self, stage: str) -> None:
        self.ends.append((stage, time.perf_counter()))


def report_stages(rows: int, data: Path, ckpt: Path, out: Path, threads: int, cli: bool) -> dict[str, Any]:
    """`check` (load + recording pass) vs `report` (load + recording + attributions + causal analyses on
    every row + figures + HTML) on the same rows, by stage, through `LoadedModel.inspect`: the call
    the CLI makes. Run in a fresh child process per (rows, threads), so its peak RSS is the report's."""
    import resource

    import torch

    import mmoe_inspect.reports.write as report_write
    from mmoe_inspect import InspectConfig
    from mmoe_inspect.attribution import AttributionOptions
    from mmoe_inspect.causal import CausalOptions
    from mmoe_inspect.loading import load_model
    from mmoe_inspect.reports import EarlyFigures

    torch.set_num_threads(threads)
    tmp = out
    stages: dict[str, float] = {}

    t0 = time.perf_counter()
    torch.manual_seed(0)
    loaded = load_model(ckpt)
    source = loaded.source(data)
    stages["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    loaded.inspect(source, config=InspectConfig(seed=0))  # what `check` runs
    check_s = stages["load"] + time.perf_counter() - t0

    clock = StageClock()
    early = EarlyFigures()  # as `mmoe-inspect report`: the routing figures drawn while the analyses run
    t0 = time.perf_counter()
    try:
        result = loaded.inspect(
            source,
            config=InspectConfig(seed=0),
            causal=CausalOptions(),
            attribution=AttributionOptions(budget_seconds=30.0, sample_rows=256),
            progress=clock,
            on_recorded=early.start,
        )
    except BaseException:
        early.close()
        raise
    t_end = time.perf_counter()
    early_started, early_free = early.started, early.free
    ends = dict(clock.ends)
    record_end = next(t for name, t in clock.ends if name.startswith("inspecting"))
    attribution_end = ends.get("attributions (gates, experts, tasks)", record_end)
    # the causal analyses are planned before the recording pass (mean-gate pre-pass, first-batch check) and
    # their data pass rides along it (`causal.meta["rode_along"]`): that work is the causal stage's, not the
    # recording's; after the attributions come the ranking and the tables (or a pass of its own)
    cm = result.causal.meta if result.causal is not None else {}
    causal_in_record = cm.get("prepare_seconds", 0.0) + (
        cm["collect_seconds"] if cm.get("rode_along") else 0.0
    )
    stages["record"] = record_end - t0 - causal_in_record
    stages["attribution"] = attribution_end - record_end
    stages["causal"] = t_end - attribution_end + causal_in_record
    causal_passes = {name: t for name, t in clock.ends if name.startswith("causal")}

    spent = {"figures": 0.0, "html": 0.0}
    orig_fig, orig_html = report_write.render_figures, report_write.render_html

    def timed_fig(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return orig_fig(*a, **k)
        finally:
            spent["figures"] += time.perf_counter() - t

    def timed_html(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return orig_html(*a, **k)
        finally:
            spent["html"] += time.perf_counter() - t

    out_dir = tmp / "report_lib"
    report_write.render_figures, report_write.render_html = timed_fig, timed_html
    try:
        t0 = time.perf_counter()
        report_write.write_report(result, out_dir, force=True, early=early)
        write_s = time.perf_counter() - t0
    finally:
        report_write.render_figures, report_write.render_html = orig_fig, orig_html
        early.close()
    stages["figures"] = spent["figures"]
    # HTML = the rest of write_report: html rendering, overview slide, tables, metrics.json, folder swap
    stages["html"] = write_s - spent["figures"]
    report_s = sum(stages.values())

    # VmHWM: this process's own peak (reset by exec); ru_maxrss folds in the parent's RSS at the fork (the
    # parent that wrote 4M rows of parquet held ~1.5 GiB), which read as 1.3-1.5 GiB peaks of small runs
    peak_rss = rb.vm_hwm() / 2**20
    ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    shutil.rmtree(out_dir, ignore_errors=True)
    exe = shutil.which("mmoe-inspect") or str(Path(sys.executable).parent / "mmoe-inspect")
    cmd = [exe, "report", str(ckpt), "--data", str(data), "--out", str(tmp / "report_cli"), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cli_s, proc = None, None
    if cli:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        cli_s = time.perf_counter() - t0
        shutil.rmtree(tmp / "report_cli", ignore_errors=True)
    slowest = max(stages, key=lambda k: stages[k])
    causal = result.causal
    res = {
        "rows": rows,
        "threads": threads,
        "peak_rss_mib": peak_rss,
        "ru_maxrss_mib": ru_maxrss,  # cross-check only: includes the parent's RSS at the fork
        "causal_rows": causal.n_rows if causal is not None else 0,
        "spilled_mib": (causal.meta.get("spilled_bytes") or 0) / 2**20 if causal is not None else 0,
        "collect_s": causal.meta.get("collect_seconds") if causal is not None else None,
        # the riding work a worker thread ran beside the recording pass (one torch thread, a core spare): in the
        # record stage's wall time, not in collect_s
        "collect_beside_s": causal.meta.get("collect_beside_seconds") if causal is not None else None,
        "evaluate_s": causal.meta.get("evaluate_seconds") if causal is not None else None,
        "intervals": causal.meta.get("intervals") if causal is not None else None,
        "causal_strategy": causal.meta.get("strategy") if causal is not None else None,
        "causal_rode_along": causal.meta.get("rode_along") if causal is not None else None,
        "causal_prepare_s": causal.meta.get("prepare_seconds") if causal is not None else None,
        "causal_passes": sorted(causal_passes),
        "bytes_per_row": causal.meta.get("bytes_per_row") if causal is not None else None,
        "model": "MMoE(32 dense, 8 experts x [64], towers [32], 2 binary tasks)",
        "stages_s": stages,
        "check_s": check_s,
        "report_over_check": report_s / check_s,
        "causal_over_record": stages["causal"] / stages["record"],
        "record_rows_per_s": rows / stages["record"],
        "sum_of_stages_s": report_s,
        "cli_command": " ".join(cmd[1:]),
        "cli_wall_s": cli_s,
        "cli_exit_code": proc.returncode if proc is not None else None,
        "cli_stderr_tail": proc.stderr[-500:] if proc is not None else "",
        "slowest_stage": slowest,
        "early_figures": early_started,  # a helper drew the routing figures during the analyses
        "early_free_cpus": early_free,
    }
    return res


def part_report(sizes: list[int], threads: list[int], tmp: Path) -> dict[str, Any]:
    """`report_stages` for every (threads, rows) in a fresh child process (the data files and checkpoint
    are written here first, so the children's peak RSS is the report's own), the CLI cross-check once."""
    from mmoe_inspect.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp / "report_model.pt", rb.memory_model())
    files = {}
    for rows in sizes:
        files[rows] = tmp / f"report_{rows}.parquet"
        rb.write_parquet(files[rows], rows, seed=7)
    runs = []
    for nt in threads:
        for rows in sizes:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--report-child", str(rows)]
            cmd += [
                "--allocator",
                "system" if os.environ.get("MMOE_INSPECT_ALLOCATOR") == "system" else "cli",
                "--report-data",
                str(files[rows]),
                "--report-ckpt",
                str(ckpt),
                "--report-threads",
                str(nt),
            ]
            if rows == sizes[0] and nt == threads[0]:
                cmd.append("--report-cli")
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"report child failed: {proc.stderr[-2000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            runs.append(r)
            log(
                f"  {rows:,} rows, {nt} thread(s): "
                + ", ".join(f"{k} {v:.1f}" for k, v in r["stages_s"].items())
                + f"; sum {r['sum_of_stages_s']:.1f}; check {r['check_s']:.1f}: report / check "
                f"{r['report_over_check']:.2f} (target <= 2.5), causal / record {r['causal_over_record']:.2f} "
                f"(target <= 2); peak RSS {r['peak_rss_mib']:.0f} MiB"
                + (
                    f"; `mmoe-inspect report` {r['cli_wall_s']:.1f} s (exit {r['cli_exit_code']})"
                    if r["cli_wall_s"]
                    else ""
                )
            )
    rss = {}
    for nt in threads:
        peaks = {r["rows"]: r["peak_rss_mib"] for r in runs if r["threads"] == nt}
        rss[nt] = peaks[max(peaks)] / peaks[min(peaks)]
        log(
            f"  {nt} thread(s): peak RSS {max(peaks):,} rows / {min(peaks):,} rows = {rss[nt]:.3f} (target <= 1.25)"
        )
    return {"runs": runs, "rss_ratio": rss, "sizes": sizes}


# --------------------------------------------------------------------------- ablation
def part_ablation(rows: int, models: list[str], quick: bool) -> dict[str, Any]:
    import ablation_bench as ab
    import torch

    torch.set_num_threads(1)
    args = argparse.Namespace(
        rows=50_000 if quick else rows,
        boot_rows=20_000 if quick else 200_000,
        batch_size=4096,
        threads=1,
        max_stack_rows=16_384,
        repeat=1,
        strategies=list(ab.STRATEGIES),  # every strategy `ablation_bench.py` times (naive among them)
    )
    out = {}
    for m in models:
        r = ab.run_model(m, args)
        s = r["strategies"]
        out[m] = {
            "rows": r["rows"],
            "description": r["description"],
            "variants": r["variants"],
            "plain_s": r["plain_seconds"],
            "naive_s": s["naive"]["seconds"],
            "batched_s": s.get("batched", {}).get("seconds"),
            "cached_s": s["cached"]["seconds"],
            "cached_speedup_vs_naive": s["cached"]["speedup_vs_naive"],
            "max_abs_importance_diff": s["cached"]["max_abs_importance_diff_vs_naive"],
        }
    return out


# --------------------------------------------------------------------------- output
def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        "# Speed and scale (`bench/scale_bench.py`)",
        "",
        f"Run: `{res['command']}` on {m['cpu'] or m['machine']} ({m['cpus']} CPUs, shared), torch {m['torch']}, "
        f"git {m['git_head']}"
        + (" + uncommitted library changes" if m.get("library_uncommitted_diff_sha1") else "")
        + f", {res['started']}, {res['seconds']:.0f} s. Load average before/after: {res['load_before']} / {res['load_after']}.",
        "",
        allocator_line(res.get("allocator"), "memory" in res),
        "",
    ]
    if "recording" in res:
        r = res["recording"]
        lines += [
            "## Recording pass vs plain forward",
            "",
            f"(a) pre-built tensors, batch 4096: hooks + every statistic `inspect()` updates by default, expert "
            f"sample rate {r['expert_sample_rate']:.4f} (= 16,384 / {r['rate_rows']:,} rows). Ratio = median of "
            "per-repetition ratios (ratio of minima); the CPU-time ratio uses the process's CPU time "
            "(1 thread only; the statistics worker thread included), which time spent descheduled by other "
            "jobs does not inflate. `recording` runs the statistics in the worker thread as `inspect()` does "
            "(`InspectConfig.overlap_stats`); `synchronous` runs them in the caller (the pass before session 6), "
            "measured in the same interleaved repetitions. At more threads the CPU-time column gives the floor "
            "the cores set (`add_cpu_floor`): the 1-thread CPU time of the recording pass over (cores used x plain "
            "wall time at that thread count); no ratio below it is reachable without cheaper statistics. Noise = plain "
            "forward median / min (about 1.0-1.2 on free cores). (b) whole `inspect()` call vs a plain scoring "
            "loop reading the same rows from the same source (ratio of minima, median-based in brackets).",
            "",
            "| model | threads | noise | plain ms | recording ms | (a) ratio | (a) CPU-time ratio / floor | (a) synchronous "
            "| (a) without experts | (b) DataFrame | (b) parquet | target |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        e2e = res.get("e2e", {}).get("models", {})
        for name, entry in r["models"].items():
            for nt, row in entry["threads"].items():
                b = e2e.get(name, {}).get("threads", {}).get(nt)
                bf = f"{b['ratio_frame']:.2f} ({b['ratio_frame_median']:.2f})" if b else "-"
                bp = f"{b['ratio_parquet']:.2f} ({b['ratio_parquet_median']:.2f})" if b else "-"
                rc = row["recording"].get("ratio_cpu")
                rc_no = row["recording_no_experts"].get("ratio_cpu")
                lines.append(
                    f"| {name} | {nt} | {row['noise_plain_median_over_min']:.2f} | {rb.fmt(row['plain'])} | "
                    f"{rb.fmt(row['recording'])} | **{row['recording']['ratio']:.3f}** ({row['recording']['ratio_min']:.3f}) | "
                    + (
                        f"**{rc:.3f}** | "
                        if rc is not None
                        else (f"floor {row['cpu_floor']:.3f} | " if "cpu_floor" in row else "- | ")
                    )
                    + (
                        f"{row['recording_sync']['ratio']:.3f} ({row['recording_sync']['ratio_min']:.3f}) | "
                        if "recording_sync" in row
                        else "- | "
                    )
                    + f"{row['recording_no_experts']['ratio']:.3f}"
                    + (f" (CPU {rc_no:.3f})" if rc_no is not None else "")
                    + f" | {bf} | {bp} | <= {entry['target']} |"
                )
        if e2e:
            any_m = next(iter(e2e.values()))
            lines += [
                "",
                f"(b) rows: DataFrame {any_m['frame_rows']:,}, parquet {any_m['parquet_rows']:,} (expert CKA sample "
                "16,384 rows, so a larger share of a small source is sampled).",
            ]
        lines.append("")
    if "memory" in res:
        mem = res["memory"]
        ps = mem["per_size"]
        lines += ["## Streaming from parquet (fresh child process per size, 1 thread)", "", mem["model"], ""]
        lines += ["| rows | rows/s (loop) | peak RSS MiB |", "|---:|---:|---:|"]
        for k, v in ps.items():
            if k == "baseline":
                continue
            lines.append(f"| {int(k):,} | {max(v['rows_per_s_loop']):,.0f} | {max(v['peak_rss_mib']):.1f} |")
        lines += [
            "",
            f"Baseline (imports + model) {max(ps['baseline']['peak_rss_mib']):.1f} MiB; "
            f"**peak({mem['largest']:,}) / peak({mem['smallest']:,}) = {mem['peak_ratio_largest_over_smallest']:.3f}** "
            "(target <= 1.10).",
            "",
        ]
    if "report" in res:
        rep = res["report"]
        first = rep["runs"][0]
        lines += [
            "## `report` vs `check` on the same rows, by stage (fresh child process per run)",
            "",
            f"{first['model']}; causal analyses on every row ({first['intervals']} intervals, strategy "
            f"{first['causal_strategy']}, {first['bytes_per_row']} bytes a row of memory while ranking, the AUC "
            "scores spilled to disk). Seconds per stage; causal = the causal data pass (collect: "
            + (
                "its work per batch riding along the recording pass, timed apart from the recording; where a "
                "core is spare, most of it runs in a worker thread beside the pass, and only the time it adds "
                "to the pass (the caller's waits) counts here, the worker's own seconds in brackets; "
                if first.get("causal_rode_along")
                else "a pass of its own; "
            )
            + "with the mean-gate pre-pass and first-batch check) + the evaluation (ranking the spilled scores).",
            "",
            "| rows | threads | record | attribution | causal (collect + evaluate) | figures | html | **report** "
            "| check | report / check | causal / record | peak RSS MiB | spilled MiB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rep["runs"]:
            st = r["stages_s"]
            lines.append(
                f"| {r['rows']:,} | {r['threads']} | {st['record']:.1f} | {st['attribution']:.1f} | "
                f"{st['causal']:.1f} ({r['collect_s'] + (r.get('causal_prepare_s') or 0):.1f} + {r['evaluate_s']:.1f}"
                + (f"; [{r['collect_beside_s']:.1f} beside]" if r.get("collect_beside_s") else "")
                + f") | {st['figures']:.1f} | "
                f"{st['html']:.1f} | **{r['sum_of_stages_s']:.1f}** | {r['check_s']:.1f} | "
                f"**{r['report_over_check']:.2f}** | **{r['causal_over_record']:.2f}** | {r['peak_rss_mib']:.0f} | "
                f"{r['spilled_mib']:.0f} |"
            )
        lines += [""]
        for nt, ratio in rep["rss_ratio"].items():
            lines.append(
                f"- {nt} thread(s): peak RSS {max(rep['sizes']):,} rows / {min(rep['sizes']):,} rows = "
                f"**{ratio:.3f}** (target <= 1.25)."
            )
        cli = next((r for r in rep["runs"] if r.get("cli_wall_s")), None)
        if cli is not None:
            lines.append(
                f"- `mmoe-inspect report` end to end in one process on {cli['rows']:,} rows: {cli['cli_wall_s']:.1f} s "
                f"(exit {cli['cli_exit_code']}); the stages above sum to {cli['sum_of_stages_s']:.1f} s."
            )
        lines += ["- Targets: report / check <= 2.5, causal / record <= 2.", ""]
    if "ablation" in res:
        lines += [
            "## Expert ablation, cached vs naive (1 thread)",
            "",
            "| model | rows | variants | plain s | naive s | cached s | cached speed-up |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, a in res["ablation"].items():
            lines.append(
                f"| {name} | {a['rows']:,} | {a['variants']} | {a['plain_s']:.1f} | {a['naive_s']:.1f} | "
                f"{a['cached_s']:.1f} | **{a['cached_speedup_vs_naive']:.2f}x** |"
            )
        lines.append("")
    return "\n".join(lines)


def allocator_line(a: dict[str, Any] | None, memory: bool = False) -> str:
    """One line for the output: which allocator setting the run used (`setup_allocator`)."""
    if a is None:
        return "Allocator: not recorded (a run before `--allocator`)."
    how = (
        "tuned as the `mmoe-inspect` command tunes it"
        if a["applied"]
        else "glibc's defaults" + (" (`--allocator system`)" if a["choice"] == "system" else "")
    )
    note = " The memory part's children run the library's `inspect()` untuned either way." if memory else ""
    return f"Allocator: {how}: {a['reason']}.{note}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    ap.add_argument("--threads", default="1,2", help="torch threads of the recording and e2e parts")
    ap.add_argument(
        "--rate-rows", type=int, default=1_000_000, help="source size that sets the expert sample rate in (a)"
    )
    ap.add_argument("--sizes", default="1000000,4000000", help="parquet sizes of the memory part")
    ap.add_argument("--mem-repeats", type=int, default=1)
    ap.add_argument(
        "--report-rows", default="1000000,4000000", help="sizes of the report part (peak RSS ratio)"
    )
    ap.add_argument("--report-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--report-data", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--report-ckpt", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--report-threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--report-cli", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ablation-rows", type=int, default=1_000_000)
    ap.add_argument("--ablation-models", default="recsys_mmoe")
    ap.add_argument("--e2e-batches", default="21,64", help="batches of 4096 rows: DataFrame,parquet")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--allocator",
        choices=("cli", "system"),
        default="cli",
        help="cli: tune glibc's malloc as `mmoe-inspect` does (default); system: glibc's defaults",
    )
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    allocator = setup_allocator(args.allocator)  # first: before torch and the data allocate
    if args.report_child is not None:  # one report run in this fresh process: print its JSON
        data = Path(args.report_data)
        with tempfile.TemporaryDirectory(prefix="scale_bench_child_") as out:
            r = report_stages(
                args.report_child,
                data,
                Path(args.report_ckpt),
                Path(out),
                args.report_threads,
                args.report_cli,
            )
        r["allocator"] = allocator
        print(json.dumps(r, default=str))
        return
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown parts {sorted(unknown)}")
    threads = [int(t) for t in args.threads.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    report_rows = [int(r) for r in args.report_rows.split(",")]
    frame_b, parquet_b = (int(s) for s in args.e2e_batches.split(","))
    if args.quick:
        sizes, report_rows, frame_b, parquet_b = [50_000, 200_000], [50_000, 200_000], 4, 8
    res: dict[str, Any] = {
        "command": "python bench/scale_bench.py " + " ".join(sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "threads": threads,
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "allocator": allocator,
    }
    log(allocator_line(allocator, "memory" in parts))
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="scale_bench_"))
    try:
        if "recording" in parts:
            log("(a) recording pass on pre-built tensors")
            res["recording"] = part_recording(threads, args.rate_rows, args.quick)
        if "e2e" in parts:
            log("(b) inspect() end to end vs a plain scoring loop")
            res["e2e"] = part_e2e(threads, frame_b, parquet_b, args.quick, tmp)
        if "memory" in parts:
            log("memory: streamed inspect(parquet), fresh child per size")
            res["memory"] = rb.part_memory(sizes, args.mem_repeats, tmp, log)
            res["memory"].pop("runs", None)
            log(f"  peak ratio {res['memory']['peak_ratio_largest_over_smallest']:.3f}")
        if "report" in parts:
            log(f"report stages on {', '.join(f'{r:,}' for r in report_rows)} rows")
            res["report"] = part_report(report_rows, threads, tmp)
        if "ablation" in parts:
            log("expert ablation: naive vs cached")
            res["ablation"] = part_ablation(args.ablation_rows, args.ablation_models.split(","), args.quick)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["seconds"] = time.perf_counter() - t_start
    res["load_after"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale_bench.json").write_text(json.dumps(res, indent=2, default=str) + "\n", encoding="utf-8")
    md = markdown(res)
    (out / "scale_bench.md").write_text(md, encoding="utf-8")
    print()
    print(md)


if __name__ == "__main__":
    main()
