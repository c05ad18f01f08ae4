"""Hostile inputs, round 3 (session 10's sweep): each broke a promise before its fix.

Nullable-float features with NA crashed; a parquet feature column stored as the pandas index was "missing";
`--segment-by` on a list column crashed after the whole pass; a bad CRC in a tensor member loaded altered
weights silently; a state_dict mismatch said only "Error(s) in loading state_dict"; rewriting a report in a
private (0700) folder made it 0755.
"""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_hostile_round2 import one_error_line, run  # the same CLI runner and one-line-error check
from test_hostile_round2b import rows, small_mmoe

from mmoe_inspect.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt3") / "mmoe.pt", small_mmoe(), eval_frame=rows())


def test_a_nullable_float_feature_with_na_is_one_line(checkpoint: Path, tmp_path: Path) -> None:
    frame = rows()
    frame["x0"] = frame["x0"].astype("Float64")
    frame.loc[3, "x0"] = pd.NA
    frame.to_parquet(tmp_path / "na.parquet", index=False)
    line = one_error_line(*run("summary", checkpoint, "--data", tmp_path / "na.parquet"))
    assert "feature column 'x0'" in line and "1 NaN/inf value" in line and "first at row 3" in line


def test_a_feature_stored_as_the_pandas_index_is_read_as_a_column(checkpoint: Path, tmp_path: Path) -> None:
    frame = rows()
    frame.set_index("x2").to_parquet(tmp_path / "indexed.parquet")  # x2 becomes the parquet's pandas index
    code, text = run("summary", checkpoint, "--data", tmp_path / "indexed.parquet", "-q")
    assert code == 0, text
    assert f"{len(frame):,} rows" in text


def test_segment_by_a_list_column_is_refused_before_the_pass(checkpoint: Path, tmp_path: Path) -> None:
    frame = rows()
    frame["segment"] = [[i % 3] for i in range(len(frame))]
    frame.to_parquet(tmp_path / "seg.parquet", index=False)
    out = tmp_path / "report"
    code, text = run(
        "report", checkpoint, "--data", tmp_path / "seg.parquet", "--segment-by", "segment", "--out", out
    )
    line = one_error_line(code, text)
    assert "segment column 'segment'" in line and "one id or label per row" in line
    assert not out.exists()


def test_a_damaged_tensor_member_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    """torch.load does not check a tensor member's CRC-32: a flipped byte loaded altered weights silently."""
    data = bytearray(checkpoint.read_bytes())
    with zipfile.ZipFile(checkpoint) as zf:
        info = next(i for i in zf.infolist() if "/data/" in i.filename and i.file_size >= 16)
    start = (
        info.header_offset
        + 30
        + len(info.filename.encode())
        + int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    )
    data[start + 8] ^= 0xFF
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(data))
    line = one_error_line(*run("summary", bad))
    assert "damaged" in line and "Bad CRC-32" in line


