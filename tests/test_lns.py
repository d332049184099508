"""LNS arithmetic (paper L, lowbit.functional.lns) and LNS layers/training (lowbit.nn.lns) against float64 oracles."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import ConfigError
from lowbit.functional.lns import (
    LUT,
    Exact,
    LNSFormat,
    LNSTensor,
    MaxOnly,
    Shift,
    add,
    decode,
    delta_codes,
    encode,
    from_work,
    lns_sum,
    mul,
    prepare_delta,
    tree_sum_work,
    to_work,
)
from lowbit.nn.lns import (
    LNSMLP,
    lns_conv2d,
    lns_linear,
    mlp_backward,
    mlp_forward,
    output_error,
    output_error_lns,
    train_step,
)

F16 = LNSFormat(16, 10)
MODES = [Exact(), MaxOnly(), LUT(20), Shift()]


def all_values(fmt: LNSFormat) -> LNSTensor:
    """Every value of a small format: zero and both signs of every non-zero code."""
    codes = torch.arange(fmt.code_min, fmt.code_max + 1, dtype=fmt.dtype)
    code = torch.cat([torch.tensor([fmt.zero_code], dtype=fmt.dtype), codes, codes])
    sign = torch.cat([torch.zeros(1 + len(codes)), torch.ones(len(codes))]).to(torch.int8)
    return LNSTensor(sign, code, fmt)


def all_pairs(fmt: LNSFormat) -> tuple[LNSTensor, LNSTensor]:
    v = all_values(fmt)
    n = v.shape[0]
    ia, ib = torch.arange(n).repeat_interleave(n), torch.arange(n).repeat(n)
    return LNSTensor(v.sign[ia], v.code[ia], fmt), LNSTensor(v.sign[ib], v.code[ib], fmt)


def random_lns(shape, fmt: LNSFormat, seed: int, lo: float = -6.0, hi: float = 6.0) -> LNSTensor:
    g = torch.Generator().manual_seed(seed)
    mag = torch.exp2(torch.empty(shape, dtype=torch.float64).uniform_(lo, hi, generator=g))
    sign = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0)
    return encode(sign * mag, fmt)


# Format and encoding --------------------------------------------------------------------------------------------


def test_bad_configs_name_value_and_range():
    with pytest.raises(ConfigError, match=r"LUT\(n=0\).*1 to 20"):
        LUT(0)
    with pytest.raises(ConfigError, match=r"LUT\(n=21\)"):
        LUT(21)
    with pytest.raises(ConfigError, match=r"d_max"):
        LUT(20, d_max=0.0)
    with pytest.raises(ConfigError, match=r"bits=3 .*4 to 32"):
        LNSFormat(3, 1)
    with pytest.raises(ConfigError, match=r"bits=33 .*4 to 32"):
        LNSFormat(33, 1)
    with pytest.raises(ConfigError, match=r"frac_bits=15 does not fit a 16-bit word.*0 to 14"):
        LNSFormat(16, 15)
    with pytest.raises(ConfigError, match=r"frac_bits=-1"):
        LNSFormat(16, -1)
    with pytest.raises(ConfigError, match="log-domain addition mode"):
        add(encode(torch.ones(2), F16), encode(torch.ones(2), F16), "lut")
    with pytest.raises(ConfigError, match="different formats"):
        mul(encode(torch.ones(2), F16), encode(torch.ones(2), LNSFormat(12, 6)))


def test_format_layout():
    assert (F16.zero_code, F16.code_min, F16.code_max, F16.scale) == (-16384, -16383, 16383, 1024)
    assert LNSFormat(32, 20).dtype == torch.int64 and F16.dtype == torch.int32


@pytest.mark.parametrize("fmt", [F16, LNSFormat(10, 4), LNSFormat(24, 16)])
def test_encode_decode_round_trip_within_half_step(fmt):
    top = fmt.code_max / fmt.scale
    g = torch.Generator().manual_seed(1)
    e = torch.empty(4000, dtype=torch.float64).uniform_(-top + 0.5, top - 0.5, generator=g)
    x = torch.exp2(e) * torch.where(torch.rand(4000, generator=g) < 0.5, -1.0, 1.0)
    t = encode(x, fmt)
    back = decode(t, torch.float64)
    assert torch.equal(torch.sign(back), torch.sign(x))
    err = (torch.log2(back.abs()) - torch.log2(x.abs())).abs()
    assert float(err.max()) <= 0.5 / fmt.scale + 1e-9


def test_encode_saturates_and_underflows_to_zero_code():
    x = torch.tensor([0.0, 1e-30, -1e-30, 1e30, -1e30, 2.0**-16.0001])
    t = encode(x, F16)
    assert t.code.tolist() == [F16.zero_code] * 3 + [F16.code_max] * 2 + [F16.zero_code]
    assert t.sign.tolist() == [0, 0, 0, 0, 1, 0]  # a zero has sign 0, even from -1e-30
    assert decode(t).tolist()[:3] == [0.0, 0.0, 0.0]


# Products -------------------------------------------------------------------------------------------------------


def test_mul_is_exact_product_of_decoded_values():
    a, b = random_lns((5000,), F16, 2, -7, 7), random_lns((5000,), F16, 3, -7, 7)
    p = mul(a, b)
    want = decode(a, torch.float64) * decode(b, torch.float64)
    assert torch.allclose(decode(p, torch.float64), want, rtol=1e-12, atol=0)
    assert torch.equal(p.code, a.code + b.code)


def test_mul_zero_saturation_underflow():
    fmt = LNSFormat(6, 1)  # codes -15..15 (-16 is zero): magnitudes 2^-7.5 .. 2^7.5
    a = encode(torch.tensor([0.0, 2.0**6, 2.0**-6, -3.0]), fmt)
    b = encode(torch.tensor([2.0**7, 2.0**6, 2.0**-6, 0.0]), fmt)
    p = mul(a, b)
    assert p.code.tolist() == [fmt.zero_code, fmt.code_max, fmt.zero_code, fmt.zero_code]


# Addition -------------------------------------------------------------------------------------------------------


def test_add_exact_is_correctly_rounded_sum_over_all_pairs():
    fmt = LNSFormat(6, 2)  # codes -15..15 and the zero code -16: 63 values, 3969 pairs
    a, b = all_pairs(fmt)
    r = add(a, b, Exact())
    true = decode(a, torch.float64) + decode(b, torch.float64)
    got = decode(r, torch.float64)
    want_code = torch.floor(torch.log2(true.abs()) * fmt.scale + 0.5)
    in_range = (true != 0) & (want_code >= fmt.code_min) & (want_code <= fmt.code_max)
    # within half a code step of the exact sum's log (so within one step, the brief's bound)
    err = (torch.log2(got[in_range].abs()) - torch.log2(true[in_range].abs())).abs()
    assert float(err.max()) <= 0.5 / fmt.scale + 1e-9
    assert torch.equal(torch.sign(got[in_range]), torch.sign(true[in_range]))
    assert bool((r.code[want_code > fmt.code_max] == fmt.code_max).all())
    assert bool((r.code[(true == 0) | (want_code < fmt.code_min)] == fmt.zero_code).all())
    assert int(in_range.sum()) > 3000


def test_maxonly_is_the_larger_magnitude():
    fmt = LNSFormat(6, 2)
    a, b = all_pairs(fmt)
    r = add(a, b, MaxOnly())
    va, vb = decode(a, torch.float64), decode(b, torch.float64)
    want = torch.where(va.abs() >= vb.abs(), va, vb)
    want = torch.where((va == -vb), torch.zeros_like(want), want)
    assert torch.equal(decode(r, torch.float64), want)


@pytest.mark.parametrize("delta", MODES, ids=str)
@pytest.mark.parametrize("fmt", [F16, LNSFormat(10, 4)])
def test_opposite_equal_magnitudes_give_exact_zero(delta, fmt):
    a = random_lns((500,), fmt, 4)
    r = add(a, LNSTensor(1 - a.sign, a.code, fmt), delta)
    assert bool((r.code == fmt.zero_code).all()) and bool((r.sign == 0).all())


def _lut_bound(fmt: LNSFormat, lut: LUT) -> float:
    """|a (+) b - (a + b)| / |hi|: half the largest bin spread of 2^-d (bin 0), the tail 2^-d_max, and the
    rounding of a table entry (|1 +- m| <= 2 times 2^(half step) - 1)."""
    width = max(1, round(lut.d_max * fmt.scale / lut.n)) / fmt.scale
    return max((1 - 2.0**-width) / 2, 2.0**-lut.d_max) + 2 * (2.0 ** (0.5 / fmt.scale) - 1) + 1e-12


@pytest.mark.parametrize("lut", [LUT(20), LUT(8, 4.0), LUT(1, 1.0)], ids=str)
def test_lut_error_bound_against_exact_sum(lut):
    a, b = random_lns((20000,), F16, 5, -4, 4), random_lns((20000,), F16, 6, -4, 4)
    va, vb = decode(a, torch.float64), decode(b, torch.float64)
    got = decode(add(a, b, lut), torch.float64)
    hi = torch.maximum(va.abs(), vb.abs())
    ratio = ((got - (va + vb)).abs() / hi).max()
    assert float(ratio) <= _lut_bound(F16, lut)
    # and the bound is nearly reached for LUT(20): it is the bound of this table, not a loose one
    if lut == LUT(20):
        assert float(ratio) > 0.8 * _lut_bound(F16, lut)


def test_lut_matches_its_n_entry_definition():
    fmt, lut = F16, LUT(20)
    d = torch.arange(0, 12 * fmt.scale, dtype=fmt.dtype)
    for opp in (False, True):
        got = delta_codes(d, torch.full(d.shape, opp), fmt, lut)
        step = lut.d_max / lut.n
        lo = torch.floor(d.double() / fmt.scale / step) * step
        m = (torch.exp2(-lo) + torch.exp2(-(lo + step))) / 2
        want = torch.floor(torch.log2(1 + (-m if opp else m)) * fmt.scale + 0.5)
        want = torch.where(d.double() / fmt.scale >= lut.d_max, 0.0, want)
        if opp:
            want[0] = fmt.sentinel
        assert torch.equal(got.double(), want)
        assert len(torch.unique(got[d < lut.d_max * fmt.scale])) <= lut.n


@pytest.mark.parametrize("fmt", [F16, LNSFormat(12, 6), LNSFormat(10, 4)])
def test_shift_error_bounds(fmt):
    d = torch.arange(1, 30 * fmt.scale, dtype=fmt.dtype)
    plus = delta_codes(d, torch.zeros(d.shape, dtype=torch.bool), fmt, Shift()).double() / fmt.scale
    minus = delta_codes(d, torch.ones(d.shape, dtype=torch.bool), fmt, Shift()).double() / fmt.scale
    y = torch.exp2(-d.double() / fmt.scale)
    assert float((plus - torch.log2(1 + y)).abs().max()) <= 0.13
    assert float((torch.exp2(minus) - (1 - y)).abs().max()) <= 0.06
    # Delta- keeps the magnitude of small results (d one code step): within 0.6 in log2, not -inf or 0
    assert float((minus - torch.log2(1 - y)).abs().max()) <= 0.6


@pytest.mark.parametrize("delta", MODES, ids=str)
def test_tabulated_delta_equals_elementwise_definition(delta):
    a, b = all_pairs(LNSFormat(8, 3))
    fmt = a.fmt
    wa, wb = to_work(a), to_work(b)
    from lowbit.functional.lns import add_work

    t1 = from_work(*add_work(*wa, *wb, fmt, delta, prepare_delta(fmt, delta)), fmt)
    t2 = from_work(*add_work(*wa, *wb, fmt, delta, None), fmt)
    assert torch.equal(t1.code, t2.code) and torch.equal(t1.sign, t2.sign)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=32), min_size=2, max_size=40),
       st.sampled_from(MODES))
def test_add_commutes_and_zero_is_identity(values, delta):
    x = torch.tensor(values, dtype=torch.float64)
    a, b = encode(x, F16), encode(x.flip(0), F16)
    ab, ba = add(a, b, delta), add(b, a, delta)
    assert torch.equal(ab.code, ba.code) and torch.equal(ab.sign, ba.sign)
    z = add(a, encode(torch.zeros_like(x), F16), delta)
    assert torch.equal(z.code, a.code) and torch.equal(z.sign, a.sign)


# Sums -----------------------------------------------------------------------------------------------------------


def _reference_tree(values: list[LNSTensor], delta) -> LNSTensor:
    """The documented order written out: element i meets element i + L // 2, an odd last one meets a zero pad."""
    fmt = values[0].fmt
    while len(values) > 1:
        half = len(values) // 2
        nxt = [add(values[i], values[i + half], delta) for i in range(half)]
        if len(values) % 2:
            zero = LNSTensor(torch.zeros(values[-1].shape, dtype=torch.int8),
                             torch.full(values[-1].shape, fmt.zero_code, dtype=fmt.dtype), fmt)
            nxt.append(add(values[-1], zero, delta))
        values = nxt
    return values[0]


