"""A task whose scores rank the rows in reverse (AUC interval below 0.5) is a critical finding, never "above
chance": the usual cause is an output read as another task's (unnamed outputs are matched to label columns
by file order), a flipped label or an inverted sign, and every other number about the task is then wrong.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

import mmoe_inspect as mi

FEATURES = [f"x{i}" for i in range(8)]


class Scores(nn.Module):
    """Two binary tasks scored from one feature each; `sign` -1 turns the `like` score around."""

    def __init__(self, sign: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([3.0, 3.0 * sign]))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = x[:, :2] * self.scale
        return {"click": torch.sigmoid(z[:, 0]), "like": torch.sigmoid(z[:, 1])}


def frame(rows: int = 3000) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    f = pd.DataFrame(rng.normal(size=(rows, 8)).astype("float32"), columns=FEATURES)
    f["click"] = (f["x0"] + rng.normal(scale=0.5, size=rows) > 0).astype("float64")
    f["like"] = (f["x1"] + rng.normal(scale=0.5, size=rows) > 0).astype("float64")
    return f


def inspect(model: nn.Module, data: pd.DataFrame) -> mi.InspectionResult:
    return mi.inspect(model, data, input_fn=lambda f: torch.tensor(f[FEATURES].to_numpy()), columns=FEATURES)


def test_inverted_task_is_critical_and_not_above_chance() -> None:
    data = frame()
    result = inspect(Scores(sign=-1.0), data)
    tasks = result.tables["tasks"].set_index("task")
    assert tasks.loc["like", "auc_hi"] < 0.5 < tasks.loc["click", "auc_lo"]  # planted: like reversed
    found = [f for f in result.findings if f.code == "task_ranks_inverted"]
    assert [(f.subject, f.severity) for f in found] == [("like", "critical")]
    assert "1 - AUC" in found[0].message and "--labels" in found[0].remedy
    assert not any(
        f.code in ("task_at_chance", "task_worse_than_base_rate") and f.subject == "like"
        for f in result.findings
    )
    answer = next(a for a in result.review.answers if a.key == "tasks")
    assert answer.answer == "No: like is ranked in reverse (AUC interval below 0.5).", answer.answer
    assert answer.status == "problem"
    assert any("RANKS IN REVERSE" in line for line in answer.evidence)
    # the same model with the score the right way round: no such finding, every task ranks its rows
    fixed = inspect(Scores(sign=1.0), data)
    assert not any(f.code == "task_ranks_inverted" for f in fixed.findings)
    assert next(a for a in fixed.review.answers if a.key == "tasks").answer.startswith("Yes")


def test_a_task_reversed_on_five_positives_is_ranked_inverted() -> None:
    """5 positives of 2,000 scored near the bottom (placements ~0, 0, 0, 0.1, 0.9): AUC 0.2, Mann-Whitney
    p = 0.017. DeLong's interval on 5 rows reaches above 0.5; the task got no finding ("ranks rows")."""
    data = frame(2000)
    order = data["x0"].sort_values().index
    data["click"] = 0.0
    data.loc[order[[0, 1, 2, 200, 1800]], "click"] = 1.0
    result = inspect(Scores(sign=1.0), data)
    row = result.tables["tasks"].set_index("task").loc["click"]
    assert abs(row["auc"] - 0.2) < 0.01 and row["auc_hi"] > 0.5
    found = [f for f in result.findings if f.code == "task_ranks_inverted"]
    assert [(f.subject, f.severity) for f in found] == [("click", "critical")]
    assert "Mann-Whitney" in found[0].message
    answer = next(a for a in result.review.answers if a.key == "tasks")
    assert "click is ranked in reverse (AUC below 0.5 by Mann-Whitney's test" in answer.answer, answer.answer
