"""Report writer: folder layout, figures, HTML sections, escaping, atomic replacement."""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import matplotlib as mpl
import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

import mmoe_inspect
from mmoe_inspect.analysis.findings import diagnose
from mmoe_inspect.attribution import AttributionResult
from mmoe_inspect.attribution.result import (
    AGREEMENT_COLUMNS,
    CONVERGENCE_COLUMNS,
    EXPERT_COLUMNS,
    GATE_COLUMNS,
    GATE_FEATURE_COLUMNS,
    TASK_COLUMNS,
)
from mmoe_inspect.causal import CausalResult
from mmoe_inspect.causal.ablation import ABLATION_COLUMNS
from mmoe_inspect.causal.counterfactual import COUNTERFACTUAL_COLUMNS
from mmoe_inspect.causal.gains import BASELINE_COLUMNS, SPARSE_COLUMNS
from mmoe_inspect.causal.segments import SEGMENT_COLUMNS
from mmoe_inspect.reports import (
    FIGURES,
    GateUtilizationDisplay,
    ReportError,
    get_report_structure,
    render_figures,
    write_report,
)
from mmoe_inspect.results import InspectionResult
from mmoe_inspect.topology.spec import ExpertSpec, GateSpec, TaskSpec, Topology

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SECTIONS = (
    "summary",
    "routing",
    "causal",
    "attributions",
    "training",
    "experts",
    "tasks",
    "topology",
    "how-to-read",
)
XSS_TASK = "<script>alert(1)</script>"
XSS_MODULE = '"><img src=x onerror=alert(1)>'


# --------------------------------------------------------------------------- synthetic results
def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _entropy(g: np.ndarray) -> np.ndarray:
    return -(np.where(g > 0, g * np.log(np.clip(g, 1e-300, None)), 0.0)).sum(axis=-1)


def _js(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    m = 0.5 * (p + q)
    return 0.5 * (_entropy(m) * 2 - _entropy(p) - _entropy(q))


def _linear_cka(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean(0)
    b = b - b.mean(0)
    hsic = np.linalg.norm(a.T @ b) ** 2
    return float(hsic / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)))


