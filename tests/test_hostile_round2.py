"""Hostile inputs and faults, round 2 (issue 17): each failing case of that round, as a named test.

Case numbers in the test names follow the issue's list (1: the refusal's list, 2: --force, 3: kills
mid-swap, 4: types at the door, 5: NaN predictions, 6: exit codes, 7: cost bounds, 8: terminal
escapes, 9: CSV formulas, 10: symlinked --out, 11: self-mutating models, 12: messages).
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from mmoe_inspect import FeatureSpec
from mmoe_inspect.checkpoint import save_checkpoint
from mmoe_inspect.cli.main import app
from mmoe_inspect.loading import load_model
from mmoe_inspect.loading.checkpoints import CheckpointFileError, UntrustedCheckpointError
from mmoe_inspect.models import MMoE
from mmoe_inspect.reports import ReportError, write_folder

ROOT = Path(__file__).resolve().parents[1]
REPORT_ARGS = ["--no-causal", "--no-attributions", "--quiet"]
runner = CliRunner()


def run(*args) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def one_error_line(code: int, text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert code == 2, text
    assert "Traceback" not in text and "internal error" not in text, text
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small reference MMoE checkpoint with its evaluation rows."""
    root = tmp_path_factory.mktemp("ckpt")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({f"x{i}": rng.normal(size=400).astype("float32") for i in range(3)})
    frame["click"] = rng.integers(0, 2, 400).astype("float32")
    frame["buy"] = rng.integers(0, 2, 400).astype("float32")
    torch.manual_seed(0)
    model = MMoE(
        FeatureSpec.dense_only(3), ["click", "buy"], n_experts=3, expert_hidden=(8,), tower_hidden=(4,)
    )
    return save_checkpoint(root / "mmoe.pt", model, eval_frame=frame)