@pytest.mark.parametrize("length", [1, 2, 7, 13, 64])
def test_sum_follows_the_documented_tree_order(length):
    t = random_lns((length, 6), F16, 7, -3, 3)
    got = lns_sum(t, 0, LUT(20))
    want = _reference_tree([LNSTensor(t.sign[i], t.code[i], F16) for i in range(length)], LUT(20))
    assert torch.equal(got.code, want.code) and torch.equal(got.sign, want.sign)
    again = lns_sum(LNSTensor(t.sign.t(), t.code.t(), F16), 1, LUT(20))
    assert torch.equal(again.code, got.code)


def test_order_matters_for_approximate_addition():
    # a running sum differs from the tree for LUT: the order is part of the result
    t = random_lns((32, 200), F16, 8, -3, 3)
    tree = lns_sum(t, 0, LUT(20))
    run = LNSTensor(t.sign[0], t.code[0], F16)
    for i in range(1, 32):
        run = add(run, LNSTensor(t.sign[i], t.code[i], F16), LUT(20))
    assert not torch.equal(tree.code, run.code)


def test_exact_sum_error_bound():
    k = 300
    t = random_lns((k, 50), F16, 9, -4, 4)
    got = decode(lns_sum(t, 0, Exact()), torch.float64)
    v = decode(t, torch.float64)
    levels = math.ceil(math.log2(k))
    rel = 2.0 ** (0.5 / F16.scale) - 1
    assert bool(((got - v.sum(0)).abs() <= levels * rel * v.abs().sum(0) * 1.01).all())


