"""Integer LayerNorm (I-BERT style, Kim et al. 2021): from 8-bit codes on per-feature grids to the codes of the next grid.

The input of a LayerNorm over the last dimension of ``C`` features holds, at feature ``c``, the real value
``s_c (q_c - z_c)`` (one scale and zero point per feature, :mod:`lowbit.graph.norm_inputs`; a per-tensor grid is the
case ``s_c = s``, ``z_c = z``). Its output ``y_c = gamma_c (v_c - mean) / sqrt(var + eps) + beta_c`` is read by a
quantizer ``(s_o, z_o)`` whose codes are computed here in integers only.

**A common fine grid.** With ``s_max = max_c s_c`` the fine grid is ``S = s_max 2^-24`` and ``M_c = round(s_c / S) =
round(2^24 s_c / s_max)`` (``0 <= M_c <= 2^24``, :func:`layernorm_params`), so ``X_c = (q_c - z_c) M_c`` is the
int64 fixed-point value of ``v_c / S``: its relative error is ``|M_c - s_c / S| / (s_c / S) <= 1 / (2 M_c)``, at most
``2^-25`` for the widest feature and ``1 / (2^25 s_c / s_max)`` for the others (``3e-6`` for a feature whose scale is
``1/100`` of the widest, as a BERT residual stream's features are beside its outlier ones: with 15 bits it was
``0.3%``, and the output codes of such features moved). The variance needs far fewer bits; it reads ``D >> 9``,
on the grid ``2^9 S``. With integer divisions::

    X_c   = (q_c - z_c) M_c                                     |X_c| <= 255 2^24 < 2^32
    mu    = floor((2 sum_c X_c + C) / (2 C))                    round(sum X / C), half up;  |mu| < 2^32
    D_c   = X_c - mu                                            |D_c| < 2^33
    var   = floor(sum_c (D_c >> 9)^2 / C) + E                   E = round(eps / (2^9 S)^2) <= 2^52: var < 2^53
    sigma = isqrt(var)                                          exact (isqrt64: var < 2^53), sigma < 2^26.5 (unit 2^9 S)
    num_c = D_c A_c + B_c sigma 2^9                             A_c = round(2^k gamma_c / s_o), B_c = round(2^k beta_c / s_o)
    den   = sigma 2^(k + 9)                                     |A_c|, |B_c| <= 2^24 - 1, 0 <= k <= 25
    y_c   = clamp(z_o + sign(num_c) floor((2 |num_c| + den) / (2 den)), lo, hi)

The last line is ``round(num_c / den)`` half away from zero, ONE rounding of ``(D_c / sigma) (gamma_c / s_o) + beta_c /
s_o`` (beta folded into the numerator over the same denominator). Where ``sigma = 0`` (only when ``eps`` rounds to
``E = 0`` and every ``D_c`` is tiny) the output is ``z_o + round(B_c / 2^k)``, the code of ``beta_c``, as float
LayerNorm gives for a constant row with ``eps > 0``.

**No overflow (int64, and doubles where exactness matters).** ``|X| <= 255 2^24 < 2^32`` and ``mu`` is a rounded
mean of the ``X``, so ``|mu| < 2^32`` and ``|D| < 2^33``: ``(D >> 9)^2 < 2^48``, and with ``C <= 2^14``
(:data:`MAX_FEATURES`) their sum ``< 2^62`` and ``|2 sum X + C| < 2^48``. ``var < 2^48 + 2^52 < 2^53``, the range where
:func:`isqrt64` (a double root plus an exact correction) is exact; ``sigma <= 2^26.5``. ``|D A| < 2^33 2^24 = 2^57``
and ``|B sigma 2^9| < 2^24 2^26.5 2^9 = 2^59.5``, so ``|num| < 2^60`` and ``2 |num| + den < 2^62``;
``2 den <= 2^1 2^26.5 2^34 < 2^62``.
:mod:`lowbit.integer.validate` refuses a file whose attributes or tensors break any of these bounds.

**The shift** ``k`` is the largest in ``0..25`` with ``2^k max(|gamma / s_o|, |beta / s_o|) < 2^24``: ``A`` and ``B``
keep 23-24 significant bits for the largest coefficient (relative error ``<= 2^-24``).

**Error against float LayerNorm** (on the dequantized input, ``eps`` included): the scale multipliers (``<= 1 / (2
M_c)`` relative per feature, above), the mean (``<= 1/2`` of ``S``), the variance floor and ``E``'s rounding (``<= 1``
of ``(2^9 S)^2`` each, and the ``>> 9``: ``<= 1`` of ``2^9 S`` per ``D``), ``sigma``'s floor (relative ``< 1 / sigma``,
``sigma`` counted in ``2^9 S``: ``~ 2^15 std / s_max``) and ``A``, ``B`` (``2^-24``) add up to a relative error of the
normalised value of order ``1e-5`` even when some feature's scale is ``1/100`` of the widest; the output code is then the correctly
rounded code of a value within that error, so it differs from ``round(float / s_o)`` by at most one code, and only
near a half. This is the arithmetic of the simulation's :class:`lowbit.nn.layernorm.QLayerNorm` once frozen and of the
integer model's ``layernorm`` op (:class:`lowbit.integer.ir.LayerNorm`), so the two agree bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lowbit.functional.magnitude import isqrt64

FINE_BITS = 24  # M_c <= 2^24: |X| < 2^32
VAR_SHIFT = 9  # the variance reads D >> 9: |D >> 9| < 2^24
MAX_MULT = 1 << FINE_BITS
MAX_FEATURES = 1 << 14  # sum of C values (D >> 9)^2 < 2^48 stays below 2^62
MAX_EPS = 1 << 52  # var + E < 2^53: exact isqrt64
COEF_BITS = 24  # 2^k max|gamma / s_o|, 2^k max|beta / s_o| < 2^24
MAX_COEF = (1 << 24) - 1  # |A|, |B| (saturated only when k = 0 cannot bring them below 2^24)
MAX_SHIFT = 25


@dataclass(frozen=True)
class LayerNormParams:
    """The integers of one integer LayerNorm: per-feature ``multipliers`` ``M_c``, ``gamma`` ``A_c``, ``beta``
    ``B_c`` (int64, shape (C,)), the coefficient ``shift`` ``k`` and ``eps`` ``E`` (module docstring)."""

    multipliers: torch.Tensor
    gamma: torch.Tensor
    beta: torch.Tensor
    shift: int
    eps: int


def layernorm_params(scales: torch.Tensor, gamma: torch.Tensor | None, beta: torch.Tensor | None, eps: float,
                     out_scale: float) -> LayerNormParams:
    """The integers for input features on scales ``scales`` (shape (C,), > 0), the affine ``gamma`` / ``beta``
    (None: 1 / 0), float LayerNorm's ``eps`` and the output scale ``out_scale`` (module docstring)."""
    s = scales.detach().to(torch.float64).reshape(-1)
    c = s.numel()
    if not 1 <= c <= MAX_FEATURES:
        raise ValueError(f"the integer LayerNorm normalises 1..{MAX_FEATURES} features, not {c}")
    if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
        raise ValueError("the integer LayerNorm needs finite input scales > 0")
    if not (math.isfinite(out_scale) and out_scale > 0) or not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"the integer LayerNorm needs an output scale > 0 and eps >= 0 (got {out_scale!r}, {eps!r})")
    s_max = float(s.max())
    mult = torch.round(s / s_max * MAX_MULT).to(torch.int64).clamp_(0, MAX_MULT)
    coarse = math.ldexp(s_max, VAR_SHIFT - FINE_BITS)  # the variance's unit: 2^9 S
    e = eps / (coarse * coarse)
    eps_int = MAX_EPS if not e < MAX_EPS else int(round(e))
    g = torch.ones(c, dtype=torch.float64) if gamma is None else gamma.detach().to(torch.float64).reshape(-1)
    b = torch.zeros(c, dtype=torch.float64) if beta is None else beta.detach().to(torch.float64).reshape(-1)
    if g.numel() != c or b.numel() != c or not bool(torch.isfinite(g).all() and torch.isfinite(b).all()):
        raise ValueError(f"the integer LayerNorm needs {c} finite weights and biases")
    g, b = g / out_scale, b / out_scale
    top = max(float(g.abs().max()), float(b.abs().max()))
    shift = MAX_SHIFT if top == 0 else min(MAX_SHIFT, max(0, COEF_BITS - math.frexp(top)[1]))  # top < 2^e
    a_int = torch.round(torch.ldexp(g, torch.tensor(shift))).clamp_(-MAX_COEF, MAX_COEF).to(torch.int64)
    b_int = torch.round(torch.ldexp(b, torch.tensor(shift))).clamp_(-MAX_COEF, MAX_COEF).to(torch.int64)
    return LayerNormParams(mult, a_int, b_int, int(shift), int(eps_int))


