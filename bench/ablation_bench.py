"""Cost of expert ablation: naive (one forward per variant) vs batched vs cached, on a 1M-row pass.

Run by hand from the repository root (not a unit test; about 4-6 minutes on 2 shared CPU cores)::

    /work/venv/bin/python bench/ablation_bench.py

Options: ``--rows 1000000`` (rows of the ablation pass), ``--boot-rows 200000`` (rows of the
bootstrap timing), ``--batch-size 4096``, ``--threads 1``, ``--models recsys_mmoe,dense_mmoe,recsys_ple``,
``--max-stack-rows 16384`` (rows per stacked forward), ``--quick`` (50k rows, to check that the script runs), ``--out bench/results`` (writes
``ablation_bench.json`` and ``ablation_bench.md``).

What is measured, per model (untrained: the timing does not depend on the weights): the streaming
pass of `mmoe_inspect.causal` that evaluates the intact model and every expert ablation (each
expert removed, modes "renormalize" and "zero": 2E variants, E+... forwards) over ``--rows`` rows of
an in-memory DataFrame, batch 4096, one torch thread, without gradients. The pass
includes what every strategy shares (DataFrame → tensors per batch, labels, keeping per-row
predictions). Strategies:

* ``naive``: per batch, one forward for the intact model and one per variant (data converted once).
* ``batched``: per batch, ONE forward of the batch stacked 1 + 2E times, each row block with its
  own gate edits.
* ``cached_hooks``: batched, plus the hook-based expert cache: an expert whose input blocks are
  identical runs once on the batch and its output is tiled (all experts of an MMoE; only level-0
  experts of a PLE). This was ``cached`` before re-mixing; kept to compare in the same run.
* ``cached``: the default. For the package's own OMoE/MMoE/PLE/CGC, re-mixing (`causal.remix`): the
  intact forward runs once per batch with its expert outputs kept, each variant's mixtures are
  re-mixed from them with its edited gates, and only what depends on a changed mixture (later PLE
  levels, towers) runs again, on those variants only. Other models: as ``cached_hooks``.

Also reported: a plain inference pass (intact model only) over the same rows, the largest difference
of the point importances (AUC and log loss) between strategies, and the time of the interval
evaluation of all ablated prediction sets on ``--boot-rows`` rows: 200 paired bootstrap resamples
vs the analytic intervals (DeLong / CLT).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mmoe_inspect.causal._engine import collect
from mmoe_inspect.causal.ablation import ablation_table, ablation_variants
from mmoe_inspect.causal.metrics import Evaluation
from mmoe_inspect.data.batches import frame_to_inputs
from mmoe_inspect.data.schema import FeatureSpec
from mmoe_inspect.data.sources import TableSource
from mmoe_inspect.datasets import make_recsys, recsys_features, recsys_tasks
from mmoe_inspect.models import PLE, MMoE
from mmoe_inspect.topology.spec import TaskSpec

RESULTS = Path(__file__).parent / "results"
STRATEGIES = ("naive", "batched", "cached_hooks", "cached")
"""`cached_hooks` is strategy "cached" with re-mixing off (`collect(remix=False)`): the hook-based expert
cache alone, i.e. what "cached" did before re-mixing, timed in the same run."""


def dense_frame(n_rows: int, n_features: int, tasks: tuple[str, ...], seed: int = 0) -> pd.DataFrame:
    """Gaussian features `f0..` and random 0/1 labels (timing only)."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        rng.standard_normal((n_rows, n_features), dtype=np.float32),
        columns=[f"f{i}" for i in range(n_features)],
    )
    for t in tasks:
        frame[t] = (rng.random(n_rows) < 0.2).astype(np.float32)
    return frame


