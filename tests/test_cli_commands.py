"""The commands end to end through CliRunner: check (exit codes on planted models), summary, diff, report
with causal options on planted and library (torch-rechub, DeepCTR-Torch) checkpoints, shared options,
help with examples, progress bars."""

from __future__ import annotations

import io
import json
import re
from html import unescape
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from typer.testing import CliRunner

import mmoe_inspect as mi
from mmoe_inspect.analysis.codes import REGISTRY
from mmoe_inspect.cli._common import LoadOptions, parse_fail_on
from mmoe_inspect.cli._progress import Passes
from mmoe_inspect.cli.main import app
from mmoe_inspect.testing.planted import PlantedMMoE

runner = CliRunner()
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
N_FEATURES = 8
FEATURES = ",".join(f"x{i}" for i in range(N_FEATURES))
COMMANDS = ("report", "check", "summary", "diff", "topology", "demo")
LOADING_COMMANDS = ("report", "check", "summary", "diff", "topology")
SECTIONS = ("summary", "routing", "causal", "attributions", "experts", "tasks", "topology", "how-to-read")
ATTRIBUTION_FIGURES = ("attribution_gates", "attribution_gate_vs_task", "attribution_experts")


def invoke(*args: object) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, ANSI.sub("", result.output)


# --------------------------------------------------------------------------- planted models
@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A collapsed-gate MMoE and a cleanly specialized one (cvr = ctr's mirror image), pickled whole,
    with labelled rows: ctr depends on x0 (so routing differs by label), cvr is sparse."""
    root = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, N_FEATURES)).astype("float32")
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(N_FEATURES)])
    frame["ctr"] = (x[:, 0] + 0.5 * rng.normal(size=len(frame)) > 0.8).astype("float64")
    frame["cvr"] = (rng.random(len(frame)) < 0.03).astype("float64")
    frame["device"] = rng.integers(0, 3, len(frame))
    frame.to_parquet(root / "rows.parquet", index=False)
    frame.drop(columns=["ctr", "cvr"]).to_parquet(root / "unlabelled.parquet", index=False)
    collapsed = PlantedMMoE(N_FEATURES, n_experts=4, gate_modes={"ctr": "collapsed", "cvr": "specialized"})
    clean = PlantedMMoE(N_FEATURES, n_experts=4, gate_modes={"ctr": "specialized", "cvr": "specialized"})
    with torch.no_grad():
        clean.gates["cvr"][0].weight.neg_()  # the mirror image: rows with x0 < 0 go to the first experts
    torch.save(collapsed.eval(), root / "collapsed.pt")
    torch.save(clean.eval(), root / "clean.pt")
    return {
        "root": root,
        "data": root / "rows.parquet",
        "unlabelled": root / "unlabelled.parquet",
        "collapsed": root / "collapsed.pt",
        "clean": root / "clean.pt",
    }


def loading(p: dict[str, Path], data: str = "data") -> list[object]:
    return ["--trust-checkpoint", "--data", p[data], "--features", FEATURES]


def test_check_exits_1_on_the_collapsed_gate(planted) -> None:
    code, text = invoke("check", planted["collapsed"], *loading(planted, "unlabelled"), "--quiet")
    assert code == 1, text
    assert "collapsed_gate" in text and "FAIL" in text and "critical" in text
    # the collapse, and the two tasks that cannot be judged on unlabelled rows
    # counted apart: a task that cannot be judged is not a model failure
    assert "check failed: 1 finding matches --fail-on warning or worse; ctr, cvr also not judged" in text


def test_check_exits_0_on_the_cleanly_specialized_model(planted) -> None:
    code, text = invoke("check", planted["clean"], *loading(planted, "unlabelled"), "--fail-on", "critical")
    assert code == 0, text  # routing only: the unjudged tasks are warnings
    assert "check passed" in text
    assert "Yes: the tasks route rows to clearly different experts" in text
    # said first, and by default (warnings fail) a check on unlabelled rows does not pass; but nothing is
    # wrong with the model either: exit 4, "cannot judge" (as for unresolved gates), not 1
    assert text.index("CANNOT JUDGE TASK(S): ctr, cvr") < text.index("Findings for")
    code, text = invoke("check", planted["clean"], *loading(planted, "unlabelled"))
    assert code == 4 and "task_unlabelled" in text, text
    assert "check cannot judge: task(s) ctr, cvr" in text and "not a model failure" in text
    assert "check passed" not in text and "check failed" not in text


def test_check_on_too_few_labelled_rows_exits_4_not_1(planted, tmp_path: Path) -> None:
    """50 labelled rows (tiny_onepos): too few to tell whether a task ranks (too_few_labels, a warning) and
    nothing else wrong: the default --fail-on warning cannot pass, and must not call it a model failure.
    The labels are drawn at the model's own (nearly constant: 0.46, 0.61) rates, so it is calibrated."""
    rng = np.random.default_rng(0)
    rows = pd.read_parquet(planted["unlabelled"]).iloc[:50].copy()
    rows["ctr"] = (rng.random(50) < 0.46).astype("float64")
    rows["cvr"] = (rng.random(50) < 0.61).astype("float64")
    rows.to_parquet(tmp_path / "tiny.parquet", index=False)
    code, text = invoke(
        "check",
        planted["clean"],
        "--trust-checkpoint",
        "--data",
        tmp_path / "tiny.parquet",
        "--features",
        FEATURES,
    )
    assert "too_few_labels" in text, text
    assert code == 4 and "check cannot judge" in text, text


@pytest.mark.parametrize(
    ("fail_on", "expected"),
    [
        pytest.param("dead-expert,uniform_gate", 0, id="other-codes"),
        pytest.param("collapsed", 1, id="unique-prefix"),
        pytest.param("critical", 1, id="severity"),
        pytest.param("never", 0, id="never"),
    ],
)
def test_check_fail_on_codes_and_severities(planted, fail_on: str, expected: int) -> None:
    code, text = invoke("check", planted["collapsed"], *loading(planted), "--fail-on", fail_on, "-q")
    assert code == expected, text


def test_fail_on_parsing() -> None:
    assert parse_fail_on("warning").failing([]) == []
    rule = parse_fail_on("Dead-Expert, critical")
    assert rule.severity == "critical" and rule.codes == {"dead_expert"}
    assert parse_fail_on("never").describe() == "never"
    assert parse_fail_on("task-at").codes == {"task_at_chance"}  # task-quality codes fail a run too


def test_finding_codes_match_the_readme() -> None:
    """The registry (which --fail-on reads) is the README's table of findings: code, severity and meaning,
    in the same order."""
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Findings", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \| (.*) \|$", table, flags=re.M)
    assert rows == [(c.code, c.severity, c.meaning) for c in REGISTRY.values()]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        pytest.param(
            ["--fail-on", "colapsed"], ("--fail-on", "did you mean 'collapsed_gate'"), id="fail-on-typo"
        ),
        pytest.param(["--fail-on", "routing"], ("is not a finding code",), id="fail-on-unknown"),
        pytest.param(["--features", "x0,x1,x99"], ("x99",), id="missing-column"),
    ],
)
def test_check_bad_input_is_one_line_exit_2(planted, args: list[str], words: tuple[str, ...]) -> None:
    base = ["--trust-checkpoint", "--data", planted["data"]]
    if "--features" not in args:
        base += ["--features", FEATURES]
    code, text = invoke("check", planted["collapsed"], *base, *args)
    assert code == 2, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    for w in words:
        assert w in lines[0]


