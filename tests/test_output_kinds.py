"""Each task output's kind (binary probability, binary logit, regression) on trained models whose outputs do
not say it outright.

A small MMoE is trained on two 0/1 tasks (click with BCE on its logit, buy with BCE on its logit or with
MSE, a linear probability model) and returns its outputs in the forms users' code has: EasyRec's
`{"logits_buy": z, "probs_buy": sigmoid(z)}` (here without the word logit), a name saying logit, a
logit next to sigmoid outputs, logits only. The eval rows are ordered so that discovery's example rows
(the first 61) see buy's output inside [0, 1]: a logit then looked like a probability or, next to
sigmoid outputs, like a regression, and a trained binary task got `task_no_better_than_mean` (critical).
A regression fitted to 0/1 labels must stay regression although its outputs leave [0, 1].
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mmoe_inspect as mi
from mmoe_inspect.binding import EXAMPLE_ROWS

FEATURES = [f"x{i}" for i in range(6)]
CRITICAL_TASK_CODES = {"task_no_better_than_mean", "task_worse_than_chance"}


class TwoTaskMMoE(nn.Module):
    """3 experts, a softmax gate and a linear tower per task; `form` says what `forward` returns."""

    def __init__(self, form: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.form = form
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(6, 8), nn.ReLU()) for _ in range(3))
        self.gates = nn.ModuleList(nn.Linear(6, 3) for _ in range(2))
        self.towers = nn.ModuleList(nn.Linear(8, 1) for _ in range(2))

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ex = torch.stack([e(x) for e in self.experts], 1)
        z = [
            t(torch.einsum("be,beh->bh", F.softmax(g(x), -1), ex)).squeeze(-1)
            for g, t in zip(self.gates, self.towers, strict=True)
        ]
        return z[0], z[1]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        click, buy = self.heads(x)
        if self.form == "sibling":  # EasyRec: the logit and its sigmoid side by side
            return {"click": torch.sigmoid(click), "buy_score": buy, "buy_prob": torch.sigmoid(buy)}
        if self.form == "named":
            return {"click": torch.sigmoid(click), "buy_logit": buy}
        if self.form == "unsigmoided":  # click ends in a sigmoid, buy does not
            return {"click": torch.sigmoid(click), "buy": buy}
        if self.form == "stretched":  # a probability stretched past [0, 1] a little (no final sigmoid)
            return {"click": torch.sigmoid(click), "buy": (torch.sigmoid(buy) - 0.5) * 1.02 + 0.5}
        return {"click": click, "buy": buy}  # "bare": no sigmoid anywhere


def _rows(n: int = 5000) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    f = pd.DataFrame(x, columns=FEATURES)
    f["click"] = (x[:, 0] + 0.5 * rng.normal(size=n) > 0).astype("int64")
    f["buy"] = (x[:, 1] + x[:, 2] + 0.5 * rng.normal(size=n) > 1.0).astype("int64")
    return f


def _x(f: pd.DataFrame) -> torch.Tensor:
    return torch.tensor(f[FEATURES].to_numpy())


def _trained(form: str, buy_loss: str, frame: pd.DataFrame) -> TwoTaskMMoE:
    """Full-batch Adam: click by BCE on its logit; buy by BCE on its logit ("bce") or by MSE ("mse")."""
    model = TwoTaskMMoE(form)
    x = _x(frame)
    yc, yb = (torch.tensor(frame[c].to_numpy(), dtype=torch.float32) for c in ("click", "buy"))
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(250):
        opt.zero_grad()
        zc, zb = model.heads(x)
        loss = F.binary_cross_entropy_with_logits(zc, yc)
        loss = loss + (
            F.binary_cross_entropy_with_logits(zb, yb) if buy_loss == "bce" else F.mse_loss(zb, yb)
        )
        loss.backward()
        opt.step()
    return model.eval()


def _buy_first_in_unit(model: TwoTaskMMoE, frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows reordered so that buy's output lies in [0, 1] on the first `EXAMPLE_ROWS` (discovery's
    example) and leaves it on later rows; buy's output on the reordered rows."""
    with torch.no_grad():
        z = model.heads(_x(frame))[1].numpy()
    inside = np.flatnonzero((z >= 0) & (z <= 1))
    first = inside[:EXAMPLE_ROWS]
    order = np.concatenate([first, np.setdiff1d(np.arange(len(frame)), first)])
    out = frame.iloc[order].reset_index(drop=True)
    z = z[order]
    assert ((z[:EXAMPLE_ROWS] >= 0) & (z[:EXAMPLE_ROWS] <= 1)).all() and (z < 0).any()
    return out, z


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return _rows()


def _inspect(model: TwoTaskMMoE, rows: pd.DataFrame, **kw) -> mi.InspectionResult:
    return mi.inspect(model, rows, input_fn=_x, columns=FEATURES, **kw)


def _critical(result: mi.InspectionResult, task: str) -> list[str]:
    return [f.code for f in result.findings if f.subject == task and f.severity == "critical"]


