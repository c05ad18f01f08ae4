"""Every finding code, declared once: its default severity, its title and what it means.

A `Finding` carries one of these codes. `diagnose()` and the other finding builders take severity
and title from here (`finding_for`), `--fail-on` and the Lightning callback's `stop_on` accept
exactly these codes (`check_codes` names the close ones on a typo), the review and the reports
compare against the constants below instead of string literals, and the README's "Findings" table
lists them (a test keeps the table and this registry equal, severities and meanings included).

The string values are part of the output format (`metrics.json`, `tables/`, the run log of
`GateMonitor`, `check`): they never change. A new code is added here first; the test that every
builder's code is registered (and every registered code has a builder) then says what is missing.

Severity is the default: a collapsed gate's severity follows its measured impact once the causal
analyses ran (`analysis.review.rescale_by_impact`), so it can be a warning.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Severity = Literal["critical", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("critical", "warning", "info")
SEVERITY_ORDER: dict[str, int] = {s: i for i, s in enumerate(SEVERITIES)}

# routing: gates
COLLAPSED_GATE = "collapsed_gate"
ONE_EXPERT_MODULE = "one_expert_module"
UNIFORM_GATE = "uniform_gate"
INPUT_INDEPENDENT_GATE = "input_independent_gate"
POLARIZED_GATE = "polarized_gate"
NONFINITE_GATE = "nonfinite_gate"
GATE_NOT_NORMALIZED = "gate_not_normalized"
ROWS_WITHOUT_EXPERT = "rows_without_expert"
# routing: task pairs
TASKS_ROUTE_IDENTICALLY = "tasks_route_identically"
TASKS_ROUTE_SIMILARLY = "tasks_route_similarly"
# experts
DEAD_EXPERT = "dead_expert"
INACTIVE_EXPERT = "inactive_expert"
REDUNDANT_EXPERTS = "redundant_experts"
SHARED_EXPERT_SINGLE_TASK = "shared_expert_single_task"
SPARSE_TASK_IGNORES_OWN_EXPERTS = "sparse_task_ignores_own_experts"
TASK_IGNORES_OWN_EXPERTS = "task_ignores_own_experts"
TASK_IGNORES_SHARED_EXPERTS = "task_ignores_shared_experts"
# task quality (not routing: the review's first question answers them)
TASK_AT_CHANCE = "task_at_chance"
TASK_RANKS_INVERTED = "task_ranks_inverted"
TASK_NO_BETTER_THAN_MEAN = "task_no_better_than_mean"
TASK_WORSE_THAN_BASE_RATE = "task_worse_than_base_rate"
SINGLE_CLASS_LABELS = "single_class_labels"
TASK_UNLABELLED = "task_unlabelled"
TOO_FEW_LABELS = "too_few_labels"
UNJUDGED_TASK_CODES = (TASK_UNLABELLED, SINGLE_CLASS_LABELS, TOO_FEW_LABELS)
"""Findings saying a task's quality could not be judged (said first by `check`, which fails on them)."""
# the model or its outputs
NONFINITE_PREDICTIONS = "nonfinite_predictions"
MODEL_CHANGED_ITSELF = "model_changed_itself"
NONDETERMINISTIC_FORWARD = "nondeterministic_forward"


@dataclass(frozen=True)
class FindingCode:
    """One finding code: `severity` by default, the `title` every such finding carries, and `meaning`:
    when it fires, in one line (the README's "fires when" column). `task_quality`: about a task's
    predictions, not its routing, so the routing verdict leaves it out."""

    code: str
    severity: Severity
    title: str
    meaning: str
    task_quality: bool = False


