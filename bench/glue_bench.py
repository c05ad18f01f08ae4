"""Per-batch glue of the recording pass: everything `inspect()` does per batch except the statistics updates.

Run by hand from the repository root (not a unit test; about 3-4 minutes on 2 shared CPU cores)::

    python bench/glue_bench.py                  # glue + ops + e2e, threads 1 and 2
    python bench/glue_bench.py --parts glue,ops --threads 1

Model: the MMoE paper's tiny model (8 experts of 16 units, d = 100, 2 tasks; batch 4096), where the
fixed per-batch costs weigh most. Parts:

``glue``  ``bench/record_bench.RecordingPass.step`` (what `inspect()` does per batch after the
    DataFrame -> tensor step: hooks, captures, expert row sample, task predictions, labels, the
    feed's chunking and concatenation) with the statistics updates replaced by taking the chunk
    (the ``_cat`` stays), vs a plain forward; and the full step (with the updates) for context.
    Calls of 4 batches (one 16,384-row statistics chunk), interleaved in a shuffled order; per
    batch: median of the per-repetition differences to the plain forward, and min - min. At 1
    thread the differences use the calling thread's CPU time (not inflated by other jobs).
``ops``  top-level aten ops per batch (torch.profiler) of the glue step vs a plain forward, and
    minor page faults per batch: deterministic counts, unlike timings on a shared machine.
``e2e``  the whole ``inspect(model, source)`` call vs the plain scoring loop of
    ``bench/scale_bench.py`` part (b) on a 21-batch DataFrame and a 64-batch parquet file, per batch.
(The before/after part ``ab`` of earlier sessions loaded an old commit's recorder and feed; it
was removed when the benchmarks moved onto the library's own loop. Its results stay in
``bench/results/glue_bench.md``.)
"""

from __future__ import annotations

import argparse
import collections
import copy
import resource
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import record_bench as rb

TINY = "b_paper_mmoe_8x16_d100_2tasks"
CHUNK = 4  # batches per statistics chunk (InspectConfig.stats_chunk_rows / batch)
RATE = 16_384 / 1_000_000  # expert sample rate inspect() uses on a 1M-row source


def extra_over_plain(fns: dict[str, Any], reps: int, nt: int, budget_s: float) -> tuple[dict[str, Any], dict]:
    """Time ``fns`` (one of them ``plain``; each call one chunk of `CHUNK` batches) interleaved; returns the
    result row (plain min/median, and each other function's extra ms per batch over plain) and the
    per-batch ms lists. Clock: the thread's CPU time with 1 thread, wall time otherwise."""
    import torch

    cpu: dict[str, list[float]] = {}
    with torch.inference_mode():
        wall = rb.interleaved(fns, reps, min_block_s=0.02, budget_s=budget_s, cpu_times=cpu)
    t = cpu if nt == 1 else wall
    ms = {k: [v / CHUNK * 1e3 for v in vs] for k, vs in t.items()}
    row: dict[str, Any] = {"clock": "thread CPU" if nt == 1 else "wall", "reps": len(ms["plain"])}
    row["plain"] = {"min_ms": min(ms["plain"]), "median_ms": statistics.median(ms["plain"])}
    for k in fns:
        if k != "plain":
            extra = [a - b for a, b in zip(ms[k], ms["plain"], strict=True)]
            row[k] = {
                "extra_median_ms": statistics.median(extra),
                "extra_min_minus_min_ms": min(ms[k]) - min(ms["plain"]),
            }
    return row, ms


def glue_only(p: rb.RecordingPass) -> rb.RecordingPass:
    """`p` with its statistics updates replaced by taking the pending chunk (concatenation kept)."""
    from mmoe_inspect.stats import feed as feed_module

    feed = p.feed
    feed._update_gates = feed._update_outputs = feed._update_experts = feed_module._cat  # concatenation kept
    return p


def tiny() -> tuple[Any, Any, Any]:
    spec = rb.overhead_models()[TINY]
    x, lab = rb.make_inputs(spec["model"], spec["d"])
    return spec["model"], x, lab


def part_glue(threads: list[int], reps: int) -> dict[str, Any]:
    import torch

    model, x, lab = tiny()
    plain = copy.deepcopy(model).eval()
    glue = glue_only(rb.RecordingPass(model, experts=True, outputs=True, sample_rate=RATE))
    full = rb.RecordingPass(model, experts=True, outputs=True, sample_rate=RATE)
    out: dict[str, Any] = {}
    try:
        for nt in threads:
            torch.set_num_threads(nt)
            fns = {
                "plain": lambda: [plain(x) for _ in range(CHUNK)],
                "glue": lambda: [glue.step(x, lab) for _ in range(CHUNK)],
                "full": lambda: [full.step(x, lab) for _ in range(CHUNK)],
            }
            row, _ = extra_over_plain(fns, reps, nt, budget_s=60)
            out[str(nt)] = row
            print(
                f"glue threads={nt} ({row['clock']}, {row['reps']} reps): plain {row['plain']['min_ms']:.2f} / "
                f"{row['plain']['median_ms']:.2f} ms; glue +{row['glue']['extra_median_ms']:.3f} ms/batch "
                f"(min-min +{row['glue']['extra_min_minus_min_ms']:.3f}); full step "
                f"+{row['full']['extra_median_ms']:.3f} (min-min +{row['full']['extra_min_minus_min_ms']:.3f})",
                flush=True,
            )
    finally:
        glue.close()
        full.close()
    return out


