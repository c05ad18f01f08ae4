"""Causal analyses of trained multi-task MoE models: what the experts and gates actually DO for each task.

Gate weights say where weight goes, not what matters. These analyses intervene on the gate outputs
and measure task metrics on labelled data, with paired intervals (DeLong for AUC, CLT for loss means,
or a paired bootstrap of the rows):

* expert ablation (`ablation`): a task × expert importance matrix;
* gate counterfactuals (`counterfactual`): another task's gate, a uniform gate, the mean gate;
* sparse-target gains (`gains`): shared-expert dependence, and "MTL gain" against baselines;
* segment routing (`segments`): the mean gate per value of a data column.

`run_causal(model, data, ...)` runs them all in one streaming pass and returns a `CausalResult`.

Examples::

    >>> from mmoe_inspect.causal import run_causal
    >>> res = run_causal(mmoe, eval_frame, baselines={"single": purchase_only}, segment_by="category")
    >>> res.importance()        # [tasks, experts] AUC importance
    >>> res.baseline_gains      # MTL gain per task and baseline, with CIs
"""

from mmoe_inspect.causal._engine import INTACT, STRATEGIES, PlannedVariant
from mmoe_inspect.causal.ablation import ablation_table, ablation_variants, importance_matrix
from mmoe_inspect.causal.counterfactual import counterfactual_table, counterfactual_variants
from mmoe_inspect.causal.gains import Baseline, mtl_gain
from mmoe_inspect.causal.interventions import (
    Ablate,
    GateIntervention,
    InterventionError,
    Replace,
    edit_gate_output,
    repeat_rows,
)
from mmoe_inspect.causal.metrics import Evaluation, bootstrap_metric, paired_bootstrap, roc_auc
from mmoe_inspect.causal.options import CausalOptions
from mmoe_inspect.causal.result import TABLE_DESCRIPTIONS, CausalResult
from mmoe_inspect.causal.run import ANALYSES, run_causal
from mmoe_inspect.causal.segments import SegmentRouting

__all__ = [
    "ANALYSES",
    "INTACT",
    "STRATEGIES",
    "TABLE_DESCRIPTIONS",
    "Ablate",
    "Baseline",
    "CausalOptions",
    "CausalResult",
    "Evaluation",
    "GateIntervention",
    "InterventionError",
    "PlannedVariant",
    "Replace",
    "SegmentRouting",
    "ablation_table",
    "ablation_variants",
    "bootstrap_metric",
    "counterfactual_table",
    "counterfactual_variants",
    "edit_gate_output",
    "importance_matrix",
    "mtl_gain",
    "paired_bootstrap",
    "repeat_rows",
    "roc_auc",
    "run_causal",
]
