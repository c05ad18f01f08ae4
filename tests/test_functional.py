"""Kernels of `mmoe_inspect.functional` against naive NumPy references and hand-computable cases."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from mmoe_inspect.functional import (
    cv_squared,
    effective_experts,
    gate_entropy,
    input_dependence,
    js_divergence,
    linear_cka,
    linear_cka_from_moments,
    row_hash,
    splitmix64,
    switch_balance,
    task_expert_mutual_information,
    total_variation,
    xlogx,
)

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    """Small tensors: one intra-op thread avoids OpenMP stalls when the (2-core) machine is oversubscribed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_entropy(p: np.ndarray) -> np.ndarray:
    out = np.zeros(p.shape[:-1])
    for idx in np.ndindex(*p.shape[:-1]):
        out[idx] = -sum(v * math.log(v) for v in p[idx] if v > 0)
    return out


def _np_kl(p: np.ndarray, q: np.ndarray) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


@pytest.fixture
def gates() -> np.ndarray:
    g = _softmax(RNG.normal(size=(200, 6)) * 3)
    g[:10] = np.eye(6)[RNG.integers(0, 6, 10)]  # exact zeros
    return g


def test_xlogx_zero_is_zero() -> None:
    p = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)
    assert torch.equal(xlogx(p)[:2], torch.zeros(2, dtype=torch.float64))
    assert xlogx(p)[2].item() == pytest.approx(0.5 * math.log(0.5), abs=1e-15)


def test_gate_entropy_matches_numpy(gates: np.ndarray) -> None:
    got = gate_entropy(torch.from_numpy(gates))
    np.testing.assert_allclose(got.numpy(), _np_entropy(gates), rtol=0, atol=1e-12)
    assert got.shape == (200,)


@pytest.mark.parametrize("n_experts", [1, 2, 8])
def test_uniform_gate_entropy_and_effective_experts(n_experts: int) -> None:
    g = torch.full((5, n_experts), 1.0 / n_experts, dtype=torch.float64)
    torch.testing.assert_close(gate_entropy(g), torch.full((5,), math.log(n_experts), dtype=torch.float64))
    assert effective_experts(g[0]).item() == pytest.approx(n_experts, rel=1e-12)


def test_one_hot_entropy_is_zero_and_effective_experts_one() -> None:
    g = torch.eye(4, dtype=torch.float64)
    assert torch.equal(gate_entropy(g), torch.zeros(4, dtype=torch.float64))
    assert effective_experts(g[2]).item() == 1.0


def test_effective_experts_matches_numpy(gates: np.ndarray) -> None:
    mean = gates.mean(0)
    assert effective_experts(torch.from_numpy(mean)).item() == pytest.approx(
        math.exp(_np_entropy(mean)), rel=1e-12
    )


def test_js_divergence_and_tv_match_numpy(gates: np.ndarray) -> None:
    p, q = gates[:100], gates[100:]
    m = (p + q) / 2
    ref_js = np.array([0.5 * _np_kl(a, c) + 0.5 * _np_kl(b, c) for a, b, c in zip(p, q, m, strict=True)])
    got = js_divergence(torch.from_numpy(p), torch.from_numpy(q))
    np.testing.assert_allclose(got.numpy(), ref_js, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        total_variation(torch.from_numpy(p), torch.from_numpy(q)).numpy(),
        0.5 * np.abs(p - q).sum(1),
        rtol=0,
        atol=1e-15,
    )
    assert float(got.max()) <= math.log(2) + 1e-12


