"""The finding registry (`mmoe_inspect.analysis.codes`) is complete both ways: every code a finding
can carry is registered, and every registered code is produced by some builder.

Two independent checks: tables planted so that `diagnose()` fires every check it has (plus the
self-change mark on a result), compared with the registry; and a scan of the library's source for
every place a `Finding` is built, which must go through `Finding.of(codes.X, ...)` (so severity and
title come from the registry) and never spell a code as a string literal.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd
import pytest

from mmoe_inspect.analysis import codes
from mmoe_inspect.analysis._self_change import mark_nondeterministic, mark_self_change
from mmoe_inspect.analysis.codes import REGISTRY, TASK_QUALITY_CODES, check_codes
from mmoe_inspect.analysis.findings import Finding, diagnose, routing_findings
from mmoe_inspect.results import InspectionResult
from mmoe_inspect.topology.spec import ExpertSpec, GateSpec, TaskSpec, Topology

LIBRARY = Path(__file__).parents[1] / "mmoe_inspect"


def _gate(name: str, task: str, **over: float) -> dict:
    row = {
        "gate": name,
        "task": task,
        "level": 0,
        "n_experts": 4,
        "n_rows": 100,
        "nonfinite_rows": 0,
        "not_normalized_rows": 0,
        "simplex": True,
        "max_mean_weight": 0.4,
        "top_expert": "e0",
        "top_expert_top1_share": 0.4,
        "effective_experts": 3.0,
        "normalized_entropy": 0.5,
        "input_dependence": 0.3,
        "polarized_share": 0.1,
    }
    return {**row, **over}


def planted_tables() -> dict[str, pd.DataFrame]:
    """Tables on which every check of `diagnose()` fires once (a PLE-like layout: shared and task experts)."""
    gate_metrics = pd.DataFrame(
        [
            # NaN rows, rows not summing to 1, and collapsed onto e0
            _gate(
                "a",
                "a",
                nonfinite_rows=5,
                not_normalized_rows=3,
                max_mean_weight=0.95,
                top_expert_top1_share=0.95,
            ),
            _gate("b", "b", normalized_entropy=0.99),  # uniform
            # input-independent, polarized, and 60 of its 100 rows give no expert any weight (e0 holds half the
            # weight of the 40 routed rows: 0.4 over all 100 would be all of it, a collapse)
            _gate(
                "c",
                "c",
                input_dependence=0.001,
                polarized_share=0.95,
                zero_rows=60,
                max_mean_weight=0.2,
                top_expert_top1_share=0.2,
            ),
            _gate("d", "", distinct_experts=1),  # four slots of one expert module
        ]
    )
    pair = {"level": 0, "jsd_per_row": 0.01, "jsd_mean_gates": 0.01}
    task_divergence = pd.DataFrame(
        [
            {**pair, "task_a": "b", "task_b": "c", "gate_a": "b", "gate_b": "c", "tv_per_row": 0.01},
            {**pair, "task_a": "a", "task_b": "c", "gate_a": "a", "gate_b": "c", "tv_per_row": 0.1},
        ]
    )
    expert = {"n_gates": 3, "max_mean_weight": 0.3, "max_relative_weight": 1.2, "max_top1_share": 0.3}
    experts = pd.DataFrame(
        [
            {**expert, "expert": "s0", "owner": "shared", "zero_fraction": 0.0},
            {**expert, "expert": "s1", "owner": "shared", "zero_fraction": 0.95},  # inactive
            {
                **expert,
                "expert": "s2",
                "owner": "shared",
                "zero_fraction": 0.0,
                "max_relative_weight": 0.01,
                "max_top1_share": 0.0,
                "max_mean_weight": 0.002,
            },  # dead
            {**expert, "expert": "b0", "owner": "b", "zero_fraction": 0.0},
            {**expert, "expert": "c0", "owner": "c", "zero_fraction": 0.0},
        ]
    )
    redundant = pd.DataFrame([{"expert_a": "s0", "expert_b": "s1", "cka": 0.99, "n_rows": 100}])
    util = pd.DataFrame(
        [
            {"gate": "a", "task": "a", "level": 0, "expert": "s0", "mean": 0.9},
            {"gate": "b", "task": "b", "level": 0, "expert": "s0", "mean": 0.01},  # s0 serves task a only
            {"gate": "b", "task": "b", "level": 0, "expert": "b0", "mean": 0.05},  # sparse b ignores b0
            # (and b's gate, 0.01 on s0, ignores the shared experts); c's gate ignores its own c0
            {"gate": "c", "task": "c", "level": 0, "expert": "c0", "mean": 0.02},
            {"gate": "c", "task": "c", "level": 0, "expert": "s1", "mean": 0.98},
        ]
    )
    task = {"kind": "binary", "n_labelled": 100, "n_rows": 100, "auc": 0.7, "auc_lo": 0.6, "auc_hi": 0.8}
    task |= {"logloss": 0.5, "base_rate_logloss": 0.6, "beats_base_rate": True, "at_chance": False}
    task |= {"worse_than_base_rate": False}
    tasks = pd.DataFrame(
        [
            {
                **task,
                "task": "a",
                "positive_rate": 0.3,
                "at_chance": True,
                "auc": 0.5,
                "auc_lo": 0.4,
                "nonfinite_predictions": 4,
            },  # at chance, NaN predictions
            {
                **task,
                "task": "b",
                "positive_rate": 0.01,
                "beats_base_rate": False,
                "worse_than_base_rate": True,
                "nonfinite_predictions": 0,
            },
            {**task, "task": "c", "positive_rate": 1.0, "auc": float("nan"), "nonfinite_predictions": 0},
            {  # ranks in reverse: the interval lies below 0.5
                **task,
                "task": "d",
                "positive_rate": 0.2,
                "auc": 0.2,
                "auc_lo": 0.1,
                "auc_hi": 0.3,
                "nonfinite_predictions": 0,
            },
            {
                **task,
                "task": "e",
                "positive_rate": float("nan"),
                "n_labelled": 0,
                "auc": float("nan"),
            },  # unlabelled
            {  # too few rows of a class to judge
                **task,
                "task": "g",
                "positive_rate": 0.005,
                "auc": 0.7,
                "auc_lo": 0.3,
                "auc_hi": 1.0,
                "too_few_labels": True,
                "nonfinite_predictions": 0,
            },
            {  # a regression task whose MSE is no lower than its labels' variance
                "task": "f",
                "kind": "regression",
                "n_labelled": 100,
                "n_rows": 100,
                "positive_rate": float("nan"),
                "mse": 2.0,
                "label_var": 1.5,
                "r2": -1 / 3,
                "beats_label_mean": False,
                "nonfinite_predictions": 0,
            },
        ]
    )
    return {
        "gate_metrics": gate_metrics,
        "task_divergence": task_divergence,
        "experts": experts,
        "redundant_experts": redundant,
        "utilization": util,
        "tasks": tasks,
    }


def test_every_registered_code_is_produced_and_every_produced_code_is_registered() -> None:
    findings = diagnose(planted_tables())
    topo = Topology(
        tasks=(TaskSpec("a"),),
        experts=(ExpertSpec("e0", "experts.0"), ExpertSpec("e1", "experts.1")),
        gates=(GateSpec("a", "gates.0", experts=("e0", "e1"), task="a"),),
    )
    result = InspectionResult(topo, {}, list(findings), "ok", 1, "rows", "m")
    mark_self_change(result, ["experts.0.weight"])
    mark_nondeterministic(result, 0.25)
    produced = {f.code for f in result.findings}
    assert produced == set(REGISTRY), produced ^ set(REGISTRY)
    for f in result.findings:  # severity and title as registered (no causal rescaling here)
        assert (f.severity, f.title) == (REGISTRY[f.code].severity, REGISTRY[f.code].title), f.code
    assert {f.code for f in result.findings} - {f.code for f in routing_findings(result.findings)} == (
        TASK_QUALITY_CODES
    )


def _finding_calls() -> list[tuple[Path, ast.Call]]:
    calls = []
    for path in LIBRARY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                fn = node.func
                if (isinstance(fn, ast.Name) and fn.id == "Finding") or (
                    isinstance(fn, ast.Attribute)
                    and fn.attr == "of"
                    and getattr(fn.value, "id", "") == "Finding"
                ):
                    calls.append((path, node))
    return calls


def test_every_finding_in_the_library_is_built_from_a_registered_constant() -> None:
    """`Finding(...)` by hand would bypass the registry's severity and title; a code constant that is not
    registered, or a registered code no builder uses, is a mismatch."""
    calls = _finding_calls()
    by_hand = [f"{p.name}:{c.lineno}" for p, c in calls if isinstance(c.func, ast.Name)]
    assert by_hand == [], "build findings with Finding.of(codes.X, ...)"
    used = set()
    for path, call in calls:
        arg = call.args[0]
        assert isinstance(arg, ast.Attribute) and getattr(arg.value, "id", "") == "codes", (
            f"{path.name}:{call.lineno}: the code must be a constant of mmoe_inspect.analysis.codes"
        )
        used.add(getattr(codes, arg.attr))
    assert used == set(REGISTRY)


def _literal_strings(node: ast.AST) -> list[str]:
    items = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else [node]
    return [n.value for n in items if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_no_code_is_compared_as_a_string_literal() -> None:
    """`f.code == "collapsed_gate"` would silently never match after a typo; the constants cannot be
    misspelled without an AttributeError. (Codes also name tables and columns, e.g. `redundant_experts`,
    so only comparisons with a finding's `.code` are checked.)"""
    literals = []
    for path in [*LIBRARY.rglob("*.py"), *(LIBRARY.parent / "reports").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Compare)
                and isinstance(node.left, ast.Attribute)
                and node.left.attr == "code"
            ):
                found = [s for c in node.comparators for s in _literal_strings(c)]
                literals += [f"{path.name}:{node.lineno} {s!r}" for s in found]
    assert literals == []


