"""The seed's claim measured with paired intervals, and the tool's view of every trained MMoE.

Run by hand: `nice -n 10 python bench/paper_benchmark.py` (about 20 minutes of CPU time with one torch
thread; the committed run took 33 minutes of wall clock as three processes on the shared 2-core
machine: `--sweeps synthetic --rhos 0 0.25 0.5`, `--sweeps synthetic --rhos 0.75 0.9 1` and `--sweeps
recsys`, each with its own `--out`, joined by `--merge DIR DIR DIR`). `--quick` runs 2 seeds, 2
correlations and a budget too small to converge in well under a minute (CI,
`tests/test_paper_benchmark.py`); `--out DIR` writes somewhere else than `bench/results/`;
`--from-json` redraws the tables and figures from `DIR/paper_benchmark.json` without training.

Two sweeps, each over task relatedness in {0, 0.25, 0.5, 0.75, 0.9, 1.0} and seeds 0..9:

* **Synthetic** (Ma et al., KDD 2018, section 3.2, `make_synthetic`): task correlation rho. The paper's
  configuration (8 experts of 16 units, towers of 8; Shared-Bottom of the same parameter count) and one
  with more experts at the same width (16 experts of 8 units). Loss: test MSE averaged over the two
  tasks. Paired over seeds: per seed every architecture sees the same rows and starts from
  `torch.manual_seed(seed)`.
* **Recommender** (`make_recsys`, click ~20 %, purchase ~2 %): its `relatedness` knob (weight of the
  click score in the purchase propensity; the default 0.7 is what the demo uses and is untouched).
  Shared-Bottom, OMoE, MMoE and a purchase-only single-task model; gain on the sparse task = purchase
  test AUC minus the single-task model's.

Intervals are 95 % paired t-intervals over seeds (the per-seed difference of two architectures, mean
± t(0.975, n-1) * sd / sqrt(n)); the trainability view is the spread of the final test loss over seeds.
Every trained MMoE is inspected with the library itself (`mmoe_inspect.inspector.inspect`: per-row
task divergence, task-expert mutual information, effective experts per gate) and its experts are
ablated (`mmoe_inspect.causal.run_causal`, renormalize mode) on held-out rows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))

from _paper_report import write_outputs
from _paper_train import Budget, Trained, predict, train

from mmoe_inspect.causal import run_causal
from mmoe_inspect.data.batches import frame_to_inputs, take
from mmoe_inspect.datasets import (
    make_recsys,
    make_synthetic,
    recsys_features,
    recsys_tasks,
    synthetic_tasks,
)
from mmoe_inspect.inspector import InspectConfig, inspect
from mmoe_inspect.models import MMoE, OMoE, SharedBottom
from mmoe_inspect.train import roc_auc

RESULTS = Path(__file__).parent / "results"
SWEEPS = ("synthetic", "recsys")
RELATEDNESS = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)
D = 100
SYN_CONFIGS = {
    "paper": {"n_experts": 8, "expert_hidden": (16,), "tower_hidden": (8,)},
    "more-experts": {"n_experts": 16, "expert_hidden": (8,), "tower_hidden": (8,)},
}
REC_MOE = {"n_experts": 4, "expert_hidden": (32, 16), "tower_hidden": (16,)}
REC_BOTTOM = {"bottom_hidden": (64, 16), "tower_hidden": (16,)}


SYN_BUDGET = Budget(lr=1e-2, batch_size=512, max_epochs=150, plateau=3, factor=0.2)
REC_BUDGET = Budget(lr=3e-3, batch_size=1024, max_epochs=60, plateau=2, factor=0.2)


@dataclass(frozen=True)
class Plan:
    """Size of one run of the benchmark."""

    seeds: int = 10
    rhos: tuple[float, ...] = RELATEDNESS
    syn_train: int = 6000
    syn_val: int = 1500
    syn_test: int = 5000
    syn_budget: Budget = SYN_BUDGET
    rec_train: int = 24000
    rec_val: int = 5000
    rec_test: int = 15000
    rec_budget: Budget = REC_BUDGET
    inspect_rows: int = 2000
    n_boot: int = 100


QUICK = Plan(
    seeds=2,
    rhos=(0.5, 1.0),
    syn_train=1500,
    syn_val=500,
    syn_test=1000,
    syn_budget=Budget(lr=1e-2, batch_size=512, max_epochs=6, plateau=2, factor=0.2),
    rec_train=6000,
    rec_val=1500,
    rec_test=3000,
    rec_budget=Budget(lr=3e-3, batch_size=1024, max_epochs=4, plateau=2, factor=0.2),
    inspect_rows=500,
    n_boot=20,
)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def matched_bottom_width() -> int:
    """Shared-Bottom hidden width whose parameter count is closest to the paper-configuration MMoE's."""
    target = n_params(MMoE(D, synthetic_tasks(), **SYN_CONFIGS["paper"]))
    return min(
        range(8, 1024),
        key=lambda w: abs(
            n_params(SharedBottom(D, synthetic_tasks(), bottom_hidden=(w,), tower_hidden=(8,))) - target
        ),
    )


