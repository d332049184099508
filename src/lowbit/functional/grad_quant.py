"""k-bit gradient quantization (Hubara, Courbariaux et al., "Quantized Neural Networks: Training Neural
Networks with Low Precision Weights and Activations", JMLR 2018, sec. 4: gradients quantized to 6 bits).

QNN's linear quantizer ``LinearQuant(x, bw) = clip(round(x / bw) * bw, minV, maxV)``, applied to a
gradient tensor ``g`` with a per-tensor scale from its largest magnitude and unbiased stochastic
rounding in place of ``round``::

    M   = max |g|                      (over the whole tensor)
    n   = 2^(k-1) - 1                  (largest code of a symmetric k-bit grid)
    D   = M / n                        (the step, QNN's ``bw``)
    g_q = D * clip(SR(g / D), -n, n)   ([minV, maxV] = [-M, M])
    SR(v) = floor(v + u),  u ~ U[0, 1) (Gupta et al. 2015; :func:`lowbit.functional.rounding.stochastic_round`)

so every ``g_q`` lies on the grid ``{i D : i = -n..n}`` (``2^k - 1`` levels, codes that fit ``k``-bit
two's complement, zero included: a zero gradient stays zero), and ``E[g_q] = g`` because ``|g / D| <= n``
(the clip only catches a float rounding of ``M / D`` above ``n``). ``M = 0`` gives ``g_q = 0``.

The noise comes from an explicit ``torch.Generator``, never the global RNG; without one
(``generator=None``) the rounding is deterministic round-half-to-even (biased, for inspection only).

Sources: the QNN/BNN notes in ``research/papers.md`` give ``LinearQuant`` and "6-bit gradients" ([M],
not checked against the paper's PDF). DoReFa-Net (Zhou et al. 2016) quantizes gradients with a
``2^k``-level grid (no zero), a per-sample max and uniform noise; this module follows the symmetric
``LinearQuant`` reading.
"""

from __future__ import annotations

import torch

from lowbit.errors import DataError
from lowbit.formats import check_bits
from lowbit.functional._checks import check_tensor
from lowbit.functional.rounding import stochastic_round

GRAD_BITS = (2, 16)


def grad_levels(bits: int) -> int:
    """``n = 2^(bits-1) - 1``: the grid's codes are ``-n..n``."""
    check_bits(bits, "gradient bits", low=GRAD_BITS[0], high=GRAD_BITS[1])
    return (1 << (bits - 1)) - 1


def quantize_grad(g: torch.Tensor, bits: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``D * clip(SR(g / D), -n, n)`` with ``D = max|g| / (2^(bits-1) - 1)`` (see the module docstring).

    ``generator`` drives the stochastic rounding (drawn on its own device); ``None`` rounds to nearest.
    Not differentiable (it is meant for gradients, inside a backward pass).
    """
    n = grad_levels(bits)
    check_tensor(g, "gradient")
    g = g.detach()
    m = g.abs().max()
    if not bool(m > 0):
        return torch.zeros_like(g)
    step = m / n
    v = g / step
    q = stochastic_round(v, generator) if generator is not None else torch.round(v)
    return q.clamp(-n, n) * step


class _GradQuantized(torch.autograd.Function):
    """Identity forward; the incoming gradient is replaced by :func:`quantize_grad` of it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bits: int, generator: torch.Generator | None) -> torch.Tensor:
        ctx.bits, ctx.generator = bits, generator
        return x.view_as(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        if grad.numel() == 0:
            return grad, None, None
        return quantize_grad(grad, ctx.bits, ctx.generator), None, None


def grad_quantized(x: torch.Tensor, bits: int, generator: torch.Generator | None) -> torch.Tensor:
    """``x`` unchanged in the forward pass (bit for bit); the gradient flowing back through it is
    quantized to ``bits`` bits by :func:`quantize_grad` with ``generator`` (one draw per backward)."""
    grad_levels(bits)
    if not isinstance(x, torch.Tensor):
        raise DataError(f"grad_quantized takes a torch.Tensor, got {type(x).__name__}")
    return _GradQuantized.apply(x, bits, generator)


__all__ = ["GRAD_BITS", "grad_levels", "grad_quantized", "quantize_grad"]
