"""Two experts blended by one weight per row are gates: `lerp(l, r, w)`, `(1 - w) * l + w * r` (either order),
`l + w * (r - l)`, and weights `repeat_interleave`d over concatenated experts. Before, such models came out
Shared-Bottom ("no gates") and `check` passed them with a collapsed gate: the worst answer this tool can give.

The blend's gate is read as `[1 - w, w]` over `(l, r)` (`GateSpec.two_way`); statistics, findings and causal
edits (written back as `w`) work on it. Look-alikes (a residual, a constant average, a constant `[B, 1]`
weight, attention-like products of features) stay gate-less, and a blend whose weight leaves [0, 1] is
reported as unresolved ("cannot judge"), never as a Shared-Bottom.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
import torch
from two_expert_models import (
    BLENDS,
    N_FEATURES,
    SCALAR_FORMS,
    TOTAL_FORMS,
    TWO_WAY,
    Blend,
    Extrapolating,
    FlatWeight,
    InlineSlices,
    LookAlike,
    ScalarHeads,
    SkipInExpert,
    SplitWeights,
    TotalProbability,
    collapse,
)
from typer.testing import CliRunner

import mmoe_inspect as mi
from mmoe_inspect.causal import Ablate, GateIntervention, InterventionError, Replace, run_causal
from mmoe_inspect.cli.main import app
from mmoe_inspect.recording.recorder import GateRecorder
from mmoe_inspect.topology.discovery import discover_topology
from mmoe_inspect.topology.spec import GateSpec, Topology, TopologyError

FEATURES = [f"x{i}" for i in range(N_FEATURES)]
MODELS_FILE = Path(__file__).resolve().parent / "two_expert_models.py"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def frame(rows: int = 1000) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    f = pd.DataFrame(rng.normal(size=(rows, N_FEATURES)).astype("float32"), columns=FEATURES)
    f["click"] = (f["x0"] > 0).astype("float64")
    f["buy"] = (f["x1"] > 0.5).astype("float64")
    return f


def input_fn(d: pd.DataFrame) -> torch.Tensor:
    return torch.tensor(d[FEATURES].to_numpy())


def inspect(model: torch.nn.Module) -> mi.InspectionResult:
    return mi.inspect(model, frame(), input_fn=input_fn, columns=FEATURES)


def example() -> torch.Tensor:
    return torch.randn(61, N_FEATURES, generator=torch.Generator().manual_seed(2))


# ------------------------------------------------------------------------------------------- found
@pytest.mark.parametrize("form", BLENDS)
@pytest.mark.parametrize("weight_module", [False, True])
def test_a_per_row_blend_is_a_gate_and_its_collapse_is_found(form: str, weight_module: bool) -> None:
    result = inspect(collapse(Blend(form, weight_module)))
    topo = result.topology
    assert topo.architecture == "mmoe", topo.notes
    assert topo.judgeable, [u.line() for u in topo.unresolved]
    assert {g.task for g in topo.gates} == {"click", "buy"}
    for g in topo.gates:
        assert g.experts[:2] == ("left", "right")  # the expert weighted by 1 - w first
        assert g.two_way == (form in TWO_WAY)
    assert {f.subject for f in result.findings if f.code == "collapsed_gate"} == {"click"}
    assert "no gates" not in " ".join(topo.notes).lower()


@pytest.mark.parametrize("form", ["lerp", "affine_swapped", "delta", "unsqueezed"])
def test_the_two_way_gate_reads_one_minus_w_then_w(form: str) -> None:
    model = collapse(Blend(form))
    topo = discover_topology(model, example())
    x = input_fn(frame(64))
    want = torch.sigmoid(model.weights["buy"](x))
    with GateRecorder(model, topo) as rec, torch.inference_mode():
        model(x)
        got = rec.take().gates["buy"]
    assert got.shape == (64, 2)
    torch.testing.assert_close(got, torch.cat([1 - want, want], dim=1))


def test_a_blend_whose_weight_leaves_the_unit_interval_cannot_be_judged() -> None:
    topo = discover_topology(collapse(Extrapolating("lerp")), example())
    assert topo.gates == () and topo.architecture is None
    lines = [u.line() for u in topo.unresolved]
    assert lines and all("per-row two-way mix of two expert outputs" in ln for ln in lines), lines
    assert all("cannot be read as a gate" in ln and "leaves [0, 1]" in ln for ln in lines), lines
    assert "two_way = true" in topo.unresolved[0].snippet


def test_two_separate_per_row_weights_cannot_be_judged() -> None:
    topo = discover_topology(SplitWeights().eval(), example())
    assert topo.gates == () and topo.architecture is None
    lines = [u.line() for u in topo.unresolved]
    assert len(lines) == 2 and all("per-row mix of two expert outputs" in ln for ln in lines), lines
    assert all("each weighted by a weight of its own" in ln and "separate" in ln for ln in lines), lines
    assert all("two_way" not in u.snippet for u in topo.unresolved)  # [1 - w0, w0] is not their gate


def test_three_experts_with_separate_weights_are_one_three_way_mix() -> None:
    topo = discover_topology(SplitWeights(three=True).eval(), example())
    assert topo.gates == () and topo.architecture is None
    lines = [u.line() for u in topo.unresolved if "per-row" in u.line()]
    assert len(lines) == 2 and all("per-row mix of 3 expert outputs" in ln for ln in lines), lines
    assert all("two-way" not in ln and "[batch, 3]" in ln for ln in lines), lines


def test_slices_of_one_weight_tensor_stay_that_tensor_s_gate() -> None:
    topo = discover_topology(SplitWeights(sliced=True).eval(), example())
    assert topo.unresolved == () and {g.task for g in topo.gates} == {"click", "buy"}
    assert {g.module for g in topo.gates} == {"pairs.click", "pairs.buy"}  # logits softmaxed by the model
    assert not any(g.two_way for g in topo.gates)


# ---------------------------------------------------------------------------------------- not gates
@pytest.mark.parametrize(
    "form",
    [
        "residual",
        "average",
        "constant_rows",
        "per_feature",
        "features",
        "highway",
        "gru",
        "gated_residual",
        "tanh_residual",
    ],
)
def test_sums_and_products_that_are_no_per_row_blend_are_not_gates(form: str) -> None:
    topo = discover_topology(LookAlike(form).eval(), example())
    assert topo.gates == () and topo.unresolved == (), [u.line() for u in topo.unresolved]
    assert topo.architecture == "shared_bottom", topo.notes


def test_a_gated_skip_inside_one_expert_is_part_of_that_expert() -> None:
    topo = discover_topology(SkipInExpert().eval(), example())
    assert topo.unresolved == (), [u.line() for u in topo.unresolved]
    assert topo.architecture == "mmoe" and {g.task for g in topo.gates} == {"click", "buy"}
    assert not any(g.two_way for g in topo.gates)
    assert all(g.experts == ("experts.0", "experts.1", "experts.2") for g in topo.gates)


# ------------------------------------------------------------------------------------------- causal
def test_causal_ablation_on_two_way_gates() -> None:
    model = collapse(Blend("lerp"))
    res = run_causal(
        model, frame(), input_fn=input_fn, columns=FEATURES, analyses=("ablation", "counterfactuals")
    )
    assert any("'zero' equals 'renormalize'" in n for n in res.notes), res.notes
    abl = res.ablation.set_index(["mode", "expert", "task", "metric"])["importance"]
    # click sits on `right`: removing `left` changes nothing there, removing `right` moves every row
    assert abs(abl[("renormalize", "left", "click", "logloss")]) < 1e-4
    assert abs(abl[("renormalize", "right", "click", "logloss")]) > 1e-3
    assert set(res.counterfactuals["counterfactual"]) >= {"uniform", "mean_gate"}


@pytest.mark.parametrize("form", ["affine", "unsqueezed", "widened"])
def test_edits_of_a_two_way_gate_write_back_w_or_are_refused(form: str) -> None:
    model = collapse(Blend(form))
    topo = discover_topology(model, example())
    x = input_fn(frame(32))
    with torch.inference_mode():
        left, right = model.left(x), model.right(x)
        want = torch.sigmoid(model.heads["click"](0.25 * left + 0.75 * right)).squeeze(1)
    with GateIntervention(model, topo) as iv, torch.inference_mode():
        iv.plan([{"click": Replace(probs=(0.25, 0.75))}], block_rows=32)
        torch.testing.assert_close(model(x)["click"], want)
        iv.plan([{"click": Ablate((True, False))}], block_rows=32)  # renormalize: all on `left`
        only_left = torch.sigmoid(model.heads["click"](left)).squeeze(1)
        torch.testing.assert_close(model(x)["click"], only_left)
        for edit in (Ablate((True, False), "zero"), Replace(probs=(0.2, 0.2))):
            iv.plan([{"click": edit}], block_rows=32)
            with pytest.raises(InterventionError, match="cannot be applied through w"):
                model(x)


def test_edits_of_a_bf16_two_way_gate_are_applied() -> None:
    model = collapse(Blend("lerp")).to(torch.bfloat16)
    x = input_fn(frame(32)).to(torch.bfloat16)
    topo = discover_topology(model, example().to(torch.bfloat16))
    with torch.inference_mode():
        left, right = model.left(x), model.right(x)
        want = torch.sigmoid(model.heads["buy"](torch.lerp(left, right, 0.9))).squeeze(1)
    with GateIntervention(model, topo) as iv, torch.inference_mode():
        iv.plan([{"buy": Replace(probs=(0.1, 0.9))}], block_rows=32)
        torch.testing.assert_close(model(x)["buy"], want, atol=2e-2, rtol=0)
        iv.plan([{"buy": Ablate((False, True))}], block_rows=32)  # renormalize: all on `right`
        only_right = torch.sigmoid(model.heads["buy"](right)).squeeze(1)
        torch.testing.assert_close(model(x)["buy"], only_right)
    res = run_causal(
        model,
        frame(),
        input_fn=lambda d: input_fn(d).to(torch.bfloat16),
        columns=FEATURES,
        analyses=("ablation",),
    )
    assert set(res.ablation["expert"]) == {"left", "right"}


def test_a_batch_weight_unsqueezed_per_term_is_read_where_both_terms_get_it() -> None:
    model = collapse(FlatWeight("affine"))
    topo = discover_topology(model, example())
    assert topo.unresolved == () and {g.task for g in topo.gates} == {"click", "buy"}
    assert all(g.two_way and g.op == "sigmoid" for g in topo.gates)  # not at one term's unsqueeze
    x = input_fn(frame(32))
    with torch.inference_mode():
        w = torch.sigmoid(model.weights["buy"](x))
    with GateRecorder(model, topo) as rec, torch.inference_mode():
        model(x)
        torch.testing.assert_close(rec.take().gates["buy"], torch.cat([1 - w, w], dim=1))
    with torch.inference_mode():
        left, right = model.left(x), model.right(x)
        want = torch.sigmoid(model.heads["buy"](0.25 * left + 0.75 * right)).squeeze(1)
    with GateIntervention(model, topo) as iv, torch.inference_mode():
        iv.plan([{"buy": Replace(probs=(0.25, 0.75))}], block_rows=32)  # both terms of the blend
        torch.testing.assert_close(model(x)["buy"], want)


def test_a_column_sliced_once_per_term_is_one_weight() -> None:
    model = InlineSlices().eval()
    topo = discover_topology(model, example())
    assert topo.unresolved == (), [u.line() for u in topo.unresolved]  # w and 1 - w, not separate weights
    assert {(g.task, g.part) for g in topo.gates} == {("click", 0), ("buy", 1)}
    assert all(g.two_way and g.experts == ("left", "right") for g in topo.gates)
    assert Topology.from_toml(topo.to_toml()).gates == topo.gates
    x = input_fn(frame(32))
    with torch.inference_mode():
        s = torch.sigmoid(model.both(x))
        left, right = model.left(x), model.right(x)
    with GateRecorder(model, topo) as rec, torch.inference_mode():
        model(x)
        got = rec.take().gates
    torch.testing.assert_close(got["buy"], torch.cat([1 - s[:, 1:], s[:, 1:]], dim=1))
    with torch.inference_mode():
        want = {
            t: torch.sigmoid(model.heads[t](0.25 * left + 0.75 * right)).squeeze(1) for t in ("click", "buy")
        }
        keep = torch.sigmoid(model.heads["buy"]((1 - s[:, 1:]) * left + s[:, 1:] * right)).squeeze(1)
    with GateIntervention(model, topo) as iv, torch.inference_mode():
        iv.plan([{"click": Replace(probs=(0.25, 0.75))}], block_rows=32)  # both terms of click's blend
        out = model(x)
        torch.testing.assert_close(out["click"], want["click"])
        torch.testing.assert_close(out["buy"], keep)  # buy's column is left as it is
        iv.plan([{"click": Replace(probs=(0.25, 0.75)), "buy": Replace(probs=(0.25, 0.75))}], block_rows=32)
        out = model(x)
        torch.testing.assert_close(out["buy"], want["buy"])
        torch.testing.assert_close(out["click"], want["click"])
    cross = discover_topology(InlineSlices(cross=True).eval(), example())
    assert not any(g.two_way for g in cross.gates)  # (1 - s0) * l + s1 * r: no blend
    assert all("separate per-row" in u.line() for u in cross.unresolved), [u.line() for u in cross.unresolved]


# --------------------------------------------------------------------------------------------- spec
def test_a_two_way_gate_survives_the_spec_file_and_is_checked() -> None:
    topo = discover_topology(collapse(Blend("lerp")), example())
    again = Topology.from_toml(topo.to_toml())
    assert [g.two_way for g in again.gates] == [True, True]
    plain = discover_topology(collapse(Blend("interleaved_softmax")), example())
    assert plain.gates and "two_way =" not in plain.to_toml()
    g = topo.gates[0]
    for bad in ({"experts": ("left", "right", "left")}, {"output": "weights"}, {"part_dim": 0}):
        with pytest.raises(TopologyError, match="two_way"):
            Topology(tasks=topo.tasks, experts=topo.experts, gates=(GateSpec(**{**g.__dict__, **bad}),))


# ---------------------------------------------------------------------------------------------- CLI
def _check(tmp_path: Path, make: Callable[[ModuleType], torch.nn.Module], *extra: str) -> tuple[int, str]:
    """`check` on a pickled model whose classes come from a copy of `two_expert_models.py` (the test's own
    import of that file would shadow `--model-code`)."""
    code = tmp_path / "cli_blends.py"
    shutil.copy(MODELS_FILE, code)
    spec = importlib.util.spec_from_file_location("cli_blends", code)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["cli_blends"] = module
    try:
        spec.loader.exec_module(module)
        ckpt, data = tmp_path / "model.pt", tmp_path / "eval.parquet"
        torch.save(make(module), ckpt)
    finally:
        del sys.modules["cli_blends"]
    frame().to_parquet(data)
    args = ["check", str(ckpt), "--trust-checkpoint", "--model-code", str(code), "--data", str(data)]
    result = CliRunner().invoke(app, [*args, *extra])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, ANSI.sub("", result.output)


def test_cli_check_fails_on_the_collapsed_blend(tmp_path: Path) -> None:
    code, out = _check(tmp_path, lambda m: m.collapse(m.Blend("delta")), "--fail-on", "collapsed_gate")
    assert code == 1, out
    assert "collapsed_gate click" in out and "collapsed_gate buy" not in out
    assert "no gates" not in out.lower()


def test_cli_check_cannot_judge_an_unreadable_blend(tmp_path: Path) -> None:
    code, out = _check(
        tmp_path, lambda m: m.collapse(m.Extrapolating("affine")), "--fail-on", "collapsed_gate"
    )
    assert code == 4, out
    assert "per-row two-way mix" in out and "no gates" not in out.lower()


@pytest.mark.parametrize("form", ["highway", "gru", "gated_residual", "tanh_residual"])
def test_cli_check_passes_a_gate_less_highway(tmp_path: Path, form: str) -> None:
    code, out = _check(tmp_path, lambda m: m.LookAlike(form, saturated=True).eval(), "--fail-on", "critical")
    assert code == 0, out
    assert "collapsed_gate" not in out and "no gates" in out.lower()


# ------------------------------------------------------------------------------------- scalar heads
@pytest.mark.parametrize("form", SCALAR_FORMS)
def test_a_blend_of_two_scalar_heads_is_a_gate_and_its_collapse_is_found(form: str) -> None:
    """`(1 - w) * low(h) + w * high(h)` with `[B, 1]` heads: `w` and the experts have one shape, and the blend
    came out Shared-Bottom ("no gates", check passed) with click's weight pinned at 1."""
    result = inspect(collapse(ScalarHeads(form)))
    topo = result.topology
    assert topo.judgeable, [u.line() for u in topo.unresolved]
    assert {g.task for g in topo.gates} == {"click", "buy"}, topo.notes
    for g in topo.gates:
        assert g.two_way and g.experts == (f"lows.{g.task}", f"highs.{g.task}")
    assert {f.subject for f in result.findings if f.code == "collapsed_gate"} == {"click"}
    model = collapse(ScalarHeads(form))
    x = input_fn(frame(64))
    want = torch.sigmoid(model.weights["buy"](x))
    with GateRecorder(model, topo) as rec, torch.inference_mode():
        model(x)
        got = rec.take().gates["buy"]
    torch.testing.assert_close(got, torch.cat([1 - want, want], dim=1))  # the weight, not a head


