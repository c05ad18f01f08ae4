"""Look inside a checkpoint file without unpickling it: file kind, pickle globals, pickle strings.

`sniff(path)` reads only bytes: the zip directory of a `torch.save` archive (declared sizes checked
before inflating), and every pickle in the file through the emulator of `_pickle_scan` (the pickle
machine's stack and memo, without executing anything). Nothing here imports a module named by the
file or calls an object from it.
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import mmoe_inspect.loading._pickle_names as _names
from mmoe_inspect import _limits as limits
from mmoe_inspect._limits import human_bytes
from mmoe_inspect.loading._pickle_scan import ScanLimitError, scan_pickles

FileKind = Literal[
    "torch-zip",  # torch.save (zip archive with <name>/data.pkl)
    "torch-legacy",  # torch.save(..., _use_new_zipfile_serialization=False) or a bare pickle
    "torchscript",  # torch.jit.save
    "torch-export",  # torch.export.save (.pt2)
    "zip",  # another zip archive
    "json",
    "parquet",
    "text",
    "empty",
    "truncated",
    "unknown",
]


@dataclass(frozen=True)
class Sniffed:
    """What a file looks like: its kind, the globals its pickle would import (in order), its strings."""

    kind: FileKind
    globals: tuple[str, ...] = ()
    strings: frozenset[str] = field(default_factory=frozenset)
    problem: str | None = None  # why the pickle could not be scanned (damaged)
    unsure: str | None = None  # why the list of globals cannot be vouched for (refuse, even trusted)
    too_big: str | None = None  # a limit the file is over (one line, with the variable that raises it)


def sniff(path: Path) -> Sniffed:
    """Classify `path` from its bytes and scan its pickle opcodes (never unpickles)."""
    size = path.stat().st_size
    if size == 0:
        return Sniffed("empty")
    with path.open("rb") as fh:
        head = fh.read(4096)
    try:
        is_zip = zipfile.is_zipfile(path)
    except (OSError, ValueError):
        is_zip = False
    except zipfile.BadZipFile as exc:  # an end record zipfile refuses (e.g. a damaged "disk" number)
        return Sniffed("truncated", problem=f"a damaged zip archive ({exc})")
    if is_zip:
        return _sniff_zip(path, head)
    if head.startswith(b"PK\x03\x04"):
        return Sniffed("truncated", problem="a zip archive without its central directory")
    if head[:1] == b"\x80" and len(head) > 1 and 0 <= head[1] <= 5:
        if _is_tar(path):  # torch.load tries the tar layout first: a polyglot's members would unpickle
            return Sniffed(
                "torch-legacy",
                unsure="it is both a pickle and a tar archive, and torch.load would unpickle the tar's members",
            )
        with path.open("rb") as fh:
            return _scanned("torch-legacy", fh, max_pickles=None)
    if head.startswith(b"PAR1"):
        return Sniffed("parquet")
    stripped = head.lstrip()
    if stripped[:1] in (b"{", b"[") and size <= 64 << 20:
        try:
            json.loads(path.read_text(encoding="utf-8"))
            return Sniffed("json")
        except (ValueError, UnicodeDecodeError):
            pass
    try:
        head.decode("utf-8")
        if b"\x00" not in head:
            return Sniffed("text")
    except UnicodeDecodeError:
        pass
    return Sniffed("unknown")


def _is_tar(path: Path) -> bool:
    try:
        with tarfile.open(path, mode="r:"):
            return True
    except (tarfile.TarError, OSError, ValueError, EOFError):
        return False


def _scanned(kind: FileKind, fh: io.BufferedIOBase, max_pickles: int | None) -> Sniffed:
    try:
        scan = scan_pickles(fh, max_ops=limits.PICKLE_OPS.value, max_pickles=max_pickles)
    except ScanLimitError as exc:
        return Sniffed(kind, too_big=f"its pickle has {exc}; {limits.PICKLE_OPS.hint()}")
    return Sniffed(kind, tuple(scan.globals), frozenset(scan.strings), scan.problem, scan.unsure)


ZIP_NOT_AT_START = (
    "its zip archive does not start at the file's first byte (a pickle or another archive comes first), and "
    "torch.load reads what comes first, which is not what was scanned"
)


def _sniff_zip(path: Path, head: bytes) -> Sniffed:
    """A zip archive: its layout decides the kind; every `.pkl` entry in it is scanned (sizes first).

    Python's `zipfile` finds an archive from the end of the file, `torch.load` reads a file from its start: a
    file whose archive is not at its first byte (a pickle, or a second archive, in front of it) is not vouched
    for."""
    cap = limits.PICKLE_BYTES.value
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if not head.startswith(b"PK\x03\x04") or min((i.header_offset for i in infos), default=0) != 0:
                return Sniffed("torch-zip", unsure=ZIP_NOT_AT_START)
            names = [i.filename for i in infos]
            if any(n.endswith("/constants.pkl") or "/code/__torch__/" in n for n in names):
                return Sniffed("torchscript")
            if any(n.endswith("/archive_format") or n.endswith("/models/model.json") for n in names):
                return Sniffed("torch-export")
            pickles = [i for i in infos if i.filename.endswith(".pkl")]
            if not any(i.filename.endswith("data.pkl") and i.filename.count("/") <= 1 for i in pickles):
                return Sniffed("zip")
            for info in pickles:  # declared sizes, before inflating anything
                if info.file_size > cap:
                    return Sniffed(
                        "torch-zip",
                        too_big=f"its {info.filename} inflates to {human_bytes(info.file_size)}, over the "
                        f"{human_bytes(cap)} limit for a pickle; {limits.PICKLE_BYTES.hint()}",
                    )
            globs: dict[str, None] = {}
            strings: set[str] = set()
            problem = unsure = None
            for info in pickles:
                with zf.open(info) as fh:
                    data = fh.read(cap + 1)  # a lying header still cannot make it read more
                if len(data) > cap:
                    return Sniffed("torch-zip", too_big=f"its {info.filename} is over {human_bytes(cap)}")
                part = _scanned("torch-zip", io.BytesIO(data), max_pickles=1)
                if part.too_big:
                    return part
                globs.update(dict.fromkeys(part.globals))
                strings |= part.strings
                problem = problem or part.problem
                unsure = unsure or part.unsure
            for info in infos:  # the tensors' bytes: torch.load does not check their CRC-32, zipfile does
                if not info.filename.endswith(".pkl") and not info.is_dir():
                    with zf.open(info) as fh:
                        while fh.read(1 << 20):
                            pass
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError, ValueError) as exc:
        return Sniffed("truncated", problem=str(exc) or type(exc).__name__)
    return Sniffed("torch-zip", tuple(globs), frozenset(strings), problem, unsure)


def is_dangerous(name: str) -> bool:
    """Whether global `module.attr` loads, imports or executes something when called (see `_pickle_names`)."""
    return _names.is_dangerous(name)


def is_plain(name: str) -> bool:
    """Whether global `module.attr` is on the tensor-checkpoint allowlist (`_pickle_names.ALLOWED`)."""
    return _names.is_allowed(name)
