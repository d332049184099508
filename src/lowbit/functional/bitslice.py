"""Bit-slice sparsity for ReRAM crossbars: dynamic fixed point, bit slices and the bit-slice L1 regularizer.

Zhang, Yang, Chen, Wang, Li (Duke), "Exploring Bit-Slice Sparsity in Deep Neural Networks for Efficient
ReRAM-Based Deployment" (EMC^2 @ NeurIPS 2019, arXiv 1909.08496; official code zjysteven/bitslice_sparsity).

A ReRAM crossbar stores a ``B``-bit weight magnitude in ``B/s`` cells of ``s`` bits each (a *bit slice*, one
bitline per slice); the slice outputs are shifted and added after the ADCs. A bitline's current is the sum of
its cells over the active rows, so the fewer non-zero cells a slice has, the fewer levels its ADC must resolve.
Bit-slice L1 pushes the slices themselves towards zero while training.

Dynamic fixed point, per tensor (sign and ``B`` magnitude bits)::

    scale = ceil(log2 max|w|),   step = 2^(scale - B)
    x     = min(round(|w| / step), 2^B - 1)                (the magnitude code, 0 .. 2^B - 1)
    Q(w)  = sign(w) * x * step                              (straight-through gradient)

The paper clips ``w/step`` at ``+-2^B`` (``+-2^scale``), which needs a ``B+1``-th magnitude bit for the largest
weights (those within half a step of ``2^scale``); we clip at ``2^B - 1`` so that every code fits the slices.

Bit slices of the code, most significant first, for ``n = B/s`` slices of ``s`` bits::

    b_1 = floor(x / 2^(s(n-1)))
    b_k = floor((x - sum_{j<k} 2^(s(n-j)) b_j) / 2^(s(n-k)))       (B = 8, s = 2: x = 64 b1 + 16 b2 + 4 b3 + b4)

``round`` and ``floor`` pass the gradient straight through, and each lower slice sees the higher ones
*detached* (as the official code), so ``d b_k / d|w| = 2^-(s(n-k)) / step``.

Regularizer (the paper's loss is ``CE + alpha * R``, ``alpha = 0.5``)::

    R_bitslice = (sum_layers sum_k sum |b_k|) / #params        R_L1 = (sum_layers sum |w|) / #params

over the weights of Linear and Conv layers (biases and BatchNorm parameters are not regularized; ``#params``
counts the regularized weights). Why it differs from L1: ``d|b|/db = sign(b)`` is 0 for a slice that is
already 0, so a weight whose low slices are 0 is pushed ``2^s`` times more gently than one whose last slice is
not; SGD weights linger at codes that are multiples of ``2^s``, ``2^2s``, ... where whole slices are zero. The
per-tensor ``1/step`` also weights each layer by its own resolution.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from lowbit.errors import ConfigError
from lowbit.functional._checks import check_tensor
from lowbit.functional.rounding import floor_ste, ste
from lowbit.utils.fields import checked_init

_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def check_slicing(bits: int, slice_bits: int = 1) -> None:
    """ConfigError unless ``2 <= bits <= 16`` and ``slice_bits`` is a divisor of ``bits``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ConfigError(f"bit-slice magnitude bits must be an int in 2..16, got {bits!r}")
    divisors = [d for d in range(1, bits + 1) if bits % d == 0]
    if isinstance(slice_bits, bool) or not isinstance(slice_bits, int) or slice_bits not in divisors:
        raise ConfigError(f"slice_bits must divide bits={bits} (one of {divisors}), got {slice_bits!r}")


def fixed_point_scale(w: torch.Tensor) -> torch.Tensor:
    """``ceil(log2 max|w|)`` as an exact integer-valued float tensor (0 for an all-zero ``w``), no gradient.

    From ``frexp``: ``max|w| = m 2^e`` with ``m`` in [1/2, 1), so the ceiling is ``e - 1`` when ``m = 1/2``
    (an exact power of two) and ``e`` otherwise; ``log2`` in float could be off by one ulp at a power of two.
    """
    amax = w.detach().abs().amax()
    m, e = torch.frexp(amax)
    scale = torch.where(m == 0.5, e - 1, e).to(w.dtype)
    return torch.where(amax > 0, scale, torch.zeros_like(scale))


