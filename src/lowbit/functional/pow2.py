"""Power-of-two weights (LBW-Net), log2 quantization and dynamic fixed point.

Power-of-two projection (Yin et al., LBW-Net), ``b >= 3`` bits, ``n = 2^(b-1) - 1``:
the levels are ``alpha * {0, +-2^-(n-1), ..., +-1/2, +-1}``; the nearest level to
``m = |w| / alpha`` is found with the thresholds

    m >= 1                          -> 1
    3/4 * 2^-k <= m < 3/2 * 2^-k    -> 2^-k        (midpoints between neighbours)
    m < 2^-n                        -> 0           (midpoint between 0 and 2^-(n-1))

The scale ``alpha`` minimises ``||w - Q||^2``: a grid search over
``alpha = c * max|w|``, ``c in [1/4, 1]``, then the least-squares fixed point
``alpha = <|w|, L> / ||L||^2`` (``L`` the chosen levels), keeping the best
(our implementable reading of the paper's semi-analytical scheme with its one
free parameter; see ``shared/research/papers.md`` K).

Log2 quantization (Miyashita, Lee, Murmann 2016): ``sign(x) * 2^round(log2|x|)``
with the exponent clipped to ``[e_max - m + 1, e_max]``, ``m = 2^(b-1) - 1``, and
values below ``2^(e_min - 1/2)`` set to 0.

Dynamic fixed point (papers A and B): ``f = b - 1 - ceil(log2 max|x|)``,
``Q(x) = clip(round(x * 2^f), -2^(b-1), 2^(b-1)-1) * 2^-f``.
"""

from __future__ import annotations


import torch

from lowbit.errors import ConfigError
from lowbit.formats import DynamicFixedPoint, Log2, PowerOfTwo
from lowbit.functional._checks import check_tensor
from lowbit.functional.rounding import ste
from lowbit.functional.ternary import ternarize
from lowbit.granularity import Granularity, PerTensor, broadcast, rows, unrows


def pow2_project(m: torch.Tensor, n_exponents: int) -> torch.Tensor:
    """Nearest level of ``{0, 2^-(n-1), ..., 1/2, 1}`` to magnitudes ``m >= 0`` (ties round up)."""
    safe = m.clamp_min(torch.finfo(m.dtype).tiny)
    e = torch.floor(torch.log2(safe))  # m in [2^e, 2^(e+1))
    level = torch.where(safe >= 1.5 * torch.exp2(e), torch.exp2(e + 1), torch.exp2(e))
    level = level.clamp(max=1.0, min=2.0 ** (-(n_exponents - 1)))
    return torch.where(m < 2.0 ** (-n_exponents), torch.zeros_like(m), level)


def pow2_round(x: torch.Tensor, n_exponents: int) -> torch.Tensor:
    """Nearest of the integers ``{0, +-1, +-2, +-4, ..., +-2^(n-1)}`` to ``x`` (clipped at ``2^(n-1)``).

    The power-of-two levels on an integer grid: ``alpha * 2^-k = s * 2^(n-1-k)`` with
    ``s = alpha / 2^(n-1)``, so a ``b``-bit power-of-two weight is an integer code of at
    most ``2^(n-1)`` times a scale (``b = 4``: ``n = 7``, codes up to 64, an int8).
    """
    top = 2.0 ** (n_exponents - 1)
    return torch.sign(x) * top * pow2_project(x.abs() / top, n_exponents)


def pow2_round_ste(x: torch.Tensor, n_exponents: int) -> torch.Tensor:
    """:func:`pow2_round` with a straight-through gradient (LSQ with power-of-two levels)."""
    return ste(x, pow2_round(x.detach(), n_exponents))


