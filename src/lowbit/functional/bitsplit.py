"""The bitwise activation function of BitSplit-Net (Kim, Kim, Ryu, Kim, POSTECH 2019, arXiv 1903.09807).

**Multi-bit activation, split into bits.** A uniform n-bit quantizer of a clipped input ``y`` gives the level

    q(y) = floor(clip(y, 0, 1) * L + 1/2) in {0, ..., L},   L = 2^n - 1

(round half up), and ``q = sum_k 2^k b_k`` with bits ``b_k = floor(q / 2^k) mod 2`` in {0, 1}. A conventional
multi-bit network (QNN, Hubara et al. 2018) feeds ``q`` to the next layer, computed bit-serially as
``W q = sum_k 2^k W b_k`` (n binary GEMMs, a shift-add merge and a requantization to n bits in every layer).
BitSplit-Net keeps the n bits apart instead: path k of layer l computes ``z_k = W_l^(k) b_k^(l-1)`` (binary
weights), BatchNorm, and the **bitwise activation function** ``b_k^(l) = f_k(y_k) = bit k of q(y_k)``; the
paths meet only at the output. For n = 2: ``f_1(y) = [q(y) >= 2]`` (the MSB: a step) and
``f_0(y) = q(y) mod 2`` (the LSB: 1 on the levels 1 and 3).

**Gradient (straight-through).** Every ``f_k`` is piecewise constant; training passes the gradient of the
clipped identity straight through it (Bengio et al. 2013; the STE of QNN's clipped activation):

    d f_k(y) / dy := 1 where 0 <= y <= 1, else 0.

(The paper trains BitSplit-Net with a straight-through estimator through the bitwise activation functions; its
exact backward form was not verified here, so this is the plain clipped STE, the same for every bit.)

**Thresholds.** On an integer accumulator ``acc`` in [-K, K] with BatchNorm folded to ``y = acc * scale + shift``
(per channel), ``[q(y) >= j]`` is monotone in ``acc`` (non-decreasing for ``scale >= 0``, non-increasing for
``scale < 0``), so it is ``(acc >= thr_j) XOR flip`` for an integer threshold (:func:`level_thresholds`,
found by bisection on the float32 predicate itself, so it matches the float model bit for bit). Bit k is then
the parity of the levels ``j = m 2^k`` (m = 1, 2, ...) that hold:

    b_k = floor(q / 2^k) mod 2 = #{m >= 1 : q >= m 2^k} mod 2

which needs ``floor(L / 2^k)`` thresholds: 1 for the MSB, L for the LSB (:func:`path_thresholds`).
"""

from __future__ import annotations

import torch

from lowbit.errors import ConfigError, ShapeError
from lowbit.functional._checks import check_tensor
from lowbit.functional.rounding import ste

MAX_BITS = 8


def check_bits(n: object, what: str = "bit-split width") -> int:
    """``n`` as an int in 1..:data:`MAX_BITS`, else ConfigError naming the value and the allowed range."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_BITS:
        raise ConfigError(f"{what} n = {n!r} is not allowed: BitSplit-Net splits an activation into n bit paths, "
                          f"n an integer in 1..{MAX_BITS}")
    return n


def _check_bit(k: object, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < n:
        raise ConfigError(f"bit k = {k!r} is not allowed for an {n}-bit split: k must be an integer in 0..{n - 1}")
    return k


def levels(y: torch.Tensor, n: int) -> torch.Tensor:
    """``q(y) = floor(clip(y, 0, 1) * (2^n - 1) + 1/2)`` (the float levels 0 .. 2^n - 1, no gradient).

    The float32 operations are the ones :func:`level_thresholds` evaluates: keep them in step."""
    top = float((1 << n) - 1)
    return torch.floor(y.detach().clamp(0.0, 1.0) * top + 0.5)


def bits_of(q: torch.Tensor, n: int) -> torch.Tensor:
    """The n bits of float levels ``q`` (...,): (n, ...) in {0, 1}, bit k at index k (LSB first)."""
    shifts = torch.tensor([float(1 << k) for k in range(n)], dtype=q.dtype, device=q.device)
    shifts = shifts.reshape(n, *([1] * q.ndim))
    return torch.remainder(torch.floor(q.unsqueeze(0) / shifts), 2.0)


def bitwise_activation(y: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Bit k of the n-bit level ``q(y)`` (module docstring), in {0, 1}; gradient ``1_{0 <= y <= 1}``."""
    check_tensor(y)
    n = check_bits(n)
    k = _check_bit(k, n)
    q = levels(y, n)
    bit = torch.remainder(torch.floor(q / float(1 << k)), 2.0)
    return ste(y.clamp(0.0, 1.0), bit)


