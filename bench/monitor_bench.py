"""Overhead of `GateMonitor` on training step time (ratio of step times with and without it).

Run by hand from the repository root (about 2-3 minutes on 2 shared CPU cores)::

    python bench/monitor_bench.py            # --quick to check that it runs
    python bench/monitor_bench.py --threads 2 --out bench/results

One training step = forward, BCE summed over tasks, backward, Adam step, on pre-built tensors (no
data loading, so the ratio is an upper bound of what a real loop with a data pipeline sees). Each
variant trains its own deep copy of the model: "plain" (no monitor), "monitor" (`GateMonitor`,
every=50, no log file), "monitor+log" (every=50, JSONL log in a temporary directory) and
"monitor_stride10" (every=50, stride=10: one step in ten recorded); and the same training under
PyTorch Lightning, "lightning" (a ``Trainer`` with logging, checkpointing and progress bar off) and
"lightning+callback" (plus `GateMonitorCallback(every=50)`), each block a fresh ``fit`` of
`--steps` + 5 steps timed from batch 5 on (Trainer setup outside the clock). Variants run
interleaved in a shuffled order in blocks of `--steps` steps (default 50 = `every`, so each
block pays exactly one window flush: tables + `diagnose()`, ~15 ms); the ratio is the median over
repetitions of the per-repetition ratio (the ratio of the minima is given too); the Lightning
callback is compared with "lightning", the others with "plain". Configurations:
(a) MMoE, 8 experts [256, 128] on a 128-wide dense input, 3 binary tasks, batch 2048;
(b) a small MMoE, 4 experts of 16 units on 8 inputs, 2 tasks, batch 256 (the tests' model; the
monitor's fixed per-forward cost weighs most here). Target: (a) <= 1.05.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
import platform
import random
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from mmoe_inspect.models import MMoE
from mmoe_inspect.monitor import GateMonitor

VARIANTS = ("plain", "monitor", "monitor+log", "monitor_stride10", "lightning", "lightning+callback")
# Each monitored variant's ratio is taken against the same training without the monitor.
BASELINE = {
    "monitor": "plain",
    "monitor+log": "plain",
    "monitor_stride10": "plain",
    "lightning+callback": "lightning",
}
CONFIGS = {
    "a_mmoe_8x256-128_b2048": dict(
        n_in=128, n_tasks=3, n_experts=8, hidden=(256, 128), tower=(32,), batch=2048
    ),
    "b_mmoe_4x16_b256": dict(n_in=8, n_tasks=2, n_experts=4, hidden=(16,), tower=(8,), batch=256),
}
LIGHTNING_WARMUP = 5  # batches run before the clock starts in each Lightning block


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


def _lightning_runner(model, x, y, tasks, callback: bool, tmp: Path):
    """A function running one Lightning block: a fresh ``Trainer`` fits `steps + LIGHTNING_WARMUP`
    steps on the same batch; the clock runs from the start of batch LIGHTNING_WARMUP to the end of the
    last batch (Trainer setup/teardown, and the monitor's open/close, are outside it)."""
    import lightning as L

    from mmoe_inspect.monitor.lightning import GateMonitorCallback

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch, batch_idx):
            out = self.model(batch[0])
            return sum(F.binary_cross_entropy(out[t], batch[1][:, j]) for j, t in enumerate(tasks))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    class Clock(L.Callback):
        def __init__(self, last: int) -> None:
            self.last = last

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == LIGHTNING_WARMUP:
                self.start = (time.perf_counter(), time.process_time())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if batch_idx == self.last:
                self.end = (time.perf_counter(), time.process_time())

    class SameBatch(torch.utils.data.Dataset):
        def __init__(self, n: int) -> None:
            self.n = n

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, i: int):
            return x, y

    module = Module()

    def run(steps: int) -> tuple[float, float]:
        n = steps + LIGHTNING_WARMUP
        clock = Clock(n - 1)
        callbacks = [GateMonitorCallback(every=50, tensorboard=False)] if callback else []
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=n,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp,
            callbacks=[*callbacks, clock],  # the clock stops after the monitor's step
        )
        trainer.fit(module, torch.utils.data.DataLoader(SameBatch(n), batch_size=None))
        return (clock.end[0] - clock.start[0]) / steps, (clock.end[1] - clock.start[1]) / steps

    return run


