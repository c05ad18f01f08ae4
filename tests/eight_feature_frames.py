"""The eight-feature frame the planted gate-form tests share (x0..x7 standard normal, `click` = x0 > 0, `buy` =
x1 > 1) and the helpers that inspect a model on it and index its findings by code."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

import mmoe_inspect as mi

FEATURES = [f"x{i}" for i in range(8)]
TASKS = ("click", "buy")


def frame(n: int = 1500) -> pd.DataFrame:
    """`n` rows, seed 0: the features as float32, the two labels as float64."""
    rng = np.random.default_rng(0)
    f = pd.DataFrame(rng.normal(size=(n, len(FEATURES))).astype("float32"), columns=FEATURES)
    f["click"] = (f["x0"] > 0).astype("float64")
    f["buy"] = (f["x1"] > 1).astype("float64")
    return f


def inspect(model: nn.Module, n: int = 1500) -> mi.InspectionResult:
    """`mi.inspect` of the model in eval mode on `frame(n)`, the features fed as one `[batch, 8]` tensor."""
    return mi.inspect(
        model.eval(), frame(n), input_fn=lambda d: torch.tensor(d[FEATURES].to_numpy()), columns=FEATURES
    )


def codes(result: mi.InspectionResult) -> dict[str, set[str]]:
    """Finding code -> the subjects it names."""
    out: dict[str, set[str]] = {}
    for f in result.findings:
        out.setdefault(f.code, set()).add(f.subject)
    return out
