"""The MMoE paper's synthetic two-task regression data with controllable task correlation.

Ma et al., KDD 2018, section 3.2: orthogonal unit vectors u1, u2 in R^d; w1 = c*u1,
w2 = c*(rho*u1 + sqrt(1 - rho^2)*u2); x ~ N(0, I_d);
y_i = w_i.x + sum_{j=1..m} sin(alpha_j * w_i.x + beta_j) + eps_i, eps_i ~ N(0, noise_std^2).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mmoe_inspect.data.schema import FeatureSpec
from mmoe_inspect.topology.spec import TaskSpec


def make_synthetic(
    n_rows: int,
    rho: float,
    *,
    d: int = 100,
    c: float = 1.0,
    m: int = 10,
    noise_std: float = 0.1,
    seed: int = 0,
) -> pd.DataFrame:
    """Rows of the paper's generator: float32 columns x0..x{d-1}, regression labels y1, y2.

    The task parameters (u1, u2, alpha_j, beta_j, all standard normal draws before orthonormalizing)
    depend only on `seed`, `d` and `m`, so frames of any size or correlation share them; inputs and
    noise come from separate streams of the same seed, so a larger frame extends a smaller one.
    """
    if not -1.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [-1, 1], got {rho}")
    if d < 2:
        raise ValueError(f"d must be at least 2 (two orthogonal directions), got {d}")
    params = np.random.default_rng([seed, 0])
    u, _ = np.linalg.qr(params.standard_normal((d, 2)))  # orthonormal columns u1, u2
    alpha = params.standard_normal(m)
    beta = params.standard_normal(m)
    w1 = c * u[:, 0]
    w2 = c * (rho * u[:, 0] + np.sqrt(1.0 - rho**2) * u[:, 1])

    x = np.random.default_rng([seed, 1]).standard_normal((n_rows, d))
    eps = np.random.default_rng([seed, 2]).normal(0.0, noise_std, size=(n_rows, 2))
    labels = {}
    for i, w in enumerate((w1, w2)):
        z = x @ w  # [n_rows]
        labels[f"y{i + 1}"] = (z + np.sin(np.outer(z, alpha) + beta).sum(axis=1) + eps[:, i]).astype(
            np.float32
        )
    frame = pd.DataFrame(x.astype(np.float32), columns=[f"x{j}" for j in range(d)])
    return frame.assign(**labels)


def synthetic_tasks() -> tuple[TaskSpec, TaskSpec]:
    """The two regression tasks y1, y2 of `make_synthetic`."""
    return (
        TaskSpec("y1", "regression", output="y1", probability=False),
        TaskSpec("y2", "regression", output="y2", probability=False),
    )


def synthetic_features(d: int = 100) -> FeatureSpec:
    """The dense inputs x0..x{d-1} of `make_synthetic`."""
    return FeatureSpec.dense_only(d)
