"""Feature attributions with Captum: which input features drive each gate, each expert and each task.

"Expert 2 is used by purchase" invites "for which inputs?". `run_attribution` answers with
Integrated Gradients over a sample of rows:

* gate attributions: for each gate and expert e, the gate weight g[e] attributed to the features
  (a feature × expert table per gate, mean |attribution| and mean signed attribution);
* expert attributions: the L2 norm of each expert's output;
* task attributions: each task's prediction, to compare with its gate (`gate_task_agreement`).

Dense features are attributed in the model input, categorical ones at their embedding outputs
(summed over the embedding dims); ids that no embedding reads fall back to FeatureAblation. The run
is time-bounded and says what it covered.

Examples::

    >>> from mmoe_inspect.attribution import run_attribution
    >>> res = run_attribution(mmoe, "eval.parquet", sample_rows=256, n_steps=16, budget_seconds=30)
    >>> res.gate_features.query("gate == 'purchase'").head(3)   # the 3 features driving that gate
    >>> res.flagged, res.skipped                                  # convergence problems, budget cut
"""

from mmoe_inspect.attribution._inputs import (
    AttributionError,
    DenseSlot,
    EmbeddingCall,
    EmbeddingSlot,
    InputLayer,
    Layout,
    Place,
    build_input_layer,
    probe_embeddings,
)
from mmoe_inspect.attribution._targets import EXPERT_OUTPUT, AttributionSession, Target, list_targets
from mmoe_inspect.attribution.options import AttributionOptions
from mmoe_inspect.attribution.result import TABLE_DESCRIPTIONS, AttributionResult
from mmoe_inspect.attribution.run import BASELINES, METHODS, TARGETS, run_attribution, sample_frame

__all__ = [
    "BASELINES",
    "EXPERT_OUTPUT",
    "METHODS",
    "TABLE_DESCRIPTIONS",
    "TARGETS",
    "AttributionError",
    "AttributionOptions",
    "AttributionResult",
    "AttributionSession",
    "DenseSlot",
    "EmbeddingCall",
    "EmbeddingSlot",
    "InputLayer",
    "Layout",
    "Place",
    "Target",
    "build_input_layer",
    "list_targets",
    "probe_embeddings",
    "run_attribution",
    "sample_frame",
]
