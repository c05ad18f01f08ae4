"""What a report page is made of: items (pure data, no HTML), sections, the page, and number formatting.

`html.py` renders each item type through an explicit renderer registry; `structure.py` (the report)
and `diff.py` (two checkpoints side by side) build pages from these pieces.

Numbers on a page are formatted by `fmt_value` only, so every one of them can be traced back to
`metrics.json` (see `tests/test_report_numbers.py` for the rules).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mmoe_inspect.analysis.findings import Finding

COLLAPSE_ROWS = 24  # longer tables render folded (<details>), still complete


# ----------------------------------------------------------------------------- items
@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Notice:
    """A highlighted sentence (severity: critical / warning / info)."""

    text: str
    severity: str = "info"


@dataclass(frozen=True)
class Verdict:
    text: str
    severity: str | None
    label: str = "Verdict"


@dataclass(frozen=True)
class QuestionView:
    """One review question: the answer line (status ok / problem / unknown) and its evidence lines."""

    question: str
    answer: str
    status: str
    evidence: tuple[str, ...] = ()


@dataclass(frozen=True)
class Questions:
    """The review's questions, answered, at the top of the Summary."""

    questions: tuple[QuestionView, ...]


@dataclass(frozen=True)
class DiagnosisView:
    title: str
    severity: str
    summary: str
    impact: str
    causes: tuple[str, ...]
    steps: tuple[str, ...]
    findings: tuple[str, ...]


@dataclass(frozen=True)
class Diagnoses:
    """One card per story (grouped findings), most severe first."""

    diagnoses: tuple[DiagnosisView, ...]
    title: str = "Diagnosis"
    anchor: str = "diagnosis"


@dataclass(frozen=True)
class Card:
    label: str
    value: str
    hint: str = ""


@dataclass(frozen=True)
class Headline:
    cards: tuple[Card, ...]


@dataclass(frozen=True)
class FindingView:
    severity: str
    code: str
    title: str
    subject: str
    message: str
    remedy: str
    evidence: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class FindingList:
    findings: tuple[FindingView, ...]
    empty_text: str = "No findings: no gate, expert or task pair crossed a diagnosis threshold."
    title: str = "Findings"
    anchor: str = "findings"


@dataclass(frozen=True)
class FigureItem:
    name: str
    src: str
    title: str
    howto: bool = True  # link to its "How to read" entry

    @property
    def anchor(self) -> str:
        return f"fig-{self.name}"


@dataclass(frozen=True)
class Cell:
    text: str
    numeric: bool = False


@dataclass(frozen=True)
class TableItem:
    name: str
    title: str
    description: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    csv: str | None = None
    howto: bool = False  # link to a "How to read" entry with anchor `howto-table-<name>`
    marked: frozenset[int] = frozenset()  # row positions drawn highlighted (e.g. flagged rows)

    @property
    def anchor(self) -> str:
        return f"table-{self.name}"

    @property
    def collapsed(self) -> bool:
        return len(self.rows) > COLLAPSE_ROWS


@dataclass(frozen=True)
class KeyValues:
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class BulletList:
    title: str
    items: tuple[str, ...]


@dataclass(frozen=True)
class Subheading:
    """A titled sub-part of a section (anchor `sub-<anchor>`), with an optional static explanation."""

    title: str
    anchor: str
    text: str = ""


@dataclass(frozen=True)
class HowTo:
    """Reading guide: (title, link anchor or "", paragraph) per entry."""

    entries: tuple[tuple[str, str, str], ...]


Item = (
    Paragraph
    | Notice
    | Verdict
    | Questions
    | Diagnoses
    | Headline
    | FindingList
    | FigureItem
    | TableItem
    | KeyValues
    | BulletList
    | Subheading
    | HowTo
)


@dataclass(frozen=True)
class Section:
    anchor: str
    title: str
    items: tuple[Item, ...]
    intro: str = ""


DEFAULT_LINKS: tuple[tuple[str, str], ...] = (
    ("metrics.json", "metrics.json"),
    ("tables as CSV in tables/", "tables/"),
)


@dataclass(frozen=True)
class Report:
    """Everything the HTML page shows: page header fields, the ordered sections, footer links."""

    title: str
    model: str
    data: str
    sections: tuple[Section, ...] = field(default_factory=tuple)
    subtitle: str = "Gate inspection on"
    overview: str | None = None  # relative path of the one-page overview PNG, linked at the top
    links: tuple[tuple[str, str], ...] = DEFAULT_LINKS


# ----------------------------------------------------------------------------- formatting
_COUNT_HINTS = ("n_", "rows", "level", "count")