def test_debug_shows_the_traceback(planted) -> None:
    result = runner.invoke(
        app,
        ["check", str(planted["collapsed"]), "--trust-checkpoint", "--data", str(planted["data"]), "--debug"],
    )
    assert result.exception is not None and not isinstance(result.exception, SystemExit)


def test_summary_prints_the_headline_table(planted) -> None:
    code, text = invoke("summary", planted["clean"], *loading(planted), "-q")
    assert code == 0, text
    for words in ("Headline", "fewest effective experts", "Gates", "Tasks", "3,000 rows", "2 gates"):
        assert words in text, words
    assert "Yes: the tasks route rows" in text


def test_diff_shows_what_changed_and_writes_a_folder(planted, tmp_path: Path) -> None:
    out = tmp_path / "diff"
    code, text = invoke("diff", planted["collapsed"], planted["clean"], *loading(planted), "--out", out, "-q")
    assert code == 0, text
    assert "Findings went away (1)" in text and "collapsed_gate" in text
    assert "Findings appeared in B (0): none" in text
    assert "Headline numbers" in text and "critical findings" in text
    d = json.loads((out / "diff.json").read_text(encoding="utf-8"))
    assert [f["code"] for f in d["findings_gone"]] == ["collapsed_gate"]
    assert d["a"]["n_rows"] == d["b"]["n_rows"] == 3000
    html = (out / "index.html").read_text(encoding="utf-8")
    assert 'src="figures/routing.png"' in html and 'src="figures/effective.png"' in html
    assert 'href="diff.json"' in html and "Went away (1)" in html
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["effective.png", "routing.png"]
    again_code, _ = invoke("diff", planted["clean"], planted["clean"], *loading(planted), "--out", out, "-q")
    assert again_code == 0  # a previous diff folder is replaced


