"""The pickle scanner against obfuscated pickles: every import the real unpickler would make is named.

Ground truth is the real `pickle.Unpickler` with `find_class` replaced by a recorder (it returns a
harmless stand-in, so nothing runs): whatever it resolves must be in the scan's list, and each
loader/executor there must be flagged dangerous, or the scan must say it is unsure. Zero misses.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmoe_inspect.loading._pickle_names import is_dangerous
from mmoe_inspect.loading._pickle_scan import LEGACY_MAGIC, scan_pickles

TARGETS = [
    ("os", "system"),
    ("posix", "system"),
    ("builtins", "eval"),
    ("builtins", "exec"),
    ("__builtin__", "eval"),
    ("subprocess", "Popen"),
    ("importlib", "import_module"),
    ("runpy", "run_path"),
    ("marshal", "loads"),
    ("pickle", "loads"),
    ("torch.hub", "load"),
    ("torch", "load"),
    ("torch.serialization", "load"),
    ("torch.jit", "load"),
    ("torch", "hub.load"),  # protocol 4 reaches attributes through dots
    ("collections", "OrderedDict.__init__.__globals__"),
]
DECOYS = [
    ("torch.nn.modules.linear", "Linear"),
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
]


class _StandIn:
    def __init__(self, *args, **kwargs) -> None:
        pass

    def __call__(self, *args, **kwargs):
        return _StandIn()

    def __setstate__(self, state) -> None:
        pass


class Recorder(pickle._Unpickler):  # the pure-Python twin: same opcodes, exposes .proto
    """The real unpickler, except that every class lookup is recorded and answered with a stand-in."""

    def __init__(self, fh, seen: list[str]) -> None:
        super().__init__(fh)
        self.seen = seen

    def find_class(self, module: str, name: str):
        if self.proto < 3:
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        self.seen.append(f"{module}.{name}")
        return _StandIn

    def persistent_load(self, pid):
        return _StandIn()


def recorded(data: bytes, n: int | None = None) -> list[str]:
    """Every name the real unpickler resolves over the pickles in `data` (`n` pickles, or all)."""
    fh = io.BytesIO(data)
    seen: list[str] = []
    count = 0
    while fh.tell() < len(data) and (n is None or count < n):
        Recorder(fh, seen).load()
        count += 1
    return seen


# ----------------------------------------------------------------------------- a tiny pickle assembler
def s(text: str, proto: int) -> bytes:
    raw = text.encode()
    if proto == 0:
        return b"V" + raw + b"\n"  # UNICODE
    if len(raw) < 256 and proto >= 4:
        return b"\x8c" + bytes([len(raw)]) + raw  # SHORT_BINUNICODE
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def put(i: int, proto: int) -> bytes:
    return b"p%d\n" % i if proto == 0 else b"q" + bytes([i])


def get(i: int, proto: int) -> bytes:
    return b"g%d\n" % i if proto == 0 else b"h" + bytes([i])


def glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def header(proto: int) -> bytes:
    return b"\x80" + bytes([proto]) if proto >= 2 else b""


def resolve(module: str, name: str, how: str, proto: int, decoy: tuple[str, str]) -> bytes:
    """Bytes that leave the callable `module.name` on the stack, obfuscated as `how` says."""
    dm, dn = decoy
    if how == "global":
        return glob(dm, dn) + b"0" + glob(module, name)  # a decoy GLOBAL, popped
    if how == "direct":
        return s(module, proto) + s(name, proto) + b"\x93"
    if how == "decoys-popped":
        return s(module, proto) + s(name, proto) + s(dm, proto) + s(dn, proto) + b"00" + b"\x93"
    if how == "pop-mark":
        return s(module, proto) + s(name, proto) + b"(" + s(dm, proto) + s(dn, proto) + b"1" + b"\x93"
    if how == "memo-swap":  # store in swapped slots, pop, push decoys, fetch back in the right order
        return (
            s(name, proto)
            + put(7, proto)
            + b"0"
            + s(module, proto)
            + put(3, proto)
            + b"0"
            + s(dm, proto)
            + s(dn, proto)
            + b"00"
            + get(3, proto)
            + get(7, proto)
            + b"\x93"
        )
    if how == "memoize":
        return (
            s(dm, proto)
            + b"\x94"
            + s(module, proto)
            + b"\x94"
            + s(name, proto)
            + b"\x94"
            + b"000"
            + (get(1, proto) + get(2, proto) + b"\x93")
        )
    if how == "dup":
        return s(module, proto) + s(name, proto) + b"2" + b"0" + b"\x93"
    raise AssertionError(how)


def evil(target: tuple[str, str], how: str, proto: int, decoy: tuple[str, str]) -> bytes:
    """A whole pickle calling `target('echo pwned')`."""
    proto_hdr = header(proto)  # STACK_GLOBAL and MEMOIZE still run under a lower declared protocol
    call = resolve(*target, how, proto, decoy) + b"(" + s("echo pwned", proto) + b"tR"
    return proto_hdr + call + b"."


HOWS = ["global", "direct", "decoys-popped", "pop-mark", "memo-swap", "memoize", "dup"]


def check_no_miss(data: bytes, n: int | None = None) -> None:
    truth = recorded(data, n)
    scan = scan_pickles(io.BytesIO(data), max_ops=1_000_000)
    assert scan.problem is None, scan.problem
    if scan.unsure:
        return
    missed = [g for g in truth if g not in scan.globals]
    assert not missed, (missed, list(scan.globals))
    assert [g for g in truth if is_dangerous(g)], truth


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    target=st.sampled_from(TARGETS),
    how=st.sampled_from(HOWS),
    proto=st.integers(0, 5),
    decoy=st.sampled_from(DECOYS),
    before=st.lists(st.sampled_from([{"a": 1}, [1.5, "torch.nn"], ("x", b"y"), {1, 2}]), max_size=3),
    protos=st.lists(st.integers(0, 5), min_size=3, max_size=3),
    nested=st.booleans(),
)
def test_obfuscated_pickles_are_never_missed(target, how, proto, decoy, before, protos, nested) -> None:
    """Decoys, PUT/GET swaps, MEMOIZE, DUP, POP_MARK, nested payloads, several pickles per file, protocols 0-5."""
    if proto == 0 and how in ("memoize",):
        proto = 4  # MEMOIZE only exists from protocol 4 on (the opcode still runs in any pickle)
    payload = evil(target, how, proto, decoy)
    if nested:  # the payload travels as bytes to pickle.loads
        payload = header(4) + glob("pickle", "loads") + b"(" + b"C" + bytes([len(payload)]) + payload + b"tR."
        if len(payload) > 255 + 40:
            return
    data = b"".join(pickle.dumps(obj, protocol=p) for obj, p in zip(before, protos, strict=False)) + payload
    check_no_miss(data)
    scan = scan_pickles(io.BytesIO(data), max_ops=1_000_000)
    if nested and not scan.unsure:
        module, name = target
        resolved = f"{module}.{name}"
        assert any(g.endswith(name) for g in scan.globals), (resolved, list(scan.globals))


def test_legacy_file_fifth_pickle_is_scanned() -> None:
    """A legacy torch.save layout: magic, protocol, sys_info, object, storage keys (the 5th is the evil one)."""
    parts = [pickle.dumps(LEGACY_MAGIC, 2), pickle.dumps(1001, 2), pickle.dumps({"little_endian": True}, 2)]
    parts.append(pickle.dumps({"w": 1}, 2))
    parts.append(evil(("posix", "system"), "global", 2, DECOYS[0]))
    data = b"".join(parts) + bytes(range(256)) * 4  # raw storage bytes follow the five pickles
    scan = scan_pickles(io.BytesIO(data), max_ops=100_000)
    assert scan.problem is None and "posix.system" in scan.globals
    assert recorded(data, 5)[-1] == "posix.system"


def test_stack_global_of_a_computed_name_is_unsure() -> None:
    """A module name returned by a call cannot be named in advance: the scan says so instead of guessing."""
    data = header(4) + glob("builtins", "str") + b"(" + s("os", 4) + b"tR" + s("system", 4) + b"\x93" + b")R."
    scan = scan_pickles(io.BytesIO(data), max_ops=1000)
    assert scan.unsure and "STACK_GLOBAL" in scan.unsure


def test_real_torch_pickles_scan_exactly(tmp_path) -> None:
    """torch.save of a module at protocols 2-5: the scan equals the recorder's names, in first-seen order."""
    import zipfile

    import torch

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Softmax(dim=1))
    for proto in (2, 3, 4, 5):
        path = tmp_path / f"m{proto}.pt"
        torch.save(model, path, pickle_protocol=proto)
        with zipfile.ZipFile(path) as zf:
            data = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
        scan = scan_pickles(io.BytesIO(data), max_ops=100_000)
        assert list(scan.globals) == list(dict.fromkeys(recorded(data))), proto
        assert scan.unsure is None and scan.problem is None


