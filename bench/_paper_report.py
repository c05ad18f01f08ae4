"""Tables and figures of the paper benchmark, from its JSON report (`paper_benchmark.py` writes both).

Statistics: 95 % t-intervals over seeds, paired where two architectures are compared (the per-seed
difference); the Spearman correlation of routing divergence and MMoE's lead over (rho, seed) cells
with a Fisher-z interval (standard error 1.06 / sqrt(n - 3)).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# two-sided 95 % Student t quantiles t(0.975, df), df = 1..30; beyond, a Cornish-Fisher expansion
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip

ARCH_COLOURS = {
    "Shared-Bottom": "tab:gray",
    "OMoE": "tab:orange",
    "MMoE": "tab:blue",
    "purchase-only": "tab:green",
}
SYN_LEADS = (("MMoE", "OMoE"), ("OMoE", "Shared-Bottom"), ("MMoE", "Shared-Bottom"))
REC_MODELS = ("Shared-Bottom", "OMoE", "MMoE")


def _t975_large(df: int) -> float:
    """t(0.975, df) for df > 30 from the normal quantile (Cornish-Fisher; error below 1e-4 here)."""
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, lo, hi): the 95 % t-interval of the mean; NaN bounds for fewer than 2 values."""
    v = np.asarray(values, dtype=float)
    mean = float(v.mean()) if len(v) else math.nan
    if len(v) < 2:
        return mean, math.nan, math.nan
    t = _T975[len(v) - 2] if len(v) - 1 <= len(_T975) else _t975_large(len(v) - 1)
    half = t * float(v.std(ddof=1)) / math.sqrt(len(v))
    return mean, mean - half, mean + half


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """(rho, lo, hi): Spearman rank correlation with a Fisher-z 95 % interval."""
    if len(x) < 3:
        return math.nan, math.nan, math.nan
    rx = np.argsort(np.argsort(x)).astype(float)
    ry = np.argsort(np.argsort(y)).astype(float)
    r = float(np.corrcoef(rx, ry)[0, 1])
    n = len(rx)
    if n < 4 or not math.isfinite(r) or abs(r) >= 1:
        return r, math.nan, math.nan
    z, se = math.atanh(r), 1.06 / math.sqrt(n - 3)
    return r, math.tanh(z - 1.96 * se), math.tanh(z + 1.96 * se)


def _ci(point: float, lo: float, hi: float, digits: int = 4) -> str:
    return f"{point:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def _by(runs: list[dict], **where: object) -> dict[int, dict]:
    """{seed: run} of the runs matching every key=value."""
    return {r["seed"]: r for r in runs if all(r[k] == v for k, v in where.items())}


def _paired(a: dict[int, dict], b: dict[int, dict], key: str) -> list[float]:
    """Per-seed b[key] - a[key] over the seeds both have (a lower-is-better loss: > 0 means a is better)."""
    return [b[s][key] - a[s][key] for s in sorted(a.keys() & b.keys())]