def test_js_divergence_hand_cases() -> None:
    p = torch.tensor([[1.0, 0.0], [0.3, 0.7]], dtype=torch.float64)
    q = torch.tensor([[0.0, 1.0], [0.3, 0.7]], dtype=torch.float64)
    torch.testing.assert_close(js_divergence(p, q), torch.tensor([math.log(2), 0.0], dtype=torch.float64))
    torch.testing.assert_close(total_variation(p, q), torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert js_divergence(p, q)[1].item() == 0.0  # exactly zero, not rounding noise


def test_cv_squared_matches_numpy_and_edge_cases() -> None:
    x = RNG.random((3, 7))
    np.testing.assert_allclose(
        cv_squared(torch.from_numpy(x)).numpy(), x.var(-1) / x.mean(-1) ** 2, rtol=1e-12
    )
    assert cv_squared(torch.ones(5, dtype=torch.float64)).item() == 0.0
    assert cv_squared(torch.zeros(5, dtype=torch.float64)).item() == 0.0
    # All load on one of E experts: var/mean² = E - 1.
    assert cv_squared(torch.tensor([4.0, 0, 0, 0], dtype=torch.float64)).item() == pytest.approx(3.0)


def test_switch_balance() -> None:
    e = 4
    uniform = torch.full((e,), 1.0 / e, dtype=torch.float64)
    assert switch_balance(uniform, uniform).item() == pytest.approx(1.0)
    collapsed = torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)
    assert switch_balance(collapsed, collapsed).item() == pytest.approx(e)
    f, p = RNG.random(e), RNG.random(e)
    assert switch_balance(torch.from_numpy(f), torch.from_numpy(p)).item() == pytest.approx(e * (f * p).sum())


def _np_mi(u: np.ndarray, prior: np.ndarray) -> float:
    pet = u / u.sum(1, keepdims=True)
    pe = prior @ pet
    return sum(
        prior[t] * pet[t, e] * math.log(pet[t, e] / pe[e])
        for t in range(u.shape[0])
        for e in range(u.shape[1])
        if pet[t, e] > 0
    )


def test_mutual_information_matches_numpy() -> None:
    u = _softmax(RNG.normal(size=(3, 5)) * 2)
    prior = np.array([0.5, 0.3, 0.2])
    got = task_expert_mutual_information(torch.from_numpy(u), torch.from_numpy(prior))
    assert got.item() == pytest.approx(_np_mi(u, prior), abs=1e-12)
    uniform = task_expert_mutual_information(torch.from_numpy(u))
    assert uniform.item() == pytest.approx(_np_mi(u, np.full(3, 1 / 3)), abs=1e-12)


def test_mutual_information_hand_cases() -> None:
    same = torch.tensor([[0.2, 0.3, 0.5]] * 4, dtype=torch.float64)
    assert task_expert_mutual_information(same).item() == pytest.approx(0.0, abs=1e-15)
    uniform = torch.full((3, 6), 1 / 6, dtype=torch.float64)
    assert task_expert_mutual_information(uniform).item() == pytest.approx(0.0, abs=1e-15)
    disjoint = torch.eye(3, 5, dtype=torch.float64)  # task t uses only expert t
    assert task_expert_mutual_information(disjoint).item() == pytest.approx(math.log(3), abs=1e-12)
    prior = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)  # MI = H(prior) for disjoint tasks
    assert task_expert_mutual_information(disjoint, prior).item() == pytest.approx(
        1.5 * math.log(2), abs=1e-12
    )


