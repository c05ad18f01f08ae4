"""Every number on a report page is in its metrics.json, at the page's rounding.

What counts as a number on the page: the visible text of `index.html` (inside <body>, outside
<style>/<script>) minus static prose, which the templates mark with class "prose" (section intros,
reading guides, table descriptions, figure captions, the footer). In that text a number is a run of
digits with optional thousands separators, decimals, a leading "-" and a trailing "%", that is not
part of a name: it may not follow a letter, digit, "_" or "." (so `e0`, `L1.click`, `experts.10`,
`task_2` are names, not numbers). `<0.001` and `>-0.001` are tokens of their own.

What counts as a number of metrics.json: every numeric leaf (booleans excluded), every number found
by the same rule inside its strings (the verdict, finding messages, notes, paths), the length of
every list, and, for every list of objects, the number of items per value of each text field (the
page's "critical / warning / info" counts).

A page token with k decimals matches a JSON number v when `format(v, f".{k}f")` gives the token
(separators removed); `95%` matches v = 0.95 (v x 100 at k decimals); `<0.001` matches some
0 < v < 0.001 and `>-0.001` some -0.001 < v < 0.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

import mmoe_inspect as mi
from mmoe_inspect.causal import Baseline
from mmoe_inspect.datasets import make_recsys, recsys_features, recsys_tasks
from mmoe_inspect.models import ModelConfig, build_model
from mmoe_inspect.reports import write_report

NUMBER = re.compile(r"(?<![\w.])(?:<0\.001|>-0\.001|-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?)(?![\w])")
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
HIDDEN_TAGS = {"head", "style", "script", "template"}


class VisibleText(HTMLParser):
    """Text nodes a reader sees, without static prose (elements with class "prose" and their content)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[bool] = []
        self.chunks: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in VOID:
            return
        classes = (dict(attrs).get("class") or "").split()
        hidden = tag in HIDDEN_TAGS or "prose" in classes
        self.stack.append(hidden or (self.stack[-1] if self.stack else False))

    def handle_endtag(self, tag: str) -> None:
        if tag not in VOID and self.stack:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        if data.strip() and not (self.stack and self.stack[-1]):
            self.chunks.append(data)


def page_numbers(html: str) -> list[str]:
    parser = VisibleText()
    parser.feed(html)
    return [tok for chunk in parser.chunks for tok in NUMBER.findall(chunk)]


def _parse(token: str) -> float:
    return float(token.rstrip("%").replace(",", ""))


def json_numbers(obj: Any) -> Iterator[float]:
    if isinstance(obj, bool) or obj is None:
        return
    if isinstance(obj, int | float):
        yield float(obj)
    elif isinstance(obj, str):
        for tok in NUMBER.findall(obj):
            if tok[0] not in "<>":  # "64%" in a saved sentence is the share 0.64, as the page's "64%" reads
                yield _parse(tok) / 100 if tok.endswith("%") else _parse(tok)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from json_numbers(v)
    elif isinstance(obj, list):
        yield float(len(obj))
        if obj and all(isinstance(x, dict) for x in obj):
            for key in {k for x in obj for k, v in x.items() if isinstance(v, str)}:
                yield from (float(n) for n in Counter(x.get(key) for x in obj).values())
        for v in obj:
            yield from json_numbers(v)


class Numbers:
    """The numbers of a metrics.json, indexed by their text at 0-6 decimals."""

    def __init__(self, metrics: dict) -> None:
        self.values = sorted(set(json_numbers(metrics)))
        self.text = {k: {format(v, f".{k}f") for v in self.values} for k in range(7)}
        self.text_pct = {k: {format(v * 100, f".{k}f") for v in self.values} for k in range(5)}

    def has(self, token: str) -> bool:
        if token == "<0.001":
            return any(0 < v < 0.001 for v in self.values)
        if token == ">-0.001":
            return any(-0.001 < v < 0 for v in self.values)
        plain = token.rstrip("%").replace(",", "")
        k = len(plain.split(".")[1]) if "." in plain else 0
        table = self.text_pct if token.endswith("%") else self.text
        return plain in table[k]


def untraceable(folder: Path) -> tuple[list[str], int]:
    """Page tokens of `folder/index.html` missing from `folder/metrics.json`, and how many were checked."""
    html = (folder / "index.html").read_text(encoding="utf-8")
    numbers = Numbers(json.loads((folder / "metrics.json").read_text(encoding="utf-8")))
    tokens = page_numbers(html)
    return [t for t in tokens if not numbers.has(t)], len(tokens)


# --------------------------------------------------------------------------- reports of real inspections
@pytest.fixture(scope="module")
def recsys(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path]:
    frame = make_recsys(3000, seed=1)
    path = tmp_path_factory.mktemp("numbers") / "eval.parquet"
    frame.to_parquet(path, index=False)
    return frame, path


def _model(arch: str, frame: pd.DataFrame, **params: Any) -> torch.nn.Module:
    torch.manual_seed(3)
    config = ModelConfig(arch, recsys_features(frame), tuple(recsys_tasks()), params)
    return build_model(config).eval()


def _report(result: mi.InspectionResult, folder: Path) -> Path:
    write_report(result, folder)
    return folder