def bench(name: str, cfg: dict, steps: int, reps: int, tmp: Path) -> dict:
    base, x, y, tasks = _setup(cfg)
    runners = {}
    monitors = []
    for v in VARIANTS:
        m = copy.deepcopy(base)
        if v.startswith("lightning"):
            runners[v] = _lightning_runner(m, x, y, tasks, v == "lightning+callback", tmp)
            continue
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        mon = None
        if v != "plain":
            log = tmp / f"{name}.jsonl" if v == "monitor+log" else None
            mon = GateMonitor(m, every=50, log_path=log, stride=10 if v == "monitor_stride10" else 1).open()
            monitors.append(mon)
        runners[v] = functools.partial(_block, m, opt, x, y, tasks, mon=mon)
    for run in runners.values():  # warm-up
        run(5)
    times: dict[str, list[float]] = {v: [] for v in runners}
    cpu: dict[str, list[float]] = {v: [] for v in runners}
    order = list(runners)
    rng = random.Random(0)
    for _ in range(reps):
        rng.shuffle(order)
        for v in order:
            wall, used = runners[v](steps)
            times[v].append(wall)
            cpu[v].append(used)
    for mon in monitors:
        mon.close()
    res = {"config": cfg, "steps_per_block": steps, "reps": reps}
    for v, ts in times.items():
        res[f"{v}_ms"] = {"min": min(ts) * 1e3, "median": statistics.median(ts) * 1e3}
        res[f"{v}_cpu_ms"] = {"min": min(cpu[v]) * 1e3, "median": statistics.median(cpu[v]) * 1e3}
    for v, b in BASELINE.items():
        ratios = [a / c for a, c in zip(times[v], times[b], strict=True)]
        cpu_ratios = [a / c for a, c in zip(cpu[v], cpu[b], strict=True)]
        res[f"ratio_{v}"] = {
            "baseline": b,
            "median": statistics.median(ratios),
            "of_minima": min(times[v]) / min(times[b]),
            "cpu_median": statistics.median(cpu_ratios),
            "cpu_of_minima": min(cpu[v]) / min(cpu[b]),
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
    import lightning  # noqa: F401  (sets its logger's level on import: quiet it after)

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no per-fit banners
    warnings.filterwarnings("ignore", module="lightning.*")
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
                f"{r['ratio_monitor_stride10']['cpu_median']:.3f}; Lightning callback "
                f"{r['ratio_lightning+callback']['cpu_median']:.3f} "
                f"(minima {r['ratio_lightning+callback']['cpu_of_minima']:.3f})"
            )
            print(
                f"  wall: plain {r['plain_ms']['median']:.2f} ms/step, monitor {r['monitor_ms']['median']:.2f}, "
                f"+log {r['monitor+log_ms']['median']:.2f}; ratio monitor {r['ratio_monitor']['median']:.3f} "
                f"(minima {r['ratio_monitor']['of_minima']:.3f}), +log {r['ratio_monitor+log']['median']:.3f}, "
                f"stride 10 {r['ratio_monitor_stride10']['median']:.3f}; Lightning "
                f"{r['lightning_ms']['median']:.2f} ms/step, +callback "
                f"{r['lightning+callback_ms']['median']:.2f}, ratio {r['ratio_lightning+callback']['median']:.3f}"
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
            "time. In parentheses: ratio of the minima. Plain-loop variants are compared with the plain loop, "
            "the Lightning callback with the same Lightning training without it.",
            "",
            "| config | plain CPU ms/step | ratio monitor CPU | ratio monitor+log CPU | ratio stride=10 CPU "
            "| ratio monitor wall | Lightning CPU ms/step | ratio Lightning callback CPU | ratio callback wall |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name in CONFIGS:
            r = results[name]
            lines.append(
                f"| {name} | {r['plain_cpu_ms']['median']:.2f} | {r['ratio_monitor']['cpu_median']:.3f} "
                f"({r['ratio_monitor']['cpu_of_minima']:.3f}) | {r['ratio_monitor+log']['cpu_median']:.3f} | "
                f"{r['ratio_monitor_stride10']['cpu_median']:.3f} | {r['ratio_monitor']['median']:.3f} "
                f"({r['ratio_monitor']['of_minima']:.3f}) | {r['lightning_cpu_ms']['median']:.2f} | "
                f"{r['ratio_lightning+callback']['cpu_median']:.3f} "
                f"({r['ratio_lightning+callback']['cpu_of_minima']:.3f}) | "
                f"{r['ratio_lightning+callback']['median']:.3f} ({r['ratio_lightning+callback']['of_minima']:.3f}) |"
            )
        (args.out / "monitor_bench.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