# Layers ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("delta", [Exact(), LUT(20)], ids=str)
def test_lns_linear_against_float64_matmul(delta):
    x, w, b = random_lns((9, 130), F16, 10, -3, 1), random_lns((7, 130), F16, 11, -4, 0), random_lns((7,), F16, 12)
    y = decode(lns_linear(x, w, b, delta, max_block=500), torch.float64)
    xv, wv, bv = (decode(t, torch.float64) for t in (x, w, b))
    want = xv @ wv.T + bv
    scale = xv.abs() @ wv.abs().T + bv.abs()
    levels = math.ceil(math.log2(130)) + 1
    # Exact: half a step per level; LUT(20): its per-addition bound per level
    per_level = 2.0 ** (0.5 / F16.scale) - 1 if delta == Exact() else _lut_bound(F16, delta)
    assert bool(((y - want).abs() <= levels * per_level * scale * 1.01).all())
    if delta == Exact():
        assert float(((y - want).abs() / scale).max()) < 5e-3


def test_lns_linear_chunking_does_not_change_results():
    x, w = random_lns((11, 40), F16, 13), random_lns((5, 40), F16, 14)
    a = lns_linear(x, w, None, LUT(20), max_block=1)
    b = lns_linear(x, w, None, LUT(20), max_block=1 << 20)
    assert torch.equal(a.code, b.code) and torch.equal(a.sign, b.sign)