def test_report_runs_causal_with_baseline_segments_and_fail_on(planted, tmp_path: Path) -> None:
    out = tmp_path / "report"
    code, text = invoke(
        "report",
        planted["collapsed"],
        *loading(planted),
        "--out",
        out,
        "--baseline",
        f"clean={planted['clean']}",
        "--segment-by",
        "device",
        "--intervals",
        "bootstrap",
        "--bootstrap",
        "40",
        "--fail-on",
        "collapsed_gate",
        "--seed",
        "3",
        "--sample",
        "0.8",
        "--no-attributions",
    )
    assert code == 3, text
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    causal = metrics["causal"]
    assert causal["meta"]["n_boot"] == 40 and causal["meta"]["seed"] == 3
    assert causal["meta"]["intervals"] == "bootstrap"
    assert 2200 < metrics["n_rows"] < 2600
    assert causal["n_rows"] == metrics["n_rows"]  # --sample: the causal analyses see the same rows
    assert {r["baseline"] for r in causal["tables"]["baseline_gains"]} == {"clean"}
    assert {r["segment"] for r in causal["tables"]["segments"]} == {"0", "1", "2"}
    assert metrics["meta"]["features"] == FEATURES.split(",") and metrics["meta"]["seed"] == 3
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "paired bootstrap of the rows, 40 resamples" in html
    for anchor in SECTIONS:
        assert f'id="{anchor}"' in html, anchor
    for fig in ("causal_importance", "causal_counterfactuals", "causal_segments"):
        assert f'src="figures/{fig}.png"' in html, fig
    assert 'href="overview.png"' in html and (out / "overview.png").is_file()
    assert (out / "tables" / "causal_baseline_gains.csv").is_file()


def test_report_says_why_sections_are_absent(planted, tmp_path: Path) -> None:
    code, text = invoke(
        "report",
        planted["clean"],
        *loading(planted, "unlabelled"),
        "--no-attributions",
        "--out",
        tmp_path / "a",
        "-q",
    )
    assert code == 0, text
    html = (tmp_path / "a" / "index.html").read_text(encoding="utf-8")
    assert "No causal analyses: the data has no label column for any task" in html
    assert "Attributions were not computed: they were not requested" in html
    assert "No label-conditioned routing" in html
    code, text = invoke(
        "report",
        planted["clean"],
        *loading(planted),
        "--no-causal",
        "--no-attributions",
        "--out",
        tmp_path / "b",
        "-q",
    )
    assert code == 0, text
    html = (tmp_path / "b" / "index.html").read_text(encoding="utf-8")
    assert "No causal analyses: they were not requested" in html
    code, text = invoke(
        "report", planted["clean"], *loading(planted), "--no-causal", "--segment-by", "device"
    )
    assert code == 2 and "drop --no-causal" in text


