"""Hostile inputs, round 6 (session 13's sweep, /tmp/s13/hostile/): each broke a promise before its fix.

A `--spec` that is a FIFO or a device (`/dev/zero`) hung the command or read without end. Code the user
trusted (`--model-code`, a `--builder`, a `--trust-checkpoint` pickle) that called `sys.exit(0)` ended
`check` with exit 0 and no output: a CI gate that passed without judging anything. A data folder's
`*.parquet` entry that is a broken link, a FIFO or a device was skipped without a word (part of the data
judged as all of it). `demo --out` on a file was exit 1 (internal error), and `demo` wrote over the user's
`eval.parquet`, `train.parquet`, checkpoints and `model_comparison.csv` in its folder and deleted their
`run_log.jsonl`, with or without `--force`. A model left on the meta device failed in the Python API with
torch's "aten::bincount ... no fake impl or Meta kernel registered" mid-pass. A DataFrame with a column
named twice crashed with AttributeError: 'DataFrame' object has no attribute 'dtype'. A checkpoint or data
file that is a FIFO or a device (/dev/urandom) was called "empty (0 bytes)". `MMOE_INSPECT_MAX_TENSOR_GB=inf`
was exit 1 (OverflowError), and `abc`, `0`, `-1` or `nan` silently kept the default the user meant to change.
An ASCII terminal (`PYTHONIOENCODING=ascii`) ended `summary` with a UnicodeEncodeError traceback, exit 1, and
stdout on a full disk (`> /dev/full`) with an OSError traceback, exit 1. A checkpoint zip with a member outside
its folder was refused as "(torch.load ... refused it: [enforce fail at inline_container.cc:340] )": the
reason was cut away.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_hostile_round2 import one_error_line, run  # the same CLI runner and one-line-error check
from test_hostile_round2b import rows, small_mmoe

from mmoe_inspect.checkpoint import save_checkpoint
from mmoe_inspect.data.sources import DataFileError, TableSource
from mmoe_inspect.topology.spec import Topology, TopologyError


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt6") / "mmoe.pt", small_mmoe(), eval_frame=rows())


class _Alarm:
    """Fail (instead of hanging the suite) when the body blocks longer than `seconds`."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds

    def __enter__(self) -> None:
        assert threading.current_thread() is threading.main_thread()

        def _timeout(_signum: int, _frame: object) -> None:
            raise TimeoutError(f"blocked for {self.seconds} s")

        self.old = signal.signal(signal.SIGALRM, _timeout)
        signal.alarm(self.seconds)

    def __exit__(self, *exc: object) -> None:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.old)


# ================================================================== a spec that is not a regular file
@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_spec_that_is_a_fifo_or_device_is_one_line_not_a_hang(
    tmp_path: Path, checkpoint: Path, kind: str
) -> None:
    """`--spec` on a FIFO blocked forever in read_text; on /dev/zero it read without end."""
    spec = tmp_path / "spec.toml"
    if kind == "fifo":
        os.mkfifo(spec)
    else:
        spec.symlink_to("/dev/zero")
    with _Alarm(20):
        line = one_error_line(*run("summary", checkpoint, "--spec", spec))
        with pytest.raises(TopologyError, match="not a regular file"):
            Topology.load(spec)
    assert "not a regular file" in line and "spec.toml" in line


