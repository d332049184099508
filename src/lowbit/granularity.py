"""Which elements share a quantization parameter: per tensor, per channel, per group, per kernel.

Every granularity lowers to the same thing, a 2-D *row view* ``(R, M)`` of the
tensor in which each row is one block that shares a scale (:func:`rows`), and
back (:func:`unrows`). Observers, solvers and fake-quant ops then work per row
and never special-case the granularity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lowbit.errors import ConfigError, DataError


@dataclass(frozen=True)
class PerTensor:
    """One parameter for the whole tensor."""


@dataclass(frozen=True)
class PerChannel:
    """One parameter per index along ``axis`` (0 = output channel of a weight, 1 = channel of NCHW)."""

    axis: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.axis, bool) or not isinstance(self.axis, int):
            raise ConfigError(f"PerChannel.axis must be an integer (0: weight output channel, 1: NCHW channel), "
                              f"got {self.axis!r}")


@dataclass(frozen=True)
class PerGroup:
    """One parameter per ``size`` consecutive elements along ``axis`` (for each index of the other axes)."""

    size: int
    axis: int = -1

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ConfigError(f"PerGroup.size must be a positive integer, got {self.size!r}")


@dataclass(frozen=True)
class PerKernel:
    """One parameter per ``(out, in)`` kernel slice of a conv weight (TNT's granularity)."""


Granularity = PerTensor | PerChannel | PerGroup | PerKernel


def _axis(axis: int, ndim: int, what: str) -> int:
    if not -ndim <= axis < ndim:
        raise ConfigError(f"{what} axis {axis} is out of range for a tensor with {ndim} dimensions")
    return axis % ndim


def rows(x: torch.Tensor, g: Granularity) -> torch.Tensor:
    """The ``(R, M)`` view of ``x`` whose rows are the blocks of ``g`` (a copy if needed)."""
    if x.numel() == 0:
        raise DataError("cannot quantize an empty tensor (it has 0 elements)")
    if isinstance(g, PerTensor):
        return x.reshape(1, -1)
    if isinstance(g, PerChannel):
        axis = _axis(g.axis, x.ndim, "PerChannel")
        return x.movedim(axis, 0).reshape(x.shape[axis], -1)
    if isinstance(g, PerGroup):
        axis = _axis(g.axis, x.ndim, "PerGroup")
        if x.shape[axis] % g.size:
            raise ConfigError(f"PerGroup size {g.size} does not divide dimension {axis} of length {x.shape[axis]}")
        return x.movedim(axis, -1).reshape(-1, g.size)
    if isinstance(g, PerKernel):
        if x.ndim < 3:
            raise ConfigError(f"PerKernel needs a conv weight (>= 3 dims), got shape {tuple(x.shape)}")
        return x.reshape(x.shape[0] * x.shape[1], -1)
    raise ConfigError(f"unknown granularity {g!r}; use PerTensor, PerChannel, PerGroup or PerKernel")


def unrows(r: torch.Tensor, g: Granularity, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`rows`: put an ``(R, M)`` tensor back into ``shape``."""
    shape = tuple(shape)
    if isinstance(g, (PerTensor, PerKernel)):
        return r.reshape(shape)
    if isinstance(g, PerChannel):
        axis = g.axis % len(shape)
        moved = (shape[axis],) + shape[:axis] + shape[axis + 1 :]
        return r.reshape(moved).movedim(0, axis)
    if isinstance(g, PerGroup):
        axis = g.axis % len(shape)
        moved = shape[:axis] + shape[axis + 1 :] + (shape[axis],)
        return r.reshape(moved).movedim(-1, axis)
    raise ConfigError(f"unknown granularity {g!r}")


def broadcast(per_row: torch.Tensor, g: Granularity, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Expand one value per row (shape ``(R,)``) to a full tensor of ``shape``."""
    n_rows = per_row.numel()
    numel = math.prod(shape)
    return unrows(per_row.reshape(n_rows, 1).expand(n_rows, numel // n_rows), g, shape)
