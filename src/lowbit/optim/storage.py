"""Low-precision parameter storage, simulated in float tensors.

A storage format says which values a parameter may hold between optimizer steps:

=======================  =====================================================================
storage                  values
=======================  =====================================================================
FixedPoint(bits, frac)   ``k 2^-frac``, ``k`` a ``bits``-bit two's complement integer
                         ``-2^(bits-1) .. 2^(bits-1)-1``; writes clamp to that range
Float16Storage("bf16")   bfloat16 values (8 significant bits, float32's exponent range)
Float16Storage("fp16")   IEEE half values (11 significant bits, subnormals down to 2^-24,
                         largest 65504); writes clamp to +-65504 instead of overflowing to inf
=======================  =====================================================================

Storage is *simulated*: a parameter stays a float32 (or float64) tensor, so models run unchanged,
but it only ever holds values of its storage format. Every write rounds on the grid of the format:
a fixed step ``q = 2^-frac`` for fixed point, ``q = 2^(e - m)`` for a float (``e`` the exponent of
the value, at least the format's smallest normal exponent, ``m`` its stored mantissa bits). Rounding
is done in float64 and the result is exact in float32, with one exception: a fixed-point format of
more than 25 bits has codes that float32 cannot hold (values of magnitude >= ``2^(24-frac)``); there
a float32 parameter keeps the float32 value nearest to the grid value (still on the grid, only a
coarser part of it), and the range is clamped to what float32 holds. Use float64 parameters for
the full grid.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from lowbit.errors import ConfigError
from lowbit.formats import check_bits

Rounding = Literal["nearest", "stochastic"]
ROUNDINGS = ("nearest", "stochastic")


@dataclass(frozen=True)
class FixedPoint:
    """Signed two's complement fixed point: ``bits`` in total, ``frac`` of them fractional (Q(bits-frac).frac).

    Values ``k 2^-frac`` for integers ``-2^(bits-1) <= k <= 2^(bits-1) - 1``; ``lsb = 2^-frac``.
    """

    bits: int = 16
    frac: int = 8

    def __post_init__(self) -> None:
        check_bits(self.bits, "FixedPoint.bits", low=1, high=32)
        if isinstance(self.frac, bool) or not isinstance(self.frac, int):
            raise ConfigError(f"FixedPoint.frac must be an integer, got {self.frac!r} ({type(self.frac).__name__})")
        if not 0 <= self.frac <= self.bits - 1:
            raise ConfigError(f"FixedPoint.frac={self.frac} is out of range: with bits={self.bits} the fractional "
                              f"bits must be in 0..{self.bits - 1}")

    @property
    def name(self) -> str:
        return f"fixed{self.bits}.{self.frac}"

    @property
    def lsb(self) -> float:
        return 2.0 ** -self.frac

    @property
    def min_value(self) -> float:
        return -(2.0 ** (self.bits - 1)) * self.lsb

    @property
    def max_value(self) -> float:
        return (2.0 ** (self.bits - 1) - 1) * self.lsb


_FLOATS = {"bf16": (7, -126, torch.bfloat16), "fp16": (10, -14, torch.float16)}  # mantissa bits, min exponent


@dataclass(frozen=True)
class Float16Storage:
    """A 16-bit float storage: ``"bf16"`` (bfloat16) or ``"fp16"`` (IEEE half)."""

    kind: Literal["bf16", "fp16"] = "bf16"

    def __post_init__(self) -> None:
        if self.kind not in _FLOATS:
            raise ConfigError(f"Float16Storage.kind must be 'bf16' or 'fp16', got {self.kind!r}")

    @property
    def name(self) -> str:
        return self.kind

    @property
    def mantissa_bits(self) -> int:
        return _FLOATS[self.kind][0]

    @property
    def min_exponent(self) -> int:
        return _FLOATS[self.kind][1]

    @property
    def max_value(self) -> float:
        return float(torch.finfo(_FLOATS[self.kind][2]).max)

    @property
    def min_value(self) -> float:
        return -self.max_value


Storage = FixedPoint | Float16Storage
_NAME = re.compile(r"fixed(\d+)\.(\d+)")


@functools.lru_cache(maxsize=64)
def _parse_name(name: str) -> Storage:
    if name in _FLOATS:
        return Float16Storage(name)  # type: ignore[arg-type]
    m = _NAME.fullmatch(name)
    if m:
        return FixedPoint(int(m.group(1)), int(m.group(2)))
    raise ConfigError(f"unknown storage {name!r}: use FixedPoint(bits, frac), Float16Storage('bf16'|'fp16'), "
                      "'bf16', 'fp16' or 'fixed<bits>.<frac>' (e.g. 'fixed8.4')")


def as_storage(storage: object) -> Storage:
    """A storage value from a :class:`FixedPoint`, a :class:`Float16Storage`, ``"bf16"``, ``"fp16"`` or
    a name ``"fixed<bits>.<frac>"`` (what :attr:`FixedPoint.name` gives); ConfigError otherwise."""
    if isinstance(storage, (FixedPoint, Float16Storage)):
        return storage
    if isinstance(storage, str):
        return _parse_name(storage)
    raise ConfigError(f"storage must be FixedPoint(bits, frac), Float16Storage('bf16'|'fp16'), 'bf16' or 'fp16'; "
                      f"got {storage!r}")


def _step(x: torch.Tensor, storage: Storage) -> torch.Tensor | float:
    """The grid step at each value of ``x`` (float64): constant for fixed point, per binade for floats."""
    if isinstance(storage, FixedPoint):
        return storage.lsb
    _, exp = torch.frexp(x)  # x = mant 2^exp, 0.5 <= |mant| < 1, so floor(log2|x|) = exp - 1
    e = torch.clamp(exp.to(torch.float64) - 1, min=storage.min_exponent)
    return torch.exp2(e - storage.mantissa_bits)


def _limits(storage: Storage, dtype: torch.dtype) -> tuple[float, float]:
    """The storage's range, shrunk to values ``dtype`` holds exactly (only matters for > 25-bit fixed point)."""
    lo, hi = storage.min_value, storage.max_value
    held = torch.tensor([lo, hi], dtype=torch.float64).to(dtype).to(torch.float64)
    if float(held[1]) > hi:
        hi = float(torch.nextafter(held[1:].to(dtype), torch.zeros(1, dtype=dtype))[0])
    return lo, hi  # lo is -2^k: exact in every float dtype


