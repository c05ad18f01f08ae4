"""A/B of `causal.remix.Remixer.run`: this tree's version vs the one at a git ref, interleaved in one process.

Run by hand from the repository root (not a unit test; about a minute on 1 shared core)::

    .venv/bin/python bench/remix_bench.py --base HEAD~1 --rows 200000

What is timed: `Remixer.run` alone (no data reading, no metrics) on the batches of ``--rows`` rows of the
1M-row bench file (``--data``, ``--model``: bench/record_bench.py's memory model MMoE, 32 dense inputs,
8 experts x [64], towers [32], 2 binary tasks), batch ``--batch-size`` (4096), with the variants the causal
report evaluates (expert ablations "renormalize" and "zero", counterfactual gates: other task's gate,
uniform, mean gate: 22 for this model). One repeat = every batch through A, then every batch through B
(the order alternates between repeats); the median over ``--repeats`` of the per-repeat totals is
reported, with the load average before and after. Also the largest difference of the two versions'
predictions (they must agree to float rounding). ``--profile`` prints torch's operator profile of one
repeat of this tree's version instead. ``--experts N``: an untrained MMoE of the same shape with N experts
instead of the checkpoint (the difference path of `Remixer._ablated` starts at `DIFFERENCE_MIN_EXPERTS`);
``--difference-from N`` sets it for this tree's version.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from mmoe_inspect.causal.ablation import ablation_variants
from mmoe_inspect.causal.counterfactual import counterfactual_variants
from mmoe_inspect.causal.remix import DIFFERENCE_MIN_EXPERTS, Remixer
from mmoe_inspect.loading import load_model
from mmoe_inspect.models import MMoE


def base_module(ref: str):
    """`mmoe_inspect/causal/remix.py` as it is at git `ref`, imported under another name."""
    root = Path(__file__).resolve().parent.parent
    text = subprocess.run(
        ["git", "-C", str(root), "show", f"{ref}:mmoe_inspect/causal/remix.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "remix_base.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("remix_base", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["remix_base"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="HEAD", help="git ref of the baseline remix.py")
    ap.add_argument("--data", default="/tmp/s7/d1m.parquet")
    ap.add_argument("--model", default="/tmp/s7/m.pt")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument(
        "--difference-from",
        type=int,
        default=DIFFERENCE_MIN_EXPERTS,
        help="this tree's Remixer(difference_from=...): fewest experts of a gate for ablations by difference",
    )
    ap.add_argument(
        "--experts",
        type=int,
        default=0,
        help="instead of --model, an untrained MMoE of the same shape with this many experts (timing only)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    loaded = load_model(args.model)
    model = loaded.model.eval()
    if args.experts:
        torch.manual_seed(0)
        model = MMoE(
            32, ["click", "buy"], n_experts=args.experts, expert_hidden=(64,), tower_hidden=(32,)
        ).eval()
    topo = model.topology()
    cols = list(loaded.features)
    table = pq.read_table(args.data, columns=cols).slice(0, args.rows)
    x = torch.from_numpy(np.stack([table.column(c).to_numpy() for c in cols], axis=1).astype(np.float32))
    batches = list(torch.split(x, args.batch_size))
    with torch.no_grad():  # mean gates over the first batches, as the report's first pass
        h = model.inputs(x[:65536])
        means = {g.name: model.gates[i](h).mean(0).tolist() for i, g in enumerate(topo.gates)}
    abl, _ = ablation_variants(topo)
    cf, _ = counterfactual_variants(topo, means)
    edits = [v.edits for v in abl + cf]
    new = Remixer(model, topo, edits, difference_from=args.difference_from)
    print(f"{len(batches)} batches of {args.batch_size}, {len(edits)} variants, threads {args.threads}")

    def one(r) -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            for b in batches:
                r.run(b)
        return time.perf_counter() - t

    if args.profile:
        one(new)
        with torch.profiler.profile(record_shapes=True) as prof:
            one(new)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        table = prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=40
        )
        print(table)
        return

    old = base_module(args.base).Remixer(model, topo, edits)
    with torch.inference_mode():  # the two versions agree
        worst = 0.0
        for b in batches[:8]:
            a, c = old.run(b), new.run(b)
            worst = max(worst, max((a[k] - c[k]).abs().max().item() for k in a))
    print(f"largest |base - this| prediction difference (8 batches): {worst:.3g}")
    one(old), one(new)  # warm-up (buffers, folds)
    times: dict[str, list[float]] = {"base": [], "this": []}
    print(f"load average before: {os.getloadavg()}")
    for i in range(args.repeats):
        pair = [("base", old), ("this", new)]
        for name, r in pair if i % 2 == 0 else pair[::-1]:
            times[name].append(one(r))
    print(f"load average after:  {os.getloadavg()}")
    for name, ts in times.items():
        print(
            f"{name}: median {statistics.median(ts):.3f} s, min {min(ts):.3f} s ({', '.join(f'{t:.3f}' for t in ts)})"
        )
    scale = 1_000_000 / args.rows
    base, this = statistics.median(times["base"]), statistics.median(times["this"])
    print(
        f"per 1M rows (medians): base {base * scale:.2f} s, this {this * scale:.2f} s, ratio {base / this:.2f}x"
    )
    ratios = [a / b for a, b in zip(times["base"], times["this"], strict=True)]
    print(
        f"per-repeat ratios base/this: {', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f}"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