def seeded(seed: int, make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """`make()` under `torch.manual_seed(seed)`: the same initial draw whatever ran before."""
    torch.manual_seed(seed)
    return make()


def tool_view(model: torch.nn.Module, frame: pd.DataFrame, plan: Plan, seed: int) -> dict:
    """What mmoe-inspect says about one trained MMoE on held-out rows: routing tables and ablation."""
    start = time.perf_counter()
    rows = frame.iloc[: plan.inspect_rows]
    result = inspect(model, rows, config=InspectConfig(record_experts=False, seed=seed))
    div = result.table("task_divergence")
    mi = result.table("mutual_information")
    gates = result.table("gate_metrics")
    causal = run_causal(
        model,
        rows,
        analyses=("ablation",),
        modes=("renormalize",),
        max_rows=plan.inspect_rows,
        intervals="bootstrap",  # as in the recorded run (the README quotes its bootstrap intervals)
        n_boot=plan.n_boot,
        seed=seed,
    )
    ablation = causal.ablation
    ablation = ablation[(ablation["mode"] == "renormalize") & ablation["metric"].isin(("auc", "mse"))]
    imp = causal.importance()  # [tasks, experts]
    vectors = imp.to_numpy(dtype=float)
    a, b = vectors[0], vectors[1]
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return {
        "jsd_per_row": float(div["jsd_per_row"].mean()),
        "jsd_mean_gates": float(div["jsd_mean_gates"].mean()),
        "tv_per_row": float(div["tv_per_row"].mean()),
        "mutual_information": float(mi["mutual_information"].iloc[0]),
        "mi_normalized": float(mi["normalized"].iloc[0]),
        "effective_experts": {
            str(g): float(e) for g, e in zip(gates["task"], gates["effective_experts"], strict=True)
        },
        "importance": {str(t): [float(v) for v in row] for t, row in zip(imp.index, vectors, strict=True)},
        "importance_cosine": float(a @ b / norm) if norm > 0 else math.nan,
        "significant_experts": {
            str(t): int(
                ((ablation["task"] == t) & ablation["significant"] & (ablation["importance"] > 0)).sum()
            )
            for t in imp.index
        },
        "seconds": time.perf_counter() - start,
    }


def safe_view(model: torch.nn.Module, frame: pd.DataFrame, plan: Plan, seed: int) -> dict:
    """`tool_view`, or `{"error": ...}` (printed, and left out of the tables) when the tool fails on a model."""
    try:
        return tool_view(model, frame, plan, seed)
    except Exception as exc:  # one failing inspection must not lose a 40-minute sweep
        print(f"INSPECTION FAILED (seed {seed}): {type(exc).__name__}: {exc}", flush=True)
        return {"error": f"{type(exc).__name__}: {exc}"}


def _record(kind: str, config: str, model: str, rho: float, seed: int, run: Trained, **extra: object) -> dict:
    return {
        "sweep": kind,
        "config": config,
        "model": model,
        "rho": rho,
        "seed": seed,
        **extra,
        "epochs": len(run.val_loss),
        "best_epoch": run.best_epoch,
        "stop_reason": run.stop_reason,
        "converged": run.converged,
        "last_window_improvement": run.last_window_improvement
        if math.isfinite(run.last_window_improvement)
        else None,
        "train_curve": [round(v, 6) for v in run.train_loss],
        "val_curve": [round(v, 6) for v in run.val_loss],
        "seconds": round(run.seconds, 3),
    }


def synthetic_cell(rho: float, seed: int, plan: Plan, width: int) -> tuple[list[dict], list[dict]]:
    """Every synthetic architecture on one (rho, seed): runs and the tool's view of each MMoE."""
    n = plan.syn_train + plan.syn_val + plan.syn_test
    frame = make_synthetic(n, rho, d=D, seed=seed)
    x = torch.from_numpy(frame[[f"x{j}" for j in range(D)]].to_numpy(np.float32, copy=True))
    y = torch.from_numpy(frame[["y1", "y2"]].to_numpy(np.float32, copy=True))
    a, b = plan.syn_train, plan.syn_train + plan.syn_val
    tasks = [("y1", "regression"), ("y2", "regression")]
    test_frame = frame.iloc[b:].reset_index(drop=True)
    builds: list[tuple[str, str, Callable[[], torch.nn.Module]]] = [
        (
            "paper",
            "Shared-Bottom",
            lambda: SharedBottom(D, synthetic_tasks(), bottom_hidden=(width,), tower_hidden=(8,)),
        )
    ]
    for config, kwargs in SYN_CONFIGS.items():
        builds.append((config, "OMoE", lambda kw=kwargs: OMoE(D, synthetic_tasks(), **kw)))
        builds.append((config, "MMoE", lambda kw=kwargs: MMoE(D, synthetic_tasks(), **kw)))
    runs, views = [], []
    for config, name, make in builds:
        model = seeded(seed, make)
        run = train(model, (x[:a], y[:a]), (x[a:b], y[a:b]), tasks, plan.syn_budget, seed)
        pred = predict(model, x[b:])
        truth = y[b:].double().numpy()
        mse = [float(np.mean((pred[t] - truth[:, j]) ** 2)) for j, (t, _) in enumerate(tasks)]
        runs.append(
            _record(
                "synthetic", config, name, rho, seed, run, mse_y1=mse[0], mse_y2=mse[1], loss=sum(mse) / 2
            )
        )
        if name == "MMoE":
            views.append(
                {
                    "sweep": "synthetic",
                    "config": config,
                    "rho": rho,
                    "seed": seed,
                    **safe_view(model, test_frame, plan, seed),
                }
            )
    return runs, views


def recsys_cell(rel: float, seed: int, plan: Plan) -> tuple[list[dict], list[dict]]:
    """Shared-Bottom, OMoE, MMoE and purchase-only on one (relatedness, seed) of the recommender data."""
    n = plan.rec_train + plan.rec_val + plan.rec_test
    frame = make_recsys(n, relatedness=rel, seed=seed)
    features = recsys_features(frame)
    inputs = frame_to_inputs(frame, features)
    labels = torch.from_numpy(frame[["click", "purchase"]].to_numpy(np.float32, copy=True))
    t, v = plan.rec_test, plan.rec_test + plan.rec_val  # test rows first, then validation, then training
    test_frame = frame.iloc[:t].reset_index(drop=True)
    both = recsys_tasks()
    builds: list[tuple[str, tuple, Callable[[], torch.nn.Module]]] = [
        ("Shared-Bottom", both, lambda: SharedBottom(features, both, **REC_BOTTOM)),
        ("OMoE", both, lambda: OMoE(features, both, **REC_MOE)),
        ("MMoE", both, lambda: MMoE(features, both, **REC_MOE)),
        ("purchase-only", both[1:], lambda: SharedBottom(features, both[1:], **REC_BOTTOM)),
    ]
    runs, views = [], []
    truth = labels[:t].double().numpy()
    for name, model_tasks, make in builds:
        cols = [0, 1] if len(model_tasks) == 2 else [1]
        spec = [(task.name, "binary") for task in model_tasks]
        model = seeded(seed, make)
        run = train(
            model,
            (take(inputs, slice(v, None)), labels[v:, cols]),
            (take(inputs, slice(t, v)), labels[t:v, cols]),
            spec,
            plan.rec_budget,
            seed,
        )
        pred = predict(model, take(inputs, slice(0, t)))
        metrics = {
            f"auc_{task}": roc_auc(pred[task], truth[:, j])
            for j, task in enumerate(("click", "purchase"))
            if task in pred
        }
        runs.append(
            _record(
                "recsys", "recsys", name, rel, seed, run, **metrics, purchase_rate=float(truth[:, 1].mean())
            )
        )
        if name == "MMoE":
            views.append(
                {
                    "sweep": "recsys",
                    "config": "recsys",
                    "rho": rel,
                    "seed": seed,
                    **safe_view(model, test_frame, plan, seed),
                }
            )
    return runs, views


def run(plan: Plan, log: Callable[[str], None] = print, sweeps: Sequence[str] = SWEEPS) -> dict:
    torch.set_num_threads(1)  # tiny models: one thread is fastest and least disturbed by other load
    width = matched_bottom_width()
    params = {
        "Shared-Bottom (synthetic)": n_params(
            SharedBottom(D, synthetic_tasks(), bottom_hidden=(width,), tower_hidden=(8,))
        ),
        **{
            f"{m} ({c})": n_params(cls(D, synthetic_tasks(), **kw))
            for c, kw in SYN_CONFIGS.items()
            for m, cls in (("OMoE", OMoE), ("MMoE", MMoE))
        },
    }
    runs: list[dict] = []
    views: list[dict] = []
    start = time.perf_counter()
    for sweep in sweeps:
        for rho in plan.rhos:
            for seed in range(plan.seeds):
                t0 = time.perf_counter()
                r, v = (
                    synthetic_cell(rho, seed, plan, width)
                    if sweep == "synthetic"
                    else recsys_cell(rho, seed, plan)
                )
                runs += r
                views += v
                summary = " ".join(
                    f"{x['model']}/{x['config']} {x.get('loss', x.get('auc_purchase', math.nan)):.4f}"
                    for x in r
                )
                log(f"{sweep} rho={rho:.2f} seed={seed} {time.perf_counter() - t0:5.1f}s  {summary}")
    return {
        "setup": {
            "plan": {k: (asdict(v) if isinstance(v, Budget) else v) for k, v in asdict(plan).items()},
            "synthetic_configs": {
                k: {**v, "expert_hidden": list(v["expert_hidden"]), "tower_hidden": list(v["tower_hidden"])}
                for k, v in SYN_CONFIGS.items()
            },
            "shared_bottom_width": width,
            "parameters": params,
            "recsys_moe": {k: list(v) if isinstance(v, tuple) else v for k, v in REC_MOE.items()},
            "recsys_bottom": {k: list(v) for k, v in REC_BOTTOM.items()},
            "torch": torch.__version__,
            "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch thread, {os.cpu_count()} cores, no GPU",
            "sweeps": list(sweeps),
            "total_seconds": round(time.perf_counter() - start, 1),
            "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        },
        "runs": runs,
        "views": views,
    }


def merge(parts: list[dict]) -> dict:
    """One report from several (same plan, different sweeps): runs and views joined, seconds per part kept."""
    setup = dict(parts[0]["setup"])
    setup["sweeps"] = list(dict.fromkeys(s for p in parts for s in p["setup"]["sweeps"]))
    setup["plan"] = {**setup["plan"], "rhos": sorted({r for p in parts for r in p["setup"]["plan"]["rhos"]})}
    setup["part_seconds"] = {
        f"{'+'.join(p['setup']['sweeps'])} rho {','.join(f'{r:g}' for r in p['setup']['plan']['rhos'])}": p[
            "setup"
        ]["total_seconds"]
        for p in parts
    }
    setup["total_seconds"] = max(p["setup"]["total_seconds"] for p in parts)  # the parts ran side by side
    setup["load_average_1min_at_end"] = max(p["setup"]["load_average_1min_at_end"] for p in parts)
    return {
        "setup": setup,
        "runs": [r for p in parts for r in p["runs"]],
        "views": [v for p in parts for v in p["views"]],
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="2 seeds, rho 0.5 and 1.0, tiny budget (< 1 min)"
    )
    parser.add_argument("--seeds", type=int, help="seeds per cell (default 10; --quick 2)")
    parser.add_argument(
        "--rhos", type=float, nargs="+", help="relatedness values (default 0 .25 .5 .75 .9 1)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="output folder (default bench/results)")
    parser.add_argument("--from-json", action="store_true", help="redraw tables and figures from OUT's JSON")
    parser.add_argument(
        "--sweeps", nargs="+", choices=SWEEPS, default=list(SWEEPS), help="which sweeps to run"
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="combine the JSON reports in these folders (e.g. the two sweeps run as separate processes) into OUT",
    )
    args = parser.parse_args(argv)
    json_path = args.out / "paper_benchmark.json"
    if args.from_json:
        report = json.loads(json_path.read_text(encoding="utf-8"))
    elif args.merge:
        parts = [json.loads((d / "paper_benchmark.json").read_text(encoding="utf-8")) for d in args.merge]
        report = merge(parts)
        args.out.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    else:
        plan = QUICK if args.quick else Plan()
        if args.seeds is not None:
            plan = replace(plan, seeds=args.seeds)
        if args.rhos is not None:
            plan = replace(plan, rhos=tuple(args.rhos))
        report = run(plan, log=lambda line: print(line, flush=True), sweeps=args.sweeps)
        report["setup"]["quick"] = bool(args.quick)
        args.out.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    for path in write_outputs(report, args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