def round_storage(x: torch.Tensor, storage: Storage, dtype: torch.dtype = torch.float32, *,
                  rounding: Rounding = "nearest", generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` rounded onto ``storage``'s grid and clamped to its range, returned as ``dtype``.

    ``nearest``: round half to even (``torch.round`` of ``x / q``). ``stochastic``: ``floor(x / q + U) q``
    with ``U ~ Uniform[0, 1)`` drawn from ``generator`` (required; never the global RNG), so that the
    expected result is ``x`` (inside the range).
    """
    storage = as_storage(storage)
    x64 = x.detach().to(torch.float64)
    q = _step(x64, storage)
    if rounding == "nearest":
        r = torch.round(x64 / q) * q
    elif rounding == "stochastic":
        if not isinstance(generator, torch.Generator):
            raise ConfigError("stochastic rounding needs an explicit torch.Generator (e.g. "
                              "torch.Generator().manual_seed(0)); lowbit never draws from the global RNG")
        u = torch.rand(x64.shape, generator=generator, dtype=torch.float64, device=generator.device)
        r = torch.floor(x64 / q + u.to(x64.device)) * q
    else:
        raise ConfigError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    lo, hi = _limits(storage, dtype)
    return torch.clamp(r, lo, hi).to(dtype)


def is_representable(x: torch.Tensor, storage: Storage) -> torch.Tensor:
    """Element-wise: is each value of ``x`` a value of ``storage`` (on the grid and in range)?"""
    storage = as_storage(storage)
    return round_storage(x, storage, x.dtype).to(torch.float64) == x.detach().to(torch.float64)


def round_to_storage(model: nn.Module | Iterable[torch.Tensor], storage: object) -> nn.Module | list[torch.Tensor]:
    """Round every parameter of ``model`` (or every tensor of an iterable) in place onto ``storage``
    (nearest, clamped to the range), so that :class:`~lowbit.optim.KahanSGD` and
    :class:`~lowbit.optim.LowPrecisionSGD` accept them. Returns what it was given."""
    storage = as_storage(storage)
    tensors = list(model.parameters()) if isinstance(model, nn.Module) else list(model)
    with torch.no_grad():
        for t in tensors:
            if not isinstance(t, torch.Tensor) or t.dtype not in (torch.float32, torch.float64):
                raise ConfigError(f"round_to_storage takes float32/float64 tensors, got "
                                  f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
            t.copy_(round_storage(t, storage, t.dtype))
    return model if isinstance(model, nn.Module) else tensors