def test_lns_conv2d_against_float64_conv():
    x, w = random_lns((2, 3, 7, 6), F16, 15, -2, 1), random_lns((4, 3, 3, 3), F16, 16, -3, 0)
    b = random_lns((4,), F16, 17, -2, 0)
    y = decode(lns_conv2d(x, w, b, Exact(), stride=2, padding=1), torch.float64)
    xv, wv, bv = (decode(t, torch.float64) for t in (x, w, b))
    want = torch.nn.functional.conv2d(xv, wv, bv, stride=2, padding=1)
    scale = torch.nn.functional.conv2d(xv.abs(), wv.abs(), bv.abs(), stride=2, padding=1)
    assert y.shape == want.shape
    assert float(((y - want).abs() / scale).max()) < 3e-3


# MLP training ---------------------------------------------------------------------------------------------------


def _small_mlp(fmt: LNSFormat):
    g = torch.Generator().manual_seed(20)
    w1, w2 = torch.randn(16, 20, generator=g) * 0.3, torch.randn(5, 16, generator=g) * 0.3
    b1, b2 = torch.randn(16, generator=g) * 0.1, torch.randn(5, generator=g) * 0.1
    x = torch.randn(8, 20, generator=g)
    y = torch.randint(0, 5, (8,), generator=g)
    return LNSMLP.from_float([w1, w2], [b1, b2], fmt), encode(x, fmt), y


