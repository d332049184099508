"""Spike functions with surrogate gradients: a Heaviside step forward, a smooth stand-in backward.

A spiking neuron fires where its membrane potential ``v`` crosses the threshold ``theta``:

    s = H(u),  u = (v - theta) / theta            (the distance to threshold in units of theta)

``H`` has zero gradient almost everywhere, so backprop through time replaces ``dH/du`` by a surrogate
``sigma'(u)`` (Neftci, Mostafa, Zenke 2019). The choices, each a frozen value:

- :class:`Triangle` (Esser et al. 2016, Eedn; Bellec et al. 2018): ``sigma'(u) = max(0, 1 - |u| / w) / w``
  (``w = 1``: the gradient is 1 at threshold and vanishes one threshold away).
- :class:`FastSigmoid` (Zenke & Ganguli 2018, SuperSpike): ``sigma'(u) = 1 / (1 + k |u|)^2``.
- :class:`Arctan` (Fang et al. 2021): ``sigma'(u) = (a / 2) / (1 + (pi a u / 2)^2)``.
- :class:`MembranePotential` (Lee, Delbruck, Pfeiffer 2016, paper D): the membrane potential itself is the
  differentiable signal and the spike's discontinuity is noise: the neuron's rate is ``a ~ V / V_th``, so
  ``ds/dv = 1 / V_th`` everywhere: ``sigma'(u) = 1`` in units of ``u`` (a straight-through estimator of the
  rate). ``positive_only=True`` keeps it where ``v > 0`` only (the rate of a ReLU-like neuron).

``u`` is in units of the threshold, so ``ds/dv = sigma'(u) / theta``: with a threshold of 0.5 the gradient
doubles, as the paper's ``x_j / V_th`` Jacobian says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lowbit.errors import ConfigError


@dataclass(frozen=True)
class Triangle:
    """``max(0, 1 - |u| / width) / width``: a hat of area 1 around the threshold."""

    width: float = 1.0

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise ConfigError(f"Triangle.width must be > 0, got {self.width}")

    def grad(self, u: torch.Tensor) -> torch.Tensor:
        return (1.0 - u.abs() / self.width).clamp(min=0.0) / self.width


@dataclass(frozen=True)
class FastSigmoid:
    """``1 / (1 + slope |u|)^2`` (SuperSpike)."""

    slope: float = 5.0

    def __post_init__(self) -> None:
        if not self.slope > 0:
            raise ConfigError(f"FastSigmoid.slope must be > 0, got {self.slope}")

    def grad(self, u: torch.Tensor) -> torch.Tensor:
        return 1.0 / (1.0 + self.slope * u.abs()) ** 2


@dataclass(frozen=True)
class Arctan:
    """``(alpha / 2) / (1 + (pi alpha u / 2)^2)``: the derivative of ``arctan(pi alpha u / 2) / pi + 1/2``."""

    alpha: float = 2.0

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise ConfigError(f"Arctan.alpha must be > 0, got {self.alpha}")

    def grad(self, u: torch.Tensor) -> torch.Tensor:
        return (self.alpha / 2.0) / (1.0 + (math.pi * self.alpha * u / 2.0) ** 2)


@dataclass(frozen=True)
class MembranePotential:
    """Paper D: ``ds/dv = 1 / V_th`` (``sigma'(u) = 1``), or only where ``v > 0`` (``u > -1``)."""

    positive_only: bool = True

    def grad(self, u: torch.Tensor) -> torch.Tensor:
        ones = torch.ones_like(u)
        return torch.where(u > -1.0, ones, torch.zeros_like(u)) if self.positive_only else ones


Surrogate = Triangle | FastSigmoid | Arctan | MembranePotential
SURROGATES = {"triangle": Triangle, "fast-sigmoid": FastSigmoid, "arctan": Arctan, "membrane": MembranePotential}


def surrogate_by_name(name: str) -> Surrogate:
    """The surrogate called ``name`` with its default parameter (for the CLI)."""
    if name not in SURROGATES:
        raise ConfigError(f"unknown surrogate {name!r}; choose one of {sorted(SURROGATES)}")
    return SURROGATES[name]()


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:
        ctx.save_for_backward(u)
        ctx.surrogate = surrogate
        return (u >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (u,) = ctx.saved_tensors
        return grad_out * ctx.surrogate.grad(u), None


def spike(u: torch.Tensor, surrogate: Surrogate = Triangle()) -> torch.Tensor:
    """``H(u) = 1[u >= 0]`` forward, ``surrogate.grad(u)`` backward (``u``: distance to threshold / threshold)."""
    if not isinstance(surrogate, (Triangle, FastSigmoid, Arctan, MembranePotential)):
        raise ConfigError(f"surrogate must be Triangle, FastSigmoid, Arctan or MembranePotential, got {surrogate!r}")
    return _Spike.apply(u, surrogate)
