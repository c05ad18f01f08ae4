"""`InspectionResult`: everything one inspection found, as pandas tables + findings + raw arrays for plots.

One data model, several renderings: `reports/` draws figures and HTML from it, `to_metrics()` gives the
versioned JSON, `save_tables()` the CSVs.

The causal and attribution results are typed (`CausalResult`, `AttributionResult`) but imported only
for type checking: this module sits below `causal/`, `attribution/` and `monitor/` and imports none
of them, so reading a result (a report renderer, a notebook) does not load the analyses' code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ._plural import plural
from .analysis.findings import Finding, Thresholds
from .analysis.review import Review, build_review
from .analysis.timeline import collapse_timeline
from .tabular import json_safe, save_tables, table_records
from .topology.spec import Topology

if TYPE_CHECKING:
    from .attribution.result import AttributionResult
    from .causal.result import CausalResult

METRICS_SCHEMA_VERSION = "1.0"

TABLE_DESCRIPTIONS: dict[str, str] = {
    "tasks": "One row per task: kind, label rate or mean, prediction summary, exact AUC with 95% interval (DeLong), too_few_labels, log loss vs the base rate's, at-chance flag / MSE.",
    "gate_metrics": "One row per gate: entropy, effective experts, balance, input dependence, polarization.",
    "utilization": "Gate x expert: mean weight, standard deviation, top-1 share (load).",
    "task_divergence": "Task-gate pairs over the same experts: JSD of mean gates, mean per-row JSD and TV.",
    "specialization": "Per expert: which task's gate uses it most, and by how much over the next task.",
    "label_routing": "Gate x label x expert: mean weight on positive vs negative rows.",
    "experts": "Per expert: gates mixing it, strongest weight it gets, zero-activation share, output norm.",
    "redundant_experts": "Expert pairs on the same level: linear CKA of their outputs on a row sample.",
    "mutual_information": "Per group of task gates over the same experts: I(task; expert), normalized.",
}


@dataclass
class InspectionResult:
    """The outcome of `mmoe_inspect.inspect`: topology, tables, findings, plot arrays, provenance."""

    topology: Topology
    tables: dict[str, pd.DataFrame]
    findings: list[Finding]
    verdict: str
    n_rows: int
    data_source: str
    model_name: str
    thresholds: Thresholds = field(default_factory=Thresholds)
    arrays: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    causal: CausalResult | None = None  # the causal analyses, when they ran
    attribution: AttributionResult | None = None  # the feature attributions, when they ran
    training: pd.DataFrame | None = None  # run log of a GateMonitor (`mmoe_inspect.monitor.read_run_log`)
    skipped: dict[str, str] = field(default_factory=dict)
    """Analysis name ("causal", "attribution") -> why it did not run, in words the report prints after
    "No causal analyses: ". Absent when it ran or was not asked for. `metrics.json` keeps it under
    `meta["<name>_skipped"]`."""

    def table(self, name: str) -> pd.DataFrame:
        """The named table; a table this inspection could not compute (no gates, no labels) is empty.

        An unknown name (a typo such as "utilisation") raises `KeyError` listing the close names.
        """
        if name in self.tables:
            return self.tables[name]
        if name in TABLE_DESCRIPTIONS:
            return pd.DataFrame()
        import difflib

        close = difflib.get_close_matches(name, list(TABLE_DESCRIPTIONS), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        raise KeyError(f"no table {name!r}; {hint}tables: {', '.join(TABLE_DESCRIPTIONS)}")

    def skip_reason(self, analysis: str) -> str | None:
        """Why `analysis` ("causal", "attribution") did not run, or None (it ran, or was not asked for)."""
        return self.skipped.get(analysis)

    def attach_causal(self, causal: CausalResult | None) -> None:
        """Attach causal analyses; a collapsed gate's severity then follows its measured impact
        (`mmoe_inspect.analysis.review.rescale_by_impact`) and the verdict is re-read from the findings."""
        from .analysis.findings import routing_findings
        from .analysis.review import rescale_by_impact
        from .analysis.verdict import verdict

        self.causal = causal
        if causal is not None:
            self.findings = rescale_by_impact(self.findings, self.tables, causal)
            self.verdict = verdict(self.topology, self.tables, routing_findings(self.findings))

    @property
    def review(self) -> Review:
        """The review questions answered (task quality, multi-task gains, routing, next step) and the
        diagnoses, from this result's tables, findings, verdict and causal analyses."""
        return build_review(self.tables, self.findings, self.verdict, self.causal)

    @property
    def gate_names(self) -> list[str]:
        return [g.name for g in self.topology.gates]

    def findings_frame(self) -> pd.DataFrame:
        cols = ["severity", "code", "subject", "title", "message", "remedy"]
        return pd.DataFrame([{k: getattr(f, k) for k in cols} for f in self.findings], columns=cols)

    def worst_severity(self) -> str | None:
        if not self.topology.judgeable:  # the routing could not be verified: never shown as healthy
            return "critical"
        for sev in ("critical", "warning", "info"):
            if any(f.severity == sev for f in self.findings):
                return sev
        return None

    # ------------------------------------------------------------ renderings
    def summary(self) -> str:
        """A few plain lines: verdict, rows, gates, findings (what `repr` and the CLI show)."""
        lines = [
            f"{self.model_name}: {self.verdict}",
            f"{self.n_rows:,} rows from {self.data_source}; tasks: {', '.join(self.topology.task_names)}; "
            f"{plural(len(self.topology.gates), 'gate')}, {plural(len(self.topology.experts), 'expert')} ({self.topology.source})",
        ]
        lines += [f"{a.question} {a.answer}" for a in self.review.answers if a.key != "routing"]
        lines += [f"  {f.severity:<8} {f.title}: {f.subject}" for f in self.findings]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<InspectionResult\n{self.summary()}\n>"

    def _repr_html_(self) -> str:
        """Jupyter view: the review's answers with evidence, the diagnoses, and the routing heatmap as an
        HTML table shaded by mean gate weight (all user-provided names escaped; no scripts, no images)."""
        from html import escape

        colors = {"ok": "#2e7d32", "problem": "#c62828", "unknown": "#b26a00"}
        review = self.review
        parts = [
            f"<div><p><b>{escape(self.model_name)}</b> · {self.n_rows:,} rows · tasks "
            f"{escape(', '.join(self.topology.task_names))}</p>"
        ]
        for a in review.answers:
            ev = "".join(f"<li>{escape(e)}</li>" for e in a.evidence)
            parts.append(
                f"<p style='margin:4px 0'><b>{escape(a.question)}</b> "
                f"<span style='color:{colors.get(a.status, '#000')}'>{escape(a.answer)}</span></p>"
                + (f"<ul style='margin:0'>{ev}</ul>" if ev else "")
            )
        if review.diagnoses:
            items = "".join(
                f"<li><b>{escape(d.severity)}</b> {escape(d.title)}: {escape(d.summary)}"
                + (f" <i>Next:</i> {escape(d.steps[0])}" if d.steps else "")
                + "</li>"
                for d in review.diagnoses
            )
            parts.append(f"<p style='margin:6px 0 0'><b>Diagnosis</b></p><ol>{items}</ol>")
        parts.append(_heatmap_html(self.table("utilization")))
        return "".join(parts) + "</div>"

    def to_metrics(self) -> dict[str, Any]:
        """Every number of the inspection in a JSON-safe dict with a versioned schema."""
        return json_safe(
            {
                "schema_version": METRICS_SCHEMA_VERSION,
                "model": self.model_name,
                "data": self.data_source,
                "n_rows": int(self.n_rows),
                "verdict": self.verdict,
                "topology": self.topology.to_dict(),
                "thresholds": self.thresholds.to_dict(),
                "findings": [f.to_dict() for f in self.findings],
                "review": self.review.to_dict(),
                "tables": table_records(self.tables),
                "causal": self.causal.to_dict() if self.causal is not None else None,
                "attribution": self.attribution.to_dict() if self.attribution is not None else None,
                "training": _training_records(self.training),
                "meta": {**self.meta, **{f"{k}_skipped": v for k, v in self.skipped.items()}},
            }
        )

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_metrics(), indent=indent, allow_nan=False)

    def save_tables(self, folder: str | Path) -> list[Path]:
        """Write every non-empty table as `<name>.csv` into `folder` (causal/attribution tables prefixed)."""
        paths = save_tables(self.tables, folder)
        if self.causal is not None:
            paths += self.causal.save_tables(folder)
        if self.attribution is not None:
            paths += self.attribution.save_tables(folder)
        if self.training is not None:
            paths += save_tables({"run_log": self.training}, folder, prefix="training_")
        return paths


def _training_records(run_log: pd.DataFrame | None) -> dict[str, Any] | None:
    """The run log and its finding timeline as records (None without a run log)."""
    if run_log is None:
        return None
    return table_records({"run_log": run_log, "timeline": collapse_timeline(run_log)})


def _heatmap_html(util: pd.DataFrame) -> str:
    """Gate x expert mean weights as an HTML table shaded by weight (the last level of each gate)."""
    from html import escape

    if util.empty or not {"gate", "expert", "mean"} <= set(util.columns):
        return ""
    grid = util.pivot_table(index="gate", columns="expert", values="mean", sort=False)
    head = "".join(f"<th>{escape(str(e))}</th>" for e in grid.columns)
    rows = []
    for gate, values in grid.iterrows():
        cells = "".join(
            "<td></td>"
            if pd.isna(v)
            else f"<td style='background:rgba(21,101,192,{float(v):.2f});color:{'#fff' if v > 0.5 else '#000'}'>"
            f"{float(v):.2f}</td>"
            for v in values
        )
        rows.append(f"<tr><th>{escape(str(gate))}</th>{cells}</tr>")
    return (
        "<p style='margin:6px 0 0'><b>Mean gate weight</b> (gate × expert)</p>"
        f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>"
    )
