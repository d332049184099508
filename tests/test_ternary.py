"""Exact ternarization against brute force over all 3^N codes, and its scaling rules."""

import functools
import itertools
import time

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from lowbit.errors import ConfigError, DataError
from lowbit.functional import ternarize, ternary_fake_quant, ternary_support
from lowbit.granularity import PerChannel, PerKernel, PerTensor


@functools.cache
def all_codes(n):
    """Every t in {-1,0,1}^n as rows of a float64 tensor (3^n, n)."""
    return torch.tensor(list(itertools.product((-1.0, 0.0, 1.0), repeat=n)), dtype=torch.float64)


def brute_force_residual(w):
    """min over all t in {-1,0,1}^N and alpha >= 0 of ||w - alpha t||^2 (float64, exhaustive)."""
    t = all_codes(len(w))
    nz = t.square().sum(dim=1)
    alpha = ((t @ w) / nz.clamp_min(1)).clamp_min(0)  # optimal alpha for each code
    residual = (w[None, :] - alpha[:, None] * t).square().sum(dim=1)
    return float(residual.min())


@pytest.mark.parametrize("n", range(1, 13))
def test_equals_brute_force_for_every_n_up_to_12(n):
    gen = torch.Generator().manual_seed(n)
    for _trial in range(3 if n > 9 else 10):
        w = torch.randn(n, generator=gen, dtype=torch.float64)
        res = ternarize(w, PerTensor(), "lbw")
        q = res.dequantize().to(torch.float64)
        ours = float((w - q).square().sum())
        assert ours == pytest.approx(brute_force_residual(w), rel=1e-5, abs=1e-9)


@given(st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=1, max_size=7))
def test_support_maximises_tnt_cosine(values):
    w = torch.tensor(values, dtype=torch.float64)
    assume(float(w.abs().sum()) != 0)
    mask = ternary_support(w[None, :])[0]
    t = torch.sign(w) * mask
    cos = float(w @ t) / (float(t.norm()) * float(w.norm()))
    for k in range(1, len(values) + 1):  # every candidate support size
        top = w.abs().argsort(descending=True)[:k]
        tk = torch.zeros_like(w)
        tk[top] = torch.sign(w[top])
        if float(tk.norm()) == 0:
            continue
        assert cos >= float(w @ tk) / (float(tk.norm()) * float(w.norm())) - 1e-9


def test_tnt_scaling_uses_two_sided_means():
    w = torch.tensor([3.0, 2.0, -1.0, -2.5, 0.01])
    res = ternarize(w, PerTensor(), "tnt")
    sel = res.codes != 0
    pos, neg = (res.codes > 0) & sel, (res.codes < 0) & sel
    assert float(res.alpha_pos) == pytest.approx(float(w[pos].mean()))
    assert float(res.alpha_neg) == pytest.approx(float(-w[neg].mean()))
    lbw = ternarize(w, PerTensor(), "lbw")
    assert float(lbw.alpha_pos) == pytest.approx(float(w[sel].abs().mean()))
    norm = ternarize(w, PerTensor(), "norm")
    assert float(norm.alpha_pos) == pytest.approx(float(w.norm() / sel.sum().sqrt()))


def test_per_channel_and_per_kernel_solve_each_block():
    w = torch.randn(4, 3, 3, 3)
    for g, blocks in ((PerChannel(0), [w[i] for i in range(4)]),
                      (PerKernel(), [w[i, j] for i in range(4) for j in range(3)])):
        res = ternarize(w, g)
        q = res.dequantize()
        flat_q = q.reshape(len(blocks), -1) if isinstance(g, PerKernel) else q.reshape(4, -1)
        for b, block in enumerate(blocks):
            alone = ternarize(block.reshape(-1), PerTensor()).dequantize()
            assert torch.allclose(flat_q[b], alone)


def test_fake_quant_has_straight_through_gradient():
    w = torch.randn(10, requires_grad=True)
    ternary_fake_quant(w).sum().backward()
    assert torch.equal(w.grad, torch.ones(10))


def test_a_million_weights_is_fast():
    """Complexity guard (generous bound); the 0.5 s target is measured in benchmarks/bench_ternary.py."""
    w = torch.randn(1_000_000)
    ternarize(w)  # warm-up
    start = time.perf_counter()
    ternarize(w)
    assert time.perf_counter() - start < 5.0


def test_bad_input():
    with pytest.raises(DataError, match="NaN"):
        ternarize(torch.tensor([1.0, float("nan")]))
    with pytest.raises(DataError, match="empty"):
        ternarize(torch.empty(0))
    with pytest.raises(ConfigError, match="scaling"):
        ternarize(torch.randn(4), scaling="mean")  # type: ignore[arg-type]
