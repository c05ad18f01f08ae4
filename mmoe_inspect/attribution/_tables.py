"""The tables of an attribution run: per-target attributions summarised by gate, expert and task, the
convergence check and the gate-vs-task agreement (pure numpy/pandas over the attributed values)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mmoe_inspect.attribution._inputs import InputLayer
from mmoe_inspect.attribution._methods import TargetAttribution
from mmoe_inspect.attribution._targets import Target
from mmoe_inspect.attribution.result import (
    AGREEMENT_COLUMNS,
    CONVERGENCE_COLUMNS,
    EXPERT_COLUMNS,
    GATE_COLUMNS,
    GATE_FEATURE_COLUMNS,
    TASK_COLUMNS,
    AttributionResult,
)
from mmoe_inspect.topology.spec import Topology

__all__ = ["DELTA_FLOOR", "TOP_K", "attribution_tables"]

DELTA_FLOOR = 1e-3
"""Smallest denominator of the relative convergence delta (outputs that barely move are not flagged)."""
TOP_K = 3
"""Top features compared between a gate and its task in `gate_task_agreement`."""


def attribution_tables(
    topo: Topology,
    outcome: dict[str, tuple[Target, TargetAttribution]],
    layer: InputLayer,
    shown: Sequence[str],
    used: str,
    n_steps: int,
    tolerance: float,
    notes: list[str],
) -> AttributionResult:
    """The result's tables from each target's attributions `[rows, K, F]` (features `shown`).

    Rows whose attributions of a target are NaN/inf (its output or gate is not finite there) are left
    out of that target's rows of the tables (a NaN tower does not erase the gates' attributions); a note
    counts them and `meta["nonfinite_rows"]` counts the rows left out of at least one target.
    `per_row` keeps every sampled row as attributed (NaN included)."""
    cols = [layer.features.index(f) for f in shown]
    finite = _finite_rows(outcome, notes)
    gate_rows, gate_feat_rows, expert_rows, task_rows, conv_rows = [], [], [], [], []
    per_row: dict[str, np.ndarray] = {}
    still: list[str] = []  # targets no feature moves: every attribution is 0
    for key, (t, res) in outcome.items():
        per_row[key] = res.values[:, :, cols].astype(np.float32)
        keep = finite[key]
        res = TargetAttribution(res.values[keep], res.delta[keep], res.change[keep])
        values = res.values[:, :, cols]
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # no row left: the means are NaN
            mean_abs = np.abs(values).mean(axis=0)  # [K, F]
            mean_signed = values.mean(axis=0)
        share = _share(mean_abs)
        if len(values) and float(mean_abs.sum()) == 0.0:
            still.append(key)
        for k, output in enumerate(t.outputs):
            for j, f in enumerate(shown):
                stats = {
                    "feature": f,
                    "mean_abs": mean_abs[k, j],
                    "mean_signed": mean_signed[k, j],
                    "share": share[k, j],
                }
                if t.gate is not None:
                    gate_rows.append(
                        {
                            "gate": t.name,
                            "task": t.gate.task,
                            "level": t.gate.level,
                            "expert": output,
                            **stats,
                        }
                    )
                elif t.expert is not None:
                    expert_rows.append({"expert": t.name, "owner": t.expert.owner, **stats})
                else:
                    task_rows.append({"task": t.name, **stats})
            conv_rows.append(_convergence(t, output, res, k, used, n_steps, tolerance))
        if t.gate is not None:
            total = mean_abs.sum(axis=0)
            share_g = _share(total[None, :])[0]
            ranks = _ranks(total)
            for j, f in enumerate(shown):
                gate_feat_rows.append(
                    {
                        "gate": t.name,
                        "task": t.gate.task,
                        "level": t.gate.level,
                        "feature": f,
                        "mean_abs": total[j],
                        "share": share_g[j],
                        "rank": ranks[j],
                    }
                )
    if still:
        notes.append(
            f"every attribution of {', '.join(still)} is 0: the output does not move with any input feature on "
            "the sampled rows (constant, or dead), so it has no top features and no feature ranks"
        )
    gate_features = pd.DataFrame(gate_feat_rows, columns=GATE_FEATURE_COLUMNS)
    gate_features["rank"] = gate_features["rank"].astype("Int64")
    if not gate_features.empty:
        order = {g.name: i for i, g in enumerate(topo.gates)}
        gate_features = gate_features.sort_values(
            ["gate", "rank"], key=lambda s: s.map(order) if s.name == "gate" else s
        ).reset_index(drop=True)
    tasks_t = pd.DataFrame(task_rows, columns=TASK_COLUMNS)
    convergence = pd.DataFrame(conv_rows, columns=CONVERGENCE_COLUMNS)
    for kind, name in dict.fromkeys(
        (k, n) for k, n in zip(convergence["kind"], convergence["target"], strict=True)
    ):
        rows = convergence[(convergence["kind"] == kind) & (convergence["target"] == name)]
        if rows["flagged"].any():
            worst = rows.loc[rows["relative_delta"].idxmax()]
            notes.append(
                f"{kind} {name!r}: Integrated Gradients' convergence delta is {worst['relative_delta']:.0%} of the "
                f"attribution sum (output {worst['output']}); raise n_steps (now {n_steps}) before trusting it"
            )
    result = AttributionResult(
        gate_attributions=pd.DataFrame(gate_rows, columns=GATE_COLUMNS),
        gate_features=gate_features,
        expert_attributions=pd.DataFrame(expert_rows, columns=EXPERT_COLUMNS),
        task_attributions=tasks_t,
        gate_task_agreement=_agreement(topo, gate_features, tasks_t, notes),
        convergence=convergence,
        features=tuple(shown),
        rows=np.empty(0, dtype=np.int64),
        covered=list(outcome),
        notes=notes,
        per_row=per_row,
    )
    bad = [~ok for ok in finite.values()]
    result.meta["nonfinite_rows"] = int(np.logical_or.reduce(bad).sum()) if bad else 0
    return result


def _finite_rows(
    outcome: dict[str, tuple[Target, TargetAttribution]], notes: list[str]
) -> dict[str, np.ndarray]:
    """Per target, `[rows]` bool: rows whose attributions are all finite. One note per number of rows
    left out, naming the targets (usually every target loses the same rows: NaN inputs or embeddings)."""
    finite = {key: np.isfinite(res.values).all(axis=(1, 2)) for key, (_, res) in outcome.items()}
    by_count: dict[tuple[int, int], list[str]] = {}
    for key, ok in finite.items():
        if not ok.all():
            by_count.setdefault((int((~ok).sum()), len(ok)), []).append(key)
    for (bad, n), keys in by_count.items():
        rest = (
            f"they describe the other {n - bad:,}"
            if bad < n
            else "no row is left, so their values are empty (NaN)"
        )
        notes.append(
            f"{bad:,} of {n:,} sampled rows have NaN/inf attributions in {', '.join(keys)} (the output or gate is "
            f"not finite there): left out of those targets' rows of the attribution tables; {rest}"
        )
    return finite


def _ranks(total: np.ndarray) -> list[Any]:
    """Rank of each feature by `total` (1 = largest); None where the total is 0 or not finite (a tie at
    nothing: no order to give)."""
    ranked = np.isfinite(total) & (total > 0)
    order = pd.Series(np.where(ranked, -total, np.nan)).rank(method="first", na_option="keep")
    return [int(r) if ok else None for r, ok in zip(order, ranked, strict=True)]


def _share(mean_abs: np.ndarray) -> np.ndarray:
    """Each feature's part of its row's total (NaN where the total is 0)."""
    total = mean_abs.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, mean_abs / np.where(total > 0, total, 1.0), np.nan)


def _convergence(
    t: Target, output: str, res: TargetAttribution, k: int, used: str, n_steps: int, tolerance: float
) -> dict[str, Any]:
    n = res.values.shape[0]
    if used != "integrated_gradients" or n == 0:  # ablation, or no finite row left
        nan = float("nan")
        steps = n_steps if used == "integrated_gradients" else None
        return dict(
            zip(
                CONVERGENCE_COLUMNS,
                [t.kind, t.name, output, used, n, steps, nan, nan, nan, nan, nan, False],
                strict=True,
            )
        )
    change = float(np.abs(res.change[:, k]).mean())
    total = float(np.abs(res.values[:, k, :].sum(axis=1)).mean())
    delta = np.abs(res.delta[:, k])
    relative = float(delta.mean()) / max(total, change, DELTA_FLOOR)
    return {
        "kind": t.kind,
        "target": t.name,
        "output": output,
        "method": used,
        "n_rows": n,
        "n_steps": n_steps,
        "change_mean_abs": change,
        "sum_mean_abs": total,
        "delta_mean_abs": float(delta.mean()),
        "delta_max_abs": float(delta.max()),
        "relative_delta": relative,
        "flagged": bool(relative > tolerance),
    }


def _agreement(
    topo: Topology, gate_features: pd.DataFrame, task_table: pd.DataFrame, notes: list[str]
) -> pd.DataFrame:
    """Per task gate with both tables present: rank correlation of feature importance and top-feature overlap.

    Top lists hold only features with a positive, finite importance: a gate or task whose attributions
    are all 0 (its output does not move with the inputs, e.g. a constant tower) or not finite has no top
    features, and then the correlation and the overlap are NaN (a note says why) instead of an order
    invented by sorting ties."""
    rows = []
    for g in topo.gates:
        if g.task is None:
            continue
        gf = gate_features[gate_features["gate"] == g.name].set_index("feature")["mean_abs"]
        tf = task_table[task_table["task"] == g.task].set_index("feature")["mean_abs"]
        if gf.empty or tf.empty:
            continue
        tf = tf.reindex(gf.index)
        k = min(TOP_K, len(gf))
        gate_top, task_top = _top(gf, k), _top(tf, k)
        blank = [w for w, top in ((f"gate {g.name!r}", gate_top), (f"task {g.task!r}", task_top)) if not top]
        if blank:
            notes.append(
                f"agreement of gate {g.name!r} with task {g.task!r} left empty (no rank correlation, no overlap): "
                f"{' and '.join(blank)} {'have' if len(blank) > 1 else 'has'} no feature with a non-zero, "
                "finite attribution"
            )
        rows.append(
            {
                "gate": g.name,
                "task": g.task,
                "rank_correlation": math.nan if blank else _spearman(gf.to_numpy(), tf.to_numpy()),
                "top_overlap": math.nan if blank else len(set(gate_top) & set(task_top)) / len(gate_top),
                "gate_top": ", ".join(gate_top),
                "task_top": ", ".join(task_top),
            }
        )
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)


def _top(importance: pd.Series, k: int) -> list[str]:
    """The (up to) `k` features of largest importance among those with a positive, finite one."""
    values = importance.astype(float)
    informative = values[np.isfinite(values) & (values > 0)]
    return list(informative.sort_values(ascending=False, kind="stable").index[:k])


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = pd.Series(a).rank().to_numpy()
    rb = pd.Series(b).rank().to_numpy()
    if len(a) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])
