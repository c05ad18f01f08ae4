"""Binary tasks whose model emits logits (trained with `BCEWithLogitsLoss`) and whose kind discovery could
only guess: 0/1 labels make them binary logits, so their predictions go through a sigmoid everywhere
(the task table's log loss and calibration, the causal analyses); real regression targets stay regression."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import log_loss, roc_auc_score
from torch import nn

import mmoe_inspect as mi

FEATURES = [f"f{i}" for i in range(6)]


class LogitsMMoE(nn.Module):
    """A hand-written MMoE whose towers end without a sigmoid: `{task: logit [B]}`."""

    task_names = ("click", "watch")

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(6, 8), nn.ReLU()) for _ in range(3))
        self.gates = nn.ModuleList(nn.Linear(6, 3) for _ in range(2))
        self.towers = nn.ModuleList(nn.Linear(8, 1) for _ in range(2))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 1.5)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ex = torch.stack([e(x) for e in self.experts], 1)
        return {
            n: t(torch.einsum("be,beh->bh", F.softmax(g(x), -1), ex)).squeeze(-1)
            for n, g, t in zip(self.task_names, self.gates, self.towers, strict=True)
        }


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 6)).astype(np.float32)
    df = pd.DataFrame(x, columns=FEATURES)
    df["click"] = (x[:, 0] + rng.normal(size=3000) > 0.3).astype(float)
    df.loc[::17, "click"] = np.nan  # missing labels stay missing
    df["watch"] = rng.gamma(2.0, 3.0, size=3000)  # a real regression target
    return df


def _fn(f: pd.DataFrame) -> torch.Tensor:
    return torch.tensor(f[FEATURES].to_numpy())


def test_zero_one_labels_make_an_unbounded_output_a_binary_logit(frame: pd.DataFrame) -> None:
    model = LogitsMMoE().eval()
    with torch.no_grad():
        out = model(_fn(frame))["click"]
    logit = out.double().numpy()
    prob = torch.sigmoid(out).double().numpy()  # (in float32, as the model's outputs: the same ties)
    assert logit.min() < 0 < 1 < logit.max()  # outputs outside [0, 1]: discovery alone guesses regression
    result = mi.inspect(model, frame, input_fn=_fn, columns=FEATURES, causal=True)
    tasks = {t.name: t for t in result.topology.tasks}
    assert (tasks["click"].kind, tasks["click"].probability) == ("binary", False)
    assert tasks["watch"].kind == "regression"  # continuous labels: stays regression
    assert any(
        n.startswith("task(s) click: outputs outside [0, 1] but 0/1 labels") for n in result.topology.notes
    )
    row = result.table("tasks").set_index("task").loc["click"]
    ok = ~frame["click"].isna().to_numpy()
    y = frame["click"].to_numpy()[ok]
    assert row["n_labelled"] == ok.sum() and row["predictions_outside_0_1"] == 0
    assert row["mean_prediction"] == pytest.approx(prob.mean(), abs=1e-6)
    assert row["auc"] == pytest.approx(roc_auc_score(y, prob[ok]), abs=1e-12)
    assert row["logloss"] == pytest.approx(log_loss(y, np.clip(prob[ok], 1e-7, 1 - 1e-7)), rel=1e-5)
    # the causal analyses see the same probabilities
    tm = result.causal.task_metrics.set_index(["task", "metric"])
    assert tm.loc[("click", "auc"), "value"] == pytest.approx(row["auc"], abs=1e-9)


def test_declared_kinds_and_ignored_labels_are_left_alone(frame: pd.DataFrame) -> None:
    model = LogitsMMoE().eval()
    declared = mi.inspect(
        model, frame, input_fn=_fn, columns=FEATURES, task_kinds=["regression", "regression"]
    )
    assert [t.kind for t in declared.topology.tasks] == ["regression", "regression"]
    unlabelled = mi.inspect(model, frame, input_fn=_fn, columns=FEATURES, labels=False)
    assert [t.kind for t in unlabelled.topology.tasks] == ["regression", "regression"]
    assert not any("read as binary tasks' logits" in n for n in unlabelled.topology.notes)