class _RunsShell:
    """Unpickling this calls `os.system` (it is only ever scanned here, never loaded)."""

    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def _saved_linear() -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(torch.nn.Linear(3, 2), buf)
    return buf.getvalue()


def test_a_pickle_in_front_of_a_torch_zip_is_not_vouched_for(tmp_path) -> None:
    """`zipfile` finds the archive from the end, `torch.load` reads the leading pickle: such a polyglot named only
    the archive's `Linear` to the user, and ran the pickle's `os.system` once trusted."""
    from mmoe_inspect.loading._sniff import ZIP_NOT_AT_START, sniff

    path = tmp_path / "poly.pt"
    path.write_bytes(pickle.dumps(_RunsShell(), protocol=2) + _saved_linear())
    got = sniff(path)
    assert got.unsure == ZIP_NOT_AT_START
    plain = tmp_path / "plain.pt"
    plain.write_bytes(_saved_linear())
    assert sniff(plain).unsure is None and sniff(plain).kind == "torch-zip"


def test_a_second_archive_behind_a_torch_zip_is_not_vouched_for(tmp_path) -> None:
    """Two archives back to back: `zipfile` scans the last one, `torch.load` the first."""
    from mmoe_inspect.loading._sniff import ZIP_NOT_AT_START, sniff

    path = tmp_path / "two.pt"
    path.write_bytes(_saved_linear() + _saved_linear())
    assert sniff(path).unsure == ZIP_NOT_AT_START


def test_cli_refuses_the_polyglot_even_when_trusted(tmp_path) -> None:
    from typer.testing import CliRunner

    from mmoe_inspect.cli.main import app

    path = tmp_path / "poly.pt"
    path.write_bytes(pickle.dumps(_RunsShell(), protocol=2) + _saved_linear())
    result = CliRunner().invoke(app, ["topology", str(path), "--trust-checkpoint"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "refusing to unpickle poly.pt even with --trust-checkpoint" in text
    assert "does not start at the file's first byte" in text