def layernorm_codes(x: torch.Tensor, mult: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, shift: int,
                    eps: int, zero_point: int, lo: int, hi: int) -> torch.Tensor:
    """int64 output codes of the centred int64 input codes ``x = q - z`` (``|x| <= 255``, last dimension the ``C``
    features) with per-feature ``mult`` ``M``, ``gamma`` ``A``, ``beta`` ``B`` (int64 (C,)), the shift ``k``, the
    integer ``eps`` ``E``, the output zero point and bounds (module docstring)."""
    c = x.shape[-1]
    big = x.to(torch.int64) * mult
    mu = torch.div(2 * big.sum(dim=-1, keepdim=True) + c, 2 * c, rounding_mode="floor")
    d = big - mu
    dv = d >> VAR_SHIFT  # (floor)
    var = torch.div((dv * dv).sum(dim=-1, keepdim=True), c, rounding_mode="floor") + eps
    sigma = isqrt64(var)
    zero = sigma == 0
    d = torch.where(zero, torch.zeros_like(d), d)
    sigma = torch.where(zero, torch.ones_like(sigma), sigma)
    num = d * gamma + (beta * sigma << VAR_SHIFT)
    den = sigma << (shift + VAR_SHIFT)
    r = torch.div(2 * num.abs() + den, 2 * den, rounding_mode="floor") * torch.sign(num)
    return (r + zero_point).clamp_(lo, hi)


__all__ = ["FINE_BITS", "VAR_SHIFT", "LayerNormParams", "MAX_COEF", "MAX_EPS", "MAX_FEATURES", "MAX_MULT", "MAX_SHIFT",
           "layernorm_codes", "layernorm_params"]