def summarize(report: dict) -> dict[str, list[dict]]:
    """Every table of the benchmark as rows of plain values (points with lo/hi where an interval applies)."""
    runs = report["runs"]
    views = [v for v in report["views"] if "error" not in v]  # failures are listed in the markdown
    syn = [r for r in runs if r["sweep"] == "synthetic"]
    rec = [r for r in runs if r["sweep"] == "recsys"]
    rhos = sorted({r["rho"] for r in runs})
    configs = list(dict.fromkeys(r["config"] for r in syn))
    tables: dict[str, list[dict]] = {
        "leads": [],
        "trainability": [],
        "gains": [],
        "routing": [],
        "convergence": [],
    }

    for config in configs:
        for rho in rhos:
            for better, worse in SYN_LEADS:
                a = _by(syn, model=better, rho=rho, config=config)
                b = _by(syn, model=worse, rho=rho, config="paper" if worse == "Shared-Bottom" else config)
                diff = _paired(a, b, "loss")
                ratio = [math.log(b[s]["loss"] / a[s]["loss"]) for s in sorted(a.keys() & b.keys())]
                point, lo, hi = t_interval(diff)
                rp, rlo, rhi = (math.expm1(v) for v in t_interval(ratio))
                tables["leads"].append(
                    {"config": config, "rho": rho, "comparison": f"{better} vs {worse}", "n": len(diff),
                     "point": point, "lo": lo, "hi": hi, "wins": int(sum(d > 0 for d in diff)),
                     "rel_point": rp, "rel_lo": rlo, "rel_hi": rhi}
                )  # fmt: skip
            models = ("Shared-Bottom", "OMoE", "MMoE") if config == "paper" else ("OMoE", "MMoE")
            for model in models:
                loss = [r["loss"] for r in _by(syn, model=model, rho=rho, config=config).values()]
                tables["trainability"].append(_spread("synthetic", config, rho, model, "test MSE", loss))
    for rho in rhos if rec else ():
        single = _by(rec, model="purchase-only", rho=rho)
        for model in REC_MODELS:
            mine = _by(rec, model=model, rho=rho)
            gain = _paired(single, mine, "auc_purchase")  # model AUC - single AUC: > 0 = the model is better
            point, lo, hi = t_interval(gain)
            tables["gains"].append(
                {"rho": rho, "comparison": f"{model} vs purchase-only", "task": "purchase", "n": len(gain),
                 "point": point, "lo": lo, "hi": hi, "wins": int(sum(g > 0 for g in gain))}
            )  # fmt: skip
        for task in ("purchase", "click"):
            for better, worse in (("MMoE", "OMoE"), ("OMoE", "Shared-Bottom")):
                d = _paired(_by(rec, model=worse, rho=rho), _by(rec, model=better, rho=rho), f"auc_{task}")
                point, lo, hi = t_interval(d)
                tables["gains"].append(
                    {"rho": rho, "comparison": f"{better} vs {worse}", "task": task, "n": len(d),
                     "point": point, "lo": lo, "hi": hi, "wins": int(sum(g > 0 for g in d))}
                )  # fmt: skip
        for model in (*REC_MODELS, "purchase-only"):
            auc = [r["auc_purchase"] for r in _by(rec, model=model, rho=rho).values()]
            tables["trainability"].append(_spread("recsys", "recsys", rho, model, "purchase AUC", auc))

    for config in list(dict.fromkeys(v["config"] for v in views)):
        for rho in rhos:
            cell = [v for v in views if v["config"] == config and v["rho"] == rho]
            if not cell:
                continue
            row: dict = {"config": config, "rho": rho, "n": len(cell)}
            for key in ("jsd_per_row", "jsd_mean_gates", "mi_normalized", "importance_cosine"):
                row[key], row[f"{key}_lo"], row[f"{key}_hi"] = t_interval([v[key] for v in cell])
            tasks = list(cell[0]["effective_experts"])
            row["effective_experts"] = {
                t: float(np.mean([v["effective_experts"][t] for v in cell])) for t in tasks
            }
            row["significant_experts"] = {
                t: float(np.mean([v["significant_experts"][t] for v in cell])) for t in tasks
            }
            tables["routing"].append(row)

    # does the lead grow as tasks become less related? per seed: lead at the lowest rho - lead at the highest
    tables["trend"] = []
    if len(rhos) >= 2:
        lo_rho, hi_rho = rhos[0], rhos[-1]
        for config in configs:
            for better, worse in SYN_LEADS:
                wc = "paper" if worse == "Shared-Bottom" else config

                def lead(
                    rho: float, pair: tuple[str, str, str, str] = (better, worse, config, wc)
                ) -> dict[int, float]:
                    a = _by(syn, model=pair[0], rho=rho, config=pair[2])
                    b = _by(syn, model=pair[1], rho=rho, config=pair[3])
                    return {s: b[s]["loss"] - a[s]["loss"] for s in a.keys() & b.keys()}

                low, high = lead(lo_rho), lead(hi_rho)
                d = [low[s] - high[s] for s in sorted(low.keys() & high.keys())]
                point, lo, hi = t_interval(d)
                tables["trend"].append(
                    {"config": config, "comparison": f"{better} vs {worse}", "from_rho": hi_rho, "to_rho": lo_rho,
                     "n": len(d), "point": point, "lo": lo, "hi": hi, "wins": int(sum(x > 0 for x in d))}
                )  # fmt: skip

    tables["correlation"] = []
    for config in list(dict.fromkeys(v["config"] for v in views)):
        sweep_runs = rec if config == "recsys" else [r for r in syn if r["config"] == config]
        key = "auc_purchase" if config == "recsys" else "loss"
        sign = 1.0 if config == "recsys" else -1.0  # lead = MMoE better: AUC up, loss down
        xs, ys = [], []
        for v in (v for v in views if v["config"] == config):
            m = _by(sweep_runs, model="MMoE", rho=v["rho"]).get(v["seed"])
            o = _by(sweep_runs, model="OMoE", rho=v["rho"]).get(v["seed"])
            if m and o:
                xs.append(v["jsd_per_row"])
                ys.append(sign * (m[key] - o[key]))
        r, lo, hi = spearman(xs, ys)
        tables["correlation"].append({"config": config, "n": len(xs), "point": r, "lo": lo, "hi": hi})

    keys = sorted({(r["sweep"], r["config"], r["model"]) for r in runs})
    for sweep, config, model in keys:
        sel = [r for r in runs if (r["sweep"], r["config"], r["model"]) == (sweep, config, model)]
        tables["convergence"].append(
            {"sweep": sweep, "config": config, "model": model, "runs": len(sel),
             "converged": sum(r["converged"] for r in sel),
             "plateau_stops": sum(r["stop_reason"] == "plateau" for r in sel),
             "median_epochs": float(np.median([r["epochs"] for r in sel])),
             "max_epochs": max(r["epochs"] for r in sel),
             "seconds": float(sum(r["seconds"] for r in sel))}
        )  # fmt: skip
    return tables