@pytest.fixture(scope="module")
def reports(recsys, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Reports of real inspections covering every section: MMoE with causal analyses, a baseline,
    segments and attributions; a two-level PLE (attributions of its two levels); a Shared-Bottom; an OMoE on rows without labels (no causal section)."""
    frame, path = recsys
    root = tmp_path_factory.mktemp("numbers-reports")
    sb = _model("shared_bottom", frame, bottom_hidden=(16,), tower_hidden=(8,))
    mmoe = _model("mmoe", frame, n_experts=4, expert_hidden=(16,), tower_hidden=(8,))
    ple = _model("ple", frame, n_experts=2, n_specific=1, n_levels=2, expert_hidden=(16,), tower_hidden=(8,))
    omoe = _model("omoe", frame, n_experts=3, expert_hidden=(16,), tower_hidden=(8,))
    causal = {"baselines": {"shared_bottom": Baseline(sb)}, "segment_by": "device", "n_boot": 60}
    out = {}
    attribution = {"sample_rows": 64, "n_steps": 8}
    res = mi.inspect(mmoe, path, causal=causal, attribution=attribution, model_name="MMoE (3,000 rows)")
    res.meta["features"] = list(recsys_features(frame).names)
    out["mmoe"] = _report(res, root / "mmoe")
    ple_res = mi.inspect(ple, path, causal={"n_boot": 30, "segment_by": "category"}, attribution=attribution)
    out["ple"] = _report(ple_res, root / "ple")
    out["shared_bottom"] = _report(mi.inspect(sb, path, causal={"n_boot": 30}), root / "sb")
    unlabelled = frame.drop(columns=["click", "purchase"])
    out["no_labels"] = _report(mi.inspect(omoe, unlabelled, causal=True), root / "no-labels")
    return out


@pytest.mark.parametrize("name", ["mmoe", "ple", "shared_bottom", "no_labels"])
def test_every_number_on_the_page_is_in_metrics_json(reports: dict[str, Path], name: str) -> None:
    missing, checked = untraceable(reports[name])
    assert missing == []
    assert checked >= (400 if name in ("mmoe", "ple") else 40)  # tables, cards and evidence were seen


def test_the_mmoe_page_shows_the_causal_numbers(reports: dict[str, Path]) -> None:
    html = (reports["mmoe"] / "index.html").read_text(encoding="utf-8")
    metrics = json.loads((reports["mmoe"] / "metrics.json").read_text(encoding="utf-8"))
    causal = metrics["causal"]["tables"]
    assert causal["baseline_gains"] and causal["segments"] and causal["ablation"]
    gain = causal["baseline_gains"][0]["gain"]
    assert f">{gain:.3f}<" in html or ">&lt;0.001<" in html or ">&gt;-0.001<" in html
    for anchor in ("table-causal_importance", "table-causal_baseline_gains", "table-causal_segments"):
        assert f'id="{anchor}"' in html and f'id="howto-{anchor}"' in html


def test_the_mmoe_page_shows_the_attribution_numbers(reports: dict[str, Path]) -> None:
    html = (reports["mmoe"] / "index.html").read_text(encoding="utf-8")
    metrics = json.loads((reports["mmoe"] / "metrics.json").read_text(encoding="utf-8"))
    tables = metrics["attribution"]["tables"]
    assert tables["gate_features"] and tables["convergence"] and tables["gate_task_agreement"]
    corr = tables["gate_task_agreement"][0]["rank_correlation"]
    assert f">{corr:.3f}<" in html
    for anchor in ("table-attribution_gate_task_agreement", "table-attribution_convergence"):
        assert f'id="{anchor}"' in html and f'id="howto-{anchor}"' in html
    for page in ("shared_bottom", "no_labels"):  # not requested there: one line says so
        text = (reports[page] / "index.html").read_text(encoding="utf-8")
        assert 'id="attributions"' in text and "Attributions were not computed" in text


def test_the_checker_is_not_vacuous(reports: dict[str, Path], tmp_path: Path) -> None:
    """A number that is in no table is caught; the same number inside prose, or inside a name, is not."""
    folder = tmp_path / "copy"
    folder.mkdir()
    (folder / "metrics.json").write_bytes((reports["mmoe"] / "metrics.json").read_bytes())
    html = (reports["mmoe"] / "index.html").read_text(encoding="utf-8")
    planted = html.replace("</main>", '<p>9876.5 <span class="prose">1234.5</span> gate_777 e8765</p></main>')
    (folder / "index.html").write_text(planted, encoding="utf-8")
    missing, _ = untraceable(folder)
    assert missing == ["9876.5"]


def test_number_tokens() -> None:
    text = (
        "TV 0.281 · 3.90 of 4 · 1,000 rows · e0 L1.click experts.10 -0.015 <0.001 95% task_2 [0.004, 0.075]"
    )
    assert NUMBER.findall(text) == [
        "0.281",
        "3.90",
        "4",
        "1,000",
        "-0.015",
        "<0.001",
        "95%",
        "0.004",
        "0.075",
    ]
    numbers = Numbers({"a": [0.2814, 3.899, 4, 1000, -0.0154, 0.0004, 0.95, 0.00449, 0.0751]})
    assert all(numbers.has(t) for t in NUMBER.findall(text))
    assert not numbers.has("0.282") and not numbers.has(">-0.001")
