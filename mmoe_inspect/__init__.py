"""mmoe-inspect: gate analysis and interpretability for trained multi-task Mixture-of-Experts models.

The public API is re-exported here and loaded lazily, so `import mmoe_inspect` stays cheap (torch is
imported on first use of a name that needs it).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ._version import __version__

_EXPORTS: dict[str, str] = {
    "inspect": "inspector",
    "InspectConfig": "inspector",
    "InspectionResult": "results",
    "Finding": "analysis.findings",
    "Thresholds": "analysis.findings",
    "diagnose": "analysis.findings",
    "GateRecorder": "recording.recorder",
    "ForwardCapture": "recording.recorder",
    "RecordingError": "recording.recorder",
    "Topology": "topology.spec",
    "TaskSpec": "topology.spec",
    "GateSpec": "topology.spec",
    "ExpertSpec": "topology.spec",
    "TopologyError": "topology.spec",
    "discover_topology": "topology.discovery",
    "FeatureSpec": "data.schema",
    "CategoricalFeature": "data.schema",
    "DataError": "data.sources",
    "GateStats": "stats",
    "PairwiseRoutingStats": "stats",
    "ExpertStats": "stats",
    "TaskOutputStats": "stats.outputs",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "CheckpointError": "checkpoint",
    "fit": "train",
    "evaluate": "train",
    "run_demo": "demo",
    "GateMonitor": "monitor",
    "read_run_log": "monitor",
    "collapse_timeline": "monitor",
    "GateMonitorCallback": "monitor.lightning",  # needs the lightning extra; imported on use
    "run_attribution": "attribution",
    "AttributionResult": "attribution",
    "run_causal": "causal",
    "CausalResult": "causal",
    "load_model": "loading",
    "LoadedModel": "loading",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mmoe_inspect' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
