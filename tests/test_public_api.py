"""The public surface: the top level's exact names (growth is a decision: edit this list and the module
docstring of `mmoe_inspect` together), and the typed contract of `InspectionResult`."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pandas as pd
import pytest

import mmoe_inspect as mi
from mmoe_inspect.results import TABLE_DESCRIPTIONS, InspectionResult
from mmoe_inspect.topology.spec import ExpertSpec, GateSpec, TaskSpec, Topology

PUBLIC = [
    "__version__",
    "AttributionResult",
    "CausalResult",
    "ExpertSpec",
    "FeatureSpec",
    "Finding",
    "GateMonitor",
    "GateSpec",
    "InspectConfig",
    "InspectionResult",
    "LoadedModel",
    "TaskSpec",
    "Thresholds",
    "Topology",
    "inspect",
    "load_model",
    "run_attribution",
    "run_causal",
    "run_demo",
    "save_checkpoint",
]


def test_the_top_level_is_exactly_the_documented_list() -> None:
    assert mi.__all__ == PUBLIC
    assert dir(mi) == sorted(PUBLIC)  # dir() sorts what __dir__ returns
    for name in PUBLIC:  # every name resolves (lazily imported on first use)
        assert getattr(mi, name) is not None, name
    doc = mi.__doc__ or ""
    assert all(name in doc for name in PUBLIC if name != "__version__")  # the docstring lists each


@pytest.mark.parametrize("name", sorted(mi._MOVED))
def test_low_level_names_live_in_their_submodules(name: str) -> None:
    """A name the top level used to export fails with the module to import it from, and is there."""
    with pytest.raises(AttributeError, match=name) as err:
        getattr(mi, name)
    module = str(err.value).rpartition("import it from ")[2]
    assert getattr(importlib.import_module(module), name) is not None
    with pytest.raises(AttributeError, match=r"no attribute 'nothing_here'$"):
        mi.nothing_here  # noqa: B018


def test_results_imports_neither_the_analyses_nor_the_monitor() -> None:
    """`results.py` types `causal`/`attribution` for checkers only: reading a result loads no analysis code."""
    code = (
        "import sys, mmoe_inspect.results;"
        "print(sorted(m for m in sys.modules if m.split('.')[:2] in "
        "(['mmoe_inspect', 'causal'], ['mmoe_inspect', 'attribution'], ['mmoe_inspect', 'monitor'])))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _result() -> InspectionResult:
    topo = Topology(
        tasks=(TaskSpec("ctr"),),
        experts=(ExpertSpec("e0", "experts.0"), ExpertSpec("e1", "experts.1")),
        gates=(GateSpec("ctr", "gates.0", experts=("e0", "e1"), task="ctr"),),
    )
    util = pd.DataFrame({"gate": ["ctr"], "expert": ["e0"], "mean": [0.5]})
    return InspectionResult(
        topo, {"utilization": util}, [], "fine", 10, "rows.parquet", "m", meta={"seed": 0}
    )


def test_table_names_close_tables_on_a_typo() -> None:
    result = _result()
    assert result.table("utilization").shape == (1, 3)
    assert result.table("experts").empty  # a known table this inspection did not compute
    with pytest.raises(KeyError, match="did you mean 'utilization'") as err:
        result.table("utilisation")
    assert all(name in str(err.value) for name in TABLE_DESCRIPTIONS)


def test_skipped_is_typed_and_kept_in_metrics_under_the_old_keys() -> None:
    result = _result()
    assert result.skipped == {} and result.skip_reason("causal") is None and result.causal is None
    result.skipped["causal"] = "the data has no label column for any task"
    result.skipped["attribution"] = "turned off (--no-attributions)"
    meta = json.loads(result.to_json())["meta"]
    assert meta == {
        "seed": 0,
        "causal_skipped": "the data has no label column for any task",
        "attribution_skipped": "turned off (--no-attributions)",
    }
    assert result.skip_reason("attribution") == "turned off (--no-attributions)"
