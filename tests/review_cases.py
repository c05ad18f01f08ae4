"""Planted review cases (shared by test_review.py and the browser test): tiny exact models, no training.

* `at_chance`: a working click task and a 2%-positive purchase task whose labels are independent of
  everything (its AUC interval holds 0.5).
* `collapsed_dead`: purchase's gate collapsed onto an expert that outputs zero for every row, so the
  purchase prediction is one constant: the task is at chance because of the collapse.
* `harmless_duplicate`: purchase's gate collapsed onto expert 0, whose exact duplicate (expert 1) takes
  over when it is removed: the measured impact is nil, so the collapse is not critical.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

import mmoe_inspect as mi
from mmoe_inspect.testing.planted import PlantedMMoE

N_ROWS = 6000
CASES = ("at_chance", "collapsed_dead", "harmless_duplicate")


def _model(case: str) -> PlantedMMoE:
    tasks = ("click", "purchase")
    if case == "collapsed_dead":
        return PlantedMMoE(tasks=tasks, gate_modes={"purchase": "collapsed:1"}, inactive_experts=(1,), seed=1)
    if case == "harmless_duplicate":
        return PlantedMMoE(
            n_experts=2, tasks=tasks, gate_modes={"purchase": "collapsed:0"}, redundant_experts=(0, 1), seed=2
        )
    return PlantedMMoE(tasks=tasks, seed=3)


def _frame(model: PlantedMMoE, case: str, n: int = N_ROWS) -> pd.DataFrame:
    """Features x0..x7 and labels: click (and, except in `at_chance`, purchase) drawn from the model's own
    ranking, so they are learnable by construction; `at_chance`'s purchase is 2% coin flips."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(n, model.n_features, generator=gen)
    with torch.no_grad():
        p = model(x)
    frame = pd.DataFrame(x.numpy(), columns=[f"x{i}" for i in range(model.n_features)])
    rng = np.random.default_rng(11)
    for i, task in enumerate(model.task_names):
        score = p[:, i].numpy().astype(np.float64)
        z = (score - score.mean()) / (score.std() + 1e-12)
        rate = 0.3 if task == "click" else 0.05
        logit = np.log(rate / (1 - rate)) + 2.0 * z
        frame[task] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float64)
    if case == "at_chance":
        frame["purchase"] = (rng.random(n) < 0.02).astype(np.float64)
    elif case == "collapsed_dead":
        frame["purchase"] = (rng.random(n) < 0.05).astype(np.float64)
    return frame


def inspect_case(case: str, *, causal: bool = True) -> tuple[mi.InspectionResult, pd.DataFrame]:
    model = _model(case)
    frame = _frame(model, case)
    result = mi.inspect(
        model,
        frame,
        input_fn=lambda f: torch.tensor(f[[f"x{i}" for i in range(model.n_features)]].to_numpy(np.float32)),
        columns=[f"x{i}" for i in range(model.n_features)],
        causal={"n_boot": 200} if causal else False,
        model_name=f"planted {case}",
    )
    return result, frame
