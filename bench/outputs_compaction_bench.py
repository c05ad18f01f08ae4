"""CPU cost of `TaskOutputStats` (exact-AUC score rows and their compactions) per 4,096-row batch, this
checkout against another git revision's `mmoe_inspect/stats/outputs.py`, in one process (1 thread).

    python bench/outputs_compaction_bench.py --against 16f7f29 [--tasks 3] [--reps 15]

Streams of 48 chunks of 16,384 rows (786,432 rows; the chunk `inspect()` updates its statistics with)
through a fresh `TaskOutputStats` of ``--tasks`` binary tasks, old and new alternated in a shuffled
order, ``--reps`` times: "same" feeds one chunk's predictions every time (as `bench/scale_bench.py`'s
recording part, whose input batch never changes: few distinct values), "distinct" fresh predictions
every chunk (a real data set: every value new, the kept rows grow with the rows). Prints the median
CPU ms per batch (process time) and the median of the paired new / old ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def load_revision(rev: str) -> object:
    """`mmoe_inspect/stats/outputs.py` at git revision `rev`, imported as a module of its own."""
    root = Path(__file__).resolve().parents[1]
    src = subprocess.run(
        ["git", "show", f"{rev}:mmoe_inspect/stats/outputs.py"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "outputs_at_revision.py"
    path.write_text(src, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("outputs_at_revision", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", required=True, help="git revision to compare with (e.g. main)")
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--chunks", type=int, default=48)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import mmoe_inspect.stats.outputs as new

    old = load_revision(args.against)
    rows, t, n = 16_384, args.tasks, args.chunks
    gen = torch.Generator().manual_seed(0)
    distinct = [torch.rand(rows, t, generator=gen) for _ in range(n)]
    labels = [(torch.rand(rows, t, generator=gen) < 0.1).double() for _ in range(n)]
    streams = {"same": [distinct[0]] * n, "distinct": distinct}

    def run(mod: object, preds: list[torch.Tensor]) -> float:
        stats = mod.TaskOutputStats(["binary"] * t)  # type: ignore[attr-defined]
        c0 = time.process_time()
        for p, y in zip(preds, labels, strict=True):
            stats.update(p, y)
        return (time.process_time() - c0) / n / (rows // 4096) * 1e3

    res: dict[tuple[str, str], list[float]] = {(v, k): [] for v in ("old", "new") for k in streams}
    rng = random.Random(0)
    for _ in range(args.reps):
        order = list(res)
        rng.shuffle(order)
        for v, k in order:
            res[(v, k)].append(run(old if v == "old" else new, streams[k]))
    print(
        f"TaskOutputStats, {t} binary tasks, {n} chunks of {rows} rows, {args.reps} reps, 1 thread, CPU ms per 4,096-row batch"
    )
    for k in streams:
        o, w = statistics.median(res[("old", k)]), statistics.median(res[("new", k)])
        r = statistics.median(b / a for a, b in zip(res[("old", k)], res[("new", k)], strict=True))
        print(f"  {k:8s}  {args.against}: {o:.3f}  this checkout: {w:.3f}  new/old {r:.3f}")


if __name__ == "__main__":
    sys.exit(main())
