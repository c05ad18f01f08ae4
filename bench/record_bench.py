"""Cost of recording: peak memory of a streamed `inspect()`, recording overhead, and where the time goes.

Run by hand from the repository root (not a unit test; about 5-8 minutes on 2 shared CPU cores,
repetitions are time-boxed so a loaded machine gives fewer of them rather than a longer run)::

    /work/venv/bin/python bench/record_bench.py

Options: ``--sizes 1000000,4000000`` (rows of the parquet files of part 1), ``--threads 1,2`` (torch
threads of parts 2 and 3), ``--mem-repeats 2``, ``--quick`` (small sizes and few repetitions, to check
that the script runs), ``--tmpdir DIR`` (where the parquet files go; default: a temporary directory,
removed afterwards), ``--out bench/results`` (writes ``record_bench.json`` and ``record_bench.md``).

It builds its own models and data and prints, in one run:

1. **Peak memory of a streamed inspection.** Dense-only parquet files (32 float32 features, two
   binary labels, 64k-row row groups) of each size are written to a temporary directory; each run is
   ``mmoe_inspect.inspect(model, path, features=...)`` (default `InspectConfig`, experts recorded)
   in a FRESH child process with one torch thread, whose peak RSS is ``ru_maxrss`` (read in the child
   and, as a cross-check, by the parent through ``os.wait4``). A baseline child only imports torch and
   `mmoe_inspect.inspector` and builds the model (the fixed part). Reported: rows/second, peak RSS,
   RSS just before `inspect()` started, and ``peak(largest) / peak(smallest)`` (target: within 10%).
2. **Recording overhead** on pre-built input tensors, batch 4096, under ``torch.inference_mode()``:
   ``model(x)`` alone vs. the recording pass that `inspect()` runs per batch minus data loading
   (`GateRecorder` hooks + ``GateStats.update`` per gate + ``PairwiseRoutingStats.update``; then
   also + ``TaskOutputStats.update``; then also + expert hooks + ``ExpertStats.update`` at the 5%
   sample rate `inspect()` uses for >= 82k rows). Each variant runs on its own deep copy of the model
   (hooks stay registered for the whole measurement), variants are interleaved in a shuffled order
   every repetition, and the ratio is the median over repetitions of the per-repetition ratio (the
   ratio of the minima is given too). Models: (a) MMoE, 8 experts [256, 128] on a 128-wide dense
   input, 3 binary tasks (target <= 1.10); (b) the MMoE paper's synthetic model, 8 experts of 16
   units, d = 100, towers of 8, 2 regression tasks (aim <= 1.5). For reference, the full `inspect()`
   on an in-memory DataFrame: loop seconds per batch (``meta["record_seconds"]``, which includes the
   DataFrame -> tensor conversion) and whole-call seconds per batch.
3. **Breakdown** of one batch's recording time into its parts (hooks and copies, each statistic,
   their main tensor ops, labels, DataFrame conversion, parquet decoding), same harness.

Times are per batch of 4096 rows, in milliseconds, "min / median" over repetitions. The machine is
shared: trust medians of interleaved runs and ratios more than absolute numbers.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
BATCH = 4096
MEM_FEATURES = 32
MEM_TASKS = ("click", "buy")
ROW_GROUP = 65536
EXPERT_SAMPLE_RATE = 0.05  # inspect() on a CSV (unknown row count); 16,384 / n_rows otherwise


# --------------------------------------------------------------------------- shared helpers
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def vm_hwm() -> int:
    """This process's peak RSS in bytes (``VmHWM``: per address space, reset by exec, unlike ``ru_maxrss``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_hwm() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def mib(n: float) -> float:
    return n / 2**20


def memory_model():
    """The model of part 1: MMoE on 32 dense features, 8 experts of 64 units, two binary tasks."""
    import torch

    from mmoe_inspect.models import MMoE

    torch.manual_seed(0)
    return MMoE(MEM_FEATURES, list(MEM_TASKS), n_experts=8, expert_hidden=(64,), tower_hidden=(32,)).eval()


def overhead_models() -> dict[str, Any]:
    """The two models of parts 2 and 3 with their input width."""
    import torch

    from mmoe_inspect.datasets import synthetic_tasks
    from mmoe_inspect.models import MMoE
    from mmoe_inspect.topology.spec import TaskSpec

    torch.manual_seed(0)
    big = MMoE(
        128,
        [TaskSpec(n, "binary") for n in ("click", "like", "share")],
        n_experts=8,
        expert_hidden=(256, 128),
        tower_hidden=(32,),
    ).eval()
    tiny = MMoE(100, synthetic_tasks(), n_experts=8, expert_hidden=(16,), tower_hidden=(8,)).eval()
    inline = inline_temperature(big)
    return {
        "a_mmoe_8x[256,128]_d128_3tasks": {"model": big, "d": 128, "target": 1.10},
        "b_paper_mmoe_8x16_d100_2tasks": {"model": tiny, "d": 100, "target": 1.5},
        "c_mmoe_8x[256,128]_inline_temperature": {"model": inline, "d": 128, "target": 1.15},
    }


def inline_temperature(model: Any, tau: float = 0.7) -> Any:
    """`model` (our MMoE) with each gate's softmax computed inline on `logits / tau`: no module returns the
    gate, so its topology is discovered and the gates are read at the function level (a tap)."""
    import torch

    from mmoe_inspect.models import MMoE
    from mmoe_inspect.models._layers import mix, stack_experts
    from mmoe_inspect.topology.discovery import discover_topology

    def _logits(gate: Any, h: Any) -> Any:
        for layer in list(gate)[:-1]:  # every layer of the gate but its nn.Softmax
            h = layer(h)
        return h

    class InlineTemperatureMMoE(MMoE):
        def forward(self, x: Any) -> Any:
            h = self.inputs(x)
            stacked = stack_experts(self.experts, h)
            gates = [torch.softmax(_logits(g, h) / tau, dim=1) for g in self.gates]  # Linear, then inline
            return self._outputs([mix(w, stacked) for w in gates])

        def topology(self) -> Any:
            return self._discovered

    m = copy.deepcopy(model)
    m.__class__ = InlineTemperatureMMoE
    example = torch.randn(64, m.inputs.out_dim if hasattr(m.inputs, "out_dim") else 128)
    m._discovered = discover_topology(m, example)
    assert all(g.function_level for g in m._discovered.gates), m._discovered.describe()
    return m


