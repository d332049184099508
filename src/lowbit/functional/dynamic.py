"""Dynamic quantization of activations: one symmetric grid per row, found at run time.

For a row ``x`` of ``K`` values and ``b`` bits (``q_max = 2^(b-1) - 1``)::

    s = max|x| / q_max        (1 for an all-zero row)
    q = clamp(round(x / s), -q_max, q_max)

and a linear layer with per-output-channel symmetric int8 weights ``W = s_w Q_w`` computes

    y = ((q Q_w^T) s) s_w^T + bias         (float32, scaled by row, then by column)

with the integer product exact in int32 (``|q| |Q_w| K <= 127^2 K < 2^31`` for ``K < 2^17``), the
scaling in float32. This is PyTorch's ``quantize_dynamic`` recipe (int8 weights, activations
quantized on the fly) with a grid per row instead of per tensor, so an outlier in one token or one
time step does not coarsen the others (the LLM.int8()/SmoothQuant observation that activation
outliers sit in a few rows or channels).
"""

from __future__ import annotations

import torch

from lowbit.errors import ConfigError


def check_bits(bits: int) -> int:
    """``q_max`` of ``bits``-bit symmetric codes; bits out of 2..8 is a ConfigError."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ConfigError(f"dynamic activation bits = {bits!r}; allowed: an integer in 2..8 (int8 kernels)")
    return (1 << (bits - 1)) - 1


def row_scales(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """float32 ``max|x_row| / q_max`` per row of ``x`` (M, K), 1 for an all-zero row."""
    qmax = check_bits(bits)
    amax = x.to(torch.float32).abs().amax(dim=1)
    return torch.where(amax > 0, amax / qmax, torch.ones_like(amax))


def quantize_rows(x: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes int8 (M, K), scale float32 (M,))`` of the float rows ``x`` (M, K), one symmetric grid per row."""
    qmax = check_bits(bits)
    x = x.to(torch.float32)
    scale = row_scales(x, bits)
    q = torch.round(x / scale[:, None]).clamp_(-qmax, qmax)
    return q.to(torch.int8), scale


def fake_quantize_rows(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """``x`` (..., K) through :func:`quantize_rows` and back (the simulation of a dynamic input)."""
    q, s = quantize_rows(x.reshape(-1, x.shape[-1]), bits)
    return (q.to(torch.float32) * s[:, None]).reshape(x.shape)


__all__ = ["check_bits", "fake_quantize_rows", "quantize_rows", "row_scales"]
