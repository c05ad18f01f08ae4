"""mmoe-inspect: gate analysis and interpretability for trained multi-task Mixture-of-Experts models.

The top level holds what the documented workflow needs, and no more: load or build a model, inspect
it (optionally with causal analyses and attributions), read the result, watch training, run the
demo. Like scikit-learn's `inspection` module (4 names), it stays small on purpose, so what a user
can rely on is clear and a new name is a decision (`tests/test_public_api.py` lists it exactly):

    inspect, InspectConfig, InspectionResult     one inspection and its result
    load_model, LoadedModel, save_checkpoint     checkpoints in and out
    Topology, TaskSpec, GateSpec, ExpertSpec     the explicit topology spec
    FeatureSpec                                  the input columns of the reference models
    Thresholds, Finding                          diagnosis settings and its findings
    run_causal, CausalResult                     expert ablation, counterfactuals, MTL gains
    run_attribution, AttributionResult           Captum feature attributions
    GateMonitor                                  gate health during training
    run_demo                                     the synthetic demo end to end

Everything else lives in its submodule, imported from there:

    mmoe_inspect.recording.recorder   GateRecorder, ForwardCapture, RecordingError (hooks)
    mmoe_inspect.stats                GateStats, PairwiseRoutingStats, ExpertStats (stats.outputs: TaskOutputStats)
    mmoe_inspect.topology.discovery   discover_topology (topology.spec: TopologyError)
    mmoe_inspect.analysis             findings.diagnose, codes (every finding code), review, tables
    mmoe_inspect.data                 schema.CategoricalFeature, sources.DataError
    mmoe_inspect.checkpoint           load_checkpoint (the older loader), CheckpointError
    mmoe_inspect.monitor              read_run_log, collapse_timeline (monitor.lightning: GateMonitorCallback)
    mmoe_inspect.train                fit, evaluate (training helpers for the reference models)

Names are loaded lazily, so `import mmoe_inspect` stays cheap (torch is imported on first use of a
name that needs it).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ._version import __version__

_EXPORTS: dict[str, str] = {
    "inspect": "inspector",
    "InspectConfig": "inspector",
    "InspectionResult": "results",
    "load_model": "loading",
    "LoadedModel": "loading",
    "save_checkpoint": "checkpoint",
    "Topology": "topology.spec",
    "TaskSpec": "topology.spec",
    "GateSpec": "topology.spec",
    "ExpertSpec": "topology.spec",
    "FeatureSpec": "data.schema",
    "Thresholds": "analysis.findings",
    "Finding": "analysis.findings",
    "run_causal": "causal",
    "CausalResult": "causal",
    "run_attribution": "attribution",
    "AttributionResult": "attribution",
    "GateMonitor": "monitor",
    "run_demo": "demo",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

_MOVED: dict[str, str] = {
    "GateRecorder": "recording.recorder",
    "ForwardCapture": "recording.recorder",
    "RecordingError": "recording.recorder",
    "GateStats": "stats",
    "PairwiseRoutingStats": "stats",
    "ExpertStats": "stats",
    "TaskOutputStats": "stats.outputs",
    "discover_topology": "topology.discovery",
    "TopologyError": "topology.spec",
    "diagnose": "analysis.findings",
    "CategoricalFeature": "data.schema",
    "DataError": "data.sources",
    "load_checkpoint": "checkpoint",
    "CheckpointError": "checkpoint",
    "read_run_log": "monitor",
    "collapse_timeline": "monitor",
    "GateMonitorCallback": "monitor.lightning",
    "fit": "train",
    "evaluate": "train",
}
"""Names the top level exported before session 5: the error says where each lives now."""


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        where = f"; import it from mmoe_inspect.{_MOVED[name]}" if name in _MOVED else ""
        raise AttributeError(f"module 'mmoe_inspect' has no attribute {name!r}{where}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
