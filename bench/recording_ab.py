"""Before/after A/B of the recording pass in ONE process: an earlier commit's library vs this checkout.

Run by hand from the repository root (about 2-4 minutes on 2 shared CPU cores)::

    python bench/recording_ab.py --before e644d7e --threads 1,2
    python bench/recording_ab.py --before e644d7e --models b --threads 2 --reps 60

The library at ``--before`` is extracted (``git archive``) to a temporary directory and imported under
another package name (``mmoe_inspect_before``), so both versions run in the same process, on copies of
the same models, interleaved in a shuffled order every repetition (``record_bench.interleaved``): a
loaded machine slows all of them alike. Variants, per batch of 4096 pre-built rows under
``torch.inference_mode()``, everything `inspect()` does per batch with its default config (gate and
expert hooks, every statistic, expert sample rate of a 1M-row source):

- ``plain``: the model's forward;
- ``before``: the recording pass of ``--before``;
- ``after``: this checkout's pass as `inspect()` runs it (``RoutingStats(background=True)``,
  `InspectConfig.overlap_stats`): statistics in the worker thread;
- ``after_sync``: this checkout's pass with ``overlap_stats=False`` (statistics in the caller).

A timed call is one statistics chunk (4 batches); each pass is offset by half a chunk, so its chunk
update is handed over at the call's 2nd batch and overlaps two forwards (four in `inspect()`), and
calls end waiting for the worker: nothing spills into the next call. Ratio = median over
repetitions of (variant / plain in the same repetition), ratio of minima in brackets, and the ratio
of process CPU time (worker thread included). Writes ``--out`` (JSON lines, appended) when given.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import record_bench as rb

ROOT = Path(__file__).resolve().parent.parent
BATCH = 4096
CHUNK_BATCHES = 16_384 // BATCH  # InspectConfig.stats_chunk_rows / batch
RATE = 16_384 / 1_000_000  # InspectConfig.expert_sample_rows over a 1M-row source
OLD = "mmoe_inspect_before"


def import_before(rev: str, tmp: Path) -> Any:
    """The `mmoe_inspect` package of commit `rev`, importable as `mmoe_inspect_before`."""
    archive = subprocess.run(
        ["git", "archive", rev, "mmoe_inspect"], cwd=ROOT, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
    pkg = tmp / OLD
    (tmp / "mmoe_inspect").rename(pkg)
    word = re.compile(r"\bmmoe_inspect\b")
    for f in pkg.rglob("*.py"):
        f.write_text(word.sub(OLD, f.read_text(encoding="utf-8")), encoding="utf-8")
    sys.path.insert(0, str(tmp))
    import importlib

    return importlib.import_module(f"{OLD}.routing_pass")


class Pass:
    """A recording pass of library module `rp` (`routing_pass`) on a copy of `model`, as `inspect()`
    builds it; `kw` go to `RoutingStats`."""

    def __init__(self, rp: Any, model: Any, **kw: Any) -> None:
        self.model = copy.deepcopy(model)
        topo = self.model.topology()
        self.stats = rp.RoutingStats(
            topo,
            labelled=topo.tasks,
            outputs=True,
            expert_rate=RATE,
            seed=0,
            max_expert_rows_per_update=(CHUNK_BATCHES + 1) * BATCH,
            **kw,
        )
        self.rp = rp.RoutingPass(self.model, self.stats, experts=True).__enter__()

    def step(self, x: Any, lab: Any) -> None:
        self.rp.step(x, labels=lab)

    def wait(self) -> None:
        wait = getattr(self.stats.feed, "wait", None)  # None before the worker existed
        if wait is not None:
            wait()

    def close(self) -> None:
        self.stats.flush()
        self.rp.__exit__(None, None, None)


def main() -> None:
    import torch

    import mmoe_inspect.routing_pass as new_rp

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="git revision of the 'before' library")
    ap.add_argument("--models", default="a,b", help="a: 8 x [256, 128] MMoE; b: the paper's tiny MMoE")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--budget", type=float, default=40.0, help="seconds per model and thread count")
    ap.add_argument("--out", default=None, help="append the results as one JSON line to this file")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    res: dict[str, Any] = {
        "command": "python bench/recording_ab.py " + " ".join(sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "before": args.before,
        **rb.code_version(),
        "torch": torch.__version__,
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "rows": [],
    }
    print(f"load average {res['load_before']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="recording_ab_") as tmp:
        old_rp = import_before(args.before, Path(tmp))
        for name, spec in rb.overhead_models().items():
            if name[0] not in args.models.split(","):
                continue
            model, d = spec["model"], spec["d"]
            x, lab = rb.make_inputs(model, d)
            plain = copy.deepcopy(model).eval()
            passes = {
                "before": Pass(old_rp, model),
                "after": Pass(new_rp, model, background=True),
                "after_sync": Pass(new_rp, model),
            }
            try:
                with torch.inference_mode():  # half a chunk: each timed call fills its chunk at its 2nd batch
                    for p in passes.values():
                        for _ in range(CHUNK_BATCHES // 2):
                            p.step(x, lab)
                for nt in threads:
                    torch.set_num_threads(nt)
                    fns = {"plain": lambda m=plain, x=x: [m(x) for _ in range(CHUNK_BATCHES)]}
                    for k, p in passes.items():
                        fns[k] = lambda p=p, x=x, lab=lab: (
                            [p.step(x, lab) for _ in range(CHUNK_BATCHES)],
                            p.wait(),
                        )
                    cpu: dict[str, list[float]] = {}
                    with torch.inference_mode():
                        t = rb.interleaved(
                            fns,
                            args.reps,
                            min_block_s=0.02,
                            budget_s=args.budget,
                            cpu_times=cpu,
                            cpu_clock=time.process_time,
                        )
                    row: dict[str, Any] = {
                        "model": name,
                        "threads": nt,
                        "reps": len(t["plain"]),
                        "load_after": [round(v, 2) for v in os.getloadavg()],
                        "plain_ms": rb.mm([v / CHUNK_BATCHES for v in t["plain"]]),
                        "noise": statistics.median(t["plain"]) / min(t["plain"]),
                    }
                    for k in passes:
                        row[k] = {
                            "ratio": rb.paired_ratio(t[k], t["plain"]),
                            "ratio_min": min(t[k]) / min(t["plain"]),
                            "cpu_ratio": rb.paired_ratio(cpu[k], cpu["plain"]),
                        }
                    res["rows"].append(row)
                    print(
                        f"{name} threads={nt} reps={row['reps']} plain {rb.fmt(row['plain_ms'])} ms, noise "
                        f"{row['noise']:.2f}, load {row['load_after'][0]}: "
                        + ", ".join(
                            f"{k} x{row[k]['ratio']:.3f} ({row[k]['ratio_min']:.3f}; CPU {row[k]['cpu_ratio']:.3f})"
                            for k in passes
                        ),
                        flush=True,
                    )
            finally:
                for p in passes.values():
                    p.close()
    res["load_after"] = [round(x, 2) for x in os.getloadavg()]
    print(f"load average {res['load_after']}")
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
