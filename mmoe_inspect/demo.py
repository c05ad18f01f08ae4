"""The demo: train the seed architectures on generated recommender data, save checkpoints, compare them.

`run_demo` is what `mmoe-inspect demo` calls before it inspects the MMoE and writes the report.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .errors import MmoeInspectError
from .topology.spec import TaskSpec

if TYPE_CHECKING:
    from .causal.metrics import Evaluation

DEMO_ARCHITECTURES = ("shared_bottom", "omoe", "mmoe", "ple")
SINGLE_TASK = "purchase_only"
MONITOR_EVERY = 20  # steps per run-log window when the demo monitors the MMoE's training (at most)
MONITOR_WINDOWS = 10  # small runs get shorter windows, so the curves have about this many points
"""The single-task baseline the demo trains for the sparse task (a Shared-Bottom with one tower)."""


@dataclass
class DemoResult:
    """Paths and numbers of one demo run."""

    out_dir: Path
    data_path: Path
    eval_path: Path
    checkpoints: dict[str, Path]  # per architecture, plus SINGLE_TASK when trained
    metrics: pd.DataFrame  # one row per model, one column per task metric (NaN: task not predicted)
    seconds: dict[str, float] = field(default_factory=dict)
    run_log: Path | None = None  # the MMoE's GateMonitor run log (run_demo(monitor=True))
    comparison: DemoComparison | None = None  # paired intervals and the seed claims they test


SEED_CLAIMS: tuple[tuple[str, tuple[tuple[str, str, tuple[str, ...]], ...]], ...] = (
    ("MMoE > OMoE > Shared-Bottom", (("mmoe", "omoe", ("click", "purchase")), ("omoe", "shared_bottom", ("click", "purchase")))),
    ("MMoE helps the sparse task (purchase)", (("mmoe", SINGLE_TASK, ("purchase",)),)),
)  # fmt: skip
"""The seed's claims the demo's comparison tests: (claim, [(better model, worse model, tasks)])."""

MODEL_NAMES = {
    "shared_bottom": "Shared-Bottom",
    "omoe": "OMoE",
    "mmoe": "MMoE",
    "ple": "PLE",
    SINGLE_TASK: "purchase-only",
}


@dataclass(frozen=True)
class ClaimCheck:
    """One seed claim and what the test rows say about it: "supported" (every difference significantly in
    the claimed direction), "contradicted" (one significantly against it) or "not shown" (else)."""

    claim: str
    status: str
    sentence: str


@dataclass
class DemoComparison:
    """Every demo model on the SAME test rows: AUC and log loss with paired 95% intervals (`intervals`:
    "analytic" = DeLong / CLT, or "bootstrap" with `n_boot` resamples; `table`: one row per model and
    task), and the seed claims checked by paired differences."""

    table: pd.DataFrame  # model, task, auc, auc_lo, auc_hi, logloss, logloss_lo, logloss_hi
    claims: list[ClaimCheck]
    n_rows: int
    n_boot: int
    intervals: str = "analytic"

    def lines(self) -> list[str]:
        return [f"{c.claim}: {c.status}. {c.sentence}" for c in self.claims]


def compare_models(
    preds: dict[str, dict[str, np.ndarray]],
    labels: pd.DataFrame,
    tasks: Sequence[TaskSpec],
    *,
    n_boot: int = 200,
    seed: int = 0,
    intervals: str = "analytic",
) -> DemoComparison:
    """Paired comparison of the models' predictions `{model: {task: [n]}}` on the same labelled rows.

    One `mmoe_inspect.causal.metrics.Evaluation` over every model, so a difference's interval is paired
    (the rows' own difficulty cancels): DeLong's variance of the AUC difference and the CLT interval of
    the per-row log-loss difference (`intervals="analytic"`), or a bootstrap whose every replicate
    resamples the rows once and scores every model on it. A model that does not predict a task gets
    NaN there.
    """
    from .causal.metrics import Evaluation

    y = labels[[t.label_column for t in tasks]].to_numpy(dtype=np.float64)
    n = len(y)
    stacked = {
        m: np.column_stack([np.asarray(p.get(t.name, np.full(n, np.nan)), dtype=np.float64) for t in tasks])
        for m, p in preds.items()
    }
    ev = Evaluation(y, tasks, stacked, n_boot=n_boot, seed=seed, intervals=intervals)
    rows = []
    for m in preds:
        for t in tasks:
            row: dict[str, object] = {"model": m, "task": t.name}
            for metric in ev.metrics(t.name):
                lo, hi = ev.interval(m, t.name, metric)
                row |= {metric: ev.value(m, t.name, metric), f"{metric}_lo": lo, f"{metric}_hi": hi}
            rows.append(row)
    claims = [_check_claim(claim, parts, ev, preds) for claim, parts in SEED_CLAIMS]
    return DemoComparison(pd.DataFrame(rows), [c for c in claims if c is not None], n, ev.n_boot, intervals)


def _check_claim(
    claim: str, parts: tuple[tuple[str, str, tuple[str, ...]], ...], ev: Evaluation, preds: dict
) -> ClaimCheck | None:
    """The paired AUC differences a claim rests on, each with its interval and significance."""
    from .analysis.review import fmt_signed_interval
    from .causal.metrics import too_few_to_tell

    pieces, signs = [], []
    for better, worse, task_names in parts:
        if better not in preds or worse not in preds:
            return None
        for task in task_names:
            delta, lo, hi = ev.compare(better, worse, task, "auc")
            if math.isnan(delta):
                continue
            few = too_few_to_tell(ev, task)  # the task table's rule: a handful of a class tells nothing
            significant = not few and not math.isnan(lo) and (lo > 0 or hi < 0)
            signs.append(0 if not significant else (1 if delta > 0 else -1))
            verdict = "significant" if significant else "not significant"
            pieces.append(
                f"{MODEL_NAMES.get(better, better)} − {MODEL_NAMES.get(worse, worse)} {task} AUC "
                f"{fmt_signed_interval(delta, lo, hi)} "
                f"({'cannot tell: too few labelled rows of a class' if few else verdict})"
            )
    if not signs:
        return None
    status = "contradicted" if -1 in signs else ("supported" if all(s == 1 for s in signs) else "not shown")
    return ClaimCheck(claim, status, "; ".join(pieces) + ".")


def demo_model_kwargs(arch: str) -> dict:
    """Model sizes for the demo: small enough to train in seconds on 2 cores, big enough to route."""
    common = {"expert_hidden": (32, 16), "tower_hidden": (16,)}
    if arch == "shared_bottom":
        return {"bottom_hidden": (64, 16), "tower_hidden": (16,)}
    if arch == "omoe" or arch == "mmoe":
        return {"n_experts": 4, **common}
    if arch == "ple":
        return {"n_experts": 2, "n_specific": 1, "n_levels": 2, **common}
    raise ValueError(f"unknown demo architecture {arch!r}")


def _monitor_step(monitor: object) -> Callable[[int, int, float], None]:
    """`fit(on_step=...)` callback that ends a `GateMonitor` step with the epoch and the step's loss."""

    def on_step(_step: int, epoch: int, loss: float) -> None:
        monitor.step(epoch=epoch, loss=loss)  # type: ignore[attr-defined]

    return on_step


DEMO_MARKER = ".mmoe-inspect-demo"  # JSON {"files": [...]}: the files a demo wrote in its folder


class DemoOutError(MmoeInspectError):
    """The demo's folder holds files the demo did not write at the paths it writes (or is not a folder)."""


def _demo_files(runs: Sequence[str], monitor: bool) -> list[str]:
    names = ["train.parquet", "eval.parquet", "model_comparison.csv"]
    names += [f"checkpoints/{name}.pt" for name in runs]
    return names + (["run_log.jsonl"] if monitor else [])


def _claim_demo_folder(out: Path, names: Sequence[str]) -> None:
    """Refuse, before anything is generated, a folder where the demo would replace or delete a file it did
    not write (its marker lists those it did); then record `names` in the marker. `--force` does not change
    this: it only lets the report be written into a folder that is not a report."""
    import json

    for folder in (out, out / "checkpoints"):
        if (folder.is_symlink() or folder.exists()) and not folder.is_dir():
            raise DemoOutError(
                f"--out {out}: {folder} exists and is not a folder; pass a folder for the demo"
            )
    marker = out / DEMO_MARKER
    ours: set[str] = set()
    recorded = marker.is_file() and not marker.is_symlink()
    if recorded:
        try:
            ours = {str(n) for n in json.loads(marker.read_text(encoding="utf-8")).get("files", [])}
        except (ValueError, AttributeError, OSError, UnicodeDecodeError):
            recorded, ours = False, set()
    for name in names:
        path = out / name
        if path.is_symlink() or (path.exists() and name not in ours):
            raise DemoOutError(_not_ours(out, name, recorded))
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps({"files": sorted(ours | set(names))}), encoding="utf-8")
    tmp.replace(marker)