# --------------------------------------------------------------------------- part 1: memory (child side)
def child_main(args: argparse.Namespace) -> None:
    """Runs in a fresh process: baseline (imports + model) or one streamed inspection; prints one JSON line."""
    t_start = time.perf_counter()
    if args.child == "reader":
        reader_child(args)
        return
    import torch

    torch.set_num_threads(args.threads)
    import mmoe_inspect
    import mmoe_inspect.inspector  # what `mmoe_inspect.inspect` loads (pandas, torchmetrics, ...)
    from mmoe_inspect.data.schema import FeatureSpec

    model = memory_model()
    gc.collect()
    rss_ready = rss_bytes()
    hwm_setup = vm_hwm()  # peak of the fixed part: imports + model
    out: dict[str, Any] = {
        "kind": args.child,
        "rss_before_inspect": rss_ready,
        "hwm_setup": hwm_setup,
        "threads": args.threads,
    }
    if args.child == "inspect":
        out["hwm_reset"] = reset_hwm()
        import pyarrow as pa

        samples: list[tuple[float, int, int]] = []
        stop = threading.Event()

        def sample() -> None:
            t0 = time.perf_counter()
            while not stop.wait(0.2):
                samples.append((time.perf_counter() - t0, rss_bytes(), pa.total_allocated_bytes()))

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        t0 = time.perf_counter()
        res = mmoe_inspect.inspect(model, args.path, features=FeatureSpec.dense_only(MEM_FEATURES))
        wall = time.perf_counter() - t0
        stop.set()
        th.join()
        total = samples[-1][0] if samples else 0.0
        hwm_inspect = vm_hwm()
        out.update(
            hwm_during_inspect=hwm_inspect if out["hwm_reset"] else None,
            rows=res.n_rows,
            inspect_wall_s=wall,
            record_s=res.meta["record_seconds"],
            rows_per_s_loop=res.meta["rows_per_second"],
            rows_per_s_call=res.n_rows / wall,
            rss_end=rss_bytes(),
            peak_arrow_allocated_sampled=max((s[2] for s in samples), default=0),
            # RSS sampled every 0.2 s during the call, at 25/50/75/100% of its duration: flat = bounded.
            rss_at_quarters=[
                min(samples, key=lambda s, q=q: abs(s[0] - q * total))[1] if samples else 0
                for q in (0.25, 0.5, 0.75, 1.0)
            ],
            verdict=res.verdict,
        )
    out["peak_rss"] = max(hwm_setup, vm_hwm() if args.child == "inspect" else hwm_setup)
    # ru_maxrss also counts the parent's peak when it was forked (folded in at exec): cross-check only.
    out["ru_maxrss_self"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    out["child_wall_s"] = time.perf_counter() - t_start
    print(json.dumps(out))


def reader_child(args: argparse.Namespace) -> None:
    """Root-cause probe: only pyarrow's `ParquetFile(pre_buffer=...).iter_batches` + `to_pandas`, as the source reads."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rss0 = rss_bytes()
    pf = pq.ParquetFile(args.path, pre_buffer=bool(args.pre_buffer))
    cols = [f"x{i}" for i in range(MEM_FEATURES)] + list(MEM_TASKS)
    peak_arrow, n, t0 = 0, 0, time.perf_counter()
    for rb in pf.iter_batches(batch_size=BATCH, columns=cols):
        rb.to_pandas()
        n += rb.num_rows
        peak_arrow = max(peak_arrow, pa.total_allocated_bytes())
    wall = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "kind": "reader",
                "pre_buffer": bool(args.pre_buffer),
                "rows": n,
                "rows_per_s": n / wall,
                "rss_before": rss0,
                "peak_rss": vm_hwm(),
                "peak_arrow_allocated": peak_arrow,
            }
        )
    )


# --------------------------------------------------------------------------- part 1: memory (parent side)
def write_parquet(path: Path, n_rows: int, seed: int) -> None:
    """Dense float32 features x0..x31 and binary float32 labels click/buy, in 64k-row row groups."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    names = [f"x{i}" for i in range(MEM_FEATURES)]
    schema = pa.schema([(n, pa.float32()) for n in names] + [(t, pa.float32()) for t in MEM_TASKS])
    with pq.ParquetWriter(path, schema) as w:
        for start in range(0, n_rows, ROW_GROUP):
            m = min(ROW_GROUP, n_rows - start)
            x = rng.standard_normal((m, MEM_FEATURES), dtype=np.float32)
            cols = [pa.array(x[:, i]) for i in range(MEM_FEATURES)]
            cols.append(
                pa.array((x[:, 0] + rng.standard_normal(m, dtype=np.float32) > 1.0).astype(np.float32))
            )
            cols.append(
                pa.array((x[:, 1] + rng.standard_normal(m, dtype=np.float32) > 2.0).astype(np.float32))
            )
            w.write_table(pa.Table.from_arrays(cols, schema=schema), row_group_size=ROW_GROUP)


def run_child(kind: str, path: Path | None, threads: int, pre_buffer: bool = True) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--threads", str(threads)]
    cmd += ["--pre-buffer", str(int(pre_buffer))]
    if path is not None:
        cmd += ["--path", str(path)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=Path(__file__).resolve().parent.parent)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text, errs = out.read(), err.read()
    if p.returncode != 0:
        raise RuntimeError(f"child {kind} failed ({p.returncode}):\n{errs[-3000:]}")
    res = json.loads(text.strip().splitlines()[-1])
    res["ru_maxrss_wait4"] = usage.ru_maxrss * 1024
    return res


def part_memory(sizes: list[int], repeats: int, tmpdir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    files = {}
    for i, n in enumerate(sizes):
        path = tmpdir / f"dense_{n}.parquet"
        t0 = time.perf_counter()
        write_parquet(path, n, seed=i)
        files[n] = path
        log(
            f"  wrote {path.name}: {n:,} rows, {mib(path.stat().st_size):.0f} MiB in {time.perf_counter() - t0:.1f} s"
        )
    runs: list[dict[str, Any]] = []
    for rep in range(repeats):
        order: list[int | None] = [None, *sizes]
        if rep % 2:
            order = [None, *reversed(sizes)]
        for n in order:
            r = run_child("baseline" if n is None else "inspect", files.get(n), threads=1)
            r["size"] = n
            r["repeat"] = rep
            runs.append(r)
            if n is None:
                log(
                    f"  baseline: peak RSS {mib(r['peak_rss']):.1f} MiB (ru_maxrss {mib(r['ru_maxrss_self']):.1f})"
                )
            else:
                log(
                    f"  {n:>9,} rows: {r['rows_per_s_loop']:>9,.0f} rows/s in the loop, "
                    f"{r['rows_per_s_call']:>9,.0f} per call; peak RSS {mib(r['peak_rss']):.1f} MiB "
                    f"(during inspect {mib(r['hwm_during_inspect'] or 0):.1f}, before {mib(r['rss_before_inspect']):.1f}, "
                    f"ru_maxrss {mib(r['ru_maxrss_self']):.1f})"
                )
    readers = []
    for n in sizes:
        for pre in (True, False):
            r = run_child("reader", files[n], threads=1, pre_buffer=pre)
            r["size"] = n
            readers.append(r)
            log(
                f"  reader probe {n:>9,} rows, ParquetFile(pre_buffer={pre}).iter_batches: peak Arrow allocation "
                f"{mib(r['peak_arrow_allocated']):.1f} MiB, peak RSS {mib(r['peak_rss']):.1f} MiB, "
                f"{r['rows_per_s']:,.0f} rows/s"
            )
    per_size: dict[str, Any] = {}
    for n in [None, *sizes]:
        rs = [r for r in runs if r["size"] == n]
        key = "baseline" if n is None else str(n)
        per_size[key] = {
            "peak_rss_mib": [mib(r["peak_rss"]) for r in rs],  # VmHWM of the child
            "peak_setup_mib": [mib(r["hwm_setup"]) for r in rs],  # VmHWM after imports + model
            "ru_maxrss_mib": [mib(r["ru_maxrss_self"]) for r in rs],
            "ru_maxrss_wait4_mib": [mib(r["ru_maxrss_wait4"]) for r in rs],
            "rss_before_inspect_mib": [mib(r["rss_before_inspect"]) for r in rs],
        }
        if n is not None:
            per_size[key].update(
                rows_per_s_call=[r["rows_per_s_call"] for r in rs],
                rows_per_s_loop=[r["rows_per_s_loop"] for r in rs],
                inspect_wall_s=[r["inspect_wall_s"] for r in rs],
                peak_during_inspect_mib=[mib(r["hwm_during_inspect"] or 0) for r in rs],
                peak_arrow_allocated_mib=[mib(r["peak_arrow_allocated_sampled"]) for r in rs],
                rss_at_quarters_mib=[[mib(x) for x in r["rss_at_quarters"]] for r in rs],
            )
    lo, hi = str(min(sizes)), str(max(sizes))
    peak_lo, peak_hi = max(per_size[lo]["peak_rss_mib"]), max(per_size[hi]["peak_rss_mib"])
    base = max(per_size["baseline"]["peak_rss_mib"])
    ins_lo = max(per_size[lo]["peak_during_inspect_mib"])
    ins_hi = max(per_size[hi]["peak_during_inspect_mib"])
    return {
        "model": "MMoE(32 dense, 8 experts x [64], towers [32], 2 binary tasks), default InspectConfig",
        "file": f"{MEM_FEATURES} float32 features + 2 float32 binary labels, {ROW_GROUP}-row row groups, snappy",
        "threads": 1,
        "runs": runs,
        "reader_probe": readers,
        "per_size": per_size,
        "peak_ratio_largest_over_smallest": peak_hi / peak_lo,
        "increment_ratio_largest_over_smallest": (peak_hi - base) / max(peak_lo - base, 1e-9),
        "during_inspect_ratio_largest_over_smallest": ins_hi / max(ins_lo, 1e-9),
        "peak_rss_note": "VmHWM of each child (ru_maxrss also counts the parent's peak folded in at exec)",
        "smallest": int(lo),
        "largest": int(hi),
    }


# --------------------------------------------------------------------------- timing harness
def shuffled_calls(fns: dict[str, Callable[[], Any]], reps: int, seed: int = 0) -> dict[str, list[float]]:
    """Seconds of one call of each function, ``reps`` rounds, in a new shuffled order every round
    (for calls long enough that `interleaved`'s calibrated blocks are not needed)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    rng = random.Random(seed)
    for _ in range(reps):
        order = list(fns)
        rng.shuffle(order)
        for k in order:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return times


def interleaved(
    fns: dict[str, Callable[[], Any]],
    reps: int,
    *,
    min_block_s: float = 0.004,
    warmup: int = 2,
    seed: int = 0,
    errors: dict[str, str] | None = None,
    budget_s: float | None = None,
    min_reps: int = 5,
    cpu_times: dict[str, list[float]] | None = None,
    cpu_clock: Callable[[], float] = time.thread_time,
) -> dict[str, list[float]]:
    """Seconds per call of each function: `reps` blocks each, in a shuffled order every repetition.

    A block repeats the call enough times to last about `min_block_s` (calibrated once). A function
    that raises during warm-up (e.g. a private helper whose signature changed) is dropped and its
    error stored in `errors` when given (re-raised otherwise). With `budget_s`, repetitions stop
    once that many seconds have passed and at least `min_reps` are done (bounds the run time on a
    loaded machine; the number done is ``len(times[name])``). With ``cpu_times``, the calling
    thread's CPU seconds per call (``time.thread_time``) are stored there too: with one torch
    thread, time the process spent descheduled by other jobs does not count. ``cpu_clock`` (default
    the calling thread's) can be ``time.process_time`` when a function also computes in another thread.
    """
    inner: dict[str, int] = {}
    for name, fn in list(fns.items()):
        try:
            for _ in range(warmup):
                fn()
        except Exception as exc:
            if errors is None:
                raise
            errors[name] = f"{type(exc).__name__}: {exc}"
            continue
        t0 = time.perf_counter()
        fn()
        dt = max(time.perf_counter() - t0, 1e-7)
        inner[name] = max(1, min(200, int(min_block_s / dt)))
    fns = {n: f for n, f in fns.items() if n in inner}
    times: dict[str, list[float]] = {n: [] for n in fns}
    rng = random.Random(seed)
    gc.collect()
    t_start = time.perf_counter()
    for rep in range(reps):
        if budget_s is not None and rep >= min_reps and time.perf_counter() - t_start > budget_s:
            break
        order = list(fns)
        rng.shuffle(order)
        for name in order:
            fn, k = fns[name], inner[name]
            c0 = cpu_clock()
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            times[name].append((time.perf_counter() - t0) / k)
            if cpu_times is not None:
                cpu_times.setdefault(name, []).append((cpu_clock() - c0) / k)
    return times


def mm(xs: list[float]) -> dict[str, float]:
    """min / median in milliseconds."""
    return {"min_ms": min(xs) * 1e3, "median_ms": statistics.median(xs) * 1e3}


def paired_ratio(num: list[float], den: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


# --------------------------------------------------------------------------- part 2: recording pass
class RecordingPass:
    """The library's recording loop (`mmoe_inspect.routing_pass`), built as `inspect()` builds it, on a
    copy of the model: what the benchmarks time is what users run. `step(x, labels)` is one batch
    after the DataFrame -> tensor step (hooks, captures, expert row sample, task predictions, labels,
    the chunked statistics updates)."""

    def __init__(
        self,
        model,
        *,
        experts: bool,
        outputs: bool,
        sample_rate: float = EXPERT_SAMPLE_RATE,
        expert_cls: type | None = None,
        background: bool = False,
    ) -> None:
        """`expert_cls`: another expert-statistics class with `ExpertStats`' constructor (an A/B of
        the expert statistics inside the same loop). `background=True`: the chunk updates run in the
        statistics worker thread, as `inspect()` runs them by default (`InspectConfig.overlap_stats`);
        a timed call must then end with `wait()`, or the update in flight spills into the next call."""
        from mmoe_inspect.routing_pass import RoutingPass, RoutingStats

        self.model = copy.deepcopy(model)
        self.topo = self.model.topology()
        self.stats = RoutingStats(
            self.topo,
            labelled=self.topo.tasks,
            outputs=outputs,
            expert_rate=sample_rate if experts else None,
            seed=0,
            max_expert_rows_per_update=4 * BATCH + BATCH,  # as inspect(): never cap
            background=background,
        )
        if expert_cls is not None:
            self.stats.feed.new_expert_stats = lambda dims: expert_cls(
                len(dims), list(dims), sample_rate=sample_rate, seed=0, max_sample_per_update=5 * BATCH
            )
        self.rp = RoutingPass(self.model, self.stats, experts=experts).__enter__()

    @property
    def expert_stats(self):
        return self.stats.expert_stats

    @property
    def feed(self):
        return self.stats.feed

    @property
    def n_rows(self) -> int:
        return self.rp.n_rows

    def step(self, x, lab_all) -> None:
        self.rp.step(x, labels=lab_all)

    def wait(self) -> None:
        """Wait for the statistics update in flight in the worker thread (no-op without one)."""
        self.stats.feed.wait()

    def close(self) -> None:
        self.stats.flush()
        self.rp.__exit__(None, None, None)


def make_inputs(model, d: int, seed: int = 0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, d, generator=gen)
    kinds = [t.kind for t in model.topology().tasks]
    lab = torch.stack(
        [
            (torch.rand(BATCH, generator=gen) < 0.1).double()
            if k == "binary"
            else torch.randn(BATCH, generator=gen).double()
            for k in kinds
        ],
        dim=1,
    )
    return x, lab


def make_frame(model, d: int, n_batches: int, seed: int = 0):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = n_batches * BATCH
    df = pd.DataFrame(rng.standard_normal((n, d), dtype=np.float32), columns=[f"x{i}" for i in range(d)])
    for t in model.topology().tasks:
        df[t.label_column] = (
            (rng.random(n) < 0.1).astype(np.float32)
            if t.kind == "binary"
            else rng.standard_normal(n).astype(np.float32)
        )
    return df


def part_overhead(threads: list[int], quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Part 2 for every model."""
    return {name: overhead_one(name, spec, threads, quick, log) for name, spec in overhead_models().items()}


def overhead_one(
    name: str, spec: dict[str, Any], threads: list[int], quick: bool, log: Callable[[str], None]
) -> dict[str, Any]:
    """Part 2 for one model: plain forward vs the recording passes, then inspect() on a DataFrame."""
    import torch

    from mmoe_inspect.data.schema import FeatureSpec
    from mmoe_inspect.inspector import InspectConfig, inspect

    model, d = spec["model"], spec["d"]
    x, lab = make_inputs(model, d)
    plain_model = copy.deepcopy(model).eval()
    passes = {
        "gates": RecordingPass(model, experts=False, outputs=False),
        "gates+outputs": RecordingPass(model, experts=False, outputs=True),
        "gates+outputs+experts": RecordingPass(model, experts=True, outputs=True),
    }
    big = "256" in name
    n_frame_batches = 21  # 86k rows (>= 82k), so inspect() samples experts at 5% like above
    frame = make_frame(model, d, n_frame_batches)
    feats = FeatureSpec.dense_only(d)
    result: dict[str, Any] = {"target_ratio": spec["target"], "threads": {}}
    try:
        for nt in threads:
            torch.set_num_threads(nt)
            fns: dict[str, Callable[[], Any]] = {"plain": lambda: plain_model(x)}
            for pname, p in passes.items():
                fns[pname] = lambda p=p: p.step(x, lab)
            reps = (6 if quick else 25) if big else (10 if quick else 60)
            with torch.inference_mode():
                t = interleaved(fns, reps, min_block_s=0.02, budget_s=5 if quick else 20)
            row: dict[str, Any] = {"reps": len(t["plain"]), **{k: mm(v) for k, v in t.items()}}
            # plain forward's median / min: ~1.0-1.2 on a quiet machine; well above = other processes
            # took the cores during this row (ratios then mean little, 2-thread rows suffer most)
            row["noise_plain_median_over_min"] = statistics.median(t["plain"]) / min(t["plain"])
            for pname in passes:
                row[pname]["ratio_median_paired"] = paired_ratio(t[pname], t["plain"])
                row[pname]["ratio_min"] = min(t[pname]) / min(t["plain"])
            # full inspect() on an in-memory DataFrame, interleaved with plain forwards of the same size
            plain_batches = [x] * n_frame_batches
            insp: dict[str, list[float]] = {"plain_block": [], "inspect_gates": [], "inspect_full": []}
            insp_loop: dict[str, list[float]] = {"inspect_gates": [], "inspect_full": []}
            rng = random.Random(nt)
            for _ in range(2 if quick else 3):
                order = list(insp)
                rng.shuffle(order)
                for k in order:
                    t0 = time.perf_counter()
                    if k == "plain_block":
                        with torch.inference_mode():
                            for xb in plain_batches:
                                plain_model(xb)
                    else:
                        cfg = InspectConfig(record_experts=(k == "inspect_full"))
                        res = inspect(model, frame, features=feats, config=cfg)
                        insp_loop[k].append(res.meta["record_seconds"] / n_frame_batches)
                    insp[k].append((time.perf_counter() - t0) / n_frame_batches)
            plain_med = statistics.median(insp["plain_block"])
            plain_min = min(insp["plain_block"])
            row["inspect_dataframe"] = {
                "rows": n_frame_batches * BATCH,
                "plain_forward_per_batch": mm(insp["plain_block"]),
                **{
                    k: {
                        "loop_per_batch": mm(insp_loop[k]),
                        "call_per_batch": mm(insp[k]),
                        "loop_ratio_vs_plain_median": statistics.median(insp_loop[k]) / plain_med,
                        # minima: robust when another process slowed one of the few blocks
                        "loop_ratio_vs_plain_min": min(insp_loop[k]) / plain_min,
                        "call_ratio_vs_plain_median": statistics.median(insp[k]) / plain_med,
                    }
                    for k in insp_loop
                },
            }
            result["threads"][str(nt)] = row
            log(
                f"  {name} threads={nt}: plain {row['plain']['median_ms']:.2f} ms, "
                + ", ".join(
                    f"{p} x{row[p]['ratio_median_paired']:.3f} (min x{row[p]['ratio_min']:.3f})"
                    for p in passes
                )
                + f"; inspect(df) loop/plain x{row['inspect_dataframe']['inspect_full']['loop_ratio_vs_plain_min']:.2f}"
            )
    finally:
        for p in passes.values():
            p.close()
    return result


# --------------------------------------------------------------------------- part 3: breakdown
def part_breakdown(
    threads: list[int], quick: bool, tmpdir: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """Part 3 for every model."""
    return {
        name: breakdown_one(name, spec, threads, quick, tmpdir, log)
        for name, spec in overhead_models().items()
    }


def breakdown_one(
    name: str, spec: dict[str, Any], threads: list[int], quick: bool, tmpdir: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """Part 3 for one model: every item of one batch, timed interleaved."""

    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from mmoe_inspect.binding import read_labels, task_predictions
    from mmoe_inspect.data import sources
    from mmoe_inspect.data.batches import frame_to_inputs
    from mmoe_inspect.data.schema import FeatureSpec
    from mmoe_inspect.data.sources import TableSource, check_finite
    from mmoe_inspect.functional.routing import gate_entropy
    from mmoe_inspect.functional.sampling import row_hash
    from mmoe_inspect.recording.recorder import GateRecorder, expert_output, gate_probabilities
    from mmoe_inspect.stats import ExpertStats, GateStats, PairwiseRoutingStats
    from mmoe_inspect.stats._base import capped_sample
    from mmoe_inspect.stats.outputs import TaskOutputStats

    model, d = spec["model"], spec["d"]
    big = "256" in name
    topo = model.topology()
    tasks = topo.tasks
    x, lab = make_inputs(model, d)
    frame = make_frame(model, d, 16)  # one 64k-row row group in the parquet copy
    feats = FeatureSpec.dense_only(d)
    fcols = list(feats.names)
    chunk = frame.iloc[:BATCH]
    pq_path = tmpdir / f"breakdown_{d}.parquet"
    frame.to_parquet(pq_path, row_group_size=ROW_GROUP, index=False)
    label_binary = [t for t in tasks if t.kind == "binary"]
    bin_idx = [tasks.index(t) for t in label_binary]
    label_names = tuple(t.name for t in label_binary)
    lab_bin = lab[:, bin_idx] if label_binary else None
    n_gates, n_exp = len(topo.gates), len(topo.experts)

    plain_model = copy.deepcopy(model).eval()
    m_gates = copy.deepcopy(model)
    m_all = copy.deepcopy(model)
    rec_gates = GateRecorder(m_gates, m_gates.topology(), experts=False).__enter__()
    rec_all = GateRecorder(m_all, m_all.topology(), experts=True).__enter__()
    # raw module outputs, to time the hook bodies alone
    raw: dict[str, torch.Tensor] = {}
    mods = dict(plain_model.named_modules())
    handles = [
        mods[s.module].register_forward_hook(lambda _m, _a, o, key=s.module: raw.__setitem__(key, o.clone()))
        for s in [*topo.gates, *topo.experts]
    ]
    with torch.inference_mode():
        out = plain_model(x)
    for h in handles:
        h.remove()
    with torch.inference_mode():
        m_all(x)
        cap = rec_all.take()
    gates = {g.name: cap.gates[g.name] for g in topo.gates}
    expert_outs = [cap.experts[e.name] for e in topo.experts]
    dims = [o.shape[1] for o in expert_outs]
    g0 = gates[topo.gates[0].name]
    g64 = g0.double()

    # the library changes under this benchmark: follow the current signatures of private helpers
    check_numeric = getattr(sources, "check_numeric", lambda *a: None)
    check_features = getattr(sources, "check_features", check_finite)
    x_frame = frame_to_inputs(chunk, feats)  # what inspect() passes to the model (layout matters)
    state = {"row": 0}

    def next_rows() -> torch.Tensor:
        r = torch.arange(state["row"], state["row"] + BATCH)
        state["row"] += BATCH
        return r

    gs_full = {g.name: GateStats(g.n_experts, label_names=label_names) for g in topo.gates}
    gs_nolab = {g.name: GateStats(g.n_experts, label_names=label_names) for g in topo.gates}
    gs_core = {g.name: GateStats(g.n_experts, reservoir_size=0) for g in topo.gates}
    gs_raw = {g.name: GateStats(g.n_experts, label_names=label_names) for g in topo.gates}
    pair = PairwiseRoutingStats(tuple(gates), topo.gates[0].n_experts)
    es = ExpertStats(n_exp, dims, sample_rate=EXPERT_SAMPLE_RATE, max_sample_per_update=BATCH)
    outs_stats = TaskOutputStats([t.kind for t in tasks])
    rows_fixed = torch.arange(BATCH)
    keys = row_hash(rows_fixed + 10**6, 0)
    sel, _ = capped_sample(torch.where(keys < EXPERT_SAMPLE_RATE, keys, torch.inf), BATCH, False)
    z_cat = torch.cat(expert_outs, dim=1)
    zs64 = z_cat[sel].double()
    zs32 = z_cat[sel]

    def gate_update(stats, with_labels=True, unwrapped=False):
        def f():
            r = next_rows()
            for n, st in stats.items():
                if unwrapped:
                    GateStats.update(st, gates[n], lab_bin if with_labels else None, r)
                else:
                    st.update(gates[n], lab_bin if with_labels else None, r)

        return f

    def expert_update():
        es.update(expert_outs, next_rows())

    pq_state: dict[str, Any] = {"it": None}

    def parquet_next():
        try:
            next(pq_state["it"])
        except (StopIteration, TypeError):
            pq_state["it"] = pq.ParquetFile(pq_path).iter_batches(
                batch_size=BATCH, columns=[*fcols, *(t.label_column for t in tasks)]
            )
            next(pq_state["it"])

    pq_src = TableSource.of(pq_path)
    pq_src_state: dict[str, Any] = {"it": None}

    def pq_source_next():
        try:
            next(pq_src_state["it"])
        except (StopIteration, TypeError):
            pq_src_state["it"] = pq_src.iter_frames(BATCH, [*fcols, *(t.label_column for t in tasks)])
            next(pq_src_state["it"])

    src = TableSource.of(frame)
    frame_state: dict[str, Any] = {"it": None}

    def frame_next():
        try:
            next(frame_state["it"])
        except (StopIteration, TypeError):
            frame_state["it"] = src.iter_frames(BATCH, [*fcols, *(t.label_column for t in tasks)])
            next(frame_state["it"])

    items: dict[str, Callable[[], Any]] = {
        "forward: model(x), no hooks": lambda: plain_model(x),
        "forward on frame_to_inputs(chunk), as inspect() feeds it": lambda: plain_model(x_frame),
        "forward + gate hooks + take()": lambda: (m_gates(x), rec_gates.take()),
        "forward + gate & expert hooks + take()": lambda: (m_all(x), rec_all.take()),
        "hook bodies: gate_probabilities, all gates": lambda: [
            gate_probabilities(raw[g.module], g) for g in topo.gates
        ],
        "hook bodies: expert_output, all experts": lambda: [
            expert_output(raw[e.module], e) for e in topo.experts
        ],
        "GateStats.update, all gates (as inspect: labels, row_index, reservoir)": gate_update(gs_full),
        "  same, torchmetrics update wrapper bypassed": gate_update(gs_raw, unwrapped=True),
        "  GateStats.update, all gates, without labels": gate_update(gs_nolab, with_labels=False),
        "  GateStats.update, all gates, without labels, reservoir_size=0": gate_update(
            gs_core, with_labels=False
        ),
        "  op: cast [4096,E] to float64 (per gate)": lambda: g0.to(torch.float64),
        "  op: gate_entropy, xlogx (per gate)": lambda: gate_entropy(g64),
        "  op: g.T @ g (per gate)": lambda: g64.T @ g64,
        "  op: bincount slots, E+2 per row (per gate)": lambda: torch.bincount(
            (g64 * 100).clamp_(0, 99).long().view(-1), minlength=1000
        ),
        "  op: max(1).indices (per gate)": lambda: g64.max(1).indices,
        "  op: row_hash(4096) (per gate; + ExpertStats)": lambda: row_hash(rows_fixed, 0),
        "PairwiseRoutingStats.update (all task gates)": lambda: pair.update(gates),
        "ExpertStats.update (5% sample, as inspect)": expert_update,
        "  ExpertStats._per_expert + _zero_counts (norms, zero counts)": lambda: es._zero_counts(
            es._per_expert(expert_outs)[2], None, BATCH
        ),
        "  op: gram zsᵀzs float64 on the 5% sample": lambda: zs64.T @ zs64,
        "  op: same gram in float32": lambda: zs32.T @ zs32,
        "  op: cat(p[sel]).double() (sample gather + cast)": lambda: torch.cat(
            [p[sel] for p in expert_outs], dim=1
        ).double(),
        "task_predictions + TaskOutputStats.update": lambda: outs_stats.update(
            task_predictions(out, tasks), lab
        ),
        "labels: binding.read_labels(frame) + binary columns": lambda: (
            lambda la: la[:, bin_idx] if bin_idx else None
        )(torch.from_numpy(read_labels(chunk, tasks, "bench"))),
        "DataFrame: check_features (numeric + finite), all feature columns": lambda: check_features(
            chunk, fcols, "bench"
        ),
        "  check_numeric, all feature columns": lambda: check_numeric(chunk, fcols, "bench"),
        "  check_finite, all feature columns": lambda: check_finite(chunk, fcols, "bench"),
        "  one vectorized isfinite over the float32 block (alternative)": lambda: np.isfinite(
            chunk[fcols].to_numpy(dtype=np.float32)
        ).all(),
        "DataFrame: frame_to_inputs -> float32 tensor": lambda: frame_to_inputs(chunk, feats),
        "DataFrame: iter_frames next chunk (in-memory iloc)": frame_next,
        "parquet: iter_batches + to_pandas, per batch": parquet_next,
        "parquet: TableSource.iter_frames next chunk": pq_source_next,
    }
    result: dict[str, Any] = {
        "threads": {},
        "n_gates": n_gates,
        "n_experts": n_exp,
        "expert_dims": dims,
        "gram_sample_rows": len(sel),
        "frame_to_inputs_strides": list(x_frame.stride()),
        "frame_to_inputs_contiguous": x_frame.is_contiguous(),
    }
    try:
        for nt in threads:
            torch.set_num_threads(nt)
            reps = 5 if quick else (12 if big else 25)
            errors: dict[str, str] = {}
            with torch.inference_mode():
                t = interleaved(items, reps, min_block_s=0.01, errors=errors, budget_s=3 if quick else 12)
            reps = min(len(v) for v in t.values())
            result["threads"][str(nt)] = {
                "reps": reps,
                "items": {k: mm(v) for k, v in t.items()},
                "errors": errors,
            }
            log(f"  {name} threads={nt}: {len(items)} items, {reps} reps")
    finally:
        rec_gates.close()
        rec_all.close()
    return result


def code_version() -> dict[str, Any]:
    """Which library code was measured: HEAD and a hash of the uncommitted changes under mmoe_inspect/."""
    import hashlib

    root = Path(__file__).resolve().parent.parent

    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=root, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return ""

    diff = git("diff", "HEAD", "--", "mmoe_inspect")
    return {
        "git_head": git("rev-parse", "--short", "HEAD").strip(),
        "library_uncommitted_diff_sha1": hashlib.sha1(diff.encode()).hexdigest()[:12] if diff else None,
        "library_files_changed": [
            ln[3:] for ln in git("status", "--short", "--", "mmoe_inspect").splitlines()
        ],
    }


# --------------------------------------------------------------------------- report
def fmt(v: dict[str, float]) -> str:
    return f"{v['min_ms']:.2f} / {v['median_ms']:.2f}"


def merge_results(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`old` with the memory part, or the (model, threads) entries of parts 2/3, replaced by `new`'s."""
    merged = dict(old)
    if "memory" in new:
        merged["memory"] = new["memory"]
    for part in ("overhead", "breakdown"):
        for model, entry in new.get(part, {}).items():
            target = merged.setdefault(part, {}).setdefault(model, entry)
            if target is not entry:
                target["threads"].update(entry["threads"])
    meta = dict(old["meta"])
    earlier = meta.pop("merged_runs", [])
    merged["meta"] = {**new["meta"], "merged_runs": [*earlier, meta]}
    return merged


def contended(plain: dict[str, float] | None, plain_1thread: dict[str, float] | None, nt: str) -> bool:
    """A multi-thread row whose plain forward is slower than the 1-thread one: the cores were busy."""
    return bool(plain and plain_1thread and int(nt) > 1 and plain["median_ms"] > plain_1thread["median_ms"])


def markdown(res: dict[str, Any]) -> str:
    meta = res["meta"]
    lines = [
        "# Recording benchmark (`bench/record_bench.py`)",
        "",
        f"Run: `{meta['command']}` on {meta['machine']} ({meta['cpus']} CPUs, shared), torch {meta['torch']}, "
        f"library at {meta.get('git_head')} + uncommitted diff {meta.get('library_uncommitted_diff_sha1')} "
        f"({', '.join(meta.get('library_files_changed', [])) or 'none'}), "
        f"{meta['date']}, {meta['runtime_s']:.0f} s. Load average before/after: {meta['loadavg_before']} / "
        f"{meta['loadavg_after']} (after each part: {meta['loadavg_after_each_part']}). Times are per batch of 4096 rows, ms, **min / median** over interleaved repetitions.",
        "",
    ]
    for m in meta.get("merged_runs", []):
        lines += [
            f"Merged with an earlier run: `{m['command']}` ({m['date']}, {m['runtime_s']:.0f} s, load after each part "
            f"{m.get('loadavg_after_each_part')}, library at {m.get('git_head')}): its entries are kept where the "
            f"latest run (parts {meta.get('parts')}, threads {meta.get('threads')}) did not measure them.",
            "",
        ]
    mem = res.get("memory")
    if mem:
        lines += [
            "## 1. Peak memory of a streamed `inspect()` (fresh child process each, 1 torch thread)",
            "",
            f"Model: {mem['model']}. File: {mem['file']}.",
            "",
            "| run | rows | rows/s in the loop (each repeat) | rows/s whole call | peak RSS MiB (VmHWM, each repeat) | peak during inspect() MiB | RSS before inspect() MiB | peak - baseline MiB | RSS at 25/50/75/100% of the call MiB | peak Arrow allocation MiB (sampled) | ru_maxrss MiB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
        ]
        base = max(mem["per_size"]["baseline"]["peak_rss_mib"])

        def cat(xs: list[float], f: str = "{:.1f}") -> str:
            return ", ".join(f.format(x) for x in xs)

        for key, v in mem["per_size"].items():
            if key == "baseline":
                lines.append(
                    "| baseline: import torch + mmoe_inspect.inspector, build model | - | - | - | "
                    f"{cat(v['peak_rss_mib'])} | - | {cat(v['rss_before_inspect_mib'])} | 0 | - | - | {cat(v['ru_maxrss_mib'])} |"
                )
                continue
            quarters = "; ".join("/".join(f"{q:.0f}" for q in qs) for qs in v["rss_at_quarters_mib"])
            lines.append(
                f"| inspect(parquet) | {int(key):,} | {cat(v['rows_per_s_loop'], '{:,.0f}')} | "
                f"{cat(v['rows_per_s_call'], '{:,.0f}')} | {cat(v['peak_rss_mib'])} | "
                f"{cat(v['peak_during_inspect_mib'])} | {cat(v['rss_before_inspect_mib'])} | "
                f"{max(v['peak_rss_mib']) - base:.1f} | {quarters} | {cat(v['peak_arrow_allocated_mib'])} | "
                f"{cat(v['ru_maxrss_mib'])} |"
            )
        lines += [
            "",
            f"**peak({mem['largest']:,}) / peak({mem['smallest']:,}) = {mem['peak_ratio_largest_over_smallest']:.3f}** "
            "(target <= 1.10; whole-process VmHWM, max over repeats); peak during inspect() only: "
            f"{mem['during_inspect_ratio_largest_over_smallest']:.3f}; increments over the baseline: "
            f"{mem['increment_ratio_largest_over_smallest']:.3f}. "
            "`ru_maxrss` is shown as a cross-check only: Linux folds the parent's peak into it at exec.",
            "",
            "Root-cause probe (fresh child, pyarrow only: `ParquetFile(path, pre_buffer=...).iter_batches(4096)` "
            "+ `to_pandas()`, the reading pattern of `TableSource`):",
            "",
            "| rows | pre_buffer | peak Arrow allocation MiB | peak RSS MiB | rows/s |",
            "|---:|---|---:|---:|---:|",
            *(
                f"| {r['size']:,} | {r['pre_buffer']} | {mib(r['peak_arrow_allocated']):.1f} | "
                f"{mib(r['peak_rss']):.1f} | {r['rows_per_s']:,.0f} |"
                for r in mem.get("reader_probe", [])
            ),
            "",
        ]
    ov = res.get("overhead")
    if ov:
        lines += [
            "## 2. Recording overhead (pre-built tensors, batch 4096, inference_mode)",
            "",
            "Ratio = median over repetitions of (variant time / plain time in the same repetition); in brackets the ratio of minima. "
            "`gates` = hooks + GateStats per gate + PairwiseRoutingStats; `+outputs` adds task_predictions + TaskOutputStats; "
            "`+experts` adds the expert hooks and ExpertStats (5% sample) = what inspect() does per batch minus data loading. "
            "`inspect(df)` = the full inspect() loop on an in-memory DataFrame (DataFrame -> tensor conversion included) "
            "per batch (3 calls of 21 batches, interleaved with blocks of 21 plain forwards); its ratio is min(loop) / "
            "min(plain block), robust to a slowed block, with the ratio of medians in brackets.",
            "",
            "Noise = the plain forward's median / min in that row (about 1.0-1.2 when the cores were free; "
            "a row marked (!) had other processes on the cores: noise > 1.3, or a 2-thread plain forward slower "
            "than the 1-thread one; rerun it, e.g. `--parts overhead,breakdown --threads 2 --merge`, before trusting "
            "its ratios). On this 2-core VM shared with other jobs, 2-thread runs suffer most: every intra-op "
            "parallel region waits for a descheduled sibling thread.",
            "",
            "| model | threads | noise | plain ms | gates ms | ratio | +outputs ms | ratio | +experts ms | ratio | inspect(df) loop, record_experts=False: ms; ratio | inspect(df) loop, default: ms; ratio | target |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in ov.items():
            for nt, row in r["threads"].items():
                noise = row["noise_plain_median_over_min"]
                flag = noise > 1.3 or contended(row["plain"], r["threads"].get("1", {}).get("plain"), nt)
                cells = [name, nt, f"{noise:.2f}" + (" (!)" if flag else ""), fmt(row["plain"])]
                for p in ("gates", "gates+outputs", "gates+outputs+experts"):
                    cells += [
                        fmt(row[p]),
                        f"**{row[p]['ratio_median_paired']:.3f}** ({row[p]['ratio_min']:.3f})",
                    ]
                idf = row["inspect_dataframe"]
                for k in ("inspect_gates", "inspect_full"):
                    lp, rmin = idf[k]["loop_per_batch"], idf[k].get("loop_ratio_vs_plain_min")
                    cells.append(
                        f"{lp['min_ms']:.2f} / {lp['median_ms']:.2f}; **{rmin:.2f}** ({idf[k]['loop_ratio_vs_plain_median']:.2f})"
                        if rmin is not None
                        else f"{lp['median_ms']:.2f} / {idf[k]['loop_ratio_vs_plain_median']:.2f}"
                    )
                cells.append(f"<= {r['target_ratio']}")
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    bd = res.get("breakdown")
    if bd:
        lines += ["## 3. Where the recording time goes (ms per batch of 4096, min / median)", ""]
        cols = [(name, nt) for name, r in bd.items() for nt in r["threads"]]
        lines.append(
            "| item | "
            + " | ".join(f"{n.split('_')[0]}) {n.split('_', 1)[1]}, {nt} thr" for n, nt in cols)
            + " |"
        )
        lines.append("|---|" + "---:|" * len(cols))
        labels: list[str] = []
        for n, nt in cols:
            labels += [k for k in bd[n]["threads"][nt]["items"] if k not in labels]
        for label in labels:
            shown = label.replace("|", "/")
            if shown.startswith("  "):
                shown = "&nbsp;&nbsp;&nbsp;&nbsp;" + shown.strip()
            cells = [bd[n]["threads"][nt]["items"].get(label) for n, nt in cols]
            lines.append("| " + shown + " | " + " | ".join(fmt(c) if c else "n/a" for c in cells) + " |")
        lines.append("")
        for name, r in bd.items():
            for nt, row in r["threads"].items():
                fwd = "forward: model(x), no hooks"
                one = r["threads"].get("1", {}).get("items", {}).get(fwd)
                if contended(row["items"].get(fwd), one, nt):
                    lines.append(
                        f"- (!) {name}, {nt} thr: the plain forward was slower than with 1 thread: other processes "
                        "held the cores during this column; its numbers mostly measure that."
                    )
                for item, err in row.get("errors", {}).items():
                    lines.append(f"- {name}, {nt} thr: item {item.strip()!r} skipped: {err}")
            lines.append(
                f"- {name}: frame_to_inputs(chunk) gives strides {tuple(r['frame_to_inputs_strides'])} "
                f"(contiguous: {r['frame_to_inputs_contiguous']}); the model's own input x is C-contiguous."
            )
            lines.append(
                f"- {name}: {r['n_gates']} gates, {r['n_experts']} experts of dims {r['expert_dims']}; "
                f"gram sample {r['gram_sample_rows']} rows x {sum(r['expert_dims'])}."
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", choices=["baseline", "inspect", "reader"], help=argparse.SUPPRESS)
    ap.add_argument("--pre-buffer", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", default="1000000,4000000")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--mem-repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tmpdir", default=None)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--parts", default="memory,overhead,breakdown")
    ap.add_argument(
        "--merge",
        action="store_true",
        help="update the existing record_bench.json in --out with the parts/threads measured now, keep the rest",
    )
    args = ap.parse_args()
    if args.child:
        args.threads = int(args.threads)
        child_main(args)
        return

    started = time.perf_counter()
    load_before = os.getloadavg()
    version = code_version()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.quick and args.sizes == ap.get_default("sizes"):
        sizes = [65536, 262144]
    threads = [int(t) for t in args.threads.split(",")]
    parts = set(args.parts.split(","))

    def log(msg: str) -> None:
        print(msg, flush=True)

    res: dict[str, Any] = {}
    loads: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(dir=args.tmpdir, prefix="record_bench_") as tmp:
        tmpdir = Path(tmp)
        # Memory first, before this process imports torch: the children's numbers do not depend on the
        # parent, but a lean parent keeps their ru_maxrss cross-check meaningful.
        if "memory" in parts:
            log("part 1: peak memory of streamed inspections (child processes)")
            res["memory"] = part_memory(sizes, 1 if args.quick else args.mem_repeats, tmpdir, log)
            loads["memory"] = [round(x, 2) for x in os.getloadavg()]
        if "overhead" in parts:
            log("part 2: recording overhead")
            res["overhead"] = part_overhead(threads, args.quick, log)
            loads["overhead"] = [round(x, 2) for x in os.getloadavg()]
        if "breakdown" in parts:
            log("part 3: breakdown")
            res["breakdown"] = part_breakdown(threads, args.quick, tmpdir, log)
            loads["breakdown"] = [round(x, 2) for x in os.getloadavg()]
    import torch

    res["meta"] = {
        "command": "python bench/record_bench.py " + " ".join(sys.argv[1:]),
        "machine": platform.machine() + " " + platform.processor(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "runtime_s": time.perf_counter() - started,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "loadavg_after_each_part": loads,
        "parts": sorted(parts),
        "threads": threads,
        "batch": BATCH,
        "expert_sample_rate": EXPERT_SAMPLE_RATE,
        **version,
        "library_changed_during_run": code_version() != version,
    }
    out = Path(args.out)
    if args.merge and (out / "record_bench.json").exists():
        res = merge_results(json.loads((out / "record_bench.json").read_text()), res)
    res = {"meta": res.pop("meta"), **{k: res[k] for k in ("memory", "overhead", "breakdown") if k in res}}
    md = markdown(res)
    out.mkdir(parents=True, exist_ok=True)
    (out / "record_bench.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "record_bench.md").write_text(md + "\n")
    print()
    print(md)
    print(
        f"wrote {out / 'record_bench.json'} and {out / 'record_bench.md'} ({time.perf_counter() - started:.0f} s)"
    )


if __name__ == "__main__":
    main()
