"""Clean text from files before it reaches a terminal or a spreadsheet.

`printable(s)` removes every control character (C0, DEL, C1: ESC sequences for colours, screen
clearing and window titles, BEL, CR, ...) and escape sequences with them, so a task name or
state_dict key from a checkpoint cannot drive the terminal. `csv_cell(v)` prefixes a cell that a
spreadsheet would read as a formula (`= + - @`, tab, CR) with a quote ('), as OWASP advises.
`cut(items, n)` shortens a long list for an error line with a count of the rest. `short_label(s)` caps
a text value read from data (a segment name) at `LABEL_CHARS`, distinct values staying distinct.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

_ESCAPES = re.compile(
    r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC (window title, hyperlinks) up to BEL or ST
    r"|\x1b[P_^X][^\x1b]*(?:\x1b\\)?"  # DCS, APC, PM, SOS strings
    r"|\x1b\[[0-?]*[ -/]*[@-~]"  # CSI (colours, cursor moves, clear screen)
    r"|\x9b[0-?]*[ -/]*[@-~]"  # 8-bit CSI
    r"|\x1b[ -/]*[0-~]?"  # other ESC sequences
)
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def printable(text: object, *, keep_newlines: bool = False) -> str:
    """`text` as a string with escape sequences and control characters removed (newlines kept if asked)."""
    s = _ESCAPES.sub("", str(text))
    s = _CONTROLS.sub("", s)
    return s if keep_newlines else s.replace("\n", " ")


def csv_cell(value: object) -> object:
    """A value safe for a CSV cell: strings a spreadsheet would run as formulas get a leading quote."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def cut(items: Sequence[object], n: int = 10) -> str:
    """'a, b, c and 7 more'."""
    shown = ", ".join(printable(i) for i in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def csv_safe(frame):  # pandas.DataFrame -> pandas.DataFrame (pandas imported by the caller)
    """A copy of `frame` whose text cells and column names cannot run as spreadsheet formulas."""
    out = frame.rename(columns=lambda c: csv_cell(c) if isinstance(c, str) else c)
    for col in out.columns:
        if out[col].dtype.kind in "OSU" or str(out[col].dtype) in ("str", "string", "category"):
            out[col] = out[col].astype(object).map(csv_cell)
    return out


LABEL_CHARS = 120
"""Longest text value kept from a data column (a `--segment-by` value): longer ones are cut (see
`short_label`), so memory and the report's size do not grow with the length of a cell."""


def short_label(text: str, limit: int = LABEL_CHARS) -> str:
    """`text` when at most `limit` characters; else its start, an ellipsis and 8 hex digits of its SHA-1, so
    two long values that share a start stay distinct: `"AAAA…#1f2e3d4c"` (`limit` characters in all)."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{text[: max(limit - 10, 1)]}…#{digest}"
