"""A rich Console that strips control characters from every string before rendering it.

Task names, state_dict keys and category values come from files; printed raw they could clear the
screen, set the window title or recolour the terminal. Rich turns every printed string (table cells
too) into text through `Console.render_str`, so cleaning there covers every print; rich's own
styling is added after, from markup we wrote.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from mmoe_inspect._text import printable


class CleanConsole(Console):
    """`rich.console.Console` whose strings pass through `mmoe_inspect._text.printable` first."""

    def render_str(self, text: str, **kwargs: Any):  # type: ignore[override]
        return super().render_str(printable(text, keep_newlines=True), **kwargs)
