"""Overhead of `GateMonitor` on training step time (ratio of step times with and without it).

Run by hand from the repository root (about 2-3 minutes on 2 shared CPU cores)::

    /work/venv/bin/python bench/monitor_bench.py            # --quick to check that it runs
    /work/venv/bin/python bench/monitor_bench.py --threads 2 --out bench/results

One training step = forward, BCE summed over tasks, backward, Adam step, on pre-built tensors (no
data loading, so the ratio is an upper bound of what a real loop with a data pipeline sees). Each
variant trains its own deep copy of the model: "plain" (no monitor), "monitor" (`GateMonitor`,
every=50, no log file), "monitor+log" (every=50, JSONL log in a temporary directory) and
"monitor_stride10" (every=50, stride=10: one step in ten recorded). Variants run
interleaved in a shuffled order in blocks of `--steps` steps (default 50 = `every`, so each
block pays exactly one window flush: tables + `diagnose()`, ~15 ms); the ratio is the median over
repetitions of the per-repetition ratio (the ratio of the minima is given too). Configurations:
(a) MMoE, 8 experts [256, 128] on a 128-wide dense input, 3 binary tasks, batch 2048;
(b) a small MMoE, 4 experts of 16 units on 8 inputs, 2 tasks, batch 256 (the tests' model; the
monitor's fixed per-forward cost weighs most here). Target: (a) <= 1.05.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mmoe_inspect.models import MMoE
from mmoe_inspect.monitor import GateMonitor

VARIANTS = ("plain", "monitor", "monitor+log", "monitor_stride10")
CONFIGS = {
    "a_mmoe_8x256-128_b2048": dict(
        n_in=128, n_tasks=3, n_experts=8, hidden=(256, 128), tower=(32,), batch=2048
    ),
    "b_mmoe_4x16_b256": dict(n_in=8, n_tasks=2, n_experts=4, hidden=(16,), tower=(8,), batch=256),
}


def _setup(cfg: dict) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, list[str]]:
    torch.manual_seed(0)
    tasks = [f"t{i}" for i in range(cfg["n_tasks"])]
    model = MMoE(
        cfg["n_in"], tasks, n_experts=cfg["n_experts"], expert_hidden=cfg["hidden"], tower_hidden=cfg["tower"]
    )
    x = torch.randn(cfg["batch"], cfg["n_in"])
    y = (torch.rand(cfg["batch"], cfg["n_tasks"]) < 0.3).float()
    return model, x, y, tasks


def _block(model, opt, x, y, tasks, steps: int, mon: GateMonitor | None) -> tuple[float, float]:
    """(wall, process CPU) seconds per training step over `steps` steps."""
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        out = model(x)
        loss = sum(F.binary_cross_entropy(out[t], y[:, j]) for j, t in enumerate(tasks))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if mon is not None:
            mon.step(epoch=0, loss=loss.item())
    return (time.perf_counter() - start) / steps, (time.process_time() - cpu) / steps


def bench(name: str, cfg: dict, steps: int, reps: int, tmp: Path) -> dict:
    base, x, y, tasks = _setup(cfg)
    variants = {}
    for v in VARIANTS:
        m = copy.deepcopy(base)
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        mon = None
        if v != "plain":
            log = tmp / f"{name}.jsonl" if v == "monitor+log" else None
            mon = GateMonitor(m, every=50, log_path=log, stride=10 if v == "monitor_stride10" else 1).open()
        variants[v] = (m, opt, mon)
    for m, opt, mon in variants.values():  # warm-up
        _block(m, opt, x, y, tasks, 5, mon)
    times: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    order = list(variants)
    rng = random.Random(0)
    for _ in range(reps):
        rng.shuffle(order)
        for v in order:
            m, opt, mon = variants[v]
            wall, used = _block(m, opt, x, y, tasks, steps, mon)
            times[v].append(wall)
            cpu[v].append(used)
    for _, _, mon in variants.values():
        if mon is not None:
            mon.close()
    res = {"config": cfg, "steps_per_block": steps, "reps": reps}
    for v, ts in times.items():
        res[f"{v}_ms"] = {"min": min(ts) * 1e3, "median": statistics.median(ts) * 1e3}
        res[f"{v}_cpu_ms"] = {"min": min(cpu[v]) * 1e3, "median": statistics.median(cpu[v]) * 1e3}
    for v in VARIANTS[1:]:
        ratios = [a / b for a, b in zip(times[v], times["plain"], strict=True)]
        cpu_ratios = [a / b for a, b in zip(cpu[v], cpu["plain"], strict=True)]
        res[f"ratio_{v}"] = {
            "median": statistics.median(ratios),
            "of_minima": min(times[v]) / min(times["plain"]),
            "cpu_median": statistics.median(cpu_ratios),
            "cpu_of_minima": min(cpu[v]) / min(cpu["plain"]),
        }
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps, reps = (10, 2) if args.quick else (args.steps, args.reps)
    results = {"torch": torch.__version__, "python": platform.python_version(), "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in CONFIGS.items():
            r = bench(name, cfg, steps, reps, Path(tmp))
            results[name] = r
            print(
                f"{name}: CPU-time ratio monitor {r['ratio_monitor']['cpu_median']:.3f} "
                f"(minima {r['ratio_monitor']['cpu_of_minima']:.3f}), +log "
                f"{r['ratio_monitor+log']['cpu_median']:.3f}, stride 10 "
                f"{r['ratio_monitor_stride10']['cpu_median']:.3f}"
            )
            print(
                f"  wall: plain {r['plain_ms']['median']:.2f} ms/step, monitor {r['monitor_ms']['median']:.2f}, "
                f"+log {r['monitor+log_ms']['median']:.2f}; ratio monitor {r['ratio_monitor']['median']:.3f} "
                f"(minima {r['ratio_monitor']['of_minima']:.3f}), +log {r['ratio_monitor+log']['median']:.3f}, "
                f"stride 10 {r['ratio_monitor_stride10']['median']:.3f}"
            )
    if args.out is not None and not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "monitor_bench.json").write_text(json.dumps(results, indent=2) + "\n")
        lines = [
            "# GateMonitor overhead on training step time",
            "",
            f"torch {results['torch']}, {args.threads} thread(s), {steps} steps per block, {reps} interleaved reps; "
            "every=50. Ratio = median over reps of (monitored step time / plain step time); process CPU "
            "time (primary: one torch thread, less sensitive than wall time to other processes on a shared machine) and wall "
            "time. In parentheses: ratio of the minima.",
            "",
            "| config | plain CPU ms/step | ratio monitor CPU | ratio monitor+log CPU | ratio stride=10 CPU "
            "| ratio monitor wall |",
            "|---|---|---|---|---|---|",
        ]
        for name in CONFIGS:
            r = results[name]
            lines.append(
                f"| {name} | {r['plain_cpu_ms']['median']:.2f} | {r['ratio_monitor']['cpu_median']:.3f} "
                f"({r['ratio_monitor']['cpu_of_minima']:.3f}) | {r['ratio_monitor+log']['cpu_median']:.3f} | "
                f"{r['ratio_monitor_stride10']['cpu_median']:.3f} | {r['ratio_monitor']['median']:.3f} "
                f"({r['ratio_monitor']['of_minima']:.3f}) |"
            )
        (args.out / "monitor_bench.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