def test_a_spec_larger_than_a_spec_is_refused_before_reading(tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    with spec.open("wb") as fh:  # sparse: 2 GiB on paper, nothing on disk
        fh.truncate(2 * 2**30)
    with _Alarm(20), pytest.raises(TopologyError, match="more than a spec's 16 MiB"):
        Topology.load(spec)


# ================================================================== trusted code that calls sys.exit(0)
def _state_dict(tmp_path: Path) -> Path:
    torch.save(small_mmoe().state_dict(), tmp_path / "sd.pt")
    return tmp_path / "sd.pt"


class _Exits:
    def __reduce__(self):
        return (sys.exit, (0,))


@pytest.mark.parametrize("where", ["model-code-on-import", "builder", "trusted-pickle"])
def test_trusted_code_that_calls_sys_exit_never_passes_check(tmp_path: Path, where: str) -> None:
    """sys.exit(0) in the user's code made `check` exit 0 with no output (a CI gate passed unjudged)."""
    data = tmp_path / "eval.parquet"
    rows().to_parquet(data)
    code = tmp_path / "user_model.py"
    if where == "model-code-on-import":
        code.write_text("import sys\nsys.exit(0)\n")
        args = [_state_dict(tmp_path), "--builder", "user_model:build", "--model-code", code]
    elif where == "builder":
        code.write_text("import sys\ndef build():\n    sys.exit(0)\n")
        args = [_state_dict(tmp_path), "--builder", "user_model:build", "--model-code", code]
    else:
        torch.save({"model": _Exits()}, tmp_path / "model.pt")
        args = [tmp_path / "model.pt", "--trust-checkpoint"]
    line = one_error_line(*run("check", *args, "--data", data))
    assert "sys.exit(0)" in line


# ================================================================== a data folder entry that cannot be read
@pytest.mark.parametrize("kind", ["dangling-link", "link-loop", "fifo", "dev-zero"])
def test_a_data_folder_entry_that_is_no_file_is_refused_not_skipped(
    tmp_path: Path, checkpoint: Path, kind: str
) -> None:
    """b.parquet as a broken link (a sync that did not finish), a loop, a FIFO or /dev/zero was skipped:
    the report judged a.parquet's rows as the whole folder's."""
    folder = tmp_path / "data"
    folder.mkdir()
    rows().to_parquet(folder / "a.parquet")
    entry = folder / "b.parquet"
    if kind == "dangling-link":
        entry.symlink_to(tmp_path / "gone.parquet")
    elif kind == "link-loop":
        entry.symlink_to(entry)
    elif kind == "fifo":
        os.mkfifo(entry)
    else:
        entry.symlink_to("/dev/zero")
    with _Alarm(20):
        with pytest.raises(DataFileError, match=r"holds b\.parquet, which is not a readable file"):
            TableSource.of(folder)
        line = one_error_line(*run("summary", checkpoint, "--data", folder))
    assert "b.parquet" in line


def test_hidden_entries_and_subfolders_of_a_data_folder_are_still_skipped_or_read(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    (folder / "part=1.parquet").mkdir(parents=True)  # a nested dataset folder is read
    rows().to_parquet(folder / "part=1.parquet" / "a.parquet")
    (folder / ".b.parquet").symlink_to(tmp_path / "gone.parquet")  # hidden: skipped as before
    (folder / "_tmp.parquet").symlink_to(tmp_path / "gone.parquet")
    assert [p.name for p in TableSource.of(folder)._files()] == ["a.parquet"]


# ================================================================== demo never replaces the user's files
def test_demo_out_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    """It was exit 1: internal error: NotADirectoryError."""
    (tmp_path / "dm").write_text("mine")
    line = one_error_line(*run("demo", "--rows", "2000", "--out", tmp_path / "dm"))
    assert "is not a folder" in line and (tmp_path / "dm").read_text() == "mine"


@pytest.mark.parametrize(
    "name", ["eval.parquet", "run_log.jsonl", "checkpoints/mmoe.pt", "model_comparison.csv"]
)
@pytest.mark.parametrize("force", [False, True])
def test_demo_never_replaces_or_deletes_a_file_it_did_not_write(
    tmp_path: Path, name: str, force: bool
) -> None:
    """The demo overwrote the user's eval.parquet, checkpoints and comparison table and unlinked their
    run_log.jsonl (`--monitor`), with or without --force."""
    out = tmp_path / "dm"
    (out / "checkpoints").mkdir(parents=True)
    (out / name).write_text("the user's own file")
    (out / "notes.txt").write_text("mine")
    args = ["demo", "--rows", "2000", "--monitor", "--out", out, *(["--force"] if force else [])]
    line = one_error_line(*run(*args))
    assert name in line and "the file is yours" in line and "choose another --out" in line
    assert (out / name).read_text() == "the user's own file" and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == sorted(
        {"checkpoints", name, "notes.txt"}
    )


def test_a_demo_run_again_in_its_own_folder_replaces_its_files(tmp_path: Path) -> None:
    from mmoe_inspect.demo import run_demo

    kwargs = {"n_rows": 2000, "architectures": ("omoe",), "epochs": 1, "single_task": False, "monitor": True}
    first = run_demo(tmp_path / "dm", **kwargs)
    (tmp_path / "dm" / "notes.txt").write_text("mine")
    second = run_demo(tmp_path / "dm", seed=1, **kwargs)
    assert second.eval_path == first.eval_path and (tmp_path / "dm" / "notes.txt").read_text() == "mine"


# ================================================================== a model on the meta device (Python API)
def test_a_model_whose_weights_are_all_on_meta_is_refused_in_one_line() -> None:
    """It failed mid-pass with NotImplementedError: aten::bincount ... Meta kernel."""
    from mmoe_inspect import inspect
    from mmoe_inspect.recording.recorder import RecordingError

    model = small_mmoe().to("meta")
    with pytest.raises(RecordingError, match=r"^every parameter and buffer of MMoE is on the meta device"):
        inspect(model, rows())


# ================================================================== a DataFrame with a column named twice
def test_a_dataframe_with_a_column_named_twice_is_refused_naming_it() -> None:
    """It crashed mid-bind: AttributeError: 'DataFrame' object has no attribute 'dtype'."""
    import pandas as pd

    from mmoe_inspect import inspect

    frame = rows()
    frame = pd.concat([frame, frame[["x1"]]], axis=1)
    with pytest.raises(DataFileError, match=r"duplicate column name\(s\) \['x1'\]"):
        inspect(small_mmoe(), frame)


# ================================================================== a checkpoint or data file that is a FIFO or device
@pytest.mark.parametrize("what", ["checkpoint", "data"])
@pytest.mark.parametrize("kind", ["fifo", "dev-urandom"])
def test_a_checkpoint_or_data_file_that_is_a_fifo_or_device_says_so(
    tmp_path: Path, checkpoint: Path, what: str, kind: str
) -> None:
    """Both were refused as "empty (0 bytes)", which /dev/urandom is not."""
    special = tmp_path / ("model.pt" if what == "checkpoint" else "eval.parquet")
    if kind == "fifo":
        os.mkfifo(special)
    else:
        special.symlink_to("/dev/urandom")
    args = [special] if what == "checkpoint" else [checkpoint, "--data", special]
    with _Alarm(20):
        line = one_error_line(*run("summary", *args))
    assert "is not a regular file" in line and "empty" not in line


# ================================================================== a resource-limit variable that is no number
@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan", "-inf"])
def test_a_limit_variable_that_is_no_positive_number_is_one_line(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """These silently kept the default (the user meant to change the limit)."""
    monkeypatch.setenv("MMOE_INSPECT_MAX_TENSOR_GB", value)
    line = one_error_line(*run("summary", checkpoint))
    assert f"MMOE_INSPECT_MAX_TENSOR_GB={value!r} is not a positive number" in line


def test_an_infinite_limit_means_no_limit(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It was exit 1: internal error: OverflowError: cannot convert float infinity to integer."""
    from mmoe_inspect import _limits

    for name in ("MMOE_INSPECT_MAX_TENSOR_GB", "MMOE_INSPECT_MAX_PICKLE_MB", "MMOE_INSPECT_MAX_PARAMS"):
        monkeypatch.setenv(name, "inf")
    assert _limits.TENSOR_BYTES.value == sys.maxsize
    code, text = run("summary", checkpoint)
    assert code == 0 and "Traceback" not in text, text


# ================================================================== an output stream that cannot encode our characters
def test_an_ascii_terminal_gets_question_marks_not_a_traceback(checkpoint: Path) -> None:
    """rich raised UnicodeEncodeError ('\\u2014' of the review's lines): a traceback and exit 1."""
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "LC_ALL": "C", "LANG": "C"}
    proc = subprocess.run(
        [sys.executable, "-m", "mmoe_inspect.cli", "summary", str(checkpoint), "--quiet"],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    assert b"Traceback" not in proc.stderr and b"?" in proc.stdout and proc.stdout.isascii()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_stdout_on_a_full_disk_is_one_line_not_a_traceback(checkpoint: Path) -> None:
    """`summary ... > log.txt` on a full disk: rich's OSError traceback and exit 1."""
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "mmoe_inspect.cli", "summary", str(checkpoint), "--quiet"],
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=300,
        )
    lines = [ln for ln in proc.stderr.decode().splitlines() if ln.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr.decode(), proc.stderr.decode()[-2000:]
    assert lines == [
        "error: writing the output failed (No space left on device); free space or write it elsewhere"
    ]


# ================================================================== torch's C++ refusal keeps its reason
def test_a_zip_member_outside_the_checkpoint_folder_is_refused_with_the_reason(
    tmp_path: Path, checkpoint: Path
) -> None:
    """The line ended "refused it: [enforce fail at inline_container.cc:340] )": the cut at ". " kept only
    torch's C++ location, not what is wrong."""
    import zipfile

    target = tmp_path / "model.pt"
    with zipfile.ZipFile(checkpoint) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info.filename))
        zout.writestr("../../escape.txt", b"x")
    line = one_error_line(*run("summary", target))
    assert "not in a subdirectory" in line and "escape.txt" in line and "enforce fail" not in line
    assert not (tmp_path.parent / "escape.txt").exists()


def test_a_linked_partition_folder_is_read_and_a_folder_reached_twice_is_read_once(tmp_path: Path) -> None:
    """data/date=1 (a real folder) and data/date=2 -> ../other/date=2 (a link, as a partition synced from
    elsewhere): Path.rglob did not follow the link, so 500 of 2,000 rows were read without a word."""
    frame = pd.DataFrame({"x": np.arange(2000, dtype="float32")})
    folder, other = tmp_path / "data", tmp_path / "other" / "date=2"
    (folder / "date=1").mkdir(parents=True)
    other.mkdir(parents=True)
    frame.iloc[:500].to_parquet(folder / "date=1" / "part.parquet")
    frame.iloc[500:].to_parquet(other / "part.parquet")
    (folder / "date=2").symlink_to(other)
    source = TableSource.of(folder)
    assert sum(len(f) for f in source.iter_frames(10_000, ["x"])) == 2000
    (other / "back").symlink_to(folder)  # a loop: data/date=2/back -> data
    with (
        _Alarm(20),
        pytest.raises(DataFileError, match=r"holds date=2/back, a link to a folder that holds it \(a loop\)"),
    ):
        TableSource.of(folder)._files()
    (other / "back").unlink()
    (folder / "copy").symlink_to(
        other
    )  # the same partition by a second path: read once, the other path named
    with pytest.warns(UserWarning, match=r"skipped date=2: a link to a folder read already"):
        assert [str(f.relative_to(folder)) for f in TableSource.of(folder)._files()] == [
            "copy/part.parquet",
            "date=1/part.parquet",
        ]


def test_a_latest_link_beside_the_partitions_is_skipped_and_a_broken_partition_link_refused(
    tmp_path: Path,
) -> None:
    """`latest -> date=2` next to date=1/ and date=2/ (a common layout, often read-only) was refused as "a
    second path to the same files"; each partition is read once, under its own name, and the link is named.
    A partition link whose folder is gone was skipped without a word (500 of 1,000 rows read)."""
    folder = tmp_path / "data"
    for i in (1, 2):
        (folder / f"date={i}").mkdir(parents=True)
        pd.DataFrame({"x": np.arange(500, dtype="float32")}).to_parquet(folder / f"date={i}" / "p.parquet")
    (folder / "latest").symlink_to(folder / "date=2")
    with pytest.warns(UserWarning, match=r"skipped latest: a link to a folder read already"):
        files = TableSource.of(folder)._files()
    assert [str(f.relative_to(folder)) for f in files] == ["date=1/p.parquet", "date=2/p.parquet"]
    (folder / "latest").unlink()
    (folder / "date=3").symlink_to(tmp_path / "gone")
    with _Alarm(20), pytest.raises(DataFileError, match=r"holds date=3, a broken link \(to .*gone\)"):
        TableSource.of(folder)


def test_a_folder_from_an_earlier_demo_is_refused_with_a_way_forward(tmp_path: Path) -> None:
    """A folder an earlier demo wrote (no marker) was refused with "the demo did not write it", which is
    false there and said nothing of what to do; the files are still never replaced."""
    from mmoe_inspect.demo import DEMO_MARKER, DemoOutError, _claim_demo_folder

    out = tmp_path / "dm"
    (out / "checkpoints").mkdir(parents=True)
    (out / "eval.parquet").write_text("an earlier demo's rows")
    names = ["train.parquet", "eval.parquet"]
    with pytest.raises(DemoOutError) as err:
        _claim_demo_folder(out, names)
    line = str(err.value)
    assert "did not write it" not in line and f"no {DEMO_MARKER} record" in line
    assert "choose another --out" in line and f"if {out} holds only an earlier demo's output, delete" in line
    assert (out / "eval.parquet").read_text() == "an earlier demo's rows" and not (out / DEMO_MARKER).exists()
    (out / DEMO_MARKER).write_text('{"files": ["train.parquet"]}')  # a record that does not list it
    with pytest.raises(DemoOutError, match=r"eval\.parquet exists and the demo did not write it"):
        _claim_demo_folder(out, names)
    assert (out / "eval.parquet").read_text() == "an earlier demo's rows"