def part_ops() -> dict[str, Any]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    model, x, lab = tiny()
    plain = copy.deepcopy(model).eval()
    glue = glue_only(rb.RecordingPass(model, experts=True, outputs=True, sample_rate=RATE))
    full = rb.RecordingPass(model, experts=True, outputs=True, sample_rate=RATE)

    def ops(fn) -> collections.Counter:
        for _ in range(2 * CHUNK):
            fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(4 * CHUNK):
                fn()
        return collections.Counter(
            e.name for e in prof.events() if e.cpu_parent is None and e.name.startswith("aten::")
        )

    def faults(fn) -> float:
        for _ in range(5 * CHUNK):
            fn()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(10 * CHUNK):
            fn()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (10 * CHUNK)

    try:
        with torch.inference_mode():
            a, b = ops(lambda: plain(x)), ops(lambda: glue.step(x, lab))
            n = 4 * CHUNK
            extra = {k: (b[k] - a[k]) / n for k in set(a) | set(b) if b[k] != a[k]}
            res = {
                "plain_ops_per_batch": sum(a.values()) / n,
                "glue_ops_per_batch": sum(b.values()) / n,
                "extra_ops": dict(sorted(extra.items(), key=lambda kv: -kv[1])),
                "page_faults_per_batch": {
                    "plain": faults(lambda: plain(x)),
                    "glue": faults(lambda: glue.step(x, lab)),
                    "full": faults(lambda: full.step(x, lab)),
                },
            }
    finally:
        glue.close()
        full.close()
    print(
        f"ops per batch: plain {res['plain_ops_per_batch']:.1f}, glue step {res['glue_ops_per_batch']:.1f} "
        f"(+{res['glue_ops_per_batch'] - res['plain_ops_per_batch']:.1f}): "
        + ", ".join(f"{k} {v:+g}" for k, v in res["extra_ops"].items()),
        flush=True,
    )
    print(f"minor page faults per batch: {res['page_faults_per_batch']}", flush=True)
    return res


def part_e2e(threads: list[int], reps: int) -> dict[str, Any]:
    import scale_bench as sb
    import torch

    from mmoe_inspect.data.schema import FeatureSpec

    spec = rb.overhead_models()[TINY]
    model, d = spec["model"], spec["d"]
    batches = {"frame": 21, "parquet": 64}
    df = rb.make_frame(model, d, batches["frame"])
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "e2e.parquet"
        rb.make_frame(model, d, batches["parquet"], seed=1).to_parquet(path, row_group_size=65536)
        fns = sb.make_e2e_fns(model, copy.deepcopy(model).eval(), df, path, FeatureSpec.dense_only(d))
        for nt in threads:
            torch.set_num_threads(nt)
            for fn in fns.values():
                fn()
            times = rb.shuffled_calls(fns, reps, seed=nt)
            row = {}
            for src, nb in batches.items():
                p = [v / nb * 1e3 for v in times[f"plain_{src}"]]
                i = [v / nb * 1e3 for v in times[f"inspect_{src}"]]
                row[src] = {
                    "plain_min_ms": min(p),
                    "plain_median_ms": statistics.median(p),
                    "inspect_min_ms": min(i),
                    "inspect_median_ms": statistics.median(i),
                    "ratio_min": min(i) / min(p),
                    "ratio_median": statistics.median(i) / statistics.median(p),
                }
                r = row[src]
                print(
                    f"e2e threads={nt} {src}: plain {r['plain_min_ms']:.2f} / {r['plain_median_ms']:.2f} ms/batch, "
                    f"inspect {r['inspect_min_ms']:.2f} / {r['inspect_median_ms']:.2f}; ratio of minima "
                    f"x{r['ratio_min']:.3f} (medians x{r['ratio_median']:.3f})",
                    flush=True,
                )
            out[str(nt)] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="glue,ops,e2e")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=80, help="repetitions of part glue (time-boxed to 60 s)")
    ap.add_argument("--e2e-reps", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    parts = args.parts.split(",")
    res: dict[str, Any] = {"code": rb.code_version()}
    if "glue" in parts:
        res["glue"] = part_glue(threads, args.reps)
    if "ops" in parts:
        res["ops"] = part_ops()
    if "e2e" in parts:
        res["e2e"] = part_e2e(threads, args.e2e_reps)
    if args.json is not None:
        import json

        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
