"""How a reviewer should read each report figure: the prose shown next to the figure and in the
report's "How to read" section, keyed by figure name (the names of `figures.FIGURES` and
`figures.TRAINING_FIGURES`).

Kept apart from the drawing code so the wording can be reviewed and edited as text.
"""

from __future__ import annotations

GUIDES: dict[str, str] = {
    "effective_experts": (
        "How many experts each gate really uses: exp of the entropy of its average weights. It equals the number "
        "of experts when the gate spreads its weight evenly on average, and 1 when one expert gets everything. "
        "Near 1 means a collapsed gate; close to E is fine only if individual rows still route differently."
    ),
    "task_expert_heatmap": (
        "Each row is a gate (the task it serves), each column an expert, each cell the average weight that gate "
        "gives that expert. Rows that look alike mean the tasks use the experts alike; a column that is pale in "
        "every row is an expert nobody uses; a row with one dark cell is a gate that relies on one expert. Gray "
        "cells are experts a gate cannot choose (PLE's task-specific experts of other tasks)."
    ),
    "expert_utilization": (
        "The PLE paper's view: per gate, the bar is the average weight of each expert and the black line its "
        "standard deviation across rows. Tall bars with short lines = an expert used the same way for every row; "
        "long lines = the gate switches experts depending on the input (real routing). The dashed line is the "
        "uniform share 1/E."
    ),
    "weight_distributions": (
        "For a sample of rows, the spread of each expert's weight, one violin per task gate. Thin violins stuck "
        "at 1/E mean a uniform gate; violins piled at 0 and 1 mean a polarized (hard) gate; violins of different "
        "tasks at different heights mean the tasks prefer different experts."
    ),
    "gate_entropy": (
        "How spread each row's gate is. At the left line ('one expert', entropy 0) a row uses a single expert; "
        "at the right line ('uniform', log E) it averages all experts evenly. A healthy gate sits between the "
        "two; everything at the right is a uniform gate, everything at the left a collapsed or polarized one."
    ),
    "coactivation": (
        "For each gate and pair of experts, the average product of their weights on the same row divided by "
        "what it would be if the gate picked them independently. Red (above 1×) means the two experts are "
        "weighted together, acting as a team; blue (below 1×) means they replace each other (a row uses one or "
        "the other). All near 1× (white) means the gate's weights barely change from row to row. Experts marked "
        "(~0) get under a tenth of the uniform share 1/E from the gate: their ratios divide by almost nothing "
        "and would read as huge, so their rows and columns are gray."
    ),
    "task_divergence": (
        "For every pair of tasks whose gates mix the same experts, how different their weights are on the same "
        "row, averaged over rows. 0 (white) means the two tasks route identically: the multi-gate model has "
        "become a one-gate model for them. Total variation is the share of weight that would have to move, "
        "from 0 to 1. With two tasks there is one pair, so the figure is one bar per measure."
    ),
    "label_routing": (
        "For each gate of the last level and each binary label, the average weight of every expert on rows "
        "whose label is 1 minus its average on rows whose label is 0. Red cells: the gate leans on that expert "
        "for positives; blue: for negatives; white: routing does not depend on the outcome. A gate whose own "
        "task's row (listed first) is all white routes the same way whatever the label."
    ),
    "causal_importance": (
        "Each cell is how much worse a task gets (on its main metric: AUC for binary tasks, MSE for "
        "regression) when one expert is removed from every gate and the remaining weights are rescaled. Red: "
        "the task needs that expert; blue: the task does better without it; near 0: the expert does nothing "
        "for the task. Hatched cells marked n.s. have an interval that includes zero: no measurable "
        "effect on these rows. Experts that matter to one task only are specialized; an expert that matters "
        "to every task is shared."
    ),
    "causal_counterfactuals": (
        "Each bar is the change of a task's main metric when its own gate is replaced: by another task's gate "
        "(does the task need its own routing?), by a uniform gate (does routing matter at all?), or by its mean "
        "gate, the same weights for every row (does per-row routing matter?). Black lines are 95% intervals; "
        "pale hatched bars have an interval that includes zero. A large drop means the gate does real work."
    ),
    "causal_segments": (
        "For the segments of one data column (e.g. device or category) that route most differently, the "
        "average gate weight of each expert in that segment minus the gate's average over all rows. Red: the "
        "segment leans on that expert; blue: it avoids it. A gate that keys on the column shows strong colors; "
        "pale rows mean every segment is routed alike. Grey rows are segments not judged: their difference is "
        "within the sampling noise for their size, or they have too few rows (under 30); drawn after the "
        "others, never as a color."
    ),
    "attribution_gates": (
        "One panel per task gate (the first few; the CSV has every gate): each column is an expert, each row "
        "an input feature (the top features over the gates shown, in the same order in every panel), each cell the feature's share of everything that moves "
        "the gate's weight on that expert (Integrated Gradients, mean |attribution| over the sampled rows; a "
        "column sums to 1 over all features). A column dominated by one or two dark cells means the gate "
        "sends rows to that expert based on those features; an evenly pale column means no single feature "
        "decides it. Categorical features are attributed at their embeddings, summed over the embedding "
        "dimensions."
    ),
    "attribution_gate_vs_task": (
        "Per task gate, its top features by share of the gate's total attribution (solid bars), and the share "
        "the same features have in the attribution of the task's own prediction (hatched bars). Bars of "
        "similar length mean the gate routes on the features the task predicts from; a feature with a long "
        "solid bar and a short hatched one steers routing without driving the prediction directly. The "
        "agreement table gives the rank correlation over all features and the overlap of the top features."
    ),
    "attribution_experts": (
        "Each column is an expert, each row an input feature (the top features over all experts), each cell "
        "the feature's share of the attribution of the expert's output size (L2 norm). Experts with near "
        "identical columns respond to the same inputs (candidates for redundancy, compare the CKA figure); "
        "an expert whose column differs from the others is specialized on those features."
    ),
    "expert_similarity": (
        "How similar the outputs of two experts are on the same rows (linear CKA: 1 = the same function up "
        "to rotation and scale, 0 = unrelated). Bright off-diagonal cells are redundant experts, often caused "
        "by identical initialization; thick lines separate levels."
    ),
    "task_outputs": (
        "Per task, the observed label rate next to the average prediction (they should be close for a "
        "calibrated model), and the ranking quality (AUC: 0.5 = chance, 1 = perfect; exact, the same value as "
        "everywhere in the report) or the mean squared error for regression tasks."
    ),
    "training_utilization": (
        "One panel per gate: each line is an expert's mean gate weight in one window of training steps, "
        "plotted at the window's last step. Lines that stay apart and keep moving mean the gate is still "
        "learning to route; one line climbing to 1 while the others fall to 0 is a gate collapsing onto one "
        "expert, and the dotted line marks the step at which the monitor first flagged it."
    ),
    "training_entropy": (
        "Left: effective experts (exp of the entropy of the window's mean gate), from the number of experts "
        "(even use) down to 1 (one expert gets everything). Right: the mean per-row entropy divided by log E, "
        "from 1 (every row averages all experts) to 0 (every row picks one expert). A healthy run usually "
        "lowers per-row entropy while keeping several effective experts; both falling together is a collapse."
    ),
    "training_divergence": (
        "For every pair of task gates over the same experts, the mean per-row total variation between their "
        "weights in each window (0 = the two tasks route identically, 1 = on disjoint experts). A curve that "
        "falls to 0 means the task gates converged to the same routing, and the multi-gate model acts as a "
        "one-gate model from that step on."
    ),
    "training_loss": (
        "The training loss the loop logged with each window (`mon.step(loss=...)`), and the learning rate "
        "when it changed. Read a finding's dotted line against it: a gate that collapses while the loss "
        "stalls or jumps points at the step size (learning rate) or the input scale, not at the data."
    ),
}
