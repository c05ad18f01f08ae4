"""Shared-Bottom vs OMoE vs MMoE on the MMoE paper's synthetic data (Ma et al., KDD 2018, section 3.2).

Run by hand: `python bench/paper_benchmark.py` (about 5 minutes on 2 CPU cores, one torch thread). For each task
correlation rho and seed, it draws fresh data (task parameters and rows depend on the seed), trains
the three models in the paper's configuration and measures the test MSE of both tasks. It writes
`bench/results/paper_benchmark.md` (mean ± std over seeds) and `paper_benchmark.json` (every run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from mmoe_inspect.datasets import make_synthetic, synthetic_tasks
from mmoe_inspect.models import MMoE, MultiTaskModel, OMoE, SharedBottom
from mmoe_inspect.train import evaluate, fit

D = 100
N_EXPERTS, EXPERT_UNITS, TOWER_UNITS = 8, 16, 8
RESULTS = Path(__file__).parent / "results"


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def moe_kwargs() -> dict:
    return {"n_experts": N_EXPERTS, "expert_hidden": (EXPERT_UNITS,), "tower_hidden": (TOWER_UNITS,)}


def matched_bottom_width() -> int:
    """Shared-Bottom hidden width whose parameter count is closest to MMoE's."""
    target = n_params(MMoE(D, synthetic_tasks(), **moe_kwargs()))
    return min(
        range(8, 1024),
        key=lambda w: abs(
            n_params(SharedBottom(D, synthetic_tasks(), bottom_hidden=(w,), tower_hidden=(8,))) - target
        ),
    )


