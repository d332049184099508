"""Integer magnitude: ``sqrt(a^2 + b^2)`` of two int8 tensors on one grid, to the codes of the next grid.

The front end of an STFT-based network (Silero VAD) computes the magnitude of a complex spectrum whose real and
imaginary parts are two halves of one convolution's output: both lie on one grid ``(s, z)``, and the magnitude is
read by a quantizer ``(s_o, z_o)``. With the centred codes ``x = q_a - z``, ``y = q_b - z`` the real magnitude is
``s sqrt(x^2 + y^2)``; its code is ``z_o + round(sqrt(S) M)`` with ``S = x^2 + y^2`` and ``M = s / s_o``. ``M`` is
the fixed-point number ``m / 2^n`` with ``2^14 <= m < 2^15`` (:func:`multiplier`: 15 significant bits, relative
error below ``2^-15``), and the code is computed exactly, in integers::

    S   = x^2 + y^2                                     int64 (|x|, |y| <= 255: S < 2^17)
    v   = 4 S m^2                                       int64 (< 2^2 2^17 2^30 = 2^49: exact, also in a double)
    r   = (isqrt(v) + 2^n) >> (n + 1)                   = round_half_up(sqrt(S) m / 2^n)
    out = clamp(z_o + r, lo, hi)

Why ``r`` is the correctly rounded ``t = sqrt(S) m / 2^n`` (half up): ``sqrt(v) = 2 m sqrt(S) = 2^(n+1) t``, and
for a real ``u >= 0`` and an integer ``k >= 0``, ``k <= sqrt(u)`` iff ``k^2 <= u`` iff ``k^2 <= floor(u)``, so
``isqrt(v) = floor(2^(n+1) t)``. Adding the integer ``2^n`` commutes with the floor, and for an integer ``d > 0``
``floor(floor(w) / d) = floor(w / d)``, so ``(floor(2^(n+1) t) + 2^n) >> (n + 1) = floor((2^(n+1) t + 2^n) /
2^(n+1)) = floor(t + 1/2)``. No approximation of the square root enters: these are the codes of exact real
arithmetic with the multiplier ``m / 2^n``.

The integer square root (:func:`isqrt64`) is ``floor(sqrt(double(v)))`` corrected by one either way: ``v < 2^53`` is
exact in a double and IEEE ``sqrt`` is correctly rounded, so the rounded root is within one of the true floor; the
correction (``r - 1`` where ``r^2 > v``, ``r + 1`` where ``(r + 1)^2 <= v``) makes it exact (it is the ONNX form's
too, :func:`lowbit.export.onnx_int.emit_magnitude`). This is the arithmetic of the simulation's
:class:`lowbit.nn.magnitude.QMagnitude` once frozen and of the integer model's ``magnitude`` op
(:class:`lowbit.integer.ir.Magnitude`), so the two agree bit for bit.
"""

from __future__ import annotations

import math

import torch

MULT_BITS = 15  # m < 2^15: 4 S m^2 < 2^49 for 8-bit inputs
MAX_SHIFT = 48  # a tinier multiplier rounds every output to the zero point anyway
MAX_CENTRED = 255  # |q - z| of 8-bit codes
ROOT_LIMIT = 1 << 53  # v below this: exact in a double


def multiplier(ratio: float) -> tuple[int, int]:
    """``(m, n)`` with ``m / 2^n ~= ratio > 0``: ``2^14 <= m < 2^15`` where ``0 <= n <= 48`` allows it; a ratio of
    ``2^15`` or more gives ``n = 0`` and ``m = 2^15 - 1`` (every nonzero magnitude saturates an 8-bit output either
    way), a ratio below ``2^-34`` a small ``m`` (possibly 0) at ``n = 48``."""
    if not (math.isfinite(ratio) and ratio > 0):
        raise ValueError(f"the magnitude's scale ratio must be finite and > 0, not {ratio!r}")
    frac, exp = math.frexp(ratio)  # ratio = frac 2^exp, frac in [0.5, 1)
    n = MULT_BITS - exp
    m = round(math.ldexp(frac, MULT_BITS))
    if m == 1 << MULT_BITS:  # frac rounded up to 1
        m, n = m >> 1, n - 1
    if n < 0:
        return (1 << MULT_BITS) - 1, 0
    if n > MAX_SHIFT:
        return round(math.ldexp(ratio, MAX_SHIFT)), MAX_SHIFT
    return int(m), int(n)


def isqrt64(v: torch.Tensor) -> torch.Tensor:
    """``floor(sqrt(v))`` of an int64 tensor ``0 <= v < 2^53``: the double root, corrected by one either way."""
    r = torch.sqrt(v.to(torch.float64)).floor().to(torch.int64)
    r = r - (r * r > v).to(torch.int64)
    return r + ((r + 1) * (r + 1) <= v).to(torch.int64)


def magnitude_codes(x: torch.Tensor, y: torch.Tensor, m: int, n: int, zero_point: int, lo: int,
                    hi: int) -> torch.Tensor:
    """int64 output codes ``clamp(zero_point + round_half_up(sqrt(x^2 + y^2) m / 2^n), lo, hi)`` of the centred
    int64 codes ``x``, ``y`` (``|x|, |y| <= 255``; module docstring)."""
    s = x * x + y * y
    r = (isqrt64(s * (4 * m * m)) + (1 << n)) >> (n + 1)
    return (r + zero_point).clamp_(lo, hi)


__all__ = ["MAX_CENTRED", "MAX_SHIFT", "MULT_BITS", "isqrt64", "magnitude_codes", "multiplier"]