def _not_ours(out: Path, name: str, recorded: bool) -> str:
    """The one line for `name` in `out`, which the demo would replace: with the demo's record, the demo did not
    write it; without one (a folder from a demo that kept no record, or the user's own), the demo cannot tell,
    and the line says how to go on (another --out, or deleting a folder that holds only an old demo's files)."""
    replace = "the demo would replace it (--force does not change that)"
    if recorded:
        return (
            f"--out {out}: {name} exists and the demo did not write it (its record {DEMO_MARKER} does not list "
            f"it); {replace}: choose another --out or move the file"
        )
    return (
        f"--out {out}: {name} exists and the folder has no {DEMO_MARKER} record of what a demo wrote there "
        f"(an earlier version's demo kept none, or the file is yours); {replace}: choose another --out, or, "
        f"if {out} holds only an earlier demo's output, delete that folder and run the demo again"
    )


def run_demo(
    out_dir: str | Path,
    *,
    n_rows: int = 60_000,
    seed: int = 0,
    architectures: tuple[str, ...] = DEMO_ARCHITECTURES,
    epochs: int = 4,
    single_task: bool = True,
    log: Callable[[str], None] | None = None,
    monitor: bool = False,
) -> DemoResult:
    """Generate recommender data, train each architecture, save checkpoints and the eval split.

    With `single_task`, also a purchase-only model: the baseline for the sparse task's "MTL gain".
    Every model is scored on the same test rows with paired intervals (DeLong / CLT) and the seed's claims
    are checked (`DemoResult.comparison`, also `out_dir/model_comparison.csv`).
    With `monitor`, the MMoE trains under a `GateMonitor` (a window every `MONITOR_EVERY` steps) whose
    run log is written to `out_dir/run_log.jsonl` (`DemoResult.run_log`); a window is `MONITOR_EVERY`
    steps, fewer on small runs (about `MONITOR_WINDOWS` windows in all).
    """
    from contextlib import nullcontext

    import torch

    from .checkpoint import save_checkpoint
    from .datasets import make_recsys, recsys_features, recsys_tasks
    from .models import ModelConfig, build_model
    from .monitor import GateMonitor
    from .train import evaluate, fit, predict

    say = log or (lambda _m: None)
    out = Path(out_dir)
    purchase_only = (SINGLE_TASK,) if single_task else ()
    _claim_demo_folder(out, _demo_files((*architectures, *purchase_only), monitor))
    t0 = time.perf_counter()
    frame = make_recsys(n_rows, seed=seed)
    features = recsys_features(frame)
    tasks = recsys_tasks()
    n_test = len(frame) // 5
    train_frame, eval_frame = (
        frame.iloc[n_test:].reset_index(drop=True),
        frame.iloc[:n_test].reset_index(drop=True),
    )
    data_path = out / "train.parquet"
    eval_path = out / "eval.parquet"
    train_frame.to_parquet(data_path, index=False)
    eval_frame.to_parquet(eval_path, index=False)
    seconds = {"data": time.perf_counter() - t0}
    say(f"generated {len(frame):,} rows of recommender data ({', '.join(t.name for t in tasks)})")

    checkpoints: dict[str, Path] = {}
    run_log = out / "run_log.jsonl" if monitor else None
    if run_log is not None:
        run_log.unlink(missing_ok=True)  # the monitor appends: start a fresh log
    rows = []
    preds: dict[str, dict[str, np.ndarray]] = {}
    purchase = next(t for t in tasks if t.name == "purchase")
    runs = [(arch, arch, tuple(tasks)) for arch in architectures]
    if single_task:
        runs.append((SINGLE_TASK, "shared_bottom", (purchase,)))
    for name, arch, model_tasks in runs:
        t1 = time.perf_counter()
        config = ModelConfig(arch, features, model_tasks, demo_model_kwargs(arch))
        # same initial weights whatever ran before; the caller's RNG is left untouched
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(config)
        watch = run_log is not None and name == "mmoe"
        steps = epochs * -(-round(len(train_frame) * 0.9) // 512)  # fit's defaults: 10% validation, batch 512
        every = max(1, min(MONITOR_EVERY, steps // MONITOR_WINDOWS))
        with GateMonitor(model, every=every, log_path=run_log) if watch else nullcontext() as mon:
            fit(
                model,
                train_frame,
                tasks=list(model_tasks),
                features=features,
                epochs=epochs,
                seed=seed,
                on_step=_monitor_step(mon) if mon is not None else None,
            )
        scores = evaluate(model, eval_frame, list(model_tasks), features)
        preds[name] = {t: v.detach().cpu().numpy() for t, v in predict(model, eval_frame, features).items()}
        path = out / "checkpoints" / f"{name}.pt"
        save_checkpoint(path, model, eval_frame=eval_frame, metrics=scores)
        checkpoints[name] = path
        seconds[name] = time.perf_counter() - t1
        row: dict[str, object] = {"model": name}
        for task, vals in scores.items():
            for metric, value in vals.items():
                row[f"{task} {metric}"] = value
        rows.append(row)
        say(f"trained {name} in {seconds[name]:.1f}s")
    if run_log is not None:
        say(f"gate run log of the MMoE's training: {run_log}")
    comparison = compare_models(preds, eval_frame, tasks, seed=seed)
    comparison.table.to_csv(out / "model_comparison.csv", index=False)
    return DemoResult(
        out, data_path, eval_path, checkpoints, pd.DataFrame(rows), seconds, run_log, comparison
    )
