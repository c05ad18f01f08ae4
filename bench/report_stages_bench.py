"""The attribution and figure/HTML stages of `mmoe-inspect report`, this tree against another revision,
in one run, interleaved.

Run by hand from the repository root (about 3 minutes on 2 shared CPU cores)::

    python bench/report_stages_bench.py --base e644d7e --repeats 4 --out bench/results

Both revisions are extracted (`git archive`) into a temporary folder as importable `mmoe_inspect`
packages (with `reports` and `cli` in place) and each measurement runs in a fresh child process with
one torch thread, alternating between the revisions in a shuffled order every repetition. A child:

1. writes nothing; reads `bench/record_bench.py`'s 1M-row parquet file and model (made once by the
   parent, seed 7), runs the recording pass of `LoadedModel.inspect` on its first 65,536 rows (to be
   warm as in `report`), then the attribution stage as `inspect(attribution=...)` runs it
   (`attach.run_attributions`, `AttributionOptions(budget_seconds=30, sample_rows=256)`, the sample
   drawn from all 1M rows), twice: "cold" (first call: Captum imported) and "warm";
2. loads a pickled 1M-row `InspectionResult` (recording + causal + attributions, built once by the
   parent with the BASE revision) and writes the report twice with `write_report`: figures = time in
   `render_figures`, html = the rest (overview slide where it is not drawn with the figures, tables,
   metrics.json, index.html), cold (matplotlib fonts loaded) and warm.

`--threads 2 --compute-rows 1000000` measures the report as `report` runs it on two torch threads: the
child runs `inspect` with causal analyses on that many rows on 2 threads right before the report, so
the 1-minute load average is high (its compute threads are idle by then); `helper_cpu` says whether a
figure helper process ran (its CPU seconds), `load_figures` the 1-minute load average when the
figures started and `others_cpus` how many CPUs other processes kept busy while they were drawn.

Reported: the median over repetitions per revision and stage, wall seconds and CPU seconds (this
process plus the figure helper process: on a loaded machine the wall time of two processes depends on
what the other jobs leave), the per-repetition values, and the machine's load average before and
after. The machine is shared: trust the interleaved medians.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ROWS = 1_000_000
RECORD_ROWS = 65_536


def extract(rev: str, dest: Path) -> Path:
    """`rev`'s `mmoe_inspect`, `reports` and `cli` as one importable package under `dest`."""
    pkg = dest / "mmoe_inspect"
    dest.mkdir(parents=True)
    for part, into in (("mmoe_inspect", dest), ("reports", pkg), ("cli", pkg)):
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", rev, part], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return dest


def cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have ended (the figure helper)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def machine_busy() -> tuple[float, float]:
    """CPU seconds the machine's CPUs were busy (not idle or iowait), and seconds of one CPU (/proc/stat)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]
    hz, cpus = os.sysconf("SC_CLK_TCK"), os.cpu_count() or 1
    return (sum(ticks) - ticks[3] - ticks[4]) / hz, sum(ticks) / hz / cpus


def children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def child(data: Path, ckpt: Path, result_pkl: Path, out: Path) -> None:
    import torch

    threads, compute_rows = int(os.environ["BENCH_THREADS"]), int(os.environ["BENCH_COMPUTE_ROWS"])
    torch.set_num_threads(threads)
    import mmoe_inspect
    import mmoe_inspect.attach as attach
    import mmoe_inspect.inspector as inspector
    import mmoe_inspect.reports.write as report_write
    from mmoe_inspect import InspectConfig
    from mmoe_inspect.attribution import AttributionOptions
    from mmoe_inspect.loading import load_model

    times: dict[str, float] = {"package": str(Path(mmoe_inspect.__file__).parent)}  # type: ignore[dict-item]
    captured: dict[str, Any] = {}
    plain = attach.run_attributions
    inspector.run_attributions = lambda result, model, binding, options, **kw: captured.update(
        result=result, model=model, binding=binding, options=options, kw=kw
    )
    torch.manual_seed(0)
    loaded = load_model(ckpt)
    loaded.inspect(
        loaded.source(data),
        config=InspectConfig(seed=0, max_rows=RECORD_ROWS),
        attribution=AttributionOptions(budget_seconds=30.0, sample_rows=256),
    )
    for run in ("cold", "warm"):
        t0, c0 = time.perf_counter(), cpu_seconds()
        plain(
            captured["result"], captured["model"], captured["binding"], captured["options"], **captured["kw"]
        )
        times[f"attribution_{run}"] = time.perf_counter() - t0
        times[f"attribution_cpu_{run}"] = cpu_seconds() - c0
    with open(result_pkl, "rb") as f:
        result = pickle.load(f)
    spent = {"figures": 0.0, "figures_cpu": 0.0, "helper_cpu": 0.0, "load": 0.0}
    orig = report_write.render_figures

    def timed(*a: Any, **k: Any) -> Any:
        spent["load"] = os.getloadavg()[0]
        t, c, h, m = time.perf_counter(), cpu_seconds(), children_cpu(), machine_busy()
        try:
            return orig(*a, **k)
        finally:
            spent["figures"] += time.perf_counter() - t
            spent["figures_cpu"] += cpu_seconds() - c
            spent["helper_cpu"] += children_cpu() - h
            busy, wall = (after - before for after, before in zip(machine_busy(), m, strict=True))
            spent["others"] = (busy - (cpu_seconds() - c)) / wall if wall > 0 else 0.0

    report_write.render_figures = timed
    if compute_rows:  # the compute phase of `report` right before its figures (on `threads` threads)
        from mmoe_inspect.causal import CausalOptions

        t0 = time.perf_counter()
        loaded.inspect(
            loaded.source(data), config=InspectConfig(seed=0, max_rows=compute_rows), causal=CausalOptions()
        )
        times["compute"] = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        for run in ("cold", "warm"):
            spent["figures"] = spent["figures_cpu"] = spent["helper_cpu"] = 0.0
            t0, c0 = time.perf_counter(), cpu_seconds()
            report_write.write_report(result, Path(tmp) / run, force=True)
            total, total_cpu = time.perf_counter() - t0, cpu_seconds() - c0
            times[f"figures_{run}"] = spent["figures"]
            times[f"html_{run}"] = total - spent["figures"]
            times[f"figures_cpu_{run}"] = spent["figures_cpu"]
            times[f"html_cpu_{run}"] = total_cpu - spent["figures_cpu"]
            times[f"helper_cpu_{run}"] = spent["helper_cpu"]
            times[f"load_figures_{run}"] = spent["load"]
            times[f"others_cpus_{run}"] = spent["others"]
            window = getattr(sys.modules.get("mmoe_inspect.reports._render"), "last_window", {})
            times[f"window_free_cpus_{run}"] = window.get("free_cpus", float("nan"))  # new trees only
            times[f"window_s_{run}"] = window.get("seconds", float("nan"))
    out.write_text(json.dumps(times))


def build_inputs(tmp: Path, base_pkg: Path) -> tuple[Path, Path, Path]:
    """The 1M-row parquet file, the model checkpoint, and a pickled full `report` result (base revision)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import record_bench as rb

    data, ckpt, result = tmp / "report_1m.parquet", tmp / "model.pt", tmp / "result.pkl"
    rb.write_parquet(data, ROWS, seed=7)
    script = f"""
import pickle, sys, torch
sys.path.insert(0, {str(ROOT / "bench")!r})
import record_bench as rb
torch.set_num_threads(1)
from mmoe_inspect import InspectConfig
from mmoe_inspect.attribution import AttributionOptions
from mmoe_inspect.causal import CausalOptions
from mmoe_inspect.checkpoint import save_checkpoint
from mmoe_inspect.loading import load_model
save_checkpoint({str(ckpt)!r}, rb.memory_model())
torch.manual_seed(0)
loaded = load_model({str(ckpt)!r})
res = loaded.inspect(loaded.source({str(data)!r}), config=InspectConfig(seed=0), causal=CausalOptions(),
    attribution=AttributionOptions(budget_seconds=30.0, sample_rows=256))
pickle.dump(res, open({str(result)!r}, "wb"))
"""
    env = {**os.environ, "PYTHONPATH": str(base_pkg), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=tmp)
    return data, ckpt, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="e644d7e", help="revision to compare with (default: session 6's start)")
    ap.add_argument("--new", default="HEAD", help="revision measured against it (default: HEAD)")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the children (default 1)")
    ap.add_argument(
        "--compute-rows", type=int, default=0, help="rows of an inspect+causal run right before the report"
    )
    ap.add_argument("--out", type=Path, default=None, help="folder for report_stages_bench.json")
    ap.add_argument("--child", nargs=4, metavar=("DATA", "CKPT", "RESULT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*(Path(a) for a in args.child))
        return
    started = time.time()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="report_stages_") as tmp_name:
        tmp = Path(tmp_name)
        trees = {"base": extract(args.base, tmp / "base"), "new": extract(args.new, tmp / "new")}
        data, ckpt, result = build_inputs(tmp, trees["base"])
        runs: dict[str, list[dict[str, float]]] = {"base": [], "new": []}
        order_log = []
        for rep in range(args.repeats):
            order = ["base", "new"]
            random.Random(rep).shuffle(order)
            for name in order:
                out = tmp / f"{name}_{rep}.json"
                env = {
                    **os.environ,
                    "PYTHONPATH": str(trees[name]),
                    "OMP_NUM_THREADS": str(args.threads),
                    "BENCH_THREADS": str(args.threads),
                    "BENCH_COMPUTE_ROWS": str(args.compute_rows),
                }
                cmd = [sys.executable, __file__, "--child", str(data), str(ckpt), str(result), str(out)]
                subprocess.run(cmd, check=True, env=env, cwd=tmp)
                got = json.loads(out.read_text())
                assert got.pop("package").startswith(str(trees[name])), "the child imported another tree"
                runs[name].append(got)
                order_log.append(name)
                print(f"rep {rep} {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in got.items()), flush=True)
    load_after = os.getloadavg()
    keys = list(runs["base"][0])
    summary = {name: {k: statistics.median(r[k] for r in rs) for k in keys} for name, rs in runs.items()}
    report = {
        "base": args.base,
        "new": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", args.new], capture_output=True, text=True
        ).stdout.strip(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{len(os.sched_getaffinity(0))} usable",
        "started_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime(started)),
        "seconds": time.time() - started,
        "threads": args.threads,
        "compute_rows": args.compute_rows,
        "load_before": load_before,
        "load_after": load_after,
        "order": order_log,
        "median": summary,
        "runs": runs,
    }
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report_stages_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    for k in keys:
        b, n = summary["base"][k], summary["new"][k]
        print(f"{k:18s} base {b:6.2f}  new {n:6.2f}" + (f"  ({n / b:.2f}x)" if b else ""))
    print(f"load average before {load_before}, after {load_after}")


if __name__ == "__main__":
    main()
