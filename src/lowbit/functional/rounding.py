"""Rounding with straight-through gradients, stochastic and hardware-style rounding.

Straight-through estimator (STE, Bengio et al. 2013; used by BNN, LSQ, FAQ):
the forward pass rounds, the backward pass treats rounding as the identity,
``d round(x)/dx := 1`` (see :func:`ste`).

Stochastic rounding (Gupta et al. 2015): ``SR(x) = floor(x) + [u < x - floor(x)]``
with ``u ~ U[0, 1)``, so ``E[SR(x)] = x`` (unbiased).

Hardware-style stochastic rounding compares the first ``k`` fractional bits of
``x`` with a ``k``-bit pseudo-random integer ``r`` (from an LFSR, as a circuit
would): round up iff ``r < frac_k(x)``; it is unbiased for values with at most
``k`` fractional bits: a ``k``-bit LFSR visits ``2^k - 1`` states, so the
probability of rounding up is ``frac_k / (2^k - 1)`` instead of ``frac_k / 2^k``,
a bias of at most ``2^-k``, plus the truncation of ``frac`` to ``k`` bits.
"""

from __future__ import annotations

import torch

from lowbit.errors import ConfigError

# Maximal-length Fibonacci LFSR taps (bit positions, 1-based) for 2..16 bits.
_LFSR_TAPS = {
    2: (2, 1), 3: (3, 2), 4: (4, 3), 5: (5, 3), 6: (6, 5), 7: (7, 6), 8: (8, 6, 5, 4),
    9: (9, 5), 10: (10, 7), 11: (11, 9), 12: (12, 11, 10, 4), 13: (13, 12, 11, 8),
    14: (14, 13, 12, 2), 15: (15, 14), 16: (16, 15, 13, 4),
}


def ste(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` in the forward pass (bit for bit), gradient of the identity in ``x`` backward.

    Written ``value + (x - x.detach())``: the bracket is exactly zero, so the
    forward result is exactly ``value``; the common ``x + (value - x).detach()``
    can be off by one float ulp.
    """
    return value.detach() + (x - x.detach())


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even in the forward pass, identity gradient in the backward pass."""
    return ste(x, torch.round(x))


def floor_ste(x: torch.Tensor) -> torch.Tensor:
    """Floor in the forward pass, identity gradient in the backward pass."""
    return ste(x, torch.floor(x))


def stochastic_round(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Unbiased stochastic rounding ``floor(x + u)``, ``u ~ U[0,1)``, with an STE gradient.

    ``u`` is drawn on ``generator``'s device (a CPU generator serves a GPU tensor too), then moved to ``x``'s.
    """
    device = generator.device if generator is not None else x.device
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)
    return ste(x, torch.floor(x + u))


def lfsr_sequence(n: int, bits: int, seed: int = 1) -> torch.Tensor:
    """``n`` successive states of a maximal-length ``bits``-bit Fibonacci LFSR (values 1..2^bits-1).

    The state never reaches 0; the sequence repeats with period ``2^bits - 1``.
    """
    if bits not in _LFSR_TAPS:
        raise ConfigError(f"LFSR width must be 2..16 bits, got {bits}")
    mask = (1 << bits) - 1
    state = (seed & mask) or 1
    period = mask
    out = []
    for _ in range(min(n, period)):
        out.append(state)
        fb = 0
        for t in _LFSR_TAPS[bits]:
            fb ^= (state >> (t - 1)) & 1
        state = ((state << 1) | fb) & mask
    seq = torch.tensor(out, dtype=torch.int64)
    reps = -(-n // period)
    return seq.repeat(reps)[:n] if n > period else seq


def hw_stochastic_round(x: torch.Tensor, rng_bits: int = 4, seed: int = 1) -> torch.Tensor:
    """Stochastic rounding against a ``rng_bits``-bit LFSR number, as a hardware rounder does.

    ``q = floor(x) + [r < floor(frac(x) * 2^k)]`` with ``r`` the LFSR state minus one,
    uniform over ``0..2^k-2`` within a period. STE gradient.
    """
    k = rng_bits
    fl = torch.floor(x)
    frac_k = torch.floor((x - fl) * (1 << k)).to(torch.int64)  # 0 .. 2^k - 1
    r = (lfsr_sequence(x.numel(), k, seed) - 1).reshape(x.shape).to(x.device)
    up = (r < frac_k).to(x.dtype)
    return ste(x, fl + up)
