"""`ExpertStats` fed float32 (or 16-bit) outputs: the Gram update runs in float32 on rows centered by
each update's mean and goes back to raw float64 moments (Chan's formula). Its CKA equals float64
`linear_cka` on the same rows within `CKA_FLOAT32_ATOL` on planted hard cases (mean >> spread,
near-duplicate, independent, dead experts), stays batch- and merge-invariant within that bound, and
the constant-block guard still flags constant blocks (exactly, or up to float32 rounding) and only those.
Where the float32 product would not hold (TF32/bfloat16 matmul settings, outputs whose float32 squares
underflow or overflow) the update takes the float64 product.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_properties import (
    SETTINGS,
    check_merge_orders,
    expert_feed,
    expert_outputs,
    make_expert,
    merged,
    shards_of,
)

from mmoe_inspect.functional import linear_cka
from mmoe_inspect.stats import ExpertStats, ExpertSummary

# |ΔCKA| of the float32 Gram path against float64 linear_cka: measured at most 2.5e-7 over 20 seeds of
# the planted cases below x 1, 2 and 4 updates of 268 or 1,100 rows, 8 x 128 and 8 x 16 experts (the
# largest on 8 x 16: fewer entries per block to average the float32 accumulation error out; see
# `python bench/expert_gram_bench.py --parts precision`); twice that, half the target of 1e-6.
# The float64 path stays within 1e-9.
CKA_FLOAT32_ATOL = 5e-7
CASES = ("mean/std=100", "near-duplicate", "independent", "dead")


def planted(case: str, n: int, e: int, d: int, seed: int = 1) -> torch.Tensor:
    """``[n, E, d]`` float32 outputs: ReLU experts of a shared input, in one of `CASES`."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=gen)
    if case == "mean/std=100":  # ReLU outputs far from zero: mean 100, spread 1
        h = [x @ torch.randn(16, d, generator=gen) for _ in range(e)]
        out = [torch.relu(100.0 + hi / hi.std()) for hi in h]
    elif case == "near-duplicate":  # one base + 3% noise each: CKA ~ 0.999
        base = torch.relu(x @ torch.randn(16, d, generator=gen))
        out = [base + 0.03 * base.std() * torch.randn(n, d, generator=gen) for _ in range(e)]
    elif case == "independent":
        out = [torch.relu(torch.randn(n, d, generator=gen)) for _ in range(e)]
    else:  # "dead": the last expert is always zero
        out = [torch.relu(x @ torch.randn(16, d, generator=gen)) for _ in range(e - 1)] + [torch.zeros(n, d)]
    return torch.stack(out, dim=1).float()


def reference_cka(z: torch.Tensor) -> torch.Tensor:
    """``[E, E]`` float64 `linear_cka` of every expert pair of ``z [n, E, d]``."""
    z = z.double()
    e = z.shape[1]
    return torch.stack([torch.stack([linear_cka(z[:, a], z[:, b]) for b in range(e)]) for a in range(e)])


def streamed(z: torch.Tensor, k: int, **kwargs) -> ExpertSummary:
    """`ExpertStats` (every row sampled) fed ``z [n, E, d]`` in updates of ``k`` rows."""
    n, e, d = z.shape
    m = ExpertStats(e, d, sample_rate=1.0, max_sample_per_update=max(k, 1), **kwargs)
    for lo in range(0, n, k):
        m.update(z[lo : lo + k], torch.arange(lo, min(lo + k, n)))
    return m.compute()


def assert_cka_close(got: torch.Tensor, want: torch.Tensor, atol: float = CKA_FLOAT32_ATOL) -> None:
    torch.testing.assert_close(got, want, atol=atol, rtol=0, equal_nan=True)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(("k", "d"), [(268, 128), (1100, 16)], ids=["8x128-268rows", "8x16-1100rows"])
def test_float32_gram_matches_float64_reference(case: str, k: int, d: int) -> None:
    z = planted(case, 4 * k, 8, d)
    ref = reference_cka(z)
    got = streamed(z, k).cka
    assert_cka_close(got, ref)
    assert got.dtype == torch.float64
    if case == "dead":
        assert got[7].isnan().all() and got[:7, :7].isfinite().all()
    else:
        assert got.isfinite().all()
    if case == "near-duplicate":
        assert ref[0, 1] > 0.998
    # float64 outputs keep the float64 product: the same rows agree to 1e-9
    assert_cka_close(streamed(z.double(), k).cka, ref, atol=1e-9)


