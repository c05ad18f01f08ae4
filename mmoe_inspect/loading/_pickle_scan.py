"""A pickle-machine emulator that names every global a pickle would import, without importing anything.

`scan_pickle(data)` runs the pickle virtual machine symbolically over `pickletools.genops` (which only
parses bytes): it keeps the real stack (marks included) and the real memo, so a string is known as a
string wherever it travels: through `PUT`/`GET`/`MEMOIZE`, `DUP`, marks and frames. Every opcode
that imports resolves to the exact dotted name the unpickler would resolve:

- `GLOBAL`/`INST` carry `module name` in the opcode (mapped through `_compat_pickle` below
  protocol 3, as `pickle.Unpickler.find_class` does);
- `STACK_GLOBAL` pops module and name from the emulated stack: both must be strings pushed by the
  pickle itself, else the scan is *unsure* (the real unpickler would refuse too, and a scanner that
  guessed could be made to lie);
- `EXT1/2/4` (the copyreg extension registry) are *unsure*: they depend on the loading process.

Why not picklescan or fickling (both checked, versions 1.0.5 and 0.1.12)? picklescan resolves
`STACK_GLOBAL` by looking back over the previous opcodes, not the stack: after decoy strings and
`POP`s it reports `unknown.unknown` instead of the name that runs. fickling is a real interpreter
but keeps going on a malformed pickle with placeholder values (printing warnings to stdout), where
the refusal must say that it cannot be sure. Neither scans bytes that are themselves pickles.

`bytes` (and `str`) constants that are pickles themselves (a payload for `pickle.loads` or
`torch.load`) are scanned too, and their globals listed (nested up to a small depth).
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import io
import pickletools
from dataclasses import dataclass, field

from mmoe_inspect.errors import MmoeInspectError, first_line

_STRING_OPS = {
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "BINUNICODE8",
    "UNICODE",
    "SHORT_BINSTRING",
    "BINSTRING",
    "STRING",
}
_BYTES_OPS = {"SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "BYTEARRAY8"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_MAX_NESTING = 3

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
"""The first pickle of a legacy (non-zip) `torch.save` file; such a file holds five pickles, then raw data."""


class _Mark:
    """The `MARK` object on the emulated stack."""


class _Opaque:
    """Any value the scan does not need to know (numbers, containers, call results)."""


_MARK = _Mark()
_OPAQUE = _Opaque()


class ScanLimitError(MmoeInspectError, ValueError):
    """The pickle has more opcodes than the scan budget allows."""

    bad_input = False  # internal: the checkpoint sniffer turns it into its own verdict


@dataclass
class PickleScan:
    """What a file's pickles would import (exact dotted names, first-seen order) and their strings.

    `unsure` says why the scan cannot vouch for the list (a name built at run time, an extension
    code); `problem` says where a pickle stops being a valid pickle (damaged or truncated).
    """

    globals: dict[str, None] = field(default_factory=dict)
    strings: set[str] = field(default_factory=set)
    n_pickles: int = 0
    unsure: str | None = None
    problem: str | None = None
    first_value: object = None  # the first pickle's value when it is a plain int (legacy torch magic)


def _to_str(arg: object) -> str:
    return arg.decode("latin-1") if isinstance(arg, bytes) else str(arg)


def _resolve(module: str, name: str, proto: int) -> str:
    """The name `pickle.Unpickler.find_class` resolves (fix_imports below protocol 3)."""
    if proto < 3:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


def _pop_mark(stack: list) -> list:
    """Pop down to and including the topmost mark; the popped slice (bottom first)."""
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is _MARK:
            items = stack[i + 1 :]
            del stack[i:]
            return items
    raise ValueError("a mark is needed but none is on the stack")


def scan_one(fh: io.BufferedIOBase, result: PickleScan, *, max_ops: int, depth: int = 0) -> bool:
    """Emulate one pickle read from `fh`; False when `fh` was already at its end (no pickle)."""
    stack: list = []
    memo: dict[int, object] = {}
    proto = 0
    ops = 0
    for op, arg, _pos in pickletools.genops(fh):
        ops += 1
        if ops > max_ops:
            raise ScanLimitError(f"more than {max_ops:,} pickle opcodes")
        name = op.name
        if name == "PROTO":
            proto = int(arg)
            continue
        if name == "FRAME":
            continue
        if name == "STOP":
            if len(stack) != 1:
                raise ValueError(f"STOP with {len(stack)} values on the stack")
            result.n_pickles += 1
            if result.n_pickles == 1 and depth == 0 and isinstance(stack[0], int):
                result.first_value = stack[0]
            return True
        if name in _STRING_OPS:
            text = _to_str(arg)
            if len(text) <= 200:
                result.strings.add(text)
            if (
                depth < _MAX_NESTING and len(text) > 3 and text.endswith(".")
            ):  # a pickle in a str (protocol 2)
                with contextlib.suppress(UnicodeEncodeError):
                    _scan_nested(text.encode("latin-1"), result, max_ops=max_ops, depth=depth + 1)
            # protocol-0/1 STRING ops push bytes-like str only for `str` in py2 pickles; both push text here
            stack.append(text)
            continue
        if name in _BYTES_OPS:
            data = bytes(arg)
            if depth < _MAX_NESTING and data.endswith(b"."):  # every pickle ends with STOP
                _scan_nested(data, result, max_ops=max_ops, depth=depth + 1)
            stack.append(_OPAQUE)
            continue
        if name in _PUT_OPS:
            if not stack or stack[-1] is _MARK:
                raise ValueError(f"{name} with an empty stack")
            memo[int(arg)] = stack[-1]
            continue
        if name == "MEMOIZE":
            if not stack or stack[-1] is _MARK:
                raise ValueError("MEMOIZE with an empty stack")
            memo[len(memo)] = stack[-1]
            continue
        if name in _GET_OPS:
            key = int(arg)
            if key not in memo:
                raise ValueError(f"{name} {key} reads a memo entry that was never stored")
            stack.append(memo[key])
            continue
        if name in ("GLOBAL", "INST"):
            module, _, attr = _to_str(arg).partition(" ")
            result.globals[_resolve(module, attr, proto)] = None
            if name == "INST":
                _pop_mark(stack)
            stack.append(_OPAQUE)
            continue
        if name == "STACK_GLOBAL":
            if len(stack) < 2:
                raise ValueError("STACK_GLOBAL with fewer than two values on the stack")
            attr, module = stack.pop(), stack.pop()
            if not isinstance(module, str) or not isinstance(attr, str):
                result.unsure = result.unsure or (
                    "a STACK_GLOBAL whose module or name is not a string the pickle wrote (it is built "
                    "while unpickling, so the import cannot be named in advance)"
                )
                stack.append(_OPAQUE)
                continue
            result.globals[_resolve(module, attr, proto)] = None
            stack.append(_OPAQUE)
            continue
        if name in ("EXT1", "EXT2", "EXT4"):
            result.unsure = result.unsure or (
                f"an {name} opcode (code {arg}): it imports whatever the loading process registered "
                "under that code with copyreg"
            )
            stack.append(_OPAQUE)
            continue
        if name == "POP" and stack and stack[-1] is _MARK:  # the unpickler's POP also drops a bare mark
            stack.pop()
            continue
        if name == "DUP":
            if not stack or stack[-1] is _MARK:
                raise ValueError("DUP with an empty stack")
            stack.append(stack[-1])
            continue
        if name in ("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"):
            stack.append(arg if isinstance(arg, int) and not isinstance(arg, bool) else _OPAQUE)
            continue
        # Every other opcode: pop what pickletools says it pops, push an opaque value per push.
        for item in reversed(op.stack_before):
            if item is pickletools.stackslice:
                continue
            if item is pickletools.markobject:
                _pop_mark(stack)
            else:
                if not stack:
                    raise ValueError(f"{name} with an empty stack")
                top = stack.pop()
                if top is _MARK:
                    raise ValueError(f"{name} pops a mark")
        for item in op.stack_after:
            stack.append(_MARK if item is pickletools.markobject else _OPAQUE)
    if ops == 0:
        return False
    raise ValueError("the pickle ends without STOP")


def _scan_nested(data: bytes, result: PickleScan, *, max_ops: int, depth: int) -> None:
    """Globals of a pickle carried as bytes (a payload for pickle.loads/torch.load); not a pickle: ignored."""
    inner = PickleScan()
    try:
        scan_one(io.BytesIO(data), inner, max_ops=max_ops, depth=depth)
    except ScanLimitError:
        raise
    except Exception:  # plain bytes that only start like a pickle: data, not code
        return
    result.globals.update(inner.globals)
    result.unsure = result.unsure or inner.unsure


def scan_pickles(fh: io.BufferedIOBase, *, max_ops: int, max_pickles: int | None = None) -> PickleScan:
    """Emulate the pickles read from `fh` one after another.

    A legacy `torch.save` file (first pickle = `LEGACY_MAGIC`) holds exactly five pickles, then raw
    storage bytes that no loader unpickles; any other file is scanned pickle after pickle up to its
    end (or `max_pickles`). A pickle that does not parse sets `problem`.
    """
    result = PickleScan()
    limit = max_pickles
    while limit is None or result.n_pickles < limit:
        start = fh.tell()
        try:
            if not scan_one(fh, result, max_ops=max_ops):
                break
        except ScanLimitError:
            raise
        except Exception as exc:
            text = first_line(exc)
            if result.n_pickles == 0 or start == 0 or limit is not None:  # a pickle a loader reads
                result.problem = text
            break
        if result.n_pickles == 1 and result.first_value == LEGACY_MAGIC:
            limit = 5
    if limit == 5 and result.n_pickles < 5 and result.problem is None:
        result.problem = f"a legacy torch.save file with {result.n_pickles} of its 5 pickles"
    return result
