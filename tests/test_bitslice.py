"""Bit-slice sparsity (paper M): slices, dynamic fixed point, gradients, regularizers, counters, training pieces."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lowbit.cost.bitslice import adc_bits, adc_bits_for, column_sums, render, slice_sparsity
from lowbit.errors import ConfigError
from lowbit.functional.bitslice import (
    BitSliceL1,
    L1,
    bit_slices,
    bitslice_l1,
    dynamic_fixed_point,
    fixed_point_scale,
    magnitude_codes,
    plain_l1,
)
from lowbit.nn.bitslice import FixedPointLinear, KeepPruned, magnitude_masks, to_fixed_point


def _codes_tensor(codes: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Weights whose magnitude codes are exactly ``codes`` (scale 0: max|w| in (1/2, 1], step 2^-bits)."""
    w = codes.to(torch.float64) * 2.0**-bits
    return torch.cat([w, torch.tensor([(2**bits - 1) * 2.0**-bits], dtype=torch.float64)])


@pytest.mark.parametrize("bits,slice_bits", [(8, 2), (8, 1), (8, 4), (6, 3), (4, 4), (12, 2)])
def test_slices_recompose_every_code(bits, slice_bits):
    codes = torch.arange(2**bits)
    w = _codes_tensor(codes, bits)
    assert torch.equal(magnitude_codes(w, bits)[:-1], codes.to(torch.float64))
    s = bit_slices(w, bits, slice_bits)
    n = bits // slice_bits
    assert s.shape == (n, 2**bits + 1)
    assert s.min() >= 0 and s.max() <= 2**slice_bits - 1 and torch.equal(s, s.round())
    place = torch.tensor([2.0 ** (slice_bits * (n - 1 - k)) for k in range(n)], dtype=torch.float64)
    assert torch.equal((s * place[:, None]).sum(0)[:-1], codes.to(torch.float64))


def test_slices_match_the_paper_formula_for_8_bits():
    x = torch.arange(256.0)
    b1 = torch.floor(x / 64)
    b2 = torch.floor((x - 64 * b1) / 16)
    b3 = torch.floor((x - 64 * b1 - 16 * b2) / 4)
    b4 = x - 64 * b1 - 16 * b2 - 4 * b3
    s = bit_slices(_codes_tensor(x.long()))[:, :-1]
    assert torch.equal(s, torch.stack([b1, b2, b3, b4]).to(torch.float64))