@pytest.mark.parametrize("form", ["highway", "products"])
def test_a_gated_skip_or_a_product_of_scalar_heads_is_no_gate(form: str) -> None:
    topo = discover_topology(ScalarHeads(form).eval(), example())
    assert topo.gates == () and topo.unresolved == (), [u.line() for u in topo.unresolved]
    assert topo.architecture == "shared_bottom", topo.notes


def test_scalar_heads_with_separate_weights_cannot_be_judged() -> None:
    """`sigmoid(z) * low(h) + sigmoid(-z) * high(h)` on `[B, 1]` heads: the sigmoids are the weights (the heads
    are not squashed), but no tensor holds them as one gate; it came out Shared-Bottom, now unresolved."""
    topo = discover_topology(ScalarHeads("split").eval(), example())
    assert topo.gates == () and topo.architecture is None
    lines = [u.line() for u in topo.unresolved]
    assert len(lines) == 2 and all("each weighted by a weight of its own" in ln for ln in lines), lines


# ------------------------------------------------------------------------------ a task's prediction as w
@pytest.mark.parametrize("form", TOTAL_FORMS)
def test_a_blend_by_another_task_s_prediction_is_no_gate(form: str) -> None:
    """ESCM²/DCMT's `p_buy = p_click * a(h) + (1 - p_click) * b(h)`: `p_click` is the click task's output, so the
    blend is the law of total probability, not routing. It was read as buy's two-way gate ("moe", a critical
    collapsed_gate on buy and a dead expert, because clicks are rare); it is a Shared-Bottom, as before."""
    result = inspect(TotalProbability(form))
    topo = result.topology
    assert topo.gates == () and topo.unresolved == (), topo.notes
    assert topo.architecture == "shared_bottom", topo.notes
    assert not {"collapsed_gate", "dead_expert"} & {f.code for f in result.findings}, result.findings
    assert any("task 'click''s prediction" in n for n in topo.notes), topo.notes