# =========================================================================== 1: the refusal's list
def torch_zip_with(path: Path, pickle_bytes: bytes) -> Path:
    """A genuine torch.save zip whose data.pkl is replaced by `pickle_bytes`."""
    torch.save({"w": torch.ones(2)}, path)
    with zipfile.ZipFile(path) as zf:
        entries = [(i, zf.read(i)) for i in zf.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for info, data in entries:
            zf.writestr(info, pickle_bytes if info.filename.endswith("/data.pkl") else data)
    return path


def sbu(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def test_1a_decoys_popped_before_stack_global_are_not_what_is_listed(tmp_path: Path) -> None:
    pkl = (
        b"\x80\x04"
        + sbu("os")
        + sbu("system")
        + sbu("torch.nn.modules.linear")
        + sbu("Linear")
        + b"00"  # pop the decoys
        + b"\x93("
        + sbu("echo pwned")
        + b"tR."
    )
    path = torch_zip_with(tmp_path / "decoy.pt", pkl)
    with pytest.raises(UntrustedCheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert "os.system" in message and "WARNING" in message
    assert "torch.nn.modules.linear.Linear" not in info.value.globals


def test_1b_legacy_file_fifth_pickle_is_listed(tmp_path: Path) -> None:
    """A genuine legacy torch.save file whose storage-keys pickle (the 5th) calls posix.system."""
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    fh = io.BytesIO(raw)
    import pickletools

    for _ in range(4):
        for _op in pickletools.genops(fh):
            pass
    start = fh.tell()
    for _op in pickletools.genops(fh):
        pass
    evil = b"\x80\x02cposix\nsystem\n(X\x0a\x00\x00\x00echo pwnedtR."
    path.write_bytes(raw[:start] + evil + raw[fh.tell() :])
    with pytest.raises(UntrustedCheckpointError) as info:
        load_model(path)
    assert "posix.system" in str(info.value) and "WARNING" in str(info.value)


@pytest.mark.parametrize("target", ["torch.hub load", "torch.serialization load", "torch load"])
def test_1c_torch_loaders_are_named_and_warned(target: str, tmp_path: Path) -> None:
    pkl = b"\x80\x02c" + target.replace(" ", "\n").encode() + b"\n(X\x04\x00\x00\x00x.pttR."
    path = torch_zip_with(tmp_path / "loader.pt", pkl)
    with pytest.raises(UntrustedCheckpointError) as info:
        load_model(path)
    name = target.replace(" ", ".")
    message = str(info.value)
    assert f"it would import {name}" in message and f"WARNING: {name}" in message
    assert "torch classes" not in message


def test_1_unsure_scan_is_refused_even_with_trust(tmp_path: Path) -> None:
    """A STACK_GLOBAL whose module comes out of a call: the scan says so and nothing is unpickled."""
    pkl = b"\x80\x04cbuiltins\nstr\n(" + sbu("os") + b"tR" + sbu("system") + b"\x93(" + sbu("true") + b"tR."
    path = torch_zip_with(tmp_path / "built.pt", pkl)
    with pytest.raises(UntrustedCheckpointError, match="even with --trust-checkpoint"):
        load_model(path, trust=True)


# =========================================================================== 2, 3, 10: replacement
def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_2_force_deletes_nothing_of_the_users(checkpoint: Path, tmp_path: Path) -> None:
    """`report DIR/tables/model.pt --out DIR --force`: the input and DIR/figures/paper.txt survive."""
    folder = tmp_path / "DIR"
    (folder / "tables").mkdir(parents=True)
    (folder / "figures").mkdir()
    model = folder / "tables" / "model.pt"
    shutil.copy(checkpoint, model)
    (folder / "figures" / "paper.txt").write_text("my paper", encoding="utf-8")
    code, text = run("report", model, "--out", folder, *REPORT_ARGS)
    assert code == 2 and "--force" in text
    code, text = run("report", model, "--out", folder, "--force", *REPORT_ARGS)
    assert code == 0, text
    assert model.read_bytes() == checkpoint.read_bytes()
    assert (folder / "figures" / "paper.txt").read_text(encoding="utf-8") == "my paper"
    assert (folder / "index.html").is_file()
    # and again, now that DIR is a report holding user files: still kept
    code, text = run("report", model, "--out", folder, *REPORT_ARGS)
    assert code == 0, text
    assert model.read_bytes() == checkpoint.read_bytes()
    assert (folder / "figures" / "paper.txt").read_text(encoding="utf-8") == "my paper"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DIR"]


def test_2_force_refuses_a_user_file_at_a_report_path(checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "index.html").write_text("my own page", encoding="utf-8")
    code, text = run("report", checkpoint, "--out", folder, "--force", *REPORT_ARGS)
    line = one_error_line(code, text)
    assert "index.html" in line and "did not write" in line
    assert tree(folder) == {"index.html": b"my own page"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


KILLED_WRITE = """
import importlib.util, json, os, signal, sys
spec = importlib.util.spec_from_file_location("_replace", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
out, version, kill_at, how = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
WRITES = {"os.rename", "os.link", "os.mkdir", "os.remove", "os.rmdir", "os.symlink", "shutil.rmtree",
          "ctypes.call_function"}
count = 0
def hook(event, args):
    global count
    if event == "open":
        mode, flags = args[1], args[2]
        if not ((isinstance(mode, str) and any(c in mode for c in "wax")) or (flags or 0) & (os.O_WRONLY | os.O_RDWR)):
            return
    elif event not in WRITES:
        return
    count += 1
    if count == kill_at:
        os.kill(os.getpid(), signal.SIGKILL if how == "kill" else signal.SIGTERM)
sys.addaudithook(hook)
def build(tmp):
    (tmp / "figures").mkdir()
    (tmp / "tables").mkdir()
    for name in ("index.html", "figures/a.png", "figures/b.png", "tables/t.csv"):
        (tmp / name).write_text(version + name)
    (tmp / ".mmoe-inspect-report").write_text(json.dumps({"tool": "mmoe-inspect", "kind": "report"}))
class ReportError(RuntimeError):
    pass
mod.replace_folder(out, build, force=False, marker=".mmoe-inspect-report", legacy_entries=(), error=ReportError)
print(count)
"""


def killed_write(out: Path, version: str, kill_at: int, how: str = "kill") -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            KILLED_WRITE,
            str(ROOT / "reports" / "_replace.py"),
            str(out),
            version,
            str(kill_at),
            how,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def user_files(folder: Path) -> dict[str, bytes]:
    return {k: v for k, v in tree(folder).items() if "user" in k}


@pytest.mark.parametrize("how", ["kill", "term"])
def test_3_a_kill_at_every_step_leaves_the_old_report_or_the_new_one(how: str, tmp_path: Path) -> None:
    """SIGKILL/SIGTERM at every file-system step of a replacement (a real process, counted by an audit
    hook): the folder is always the complete old report or the complete new one, user files intact,
    and the next run cleans what was left beside it."""
    base = tmp_path / "base" / "report"
    base.parent.mkdir()
    assert killed_write(base, "old", 0).returncode == 0
    (base / "user-notes.txt").write_text("mine")
    (base / "figures" / "user-paper.txt").write_text("mine too")
    old = tree(base)
    scratch = tmp_path / "scratch" / "report"
    shutil.copytree(base, scratch)
    done = killed_write(scratch, "new", 0)
    assert done.returncode == 0, done.stderr
    steps = int(done.stdout)
    new = tree(scratch)
    assert new != old and user_files(scratch) == user_files(base)
    assert steps > 10
    every = 1 if how == "kill" else 4  # SIGTERM (what `timeout` sends) at every 4th step: the same code path
    for k in range(1, steps + 1, every):
        parent = tmp_path / f"k{k}"
        out = parent / "report"
        shutil.copytree(base, out)
        proc = killed_write(out, "new", k, how)
        assert proc.returncode in (-signal.SIGKILL, -signal.SIGTERM), (k, proc.stderr)
        now = tree(out)
        assert now in (old, new), (k, sorted(set(now) ^ set(old)))
        again = killed_write(out, "new", 0)  # the next run replaces it and cleans up
        assert again.returncode == 0, again.stderr
        assert tree(out) == new and sorted(p.name for p in parent.iterdir()) == ["report"], k
        shutil.rmtree(parent)


def test_10_symlinked_out_is_followed_and_stays_a_link(tmp_path: Path) -> None:
    real = tmp_path / "real"
    link = tmp_path / "link"

    def build(tmp: Path) -> None:
        (tmp / "index.html").write_text("x")
        (tmp / ".mmoe-inspect-report").write_text(json.dumps({"tool": "mmoe-inspect", "kind": "report"}))

    real.mkdir()
    link.symlink_to(real, target_is_directory=True)
    write_folder(link, build)
    write_folder(link, build)  # replacing through the link
    assert link.is_symlink() and (real / "index.html").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ReportError, match="symbolic link"):
        write_folder(dangling, build)
    assert dangling.is_symlink() and not (tmp_path / "nowhere").exists()


def test_12_long_out_name_is_not_refused_for_its_temp_name(tmp_path: Path) -> None:
    out = tmp_path / ("r" * 250)

    def build(tmp: Path) -> None:
        (tmp / ".mmoe-inspect-report").write_text(json.dumps({"tool": "mmoe-inspect", "kind": "report"}))

    write_folder(out, build)
    write_folder(out, build)
    assert out.is_dir() and sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_7c_zip_bomb_pickle_is_refused_before_inflating(tmp_path: Path) -> None:
    path = tmp_path / "bomb.pt"
    torch.save({"w": torch.ones(2)}, path)
    with zipfile.ZipFile(path) as zf:
        entries = [(i, zf.read(i)) for i in zf.infolist()]
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in entries:
            if info.filename.endswith("/data.pkl"):
                zf.writestr(info.filename, b"\x80\x04" + b"N0" * (256 << 20) + b"N.", zipfile.ZIP_DEFLATED)
            else:
                zf.writestr(info, data)
    assert path.stat().st_size < 2 << 20
    with pytest.raises(CheckpointFileError, match="MMOE_INSPECT_MAX_PICKLE_MB"):
        load_model(path)


# =========================================================================== 6, 7: exit 2 and bounded cost
def payload_of(checkpoint: Path) -> dict:
    return torch.load(checkpoint, weights_only=True)


def saved(tmp_path: Path, name: str, payload: dict) -> Path:
    path = tmp_path / name
    torch.save(payload, path)
    return path


def mutate(payload: dict, dotted: str, value) -> dict:
    import copy

    p = copy.deepcopy(payload)
    *head, last = dotted.split(".")
    node = p
    for k in head:
        node = node[k]
    node[last] = value
    return p


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("model_config", [1, 2], ("model_config", "not a dict")),
        ("state_dict", {"w": "text"}, ("state_dict", "not a tensor")),
        ("eval_sample.n_rows", "many", ("n_rows",)),
        ("eval_sample.columns.x0", torch.zeros(3), ("different lengths",)),
        ("format_version", 1.5, ("format version", "upgrade")),
        ("model_config.params.n_experts", "three", ("cannot rebuild",)),
        ("model_config.tasks", "click", ("cannot rebuild",)),
    ],
    ids=[
        "config-list",
        "state-text",
        "n-rows-text",
        "unequal-columns",
        "version-float",
        "experts-text",
        "tasks-text",
    ],
)
def test_6_checkpoint_fields_of_the_wrong_type_are_exit_2(checkpoint, tmp_path, field, value, words) -> None:
    path = saved(tmp_path, "bad.pt", mutate(payload_of(checkpoint), field, value))
    line = one_error_line(*run("topology", path))
    for w in words:
        assert w in line, line


def test_7a_stride_zero_columns_are_refused_before_allocating(checkpoint, tmp_path) -> None:
    huge = torch.zeros(1).expand(1 << 40)  # 4 TiB once materialized, 4 bytes in the file
    payload = mutate(payload_of(checkpoint), "eval_sample.columns", {"x0": huge})
    path = saved(tmp_path, "stride0.pt", payload)
    assert path.stat().st_size < 1 << 20
    line = one_error_line(*run("topology", path))
    assert "MMOE_INSPECT_MAX_TENSOR_GB" in line and "TiB" in line


def test_7b_huge_model_config_is_refused_before_building(checkpoint, tmp_path) -> None:
    payload = mutate(payload_of(checkpoint), "model_config.params.expert_hidden", [200_000, 200_000])
    path = saved(tmp_path, "huge.pt", payload)
    line = one_error_line(*run("topology", path))
    assert "parameters" in line and "MMOE_INSPECT_MAX_PARAMS" in line


def test_6_meta_tensors_on_the_builder_path_are_exit_2(tmp_path) -> None:
    code = tmp_path / "meta_builder.py"
    code.write_text("import torch\ndef build():\n    return torch.nn.Linear(3, 2)\n")
    path = tmp_path / "meta.pt"
    torch.save({"weight": torch.empty(2, 3, device="meta"), "bias": torch.empty(2, device="meta")}, path)
    line = one_error_line(*run("topology", path, "--builder", "meta_builder:build", "--model-code", code))
    assert "meta tensor" in line


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("a = " + "[" * 5000 + "]" * 5000 + "\n", ("nested too deeply",)),
        ("confidence = 'high'\n", ("confidence", "number")),
        ("notes = [1, 2]\n", ("notes", "strings")),
    ],
    ids=["deep-toml", "confidence-text", "notes-numbers"],
)
def test_6_malformed_specs_are_exit_2(tmp_path, spec, words) -> None:
    """A TopologyError (one line, exit 2 in every command that takes --spec), never another exception."""
    from mmoe_inspect.topology.spec import Topology, TopologyError

    path = tmp_path / "spec.toml"
    path.write_text(spec, encoding="utf-8")
    with pytest.raises(TopologyError) as info:
        Topology.load(path)
    for w in words:
        assert w in str(info.value), info.value