def test_registry_declarations() -> None:
    assert list(REGISTRY) == sorted(REGISTRY, key=lambda c: codes.SEVERITY_ORDER[REGISTRY[c].severity])
    for c in REGISTRY.values():
        assert c.code == c.code.lower() and " " not in c.code
        assert c.title and c.meaning and "\n" not in c.meaning
    assert {
        "task_at_chance",
        "task_ranks_inverted",
        "task_worse_than_base_rate",
        "single_class_labels",
        "task_no_better_than_mean",
        "task_unlabelled",
        "too_few_labels",
        "nonfinite_predictions",
    } == TASK_QUALITY_CODES
    f = Finding.of(codes.DEAD_EXPERT, "e3", "msg", "fix", {"x": 1.0})
    assert (f.severity, f.title, f.evidence) == ("warning", "Dead expert", {"x": 1.0})


@pytest.mark.parametrize(
    ("given", "severities", "words"),
    [
        pytest.param(["colapsed_gate"], False, "did you mean 'collapsed_gate'", id="typo"),
        pytest.param(["critical"], False, "'critical' is not a finding code", id="severity-not-allowed"),
        pytest.param(["routing"], True, "is not a finding code or severity", id="unknown"),
    ],
)
def test_check_codes_names_close_codes(given: list[str], severities: bool, words: str) -> None:
    with pytest.raises(ValueError, match="stop_on") as err:
        check_codes(given, "stop_on", severities=severities)
    assert words in str(err.value) and "\n" not in str(err.value)
    check_codes(["collapsed_gate", "critical"], "stop_on", severities=True)  # valid: no error