def test_sign_handling():
    w = torch.randn(500, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(bit_slices(w), bit_slices(-w))
    assert torch.equal(bit_slices(w), bit_slices(w.abs()))
    step = 2.0 ** (float(fixed_point_scale(w)) - 8)
    recomposed = torch.sign(w) * (bit_slices(w) * torch.tensor([64.0, 16, 4, 1], dtype=w.dtype)[:, None]).sum(0)
    assert torch.equal(recomposed * step, dynamic_fixed_point(w))


def _dfxp_reference(w: list[float], bits: int) -> list[float]:
    """Float64 per-element formula: scale from math.log2 (exact on powers of two), the paper's clip at 2^B - 1."""
    amax = max(abs(v) for v in w)
    scale = math.ceil(math.log2(amax)) if amax > 0 else 0
    step = 2.0 ** (scale - bits)
    return [math.copysign(min(round(abs(v) / step), 2**bits - 1) * step, v) if v != 0 else 0.0 for v in w]


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
@pytest.mark.parametrize("amax", [0.3, 0.5, 1.0, 3.7, 1e-3])
def test_dynamic_fixed_point_matches_float64_formula(bits, amax):
    w = torch.rand(2000, generator=torch.Generator().manual_seed(bits), dtype=torch.float64) * 2 - 1
    w = w / w.abs().max() * amax
    assert torch.equal(dynamic_fixed_point(w, bits), torch.tensor(_dfxp_reference(w.tolist(), bits), dtype=w.dtype))


def test_scale_is_exact_at_powers_of_two_and_zero():
    assert float(fixed_point_scale(torch.tensor([0.25, -0.1]))) == -2
    assert float(fixed_point_scale(torch.tensor([0.2500001]))) == -1
    assert float(fixed_point_scale(torch.tensor([-4.0]))) == 2
    assert float(fixed_point_scale(torch.zeros(3))) == 0
    assert torch.equal(bit_slices(torch.zeros(3)), torch.zeros(4, 3))


def test_dynamic_fixed_point_is_straight_through():
    w = torch.randn(64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    g = torch.randn(64, generator=torch.Generator().manual_seed(2))
    (dynamic_fixed_point(w) * g).sum().backward()
    assert torch.equal(w.grad, g)


def test_slice_gradients_are_straight_through_with_detached_higher_slices():
    # d b_k / dw = sign(w) / (step * 4^(3-k)): round and floor pass the gradient, higher slices are detached
    w = torch.tensor([0.7, -0.33, 0.02, -0.9], dtype=torch.float64, requires_grad=True)
    step = 2.0 ** (0 - 8)
    for k in range(4):
        (g,) = torch.autograd.grad(bit_slices(w)[k].sum(), w)
        assert torch.allclose(g, torch.sign(w.detach()) / (step * 4.0 ** (3 - k)))


def test_bitslice_l1_value_and_gradient_by_hand():
    # codes: 0.75 -> x = 192 = 64*3 -> slices (3,0,0,0); 0.25 -> 64 -> (1,0,0,0); -0.5 -> 128 -> (2,0,0,0);
    # 5/256 -> 5 -> (0,0,1,1); max 0.75: scale 0, step 1/256
    w = torch.tensor([[0.75, 0.25], [-0.5, 5 / 256]], dtype=torch.float64, requires_grad=True)
    value = bitslice_l1([w])
    assert float(value.detach()) == (3 + 1 + 2 + 1 + 1) / 4
    value.backward()
    # d|b|/db is 0 on zero slices: only the non-zero slices push, each with 1 / (step 4^(3-k))
    expect = torch.tensor([[1 / 64, 1 / 64], [-1 / 64, 1 / 4 + 1]], dtype=torch.float64) * 256 / 4
    assert torch.allclose(w.grad, expect)
    assert float(plain_l1([w.detach()])) == pytest.approx((0.75 + 0.25 + 0.5 + 5 / 256) / 4)


def test_regularizers_take_linear_and_conv_weights_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))
    weights = [model[0].weight, model[3].weight]
    assert torch.equal(bitslice_l1(model), bitslice_l1(weights))
    assert torch.equal(plain_l1(model), plain_l1(weights))
    with torch.no_grad():
        assert float(BitSliceL1(0.25)(model, None, None, None)) == pytest.approx(0.25 * float(bitslice_l1(model)))
        assert float(L1(2.0)(model, None, None, None)) == pytest.approx(2 * float(plain_l1(model)))


def test_slice_sparsity_on_constructed_weights():
    # layer a: codes 255 (all slices 3), 0, 64 (b1 only), 3 (b4 only); layer b: codes 255, 16 (b2 only)
    model = nn.Sequential(nn.Linear(4, 1, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[255.0, 0.0, -64.0, 3.0]]) / 256)
        model[1].weight.copy_(torch.tensor([[255.0, -16.0]]) / 256)
    rows = slice_sparsity(model)
    assert [r.layer for r in rows] == ["0", "1", "all"]
    assert rows[0].zero == (0.5, 0.75, 0.75, 0.5) and rows[0].weight_zero == 0.25
    assert rows[1].zero == (0.5, 0.0, 0.5, 0.5) and rows[1].weight_zero == 0.0
    assert rows[2].zero == pytest.approx((3 / 6, 3 / 6, 4 / 6, 3 / 6)) and rows[2].weights == 6
    assert rows[2].mean == pytest.approx(13 / 24)
    assert "| all | 6 |" in render(model, rows=4)