def test_centering_keeps_the_spread_when_the_mean_is_far_from_zero() -> None:
    """mean/std = 1e4: a raw float32 Gram would keep ~no digit of the spread; the centered one keeps
    it, on every batching, and whichever rows an update holds."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(600, 4, generator=gen)
    z = torch.stack([1e4 + x @ torch.randn(4, 6, generator=gen) for _ in range(3)], dim=1).float()
    ref = reference_cka(z)
    assert ref.min() < 0.9  # real, different spreads
    for k in (600, 97, 5):
        assert_cka_close(streamed(z, k).cka, ref)


def test_constant_blocks_are_flagged_and_small_real_variation_is_not() -> None:
    """Expert 0 constant (0.7), expert 1 constant up to float32 rounding (a few ulps of 0.7), expert 2
    with relative spread 1e-4 around 1 (real variation), expert 3 plain ReLU."""
    gen = torch.Generator().manual_seed(2)
    n, d = 500, 8
    ulps = torch.randint(-2, 3, (n, d), generator=gen).float() * torch.finfo(torch.float32).eps
    x = torch.randn(n, 5, generator=gen)
    z = torch.stack(
        [
            torch.full((n, d), 0.7),
            0.7 * (1 + ulps),
            1.0 + 1e-4 * (x @ torch.randn(5, d, generator=gen)),
            torch.relu(x @ torch.randn(5, d, generator=gen)),
        ],
        dim=1,
    ).float()
    assert z[:, 1].unique().numel() > 1  # really not constant in float32
    ref = reference_cka(z)
    for k in (n, 128, 7):
        for sync_free in (False, True):
            cka = streamed(z, k, sync_free=sync_free).cka
            assert cka[:2].isnan().all() and cka[:, :2].isnan().all(), (k, sync_free)
            assert cka[2:, 2:].isfinite().all(), (k, sync_free)
            assert_cka_close(cka[2:, 2:], ref[2:, 2:])


@pytest.mark.parametrize("sync_free", [False, True], ids=["host", "sync-free"])
def test_float32_batch_split_merge_and_sync_free_agree(sync_free: bool) -> None:
    z = planted("near-duplicate", 900, 4, 96)  # Σd = 384: the block-panel path
    z[13::200, 2, 5] = float("nan")  # rows excluded everywhere
    one_pass = streamed(z, 900)
    kept = z[z.isfinite().all(2).all(1)]
    assert one_pass.n_sampled == len(kept) == 895
    assert_cka_close(one_pass.cka, reference_cka(kept))
    for k in (300, 61):
        s = streamed(z, k, sync_free=sync_free)
        assert_cka_close(s.cka, one_pass.cka)
        assert s.n_sampled == one_pass.n_sampled and torch.equal(s.zero_fraction, one_pass.zero_fraction)
    a = ExpertStats(4, 96, sample_rate=1.0, max_sample_per_update=900, sync_free=sync_free)
    b = ExpertStats(4, 96, sample_rate=1.0, max_sample_per_update=900, sync_free=sync_free)
    a.update(z[:350], torch.arange(350))
    b.update(z[350:], torch.arange(350, 900))
    a.merge_state(b)
    assert_cka_close(a.compute().cka, one_pass.cka)


def test_16_bit_outputs_take_the_float32_path() -> None:
    z = planted("dead", 700, 4, 8)
    for dtype in (torch.float16, torch.bfloat16):
        cast = z.to(dtype)
        got, want = streamed(cast, 700), streamed(cast.double(), 700)
        assert_cka_close(got.cka, want.cka)
        assert got.cka[3].isnan().all()
        assert dataclasses.replace(got, cka=want.cka, mean_norm=want.mean_norm).n == want.n


@SETTINGS
@given(data=st.data(), outs=expert_outputs())
def test_float32_merge_batches_and_order(data, outs) -> None:
    """The merge/batching/order properties of tests/test_properties.py on float32 outputs (CKA within
    `CKA_FLOAT32_ATOL`; counts and zero fractions exact)."""
    outs = [o.float() for o in outs]
    n, dims, _, feed = expert_feed(outs)

    def same(a: ExpertSummary, b: ExpertSummary) -> None:
        assert (a.n, a.n_sampled, a.nonfinite_rows) == (b.n, b.n_sampled, b.nonfinite_rows)
        torch.testing.assert_close(a.zero_fraction, b.zero_fraction, atol=1e-12, rtol=0)
        torch.testing.assert_close(a.mean_norm, b.mean_norm, atol=1e-9, rtol=1e-9)
        assert_cka_close(a.cka, b.cka)

    one_pass = merged(make_expert(dims), feed, [slice(0, n)], 0)
    z = torch.cat(outs, dim=1).double()
    offsets = [0, *torch.tensor(dims).cumsum(0).tolist()]
    blocks = [z[:, offsets[i] : offsets[i + 1]] for i in range(len(dims))]
    ref = torch.tensor([[linear_cka(x, y).item() for y in blocks] for x in blocks], dtype=torch.float64)
    finite = one_pass.cka.isfinite()
    assert_cka_close(one_pass.cka[finite], ref[finite])
    shards = shards_of(data.draw, n)
    check_merge_orders(make_expert(dims), feed, shards, one_pass, same=same)
    perm = torch.tensor(data.draw(st.permutations(range(n))))
    shuffled = make_expert(dims)()
    shuffled.update([o[perm] for o in outs], perm)
    same(shuffled.compute(), one_pass)


@pytest.mark.parametrize("setting", ["set_float32_matmul_precision", "mkldnn.matmul.fp32_precision"])
def test_reduced_float32_matmul_precision_takes_the_float64_product(setting: str) -> None:
    """A user's TF32/bfloat16 matmul setting (common in training scripts) would cost the float32 Gram
    ~3 digits: with it, float32 outputs get the float64 product (the same CKA as float64 outputs)."""
    z = planted("near-duplicate", 600, 4, 16)
    f64 = streamed(z.double(), 300).cka
    assert (streamed(z, 300).cka - f64).abs().max() > 1e-12  # IEEE float32 matmuls: the float32 product
    if setting == "set_float32_matmul_precision":
        before = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("medium")
        try:
            reduced = streamed(z, 300).cka
        finally:
            torch.set_float32_matmul_precision(before)
    else:
        before = torch.backends.mkldnn.matmul.fp32_precision
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        try:
            reduced = streamed(z, 300).cka
        finally:
            torch.backends.mkldnn.matmul.fp32_precision = before
    torch.testing.assert_close(reduced, f64, atol=1e-12, rtol=0)
    assert (streamed(z, 300).cka - f64).abs().max() > 1e-12  # the setting restored: float32 again


@pytest.mark.parametrize("scale", [3e17, 1e-25, 1e12, 1e-8], ids=["overflow", "underflow", "large", "small"])
def test_outputs_too_large_or_small_for_float32_squares_take_the_float64_product(scale: float) -> None:
    """One expert scaled by 3e17 (sums of float32 centered squares overflow, yet its row norms are
    finite in float32: without the check CKA was NaN) or 1e-25 (the squares underflow: CKA read 564):
    the update takes the float64 product; 1e12 and 1e-8 stay on the float32 one."""
    z = planted("near-duplicate", 600, 4, 16)
    z[:, 1] *= scale
    got, f64 = streamed(z, 600), streamed(z.double(), 600)
    assert got.n == 600  # no row excluded for a norm overflowing float32
    assert_cka_close(got.cka, reference_cka(z))
    on_float64 = bool((got.cka - f64.cka).abs().max() == 0)
    assert on_float64 == (scale in (3e17, 1e-25))


def test_empty_updates_change_nothing() -> None:
    z = planted("dead", 50, 2, 40)
    for sync_free in (False, True):
        m = ExpertStats(2, 40, sample_rate=1.0, sync_free=sync_free)
        m.update(torch.zeros(0, 2, 40))
        m.update([torch.zeros(0, 40), torch.zeros(0, 40)], torch.zeros(0, dtype=torch.int64))
        m.update(z)
        s = m.compute()
        assert s.n == s.n_sampled == 50
        assert_cka_close(s.cka, streamed(z, 50).cka, atol=CKA_FLOAT32_ATOL if sync_free else 0.0)