def build(name: str, bottom_width: int) -> MultiTaskModel:
    if name == "Shared-Bottom":
        return SharedBottom(D, synthetic_tasks(), bottom_hidden=(bottom_width,), tower_hidden=(TOWER_UNITS,))
    return {"OMoE": OMoE, "MMoE": MMoE}[name](D, synthetic_tasks(), **moe_kwargs())


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)  # tiny models: one thread is fastest and unaffected by other load
    width = matched_bottom_width()
    models = ("Shared-Bottom", "OMoE", "MMoE")
    params = {m: n_params(build(m, width)) for m in models}
    runs = []
    start = time.perf_counter()
    for rho in args.rhos:
        for seed in range(args.seeds):
            frame = make_synthetic(args.train_rows + args.test_rows, rho, d=D, seed=seed)
            train, test = frame.iloc[: args.train_rows], frame.iloc[args.train_rows :]
            for name in models:
                torch.manual_seed(seed)
                model = build(name, width)
                result = fit(
                    model,
                    train,
                    epochs=args.epochs,
                    batch_size=args.batch_size,
                    lr=args.lr,
                    val_fraction=0.1,
                    patience=args.patience,
                    seed=seed,
                )
                metrics = evaluate(model, test)
                runs.append(
                    {
                        "model": name,
                        "rho": rho,
                        "seed": seed,
                        "mse_y1": metrics["y1"]["mse"],
                        "mse_y2": metrics["y2"]["mse"],
                        "var_y1": float(test["y1"].var()),
                        "var_y2": float(test["y2"].var()),
                        "epochs_run": len(result.history),
                        "best_epoch": result.best_epoch,
                        "seconds": result.seconds,
                    }
                )
                print(
                    f"rho={rho:.1f} seed={seed} {name:13s} y1 {metrics['y1']['mse']:.4f} "
                    f"y2 {metrics['y2']['mse']:.4f} ({len(result.history)} epochs, {result.seconds:.1f}s)",
                    flush=True,
                )
    return {
        "setup": {
            "d": D,
            "c": 1.0,
            "m": 10,
            "noise_std": 0.1,
            "rhos": list(args.rhos),
            "seeds": args.seeds,
            "train_rows": args.train_rows,
            "test_rows": args.test_rows,
            "val_fraction": 0.1,
            "epochs": args.epochs,
            "patience": args.patience,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "experts": f"{N_EXPERTS} x Linear(100, {EXPERT_UNITS}) + ReLU",
            "towers": f"Linear(in, {TOWER_UNITS}) + ReLU + Linear({TOWER_UNITS}, 1)",
            "shared_bottom_width": width,
            "parameters": params,
            "torch": torch.__version__,
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread",
            "total_seconds": round(time.perf_counter() - start, 1),
            "cpu_cores": os.cpu_count(),
            "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        },
        "runs": runs,
    }


def summarize(report: dict) -> list[dict]:
    """Per (rho, model): mean and std over seeds of each task's MSE, and seeds where it was best."""
    rows = []
    setup = report["setup"]
    runs = report["runs"]

    def both(run: dict) -> float:
        return run["mse_y1"] + run["mse_y2"]

    for rho in setup["rhos"]:
        seeds = sorted({r["seed"] for r in runs if r["rho"] == rho})
        winners = [
            min((r for r in runs if r["rho"] == rho and r["seed"] == s), key=both)["model"] for s in seeds
        ]
        for model in setup["parameters"]:
            picked = [r for r in runs if r["model"] == model and r["rho"] == rho]
            row = {"model": model, "rho": rho, "wins": winners.count(model), "seeds": len(seeds)}
            for key in ("mse_y1", "mse_y2", "var_y1", "var_y2"):
                values = [r[key] for r in picked]
                row[key] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
            rows.append(row)
    return rows


def markdown(report: dict) -> str:
    s = report["setup"]
    lines = [
        "# MMoE paper synthetic benchmark (small-scale reproduction)",
        "",
        "Generated by `python bench/paper_benchmark.py`. Data: `make_synthetic` (Ma et al., KDD 2018,",
        f"section 3.2) with d={s['d']}, c={s['c']}, m={s['m']}, noise std {s['noise_std']}; every seed draws",
        "new task parameters (u1, u2, alpha, beta) and rows, and initializes the models with the same seed.",
        "",
        f"- Rows per seed: {s['train_rows']} training (of which {s['val_fraction']:.0%} held out for early",
        f"  stopping) and {s['test_rows']} test rows; {s['seeds']} seeds per correlation.",
        f"- MoE models: {s['experts']} experts, linear softmax gates, towers {s['towers']}.",
        f"- Shared-Bottom: Linear(100, {s['shared_bottom_width']}) + ReLU bottom, same towers; its width is",
        "  chosen to match MMoE's parameter count. Parameters: "
        + ", ".join(f"{m} {n}" for m, n in s["parameters"].items())
        + ".",
        f"- Training: Adam lr {s['lr']}, batch {s['batch_size']}, up to {s['epochs']} epochs, early stopping",
        f"  with patience {s['patience']} on the validation loss (best weights restored); loss = MSE(y1) + MSE(y2).",
        f"- Ran on {s['machine']} ({s['cpu_cores']} cores), torch {s['torch']}, in {s['total_seconds']:.0f} s;",
        f"  1-minute load average at the end {s['load_average_1min_at_end']} (other jobs shared the cores).",
        "",
        "Test MSE, mean ± standard deviation over seeds (lower is better):",
        "",
        "| rho | model | MSE y1 | MSE y2 | mean of both | best in seeds | test label variance y1 / y2 |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in summarize(report):
        (m1, s1), (m2, s2) = row["mse_y1"], row["mse_y2"]
        v1, v2 = row["var_y1"][0], row["var_y2"][0]
        lines.append(
            f"| {row['rho']:.1f} | {row['model']} | {m1:.4f} ± {s1:.4f} | {m2:.4f} ± {s2:.4f} "
            f"| {(m1 + m2) / 2:.4f} | {row['wins']} / {row['seeds']} | {v1:.3f} / {v2:.3f} |"
        )
    lines += [
        "",
        '"Best in seeds": on how many seeds the model had the lowest MSE(y1) + MSE(y2) at that rho (the',
        "models of one seed see the same data). Seeds draw different task parameters, so the standard",
        "deviation mixes how hard each seed's functions are with how reliably a model trains. The label",
        "variance (mean over seeds) is the MSE of predicting the mean; the noise alone gives 0.01.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--rhos", type=float, nargs="+", default=[0.5, 0.9, 1.0])
    parser.add_argument("--train-rows", type=int, default=20000)
    parser.add_argument("--test-rows", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--patience", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--out", type=Path, default=RESULTS / "paper_benchmark.md")
    parser.add_argument(
        "--from-json",
        action="store_true",
        help="rewrite the table from the JSON beside --out without training",
    )
    args = parser.parse_args()
    json_path = args.out.with_suffix(".json")
    if args.from_json:
        report = json.loads(json_path.read_text(encoding="utf-8"))
    else:
        report = run(args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    args.out.write_text(markdown(report), encoding="utf-8")
    print(markdown(report))


if __name__ == "__main__":
    main()