class _Sim:
    """Routes one shared set of rows through hand-made gates and computes every table like `inspect()`."""

    def __init__(self, topo: Topology, sharpness: dict[str, float], n: int = 1200, seed: int = 0) -> None:
        self.topo = topo
        self.rng = np.random.default_rng(seed)
        self.n = n
        self.x = self.rng.normal(size=(n, 12))
        self.labels = {
            t.name: (self.rng.random(n) < 1 / (1 + np.exp(-(self.x[:, i] * 2 - 1.5 - i)))).astype(float)
            for i, t in enumerate(topo.tasks)
        }
        self.gates: dict[str, np.ndarray] = {}
        for g in topo.gates:
            w = self.rng.normal(size=(12, g.n_experts)) * sharpness.get(g.name, 1.0)
            bias = self.rng.normal(size=g.n_experts) * 0.8
            self.gates[g.name] = _softmax(self.x @ w + bias)

    def gate_tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        metrics, util = [], []
        for g in self.topo.gates:
            w = self.gates[g.name]
            e = g.n_experts
            mean, std = w.mean(0), w.std(0)
            top1 = np.bincount(w.argmax(1), minlength=e) / self.n
            h = _entropy(w)
            top = int(mean.argmax())
            imp = w.sum(0)
            metrics.append(
                {
                    "gate": g.name,
                    "task": g.task or "",
                    "level": g.level,
                    "n_experts": e,
                    "n_rows": float(self.n),
                    "mean_entropy": h.mean(),
                    "normalized_entropy": h.mean() / math.log(e),
                    "entropy_of_mean": _entropy(mean),
                    "effective_experts": math.exp(_entropy(mean)),
                    "importance_cv2": imp.var() / imp.mean() ** 2,
                    "load_cv2": top1.var() / top1.mean() ** 2,
                    "switch_balance": e * float((top1 * mean).sum()),
                    "input_dependence": float(w.var(0).sum() / (1 - (mean**2).sum())),
                    "polarized_share": float(((w < 0.01) | (w >= 0.99)).mean()),
                    "max_mean_weight": float(mean[top]),
                    "top_expert": g.experts[top],
                    "top_expert_top1_share": float(top1[top]),
                    "nonfinite_rows": 0.0,
                    "not_normalized_rows": 0.0,
                }
            )
            for k, name in enumerate(g.experts):
                util.append(
                    {
                        "gate": g.name,
                        "task": g.task or "",
                        "level": g.level,
                        "expert": name,
                        "mean": float(mean[k]),
                        "std": float(std[k]),
                        "top1_share": float(top1[k]),
                    }
                )
        return pd.DataFrame(metrics), pd.DataFrame(util)

    def groups(self) -> list[list[GateSpec]]:
        out: dict[tuple, list[GateSpec]] = {}
        for g in self.topo.gates:
            if g.task is not None:
                out.setdefault((g.level, g.experts), []).append(g)
        return [v for v in out.values() if len(v) >= 2]

    def divergence_tables(self) -> dict[str, pd.DataFrame]:
        div, mi_rows, spec = [], [], []
        for group in self.groups():
            means = np.stack([self.gates[g.name].mean(0) for g in group])
            for a in range(len(group)):
                for b in range(a + 1, len(group)):
                    ga, gb = self.gates[group[a].name], self.gates[group[b].name]
                    div.append(
                        {
                            "level": group[a].level,
                            "gate_a": group[a].name,
                            "gate_b": group[b].name,
                            "task_a": group[a].task,
                            "task_b": group[b].task,
                            "jsd_mean_gates": float(_js(means[a], means[b])),
                            "jsd_per_row": float(_js(ga, gb).mean()),
                            "tv_per_row": float(0.5 * np.abs(ga - gb).sum(1).mean()),
                        }
                    )
            pe = means.mean(0)
            mi = float((means * np.log(means / pe)).sum(1).mean())
            bound = math.log(min(len(group), means.shape[1]))
            mi_rows.append(
                {
                    "level": group[0].level,
                    "gates": ", ".join(g.name for g in group),
                    "mutual_information": mi,
                    "normalized": mi / bound,
                }
            )
            for e, expert in enumerate(group[0].experts):
                order = np.argsort(-means[:, e])
                w1, w2 = float(means[order[0], e]), float(means[order[1], e])
                spec.append(
                    {
                        "level": group[0].level,
                        "expert": expert,
                        "top_task": group[order[0]].task,
                        "top_weight": w1,
                        "second_task": group[order[1]].task,
                        "second_weight": w2,
                        "ratio": w1 / w2,
                    }
                )
        return {
            "task_divergence": pd.DataFrame(div),
            "mutual_information": pd.DataFrame(mi_rows),
            "specialization": pd.DataFrame(spec),
        }

    def label_routing(self) -> pd.DataFrame:
        rows = []
        for g in self.topo.gates:
            w = self.gates[g.name]
            for t in self.topo.tasks:
                y = self.labels[t.name] > 0.5
                for k, expert in enumerate(g.experts):
                    rows.append(
                        {
                            "gate": g.name,
                            "label": t.name,
                            "expert": expert,
                            "mean_positive": float(w[y, k].mean()),
                            "mean_negative": float(w[~y, k].mean()),
                        }
                    )
        return pd.DataFrame(rows)

    def expert_outputs(self) -> dict[str, np.ndarray]:
        outs = {}
        for i, e in enumerate(self.topo.experts):
            a = self.rng.normal(size=(12, 8))
            outs[e.name] = np.maximum(self.x @ a, 0)
            if i == 1:  # expert 1 copies expert 0: a redundant pair
                outs[e.name] = next(iter(outs.values())) * 1.01 + self.rng.normal(size=(self.n, 8)) * 0.01
        return outs

    def expert_tables(self, outs: dict[str, np.ndarray]) -> dict[str, pd.DataFrame]:
        rows = []
        for e in self.topo.experts:
            w, rel, top1 = [], [], []
            for g in self.topo.gates:
                if e.name in g.experts:
                    k = g.experts.index(e.name)
                    gw = self.gates[g.name]
                    w.append(float(gw[:, k].mean()))
                    rel.append(float(gw[:, k].mean()) * g.n_experts)
                    top1.append(float((gw.argmax(1) == k).mean()))
            rows.append(
                {
                    "expert": e.name,
                    "module": e.module or "",
                    "owner": e.owner,
                    "level": e.level,
                    "n_gates": len(w),
                    "max_mean_weight": max(w),
                    "max_relative_weight": max(rel),
                    "max_top1_share": max(top1),
                    "zero_fraction": float((outs[e.name] == 0).mean()),
                    "mean_output_norm": float(np.linalg.norm(outs[e.name], axis=1).mean()),
                }
            )
        names = [e.name for e in self.topo.experts]
        levels = {e.name: e.level for e in self.topo.experts}
        pairs = [
            {"expert_a": a, "expert_b": b, "cka": _linear_cka(outs[a], outs[b]), "n_rows": float(self.n)}
            for i, a in enumerate(names)
            for b in names[i + 1 :]
            if levels[a] == levels[b]
        ]
        return {"experts": pd.DataFrame(rows), "redundant_experts": pd.DataFrame(pairs)}

    def tasks_table(self) -> pd.DataFrame:
        rows = []
        for t in self.topo.tasks:
            y = self.labels[t.name]
            pred = np.clip(y * 0.3 + self.rng.random(self.n) * 0.5, 0, 1)
            pos, neg = pred[y > 0.5], pred[y <= 0.5]
            auc = float((pos[:, None] > neg[None, :]).mean())
            rows.append(
                {
                    "task": t.name,
                    "kind": t.kind,
                    "label": t.label_column,
                    "n_rows": float(self.n),
                    "n_labelled": float(self.n),
                    "positive_rate": float(y.mean()),
                    "label_mean": float(y.mean()),
                    "mean_prediction": float(pred.mean()),
                    "std_prediction": float(pred.std()),
                    "auc": auc,
                    "mse": math.nan,
                    "predictions_outside_0_1": 0.0,
                }
            )
        return pd.DataFrame(rows)

    def arrays(self, outs: dict[str, np.ndarray] | None) -> dict:
        arrays: dict = {k: {} for k in ("reservoir", "weight_hist", "weight_hist_edges", "entropy_hist")}
        arrays["entropy_hist_edges"] = {}
        arrays["coactivation"] = {}
        for g in self.topo.gates:
            w = self.gates[g.name]
            arrays["reservoir"][g.name] = w[:512].astype(np.float32)
            edges = np.linspace(0, 1, 21)
            arrays["weight_hist"][g.name] = np.stack(
                [np.histogram(w[:, k], edges)[0] for k in range(g.n_experts)]
            )
            arrays["weight_hist_edges"][g.name] = edges
            h_edges = np.linspace(0, math.log(g.n_experts), 41)
            arrays["entropy_hist"][g.name] = np.histogram(_entropy(w), h_edges)[0].astype(float)
            arrays["entropy_hist_edges"][g.name] = h_edges
            arrays["coactivation"][g.name] = w.T @ w / len(w)  # mean outer product E[g gᵀ]
        if outs is not None:
            names = list(outs)
            arrays["expert_cka"] = np.array([[_linear_cka(outs[a], outs[b]) for b in names] for a in names])
            arrays["expert_cka_names"] = names
        else:
            arrays["expert_cka"] = None
            arrays["expert_cka_names"] = []
        return arrays

    def result(self, model_name: str, verdict: str) -> InspectionResult:
        tables: dict[str, pd.DataFrame] = {"tasks": self.tasks_table()}
        outs = None
        if self.topo.has_gates:
            tables["gate_metrics"], tables["utilization"] = self.gate_tables()
            tables.update(self.divergence_tables())
            tables["label_routing"] = self.label_routing()
            outs = self.expert_outputs()
            tables.update(self.expert_tables(outs))
        return InspectionResult(
            topology=self.topo,
            tables=tables,
            findings=diagnose(tables),
            verdict=verdict,
            n_rows=self.n,
            data_source="synthetic.parquet",
            model_name=model_name,
            arrays=self.arrays(outs) if self.topo.has_gates else {},
            meta={"record_seconds": 0.5, "seed": 0},
        )


