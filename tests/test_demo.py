"""The demo's library half: deterministic for a seed, and leaves the caller's RNG alone."""

from __future__ import annotations

import torch

from mmoe_inspect.demo import run_demo


def test_run_demo_is_deterministic_and_keeps_global_rng(tmp_path) -> None:
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = run_demo(tmp_path / "a", n_rows=3000, architectures=("omoe", "mmoe"), epochs=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.rand(7)  # whatever the caller does with the global RNG in between must not matter
    b = run_demo(tmp_path / "b", n_rows=3000, architectures=("omoe", "mmoe"), epochs=1)
    assert list(a.metrics["model"]) == ["omoe", "mmoe", "purchase_only"]
    assert a.metrics.equals(b.metrics)
    assert set(a.checkpoints) == {"omoe", "mmoe", "purchase_only"}
    single = a.metrics.set_index("model").loc["purchase_only"]
    assert single.isna()["click auc"] and 0.0 < single["purchase auc"] <= 1.0  # predicts purchase only
