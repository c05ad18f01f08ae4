"""Look inside a checkpoint file without unpickling it: file kind, pickle globals, pickle strings.

`sniff(path)` reads only bytes: the zip directory of a `torch.save` archive, and the opcodes of its
`data.pkl` through `pickletools.genops` (which parses a pickle without executing it). Nothing here
imports a module named by the file or calls an object from it.
"""

from __future__ import annotations

import io
import json
import pickletools
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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

_MAX_PICKLE_BYTES = 1 << 30  # a model's pickle (tensor data lives beside it) is far smaller

_STRING_OPS = {
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "BINUNICODE8",
    "UNICODE",
    "SHORT_BINSTRING",
    "BINSTRING",
    "STRING",
}

# Globals whose import alone is harmless but which run commands/code or touch files when called.
_DANGEROUS_MODULES = {
    "os",
    "posix",
    "nt",
    "subprocess",
    "sys",
    "shutil",
    "socket",
    "importlib",
    "runpy",
    "pickle",
    "_pickle",
    "marshal",
    "ctypes",
    "pty",
    "code",
    "webbrowser",
    "multiprocessing",
    "pathlib",
    "io",
    "_io",
    "tempfile",
    "urllib",
    "requests",
    "http",
}
_DANGEROUS_BUILTINS = {
    "eval",
    "exec",
    "compile",
    "open",
    "getattr",
    "setattr",
    "delattr",
    "__import__",
    "globals",
    "locals",
    "vars",
    "input",
    "breakpoint",
}


@dataclass(frozen=True)
class Sniffed:
    """What a file looks like: its kind, the globals its pickle would import (in order), its strings."""

    kind: FileKind
    globals: tuple[str, ...] = ()
    strings: frozenset[str] = field(default_factory=frozenset)
    problem: str | None = None  # why the pickle could not be scanned (damaged)


def sniff(path: Path) -> Sniffed:
    """Classify `path` from its bytes and scan its pickle opcodes (never unpickles)."""
    size = path.stat().st_size
    if size == 0:
        return Sniffed("empty")
    with path.open("rb") as fh:
        head = fh.read(4096)
    if zipfile.is_zipfile(path):
        return _sniff_zip(path)
    if head.startswith(b"PK\x03\x04"):
        return Sniffed("truncated", problem="a zip archive without its central directory")
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:
        with path.open("rb") as fh:
            globs, strings, problem = _scan(fh, max_pickles=4)
        return Sniffed("torch-legacy", globs, strings, problem)
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


def _sniff_zip(path: Path) -> Sniffed:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if any(n.endswith("/constants.pkl") or "/code/__torch__/" in n for n in names):
                return Sniffed("torchscript")
            if any(n.endswith("/archive_format") or n.endswith("/models/model.json") for n in names):
                return Sniffed("torch-export")
            pkl = next((n for n in names if n.endswith("data.pkl") and n.count("/") <= 1), None)
            if pkl is None:
                return Sniffed("zip")
            if zf.getinfo(pkl).file_size > _MAX_PICKLE_BYTES:
                return Sniffed("torch-zip", problem=f"its {pkl} is over {_MAX_PICKLE_BYTES >> 20} MiB")
            with zf.open(pkl) as fh:
                data = fh.read()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return Sniffed("truncated", problem=str(exc) or type(exc).__name__)
    globs, strings, problem = _scan(io.BytesIO(data), max_pickles=1)
    return Sniffed("torch-zip", globs, strings, problem)


def _scan(fh: io.BufferedIOBase, max_pickles: int) -> tuple[tuple[str, ...], frozenset[str], str | None]:
    """Globals (`module.name`, first-seen order) and short strings of up to `max_pickles` pickles."""
    found: dict[str, None] = {}
    strings: set[str] = set()
    problem = None
    for _ in range(max_pickles):
        recent: list[str] = []  # strings pushed so far (STACK_GLOBAL reads the last two)
        memo: dict[int, str] = {}
        n_memo = 0
        top: str | None = None  # the string on top of the stack, if the last push was one
        try:
            ops = 0
            for op, arg, _pos in pickletools.genops(fh):
                ops += 1
                name = op.name
                if name in _STRING_OPS:
                    top = arg.decode("latin-1") if isinstance(arg, bytes) else str(arg)
                    recent.append(top)
                    if len(top) <= 200:
                        strings.add(top)
                elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                    if top is not None:
                        memo[int(arg)] = top
                elif name == "MEMOIZE":
                    if top is not None:
                        memo[n_memo] = top
                    n_memo += 1
                elif name in ("BINGET", "LONG_BINGET", "GET"):
                    top = memo.get(int(arg))
                    if top is not None:
                        recent.append(top)
                elif name in ("GLOBAL", "INST"):
                    module, _, attr = str(arg).partition(" ")
                    found[f"{module}.{attr}"] = None
                    top = None
                elif name == "STACK_GLOBAL":
                    if len(recent) >= 2:
                        found[f"{recent[-2]}.{recent[-1]}"] = None
                    top = None
                else:
                    top = None
            if ops == 0:
                break
        except Exception as exc:  # damaged or truncated pickle: report, do not guess
            problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            break
        if fh.read(1) == b"":
            break
        fh.seek(-1, io.SEEK_CUR)
    return tuple(found), frozenset(strings), problem


def is_dangerous(name: str) -> bool:
    """Whether global `module.attr` can run commands, execute code or open files when called."""
    module, _, attr = name.rpartition(".")
    root = module.split(".", 1)[0]
    if root in ("builtins", "__builtin__"):
        return attr in _DANGEROUS_BUILTINS
    return root in _DANGEROUS_MODULES


def is_plain(name: str) -> bool:
    """Globals every torch checkpoint uses (tensor rebuilding, storages, OrderedDict, harmless builtins)."""
    module, _, attr = name.rpartition(".")
    if module in ("builtins", "__builtin__"):
        return attr not in _DANGEROUS_BUILTINS
    return (
        name.startswith(("torch._utils.", "torch.storage.", "torch.serialization."))
        or name
        in {"collections.OrderedDict", "torch.device", "torch.Size", "torch._tensor._rebuild_from_type_v2"}
        or (name.startswith("torch.") and name.endswith("Storage"))
    )