def split_activation(y: torch.Tensor, n: int) -> torch.Tensor:
    """All n bits of ``q(y)`` at once, (n, ...) LSB first, each with the gradient of :func:`bitwise_activation`."""
    check_tensor(y)
    n = check_bits(n)
    clipped = y.clamp(0.0, 1.0).unsqueeze(0)
    return ste(clipped, bits_of(levels(y, n), n))


def level_thresholds(scale: torch.Tensor, shift: torch.Tensor, n: int, k_acc: int) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 thresholds (C, L) and bool flips (C,) with, for every integer ``acc`` in [-k_acc, k_acc] and level
    ``j = 1 .. L``,

        (acc >= thr[c, j - 1]) XOR flip[c]  ==  (q(acc * scale[c] + shift[c]) >= j)

    the right side in float32 exactly as :func:`levels` computes it. ``k_acc + 1`` means "never" and
    ``-k_acc`` "always" (a constant predicate, ``scale = 0``, has flip False)."""
    if not isinstance(scale, torch.Tensor) or not isinstance(shift, torch.Tensor) or scale.ndim != 1 \
            or scale.shape != shift.shape or not scale.is_floating_point():
        raise ShapeError("level_thresholds: scale and shift must be float tensors of one shape (C,)")
    n = check_bits(n)
    if isinstance(k_acc, bool) or not isinstance(k_acc, int) or not 1 <= k_acc < 2**24:
        raise ConfigError(f"level_thresholds: k_acc = {k_acc!r}; expected the accumulator bound, 1..2^24-1 "
                          "(float32 holds every integer below 2^24 exactly)")
    top = (1 << n) - 1
    scale, shift = scale.detach().cpu(), shift.detach().cpu().to(scale.dtype)
    flip = scale < 0
    j = torch.arange(1, top + 1, dtype=scale.dtype)[None, :]  # (1, L)
    s, b, f = scale[:, None], shift[:, None], flip[:, None]

    def g(t: torch.Tensor) -> torch.Tensor:  # (C, L): the predicate made non-decreasing in acc
        return (levels(t.to(scale.dtype) * s + b, n) >= j) ^ f

    lo = torch.full((scale.shape[0], top), -k_acc, dtype=torch.int64)
    hi = torch.full((scale.shape[0], top), k_acc + 1, dtype=torch.int64)
    while bool((lo < hi).any()):
        mid = torch.div(lo + hi, 2, rounding_mode="floor")
        ok = g(mid) & (lo < hi)
        hi = torch.where(ok, mid, hi)
        lo = torch.where(ok | (lo >= hi), lo, mid + 1)
    return hi, flip


def path_thresholds(thr: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The columns of :func:`level_thresholds`' ``thr`` (C, L) that bit k needs: levels ``m 2^k``, (C, M)."""
    n, k = check_bits(n), _check_bit(k, n)
    return thr[:, (1 << k) - 1::1 << k]


def bit_from_thresholds(acc: torch.Tensor, thr: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Bit k of the level from integer ``acc`` (N, C, ...) and its thresholds ``thr`` (C, M) (from
    :func:`path_thresholds`) and ``flip`` (C,): the parity of ``#{m : (acc >= thr_m) XOR flip}``, as bool."""
    view = (1, -1) + (1,) * (acc.ndim - 2)
    count = torch.zeros(acc.shape, dtype=torch.int32, device=acc.device)
    for m in range(thr.shape[1]):
        count += acc >= thr[:, m].to(acc.dtype).reshape(view)
    odd = bool(thr.shape[1] % 2)
    return ((count & 1).bool()) ^ (flip.reshape(view) & odd)


def level_from_thresholds(acc: torch.Tensor, thr: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """The level ``q`` (int32, ``acc``'s shape) from all L thresholds (C, L) and flips (C,)."""
    view = (1, -1) + (1,) * (acc.ndim - 2)
    q = torch.zeros(acc.shape, dtype=torch.int32, device=acc.device)
    f = flip.reshape(view)
    for j in range(thr.shape[1]):
        q += (acc >= thr[:, j].to(acc.dtype).reshape(view)) ^ f
    return q


__all__ = ["MAX_BITS", "bit_from_thresholds", "bits_of", "bitwise_activation", "check_bits", "level_from_thresholds",
           "level_thresholds", "levels", "path_thresholds", "split_activation"]