@pytest.mark.parametrize(
    ("form", "task", "evidence"),
    [
        ("sibling", "buy_score", "another output being their sigmoid: buy_score (sigmoid: buy_prob)"),
        ("named", "buy_logit", "buy_logit: 0/1 labels and its name says logit"),
        ("unsigmoided", "buy", "buy: outputs outside [0, 1] but 0/1 labels, which their sigmoid fits better"),
        ("bare", "buy", "buy: outputs outside [0, 1] but 0/1 labels, which their sigmoid fits better"),
    ],
)
def test_a_trained_logit_is_read_as_a_binary_logit_whatever_the_example_rows_show(
    form: str, task: str, evidence: str, frame: pd.DataFrame
) -> None:
    """Buy's logit inside [0, 1] on the example rows: read as a binary logit (sigmoid), judged by AUC and log
    loss, no false critical. Before: regression next to sigmoid siblings (task_no_better_than_mean), a
    probability when nothing ends in a sigmoid."""
    model = _trained(form, "bce", frame)
    rows, z = _buy_first_in_unit(model, frame)
    result = _inspect(model, rows, labels={task: "buy"} if task != "buy" else True)
    spec = {t.name: t for t in result.topology.tasks}[task]
    assert (spec.kind, spec.probability) == ("binary", False), result.topology.notes
    assert any(evidence in n for n in result.topology.notes), result.topology.notes
    assert not _critical(result, task), [(f.code, f.subject) for f in result.findings]
    row = result.table("tasks").set_index("task").loc[task]
    assert row["auc"] > 0.85 and row["predictions_outside_0_1"] == 0
    assert row["mean_prediction"] == pytest.approx(
        float(np.mean(1 / (1 + np.exp(-z.astype(np.float64))))), abs=1e-5
    )


@pytest.mark.parametrize("form", ["unsigmoided", "bare"])
def test_a_regression_fitted_to_zero_one_labels_stays_regression(form: str, frame: pd.DataFrame) -> None:
    """Buy fitted by MSE to its 0/1 labels (a linear probability model): its outputs leave [0, 1] on the rows,
    but they fit the labels better than their sigmoid: regression, judged by R² (it beats the label mean).
    Before, with no sigmoid anywhere and an example leaving [0, 1], any 0/1 labels made it a logit."""
    model = _trained(form, "mse", frame)
    rows, _ = _buy_first_in_unit(model, frame)
    result = _inspect(model, rows)
    spec = {t.name: t for t in result.topology.tasks}["buy"]
    assert spec.kind == "regression", result.topology.notes
    assert not any(
        "buy: 0/1 labels" in n or "buy: outputs outside [0, 1] but" in n for n in result.topology.notes
    )
    if form == "bare":  # guessed a probability on the example rows: the rows say otherwise, and why
        assert any(
            n.startswith("task(s) buy: outputs outside [0, 1] (not probabilities)")
            for n in result.topology.notes
        ), result.topology.notes
    assert not _critical(result, "buy")
    assert result.table("tasks").set_index("task").loc["buy", "r2"] > 0.2
    # the logit next to it (click, trained with BCE) is still read as a logit
    click = {t.name: t for t in result.topology.tasks}["click"]
    assert (click.kind, click.probability) == ("binary", form == "unsigmoided")


def test_declared_kinds_are_never_settled_by_the_rows(frame: pd.DataFrame) -> None:
    model = _trained("unsigmoided", "bce", frame)
    rows, _ = _buy_first_in_unit(model, frame)
    result = _inspect(model, rows, task_kinds={"click": "binary", "buy": "regression"})
    assert [t.kind for t in result.topology.tasks] == ["binary", "regression"]
    unlabelled = _inspect(model, rows, labels=False)
    assert {t.name: t.kind for t in unlabelled.topology.tasks} == {"click": "binary", "buy": "regression"}


def test_a_probability_just_past_zero_and_one_is_not_read_as_a_logit(frame: pd.DataFrame) -> None:
    """Buy's probability stretched by 2% around 0.5 (no final sigmoid): it leaves [0, 1] by at most 0.01, on the
    example rows too. Before, outputs outside [0, 1] and 0/1 labels made it a logit, its sigmoid squeezed into
    [0.5, 0.73]; its values fit the labels better than their sigmoid: it is not a logit."""
    model = _trained("stretched", "bce", frame)
    with torch.no_grad():
        q = model(_x(frame))["buy"].numpy()
    outside = (q < 0) | (q > 1)
    assert outside.any() and q.min() > -0.011 and q.max() < 1.011
    rows = frame.iloc[np.argsort(~outside, kind="stable")].reset_index(drop=True)  # the example leaves [0, 1]
    result = _inspect(model, rows)
    spec = {t.name: t for t in result.topology.tasks}["buy"]
    assert spec.kind == "regression" and not spec.probability, result.topology.notes
    assert not any(n.startswith("task(s) buy:") for n in result.topology.notes), result.topology.notes
    assert not _critical(result, "buy")
    assert result.table("tasks").set_index("task").loc["buy", "r2"] > 0.2