def test_6_latin1_spec_is_exit_2(tmp_path) -> None:
    from mmoe_inspect.topology.spec import Topology, TopologyError

    path = tmp_path / "spec.toml"
    path.write_bytes("# caf\u00e9\n".encode("latin-1"))
    with pytest.raises(TopologyError, match="UTF-8"):
        Topology.load(path)


@pytest.mark.parametrize("seed", ["-1", str(2**70)])
def test_6_out_of_range_seeds_are_exit_2(checkpoint, seed) -> None:
    code, text = run("topology", checkpoint, "--seed", seed, "--sample", "0.5")
    assert code == 2 and "--seed" in text and "Traceback" not in text


def test_6_topology_write_into_a_missing_folder_is_exit_2(checkpoint, tmp_path) -> None:
    line = one_error_line(*run("topology", checkpoint, "--write", tmp_path / "nope" / "spec.toml"))
    assert "does not exist" in line


def test_12_device_mps_says_mps_is_missing(checkpoint) -> None:
    line = one_error_line(*run("topology", checkpoint, "--device", "mps"))
    assert "MPS is not available" in line


def test_12_a_huge_dict_error_is_cut(tmp_path) -> None:
    path = tmp_path / "keys.pt"
    torch.save({f"key_{i}": i for i in range(10_000)}, path)
    line = one_error_line(*run("topology", path))
    assert len(line) < 1000


