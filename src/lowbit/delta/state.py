"""The explicit state of a delta RNN and the event counts it carries.

A delta layer (Neil, Lee, Delbruck, Liu, "Delta Networks for Optimized Recurrent
Network Computation", ICML 2017) remembers, per layer ``l`` and batch row:

* ``h`` (and ``c`` for the LSTM): the hidden (cell) state after the last step;
* ``x_hat``: the last *transmitted* value of each input, ``h_hat`` of each hidden unit;
* ``acc_x = b_ih + W_ih x_hat`` and ``acc_h = b_hh + W_hh h_hat``: the pre-activation
  accumulators, updated by ``acc += W Δ`` with the sparse deltas only. They start from the
  biases (memories at zero). They are kept apart because the GRU's candidate gate needs the
  hidden part alone: ``n = tanh(acc_x[n] + r * acc_h[n])``; the LSTM adds them.
* ``counts``: the events since the state was created (:class:`DeltaCounts`).

Nothing here lives on the module: ``y, state = layer(x, state)``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass(frozen=True)
class DeltaCounts:
    """Event counts of one layer over some steps.

    ``*_events``: non-zero delta elements, summed over batch rows and steps (each costs one
    weight column of ``gates * hidden_size`` MACs). ``*_columns``: weight columns a batched
    step must read (a column is read once per step when any row has a non-zero delta there;
    equal to ``*_events`` at batch 1). ``*_slots``: the elements a dense layer would use,
    ``steps * batch * size``. ``steps`` counts time steps (not rows).
    """

    input_size: int
    hidden_size: int
    gates: int
    steps: int = 0
    batch_steps: int = 0
    x_events: int = 0
    x_columns: int = 0
    h_events: int = 0
    h_columns: int = 0

    def __add__(self, other: "DeltaCounts") -> "DeltaCounts":
        if not isinstance(other, DeltaCounts):
            return NotImplemented
        shape = (self.input_size, self.hidden_size, self.gates)
        if shape != (other.input_size, other.hidden_size, other.gates):
            raise ValueError(f"cannot add counts of layers of shape {shape} and "
                             f"{(other.input_size, other.hidden_size, other.gates)}")
        summed = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)
                  if f.name not in ("input_size", "hidden_size", "gates")}
        return DeltaCounts(*shape, **summed)

    @property
    def x_slots(self) -> int:
        return self.batch_steps * self.input_size

    @property
    def h_slots(self) -> int:
        return self.batch_steps * self.hidden_size


@dataclass(frozen=True)
class DeltaLayerState:
    """One layer's state; shapes ``(B, H)``, ``(B, I_l)``, ``(B, G*H)`` (``G`` = 3 GRU, 4 LSTM)."""

    h: torch.Tensor
    c: torch.Tensor | None
    x_hat: torch.Tensor
    h_hat: torch.Tensor
    acc_x: torch.Tensor
    acc_h: torch.Tensor
    counts: DeltaCounts

    def detach(self) -> "DeltaLayerState":
        """The same values cut from the autograd graph (truncated backpropagation through time)."""
        c = None if self.c is None else self.c.detach()
        return DeltaLayerState(self.h.detach(), c, self.x_hat.detach(), self.h_hat.detach(),
                               self.acc_x.detach(), self.acc_h.detach(), self.counts)


@dataclass(frozen=True)
class DeltaState:
    """The state of a multi-layer delta RNN: one :class:`DeltaLayerState` per layer, bottom first."""

    layers: tuple[DeltaLayerState, ...]

    @property
    def h_n(self) -> torch.Tensor:
        """``(num_layers, B, H)``, as ``nn.GRU``/``nn.LSTM`` return it."""
        return torch.stack([s.h for s in self.layers])

    @property
    def c_n(self) -> torch.Tensor:
        """``(num_layers, B, H)`` cell states (LSTM only)."""
        if any(s.c is None for s in self.layers):
            raise AttributeError("this state has no cell state (it is a GRU's)")
        return torch.stack([s.c for s in self.layers])

    @property
    def counts(self) -> tuple[DeltaCounts, ...]:
        """Events per layer since the state was created."""
        return tuple(s.counts for s in self.layers)

    def detach(self) -> "DeltaState":
        return DeltaState(tuple(s.detach() for s in self.layers))
