"""HTML rendering of a report structure: Jinja2 (autoescape on) plus an explicit item-renderer registry."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from mmoe_inspect.results import METRICS_SCHEMA_VERSION

from .items import (
    BulletList,
    Diagnoses,
    FigureItem,
    FindingList,
    Headline,
    HowTo,
    KeyValues,
    Notice,
    Paragraph,
    Questions,
    Report,
    Subheading,
    TableItem,
    Verdict,
)

T = TypeVar("T")
_RENDERERS: dict[type, Callable[[Any], Markup]] = {}


def renderer(kind: type) -> Callable[[Callable[[T], Markup]], Callable[[T], Markup]]:
    """Register the function that renders items of type `kind` (exact type; no class swapping)."""

    def register(fn: Callable[[T], Markup]) -> Callable[[T], Markup]:
        _RENDERERS[kind] = fn
        return fn

    return register


@cache
def environment() -> Environment:
    """The package's templates with autoescaping on (every name shown is user data)."""
    return Environment(
        loader=PackageLoader("mmoe_inspect.reports", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _macro(name: str) -> Callable[..., Markup]:
    return getattr(environment().get_template("items.html.j2").module, name)


def _by_macro(kind: type, macro: str) -> None:
    renderer(kind)(lambda item: _macro(macro)(item))


for _kind, _name in (
    (Paragraph, "paragraph"),
    (Notice, "notice"),
    (Verdict, "verdict"),
    (Questions, "questions"),
    (Diagnoses, "diagnoses"),
    (Headline, "headline"),
    (FindingList, "findings"),
    (FigureItem, "figure"),
    (TableItem, "table"),
    (KeyValues, "keyvalues"),
    (BulletList, "bullets"),
    (Subheading, "subheading"),
    (HowTo, "howto"),
):
    _by_macro(_kind, _name)


def render_item(item: Any) -> Markup:
    try:
        fn = _RENDERERS[type(item)]
    except KeyError:
        raise TypeError(f"no HTML renderer registered for {type(item).__name__}") from None
    return Markup(fn(item))


def render_html(report: Report, *, version: str = "") -> str:
    """The complete, self-contained page (CSS inline, images referenced relatively)."""
    page = environment().get_template("report.html.j2")
    return page.render(
        report=report, render=render_item, version=version, schema_version=METRICS_SCHEMA_VERSION
    )
