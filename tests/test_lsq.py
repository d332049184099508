"""LSQ outputs and both gradients against the paper's formulas (Esser et al. 2020)."""

import math

import pytest
import torch

from lowbit.errors import ConfigError
from lowbit.formats import IntFormat
from lowbit.functional import grad_scale, lsq_bounds, lsq_grad_scale, lsq_init_step, lsq_quantize, lsq_quantize_int


def paper_forward(v, s, qn, qp):
    return torch.round(torch.clamp(v / s, -qn, qp)) * s


def paper_grad_s(v, s, qn, qp):
    r = v / s
    inside = -r + torch.round(r)
    return torch.where(r <= -qn, torch.full_like(r, -qn), torch.where(r >= qp, torch.full_like(r, qp), inside))


def paper_grad_v(v, s, qn, qp):
    r = v / s
    return ((r > -qn) & (r < qp)).to(v.dtype)


@pytest.mark.parametrize("bits,signed", [(2, True), (3, True), (4, True), (8, True), (2, False), (4, False)])
def test_forward_and_gradients_match_paper(bits, signed):
    qn, qp = lsq_bounds(IntFormat(bits, signed))
    assert (qn, qp) == ((2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1))
    gen = torch.Generator().manual_seed(bits)
    v = (torch.randn(5000, generator=gen, dtype=torch.float64) * 2)
    v = v if signed else v.abs()
    s0 = 0.37
    v.requires_grad_()
    s = torch.tensor(s0, dtype=torch.float64, requires_grad=True)
    g = 0.01
    out = lsq_quantize(v, s, qn, qp, g)
    assert torch.equal(out.detach(), paper_forward(v.detach(), torch.tensor(s0, dtype=torch.float64), qn, qp))
    upstream = torch.randn(5000, generator=gen, dtype=torch.float64)
    out.backward(upstream)
    vd = v.detach()
    assert torch.allclose(v.grad, upstream * paper_grad_v(vd, s0, qn, qp))
    expected_s = g * (upstream * paper_grad_s(vd, torch.tensor(s0, dtype=torch.float64), qn, qp)).sum()
    assert torch.allclose(s.grad, expected_s, rtol=1e-10)


def test_per_channel_step_gradient():
    qn, qp = lsq_bounds(IntFormat(4))
    w = torch.randn(3, 50, dtype=torch.float64)
    s = torch.tensor([[0.1], [0.2], [0.3]], dtype=torch.float64, requires_grad=True)
    lsq_quantize(w, s, qn, qp).sum().backward()
    expected = paper_grad_s(w, s.detach(), qn, qp).sum(dim=1, keepdim=True)
    assert torch.allclose(s.grad, expected)


def test_grad_scale_keeps_value_scales_gradient():
    x = torch.tensor(3.0, requires_grad=True)
    y = grad_scale(x, 0.25)
    assert float(y.detach()) == 3.0
    y.backward()
    assert float(x.grad) == 0.25


def test_grad_scale_conventions():
    w = torch.randn(16, 8, 3, 3)
    a = torch.randn(32, 8, 5, 5)
    assert lsq_grad_scale(w, 7) == pytest.approx(1 / math.sqrt(w.numel() * 7))
    assert lsq_grad_scale(a, 15, "paper", is_activation=True) == pytest.approx(1 / math.sqrt(8 * 25 * 15))
    assert lsq_grad_scale(a, 15, "numel", is_activation=True) == pytest.approx(1 / math.sqrt(a.numel() * 15))
    assert lsq_grad_scale(a, 15, "features") == pytest.approx(1 / math.sqrt(8 * 25 * 15))
    with pytest.raises(ConfigError, match="convention"):
        lsq_grad_scale(a, 15, "batch")  # type: ignore[arg-type]


def test_init_step_is_paper_formula():
    v = torch.randn(1000)
    assert float(lsq_init_step(v, 7)) == pytest.approx(float(2 * v.abs().mean() / math.sqrt(7)))


def test_integer_codes():
    qn, qp = lsq_bounds(IntFormat(3))
    v = torch.linspace(-3, 3, 101)
    q = lsq_quantize_int(v, torch.tensor(0.5), qn, qp)
    assert q.dtype == torch.int32 and int(q.min()) == -4 and int(q.max()) == 3
    assert torch.equal(q.float() * 0.5, lsq_quantize(v, torch.tensor(0.5), qn, qp))


@pytest.mark.parametrize("bits,signed", [(2, True), (4, True), (3, False), (8, False)])
def test_mse_init_step_is_the_least_squares_step_on_its_grid(bits, signed):
    from lowbit.functional.lsq import mse_init_step

    gen = torch.Generator().manual_seed(bits)
    v = torch.randn(4000, generator=gen)
    v = v if signed else v.relu()
    q_n, q_p = lsq_bounds(IntFormat(bits, signed=signed))
    err = lambda s: float(((torch.clamp(torch.round(v / s), -q_n, q_p) * s - v) ** 2).sum())  # noqa: E731
    best = mse_init_step(v, q_n, q_p)
    fine = torch.linspace(1 / 640, 1.0, 640) * float(v.abs().max()) / q_p  # a 10x finer brute-force search
    assert err(best) <= min(err(float(s)) for s in fine) * 1.02
    assert err(best) <= err(lsq_init_step(v, q_p)) + 1e-6
    assert err(best) <= err(float(v.abs().max()) / q_p) + 1e-6


@pytest.mark.parametrize("bits,signed", [(2, True), (4, True), (2, False)])
def test_a_negative_step_quantizes_as_its_magnitude(bits, signed):
    """An optimizer can carry a learned step through zero; the quantizer (and the frozen scale, |s|) must not
    mirror the code range then: 2-bit weights stay {-2 .. 1} |s|, unsigned activations stay >= 0."""
    qn, qp = lsq_bounds(IntFormat(bits, signed))
    v = torch.linspace(-3.0, 3.0, 601, dtype=torch.float64)
    s = torch.tensor(0.37, dtype=torch.float64, requires_grad=True)
    neg = torch.tensor(-0.37, dtype=torch.float64, requires_grad=True)
    out, out_neg = lsq_quantize(v, s, qn, qp), lsq_quantize(v, neg, qn, qp)
    assert torch.equal(out_neg, paper_forward(v, 0.37, qn, qp))
    assert torch.equal(out_neg, out)
    assert float(out_neg.detach().min()) == pytest.approx(-qn * 0.37) and float(out_neg.detach().max()) == pytest.approx(qp * 0.37)
    out.sum().backward()
    out_neg.sum().backward()
    assert float(neg.grad) == pytest.approx(-float(s.grad))  # d|s|/ds = sign(s)
    assert torch.equal(lsq_quantize_int(v, neg.detach(), qn, qp), lsq_quantize_int(v, s.detach(), qn, qp))


def test_lsq_weight_quantizer_with_a_negative_step_equals_its_frozen_form():
    from lowbit.nn.lsq import LSQWeightQuantizer
    from lowbit.granularity import PerChannel
    from lowbit.spec import QuantSpec

    w = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    wq = LSQWeightQuantizer(QuantSpec(IntFormat(2), PerChannel(0)), w)
    with torch.no_grad():
        wq.step[::2] *= -1  # steps carried through zero by training
    trained = wq(w).detach()
    wq.freeze(w)
    assert torch.equal(wq.fake(w), trained)