def _moments(g: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(g.mean(0)), torch.from_numpy(g.var(0))


def test_input_dependence_hand_cases() -> None:
    row = _softmax(RNG.normal(size=5))
    assert input_dependence(*_moments(np.tile(row, (50, 1)))).item() == pytest.approx(0.0, abs=1e-12)
    one_hot = np.eye(5)[RNG.integers(0, 5, 400)]
    assert input_dependence(*_moments(one_hot)).item() == pytest.approx(1.0, abs=1e-12)
    constant_one_hot = np.tile(np.eye(5)[2], (30, 1))
    assert input_dependence(*_moments(constant_one_hot)).item() == 0.0
    soft = _softmax(RNG.normal(size=(300, 5)))
    value = input_dependence(*_moments(soft)).item()
    mean = soft.mean(0)
    assert value == pytest.approx(soft.var(0).sum() / (1 - (mean**2).sum()), rel=1e-12)
    assert 0.0 < value < 1.0


def _np_cka_hsic(x: np.ndarray, y: np.ndarray) -> float:
    """Reference via Gram matrices: HSIC(K, L) = tr(K H L H) with H the centering matrix."""
    n = x.shape[0]
    h = np.eye(n) - 1.0 / n
    k, ll = x @ x.T, y @ y.T

    def hsic(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.trace(a @ h @ b @ h))

    return hsic(k, ll) / math.sqrt(hsic(k, k) * hsic(ll, ll))


def test_linear_cka_matches_hsic_reference() -> None:
    x = RNG.normal(size=(60, 7))
    y = x[:, :4] @ RNG.normal(size=(4, 3)) + 0.5 * RNG.normal(size=(60, 3))
    got = linear_cka(torch.from_numpy(x), torch.from_numpy(y)).item()
    assert got == pytest.approx(_np_cka_hsic(x, y), abs=1e-12)


def test_linear_cka_invariances() -> None:
    x = torch.from_numpy(RNG.normal(size=(100, 6)))
    q, _ = torch.linalg.qr(torch.from_numpy(RNG.normal(size=(6, 6))))
    assert linear_cka(x, x).item() == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 3.0 * x @ q + 5.0).item() == pytest.approx(1.0, abs=1e-12)
    independent = torch.from_numpy(RNG.normal(size=(5000, 6)))
    assert linear_cka(torch.from_numpy(RNG.normal(size=(5000, 6))), independent).item() < 0.01


def test_linear_cka_from_moments_matches_direct() -> None:
    dims = (3, 5, 2)
    z = RNG.normal(size=(80, 10))
    z[:, 8:] = z[:, :2] * 2 + 1  # third block is a linear copy of part of the first
    zt = torch.from_numpy(z)
    got = linear_cka_from_moments(80, zt.sum(0), zt.T @ zt, dims)
    blocks = torch.split(zt, dims, dim=1)
    for a in range(3):
        for b in range(3):
            assert got[a, b].item() == pytest.approx(linear_cka(blocks[a], blocks[b]).item(), abs=1e-10)
    torch.testing.assert_close(got, got.T)
    with pytest.raises(ValueError, match="dims"):
        linear_cka_from_moments(80, zt.sum(0), zt.T @ zt, (3, 3))


def test_row_hash_matches_python_splitmix64() -> None:
    idx = [0, 1, 2, 12345, 2**40 + 7, 2**62, -3]
    for seed in (0, 1, 2**33):
        got = row_hash(torch.tensor(idx), seed).tolist()
        ref = [
            (splitmix64((i * 0x9E3779B97F4A7C15 + splitmix64(seed)) & (2**64 - 1)) >> 11) / 2**53 for i in idx
        ]
        assert got == ref


def test_splitmix64_reference_vector() -> None:
    # First output of the splitmix64 generator seeded with 0 (Vigna's reference implementation).
    assert splitmix64(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF


def test_row_hash_uniform_deterministic_and_seeded() -> None:
    idx = torch.arange(200_000)
    keys = row_hash(idx, 0)
    assert keys.dtype == torch.float64 and keys.min() >= 0 and keys.max() < 1
    counts = torch.histc(keys.float(), bins=10, min=0, max=1)
    assert (counts - 20_000).abs().max() < 600  # ~4 sigma
    assert torch.equal(row_hash(idx[1234:5678], 0), keys[1234:5678])  # independent of batching
    assert torch.unique(keys).numel() == keys.numel()
    other = row_hash(idx, 1)
    assert abs(float(torch.corrcoef(torch.stack([keys, other]))[0, 1])) < 0.01
    assert torch.equal(row_hash(idx[:10].int(), 0), keys[:10])
    assert torch.equal(idx, torch.arange(200_000))  # the in-place hashing never touches the input
