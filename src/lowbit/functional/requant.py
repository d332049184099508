"""Integer requantization: a 64-bit product with an integer multiplier, then a rounding right shift.

A layer with input scale ``s_x``, per-channel weight scales ``s_w`` and output
scale ``s_y`` accumulates ``acc = sum (q_x - z_x) q_w + q_b`` in int32 (the bias
``q_b = round(b / (s_x s_w))`` lives on the accumulator's grid). Its output code is

    q_y = clamp( z_y + rshift_round(acc * m [+ (q_r - z_r) * m2], n), lo, hi )

where ``M = s_x s_w / s_y ~= m / 2^n`` (Jacob et al., CVPR 2018, sec. 2.2) with
``m`` an integer of at most :data:`MULTIPLIER_BITS` bits, ``m2 ~= (s_r / s_y) 2^n``
rescales a residual input, and ``lo``/``hi`` fold the clipping activation
(ReLU, ReLU6, clamp) into the saturation bounds: for a monotone rounding,
``Q(relu(v)) = max(Q(v), z_y)``. When every scale is a power of two (method H,
Geng et al. 2019), ``m`` and ``m2`` are powers of two and requantization is a
shift alone.

Rounding is half to even, as in PyTorch's and onnxruntime's float
requantization, so the two agree except when a float product rounds across a
half.
"""

from __future__ import annotations

import torch

MULTIPLIER_BITS = 24  # like a float32 mantissa: m * 2^-n is the float32 value of M
MAX_SHIFT = 62


def fixed_point(multiplier: torch.Tensor, bits: int = MULTIPLIER_BITS) -> tuple[torch.Tensor, torch.Tensor]:
    """``(m, n)`` int64 with ``m / 2^n ~= multiplier`` (relative error <= 2^-bits), ``m`` odd or ``n == 0``.

    Trailing zero bits of ``m`` are moved into the shift, so a power of two gives
    ``m = 1`` (or ``m = 2^k`` with ``n = 0`` when it is >= 1).
    """
    M = multiplier.to(torch.float64)
    if not bool(torch.isfinite(M).all()) or bool((M <= 0).any()):
        raise ValueError("requantization multipliers must be finite and > 0 (a zero or NaN scale upstream)")
    frac, exp = torch.frexp(M)  # M = frac * 2^exp, frac in [0.5, 1)
    m = torch.round(torch.ldexp(frac, torch.full_like(exp, bits))).to(torch.int64)
    n = bits - exp.to(torch.int64)
    overflow = m == (1 << bits)  # frac rounded up to 1.0
    m, n = torch.where(overflow, m >> 1, m), torch.where(overflow, n - 1, n)
    left = torch.clamp(-n, min=0)  # M >= 2^bits: shift m left instead of a negative right shift
    m, n = m << left, n + left
    too_far = n > MAX_SHIFT  # tiny multipliers: keep the shift defined in int64
    m = torch.where(too_far, torch.round(torch.ldexp(M, torch.full_like(exp, MAX_SHIFT))).to(torch.int64), m)
    n = torch.where(too_far, torch.full_like(n, MAX_SHIFT), n)
    return _strip_trailing_zeros(m, n)


def _strip_trailing_zeros(m: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    for _ in range(MAX_SHIFT):
        even = (m % 2 == 0) & (n > 0) & (m != 0)
        if not bool(even.any()):
            break
        m, n = torch.where(even, m >> 1, m), torch.where(even, n - 1, n)
    return m, n


def half_of(n: torch.Tensor) -> torch.Tensor:
    """``2^(n-1)`` for integer shifts ``n >= 0``, and 0 where ``n = 0``: half a step of a right shift by ``n``."""
    return (torch.ones_like(n) << n) >> 1


def rshift_round(v: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """``round(v / 2^n)``, ties to even, in integer arithmetic (``v``, ``n`` int64, ``n >= 0``)."""
    q = v >> n
    r = v - (q << n)  # 0 <= r < 2^n
    half = half_of(n)
    up = (r > half) | ((r == half) & (n > 0) & ((q & 1) == 1))
    return q + up.to(q.dtype)


def requantize(acc: torch.Tensor, m: torch.Tensor, n: torch.Tensor, zero_point: int, lo: int, hi: int,
               residual: torch.Tensor | None = None, m2: torch.Tensor | None = None) -> torch.Tensor:
    """Output codes (int64) from int accumulators; ``m``, ``n``, ``m2`` broadcast against ``acc``."""
    v = acc.to(torch.int64) * m
    if residual is not None:
        v = v + residual.to(torch.int64) * m2
    return (rshift_round(v, n) + zero_point).clamp_(lo, hi)





def dequantize_codes(q: torch.Tensor, zero_point: int, scale: float) -> torch.Tensor:
    """Float32 value of integer codes, ``(q - z) * s`` with ``s`` in float32: the one formula the
    simulation, the integer model and its residual inputs share, so their floats agree bit for bit."""
    return (q.to(torch.float32) - zero_point) * torch.tensor(scale, dtype=torch.float32)


def dequantize_acc(acc: torch.Tensor, acc_scale: torch.Tensor) -> torch.Tensor:
    """Float32 value of an int accumulator: ``float32(acc * s_x s_w)`` computed in float64 (exact product)."""
    return (acc.to(torch.float64) * acc_scale).to(torch.float32)


__all__ = ["MULTIPLIER_BITS", "dequantize_acc", "dequantize_codes", "fixed_point", "requantize", "rshift_round"]