def test_mlp_backward_matches_autograd_on_decoded_values():
    fmt = LNSFormat(20, 14)
    model, x, y = _small_mlp(fmt)
    logits, cache = mlp_forward(model, x, Exact())
    gw, gb = mlp_backward(model, cache, output_error(logits, y), Exact())
    params = [decode(t, torch.float64).requires_grad_() for t in (*model.weights, *model.biases)]
    w1, w2, b1, b2 = params
    z = torch.relu(decode(x, torch.float64) @ w1.T + b1) @ w2.T + b2
    torch.nn.functional.cross_entropy(z, y).backward()
    assert torch.allclose(decode(logits, torch.float64), z.detach(), rtol=1e-3, atol=1e-3)
    for got, ref in zip([*gw, *gb], [w1.grad, w2.grad, b1.grad, b2.grad]):
        got = decode(got, torch.float64)
        assert got.shape == ref.shape
        assert float((got - ref).abs().max()) <= 2e-3 * float(ref.abs().max()) + 1e-6


@pytest.mark.parametrize("lns_output", [False, True], ids=["float-output-error", "log-domain-output-error"])
def test_train_steps_reduce_the_loss(lns_output):
    model, x, y = _small_mlp(F16)

    def loss(m):
        logits, _ = mlp_forward(m, x, LUT(20))
        return float(torch.nn.functional.cross_entropy(decode(logits, torch.float64), y))

    start = loss(model)
    for _ in range(20):
        model, _ = train_step(model, x, y, 0.2, LUT(20), lns_output=lns_output)
    assert loss(model) < 0.7 * start


def test_tree_sum_work_reduces_leading_dim():
    t = random_lns((5, 3), F16, 21)
    n, c = tree_sum_work(*to_work(t), F16, Exact())
    assert c.shape == (3,) and n.shape == (3,)


@pytest.mark.parametrize("delta", [Exact(), LUT(20)], ids=str)
def test_log_domain_output_error_against_float_softmax(delta):
    fmt = LNSFormat(20, 14)
    g = torch.Generator().manual_seed(22)
    z = torch.randn(16, 10, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 10, (16,), generator=g)
    logits = encode(z, fmt)
    zv = decode(logits, torch.float64)
    want = (torch.softmax(zv, 1) - torch.nn.functional.one_hot(y, 10)) / 16
    got = decode(output_error_lns(logits, y, delta), torch.float64)
    # Exact: roundings of about 2^-15 per step, a 4-level tree; LUT(20): its per-addition bound, relative to 1/B
    tol = 1e-3 if delta == Exact() else 2 * _lut_bound(fmt, delta)
    assert float((got - want).abs().max()) <= tol / 16
    assert torch.equal(torch.sign(got[torch.arange(16), y]), -torch.ones(16, dtype=torch.float64))
    assert torch.allclose(decode(output_error(logits, y), torch.float64), want, atol=2.0**-16)  # underflow


def test_bad_shapes_are_named():
    from lowbit.errors import DataError, ShapeError

    x, w = random_lns((3, 8), F16, 23), random_lns((4, 7), F16, 24)
    with pytest.raises(ShapeError, match=r"\(3, 8\) and weight \(4, 7\)"):
        lns_linear(x, w, None, Exact())
    with pytest.raises(DataError, match="sign shape"):
        LNSTensor(torch.zeros(3, dtype=torch.int8), torch.zeros(4, dtype=torch.int32), F16)
    with pytest.raises(DataError, match="NaN"):
        encode(torch.tensor([1.0, float("nan")]), F16)


def test_log_domain_output_error_keeps_confident_errors_small():
    # p_y -> 1: 1 - p_y is the (+)-sum of the other p_i, not p_y (+) (-1) (whose LUT Delta- bin 0 would give ~0.15)
    z = torch.tensor([[10.0] + [0.0] * 9, [0.0] * 9 + [8.0]], dtype=torch.float64)  # e^-10 > 2^-16
    y = torch.tensor([0, 9])
    got = decode(output_error_lns(encode(z, F16), y, LUT(20)), torch.float64)
    want = (torch.softmax(z, 1) - torch.nn.functional.one_hot(y, 10)) / 2
    rows = torch.arange(2)
    assert bool((got[rows, y] < 0).all())
    assert torch.allclose(got[rows, y], want[rows, y], rtol=0.3)