def pow2_quantize(w: torch.Tensor, fmt: PowerOfTwo, granularity: Granularity = PerTensor(),
                  grid: int = 64, iters: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Power-of-two weights: ``(levels, alpha)`` with ``w ~ alpha[row] * levels``.

    ``levels`` holds signed values of ``{0, +-2^-k}``; ``alpha`` one scale per row.
    For 2 bits this is the exact ternary solution.
    """
    check_tensor(w, "weights")
    if not isinstance(fmt, PowerOfTwo):
        raise ConfigError(f"pow2_quantize needs a PowerOfTwo format, got {fmt!r}")
    tern = ternarize(w, granularity, "lbw")
    if fmt.bits == 2:
        return tern.codes.to(torch.float32), tern.alpha_pos
    r = rows(w.detach().to(torch.float32), granularity)
    sign, mag = torch.sign(r), r.abs()
    amax = mag.amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny)

    def sq_error(alpha: torch.Tensor) -> torch.Tensor:
        levels = pow2_project(mag / alpha[:, None], fmt.n_exponents)
        return ((mag - alpha[:, None] * levels) ** 2).sum(dim=1)

    # the objective is piecewise and has local minima in alpha: a coarse grid first ...
    best_alpha, best_err = amax.clone(), sq_error(amax)
    for c in torch.linspace(0.25, 1.0, grid)[:-1]:
        err = sq_error(amax * c)
        better = err < best_err
        best_err, best_alpha = torch.where(better, err, best_err), torch.where(better, amax * c, best_alpha)
    # ... then the least-squares fixed point alpha = <|w|, L> / ||L||^2 from the best grid point
    alpha = best_alpha
    for _ in range(iters):
        levels = pow2_project(mag / alpha[:, None], fmt.n_exponents)
        denom = (levels**2).sum(dim=1)
        alpha = torch.where(denom > 0, (mag * levels).sum(dim=1) / denom.clamp_min(1e-30), alpha)
        err = sq_error(alpha)
        better = err < best_err
        best_err, best_alpha = torch.where(better, err, best_err), torch.where(better, alpha, best_alpha)
    levels = sign * pow2_project(mag / best_alpha[:, None], fmt.n_exponents)
    return unrows(levels, granularity, w.shape), best_alpha


def pow2_fake_quant(w: torch.Tensor, fmt: PowerOfTwo, granularity: Granularity = PerTensor()) -> torch.Tensor:
    """``alpha * levels`` with a straight-through gradient."""
    levels, alpha = pow2_quantize(w, fmt, granularity)
    q = (levels * broadcast(alpha, granularity, w.shape)).to(w.dtype)
    return ste(w, q)


def log2_quantize(x: torch.Tensor, fmt: Log2, e_max: int | None = None,
                  granularity: Granularity = PerTensor()) -> torch.Tensor:
    """Log-domain quantization to zero or ``+-2^e`` (STE gradient).

    ``e_max`` defaults to ``round(log2 max|x|)`` per row of ``granularity``.
    """
    check_tensor(x)
    if not isinstance(fmt, Log2):
        raise ConfigError(f"log2_quantize needs a Log2 format, got {fmt!r}")
    r = rows(x.detach().to(torch.float32), granularity)
    mag = r.abs()
    tiny = torch.finfo(torch.float32).tiny
    if e_max is None:
        top = torch.round(torch.log2(mag.amax(dim=1).clamp_min(tiny)))[:, None]
    else:
        top = torch.full((r.shape[0], 1), float(e_max))
    bottom = top - (fmt.n_exponents - 1)
    e = torch.round(torch.log2(mag.clamp_min(tiny)))
    q = torch.sign(r) * torch.exp2(torch.minimum(torch.maximum(e, bottom), top))
    q = torch.where(torch.log2(mag.clamp_min(tiny)) < bottom - 0.5, torch.zeros_like(q), q)
    q = unrows(q, granularity, x.shape).to(x.dtype)
    return ste(x, q)


def frac_length(x: torch.Tensor, bits: int, granularity: Granularity = PerTensor()) -> torch.Tensor:
    """Fractional length ``f = b - 1 - ceil(log2 max|x|)`` per row (int64)."""
    check_tensor(x)
    amax = rows(x.detach().abs().to(torch.float32), granularity).amax(dim=1)
    amax = amax.clamp_min(torch.finfo(torch.float32).tiny)
    return (bits - 1 - torch.ceil(torch.log2(amax))).to(torch.int64)


def dynamic_fixed_point(x: torch.Tensor, fmt: DynamicFixedPoint, frac_len: torch.Tensor | int | None = None,
                        granularity: Granularity = PerTensor()) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Q(x), f)``: ``x`` on a ``b``-bit grid of step ``2^-f`` (STE gradient), and ``f`` per row."""
    check_tensor(x)
    if not isinstance(fmt, DynamicFixedPoint):
        raise ConfigError(f"dynamic_fixed_point needs a DynamicFixedPoint format, got {fmt!r}")
    f = frac_length(x, fmt.bits, granularity) if frac_len is None else torch.as_tensor(frac_len, dtype=torch.int64)
    n_rows = rows(x, granularity).shape[0]
    f = f.expand(n_rows) if f.numel() == 1 else f
    step = broadcast(torch.exp2(-f.to(torch.float32)), granularity, x.shape)
    qmin, qmax = fmt.int_format.qmin, fmt.int_format.qmax
    q = torch.clamp(torch.round(x.detach() / step), qmin, qmax) * step
    return ste(x, q.to(x.dtype)), f


def pow2_scale(scale: torch.Tensor) -> torch.Tensor:
    """Round a positive scale to the nearest power of two in the log domain (shift-only requantization)."""
    return torch.exp2(torch.round(torch.log2(scale.clamp_min(torch.finfo(torch.float32).tiny))))


__all__ = ["dynamic_fixed_point", "frac_length", "log2_quantize", "pow2_fake_quant", "pow2_project",
           "pow2_quantize", "pow2_round", "pow2_round_ste", "pow2_scale"]
