"""Affine fake-quant against PyTorch's own fake-quant ops (the oracle), bit for bit."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lowbit.errors import ConfigError, DataError
from lowbit.formats import IntFormat
from lowbit.functional import dequantize_affine, fake_quant_affine, qparams_from_range, quantize_affine


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("symmetric", [True, False])
def test_per_tensor_equals_torch(bits, signed, symmetric):
    gen = torch.Generator().manual_seed(bits)
    x = torch.randn(4096, generator=gen) * 3 + (0 if signed else 1)
    fmt = IntFormat(bits, signed)
    scale, zp = qparams_from_range(x.min(), x.max(), fmt, symmetric)
    ours = fake_quant_affine(x, scale, zp, fmt)
    ref = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zp), fmt.qmin, fmt.qmax)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("axis", [0, 1, 3])
def test_per_channel_equals_torch(bits, axis):
    gen = torch.Generator().manual_seed(100 + bits)
    x = torch.randn(6, 5, 4, 3, generator=gen) * torch.rand(1, generator=gen) * 10
    fmt = IntFormat(bits)
    lo = x.movedim(axis, 0).reshape(x.shape[axis], -1).amin(1)
    hi = x.movedim(axis, 0).reshape(x.shape[axis], -1).amax(1)
    scale, zp = qparams_from_range(lo, hi, fmt, symmetric=False)
    ours = fake_quant_affine(x, scale, zp, fmt, axis=axis)
    ref = torch.fake_quantize_per_channel_affine(x, scale, zp, axis, fmt.qmin, fmt.qmax)
    assert torch.equal(ours, ref)


def test_gradient_equals_torch_ste_mask():
    x = (torch.randn(1000) * 4).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    fmt = IntFormat(4)
    fake_quant_affine(x, torch.tensor(0.25), torch.tensor(0), fmt).sum().backward()
    torch.fake_quantize_per_tensor_affine(x_ref, 0.25, 0, fmt.qmin, fmt.qmax).sum().backward()
    assert torch.equal(x.grad, x_ref.grad)
    assert 0 < x.grad.sum() < 1000  # some elements clipped, some not


def test_quantize_then_dequantize_is_fake_quant():
    x = torch.randn(300)
    fmt = IntFormat(6, signed=False)
    scale, zp = qparams_from_range(x.min(), x.max(), fmt, symmetric=False)
    q = quantize_affine(x, scale, zp, fmt)
    assert q.dtype == torch.int32 and int(q.min()) >= 0 and int(q.max()) <= 63
    assert torch.equal(dequantize_affine(q, scale, zp), fake_quant_affine(x, scale, zp, fmt))


def test_zero_is_exactly_representable():
    fmt = IntFormat(8, signed=False)
    scale, zp = qparams_from_range(torch.tensor(0.3), torch.tensor(2.0), fmt, symmetric=False)
    assert float(fake_quant_affine(torch.zeros(1), scale, zp, fmt)) == 0.0


@given(st.integers(2, 8), st.floats(0.01, 100.0), st.integers(0, 2**31 - 1))
def test_error_at_most_half_step_inside_range(bits, spread, seed):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(257, generator=gen) - 0.5) * spread
    fmt = IntFormat(bits)
    scale, zp = qparams_from_range(x.min(), x.max(), fmt, symmetric=False)
    err = (fake_quant_affine(x, scale, zp, fmt) - x).abs()
    assert float(err.max()) <= float(scale) / 2 * (1 + 1e-5) + 1e-7


@given(st.integers(1, 8), st.booleans(), st.integers(0, 2**31 - 1))
def test_idempotent_monotone_and_level_count(bits, signed, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2000, generator=gen).sort().values * 5
    fmt = IntFormat(bits, signed)
    scale, zp = qparams_from_range(x.min(), x.max(), fmt, symmetric=signed and bits > 1)
    y = fake_quant_affine(x, scale, zp, fmt)
    assert torch.equal(fake_quant_affine(y, scale, zp, fmt), y)  # idempotent
    assert bool((y[1:] >= y[:-1]).all())  # monotone (x is sorted)
    assert y.unique().numel() <= 2**bits


def test_bad_inputs_raise_clear_errors():
    fmt = IntFormat(8)
    with pytest.raises(DataError, match="NaN"):
        fake_quant_affine(torch.tensor([1.0, float("nan")]), torch.tensor(0.1), torch.tensor(0), fmt)
    with pytest.raises(DataError, match="inf"):
        fake_quant_affine(torch.tensor([float("inf")]), torch.tensor(0.1), torch.tensor(0), fmt)
    with pytest.raises(DataError, match="empty"):
        fake_quant_affine(torch.empty(0), torch.tensor(0.1), torch.tensor(0), fmt)
    with pytest.raises(ConfigError, match="axis 4 is out of range"):
        fake_quant_affine(torch.randn(2, 3), torch.ones(3), torch.zeros(3), fmt, axis=4)
    with pytest.raises(ConfigError, match="3 scales for 2 channels"):
        fake_quant_affine(torch.randn(2, 3), torch.ones(3), torch.zeros(3), fmt, axis=0)
    with pytest.raises(DataError, match="NaN"):
        qparams_from_range(torch.tensor(float("nan")), torch.tensor(1.0), fmt)