def make_causal(
    topo: Topology, seed: int = 0, *, baseline: bool = True, segments: bool = True
) -> CausalResult:
    """Causal tables shaped like `run_causal`'s (columns from the causal package), with chosen values:
    half the ablation cells significant, the last task sparse, one baseline, segments by 'device'."""
    rng = np.random.default_rng(seed)
    tasks = [t.name for t in topo.tasks]
    rate = {t: (0.02 if i == len(tasks) - 1 else 0.2 + 0.1 * i) for i, t in enumerate(tasks)}
    intact = {t: 0.6 + 0.05 * i for i, t in enumerate(tasks)}
    tm, abl, cfs, base = [], [], [], []
    for t in tasks:
        for metric, value in (("auc", intact[t]), ("logloss", 0.4)):
            tm.append(
                {
                    "task": t,
                    "kind": "binary",
                    "n_labelled": 1200,
                    "positive_rate": rate[t],
                    "sparse": rate[t] < 0.05,
                    "metric": metric,
                    "value": value,
                    "lo": value - 0.02,
                    "hi": value + 0.02,
                }
            )
    for mode in ("renormalize", "zero"):
        for k, e in enumerate(topo.experts):
            for t in tasks:
                for metric in ("auc", "logloss"):
                    imp = float(rng.normal(0, 0.02))
                    half = 0.005 if k % 2 == 0 else abs(imp) + 0.01  # odd experts: CI includes zero
                    lo, hi = imp - half, imp + half
                    abl.append(
                        {
                            "mode": mode,
                            "expert": e.name,
                            "owner": e.owner,
                            "level": e.level,
                            "task": t,
                            "metric": metric,
                            "intact": intact[t],
                            "ablated": intact[t] - imp,
                            "importance": imp,
                            "lo": lo,
                            "hi": hi,
                            "significant": bool(lo > 0 or hi < 0),
                        }
                    )
    for t in tasks:
        own = ", ".join(g.name for g in topo.task_gates(t))
        names = [f"gate_of:{o}" for o in tasks if o != t] + ["uniform", "mean_gate"]
        for name in names:
            for metric in ("auc", "logloss"):
                change = float(rng.normal(-0.01, 0.01))
                lo, hi = change - 0.008, change + 0.008
                cfs.append(
                    {
                        "task": t,
                        "counterfactual": name,
                        "gates": own,
                        "metric": metric,
                        "intact": intact[t],
                        "value": intact[t] + change,
                        "change": change,
                        "lo": lo,
                        "hi": hi,
                        "significant": bool(lo > 0 or hi < 0),
                        "worse": change < 0,
                    }
                )
        if baseline:
            gain = float(rng.normal(0.01, 0.01))
            base.append(
                {
                    "task": t,
                    "positive_rate": rate[t],
                    "sparse": rate[t] < 0.05,
                    "n_labelled": 1200,
                    "baseline": "single",
                    "metric": "auc",
                    "model": intact[t],
                    "baseline_value": intact[t] - gain,
                    "gain": gain,
                    "lo": gain - 0.01,
                    "hi": gain + 0.01,
                    "significant": bool(gain - 0.01 > 0),
                }
            )
    sparse_task = tasks[-1]
    first = topo.experts[0].name if topo.experts else None
    sparse = {c: math.nan for c in SPARSE_COLUMNS}
    sparse.update(
        task=sparse_task,
        positive_rate=rate[sparse_task],
        n_labelled=1200,
        auc=intact[sparse_task],
        importance_total=0.05,
        shared_dependence=0.6,
        dense_experts=first,
        top_expert=first,
        top_importance=0.03,
        uniform_change=-0.02,
        uniform_lo=-0.03,
        uniform_hi=-0.01,
        mean_gate_change=-0.004,
        mean_gate_lo=-0.01,
        mean_gate_hi=0.002,
        swap_source=tasks[0],
        swap_change=-0.03,
        swap_lo=-0.05,
        swap_hi=-0.01,
    )
    seg_rows = []
    if segments:
        for g in topo.gates:
            for v, share in (("phone", 0.5), ("tablet", 0.3), ("desktop", 0.2)):
                w = _softmax(rng.normal(size=(1, g.n_experts)))[0]
                row = {
                    "gate": g.name,
                    "segment": v,
                    "rows": int(1200 * share),
                    "share": share,
                    "jsd": float(rng.random() * 0.01),
                    "top_expert": g.experts[int(w.argmax())],
                    "top_weight": float(w.max()),
                }
                row.update({e: float(x) for e, x in zip(g.experts, w, strict=True)})
                seg_rows.append(row)
    experts = list(dict.fromkeys(e for g in topo.gates for e in g.experts))
    preds = {"row": np.arange(5)}
    for t in tasks:
        preds[f"label:{t}"] = np.zeros(5)
        preds[f"model:{t}"] = np.full(5, 0.5)
        if baseline:
            preds[f"single:{t}"] = np.full(5, 0.4)
    return CausalResult(
        topology=topo,
        task_metrics=pd.DataFrame(tm),
        ablation=pd.DataFrame(abl, columns=ABLATION_COLUMNS),
        counterfactuals=pd.DataFrame(cfs, columns=COUNTERFACTUAL_COLUMNS),
        sparse_gains=pd.DataFrame([sparse], columns=SPARSE_COLUMNS),
        baseline_gains=pd.DataFrame(base, columns=BASELINE_COLUMNS),
        segments=pd.DataFrame(seg_rows, columns=SEGMENT_COLUMNS + experts),
        predictions=pd.DataFrame(preds),
        n_rows=1200,
        notes=["'zero' ablation is exact only on probability gates"],
        meta={"n_boot": 200, "ci": 0.95, "seed": 0, "sparse_threshold": 0.05, "segment_by": "device"},
    )