def test_a_state_dict_mismatch_names_the_key(tmp_path: Path) -> None:
    model = small_mmoe()
    path = save_checkpoint(tmp_path / "m.pt", model, eval_frame=rows())
    payload = torch.load(path, weights_only=True)
    key = next(k for k in payload["state_dict"] if k.endswith("weight"))
    payload["state_dict"][key] = payload["state_dict"][key][:-1]
    torch.save(payload, tmp_path / "shape.pt")
    line = one_error_line(*run("summary", tmp_path / "shape.pt"))
    assert f"size mismatch for {key}" in line and "save the model again" in line, line


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_private_report_folder_stays_private(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "private"
    out.mkdir(mode=0o700)
    os.chmod(out, 0o700)
    (out / "mine.txt").write_text("mine\n")
    for extra in (["--force"], []):  # first beside the user's file, then replacing its own report
        code, text = run("report", checkpoint, "--out", out, "--no-causal", "--no-attributions", "-q", *extra)
        assert code == 0, text
        assert stat.S_IMODE(out.stat().st_mode) == 0o700
        assert (out / "mine.txt").read_text() == "mine\n"


def test_a_csv_with_a_repeated_header_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    """pandas renamed the second `click` to `click.1`, so labels that contradict each other passed silently."""
    frame = rows()
    text = frame.to_csv(index=False).splitlines()
    header = text[0] + ",click"
    body = [f"{line},{1 - float(line.split(',')[3])}" for line in text[1:]]  # the opposite labels
    (tmp_path / "dup.csv").write_text("\n".join([header, *body]) + "\n")
    line = one_error_line(*run("summary", checkpoint, "--data", tmp_path / "dup.csv"))
    assert "duplicate column names ['click']" in line


def test_a_file_added_while_the_report_is_written_is_kept(tmp_path: Path) -> None:
    """The folder is scanned when writing starts; a file the user put there before the swap went with the old
    folder. Now it is moved into the new one (a name the report took gets `.kept`)."""
    from mmoe_inspect.reports import write_folder
    from mmoe_inspect.reports.write import write_marker

    out = tmp_path / "report"

    def build(late: dict[str, str], extra: tuple[str, ...] = ()):
        def run_build(folder: Path) -> None:
            write_marker(folder, "report")
            for name in ("index.html", *extra):
                (folder / name).write_text("<p>report</p>\n")
            for name, text in late.items():  # the user, meanwhile, in the folder being replaced
                (out / name).write_text(text)

        return run_build

    write_folder(out, build({}))
    write_folder(out, build({"notes.txt": "mine\n", "metrics.json": "my numbers\n"}, extra=("metrics.json",)))
    assert (out / "notes.txt").read_text() == "mine\n"
    assert (out / "metrics.json").read_text() == "<p>report</p>\n"  # the report's own file
    assert (out / "metrics.json.kept").read_text() == "my numbers\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temp or old folder beside it


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_written_spec_has_a_plain_files_mode(tmp_path: Path) -> None:
    """`Topology.save` writes a temp file and renames it: as a plain file would be (the umask), not mkstemp's
    0600; a spec it replaces keeps its own mode."""
    from mmoe_inspect.topology.spec import TaskSpec, Topology

    topo = Topology(tasks=(TaskSpec("click"),))
    old = os.umask(0o022)
    try:
        topo.save(tmp_path / "new.toml")
        assert stat.S_IMODE((tmp_path / "new.toml").stat().st_mode) == 0o644
        (tmp_path / "kept.toml").write_text("x")
        os.chmod(tmp_path / "kept.toml", 0o640)
        topo.save(tmp_path / "kept.toml")
        assert stat.S_IMODE((tmp_path / "kept.toml").stat().st_mode) == 0o640
        assert Topology.load(tmp_path / "kept.toml").tasks == topo.tasks
    finally:
        os.umask(old)


def test_a_semicolon_csv_is_told_its_separator(checkpoint: Path, tmp_path: Path) -> None:
    rows().to_csv(tmp_path / "semi.csv", sep=";", index=False)
    line = one_error_line(*run("summary", checkpoint, "--data", tmp_path / "semi.csv"))
    assert "separated by ';'" in line and "comma-separated" in line


def test_a_mount_point_out_is_refused_before_the_run(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mount point (a Docker volume) cannot be swapped for the new report: said before the run, not after."""
    out = tmp_path / "volume"
    out.mkdir()
    real = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == out or real(p))
    line = one_error_line(*run("report", checkpoint, "--out", out))
    assert "is a mount point" in line and f"--out {out / 'report'}" in line
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("device", "words"),
    [("meta", "holds no data"), ("cpu:9", "no index 9")],
)
def test_a_device_that_cannot_run_the_model_is_blamed_not_the_checkpoint(
    checkpoint: Path, device: str, words: str
) -> None:
    line = one_error_line(*run("summary", checkpoint, "--device", device))
    assert f"--device {device}" in line and words in line and "not an mmoe-inspect checkpoint" not in line


def test_cpu_0_is_the_cpu(checkpoint: Path) -> None:
    code, text = run("summary", checkpoint, "--device", "cpu:0", "-q")
    assert code == 0, text