def test_report_attributions_on_by_default_with_budget_and_rows(planted, tmp_path: Path) -> None:
    out = tmp_path / "on"
    code, text = invoke(
        "report",
        planted["clean"],
        *loading(planted),
        "--no-causal",
        "--attribution-rows",
        "48",
        "--attribution-budget",
        "20",
        "--out",
        out,
        "-q",
    )
    assert code == 0, text
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    attribution = metrics["attribution"]
    assert attribution["n_rows"] == 48 and attribution["meta"]["budget_seconds"] == 20
    assert attribution["features"] == FEATURES.split(",") and attribution["skipped"] == []
    html = (out / "index.html").read_text(encoding="utf-8")
    assert 'id="attributions"' in html and 'href="#attributions"' in html
    for fig in ATTRIBUTION_FIGURES:
        assert f'src="figures/{fig}.png"' in html and (out / "figures" / f"{fig}.png").is_file(), fig
    assert 'id="table-attribution_convergence"' in html and "of a 20 s budget" in html
    assert (out / "tables" / "attribution_gate_features.csv").is_file()

    code, text = invoke(
        "report",
        planted["clean"],
        *loading(planted),
        "--no-causal",
        "--no-attributions",
        "--out",
        tmp_path / "off",
        "-q",
    )
    assert code == 0, text
    html = (tmp_path / "off" / "index.html").read_text(encoding="utf-8")
    assert 'id="attributions"' in html
    assert "Attributions were not computed: they were not requested" in html
    assert not list((tmp_path / "off" / "figures").glob("attribution_*"))
    assert json.loads((tmp_path / "off" / "metrics.json").read_text(encoding="utf-8"))["attribution"] is None