def make_attribution(topo: Topology, features: list[str], seed: int = 0) -> AttributionResult:
    """Attribution tables shaped like `run_attribution`'s: each gate leans on two features of its own,
    and one convergence row (gate_1 on its first expert) is flagged."""
    rng = np.random.default_rng(seed)
    gate_rows, gf_rows, agree, conv = [], [], [], []
    task_rows, expert_rows = [], []

    def shares(k: int, strong: tuple[int, ...]) -> np.ndarray:
        w = rng.random(k) * 0.2
        w[list(strong)] += 2.0
        return w / w.sum()

    for gi, g in enumerate(topo.gates):
        strong = (gi % len(features), (gi + 3) % len(features))
        totals = np.zeros(len(features))
        for j, e in enumerate(g.experts):
            mean_abs = shares(len(features), strong) * (0.1 + 0.01 * j)
            totals += mean_abs
            for f, v in zip(features, mean_abs, strict=True):
                gate_rows.append(
                    [g.name, g.task, g.level, e, f, v, v * rng.uniform(-1, 1), v / mean_abs.sum()]
                )
            flagged = gi == 1 and j == 0
            conv.append(
                [
                    "gate",
                    g.name,
                    e,
                    "integrated_gradients",
                    256,
                    16,
                    0.1,
                    0.1,
                    0.02 if flagged else 1e-6,
                    0.03 if flagged else 1e-5,
                    0.2 if flagged else 1e-5,
                    flagged,
                ]
            )
        order = np.argsort(-totals)
        for rank, i in enumerate(order, 1):
            gf_rows.append([g.name, g.task, g.level, features[i], totals[i], totals[i] / totals.sum(), rank])
        t_share = shares(len(features), (strong[0], (gi + 5) % len(features)))
        for f, v in zip(features, t_share, strict=True):
            task_rows.append([g.task, f, v * 0.01, v * 0.005, v])
        agree.append(
            [
                g.name,
                g.task,
                0.5 - 0.2 * gi,
                2 / 3,
                ", ".join(features[i] for i in order[:3]),
                ", ".join(features[i] for i in np.argsort(-t_share)[:3]),
            ]
        )
    for j, e in enumerate(topo.experts):
        sh = shares(len(features), (j % len(features),))
        for f, v in zip(features, sh, strict=True):
            expert_rows.append([e.name, e.owner, f, v, v / 2, v])
    return AttributionResult(
        gate_attributions=pd.DataFrame(gate_rows, columns=GATE_COLUMNS),
        gate_features=pd.DataFrame(gf_rows, columns=GATE_FEATURE_COLUMNS),
        expert_attributions=pd.DataFrame(expert_rows, columns=EXPERT_COLUMNS),
        task_attributions=pd.DataFrame(task_rows, columns=TASK_COLUMNS),
        gate_task_agreement=pd.DataFrame(agree, columns=AGREEMENT_COLUMNS),
        convergence=pd.DataFrame(conv, columns=CONVERGENCE_COLUMNS),
        features=tuple(features),
        rows=np.arange(256),
        covered=[f"gate:{g.name}" for g in topo.gates]
        + [f"expert:{e.name}" for e in topo.experts]
        + [f"task:{t}" for t in topo.task_names],
        notes=["categorical features attributed at their embeddings"],
        meta={
            "method": "integrated_gradients",
            "n_rows": 256,
            "n_steps": 16,
            "baseline": "default",
            "budget_seconds": 30.0,
            "seconds": 29.5,
            "delta_tolerance": 0.05,
        },
        topology=topo,
    )


def make_mmoe(
    tasks: tuple[str, ...] = ("click", "purchase", "share"),
    n_experts: int = 6,
    module_prefix: str = "experts.",
) -> InspectionResult:
    experts = tuple(ExpertSpec(f"expert_{i}", module=f"{module_prefix}{i}") for i in range(n_experts))
    names = tuple(e.name for e in experts)
    gates = tuple(
        GateSpec(f"gate_{i}", module=f"gates.{i}.softmax", experts=names, task=t) for i, t in enumerate(tasks)
    )
    topo = Topology(
        tasks=tuple(TaskSpec(t, output=i) for i, t in enumerate(tasks)),
        experts=experts,
        gates=gates,
        source="discovered",
        confidence=0.9,
        notes=("gate modules matched by softmax output summing to 1",),
        architecture="MMoE",
    )
    # gate_0 sharp, gate_1 nearly uniform, gate_2 ~ gate_0 in shape
    sim = _Sim(topo, {"gate_0": 1.6, "gate_1": 0.05, "gate_2": 1.2})
    result = sim.result(
        "MMoE(3 tasks x 6 experts)", "Partly: the tasks share most experts but weight them differently."
    )
    result.causal = make_causal(topo)
    result.meta["features"] = [f"f{i}" for i in range(12)]
    result.attribution = make_attribution(topo, result.meta["features"])
    return result


def make_ple() -> InspectionResult:
    tasks = ("ctr", "cvr")
    experts, gates = [], []
    for level in (0, 1):
        spec = {t: [f"L{level}_{t}_{i}" for i in range(2)] for t in tasks}
        shared = [f"L{level}_shared_{i}" for i in range(2)]
        for t in tasks:
            experts += [ExpertSpec(n, module=f"cgc.{level}.{n}", owner=t, level=level) for n in spec[t]]
        experts += [ExpertSpec(n, module=f"cgc.{level}.{n}", level=level) for n in shared]
        for t in tasks:
            gates.append(
                GateSpec(
                    f"L{level}_{t}",
                    module=f"cgc.{level}.gate_{t}",
                    experts=(*spec[t], *shared),
                    task=t,
                    level=level,
                )
            )
        if level == 0:
            gates.append(
                GateSpec(
                    "L0_shared", module="cgc.0.gate_shared", experts=tuple(e.name for e in experts), level=0
                )
            )
    topo = Topology(
        tasks=tuple(TaskSpec(t, output=i) for i, t in enumerate(tasks)),
        experts=tuple(experts),
        gates=tuple(gates),
        architecture="PLE",
    )
    sim = _Sim(topo, {"L1_ctr": 2.0, "L0_shared": 0.6})
    return sim.result(
        "PLE(2 levels)", "Gates recorded; no task gates share one expert set to compare directly."
    )