def magnitude_codes(w: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """``x = min(round(|w| / step), 2^bits - 1)`` in ``w``'s dtype (integer values), straight-through gradient."""
    check_tensor(w, "weights")
    check_slicing(bits)
    step = torch.exp2(fixed_point_scale(w) - bits)
    m = w.abs() / step
    return ste(m, torch.round(m.detach()).clamp_max(2**bits - 1))


def dynamic_fixed_point(w: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """``sign(w) x step``: ``w`` on the per-tensor dynamic fixed-point grid of ``bits`` magnitude bits (STE).

    Sign-magnitude as in the paper (``bits`` magnitude bits plus a sign), unlike
    :func:`lowbit.functional.pow2.dynamic_fixed_point`'s two's-complement ``b``-bit integers.
    """
    step = torch.exp2(fixed_point_scale(w) - bits)
    q = torch.sign(w.detach()) * magnitude_codes(w, bits).detach() * step
    return ste(w, q)


def bit_slices(w: torch.Tensor, bits: int = 8, slice_bits: int = 2) -> torch.Tensor:
    """The ``bits/slice_bits`` slices of ``w``'s magnitude codes, most significant first: ``(n, *w.shape)``.

    Each slice holds integers in ``0 .. 2^slice_bits - 1`` and ``sum_k 2^(s(n-k)) b_k = x`` exactly. Gradients:
    straight through ``round`` and ``floor``, higher slices detached in lower ones (see the module doc).
    """
    check_slicing(bits, slice_bits)
    x = magnitude_codes(w, bits)
    n = bits // slice_bits
    slices, taken = [], torch.zeros_like(x)
    for k in range(n):
        weight = 2.0 ** (slice_bits * (n - 1 - k))
        b = floor_ste((x - taken) / weight)
        slices.append(b)
        taken = taken + weight * b.detach()
    return torch.stack(slices)


def regularized_weights(model_or_params: nn.Module | Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """The weights a bit-slice (or L1) regularizer sees: of a model, the ``weight`` of every Linear and Conv layer
    (no biases, no BatchNorm); an iterable of tensors is taken as it is."""
    if isinstance(model_or_params, nn.Module):
        weights = [m.weight for m in model_or_params.modules() if isinstance(m, _WEIGHT_LAYERS)]
        if not weights:
            raise ConfigError(f"{type(model_or_params).__name__} has no Linear or Conv layer whose weights could be "
                              "regularized")
        return weights
    weights = list(model_or_params)
    if not weights or not all(isinstance(t, torch.Tensor) for t in weights):
        raise ConfigError("pass a model or a non-empty iterable of weight tensors to regularize")
    return weights


def bitslice_l1(model_or_params: nn.Module | Iterable[torch.Tensor], bits: int = 8,
                slice_bits: int = 2) -> torch.Tensor:
    """``(sum_layers sum_k sum |b_k|) / #params``: the paper's bit-slice L1 (a scalar with gradient)."""
    check_slicing(bits, slice_bits)
    weights = regularized_weights(model_or_params)
    total = sum(bit_slices(w, bits, slice_bits).abs().sum() for w in weights)
    return total / sum(w.numel() for w in weights)


def plain_l1(model_or_params: nn.Module | Iterable[torch.Tensor]) -> torch.Tensor:
    """``(sum_layers sum |w|) / #params`` on the float (latent) weights: the baseline of the paper."""
    weights = regularized_weights(model_or_params)
    return sum(w.abs().sum() for w in weights) / sum(w.numel() for w in weights)


def _check_alpha(alpha: float, name: str) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
        raise ConfigError(f"{name}.alpha must be a finite number >= 0, got {alpha!r}")


@checked_init()
@dataclass(frozen=True)
class BitSliceL1:
    """Loss hook for :func:`lowbit.train` (``Hooks(loss=[BitSliceL1(0.5)])``): ``alpha * bitslice_l1(model)``."""

    alpha: float = 0.5
    bits: int = 8
    slice_bits: int = 2

    def __post_init__(self) -> None:
        _check_alpha(self.alpha, "BitSliceL1")
        check_slicing(self.bits, self.slice_bits)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, output: object) -> torch.Tensor:
        return self.alpha * bitslice_l1(model, self.bits, self.slice_bits)


@checked_init()
@dataclass(frozen=True)
class L1:
    """Loss hook: ``alpha * plain_l1(model)``, the baseline regularizer."""

    alpha: float = 1.0

    def __post_init__(self) -> None:
        _check_alpha(self.alpha, "L1")

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, output: object) -> torch.Tensor:
        return self.alpha * plain_l1(model)


__all__ = ["BitSliceL1", "L1", "bit_slices", "bitslice_l1", "check_slicing", "dynamic_fixed_point",
           "fixed_point_scale", "magnitude_codes", "plain_l1", "regularized_weights"]