def test_report_keeps_the_inspection_when_inputs_cannot_be_attributed(
    planted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mmoe_inspect.attribution as attribution

    def fail(*args: object, **kwargs: object) -> None:
        raise attribution.AttributionError("the model input has no features to attribute")

    monkeypatch.setattr(attribution, "run_attribution", fail)
    out = tmp_path / "r"
    code, text = invoke("report", planted["clean"], *loading(planted), "--no-causal", "--out", out)
    assert code == 0, text
    assert (
        "note: no attributions: the model's inputs could not be attributed (the model input has no features to attribute)"
        in text
    )
    html = unescape((out / "index.html").read_text(encoding="utf-8"))
    assert (
        "Attributions were not computed: the model's inputs could not be attributed (the model input has no "
        "features to attribute)." in html
    )
    assert 'src="figures/task_expert_heatmap.png"' in html  # the rest of the report is there


def test_report_without_a_baseline_or_segments_says_so(planted, tmp_path: Path) -> None:
    code, text = invoke(
        "report",
        planted["clean"],
        *loading(planted),
        "--bootstrap",
        "20",
        "--no-attributions",  # attributions: test_report_attributions_on_by_default_with_budget_and_rows
        "--out",
        tmp_path / "r",
    )
    assert code == 0, text
    html = (tmp_path / "r" / "index.html").read_text(encoding="utf-8")
    assert "No baseline model was given" in html and "--baseline NAME=PATH" in html
    # issue 19: analytic intervals by default (--bootstrap is not used then), and the page says so
    causal = json.loads((tmp_path / "r" / "metrics.json").read_text(encoding="utf-8"))["causal"]
    assert causal["meta"]["intervals"] == "analytic" and causal["meta"]["n_boot"] is None
    assert "DeLong for AUC, normal (CLT) for log loss, MSE and MAE" in html
    metrics_rows = causal["tables"]["task_metrics"]
    assert metrics_rows and all(r["lo"] < r["value"] < r["hi"] for r in metrics_rows)
    assert "No segment routing: no segment column was given" in html
    assert 'id="table-causal_sparse_gains"' in html  # cvr is sparse: its gains are shown


@pytest.mark.parametrize(
    ("value", "words"),
    [
        pytest.param("noequals", ("NAME=PATH",), id="malformed"),
        pytest.param("sb=/nowhere/sb.pt", ("does not exist",), id="missing"),
        pytest.param("model=x.pt", ("reserved",), id="reserved"),
    ],
)
def test_bad_baseline_is_one_line_exit_2(planted, tmp_path: Path, value: str, words: tuple[str, ...]) -> None:
    out = tmp_path / "never"
    code, text = invoke("report", planted["clean"], *loading(planted), "--baseline", value, "--out", out)
    assert code == 2, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and all(w in lines[0] for w in words), text
    assert not out.exists()


def test_baseline_predicting_none_of_the_tasks_is_bad_input(planted, tmp_path: Path) -> None:
    other = tmp_path / "other.pt"
    torch.save(PlantedMMoE(N_FEATURES, n_experts=2, tasks=("likes", "shares")).eval(), other)
    code, text = invoke(
        "report", planted["clean"], *loading(planted), "--baseline", f"o={other}", "--out", tmp_path / "r"
    )
    assert code == 2, text
    assert "error: baseline o predicts ['likes', 'shares'], none of the model's tasks ['ctr', 'cvr']" in text


def test_seed_picks_the_sampled_rows(planted) -> None:
    def sampled(seed: int) -> str:
        code, text = invoke(
            "summary", planted["clean"], *loading(planted), "--sample", "0.5", "--seed", seed, "-q"
        )
        assert code == 0, text
        return text

    assert sampled(1) == sampled(1)
    assert sampled(1) != sampled(2)


# --------------------------------------------------------------------------- shared options, help, progress
@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help_with_an_example(cmd: str) -> None:
    code, text = invoke(cmd, "--help")
    assert code == 0, text
    assert "Examples" in text and f"mmoe-inspect {cmd}" in text
    for flag in ("--quiet", "--seed", "--debug"):
        assert flag in text, (cmd, flag)


@pytest.mark.parametrize("cmd", LOADING_COMMANDS)
def test_loading_options_are_spelled_the_same_everywhere(cmd: str) -> None:
    _, text = invoke(cmd, "--help")
    flags = [
        "--trust-checkpoint",
        "--builder",
        "--import",
        "--model-code",
        "--device",
        "--data",
        "--tasks",
        "--labels",
        "--input",
        "--features",
        "--collate",
        "--limit",
        "--sample",
        "--batch-size",
    ]
    assert len(flags) == len([f for f in LoadOptions.__dataclass_fields__])
    for flag in flags:
        assert flag in text, (cmd, flag)


@pytest.mark.parametrize("cmd", LOADING_COMMANDS)
def test_no_arguments_shows_help(cmd: str) -> None:
    code, text = invoke(cmd)
    assert code == 2 and f"Usage: mmoe-inspect {cmd} [OPTIONS]" in text
    assert ("{A} {B}" if cmd == "diff" else "{CHECKPOINT}") in text


def test_inspect_reports_progress_once_per_batch(planted) -> None:
    frame = pd.read_parquet(planted["data"])
    model = PlantedMMoE(N_FEATURES, n_experts=4, gate_modes={"ctr": "specialized"})
    calls: list[int] = []
    mi.inspect(
        model,
        frame,
        features=mi.FeatureSpec.dense_only(N_FEATURES),
        config=mi.InspectConfig(batch_size=700),
        progress=calls.append,
    )
    assert calls == [700, 1400, 2100, 2800, 3000]


def test_progress_bars_draw_on_a_terminal_and_not_when_quiet() -> None:
    for quiet in (False, True):
        buf = io.StringIO()
        console = Console(file=buf, force_terminal=True, width=100)
        with Passes(quiet, console) as passes:
            tick = passes.bar("inspecting demo.pt", 3000)
            tick(1500)
            passes.progress.refresh()
            assert ("1500/3000" in buf.getvalue()) == (not quiet)
            tick(2900)
            passes.finish("inspecting demo.pt")  # a sampled pass ends below its estimate: the bar completes
            assert passes.progress.tasks[0].finished
        assert ("inspecting demo.pt" in buf.getvalue()) == (not quiet)


# --------------------------------------------------------------------------- library checkpoints
def _library_models() -> dict[str, torch.nn.Module]:
    from deepctr_torch.inputs import DenseFeat, SparseFeat
    from deepctr_torch.models import multitask as deepctr
    from torch_rechub.basic.features import DenseFeature, SparseFeature
    from torch_rechub.models import multi_task as rechub

    rechub_features = [
        SparseFeature("city", 12, embed_dim=4),
        SparseFeature("item", 9, embed_dim=4),
        DenseFeature("age"),
    ]
    deepctr_features = [
        SparseFeat("city", 12, embedding_dim=4),
        SparseFeat("item", 9, embedding_dim=4),
        DenseFeat("age", 1),
    ]
    torch.manual_seed(0)
    return {
        "rechub_mmoe": rechub.MMOE(
            rechub_features, ["classification"] * 2, 3, {"dims": [8]}, [{"dims": [4]}] * 2
        ),
        "rechub_sb": rechub.SharedBottom(
            rechub_features, ["classification"] * 2, {"dims": [8]}, [{"dims": [4]}] * 2
        ),
        "deepctr_mmoe": deepctr.MMOE(
            deepctr_features,
            num_experts=3,
            expert_dnn_hidden_units=(8,),
            gate_dnn_hidden_units=(6,),
            tower_dnn_hidden_units=(4,),
            task_names=("click", "buy"),
        ),
    }


def _train(name: str, model: torch.nn.Module, frame: pd.DataFrame) -> None:
    if name.startswith("rechub"):
        x = {
            c: torch.tensor(frame[c].to_numpy(), dtype=torch.int64 if c != "age" else torch.float32)
            for c in ("city", "item", "age")
        }
    else:
        x = torch.from_numpy(np.stack([frame[n].to_numpy(np.float32) for n in model.feature_index], axis=1))
    y = torch.tensor(frame[["click", "buy"]].to_numpy(), dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(10):
        opt.zero_grad()
        F.binary_cross_entropy(model(x)[:, :2].clamp(1e-6, 1 - 1e-6), y).backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """torch-rechub and DeepCTR-Torch models trained a few steps and saved whole, with their rows."""
    root = tmp_path_factory.mktemp("libraries")
    rng = np.random.default_rng(0)
    n = 800
    city, item = rng.integers(0, 12, n), rng.integers(0, 9, n)
    age = rng.normal(size=n).astype("float32")
    click = (age + 0.4 * (city % 3) + rng.normal(scale=0.5, size=n) > 0.5).astype("int64")
    buy = (click * (item < 3)).astype("int64")
    frame = pd.DataFrame({"city": city, "item": item, "age": age, "click": click, "buy": buy})
    frame.to_parquet(root / "rows.parquet", index=False)
    paths = {"data": root / "rows.parquet"}
    for name, model in _library_models().items():
        _train(name, model, frame)
        torch.save(model, root / f"{name}.pt")
        paths[name] = root / f"{name}.pt"
    return paths


@pytest.mark.slow
@pytest.mark.parametrize("lib", ["rechub", "deepctr"])
def test_report_on_library_mmoe_has_every_section_and_the_data_names(
    library, lib: str, tmp_path: Path
) -> None:
    out = tmp_path / lib
    args: list[object] = [
        "report",
        library[f"{lib}_mmoe"],
        "--trust-checkpoint",
        "--data",
        library["data"],
        "--out",
        out,
        "--segment-by",
        "city",
        "--bootstrap",
        "30",
        "-q",
    ]
    if lib == "rechub":  # rechub models do not name their outputs; the baseline loads with the same options
        args += ["--tasks", "click,buy", "--baseline", f"shared_bottom={library['rechub_sb']}"]
    code, text = invoke(*args)
    assert code == 0, text
    html = (out / "index.html").read_text(encoding="utf-8")
    for anchor in SECTIONS:
        assert f'id="{anchor}"' in html, anchor
    for fig in (
        "task_expert_heatmap",
        "expert_utilization",
        "causal_importance",
        "causal_counterfactuals",
        "causal_segments",
        "task_outputs",
    ):
        assert f'src="figures/{fig}.png"' in html, fig
    assert "city, item, age" in html  # the dataset's feature names
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert [t["name"] for t in metrics["topology"]["tasks"]] == ["click", "buy"]
    assert metrics["meta"]["features"] == ["city", "item", "age"]
    assert metrics["attribution"]["features"] == ["city", "item", "age"]  # attributions use the data's names
    assert {r["feature"] for r in metrics["attribution"]["tables"]["gate_features"]} == {
        "city",
        "item",
        "age",
    }
    for fig in ATTRIBUTION_FIGURES:
        assert f'src="figures/{fig}.png"' in html, fig
    assert {r["task"] for r in metrics["causal"]["tables"]["task_metrics"]} == {"click", "buy"}
    assert len(metrics["topology"]["gates"]) == 2
    if lib == "rechub":
        assert {r["baseline"] for r in metrics["causal"]["tables"]["baseline_gains"]} == {"shared_bottom"}
