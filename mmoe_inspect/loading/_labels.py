"""Which data columns are labels, and which label column an output reads (`like_pred` -> `like`).

Used by `mmoe_inspect.loading.input_binding` for models no adapter knows: a column named like a label
(`LABEL_WORDS`, `is_<word>`, `y_*`, `*_label`, ...) is not fed to the model, and an output whose
name is not a column reads the column of a close name (`label_for_output`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import pandas as pd

from mmoe_inspect.data.inputs import InputMappingError
from mmoe_inspect.data.outputs import Locator
from mmoe_inspect.loading._trials import short

__all__ = ["LABEL_WORDS", "label_for_output", "looks_like_label", "match_outputs"]

LABEL_WORDS = frozenset(
    {
        "label", "labels", "target", "targets", "y", "click", "clicks", "clicked", "ctr", "cvr", "ctcvr",
        "conversion", "convert", "converted", "purchase", "purchased", "buy", "bought", "pay", "paid",
        "cart", "like", "liked", "likes", "finish", "finished", "complete", "completed", "follow",
        "followed", "share", "shared", "comment", "commented", "favorite", "favourite", "fav", "collect",
        "watch", "watched", "skip", "skipped", "engage", "engaged", "churn", "churned", "retained",
        "retention", "outcome", "response", "reward",
    }
)  # fmt: skip
"""Column names taken for labels (also as `is_<word>`, `<word>_label`, `label_*`, `*_label`, `y_*`, `target_*`)."""

_LABEL_PATTERNS = (
    re.compile(r"^(label|target|y)([_\-]\w+|\d+)$"),
    re.compile(r"^\w+[_\-](label|target)$"),
)
_LABEL_AFFIXES = (
    ("is_", ""),
    ("has_", ""),
    ("label_", ""),
    ("target_", ""),
    ("y_", ""),
    ("", "_label"),
    ("", "_target"),
)
_OUTPUT_PREFIXES = ("pred_", "prob_", "logit_", "logits_", "score_", "y_", "p_", "out_", "output_", "yhat_")
_OUTPUT_SUFFIXES = (
    "_pred", "_preds", "_prediction", "_prob", "_probs", "_probability", "_logit", "_logits", "_score",
    "_out", "_output", "_hat", "_p", "_y",
)  # fmt: skip


def looks_like_label(name: str) -> bool:
    """Whether a column name reads as a label (`click`, `is_click`, `label`, `y_like`, `ctr_label`, ...)."""
    low = name.lower()
    if low in LABEL_WORDS or any(p.match(low) for p in _LABEL_PATTERNS):
        return True
    return any(
        low.startswith(pre) and low.endswith(suf) and low[len(pre) : len(low) - len(suf)] in LABEL_WORDS
        for pre, suf in _LABEL_AFFIXES
    )


def _stem(name: str, prefixes: Sequence[str], suffixes: Sequence[str]) -> str:
    low = name.lower()
    for p in prefixes:
        if low.startswith(p) and len(low) > len(p):
            low = low[len(p) :]
            break
    for s in suffixes:
        if low.endswith(s) and len(low) > len(s):
            low = low[: -len(s)]
            break
    return low


def label_for_output(output: str, columns: Sequence[str]) -> list[str]:
    """The columns an output named `output` reads its label from, best match level first, several = ambiguous.

    Levels: the same name (case-insensitive); the output's stem (`like_pred`, `pred_like`,
    `like_prob`, `y_like`, `like_logit` → `like`) equal to a column; the stem equal to a column's
    own stem (`is_like`, `like_label` → `like`). An empty list: no column fits.
    """
    low = output.lower()
    same = [c for c in columns if c.lower() == low]
    if same:
        return same
    stem = _stem(output, _OUTPUT_PREFIXES, _OUTPUT_SUFFIXES)
    hits = [c for c in columns if c.lower() == stem]
    if hits:
        return hits
    label_stems = {
        c: _stem(c, [p for p, _ in _LABEL_AFFIXES if p], [s for _, s in _LABEL_AFFIXES if s]) for c in columns
    }
    return [c for c in columns if label_stems[c] == stem and label_stems[c] != c.lower()]


def match_outputs(
    outputs: list[tuple[str | None, Locator]],
    frame: pd.DataFrame,
    numeric: Sequence[str],
    label_map: dict[str, str],
    given_tasks: list[str] | None,
    declared: list[str] | None,
    label_like: Sequence[str],
    *,
    features: Sequence[str] = (),
) -> tuple[tuple[str, ...] | None, dict[str, str] | None, list[str], list[str]]:
    """(task names to pass or None, task → label column or None, notes, columns matched as labels)."""
    notes: list[str] = []
    n = len(outputs)
    tasks: tuple[str, ...] | None = None
    if given_tasks is not None:
        names: list[str] | None = list(given_tasks)
    elif all(k is not None for k, _ in outputs):
        names = [str(k) for k, _ in outputs]
    elif declared is not None and len(declared) == n:
        names = list(declared)
    else:
        names = None
    labels = dict(label_map)
    matched: list[str] = []
    if names is None:  # unnamed outputs: the label-like columns in file order, when they are as many
        cols = [c for c in label_like if c in numeric]
        if len(cols) == n:
            tasks = tuple(cols)
            pairs = ", ".join(f"{j} -> {c}" for j, c in enumerate(cols))
            notes.append(
                f"the model's {n} output(s) carry no names: taken in task order as the label-like columns "
                f"in file order ({pairs}); name them otherwise with --tasks a,b or --labels task=column"
            )
            matched = cols
        else:
            notes.append(
                f"the model's {n} output(s) carry no names and the data has {len(cols)} label-like column(s)"
                + (f" ({short(cols)})" if cols else "")
                + ": no labels, so label-conditioned routing and the causal analyses are skipped; name them "
                "with --tasks a,b (labels = columns of those names) or --labels task=column"
            )
        return tasks, (labels or None), notes, matched
    given = {col: task for task, col in labels.items()}
    used: dict[str, str] = dict(given)
    close: list[str] = []
    pool = [c for c in numeric if c not in set(features)]  # columns the user named as inputs are no labels
    for task in names:
        if task in labels:
            continue
        if task in frame.columns:
            used.setdefault(task, task)
            matched.append(task)
            continue
        hits = label_for_output(task, pool)
        if not hits:
            continue
        if len(hits) > 1:
            raise InputMappingError(
                f"output {task!r} could read its label from {' or '.join(repr(h) for h in hits)}; "
                f"name it with --labels {task}={hits[0]}"
            )
        col = hits[0]
        if col in given:
            notes.append(
                f"output {task!r} reads like {col!r}, which --labels gives to {given[col]!r}: no label"
            )
            continue
        if col in used:
            raise InputMappingError(
                f"outputs {used[col]!r} and {task!r} both match the label column {col!r}; "
                f"name the one that predicts it with --labels {used[col]}={col}"
            )
        used[col] = task
        labels[task] = col
        matched.append(col)
        close.append(f"{task} -> {col}")
    if close:
        notes.append(
            f"outputs matched to label columns by close names: {', '.join(close)} (else --labels task=column)"
        )
    if (
        given_tasks is None
        and declared is not None
        and len(declared) == n
        and any(k is None for k, _ in outputs)
    ):
        tasks = None  # discovery takes the model's own `task_names`
    return tasks, (labels or None), notes, matched
