"""The tables of an attribution run: per-target attributions summarised by gate, expert and task, the
convergence check and the gate-vs-task agreement (pure numpy/pandas over the attributed values)."""

from __future__ import annotations

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
    """The result's tables from each target's attributions `[rows, K, F]` (features `shown`)."""
    cols = [layer.features.index(f) for f in shown]
    gate_rows, gate_feat_rows, expert_rows, task_rows, conv_rows = [], [], [], [], []
    per_row: dict[str, np.ndarray] = {}
    for key, (t, res) in outcome.items():
        values = res.values[:, :, cols]
        per_row[key] = values.astype(np.float32)
        mean_abs = np.abs(values).mean(axis=0)  # [K, F]
        mean_signed = values.mean(axis=0)
        share = _share(mean_abs)
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
            ranks = pd.Series(-total).rank(method="first").astype(int).to_numpy()
            for j, f in enumerate(shown):
                gate_feat_rows.append(
                    {
                        "gate": t.name,
                        "task": t.gate.task,
                        "level": t.gate.level,
                        "feature": f,
                        "mean_abs": total[j],
                        "share": share_g[j],
                        "rank": int(ranks[j]),
                    }
                )
    gate_features = pd.DataFrame(gate_feat_rows, columns=GATE_FEATURE_COLUMNS)
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
    return AttributionResult(
        gate_attributions=pd.DataFrame(gate_rows, columns=GATE_COLUMNS),
        gate_features=gate_features,
        expert_attributions=pd.DataFrame(expert_rows, columns=EXPERT_COLUMNS),
        task_attributions=tasks_t,
        gate_task_agreement=_agreement(topo, gate_features, tasks_t),
        convergence=convergence,
        features=tuple(shown),
        rows=np.empty(0, dtype=np.int64),
        covered=list(outcome),
        notes=notes,
        per_row=per_row,
    )


def _share(mean_abs: np.ndarray) -> np.ndarray:
    """Each feature's part of its row's total (NaN where the total is 0)."""
    total = mean_abs.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, mean_abs / np.where(total > 0, total, 1.0), np.nan)


def _convergence(
    t: Target, output: str, res: TargetAttribution, k: int, used: str, n_steps: int, tolerance: float
) -> dict[str, Any]:
    n = res.values.shape[0]
    if used != "integrated_gradients":
        nan = float("nan")
        return dict(
            zip(
                CONVERGENCE_COLUMNS,
                [t.kind, t.name, output, used, n, None, nan, nan, nan, nan, nan, False],
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


def _agreement(topo: Topology, gate_features: pd.DataFrame, task_table: pd.DataFrame) -> pd.DataFrame:
    """Per task gate with both tables present: rank correlation of feature importance and top-feature overlap."""
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
        gate_top = list(gf.sort_values(ascending=False, kind="stable").index[:k])
        task_top = list(tf.sort_values(ascending=False, kind="stable").index[:k])
        rows.append(
            {
                "gate": g.name,
                "task": g.task,
                "rank_correlation": _spearman(gf.to_numpy(), tf.to_numpy()),
                "top_overlap": len(set(gate_top) & set(task_top)) / k,
                "gate_top": ", ".join(gate_top),
                "task_top": ", ".join(task_top),
            }
        )
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = pd.Series(a).rank().to_numpy()
    rb = pd.Series(b).rank().to_numpy()
    if len(a) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])
