"""Issue 16, the CLI's respect for the user's time: every stage shows its rate and ETA (a bar on a terminal,
one line per finished stage in a log), options that can be checked before the pass over the rows are
(a misspelt --segment-by fails before the recording pass), `--out` defaults to a folder named after
the checkpoint and a replaced report is announced; `save_checkpoint` with the wrong column names is a
one-line error naming the model's feature names."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmoe_inspect import FeatureSpec, save_checkpoint
from mmoe_inspect.cli.main import app
from mmoe_inspect.datasets import make_recsys
from mmoe_inspect.models import MMoE, OMoE

runner = CliRunner()
DENSE = tuple(f"d{j}" for j in range(8))


def invoke(*args: object, cwd: Path | None = None):
    import os

    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return runner.invoke(app, [str(a) for a in args])
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny untrained models (MMoE, OMoE) on 1500 labelled rows, saved with their rows, plus the data."""
    folder = tmp_path_factory.mktemp("tiny-cli")
    df = make_recsys(1500, seed=0)
    spec = FeatureSpec(dense=DENSE)
    for name, cls in (("mmoe", MMoE), ("omoe", OMoE)):
        model = cls(spec, ("click", "purchase"), n_experts=3, expert_hidden=(8,), tower_hidden=(4,))
        save_checkpoint(folder / f"{name}.pt", model, eval_frame=df)
    df.to_parquet(folder / "eval.parquet", index=False)
    return folder


def test_save_checkpoint_with_other_column_names_is_one_line(tmp_path: Path) -> None:
    df = make_recsys(200, seed=0)
    model = MMoE(8, ("click", "purchase"), n_experts=2, expert_hidden=(4,), tower_hidden=(2,))
    with pytest.raises(ValueError) as info:
        save_checkpoint(tmp_path / "m.pt", model, eval_frame=df)
    message = str(info.value)
    assert "\n" not in message and "x0" in message and "x0..x7" in message and "FeatureSpec" in message
    assert not (tmp_path / "m.pt").exists()
    renamed = df.rename(columns={f"d{j}": f"x{j}" for j in range(8)})
    assert save_checkpoint(tmp_path / "m.pt", model, eval_frame=renamed).exists()


def test_misspelt_segment_by_fails_before_the_recording_pass(tiny: Path) -> None:
    started = time.perf_counter()
    result = invoke(
        "report", tiny / "mmoe.pt", "--data", tiny / "eval.parquet", "--segment-by", "categroy", "--out",
        tiny / "never",
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    assert result.exit_code == 2, result.output
    assert "categroy" in result.output and "'category'" in result.output  # the close name
    assert "inspecting" not in result.output  # no pass over the rows ran (its stage line would say so)
    assert elapsed < 5.0 and not (tiny / "never").exists()


def test_missing_label_column_and_bad_baseline_fail_before_the_pass(tiny: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    for extra in (("--labels", "click=clicked"), ("--baseline", f"sb={bad}")):
        result = invoke(
            "report", tiny / "mmoe.pt", "--data", tiny / "eval.parquet", *extra, "--out", tmp_path / "r"
        )
        assert result.exit_code == 2, result.output
        assert "inspecting" not in result.output, result.output
    spec = tmp_path / "broken.toml"
    spec.write_text("[[gates]\nname = 'x'\n", encoding="utf-8")
    result = invoke("report", tiny / "mmoe.pt", "--spec", spec, "--out", tmp_path / "r")
    assert result.exit_code == 2 and "inspecting" not in result.output, result.output


def test_out_defaults_to_the_checkpoint_name_and_replacing_is_announced(tiny: Path, tmp_path: Path) -> None:
    """The tour's trap: `report mmoe.pt` then `report omoe.pt` no longer share `mmoe-report`; writing the same
    checkpoint's report again says which report it replaced; every stage printed its rate."""
    fast = ("--no-causal", "--no-attributions")
    first = invoke("report", tiny / "mmoe.pt", *fast, cwd=tmp_path)
    assert first.exit_code == 0, first.output
    second = invoke("report", tiny / "omoe.pt", *fast, cwd=tmp_path)
    assert second.exit_code == 0, second.output
    assert (tmp_path / "mmoe-report-mmoe" / "index.html").is_file()
    assert (tmp_path / "mmoe-report-omoe" / "index.html").is_file()
    assert "replaced" not in first.output + second.output
    again = invoke("report", tiny / "mmoe.pt", *fast, "--out", tmp_path / "mmoe-report-omoe", cwd=tmp_path)
    assert again.exit_code == 0, again.output
    assert "replaced the previous report" in again.output and "OMoE (omoe.pt)" in again.output
    for stage in ("inspecting mmoe.pt:", "figures, slide and tables:"):
        line = next(ln for ln in again.output.splitlines() if stage in ln)
        assert "/s)" in line and " s (" in line, line  # units, seconds, rate
    quiet = invoke("report", tiny / "mmoe.pt", *fast, "--quiet", cwd=tmp_path)
    assert quiet.exit_code == 0 and "replaced" not in quiet.output and "/s)" not in quiet.output


def test_attribution_and_causal_stages_report_their_progress(tiny: Path, tmp_path: Path) -> None:
    result = invoke(
        "report", tiny / "mmoe.pt", "--out", tmp_path / "r", "--bootstrap", 0, "--attribution-rows", 32,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for stage in ("attributions (gates, experts, tasks):", "causal analyses of mmoe.pt", "figures, slide"):
        assert any(stage in ln and "/s)" in ln for ln in lines), (stage, result.output)


def test_progress_bars_show_rate_and_eta_on_a_terminal() -> None:
    from rich.console import Console

    from mmoe_inspect.cli._progress import Passes

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=160, color_system=None)
    with Passes(False, console) as passes:
        tick = passes.bar("inspecting m.pt", 1000)
        for done in range(100, 600, 100):
            time.sleep(0.02)
            tick(done)
        passes.progress.refresh()
        live = buf.getvalue()
        for done in range(600, 1001, 100):
            tick(done)
        passes.finish("inspecting m.pt")
    assert "rows/s" in live and "eta" in live and "500/1000" in live
    assert "inspecting m.pt: 1,000 rows in" in buf.getvalue()