def _spread(sweep: str, config: str, rho: float, model: str, metric: str, values: list[float]) -> dict:
    v = np.asarray(values, dtype=float)
    mean, lo, hi = t_interval(v)
    return {
        "sweep": sweep, "config": config, "rho": rho, "model": model, "metric": metric, "n": len(v),
        "mean": mean, "lo": lo, "hi": hi, "sd": float(v.std(ddof=1)) if len(v) > 1 else math.nan,
        "min": float(v.min()), "median": float(np.median(v)), "max": float(v.max()),
    }  # fmt: skip


def _pct(value: float | None) -> str:
    return "n/a (fewer epochs than the window)" if value is None else f"{value:.2%}"


def not_converged(report: dict) -> list[dict]:
    """The runs whose training did not converge (see `_paper_train`)."""
    return [r for r in report["runs"] if not r["converged"]]


def markdown(report: dict, tables: dict[str, list[dict]]) -> str:
    s = report["setup"]
    p = s["plan"]
    sb, rb = p["syn_budget"], p["rec_budget"]
    lines = [
        "# The seed's claim, measured: MMoE vs OMoE vs Shared-Bottom, and what the gates show",
        "",
        "Generated by `python bench/paper_benchmark.py`"
        + (" --quick (NOT the full run)" if s.get("quick") else "")
        + ".",
        f"{p['seeds']} seeds per cell; relatedness {', '.join(f'{r:g}' for r in p['rhos'])}. Ran on {s['machine']},",
        f"torch {s['torch']}, in {s['total_seconds']:.0f} s (1-minute load average at the end {s['load_average_1min_at_end']};",
        "other jobs shared the cores)."
        + (
            " Run as separate processes side by side, joined with `--merge`: "
            + "; ".join(f"{k} {v:.0f} s" for k, v in s["part_seconds"].items())
            + "."
            if "part_seconds" in s
            else ""
        ),
        "",
        "## Setup",
        "",
        f"- Synthetic (Ma et al. 2018, section 3.2; d = 100, c = 1, m = 10, noise std 0.1): {p['syn_train']} training,",
        f"  {p['syn_val']} validation, {p['syn_test']} test rows per seed; each seed draws its own task parameters and rows,",
        "  shared by every rho and every architecture. Configurations: "
        + "; ".join(
            f"{k}: {v['n_experts']} experts of {v['expert_hidden']} units, towers {v['tower_hidden']}"
            for k, v in s["synthetic_configs"].items()
        )
        + f"; Shared-Bottom: one hidden layer of {s['shared_bottom_width']} units (parameter count matched to the paper",
        "  configuration's MMoE), towers [8]. Parameters: "
        + ", ".join(f"{k} {v}" for k, v in s["parameters"].items())
        + ".",
        f"- Recommender (`make_recsys`, click ~20 %, purchase ~2 %): {p['rec_train']} training, {p['rec_val']} validation,",
        f"  {p['rec_test']} test rows per seed; `relatedness` = weight of the click score in the purchase propensity.",
        f"  OMoE/MMoE: {s['recsys_moe']}; Shared-Bottom and purchase-only: {s['recsys_bottom']}.",
        f"- Training (both sweeps): Adam, lr {sb['lr']} / {rb['lr']} (synthetic / recommender), batch {sb['batch_size']} / {rb['batch_size']};",
        f"  the rate is cut x{sb['factor']} after {sb['plateau']} / {rb['plateau']} epochs without a {sb['min_delta']:.1%} validation improvement,",
        f'  and training stops when it would fall below {sb["min_lr_ratio"]:g} x the initial rate ("plateau": converged) or at',
        f"  {sb['max_epochs']} / {rb['max_epochs']} epochs (then converged only if the best validation loss moved < {sb['tol']:.1%} over the",
        f"  last {sb['window']} epochs). Best-validation weights are kept. Loss: sum of per-task MSE / BCE.",
        "- Intervals: 95 % paired t-intervals over seeds (per-seed difference, same rows and same initial seed for",
        '  both architectures). "wins": seeds on which the first model was better.',
        "",
        "## Convergence",
        "",
        "| sweep | config | model | converged | plateau stops | median epochs | max epochs | train seconds |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in tables["convergence"]:
        lines.append(
            f"| {r['sweep']} | {r['config']} | {r['model']} | {r['converged']} / {r['runs']} | {r['plateau_stops']} "
            f"| {r['median_epochs']:.0f} | {r['max_epochs']} | {r['seconds']:.0f} |"
        )
    bad = not_converged(report)
    lines += ["", "Not converged: " + (", ".join(f"{r['sweep']}/{r['config']} {r['model']} rho {r['rho']:g} seed {r['seed']} "
              f"(last-window improvement {_pct(r['last_window_improvement'])})" for r in bad) if bad else "none") + ".", ""]  # fmt: skip
    failed = [v for v in report["views"] if "error" in v]
    lines += ["Inspections that failed: " + ("; ".join(f"{v['config']} rho {v['rho']:g} seed {v['seed']}: {v['error']}"
              for v in failed) if failed else "none") + ".", ""]  # fmt: skip
    lines += [
        "## Synthetic: paired leads (test MSE averaged over the two tasks; lead = worse model's MSE - better model's)",
        "",
        "Positive = the first-named model has the lower test loss. Relative: geometric mean of the loss ratio - 1.",
        "",
        "| config | rho | comparison | lead [95% CI] | relative [95% CI] | wins |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for r in tables["leads"]:
        lines.append(
            f"| {r['config']} | {r['rho']:g} | {r['comparison']} | {_ci(r['point'], r['lo'], r['hi'])} "
            f"| {_ci(100 * r['rel_point'], 100 * r['rel_lo'], 100 * r['rel_hi'], 1)} % | {r['wins']} / {r['n']} |"
        )
    lines += [
        "",
        "Does the lead grow as the tasks become less related? Per seed (the task parameters of a seed are the same",
        "at every rho), lead at the lowest rho minus lead at the highest; > 0 = larger lead for less related tasks:",
        "",
        "| config | comparison | lead(rho low) - lead(rho high) [95% CI] | seeds > 0 |",
        "|---|---|---:|---:|",
    ]
    for r in tables["trend"]:
        lines.append(
            f"| {r['config']} | {r['comparison']} (rho {r['to_rho']:g} vs {r['from_rho']:g}) "
            f"| {_ci(r['point'], r['lo'], r['hi'])} | {r['wins']} / {r['n']} |"
        )
    lines += [
        "",
        "## Recommender: purchase (sparse) and click AUC differences (paired over seeds)",
        "",
        "| relatedness | comparison | task | AUC difference [95% CI] | wins |",
        "|---:|---|---|---:|---:|",
    ]
    for r in tables["gains"]:
        lines.append(
            f"| {r['rho']:g} | {r['comparison']} | {r['task']} | {_ci(r['point'], r['lo'], r['hi'])} | {r['wins']} / {r['n']} |"
        )
    lines += [
        "",
        "## Trainability: spread of the final test metric over seeds",
        "",
        "| sweep | config | rho | model | metric | mean [95% CI] | sd | min | median | max |",
        "|---|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in tables["trainability"]:
        lines.append(
            f"| {r['sweep']} | {r['config']} | {r['rho']:g} | {r['model']} | {r['metric']} "
            f"| {r['mean']:.4f} [{r['lo']:.4f}, {r['hi']:.4f}] | {r['sd']:.4f} | {r['min']:.4f} | {r['median']:.4f} | {r['max']:.4f} |"
        )
    lines += [
        "",
        "## The tool's view of every trained MMoE (`inspect` on held-out rows; expert ablation via `run_causal`)",
        "",
        f"{p['inspect_rows']} held-out rows per model; ablation: renormalize mode, {p['n_boot']} paired bootstrap resamples.",
        "JSD per row: mean over rows of the Jensen-Shannon divergence between the two tasks' gates (nats, max ln 2).",
        "MI: task-expert mutual information / its bound. Importance cosine: cosine similarity of the two tasks'",
        "expert-ablation importance vectors (1 = the same experts matter to both tasks). Effective experts and",
        "significant experts (ablation hurts the task, interval above 0): mean over seeds, per task's gate.",
        "",
        "| config | rho | JSD per row [95% CI] | JSD of mean gates | MI normalized [95% CI] | effective experts | importance cosine [95% CI] | significant experts |",
        "|---|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in tables["routing"]:
        eff = ", ".join(f"{t} {v:.2f}" for t, v in r["effective_experts"].items())
        sig = ", ".join(f"{t} {v:.1f}" for t, v in r["significant_experts"].items())
        lines.append(
            f"| {r['config']} | {r['rho']:g} | {r['jsd_per_row']:.4f} [{r['jsd_per_row_lo']:.4f}, {r['jsd_per_row_hi']:.4f}] "
            f"| {r['jsd_mean_gates']:.4f} | {r['mi_normalized']:.3f} [{r['mi_normalized_lo']:.3f}, {r['mi_normalized_hi']:.3f}] "
            f"| {eff} | {r['importance_cosine']:.3f} [{r['importance_cosine_lo']:.3f}, {r['importance_cosine_hi']:.3f}] | {sig} |"
        )
    lines += [
        "",
        "Does MMoE win where its gates separate? Spearman correlation over (rho, seed) cells between the per-row",
        "JSD of an MMoE and its lead over the OMoE of the same seed (synthetic: OMoE MSE - MMoE MSE; recommender:",
        "MMoE purchase AUC - OMoE purchase AUC), with a Fisher-z 95 % interval:",
        "",
        "| config | cells | Spearman [95% CI] |",
        "|---|---:|---:|",
    ]
    for r in tables["correlation"]:
        lines.append(f"| {r['config']} | {r['n']} | {_ci(r['point'], r['lo'], r['hi'], 3)} |")
    lines += [
        "",
        "Figures: `paper_benchmark_routing.png` (routing divergence vs relatedness beside MMoE's lead),",
        "`paper_benchmark_curves.png` (validation learning curves), `paper_benchmark_trainability.png` (final loss per seed).",
        "",
    ]
    return "\n".join(lines)


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _errorbar(ax, xs, rows, key: str, label: str, colour: str, offset: float = 0.0) -> None:
    pts = np.array([r[key] for r in rows])
    lo = np.array([r[f"{key}_lo" if f"{key}_lo" in r else "lo"] for r in rows])
    hi = np.array([r[f"{key}_hi" if f"{key}_hi" in r else "hi"] for r in rows])
    x = np.asarray(xs) + offset
    ax.errorbar(x, pts, yerr=[pts - lo, hi - pts], marker="o", ms=4, capsize=3, label=label, color=colour)


def routing_figure(tables: dict[str, list[dict]], path: Path) -> None:
    """Routing divergence vs relatedness (left) beside MMoE's lead (right); synthetic on top, recommender below."""
    fig = _new_figure(11, 7.5)
    axes = fig.subplots(2, 2)
    colours = {"paper": "tab:blue", "more-experts": "tab:purple", "recsys": "tab:blue"}
    for row, sweep in enumerate(("synthetic", "recsys")):
        left, right = axes[row]
        configs = ["recsys"] if sweep == "recsys" else [c for c in ("paper", "more-experts")]
        for i, config in enumerate(configs):
            rows = [r for r in tables["routing"] if r["config"] == config]
            if rows:
                _errorbar(
                    left,
                    [r["rho"] for r in rows],
                    rows,
                    "jsd_per_row",
                    f"MMoE ({config})",
                    colours[config],
                    0.01 * i,
                )
        left.set_xlabel(
            "task correlation rho" if sweep == "synthetic" else "relatedness (click weight in purchase)"
        )
        left.set_ylabel("per-row JSD between task gates (nats)")
        left.set_title(f"{'Synthetic' if sweep == 'synthetic' else 'Recommender'}: do MMoE's gates separate?")
        if left.get_legend_handles_labels()[0]:
            left.legend(fontsize=8)
        if sweep == "synthetic":
            specs = [("paper", "MMoE vs OMoE", "tab:blue"), ("more-experts", "MMoE vs OMoE", "tab:purple"),
                     ("paper", "MMoE vs Shared-Bottom", "tab:gray"), ("paper", "OMoE vs Shared-Bottom", "tab:orange")]  # fmt: skip
            for i, (config, comp, colour) in enumerate(specs):
                rows = [r for r in tables["leads"] if r["config"] == config and r["comparison"] == comp]
                _errorbar(
                    right,
                    [r["rho"] for r in rows],
                    rows,
                    "point",
                    f"{comp} ({config})",
                    colour,
                    0.008 * (i - 1.5),
                )
            right.set_ylabel("lead in test MSE (> 0: first model better)")
            right.set_xlabel("task correlation rho")
        else:
            specs = [("MMoE vs purchase-only", "purchase", "tab:blue"), ("OMoE vs purchase-only", "purchase", "tab:orange"),
                     ("Shared-Bottom vs purchase-only", "purchase", "tab:gray"), ("MMoE vs OMoE", "purchase", "tab:purple")]  # fmt: skip
            for i, (comp, task, colour) in enumerate(specs):
                rows = [r for r in tables["gains"] if r["comparison"] == comp and r["task"] == task]
                _errorbar(right, [r["rho"] for r in rows], rows, "point", comp, colour, 0.008 * (i - 1.5))
            right.set_ylabel("purchase AUC difference (> 0: first model better)")
            right.set_xlabel("relatedness (click weight in purchase)")
        right.axhline(0.0, color="black", lw=0.8)
        right.set_title("paired 95% t-intervals over seeds")
        right.legend(fontsize=8)
    fig.savefig(path)


def curves_figure(report: dict, path: Path) -> None:
    """Validation loss per epoch of every run: synthetic paper config (top), recommender (bottom), per rho."""
    runs = report["runs"]
    rhos = sorted({r["rho"] for r in runs})
    fig = _new_figure(2.6 * len(rhos), 5.6)
    axes = np.atleast_2d(fig.subplots(2, len(rhos), squeeze=False))
    for row, (sweep, config) in enumerate((("synthetic", "paper"), ("recsys", "recsys"))):
        for col, rho in enumerate(rhos):
            ax = axes[row, col]
            for r in runs:
                if r["sweep"] == sweep and r["config"] == config and r["rho"] == rho:
                    ax.plot(r["val_curve"], color=ARCH_COLOURS[r["model"]], lw=0.7, alpha=0.6)
            ax.set_yscale("log")
            ax.set_title(f"{sweep} rho={rho:g}", fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
            if col == 0:
                ax.set_ylabel("validation loss (sum over tasks)", fontsize=8)
    for name, colour in ARCH_COLOURS.items():
        axes[1, 0].plot([], [], color=colour, label=name)
    axes[1, 0].legend(fontsize=7)
    fig.savefig(path)


def trainability_figure(report: dict, path: Path) -> None:
    """Final test loss of every seed per architecture and rho (synthetic, both configurations)."""
    runs = [r for r in report["runs"] if r["sweep"] == "synthetic"]
    rhos = sorted({r["rho"] for r in runs})
    groups = [
        ("paper", "Shared-Bottom"),
        ("paper", "OMoE"),
        ("paper", "MMoE"),
        ("more-experts", "OMoE"),
        ("more-experts", "MMoE"),
    ]
    fig = _new_figure(11, 4.5)
    ax = fig.subplots()
    if not runs:
        ax.text(
            0.5, 0.5, "no synthetic runs in this report", ha="center", va="center", transform=ax.transAxes
        )
        fig.savefig(path)
        return
    width = 0.8 / len(groups)
    for i, (config, model) in enumerate(groups):
        for j, rho in enumerate(rhos):
            vals = [
                r["loss"] for r in runs if r["config"] == config and r["model"] == model and r["rho"] == rho
            ]
            x = j + (i - (len(groups) - 1) / 2) * width
            colour = ARCH_COLOURS[model]
            ax.scatter(
                np.full(len(vals), x),
                vals,
                s=9,
                color=colour,
                alpha=0.7,
                marker="o" if config == "paper" else "^",
            )
            if vals:
                ax.hlines(np.median(vals), x - width / 2, x + width / 2, color=colour)
        ax.scatter(
            [],
            [],
            color=ARCH_COLOURS[model],
            marker="o" if config == "paper" else "^",
            label=f"{model} ({config})",
        )
    ax.set_xticks(range(len(rhos)), [f"rho={r:g}" for r in rhos])
    ax.set_yscale("log")
    ax.set_ylabel("final test MSE (one point per seed; bar = median)")
    ax.set_title("Trainability: spread of the final loss over seeds (synthetic)")
    ax.legend(fontsize=8, ncol=5)
    fig.savefig(path)


def write_outputs(report: dict, out: Path) -> list[Path]:
    """Write the markdown tables, the summary JSON and the three figures into `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    tables = summarize(report)
    paths = {
        "md": out / "paper_benchmark.md",
        "summary": out / "paper_benchmark_summary.json",
        "routing": out / "paper_benchmark_routing.png",
        "curves": out / "paper_benchmark_curves.png",
        "trainability": out / "paper_benchmark_trainability.png",
    }
    paths["md"].write_text(markdown(report, tables), encoding="utf-8")
    paths["summary"].write_text(json.dumps(tables, indent=1) + "\n", encoding="utf-8")
    routing_figure(tables, paths["routing"])
    curves_figure(report, paths["curves"])
    trainability_figure(report, paths["trainability"])
    for r in not_converged(report):
        print(
            f"NOT CONVERGED: {r['sweep']}/{r['config']} {r['model']} rho={r['rho']:g} seed={r['seed']} "
            f"({r['epochs']} epochs, last-window improvement {_pct(r['last_window_improvement'])})"
        )
    return list(paths.values())
