"""Affine (uniform) quantization: scale and zero point from a range, and fake-quantization.

For a format with integer range ``[qmin, qmax]`` (Jacob et al. 2018):

    q      = clamp(round(x / s) + z, qmin, qmax)          (quantize)
    x_hat  = (q - z) * s                                   (dequantize)

Fake-quantization returns ``x_hat``; its gradient is the straight-through
estimator masked to the representable range: ``d x_hat / dx = 1`` where
``qmin <= round(x/s) + z <= qmax``, else 0. The arithmetic is PyTorch's own
(``x * (1/s)`` in float32, round half to even), so the result equals
``torch.fake_quantize_per_{tensor,channel}_affine`` bit for bit.

Scale and zero point from a range ``[lo, hi]`` (widened to contain 0, so that
zero is exactly representable, as zero padding needs):

    symmetric:   s = max(|lo|, |hi|) / ((qmax - qmin) / 2),   z = 0 (signed) or (qmin+qmax+1)/2
    asymmetric:  s = (hi - lo) / (qmax - qmin),               z = clamp(qmin - round(lo / s), qmin, qmax)
"""

from __future__ import annotations

import torch

from lowbit.errors import ConfigError, DataError
from lowbit.formats import IntFormat
from lowbit.functional._checks import check_tensor

_EPS = torch.finfo(torch.float32).eps


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, fmt: IntFormat,
                       symmetric: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32) and zero point (int32) for each entry of the ranges ``lo``/``hi``."""
    lo, hi = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)
    check_tensor(lo, "range minimum")
    check_tensor(hi, "range maximum")
    bad = lo > hi
    if bool(bad.any()):
        a, b = (t.reshape(-1) for t in torch.broadcast_tensors(lo, hi))
        i = int(bad.reshape(-1).nonzero()[0])
        entry = f" (entry {i})" if bad.numel() > 1 else ""
        raise DataError(f"range minimum {float(a[i])} is above the range maximum {float(b[i])}{entry}: pass "
                        "qparams_from_range(lo, hi, ...) with lo <= hi (the arguments swapped?)")
    lo, hi = torch.minimum(lo, torch.zeros(())), torch.maximum(hi, torch.zeros(()))
    qmin, qmax = fmt.qmin, fmt.qmax
    if symmetric:
        amax = torch.maximum(-lo, hi)
        scale = (amax / ((qmax - qmin) / 2)).clamp_min(_EPS)
        zp_value = 0 if fmt.signed else (qmin + qmax + 1) // 2
        zero_point = torch.full_like(scale, zp_value, dtype=torch.int32)
    else:
        scale = ((hi - lo) / (qmax - qmin)).clamp_min(_EPS)
        zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax).to(torch.int32)
    return scale, zero_point


def _per_axis(t: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Reshape a per-channel parameter so it broadcasts along ``axis`` of ``x``."""
    if axis is None:
        if t.numel() != 1:
            raise ConfigError(f"per-tensor quantization takes one scale, got {t.numel()}; pass axis=")
        return t.reshape(())
    if not -x.ndim <= axis < x.ndim:
        raise ConfigError(f"channel axis {axis} is out of range for a tensor with {x.ndim} dimensions")
    axis %= x.ndim
    if t.numel() != x.shape[axis]:
        raise ConfigError(f"{t.numel()} scales for {x.shape[axis]} channels along axis {axis}")
    shape = [1] * x.ndim
    shape[axis] = -1
    return t.reshape(shape)


class _FakeQuantAffine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):  # type: ignore[override]
        inv_scale = torch.reciprocal(scale)
        q = torch.round(x * inv_scale) + zero_point
        mask = (q >= qmin) & (q <= qmax)
        ctx.save_for_backward(mask)
        return (q.clamp(qmin, qmax) - zero_point) * scale

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None, None, None


def quantize_affine(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                    fmt: IntFormat, axis: int | None = None) -> torch.Tensor:
    """Integer codes ``clamp(round(x/s) + z, qmin, qmax)`` as an int32 tensor."""
    check_tensor(x)
    s = _per_axis(scale.to(torch.float32), x, axis)
    z = _per_axis(zero_point, x, axis).to(torch.float32)
    q = torch.round(x * torch.reciprocal(s)) + z
    return q.clamp(fmt.qmin, fmt.qmax).to(torch.int32)


def dequantize_affine(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                      axis: int | None = None) -> torch.Tensor:
    """``(q - z) * s`` in float32."""
    s = _per_axis(scale.to(torch.float32), q, axis)
    z = _per_axis(zero_point, q, axis).to(torch.float32)
    return (q.to(torch.float32) - z) * s


def fake_quant_affine(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                      fmt: IntFormat, axis: int | None = None) -> torch.Tensor:
    """Quantize-dequantize ``x`` with one ``(scale, zero_point)`` or one per index of ``axis``.

    Equals ``torch.fake_quantize_per_tensor_affine`` (``axis=None``) or
    ``torch.fake_quantize_per_channel_affine`` bit for bit; gradient is the masked STE.
    """
    check_tensor(x)
    if not isinstance(fmt, IntFormat):
        raise ConfigError(f"affine fake-quant needs an IntFormat, got {fmt!r}")
    s = _per_axis(torch.as_tensor(scale, dtype=torch.float32), x, axis)
    z = _per_axis(torch.as_tensor(zero_point), x, axis).to(torch.float32)
    if not bool((s > 0).all()):
        raise ConfigError("scales must be positive")
    return _FakeQuantAffine.apply(x, s, z, float(fmt.qmin), float(fmt.qmax))