# =========================================================================== 8, 9: terminal and CSV text
def test_8_control_characters_never_reach_the_terminal(checkpoint, tmp_path) -> None:
    from mmoe_inspect._text import printable

    hostile = "click\x1b[2J\x1b]0;owned\x07\x1b[31mred\x9b1m\x07"
    assert printable(hostile) == "clickred"
    payload = payload_of(checkpoint)
    payload["state_dict"] = {("\x1b]0;title\x07" + k): v for k, v in payload["state_dict"].items()}
    path = saved(tmp_path, "keys.pt", payload)
    code, text = run("topology", path)
    assert code == 2 and "\x1b" not in text and "\x07" not in text, repr(text)


def test_9_csv_cells_that_look_like_formulas_are_escaped(tmp_path) -> None:
    from mmoe_inspect.tabular import save_tables

    frame = pd.DataFrame(
        {"task": ['=HYPERLINK("http://x")', "@SUM(1)", "+1", "-1+1", "ok"], "v": [1.0, -2.0, 3.0, 4.0, 5.0]}
    )
    [path] = save_tables({"t": frame}, tmp_path)
    back = pd.read_csv(path)
    assert list(back["task"]) == ['\'=HYPERLINK("http://x")', "'@SUM(1)", "'+1", "'-1+1", "ok"]
    assert list(back["v"]) == [1.0, -2.0, 3.0, 4.0, 5.0]  # numbers stay numbers


