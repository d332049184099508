"""Integer L2 normalisation: ``y = x / ||x||_2`` along one dimension, from int8 codes to codes on ``2^-7``.

A tensor on a grid ``(s, z)`` holds the real values ``s (q - z)``; with the centred codes ``x = q - z`` the
normalised vector ``s x / ||s x|| = x / ||x||`` does not depend on the scale ``s``. Its elements lie in
``[-1, 1]``; the output grid is the fixed signed grid ``2^-7`` (codes ``-127..127``, narrow: ``+1`` saturates to
``127 / 128``). The code of element ``i`` is the correctly rounded value of the real number
``t_i = 128 |x_i| / sqrt(S)``, ``S = sum_j x_j^2``, rounded half up (half away from zero, with the sign)::

    S   = sum_j x_j^2                          int64 (|x_j| <= 255: S <= 65025 K)
    u_i = floor(2^16 x_i^2 / S)                int64, 0 <= u_i <= 2^16 (x_i^2 <= S)
    k_i = (isqrt(u_i) + 1) >> 1                0 <= k_i <= 128
    y_i = sign(x_i) min(k_i, 127)              and y = 0 where S = 0 (every x_j = 0)

Why ``k_i = round_half_up(t_i)`` exactly: ``(2 t_i)^2 = 2^16 x_i^2 / S`` is a real ``v >= 0``, and for an integer
``n >= 0``, ``n <= sqrt(v)`` iff ``n^2 <= v`` iff ``n^2 <= floor(v)``, so ``isqrt(floor(v)) = floor(2 t_i)``; then
``floor((floor(2 t) + 1) / 2) = floor((2 t + 1) / 2) = floor(t + 1/2)``. No approximation of the square root
enters: the codes are those of exact real arithmetic, so a float64 computation of ``round(128 x / ||x||)`` agrees
except where its own rounding crosses a half (within one code), and an exact rational oracle agrees always.

Everything is integer: one int64 division per element and an integer square root of at most 17 bits (nine
compare-and-set steps, :func:`isqrt`). This is the arithmetic of the simulation's
:class:`lowbit.nn.l2norm.QL2Normalize` and of the integer model's ``l2normalize`` op
(:class:`lowbit.integer.ir.L2Normalize`), so the two agree bit for bit.
"""

from __future__ import annotations

import torch

OUT_FRAC = 7  # the output grid 2^-7
OUT_MAX = (1 << OUT_FRAC) - 1  # 127: |y| <= 1 on a narrow signed int8 grid
_ROOT_BITS = OUT_FRAC + 2  # isqrt(u) <= 2^(OUT_FRAC + 1) = 256 < 2^9


def isqrt(a: torch.Tensor, bits: int) -> torch.Tensor:
    """``floor(sqrt(a))`` of an int64 tensor ``0 <= a < 2^(2 bits)`` (``bits <= 31``), in integer operations only:
    the root's bits from the top, each kept when the square of the root so far stays ``<= a``."""
    r = torch.zeros_like(a)
    for b in reversed(range(bits)):
        c = r | (1 << b)
        r = torch.where(c * c <= a, c, r)
    return r


def l2_normalize_codes(x: torch.Tensor, dim: int) -> torch.Tensor:
    """int64 output codes on ``2^-7`` of the L2-normalised centred integer codes ``x`` (int64, ``|x| < 2^16``)
    along ``dim`` (module docstring)."""
    sq = x * x
    s = sq.sum(dim=dim, keepdim=True)
    u = torch.div(sq << (2 * (OUT_FRAC + 1)), s.clamp(min=1), rounding_mode="floor")  # S = 0: every x_i = 0, u = 0
    k = (isqrt(u, _ROOT_BITS) + 1) >> 1
    return torch.sign(x) * k.clamp(max=OUT_MAX)


def normalize_values(codes: torch.Tensor) -> torch.Tensor:
    """float32 values of output codes (exact: ``code / 2^7``)."""
    return codes.to(torch.float32) * 2.0 ** -OUT_FRAC


__all__ = ["OUT_FRAC", "OUT_MAX", "isqrt", "l2_normalize_codes", "normalize_values"]