# ------------------------------------------------------------------ a gate weight the forward also returns
class ReturnedWeight(torch.nn.Module):
    """Per task `w_t = sigmoid(g_t(x))` blends `left` and `right` ((1 - w) * left + w * right), click's gate
    collapsed on `right` (bias 8); the forward also returns the weights as `{task}_gate` (for logging): no
    label column holds them, so they are no predictions the blends could be a total-probability mix over."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.left = torch.nn.Sequential(torch.nn.Linear(N_FEATURES, 6), torch.nn.ReLU())
        self.right = torch.nn.Sequential(torch.nn.Linear(N_FEATURES, 6), torch.nn.ReLU())
        self.weights = torch.nn.ModuleDict({t: torch.nn.Linear(N_FEATURES, 1) for t in ("click", "buy")})
        self.heads = torch.nn.ModuleDict({t: torch.nn.Linear(6, 1) for t in ("click", "buy")})
        with torch.no_grad():
            self.weights["click"].bias.fill_(8.0)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        left, right = self.left(x), self.right(x)
        out = {}
        for t in ("click", "buy"):
            w = torch.sigmoid(self.weights[t](x))
            out[t] = torch.sigmoid(self.heads[t]((1 - w) * left + w * right)).squeeze(1)
            out[f"{t}_gate"] = w.squeeze(1)
        return out


def test_a_gate_weight_the_forward_also_returns_stays_a_gate() -> None:
    """Before, each blend's weight equalled a task output (`click_gate`), so both blends were read as ESCM²'s
    total-probability mix: no gates, "shared_bottom", click's collapse lost. No label column holds `click_gate`
    or `buy_gate`: they are no predictions, the blends are the tasks' gates."""
    result = inspect(ReturnedWeight().eval())
    topo = result.topology
    assert {g.task for g in topo.gates} == {"click", "buy"}, topo.notes
    assert topo.architecture != "shared_bottom"
    assert ("collapsed_gate", "click") in {(f.code, f.subject) for f in result.findings}, result.findings


def test_a_blend_by_a_task_output_with_no_labels_known_is_unresolved() -> None:
    """Discovery without data cannot tell ESCM²'s prediction from a returned gate weight: the blends are set
    aside with a note and, with no gate left, are unresolved items (exit 4), not a silent Shared-Bottom."""
    topo = discover_topology(ReturnedWeight().eval(), example())
    assert topo.gates == () and topo.architecture is None, topo.notes
    assert len(topo.unresolved) == 2 and all("no labels to tell" in u.line() for u in topo.unresolved)
    assert any("task 'click_gate''s prediction" in n for n in topo.notes), topo.notes