def test_adc_bits_on_a_constructed_crossbar():
    # 2 outputs, fan-in 6, 4-row crossbars: tiles rows 0-3 and 4-5 (+2 empty rows)
    codes = torch.tensor([[255.0, 255, 255, 255, 1, 1],   # out 0: tile 0 slices all 3 -> column sums 12 each
                          [64.0, -64, 128, 0, 255, 16]])  # out 1: b1: + (1+2) in tile 0, - 1; tile 1: 3
    model = nn.Sequential(nn.Linear(6, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(codes / 256)
    sums = column_sums(model[0].weight, rows=4)
    assert sums.shape == (4, 2 * 2 * 2)  # slices, (sign, out, tile)
    # positive columns: (out0 tile0, out0 tile1, out1 tile0, out1 tile1), then the negative ones
    assert sums[0].tolist() == [12, 0, 3, 3, 0, 0, 1, 0]
    assert sums[1].tolist() == [12, 0, 0, 4, 0, 0, 0, 0]
    assert sums[3].tolist() == [12, 2, 0, 3, 0, 0, 0, 0]
    adc = adc_bits(model, rows=4, percentile=50)
    assert adc.max_sum == (12, 12, 12, 12) and adc.max_bits == (4, 4, 4, 4)
    # the 'higher' median of 8 columns is the 5th smallest: b1's sums sort to 0, 0, 0, 0, 1, 3, 3, 12
    assert adc.pct_sum == (1, 0, 0, 0) and adc.pct_bits == (1, 0, 0, 0)
    assert [adc_bits_for(c) for c in (0, 1, 2, 3, 4, 7, 8, 384)] == [0, 1, 2, 2, 3, 3, 4, 9]


def test_fixed_point_model_and_fixed_masks():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    model = to_fixed_point(base)
    assert type(base[0]) is nn.Linear and isinstance(model[0], FixedPointLinear)  # the caller's model is kept
    x = torch.randn(3, 8)
    expect = nn.functional.linear(x, dynamic_fixed_point(base[0].weight.detach()), base[0].bias.detach())
    assert torch.equal(model[0](x), expect)
    masks = magnitude_masks(model, 0.2)
    assert set(masks) == {"0.weight", "2.weight"} and 0 < int(masks["0.weight"].sum()) < 32
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    for step in range(3):
        opt.zero_grad()
        model(x).square().sum().backward()
        opt.step()
        KeepPruned(masks)(model, step)
    assert torch.all(model[0].weight[~masks["0.weight"]] == 0)
    assert torch.all(model[0].weight[masks["0.weight"]] != 0)


@pytest.mark.parametrize("call", [
    lambda: bit_slices(torch.ones(3), bits=1),
    lambda: bit_slices(torch.ones(3), bits=17),
    lambda: bit_slices(torch.ones(3), bits=8, slice_bits=3),
    lambda: bit_slices(torch.ones(3), bits=8.0),
    lambda: BitSliceL1(alpha=-1.0),
    lambda: BitSliceL1(alpha=float("nan")),
    lambda: BitSliceL1(alph=0.5),
    lambda: L1(alpha="1"),
    lambda: bitslice_l1(nn.ReLU()),
    lambda: bitslice_l1([]),
    lambda: adc_bits(nn.Linear(3, 2), rows=0),
    lambda: adc_bits(nn.Linear(3, 2), percentile=0),
    lambda: magnitude_masks(nn.Linear(3, 2), -1.0),
    lambda: to_fixed_point(nn.ReLU()),
])
def test_bad_input_raises_config_error(call):
    with pytest.raises(ConfigError):
        call()


def test_error_names_value_and_range():
    with pytest.raises(ConfigError, match=r"2\.\.16, got 17"):
        bit_slices(torch.ones(3), bits=17)
    with pytest.raises(ConfigError, match=r"divide bits=8 \(one of \[1, 2, 4, 8\]\), got 3"):
        bit_slices(torch.ones(3), slice_bits=3)