def fmt_value(v: Any, column: str | None = None) -> str:
    """A number or text as a reviewer wants to read it (NaN → "—", counts with separators, 3 decimals).

    Rules (the numbers test reverses them): integers and integer-valued counts as `1,234`; other
    floats with 3 decimals below 100, 1 decimal below 1000, none above (with separators); values
    closer to 0 than 0.001 as `<0.001` / `>-0.001`, zero (also -0.0) as `0.000`; NaN/None as "—";
    booleans as yes/no.
    """
    if v is None or v is pd.NA or v is pd.NaT:
        return "—"
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if isinstance(v, int | np.integer):
        return f"{int(v):,}"
    if isinstance(v, float | np.floating):
        x = float(v)
        if math.isnan(x):
            return "—"
        if math.isinf(x):
            return "∞" if x > 0 else "-∞"
        countish = column is not None and any(h in column for h in _COUNT_HINTS)
        if x.is_integer() and (countish or abs(x) >= 1000):
            return f"{int(x):,}"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        if abs(x) >= 100:
            return f"{x:.1f}"
        if x == 0:
            return "0.000"  # never "-0.000" (a negative zero, e.g. a difference of two equal AUCs)
        if abs(x) >= 0.001:
            return f"{x:.3f}"
        return "<0.001" if x > 0 else ">-0.001"  # exact values are in the CSVs and metrics.json
    if isinstance(v, list | tuple):
        return ", ".join(str(x) for x in v)
    return str(v)


def table_item(
    name: str,
    frame: pd.DataFrame,
    *,
    title: str | None = None,
    description: str = "",
    csv: str | None = None,
    howto: bool = False,
    labels: dict[str, str] | None = None,
    marked: Sequence[bool] | None = None,
) -> TableItem:
    """A DataFrame as pre-formatted cells (escaping happens in the template); `labels` renames columns;
    `marked` (one bool per row) highlights rows. A wide table with few rows (more than `WIDE_COLUMNS`
    columns, at most `WIDE_ROWS` rows, none marked: the gate metrics, one row per gate) is shown
    transposed, one column per row, so it fits the page column (1400 px windows) instead of scrolling;
    the CSV keeps the original layout."""
    if len(frame.columns) > WIDE_COLUMNS and 1 <= len(frame) <= WIDE_ROWS and not any(marked or ()):
        return _transposed(name, frame, title, description, csv, howto, labels or {})
    cols = [str(c) for c in frame.columns]
    numeric = [
        pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
        for c in frame.columns
    ]
    rows = tuple(
        tuple(Cell(fmt_value(v, col), num) for v, col, num in zip(rec, cols, numeric, strict=True))
        for rec in frame.itertuples(index=False, name=None)
    )
    names = labels or {}
    return TableItem(
        name=name,
        title=title or name.replace("_", " ").capitalize(),
        description=description,
        columns=tuple(names.get(c, c.replace("_", " ")) for c in cols),
        rows=rows,
        csv=csv,
        howto=howto,
        marked=frozenset(i for i, m in enumerate(marked or ()) if m),
    )


WIDE_COLUMNS = 12
WIDE_ROWS = 8


def _transposed(
    name: str,
    frame: pd.DataFrame,
    title: str | None,
    description: str,
    csv: str | None,
    howto: bool,
    labels: dict[str, str],
) -> TableItem:
    """`frame` with its rows as columns: the first column's values head the columns, every other column
    becomes a row ("measure", value per original row); cells keep their own number formatting."""
    first = str(frame.columns[0])
    heads = [fmt_value(v, first) for v in frame.iloc[:, 0]]
    heads = [h if heads.count(h) == 1 else f"{h} ({i + 1})" for i, h in enumerate(heads)]
    rows = []
    for col in frame.columns[1:]:
        c = str(col)
        numeric = pd.api.types.is_numeric_dtype(frame[col]) and not pd.api.types.is_bool_dtype(frame[col])
        label = labels.get(c, c.replace("_", " "))
        rows.append((Cell(label, False), *(Cell(fmt_value(v, c), numeric) for v in frame[col])))
    return TableItem(
        name=name,
        title=title or name.replace("_", " ").capitalize(),
        description=description,
        columns=(labels.get(first, first.replace("_", " ")) + " →", *heads),
        rows=tuple(rows),
        csv=csv,
        howto=howto,
    )


def finding_view(f: Finding) -> FindingView:
    return FindingView(
        severity=f.severity,
        code=f.code,
        title=f.title,
        subject=f.subject,
        message=f.message,
        remedy=f.remedy,
        evidence=tuple((k.replace("_", " "), fmt_value(v, k)) for k, v in f.evidence.items()),
    )