_DECLARED = (
    FindingCode(
        COLLAPSED_GATE,
        "critical",
        "Collapsed gate",
        "one expert has mean weight ≥ 0.9 and is top-1 on ≥ 90% of rows (of the rows that get an expert, by its "
        "share of their weight)",
    ),
    FindingCode(
        ONE_EXPERT_MODULE,
        "critical",
        "Every expert is one output",
        "a gate's expert slots all hold one output (`[expert] * E` on one input; one module on different "
        "inputs is several experts): moving weight among them changes nothing, a Shared-Bottom in disguise",
    ),
    FindingCode(
        TASKS_ROUTE_IDENTICALLY,
        "critical",
        "Tasks route identically",
        "two task gates over the same experts have mean per-row TV < 0.05 (MMoE behaving as one-gate MoE)",
    ),
    FindingCode(
        NONFINITE_GATE, "critical", "Gate produced NaN/inf", "NaN/inf gate weights (those rows are excluded)"
    ),
    FindingCode(
        MODEL_CHANGED_ITSELF,
        "critical",
        "The model changed itself during inspection",
        "the model's forward wrote to its own parameters or buffers during inspection: every number is "
        "unreliable",
    ),
    FindingCode(
        NONFINITE_PREDICTIONS,
        "critical",
        "Task predictions are NaN/inf",
        "a task's output is NaN/inf on some rows (counted in the tasks table, left out of its metrics)",
        task_quality=True,
    ),
    FindingCode(
        TASK_AT_CHANCE,
        "critical",
        "Task at chance",
        "a binary task's exact AUC 95% interval (DeLong) holds 0.5 and stays below 0.6 (wider: `too_few_labels`)",
        task_quality=True,
    ),
    FindingCode(
        TASK_RANKS_INVERTED,
        "critical",
        "Task ranks rows in reverse",
        "a binary task's exact AUC 95% interval lies below 0.5: its scores put negatives above positives",
        task_quality=True,
    ),
    FindingCode(
        TASK_NO_BETTER_THAN_MEAN,
        "critical",
        "Task predicts no better than the label mean",
        "a regression task's R² 95% paired interval holds 0 (or lies below) and stays below 0.05: predicting "
        "the mean of the labels does as well",
        task_quality=True,
    ),
    FindingCode(
        ROWS_WITHOUT_EXPERT,
        "critical",
        "Rows get no expert",
        "≥ 50% of a gate's rows give every expert weight 0 (top-1 overflow dropped by capacity, masked rows); a "
        "warning from 20%, info from 1%",
    ),
    FindingCode(UNIFORM_GATE, "warning", "Uniform gate", "mean row entropy ≥ 97% of `log E`"),
    FindingCode(
        NONDETERMINISTIC_FORWARD,
        "warning",
        "The eval-mode forward is random",
        "two eval-mode forwards on the same rows differ (noise, dropout or sampling left on): routing "
        "statistics mix the input's routing with that noise",
    ),
    FindingCode(
        INPUT_INDEPENDENT_GATE,
        "warning",
        "Input-independent gate",
        "input dependence < 0.02 (and not uniform or collapsed)",
    ),
    FindingCode(
        POLARIZED_GATE,
        "warning",
        "Polarized gate",
        "≥ 90% of weights are < 0.01 or ≥ 0.99 (YouTube ranking, RecSys 2019)",
    ),
    FindingCode(
        DEAD_EXPERT,
        "warning",
        "Dead expert",
        "every gate gives it < 10% of a uniform share and it is top-1 on < 1% of rows",
    ),
    FindingCode(INACTIVE_EXPERT, "warning", "Inactive expert", "≥ 90% of its activations are exactly zero"),
    FindingCode(
        REDUNDANT_EXPERTS,
        "warning",
        "Redundant experts",
        "linear CKA ≥ 0.95 between two experts of one level",
    ),
    FindingCode(
        SHARED_EXPERT_SINGLE_TASK,
        "warning",
        "Shared expert serves one task",
        "(PLE) one task holds ≥ 90% of the task-gate weight on a shared expert",
    ),
    FindingCode(
        SPARSE_TASK_IGNORES_OWN_EXPERTS,
        "warning",
        "Sparse task ignores its own experts",
        "(PLE) a task with < 5% positives puts < 10% of its weight on its own experts",
    ),
    FindingCode(
        TASK_IGNORES_OWN_EXPERTS,
        "warning",
        "Task gate ignores its own experts",
        "(PLE) a task gate puts < 10% of its weight on its task-specific experts (a sparse task's final gate: "
        "`sparse_task_ignores_own_experts`)",
    ),
    FindingCode(
        TASK_IGNORES_SHARED_EXPERTS,
        "warning",
        "Task gate ignores the shared experts",
        "(PLE) a task gate puts < 10% of its weight on the shared experts: the task learns alone there",
    ),
    FindingCode(
        GATE_NOT_NORMALIZED,
        "warning",
        "Gate weights do not sum to 1",
        "gate rows that do not sum to 1 (sigmoid / top-k gates)",
    ),
    FindingCode(
        TASK_WORSE_THAN_BASE_RATE,
        "warning",
        "Log loss worse than the base rate",
        "a binary task ranks rows above chance, but its log loss is worse than predicting the base rate (95% "
        "paired interval of the per-row difference above 0)",
        task_quality=True,
    ),
    FindingCode(
        SINGLE_CLASS_LABELS,
        "warning",
        "Labels all one class or value",
        "a task's labelled rows all hold one label (one class of a binary task: its AUC is undefined, blank "
        "not 0.5; one number of a regression task: its R² is undefined), so whether the task works cannot be "
        "judged",
        task_quality=True,
    ),
    FindingCode(
        TOO_FEW_LABELS,
        "warning",
        "Too few labelled rows to judge the task",
        "a task's labelled rows cannot tell whether it works: a binary task whose AUC interval holds 0.5 and "
        "reaches 0.6 (with < 10 rows of a class: an AUC within chance of 0.5 under the null), a regression task "
        "whose R² interval holds 0 and reaches 0.05 (with < 10 rows: holds 0)",
        task_quality=True,
    ),
    FindingCode(
        TASK_UNLABELLED,
        "warning",
        "Task not judged: no labelled rows",
        "a task has no row with a finite label: whether it works cannot be judged",
        task_quality=True,
    ),
    FindingCode(
        TASKS_ROUTE_SIMILARLY,
        "info",
        "Tasks share most routing",
        "per-row TV < 0.2: healthy-but-shared, as most real models are",
    ),
)

REGISTRY: dict[str, FindingCode] = {c.code: c for c in _DECLARED}
"""Code -> its declaration, most severe first (the order `--fail-on` and the README list them in)."""

TASK_QUALITY_CODES = frozenset(c.code for c in _DECLARED if c.task_quality)
"""Findings about a task's predictions, not its routing: the review's first question answers them."""


def close_codes(text: str, n: int = 3) -> list[str]:
    """The registered codes closest to `text` (a typo such as "colapsed_gate"), best first."""
    return difflib.get_close_matches(text, list(REGISTRY), n=n, cutoff=0.5)


def check_codes(codes: Iterable[str], what: str, *, severities: bool = False) -> None:
    """ValueError in one line naming `what` and the close codes, unless every entry of `codes` is a
    registered code (or, with `severities`, one of critical/warning/info)."""
    allowed = set(REGISTRY) | (set(SEVERITIES) if severities else set())
    for code in codes:
        if code in allowed:
            continue
        near = difflib.get_close_matches(str(code), sorted(allowed), n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(map(repr, near))}?)" if near else ""
        kinds = "a finding code or severity" if severities else "a finding code"
        raise ValueError(f"{what}: {code!r} is not {kinds}{hint}; codes: {', '.join(REGISTRY)}")
