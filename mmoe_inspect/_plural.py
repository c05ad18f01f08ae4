"""Counted nouns for user-facing sentences: "1 finding", "3 findings" (never "finding(s)")."""

from __future__ import annotations


def plural(n: int, word: str, many: str | None = None) -> str:
    """`"1 finding"` / `"2 findings"`; `many` for irregular plurals (`plural(2, "baseline")`)."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"
