"""The CLI end to end through Typer's CliRunner: demo, report, topology, --help, --version, exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

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


def test_demo_comparison_has_paired_intervals_and_tests_the_seed_claims(demo_dir: Path) -> None:
    """Issue 16: the demo's table scores every model on the same test rows with paired intervals, and the
    sentence next to each seed claim gives the paired differences and their significance, equal to the
    project's DeLong paired interval on the checkpoints' own predictions (issue 19: analytic by default)."""
    import numpy as np
    import pandas as pd

    from mmoe_inspect.analysis.review import fmt_signed
    from mmoe_inspect.checkpoint import load_checkpoint
    from mmoe_inspect.functional.delong import delong_paired_interval
    from mmoe_inspect.train import predict, roc_auc

    table = pd.read_csv(demo_dir / "model_comparison.csv")
    models = ["shared_bottom", "omoe", "mmoe", "ple", "purchase_only"]
    assert list(dict.fromkeys(table["model"])) == models
    assert (table["auc_lo"] <= table["auc"]).all() or table["auc"].isna().any()
    eval_frame = pd.read_parquet(demo_dir / "eval.parquet")
    preds = {}
    for m in models:
        ckpt = load_checkpoint(demo_dir / "checkpoints" / f"{m}.pt")
        preds[m] = {t: v.numpy().astype(np.float64) for t, v in predict(ckpt.model, eval_frame).items()}
    for row in table.to_dict(orient="records"):
        if row["task"] in preds[row["model"]]:
            exact = roc_auc(preds[row["model"]][row["task"]], eval_frame[row["task"]].to_numpy())
            assert abs(row["auc"] - exact) < 1e-9
            assert row["auc_lo"] < row["auc"] < row["auc_hi"]
        else:
            assert np.isnan(row["auc"])
    output = (demo_dir / "demo-output.txt").read_text(encoding="utf-8")
    assert "95% paired intervals: DeLong for AUC, normal for log loss" in output
    claims = {ln.strip().split(":")[0]: ln for ln in output.splitlines() if ln.strip().startswith("MMoE ")}
    assert set(claims) == {"MMoE > OMoE > Shared-Bottom", "MMoE helps the sparse task (purchase)"}
    labels = eval_frame["purchase"].to_numpy()
    for better, worse, claim in (
        ("mmoe", "omoe", "MMoE > OMoE > Shared-Bottom"),
        ("mmoe", "purchase_only", "MMoE helps the sparse task (purchase)"),
    ):
        d, lo, hi = delong_paired_interval(preds[better]["purchase"], preds[worse]["purchase"], labels)
        significant = lo > 0 or hi < 0
        expected = f"purchase AUC {fmt_signed(d)} [{fmt_signed(lo)}, {fmt_signed(hi)}] (" + (
            "significant)" if significant else "not significant)"
        )
        assert expected in claims[claim], (expected, claims[claim])
        status = claims[claim].split(":", 1)[1].strip().split(".")[0]
        assert status in ("supported", "contradicted", "not shown")
        if not significant:
            assert status != "supported"


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
    """The MMoE with its purchase gate's weights copied from the click gate routes both tasks alike: a
    critical 'tasks route identically', so `--fail-on critical` exits 3. (A spec pointing both tasks at one
    gate module would say the same of any model: it is refused as a spec error.)"""
    import torch

    spec = tmp_path / "same.toml"
    result = invoke("topology", demo_dir / "checkpoints" / "mmoe.pt", "--write", spec)
    assert result.exit_code == 0, result.output
    spec.write_text(spec.read_text().replace('module = "gates.1"', 'module = "gates.0"'))
    result = invoke("report", demo_dir / "checkpoints" / "mmoe.pt", "--spec", spec, "--out", tmp_path / "s")
    assert result.exit_code == 2 and "read the same tensor" in result.output, result.output
    payload = torch.load(demo_dir / "checkpoints" / "mmoe.pt", weights_only=True)
    state = payload["state_dict"]
    for key in [k for k in state if k.startswith("gates.0.")]:
        state["gates.1." + key[len("gates.0.") :]] = state[key].clone()
    same = tmp_path / "same.pt"
    torch.save(payload, same)
    out = tmp_path / "r"
    result = invoke("report", same, "--out", out, "--fail-on", "critical")
    assert result.exit_code == 3, result.output
    assert "Tasks route identically" in result.clean
    result = invoke("report", same, "--out", out)
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
    forced = invoke("topology", demo_dir / "checkpoints" / "mmoe.pt", "--write", spec, "--force")
    assert forced.exit_code == 0 and Topology.load(spec).architecture == "mmoe"  # a spec: replaced
    assert not [p.name for p in spec.parent.iterdir() if p.name.endswith(".tmp")]


def test_topology_write_force_never_replaces_another_file(demo_dir: Path, tmp_path: Path) -> None:
    """`--force` replaces a spec this tool wrote, never the checkpoint, the data, a symlink's target or a folder."""
    import hashlib
    import shutil

    ckpt = tmp_path / "mmoe.pt"
    shutil.copy(demo_dir / "checkpoints" / "mmoe.pt", ckpt)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    link = tmp_path / "link.toml"
    link.symlink_to(notes)
    (tmp_path / "folder.toml").mkdir()
    before = {p: hashlib.sha1(p.read_bytes()).hexdigest() for p in (ckpt, notes)}
    for target, words in (
        (ckpt, "not a topology spec"),
        (notes, "not a topology spec"),
        (link, "symbolic link"),
        (tmp_path / "folder.toml", "not a regular file"),
    ):
        result = invoke("topology", ckpt, "--write", target, "--force")
        assert result.exit_code == 2, result.output
        assert words in result.clean and "Traceback" not in result.output, result.clean
    assert {p: hashlib.sha1(p.read_bytes()).hexdigest() for p in (ckpt, notes)} == before
    assert link.is_symlink() and (tmp_path / "folder.toml").is_dir()


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


def test_report_on_a_disk_too_small_for_the_auc_spill_fails_at_once_in_one_line(
    demo_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """The causal analyses spill their AUC scores to TMPDIR: a disk without room for them is one line, exit
    2, before the data pass, nothing written (neither the report nor a spill folder)."""
    import shutil as shutil_module
    from collections import namedtuple

    import mmoe_inspect.causal.streamed as streamed

    spill = tmp_path / "spill"
    spill.mkdir()
    monkeypatch.setenv("TMPDIR", str(spill))
    monkeypatch.setattr(streamed.tempfile, "tempdir", None)  # re-read TMPDIR
    usage = namedtuple("usage", "total used free")
    real = shutil_module.disk_usage
    monkeypatch.setattr(
        streamed.shutil,
        "disk_usage",
        lambda p: usage(10**6, 10**6 - 1000, 1000) if str(p) == str(spill) else real(p),
    )
    out = tmp_path / "report"
    result = invoke(
        "report", demo_dir / "checkpoints" / "mmoe.pt", "--data", demo_dir / "eval.parquet", "--out", out
    )
    assert result.exit_code == 2, result.output
    line = next(ln for ln in result.clean.splitlines() if "of AUC scores" in ln)
    assert "1000 B free" in line  # sizes a reader can compare (it said "0.00 GiB free")
    assert str(spill) in line and "TMPDIR" in line and "Traceback" not in result.output
    assert not out.exists() and not list(spill.iterdir())
