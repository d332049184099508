"""Integrate-and-fire neurons with explicit state: ``s, state = neuron(x, state)``.

One time step of a neuron with input current ``I_t`` (Lee, Delbruck, Pfeiffer 2016; Yu et al. 2022):

    v_t = beta * v_{t-1} + I_t                     (beta = leak: 1 is integrate-and-fire, < 1 leaky, LIF)
    s_t = spike(v_t)                               (below, by :class:`Spikes`)
    v_t <- v_t - s_t * theta    (Reset.SUBTRACT)   or   v_t <- v_t * (1 - |s_t|)   (Reset.ZERO)

:class:`Spikes` says what ``s_t`` can be:

- ``BINARY``: one threshold, ``s_t = 1[v_t >= theta]`` (the classic IF/LIF neuron).
- ``TERNARY`` (TerMapping, paper P: a double threshold): ``s_t = +1`` if ``v_t >= theta``, ``-1`` if
  ``v_t <= -theta_neg`` **and** the neuron has fired net-positive so far (``count > 0``), else 0. The negative
  spike takes back an earlier over-firing, so the spike count tracks ``max(0, sum I) / theta`` -- a ReLU --
  more closely than a single threshold, whose residual can only grow.
- ``AUGMENTED`` (AugMapping, paper P): one event per step carries an integer coefficient,
  ``c_t = clamp(floor(v_t / theta), 0, c_max)`` -- the number of ordinary spikes the neuron owes -- and, with
  ``negative=True``, ``c_t = -min(floor(-v_t / theta_neg), count, c_max)`` below the negative threshold.
  Sending ``c_t`` spikes at once removes the one-spike-per-step ceiling of rate coding.

Reset by subtraction keeps the residual (the conversion error shrinks as ``1/T``); reset to zero drops it.
For training, the spike's gradient is the surrogate's (:mod:`lowbit.functional.surrogate`), in units of the
threshold; ``detach_reset`` stops the gradient through the reset term (Zenke & Vogels 2021 show it helps).

The module's state is a :class:`NeuronState` ``(v, count)``; ``None`` starts at rest (zeros). Nothing is kept
on the module between calls.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from lowbit.errors import ConfigError, ShapeError
from lowbit.functional.surrogate import Arctan, FastSigmoid, MembranePotential, Surrogate, Triangle, spike


class Reset(enum.Enum):
    """What a spike does to the membrane: subtract the threshold (keeps the residual) or set it to zero."""

    SUBTRACT = "subtract"
    ZERO = "zero"


class Spikes(enum.Enum):
    """Single threshold (0/1), double threshold (-1/0/+1, TerMapping), augmented (integer count, AugMapping)."""

    BINARY = "binary"
    TERNARY = "ternary"
    AUGMENTED = "augmented"


@dataclass(frozen=True)
class NeuronSpec:
    """How a layer of neurons integrates, fires and resets (validated on construction).

    ``threshold``: the firing threshold theta (> 0; a layer may override it per channel with a tensor).
    ``leak``: beta in (0, 1]; 1 is integrate-and-fire. ``negative_threshold``: theta_neg for TERNARY and signed
    AUGMENTED spikes (None: equal to ``threshold``). ``max_spikes``: c_max for AUGMENTED (>= 1).
    ``negative``: AUGMENTED may send negative coefficients (TERNARY always does, BINARY never).
    ``initial_potential``: the membrane's value at rest as a fraction of the threshold; 0.5 turns the first
    step's ``floor(v / theta)`` into rounding to nearest, halving the conversion error at small ``T``
    (Deng & Gu, ICLR 2021; Bu et al., ICLR 2022).
    """

    threshold: float = 1.0
    leak: float = 1.0
    reset: Reset = Reset.SUBTRACT
    spikes: Spikes = Spikes.BINARY
    max_spikes: int = 1
    negative: bool = True
    negative_threshold: float | None = None
    surrogate: Surrogate = Triangle()
    detach_reset: bool = True
    initial_potential: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.reset, Reset):
            raise ConfigError(f"NeuronSpec.reset must be a Reset (Reset.SUBTRACT or Reset.ZERO), got {self.reset!r}")
        if not isinstance(self.spikes, Spikes):
            raise ConfigError(f"NeuronSpec.spikes must be a Spikes value (BINARY, TERNARY, AUGMENTED), "
                              f"got {self.spikes!r}")
        if not (isinstance(self.threshold, (int, float)) and self.threshold > 0):
            raise ConfigError(f"NeuronSpec.threshold must be a number > 0, got {self.threshold!r}")
        if self.negative_threshold is not None and not self.negative_threshold > 0:
            raise ConfigError(f"NeuronSpec.negative_threshold must be > 0 (or None), got {self.negative_threshold!r}")
        if not (isinstance(self.leak, (int, float)) and 0 < self.leak <= 1):
            raise ConfigError(f"NeuronSpec.leak must be in (0, 1] (1 = integrate-and-fire), got {self.leak!r}")
        if isinstance(self.max_spikes, bool) or not isinstance(self.max_spikes, int) or self.max_spikes < 1:
            raise ConfigError(f"NeuronSpec.max_spikes must be an integer >= 1, got {self.max_spikes!r}")
        if self.max_spikes > 1 and self.spikes is not Spikes.AUGMENTED:
            raise ConfigError(f"NeuronSpec.max_spikes={self.max_spikes} needs spikes=Spikes.AUGMENTED "
                              f"({self.spikes.name} neurons send one spike per step)")
        if not (isinstance(self.initial_potential, (int, float)) and 0 <= self.initial_potential < 1):
            raise ConfigError(f"NeuronSpec.initial_potential must be in [0, 1) (a fraction of the threshold), "
                              f"got {self.initial_potential!r}")
        if not isinstance(self.surrogate, (Triangle, FastSigmoid, Arctan, MembranePotential)):
            raise ConfigError(f"NeuronSpec.surrogate must be Triangle, FastSigmoid, Arctan or MembranePotential, "
                              f"got {self.surrogate!r}")

    @property
    def signed(self) -> bool:
        """Whether the neuron can send negative spikes."""
        return self.spikes is Spikes.TERNARY or (self.spikes is Spikes.AUGMENTED and self.negative)


class NeuronState(NamedTuple):
    """``v``: membrane potential; ``count``: net spikes sent so far (what a negative spike may take back)."""

    v: torch.Tensor
    count: torch.Tensor


def rest(current: torch.Tensor, spec: NeuronSpec | None = None,
         threshold: torch.Tensor | float | None = None) -> NeuronState:
    """The resting state for inputs shaped like ``current``: ``v = initial_potential * theta``, no spikes sent."""
    v = torch.zeros_like(current)
    if spec is not None and spec.initial_potential:
        theta = spec.threshold if threshold is None else threshold
        v = v + spec.initial_potential * torch.as_tensor(theta, dtype=current.dtype)
    return NeuronState(v, torch.zeros_like(current))


def _positive(v: torch.Tensor, theta: torch.Tensor, spec: NeuronSpec) -> torch.Tensor:
    """Spikes (or coefficients) above the threshold; surrogate gradient at the first threshold."""
    s = spike((v - theta) / theta, spec.surrogate)
    if spec.spikes is not Spikes.AUGMENTED:
        return s
    c = torch.floor(v.detach() / theta).clamp(0, spec.max_spikes)
    return c + (s - s.detach())  # forward: the coefficient; backward: the surrogate's


def _negative(v: torch.Tensor, count: torch.Tensor, theta_neg: torch.Tensor, spec: NeuronSpec) -> torch.Tensor:
    """Negative spikes (as positive numbers): only what the neuron sent before can be taken back."""
    s = spike((-v - theta_neg) / theta_neg, spec.surrogate)
    allowed = (count > 0).to(v.dtype)
    if spec.spikes is Spikes.TERNARY:
        return s * allowed
    c = torch.minimum(torch.floor(-v.detach() / theta_neg).clamp(0, spec.max_spikes), count.clamp(min=0))
    return c + (s - s.detach()) * allowed


def _step_no_grad(v: torch.Tensor, count: torch.Tensor, theta: torch.Tensor, theta_neg: torch.Tensor,
                  spec: NeuronSpec) -> tuple[torch.Tensor, NeuronState]:
    """The same step with fewer tensor ops, for inference (no surrogate, no autograd bookkeeping)."""
    if spec.spikes is Spikes.AUGMENTED:
        s = torch.floor(v / theta).clamp_(0, spec.max_spikes)
        if spec.negative:
            s -= torch.minimum(torch.floor(-v / theta_neg).clamp_(0, spec.max_spikes), count.clamp(min=0))
    else:
        s = (v >= theta).to(v.dtype)
        if spec.spikes is Spikes.TERNARY:
            s -= ((v <= -theta_neg) & (count > 0)).to(v.dtype)
    if spec.reset is Reset.ZERO:
        v = v * (s == 0).to(v.dtype)
    elif spec.negative_threshold is None or not spec.signed:
        v = v - s * theta
    else:
        v = v - torch.where(s >= 0, s * theta, s * theta_neg)
    return s, NeuronState(v, count + s)


def neuron_step(current: torch.Tensor, state: NeuronState | None, spec: NeuronSpec,
                threshold: torch.Tensor | float | None = None) -> tuple[torch.Tensor, NeuronState]:
    """One time step: integrate ``current``, fire, reset. Returns ``(s, new_state)``; ``s`` in spike units.

    ``threshold`` overrides ``spec.threshold`` (a tensor broadcast against ``current``: per channel).
    """
    if state is None:
        state = rest(current, spec, threshold)
    if state.v.shape != current.shape:
        raise ShapeError(f"neuron state has shape {tuple(state.v.shape)} but the input current has "
                         f"{tuple(current.shape)}; start each new input batch from state=None")
    theta = torch.as_tensor(spec.threshold if threshold is None else threshold, dtype=current.dtype)
    theta_neg = theta if spec.negative_threshold is None else torch.as_tensor(spec.negative_threshold,
                                                                              dtype=current.dtype)
    v = spec.leak * state.v + current
    if not (torch.is_grad_enabled() and (current.requires_grad or state.v.requires_grad)):
        return _step_no_grad(v, state.count, theta, theta_neg, spec)
    s = _positive(v, theta, spec)
    if spec.signed:
        s = s - _negative(v, state.count, theta_neg, spec)
    r = s.detach() if spec.detach_reset else s
    if spec.reset is Reset.SUBTRACT:
        v = v - torch.where(r >= 0, r * theta, r * theta_neg)
    else:
        v = v * (1.0 - (r != 0).to(v.dtype))
    return s, NeuronState(v, state.count + s.detach())


class SpikingNeuron(nn.Module):
    """A layer of neurons: ``s, state = neuron(x, state)``; ``s * amplitude`` is what the next layer reads.

    ``threshold`` (optional tensor, broadcast against the input: per channel ``[C, 1, 1]``) overrides the spec's;
    ``amplitude`` scales the emitted spikes (ANN-to-SNN conversion sets it to the threshold so that the next
    layer's weights need no rescaling; an event-driven runtime folds it into those weights instead).
    """

    def __init__(self, spec: NeuronSpec, threshold: torch.Tensor | None = None,
                 amplitude: torch.Tensor | float = 1.0) -> None:
        super().__init__()
        if not isinstance(spec, NeuronSpec):
            raise ConfigError(f"SpikingNeuron needs a NeuronSpec, got {type(spec).__name__}")
        self.spec = spec
        self.register_buffer("threshold", torch.as_tensor(spec.threshold if threshold is None else threshold,
                                                          dtype=torch.float32).clone())
        self.register_buffer("amplitude", torch.as_tensor(amplitude, dtype=torch.float32).clone())
        if (self.threshold <= 0).any() or not torch.isfinite(self.threshold).all():
            raise ConfigError("SpikingNeuron thresholds must be finite and > 0")

    def forward(self, x: torch.Tensor, state: NeuronState | None = None) -> tuple[torch.Tensor, NeuronState]:
        s, state = neuron_step(x, state, self.spec, self.threshold)
        return s * self.amplitude, state

    def extra_repr(self) -> str:
        th = self.threshold
        shown = f"{th.item():.4g}" if th.numel() == 1 else f"per-channel[{th.numel()}]"
        return (f"spikes={self.spec.spikes.name}, reset={self.spec.reset.name}, leak={self.spec.leak}, "
                f"threshold={shown}, max_spikes={self.spec.max_spikes}")