# =========================================================================== CLI fuzz
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


class Base:
    """The fuzzed checkpoint's bytes (an object, so hypothesis does not print 45 kB per example)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Base({len(self.data)} bytes)"


@pytest.fixture(scope="module")
def fuzz_base(checkpoint: Path) -> Base:
    return Base(checkpoint.read_bytes())


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_fuzz_mutated_checkpoints_are_exit_0_or_2(fuzz_base: Base, tmp_path_factory, flips, cut) -> None:
    """Random byte flips and truncations of a real checkpoint: never an internal error (exit 1)."""
    data = bytearray(fuzz_base.data)
    for where, byte in flips:
        data[int(where * (len(data) - 1))] = byte
    if cut is not None:
        data = data[: int(cut * len(data))]
    path = tmp_path_factory.mktemp("fuzz") / "m.pt"
    path.write_bytes(bytes(data))
    code, text = run("topology", path, "--quiet")
    assert code in (0, 2), text
    assert "Traceback" not in text


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    args=st.lists(
        st.sampled_from(
            [
                "--seed",
                "--sample",
                "--limit",
                "--batch-size",
                "--device",
                "--tasks",
                "--labels",
                "-1",
                "0",
                "0.5",
                "2",
                "nan",
                "1e30",
                "=x",
                "a,b",
                "cpu",
                "\x1b[2J",
            ]
        ),
        max_size=4,
    )
)
def test_fuzz_flag_lists_are_exit_0_or_2(checkpoint: Path, args) -> None:
    code, text = run("topology", checkpoint, "--quiet", *args)
    assert code in (0, 2), (args, text)
    assert "Traceback" not in text


def test_zip_end_record_with_a_damaged_disk_number_is_exit_2(checkpoint: Path, tmp_path: Path) -> None:
    """Found by the fuzz test: `zipfile.is_zipfile` itself raises BadZipFile ("span multiple disks") for
    a damaged end record; that is a damaged checkpoint (exit 2), not an internal error."""
    data = bytearray(checkpoint.read_bytes())
    locator = data.rindex(b"PK\x06\x07")  # zip64 end-of-central-directory locator: its disk number at +4
    data[locator + 4] = 1
    path = tmp_path / "damaged.pt"
    path.write_bytes(bytes(data))
    code, text = run("topology", path, "--quiet")
    assert code == 2 and "damaged" in text and "internal error" not in text, text
