"""The CLI end to end through Typer's CliRunner: demo, report, topology, --help, --version, exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmoe_inspect import __version__
from mmoe_inspect.cli.main import app
from mmoe_inspect.topology.spec import Topology

runner = CliRunner()
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    result.clean = ANSI.sub("", result.output)  # type: ignore[attr-defined]
    return result


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """One small demo run shared by the tests below (4 architectures trained on 5k rows)."""
    out = tmp_path_factory.mktemp("demo")
    result = invoke("demo", "--out", out, "--rows", 5000)
    assert result.exit_code == 0, result.output
    assert result.exception is None
    return out


def test_help_lists_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for cmd in ("demo", "report", "topology"):
        assert cmd in result.clean


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert f"mmoe-inspect {__version__}" in result.clean


def test_demo_writes_checkpoints_data_and_report(demo_dir: Path) -> None:
    for arch in ("shared_bottom", "omoe", "mmoe", "ple"):
        assert (demo_dir / "checkpoints" / f"{arch}.pt").stat().st_size > 1000
    assert (demo_dir / "eval.parquet").exists()
    html = (demo_dir / "report" / "index.html").read_text()
    assert 'id="summary"' in html and 'id="routing"' in html
    metrics = json.loads((demo_dir / "report" / "metrics.json").read_text())
    assert metrics["topology"]["architecture"] == "mmoe"
    assert {t["name"] for t in metrics["topology"]["tasks"]} == {"click", "purchase"}
    pngs = list((demo_dir / "report" / "figures").glob("*.png"))
    assert len(pngs) >= 5
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_report_uses_stored_eval_rows(demo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "omoe-report"
    result = invoke("report", demo_dir / "checkpoints" / "omoe.pt", "--out", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["topology"]["architecture"] == "omoe"
    assert len(metrics["topology"]["gates"]) == 1
    assert metrics["n_rows"] == 1000  # the whole 20% eval split of the 5000 demo rows
    assert str(out / "index.html") in result.clean


def test_report_with_data_file_and_shared_bottom(demo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sb"
    result = invoke(
        "report",
        demo_dir / "checkpoints" / "shared_bottom.pt",
        "--data",
        demo_dir / "eval.parquet",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    assert "No gates found" in result.clean
    assert "no gates" in (out / "index.html").read_text().lower()


def test_fail_on_critical_exit_code(demo_dir: Path, tmp_path: Path) -> None:
    """A spec that declares both MMoE tasks on the same gate module plants 'tasks route identically'."""
    spec = tmp_path / "same.toml"
    result = invoke("topology", demo_dir / "checkpoints" / "mmoe.pt", "--write", spec)
    assert result.exit_code == 0, result.output
    text = spec.read_text().replace('module = "gates.1"', 'module = "gates.0"')
    spec.write_text(text)
    out = tmp_path / "r"
    result = invoke(
        "report", demo_dir / "checkpoints" / "mmoe.pt", "--spec", spec, "--out", out, "--fail-on", "critical"
    )
    assert result.exit_code == 3, result.output
    assert "Tasks route identically" in result.clean
    result = invoke("report", demo_dir / "checkpoints" / "mmoe.pt", "--spec", spec, "--out", out)
    assert result.exit_code == 0


def test_topology_prints_and_writes_an_editable_spec(demo_dir: Path, tmp_path: Path) -> None:
    spec = tmp_path / "ple.toml"
    result = invoke("topology", demo_dir / "checkpoints" / "ple.pt", "--write", spec)
    assert result.exit_code == 0, result.output
    assert "levels.0.gates.0" in result.clean and "source: declared" in result.clean
    topo = Topology.load(spec)
    assert topo.architecture == "ple"
    assert {g.level for g in topo.gates} == {0, 1}
    again = invoke("topology", demo_dir / "checkpoints" / "ple.pt", "--write", spec)
    assert again.exit_code == 2 and "exists" in again.clean


def test_topology_discover_agrees_with_declaration(demo_dir: Path) -> None:
    result = invoke("topology", demo_dir / "checkpoints" / "mmoe.pt", "--discover")
    assert result.exit_code == 0, result.output
    assert "source: discovered" in result.clean
    assert "gate click: module gates.0" in result.clean
    assert "gate purchase: module gates.1" in result.clean


def test_bad_checkpoint_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"definitely not a checkpoint")
    out = tmp_path / "never"
    result = invoke("report", bad, "--out", out)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "error:" in result.clean
    assert not out.exists()
