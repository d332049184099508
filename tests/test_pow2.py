
import pytest
import torch

from lowbit.errors import ConfigError, DataError
from lowbit.formats import DynamicFixedPoint, Log2, PowerOfTwo
from lowbit.functional import (
    dynamic_fixed_point,
    frac_length,
    log2_quantize,
    pow2_fake_quant,
    pow2_project,
    pow2_quantize,
    pow2_scale,
    ternarize,
)
from lowbit.granularity import PerChannel


@pytest.mark.parametrize("bits", [3, 4, 5])
def test_projection_is_nearest_level(bits):
    fmt = PowerOfTwo(bits)
    levels = torch.tensor([lv for lv in fmt.levels() if lv >= 0], dtype=torch.float64)
    m = torch.rand(20000, dtype=torch.float64) * 1.3
    p = pow2_project(m, fmt.n_exponents)
    nearest_dist = (m[:, None] - levels[None, :]).abs().min(dim=1).values
    assert torch.allclose((m - p).abs(), nearest_dist, atol=1e-12)
    assert set(p.unique().tolist()) <= set(levels.tolist())


def test_projection_thresholds_are_three_quarters():
    n = PowerOfTwo(3).n_exponents  # levels 0, 1/4, 1/2, 1
    m = torch.tensor([0.74, 0.76, 0.37, 0.38, 0.124, 0.126], dtype=torch.float64)
    assert pow2_project(m, n).tolist() == [0.5, 1.0, 0.25, 0.5, 0.0, 0.25]


@pytest.mark.parametrize("bits", [3, 4])
def test_quantized_weights_are_powers_of_two_times_alpha(bits):
    w = torch.randn(8, 40)
    levels, alpha = pow2_quantize(w, PowerOfTwo(bits), PerChannel(0))
    assert alpha.shape == (8,)
    allowed = set(PowerOfTwo(bits).levels())
    assert set(levels.unique().tolist()) <= allowed


def test_alpha_fit_beats_max_scaling_and_brute_force_grid():
    torch.manual_seed(1)
    w = torch.randn(500, dtype=torch.float64)
    fmt = PowerOfTwo(3)
    levels, alpha = pow2_quantize(w, fmt)
    err = float((w - alpha * levels).square().sum())
    amax = float(w.abs().max())
    naive = w.sign() * pow2_project(w.abs() / amax, fmt.n_exponents) * amax
    assert err <= float((w - naive).square().sum()) + 1e-9
    grid = [amax * c for c in torch.linspace(0.2, 1.0, 400).tolist()]
    best_grid = min(float((w - a * w.sign() * pow2_project(w.abs() / a, fmt.n_exponents)).square().sum()) for a in grid)
    assert err <= best_grid * 1.01


def test_two_bits_is_exact_ternary():
    w = torch.randn(64)
    levels, alpha = pow2_quantize(w, PowerOfTwo(2))
    t = ternarize(w)
    assert torch.equal(levels, t.codes.float()) and torch.equal(alpha, t.alpha_pos)


def test_pow2_fake_quant_ste():
    w = torch.randn(30, requires_grad=True)
    pow2_fake_quant(w, PowerOfTwo(4)).sum().backward()
    assert torch.equal(w.grad, torch.ones(30))


def test_log2_quantization():
    x = torch.tensor([0.0, 0.3, -0.7, 1.0, 3.1, -8.0, 0.0009])
    y = log2_quantize(x, Log2(3))  # 3 exponents: e_max = round(log2 8) = 3 -> {2, 4, 8}
    assert y.tolist() == [0.0, 0.0, 0.0, 0.0, 4.0, -8.0, 0.0]
    y4 = log2_quantize(x, Log2(4))  # 7 exponents: 2^-3 .. 2^3
    assert y4.tolist() == [0.0, 0.25, -0.5, 1.0, 4.0, -8.0, 0.0]
    nz = y4[y4 != 0].abs()
    assert torch.equal(torch.exp2(torch.log2(nz).round()), nz)


def test_dynamic_fixed_point():
    x = torch.tensor([0.9, -3.2, 1.7])
    assert int(frac_length(x, 8)) == 8 - 1 - 2  # ceil(log2 3.2) = 2
    q, f = dynamic_fixed_point(x, DynamicFixedPoint(8))
    assert int(f) == 5
    assert torch.equal(q, torch.round(x * 32) / 32)
    q_ch, f_ch = dynamic_fixed_point(torch.tensor([[0.1, 0.2], [5.0, -6.0]]), DynamicFixedPoint(4), granularity=PerChannel(0))
    assert f_ch.tolist() == [3 - (-2), 3 - 3]
    assert q_ch[1].tolist() == [5.0, -6.0]


def test_pow2_scale_rounds_in_log_domain():
    assert pow2_scale(torch.tensor([0.3, 0.35, 1.0, 5.0])).tolist() == [0.25, 0.25, 1.0, 4.0]


def test_errors():
    with pytest.raises(ConfigError):
        pow2_quantize(torch.randn(4), Log2(3))  # type: ignore[arg-type]
    with pytest.raises(DataError, match="inf"):
        pow2_quantize(torch.tensor([1.0, float("inf")]), PowerOfTwo(3))
    with pytest.raises(DataError, match="empty"):
        log2_quantize(torch.empty(0), Log2(3))