class SoftmaxProbability(nn.Module):
    """Click `sigmoid(2 x0)`; buy a probability with no final sigmoid, informative from `x1 + x2`: the positive
    column of a two-class softmax (`softmax`) or ESCM²'s `p_click * a + (1 - p_click) * b` of sigmoids (`mix`)."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form
        self.click = nn.Linear(6, 1)
        self.buy = nn.Linear(6, 2)
        with torch.no_grad():
            self.click.weight.copy_(torch.tensor([[2.0, 0, 0, 0, 0, 0]]))
            self.click.bias.zero_()
            self.buy.weight.copy_(torch.tensor([[0.0, 0, 0, 0, 0, 0], [0, 2, 2, 0, 0, 0]]))
            self.buy.bias.copy_(torch.tensor([0.0, -2.0]))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        p = torch.sigmoid(self.click(x))
        z = self.buy(x)
        if self.form == "softmax":
            buy = torch.softmax(z, -1)[:, 1]
        else:
            a, b = torch.sigmoid(z[:, 1:] + 1), torch.sigmoid(z[:, 1:] - 1)
            buy = (p * a + (1 - p) * b).squeeze(1)
        return {"click": p.squeeze(1), "buy": buy}


@pytest.mark.parametrize("form", ["softmax", "mix"])
def test_a_probability_without_a_final_sigmoid_is_a_binary_probability(
    form: str, frame: pd.DataFrame
) -> None:
    """Buy's outputs are probabilities (in [0, 1] on every row) of its 0/1 labels but end in no sigmoid. Before,
    next to click's sigmoid, buy was read as regression and judged by MSE against the label mean; now a binary
    probability judged by AUC and log loss."""
    result = _inspect(SoftmaxProbability(form).eval(), frame)
    spec = {t.name: t for t in result.topology.tasks}["buy"]
    assert (spec.kind, spec.probability) == ("binary", True), result.topology.notes
    assert any(
        n.startswith("task(s) buy: outputs in [0, 1] on all") and "probabilities" in n
        for n in result.topology.notes
    ), result.topology.notes
    assert not _critical(result, "buy"), [(f.code, f.subject) for f in result.findings]
    assert result.table("tasks").set_index("task").loc["buy", "auc"] > 0.85


class ClampedRatio(nn.Module):
    """Click `sigmoid(2 x0)`; `done` a watch-ratio regression head clamped to [0, 1] (no sigmoid)."""

    def __init__(self) -> None:
        super().__init__()
        self.click = nn.Linear(6, 1)
        self.done = nn.Linear(6, 1)
        with torch.no_grad():
            self.click.weight.copy_(torch.tensor([[2.0, 0, 0, 0, 0, 0]]))
            self.click.bias.zero_()
            self.done.weight.copy_(torch.tensor([[0.0, 0.6, 0, 0, 0, 0]]))
            self.done.bias.fill_(0.5)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"click": torch.sigmoid(self.click(x)).squeeze(1), "done": self.done(x).clamp(0, 1).squeeze(1)}


def test_a_kind_settled_on_the_first_rows_falls_back_to_regression_on_a_later_fraction() -> None:
    """`done`'s labels are whole views/skips (0/1) on the first LABEL_CHECK_ROWS rows, fractions after. Its
    outputs stay in [0, 1], so the first rows read it as a binary probability; a later 0.4… label raised
    LabelValueError mid-pass. Now the task is read as regression (a note says why) and the inspection ends."""
    from mmoe_inspect.label_kinds import LABEL_CHECK_ROWS

    rows = _rows(LABEL_CHECK_ROWS + 2000)
    rng = np.random.default_rng(3)
    done = np.clip(0.5 + 0.6 * rows["x1"].to_numpy() + 0.2 * rng.normal(size=len(rows)), 0, 1)
    done[:LABEL_CHECK_ROWS] = np.round(done[:LABEL_CHECK_ROWS])
    rows = rows.drop(columns=["buy"]).assign(done=done.astype("float32"))
    result = _inspect(ClampedRatio().eval(), rows)
    spec = {t.name: t for t in result.topology.tasks}["done"]
    assert spec.kind == "regression", result.topology.notes
    assert any(n.startswith("task done: read as binary from its first rows") for n in result.topology.notes)
    assert not any(n.startswith("task(s) done:") for n in result.topology.notes), result.topology.notes
    assert result.table("tasks").set_index("task").loc["done", "r2"] > 0.5


def test_a_declared_binary_task_still_refuses_a_label_that_is_not_zero_or_one() -> None:
    """The fallback is for kinds read from the data only: a declared binary kind keeps the one-line error."""
    rows = _rows(300).drop(columns=["buy"]).assign(done=0.0)
    rows.loc[200, "done"] = 0.5
    from mmoe_inspect.data.errors import LabelValueError

    with pytest.raises(LabelValueError, match="row 200"):
        _inspect(ClampedRatio().eval(), rows, task_kinds={"click": "binary", "done": "binary"})