def make_shared_bottom() -> InspectionResult:
    topo = Topology(
        tasks=(TaskSpec("click", output=0), TaskSpec("like", output=1)), architecture="SharedBottom"
    )
    sim = _Sim(topo, {})
    return sim.result(
        "SharedBottom",
        "No gates found: this is a Shared-Bottom (or dense) multi-task model, so there is no routing to inspect.",
    )


@pytest.fixture(scope="module")
def mmoe() -> InspectionResult:
    return make_mmoe()


@pytest.fixture(scope="module")
def mmoe_report(mmoe: InspectionResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import matplotlib.pyplot as plt

    out = tmp_path_factory.mktemp("mmoe") / "report"
    plt.close("all")
    before = dict(mpl.rcParams)
    write_report(mmoe, out)
    assert dict(mpl.rcParams) == before  # styling is scoped to each figure
    assert plt.get_fignums() == []  # figures are built without pyplot
    return out


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def no_pyplot_leaks():
    """Like sklearn's `pyplot` fixture: no figure may stay registered with pyplot."""
    import matplotlib.pyplot as plt

    plt.close("all")
    yield
    assert plt.get_fignums() == []


# --------------------------------------------------------------------------- folder layout
def test_mmoe_report_has_every_section_and_file(mmoe_report: Path) -> None:
    html = (mmoe_report / "index.html").read_text(encoding="utf-8")
    for anchor in SECTIONS:
        assert f'id="{anchor}"' in html, anchor
        assert f'href="#{anchor}"' in html, anchor
    assert (mmoe_report / ".mmoe-inspect-report").is_file()
    assert "<script" not in html and "http://" not in html and "https://" not in html  # offline, no JS
    for name in FIGURES:  # the MMoE fixture has data for every figure
        assert f'src="figures/{name}.png"' in html, name
        assert f'id="fig-{name}"' in html and f'id="howto-fig-{name}"' in html, name
    for ref in set(re.findall(r'(?:src|href)="((?:figures|tables)/[^"#]+)"', html)):
        assert (mmoe_report / ref).is_file(), ref


def test_pngs_are_real_images(mmoe_report: Path) -> None:
    pngs = sorted((mmoe_report / "figures").glob("*.png"))
    assert {p.stem for p in pngs} == set(FIGURES)
    assert struct.unpack(">II", (mmoe_report / "overview.png").read_bytes()[16:24]) == (1920, 1080)
    for p in pngs:
        assert p.read_bytes()[:8] == PNG_SIGNATURE, p.name
        img = mpimg.imread(p)
        height, width = img.shape[:2]
        assert 500 <= width <= 1200, (p.name, width)
        assert 200 <= height <= 1600, (p.name, height)
        assert img[..., :3].std() > 0.05, p.name  # not a blank canvas


def test_metrics_json_round_trips(mmoe: InspectionResult, mmoe_report: Path) -> None:
    loaded = json.loads((mmoe_report / "metrics.json").read_text(encoding="utf-8"))
    assert loaded == mmoe.to_metrics()
    assert loaded["tables"]["gate_metrics"][0]["gate"] == "gate_0"


def test_csvs_read_back(mmoe: InspectionResult, mmoe_report: Path) -> None:
    tables = {**mmoe.tables, **{f"causal_{k}": v for k, v in mmoe.causal.tables.items()}}
    for name, frame in tables.items():
        back = pd.read_csv(mmoe_report / "tables" / f"{name}.csv")
        assert list(back.columns) == list(frame.columns), name
        assert back.shape == frame.shape, name
        numeric = frame.select_dtypes("number").columns
        np.testing.assert_allclose(back[numeric].to_numpy(float), frame[numeric].to_numpy(float), rtol=1e-12)
    findings = pd.read_csv(mmoe_report / "tables" / "findings.csv")
    assert list(findings["code"]) == [f.code for f in mmoe.findings]


def test_summary_ranks_findings_with_evidence_and_remedy(mmoe: InspectionResult, mmoe_report: Path) -> None:
    html = (mmoe_report / "index.html").read_text(encoding="utf-8")
    assert mmoe.findings, "the fixture should trigger findings"
    positions = [html.index(f"badge-{f.severity}") for f in mmoe.findings]
    assert positions == sorted(positions)
    assert 'class="question' in html and mmoe.verdict.split(":")[0] in html  # the routing answer
    for f in mmoe.findings:
        assert f.remedy.split(",")[0] in html
    assert "effective experts" in html and "normalized task-expert MI" in html


# --------------------------------------------------------------------------- other architectures
def test_shared_bottom_says_no_gates_and_shows_tasks(tmp_path: Path) -> None:
    result = make_shared_bottom()
    index = write_report(result, tmp_path / "sb")
    html = index.read_text(encoding="utf-8")
    assert "This model has no gates" in html
    assert 'id="tasks"' in html and 'src="figures/task_outputs.png"' in html
    for anchor in SECTIONS:  # every section is there, saying why it is empty
        assert f'id="{anchor}"' in html, anchor
    assert "No routing figures or tables are drawn" in html
    assert "No experts to compare" in html
    assert "No causal analyses: they were not requested" in html
    assert sorted(p.name for p in (tmp_path / "sb" / "figures").iterdir()) == ["task_outputs.png"]
    assert (tmp_path / "sb" / "overview.png").is_file()
    assert sorted(p.name for p in (tmp_path / "sb" / "tables").iterdir()) == ["tasks.csv"]


def test_ple_report_draws_one_panel_per_level(tmp_path: Path) -> None:
    result = make_ple()
    report = get_report_structure(result, {name: f"figures/{name}.png" for name in FIGURES})
    assert [s.anchor for s in report.sections] == list(SECTIONS)
    fig = FIGURES["task_expert_heatmap"].draw(result)
    assert fig is not None
    titles = [ax.get_title(loc="left") for ax in fig.axes if ax.get_title(loc="left")]
    assert titles == ["Level 0", "Level 1"]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["ctr", "cvr", "shared"]
    # PLE task gates mix different experts: no task pair to compare row by row
    assert FIGURES["task_divergence"].draw(result) is None
    html = write_report(result, tmp_path / "ple").read_text(encoding="utf-8")
    assert "cgc.0.gate_shared" in html  # topology section lists every gate module


# --------------------------------------------------------------------------- escaping
def test_user_names_are_escaped(tmp_path: Path) -> None:
    result = make_mmoe(tasks=(XSS_TASK, "like"), n_experts=4, module_prefix=XSS_MODULE)
    html = write_report(result, tmp_path / "xss").read_text(encoding="utf-8")
    assert XSS_TASK not in html and XSS_MODULE not in html
    assert "<img src=x" not in html and "<script" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in html


# --------------------------------------------------------------------------- atomic writes
def test_failing_figure_leaves_previous_report_untouched(
    mmoe: InspectionResult, mmoe_report: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "report"
    shutil.copytree(mmoe_report, out)
    before = _tree(out)
    calls: list[str] = []

    def boom(result: InspectionResult):
        calls.append("boom")
        raise RuntimeError("figure exploded")

    names = list(FIGURES)
    assert 0 < names.index("coactivation") < len(names) - 1  # fails mid-way: earlier figures were written
    monkeypatch.setitem(FIGURES, "coactivation", replace(FIGURES["coactivation"], draw=boom))
    with pytest.raises(ReportError, match="figure exploded"):
        write_report(mmoe, out)
    assert calls == ["boom"]
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_failure_on_first_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(result: InspectionResult):
        raise ValueError("bad table")

    monkeypatch.setitem(FIGURES, "task_outputs", replace(FIGURES["task_outputs"], draw=boom))
    with pytest.raises(ReportError, match="bad table"):
        write_report(make_shared_bottom(), tmp_path / "new")
    assert list(tmp_path.iterdir()) == []


def test_previous_report_is_replaced(tmp_path: Path) -> None:
    out = tmp_path / "report"
    write_report(make_shared_bottom(), out)
    (out / "figures" / "stale.png").write_bytes(PNG_SIGNATURE)  # a figure the previous report wrote ...
    marker = json.loads((out / ".mmoe-inspect-report").read_text(encoding="utf-8"))
    marker["files"].append("figures/stale.png")  # ... so its marker lists it
    (out / ".mmoe-inspect-report").write_text(json.dumps(marker), encoding="utf-8")
    (out / "figures" / "mine.txt").write_text("the user's", encoding="utf-8")  # not listed: the user's
    second = replace(make_shared_bottom(), model_name="second model")
    index = write_report(second, out)
    assert index == out / "index.html"
    assert "second model" in index.read_text(encoding="utf-8")
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["model"] == "second model"
    assert not (out / "figures" / "stale.png").exists()
    assert (out / "figures" / "mine.txt").read_text(encoding="utf-8") == "the user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_foreign_folder_is_refused_without_force(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(ReportError, match="not empty"):
        write_report(make_shared_bottom(), out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    write_report(make_shared_bottom(), out, force=True)
    assert (out / "notes.txt").read_text(encoding="utf-8") == "keep me"
    assert (out / "index.html").is_file() and (out / ".mmoe-inspect-report").is_file()
    # now a report with a user file in it: rewriting keeps the user file
    write_report(make_shared_bottom(), out)
    assert (out / "notes.txt").read_text(encoding="utf-8") == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_empty_folder_and_file_targets(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert write_report(make_shared_bottom(), tmp_path / "empty").is_file()
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(ReportError, match="not a folder"):
        write_report(make_shared_bottom(), tmp_path / "file")


# --------------------------------------------------------------------------- API pieces
def test_every_item_type_has_a_renderer_and_is_exercised(mmoe: InspectionResult) -> None:
    from typing import get_args

    from mmoe_inspect.reports.diff import diff_results, diff_structure
    from mmoe_inspect.reports.html import _RENDERERS, render_item
    from mmoe_inspect.reports.structure import Item

    figures = {n: f"figures/{n}.png" for n in FIGURES}
    pages = [get_report_structure(result, figures, ["tasks"]) for result in (mmoe, make_shared_bottom())]
    pages.append(diff_structure(diff_results(mmoe, make_mmoe()), {"routing": "figures/routing.png"}))
    items = [item for page in pages for section in page.sections for item in section.items]
    assert set(get_args(Item)) <= set(_RENDERERS)
    assert {type(i) for i in items} == set(get_args(Item))  # the fixtures reach every item kind
    for item in items:
        assert str(render_item(item)).strip()
    with pytest.raises(TypeError, match="no HTML renderer"):
        render_item(object())


def test_number_formatting() -> None:
    from mmoe_inspect.reports.structure import fmt_value

    assert fmt_value(float("nan")) == "—"
    assert fmt_value(None) == "—"
    assert fmt_value(1200.0, "n_rows") == "1,200"
    assert fmt_value(3.0, "level") == "3"
    assert fmt_value(0.123456) == "0.123"
    assert fmt_value(0.00001234) == "<0.001"
    assert fmt_value(0.0) == "0.000"
    assert fmt_value(float("inf")) == "∞"
    assert fmt_value(np.int64(5)) == "5"


def test_gate_utilization_display(mmoe: InspectionResult, no_pyplot_leaks) -> None:
    disp = GateUtilizationDisplay.from_result(mmoe, gate="gate_1").plot()
    assert disp.figure_ is disp.ax_.figure
    assert len(disp.ax_.patches) == 6  # one bar per expert
    np.testing.assert_allclose(
        [p.get_height() for p in disp.ax_.patches],
        mmoe.table("utilization").query("gate == 'gate_1'")["mean"].to_numpy(),
    )
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    assert GateUtilizationDisplay.from_result(mmoe).plot(ax=ax).ax_ is ax
    with pytest.raises(ValueError, match="no gates"):
        GateUtilizationDisplay.from_result(make_shared_bottom())


def test_figures_without_data_are_skipped(tmp_path: Path) -> None:
    sb = make_shared_bottom()
    assert render_figures(sb, tmp_path) == {"task_outputs": "task_outputs.png"}
    bare = replace(sb, tables={"tasks": sb.tables["tasks"][["task", "kind", "label"]]})  # no outputs recorded
    assert all(spec.draw(bare) is None for spec in FIGURES.values())


def test_one_gate_moe_and_degenerate_arrays(tmp_path: Path) -> None:
    experts = tuple(ExpertSpec(f"e{i}", module=f"experts.{i}") for i in range(3))
    topo = Topology(
        tasks=(TaskSpec("click", output=0), TaskSpec("like", output=1)),
        experts=experts,
        gates=(GateSpec("gate", module="gate.softmax", experts=tuple(e.name for e in experts)),),
        architecture="OMoE",
    )
    result = _Sim(topo, {"gate": 0.0}).result("OMoE", "Gates recorded; no task gates share one expert set.")
    result.arrays["entropy_hist"]["gate"] = np.zeros(10)  # no finite rows histogrammed
    result.arrays["reservoir"]["gate"] = np.empty((0, 3))
    result.tables["gate_metrics"].loc[0, "effective_experts"] = math.nan
    written = render_figures(result, tmp_path / "figures")
    assert "gate_entropy" not in written and "weight_distributions" not in written
    assert "task_divergence" not in written  # one shared gate: no task pair
    assert {"task_expert_heatmap", "expert_utilization", "coactivation", "label_routing"} <= set(written)
    html = write_report(result, tmp_path / "report").read_text(encoding="utf-8")
    assert 'id="routing"' in html and ">shared<" in html


# --------------------------------------------------------------------------- causal section, overview, diff
def _html(result: InspectionResult) -> str:
    from mmoe_inspect.reports import render_html

    return render_html(get_report_structure(result, {n: f"figures/{n}.png" for n in FIGURES}))


def test_causal_section_says_why_its_parts_are_absent() -> None:
    result = make_mmoe()
    full = _html(result)
    for anchor in ("ablation", "counterfactuals", "sparse", "baselines", "segments"):
        assert f'id="sub-causal-{anchor}"' in full, anchor
    assert "No baseline" not in full and "No segment routing" not in full
    assert "interval level" in full and "95%" in full

    bare = replace(result, causal=make_causal(result.topology, baseline=False, segments=False))
    html = _html(bare)
    assert "No baseline model was given, so there is no MTL gain" in html and "--baseline NAME=PATH" in html
    assert "No segment routing: no segment column was given" in html

    no_sparse = make_causal(result.topology)
    no_sparse.sparse_gains = no_sparse.sparse_gains.iloc[:0]
    assert "No sparse task: no binary task has a positive rate below 0.05" in _html(
        replace(result, causal=no_sparse)
    )

    skipped = replace(result, causal=None, skipped={"causal": "the data has no label column for any task"})
    assert "No causal analyses: the data has no label column for any task." in _html(skipped)
    assert skipped.to_metrics()["meta"]["causal_skipped"] == "the data has no label column for any task"

    sb = make_shared_bottom()
    gateless = make_causal(sb.topology, segments=False)
    gateless.ablation = gateless.ablation.iloc[:0]
    gateless.counterfactuals = gateless.counterfactuals.iloc[:0]
    html = _html(replace(sb, causal=gateless))
    assert "No expert ablation: the model has no gates (Shared-Bottom or dense)." in html
    assert "No gate counterfactuals: the model has no gates (Shared-Bottom or dense)." in html
    assert "No segment routing: the model has no gates (Shared-Bottom or dense)." in html
    assert 'id="table-causal_baseline_gains"' in html  # a Shared-Bottom still has an MTL gain


def _section(html: str, anchor: str) -> str:
    start = html.index(f'<section id="{anchor}"')
    return html[start : html.index("</section>", start)]


def test_attribution_section_shows_figures_tables_and_flagged_rows(mmoe_report: Path) -> None:
    html = (mmoe_report / "index.html").read_text(encoding="utf-8")
    assert 'href="#attributions"' in html
    part = _section(html, "attributions")
    for sub in ("gates", "experts", "tasks", "convergence"):
        assert f'id="sub-attribution-{sub}"' in part, sub
    for name in ("attribution_gates", "attribution_gate_vs_task", "attribution_experts"):
        assert f'src="figures/{name}.png"' in part and f'id="howto-fig-{name}"' in html, name
    for name in ("gate_task_agreement", "gate_features", "task_features", "convergence"):
        assert f'id="table-attribution_{name}"' in part and f'id="howto-table-attribution_{name}"' in html
    for csv in ("gate_task_agreement", "gate_features", "task_attributions", "convergence"):
        assert f'href="tables/attribution_{csv}.csv"' in part and (mmoe_report / "tables").is_dir()
        assert (mmoe_report / "tables" / f"attribution_{csv}.csv").is_file()
    # what it covered within the budget, and the one flagged output: highlighted, listed first, warned about
    assert "sampled rows" in part and "gates gate_0, gate_1, gate_2" in part and "of a 30 s budget" in part
    assert "Large convergence delta for gate:gate_1" in part
    table = part[part.index('id="table-attribution_convergence"') :]
    rows = re.findall(r"<tr(?: class=\"marked\")?>", table.split("</table>")[0])
    assert rows[1] == '<tr class="marked">' and rows.count('<tr class="marked">') == 1
    assert "categorical features attributed at their embeddings" in part  # the notes


def test_attribution_gate_heatmap_draws_a_few_gates(no_pyplot_leaks) -> None:
    from mmoe_inspect.reports.attribution_figures import MAX_ATTRIBUTION_GATES, MAX_HEATMAP_FEATURES

    result = make_mmoe(tasks=("a", "b", "c", "d", "e"), n_experts=3)
    fig = FIGURES["attribution_gates"].draw(result)
    assert fig is not None
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title(loc="left")]
    assert [ax.get_title(loc="left") for ax in panels] == [f"{t} (gate_{i})" for i, t in enumerate("abcd")]
    assert len(panels) == MAX_ATTRIBUTION_GATES
    assert len(panels[0].get_yticklabels()) == MAX_HEATMAP_FEATURES
    assert "(first 4 of 5 gates)" in fig.get_suptitle()
    bars = FIGURES["attribution_gate_vs_task"].draw(result)
    assert bars is not None and FIGURES["attribution_experts"].draw(result) is not None


def test_attribution_section_says_why_its_parts_are_absent() -> None:
    result = make_mmoe()
    off = replace(result, attribution=None, skipped={"attribution": "turned off (--no-attributions)"})
    part = _section(_html(off), "attributions")
    assert "Attributions were not computed: turned off (--no-attributions)." in part
    assert "<img" not in part and "<table" not in part
    assert "Attributions were not computed: they were not requested" in _html(
        replace(result, attribution=None)
    )

    cut = make_attribution(result.topology, result.meta["features"])
    cut.covered = [c for c in cut.covered if not c.startswith("task:")]
    cut.skipped = [f"task:{t}" for t in result.topology.task_names]
    cut.task_attributions = cut.task_attributions.iloc[:0]
    part = _section(_html(replace(result, attribution=cut)), "attributions")
    assert "The time budget ran out before every output was attributed: 3 skipped" in part
    assert "No task attributions: the time budget ran out" in part

    sb = make_shared_bottom()
    gateless = make_attribution(sb.topology, ["x0", "x1", "x2", "x3"])
    part = _section(_html(replace(sb, attribution=gateless)), "attributions")
    assert "No gate attributions: the model has no gates (Shared-Bottom or dense)." in part
    assert "No expert attributions: the model has no experts." in part
    assert 'id="sub-attribution-convergence"' in part


def test_importance_heatmap_marks_intervals_that_include_zero(
    mmoe: InspectionResult, no_pyplot_leaks
) -> None:
    from matplotlib.patches import Rectangle

    fig = FIGURES["causal_importance"].draw(mmoe)
    assert fig is not None
    ax = fig.axes[0]
    abl = mmoe.causal.ablation
    shown = abl[(abl["mode"] == "renormalize") & (abl["metric"] == "auc")]
    n_ns = int((~shown["significant"]).sum())
    assert 0 < n_ns < len(shown)
    assert sum("n.s." in t.get_text() for t in ax.texts) == n_ns
    assert sum(isinstance(p, Rectangle) and p.get_hatch() == "///" for p in ax.patches) == n_ns
    assert [t.get_text() for t in ax.get_yticklabels()] == ["click (AUC)", "purchase (AUC)", "share (AUC)"]
    fig.clear()


def test_counterfactual_bars_carry_their_intervals(mmoe: InspectionResult, no_pyplot_leaks) -> None:
    fig = FIGURES["causal_counterfactuals"].draw(mmoe)
    assert fig is not None
    ax = fig.axes[0]
    cf = mmoe.causal.counterfactuals
    shown = cf[cf["metric"] == "auc"]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) == len(shown) == 12  # 3 tasks x (2 other tasks' gates, uniform, mean gate)
    assert labels[:4] == [
        "click · purchase's gate",
        "click · share's gate",
        "click · uniform gate",
        "click · mean gate",
    ]
    bars = [p for p in ax.patches if p.get_height() == pytest.approx(0.62)]
    np.testing.assert_allclose(sorted(b.get_width() for b in bars), sorted(shown["change"]), atol=1e-12)
    _, _, (segments,) = ax.containers[-1].lines  # the error bars: one segment per bar
    assert len(segments.get_segments()) == len(shown)
    fig.clear()


@pytest.mark.parametrize("make", [make_mmoe, make_ple, make_shared_bottom], ids=["mmoe", "ple", "sb"])
def test_overview_slide(make, tmp_path: Path, no_pyplot_leaks) -> None:
    from mmoe_inspect.reports import overview_figure, write_overview

    result = make()
    fig = overview_figure(result)
    texts = " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
    assert "DOES EVERY TASK WORK?" in texts and "DO EXPERTS SERVE DIFFERENT TASKS?" in texts
    assert " ".join(result.verdict.split()[:3]) in texts  # the routing answer
    fig.clear()
    path = write_overview(result, tmp_path / "overview.png")
    assert struct.unpack(">II", path.read_bytes()[16:24]) == (1920, 1080)


def test_diff_folder_is_written_atomically(tmp_path: Path) -> None:
    from mmoe_inspect.reports import write_diff

    a, b = make_mmoe(), make_ple()
    index = write_diff(a, b, tmp_path / "diff")
    html = index.read_text(encoding="utf-8")
    assert 'src="figures/routing.png"' in html and 'src="figures/effective.png"' in html
    d = json.loads((tmp_path / "diff" / "diff.json").read_text(encoding="utf-8"))
    assert d["gates_only_in_a"] == ["gate_0", "gate_1", "gate_2"]
    assert {f["code"] for f in d["findings_gone"]} == {f.code for f in a.findings}
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep", encoding="utf-8")
    with pytest.raises(ReportError, match="not empty"):
        write_diff(a, b, foreign)
    write_report(a, tmp_path / "diff")  # a report replaces a diff folder whole
    assert not (tmp_path / "diff" / "diff.json").exists() and (tmp_path / "diff" / "metrics.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diff", "mine"]


def test_the_library_never_imports_reports_or_the_cli() -> None:
    """`write_report` is the Python API; the library stays free of matplotlib/Jinja rendering imports."""
    code = (
        "import sys, mmoe_inspect, mmoe_inspect.inspector, mmoe_inspect.causal, mmoe_inspect.loading;"
        "bad = [m for m in sys.modules if m.startswith(('mmoe_inspect.reports', 'mmoe_inspect.cli'))];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    package = Path(mmoe_inspect.__file__).parent
    pattern = re.compile(r"^\s*(from|import)\s+(mmoe_inspect\.(reports|cli)|\.+(reports|cli))\b", re.M)
    offenders = [p.name for p in package.rglob("*.py") if pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []
    assert not hasattr(InspectionResult, "save_report")