def build(name: str, rows: int) -> tuple[str, nn.Module, pd.DataFrame, FeatureSpec]:
    """(description, model, data, features) of one benchmark model."""
    torch.manual_seed(0)
    if name in ("recsys_mmoe", "recsys_ple"):
        frame = make_recsys(rows, seed=0)
        features, tasks = recsys_features(frame), recsys_tasks()
        if name == "recsys_mmoe":
            model = MMoE(features, tasks, n_experts=4, expert_hidden=(32, 16), tower_hidden=(16,))
            desc = "MMoE, demo size: 4 experts [32, 16], towers [16], 2 tasks, recsys input (8 dense + 4 embedded ids)"
        else:
            model = PLE(
                features,
                tasks,
                n_experts=2,
                n_specific=1,
                n_levels=2,
                expert_hidden=(32, 16),
                tower_hidden=(16,),
            )
            desc = (
                "PLE, demo size: 2 levels x (2 shared + 1 per task) experts [32, 16], 2 tasks, recsys input"
            )
        return desc, model, frame, features
    if name == "dense_mmoe":
        task_names = ("click", "like", "share")
        features = FeatureSpec.dense_only(64, prefix="f")
        model = MMoE(
            features,
            [TaskSpec(t) for t in task_names],
            n_experts=8,
            expert_hidden=(128, 64),
            tower_hidden=(32,),
        )
        desc = "MMoE: 8 experts [128, 64], towers [32], 3 tasks, 64 dense features"
        return desc, model, dense_frame(rows, 64, task_names), features
    raise ValueError(f"unknown model {name!r}")


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def run_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    desc, model, frame, features = build(name, args.rows)
    model.eval()
    topo = model.topology()
    variants, _ = ablation_variants(topo)
    source = TableSource.of(frame)
    spec = features

    def input_fn(chunk: pd.DataFrame) -> Any:
        return frame_to_inputs(chunk, spec)

    cols = list(spec.names) + [t.label_column for t in topo.tasks]
    common = {"columns": cols, "batch_size": args.batch_size, "max_rows": args.rows}
    stacked = {"max_stack_rows": args.max_stack_rows}
    plain, plain_s = timed(lambda: collect(model, topo, source, input_fn, strategy="naive", **common))
    out: dict[str, Any] = {
        "model": name,
        "description": desc,
        "experts": len(topo.experts),
        "variants": len(variants),
        "rows": plain.n_rows,
        "plain_seconds": plain_s,
        "strategies": {},
    }
    print(f"{name}: {desc}; {plain.n_rows:,} rows, {len(variants)} ablation variants")
    print(f"  plain inference pass: {plain_s:.1f} s")
    tables: dict[str, pd.DataFrame] = {}
    preds: dict[str, dict] = {}
    for strategy in args.strategies:
        runs = []
        for _ in range(args.repeat):
            col, sec = timed(
                lambda strategy=strategy: collect(
                    model,
                    topo,
                    source,
                    input_fn,
                    variants=variants,
                    strategy="cached" if strategy == "cached_hooks" else strategy,
                    remix=strategy != "cached_hooks",
                    **common,
                    **stacked,
                )
            )
            runs.append(sec)
        sec = float(np.median(runs))
        ev = Evaluation(col.labels, topo.tasks, col.preds, n_boot=0)
        tables[strategy] = ablation_table(ev, variants)
        preds[strategy] = col.preds
        out["strategies"][strategy] = {
            "seconds": sec,
            "runs_seconds": runs,
            "rows_per_second": col.n_rows / sec,
            "forwards": col.forwards,
            "strategy_used": col.strategy,
            "remixed": col.remixed,
            "notes": col.notes,
        }
        print(f"  {strategy:12s} {sec:7.1f} s  {col.n_rows / sec:10,.0f} rows/s  {col.forwards} forwards")
    naive = out["strategies"]["naive"]["seconds"]
    for strategy in args.strategies:
        entry = out["strategies"][strategy]
        entry["speedup_vs_naive"] = naive / entry["seconds"]
        entry["max_abs_importance_diff_vs_naive"] = float(
            (tables[strategy]["importance"] - tables["naive"]["importance"]).abs().max()
        )
        entry["max_abs_prediction_diff_vs_naive"] = float(
            max(np.abs(preds[strategy][k] - preds["naive"][k]).max() for k in preds["naive"])
        )
        entry["ablation_over_plain"] = entry["seconds"] / plain_s
    boot_rows = min(args.boot_rows, plain.n_rows)
    sub = {k: v[:boot_rows] for k, v in preds["cached"].items()}
    labels = np.asarray(plain.labels[:boot_rows])
    _, boot_s = timed(lambda: Evaluation(labels, topo.tasks, sub, n_boot=200, seed=0, intervals="bootstrap"))
    _, analytic_s = timed(lambda: Evaluation(labels, topo.tasks, sub, intervals="analytic"))
    out["bootstrap"] = {
        "rows": boot_rows,
        "n_boot": 200,
        "prediction_sets": len(sub),
        "tasks": len(topo.tasks),
        "seconds": boot_s,
        "analytic_seconds": analytic_s,
    }
    print(f"  bootstrap (200 resamples, {len(sub)} prediction sets, {boot_rows:,} rows): {boot_s:.1f} s")
    print(f"  analytic intervals (DeLong / CLT), same sets and rows: {analytic_s:.2f} s")
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Expert ablation: naive vs batched vs cached",
        "",
        "Generated by `python bench/ablation_bench.py` (see its docstring for what is measured).",
        f"Ran on {result['machine']}, {result['threads']} torch thread(s), torch {result['torch']}, "
        f"batch {result['batch_size']}, stacked forwards of at most {result['max_stack_rows']} rows; 1-minute load average {result.get('load_start', float('nan')):.2f} at the start, {result['load_end']:.2f} at the end "
        f"(other jobs shared the cores: {result.get('repeat', 1)} run(s) per strategy, median shown, so read ratios, not absolute numbers).",
        "",
        "Each pass evaluates the intact model and every expert ablation (modes renormalize and zero) "
        "on every row, keeping per-row predictions. 'plain' is one inference pass of the intact model. "
        "'cached' re-mixes cached expert outputs (`mmoe_inspect.causal.remix`); 'cached (hooks only)' is the "
        "hook-based expert cache alone (what 'cached' was before re-mixing), timed in the same run.",
        "",
        "| model | rows | variants | plain s | naive s | batched s | cached (hooks only) s | cached s "
        "| batched speed-up | cached (hooks only) speed-up | cached speed-up "
        "| cached / plain | max abs importance diff | max abs prediction diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in result["models"]:
        s = m["strategies"]
        diff = max(s[k]["max_abs_importance_diff_vs_naive"] for k in s)
        pdiff = max(s[k]["max_abs_prediction_diff_vs_naive"] for k in s)

        def sec(k: str, s: dict = s) -> str:
            return f"{s[k]['seconds']:.1f}" if k in s else "-"

        def up(k: str, s: dict = s) -> str:
            return f"{s[k]['speedup_vs_naive']:.2f}x" if k in s else "-"

        lines.append(
            f"| {m['model']} | {m['rows']:,} | {m['variants']} | {m['plain_seconds']:.1f} | "
            f"{sec('naive')} | {sec('batched')} | {sec('cached_hooks')} | {sec('cached')} | "
            f"{up('batched')} | {up('cached_hooks')} | {up('cached')} | "
            f"{s['cached']['ablation_over_plain']:.2f} | {diff:.1e} | {pdiff:.1e} |"
        )
    lines += ["", "Models:", ""]
    lines += [f"- {m['model']}: {m['description']}." for m in result["models"]]
    lines += [
        "",
        "Interval evaluation of all prediction sets of the cached pass: 200 paired bootstrap resamples vs "
        "analytic (DeLong / CLT, the default):",
        "",
    ]
    lines += [
        f"- {m['model']}: {m['bootstrap']['prediction_sets']} prediction sets x {m['bootstrap']['tasks']} tasks "
        f"x 2 metrics on {m['bootstrap']['rows']:,} rows: bootstrap {m['bootstrap']['seconds']:.1f} s"
        + (
            f", analytic {m['bootstrap']['analytic_seconds']:.2f} s"
            if "analytic_seconds" in m["bootstrap"]
            else ""
        )
        for m in result["models"]
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--boot-rows", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-stack-rows", type=int, default=16_384)
    parser.add_argument("--models", default="recsys_mmoe,dense_mmoe,recsys_ple")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="runs per strategy; the median is reported")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="naive must be among them")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.rows, args.boot_rows = 50_000, 20_000
    args.strategies = args.strategies.split(",")
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    models = []
    for name in args.models.split(","):
        models.append(run_model(name, args))
    result = {
        "machine": platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "batch_size": args.batch_size,
        "max_stack_rows": args.max_stack_rows,
        "seconds": time.perf_counter() - started,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "repeat": args.repeat,
        "models": models,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation_bench.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (args.out / "ablation_bench.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


if __name__ == "__main__":
    main()
