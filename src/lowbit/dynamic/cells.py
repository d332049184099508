"""LSTM and GRU cells (one step, explicit state) with int8 weights and dynamically quantized inputs.

The cell forms of :mod:`lowbit.dynamic.recurrent`, for models that step a cell themselves (streaming voice
activity detectors, decoders): ``x`` and the hidden state ``h`` are quantized per row when they arrive, the
weights per gate row (output channel), and one int8 product each (:meth:`~lowbit.dynamic.linear.DynamicWeight.matmul`)
gives the gate pre-activations; gates and the cell state stay float32, the same equations as the layers::

    LSTMCell: (h', c') with i, f, g, o = split(W_ih x + b_ih + W_hh h + b_hh),
              c' = sigma(f) c + sigma(i) tanh(g),  h' = sigma(o) tanh(c')
    GRUCell:  h' = (1 - z) n + z h,  r, z = sigma(. + .),  n = tanh(W_in x + b_in + r (W_hn h + b_hn))

``forward(x, hx)`` takes and returns what ``nn.LSTMCell`` / ``nn.GRUCell`` do: ``x`` (N, I) or unbatched (I,);
``hx`` None (zeros), ``(h, c)`` for an LSTM cell or ``h`` for a GRU cell.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.dynamic.linear import DynamicWeight
from lowbit.dynamic.recurrent import DynamicGRU, DynamicLSTM
from lowbit.errors import ShapeError


class _DynamicCell(nn.Module):
    mode, states = "", 1

    def __init__(self, cell: nn.RNNCellBase, bits: int = 8) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.bits, self.bias = cell.input_size, cell.hidden_size, bits, cell.bias
        self.w_ih = DynamicWeight.of(cell.weight_ih, bits)
        self.w_hh = DynamicWeight.of(cell.weight_hh, bits)
        zeros = torch.zeros(self.w_ih.codes.shape[0])
        self.b_ih = cell.bias_ih.detach().float().contiguous().clone() if cell.bias else zeros
        self.b_hh = cell.bias_hh.detach().float().contiguous().clone() if cell.bias else zeros

    def _state(self, hx, n: int, unbatched: bool) -> list[torch.Tensor]:
        if hx is None:
            return [torch.zeros(n, self.hidden_size)] * self.states
        states = list(hx) if self.states == 2 else [hx]
        want = (self.hidden_size,) if unbatched else (n, self.hidden_size)
        for s in states:
            if not isinstance(s, torch.Tensor) or tuple(s.shape) != want:
                got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
                raise ShapeError(f"{type(self).__name__}: state of shape {got}, expected {want}")
        return [s.float().reshape(n, self.hidden_size) for s in states]

    def forward(self, x: torch.Tensor, hx=None):
        unbatched = x.dim() == 1
        rows = x.reshape(1, -1) if unbatched else x
        if rows.dim() != 2 or rows.shape[-1] != self.input_size:
            raise ShapeError(f"{type(self).__name__}: input of shape {tuple(x.shape)}, expected (N, "
                             f"{self.input_size}) or ({self.input_size},)")
        state = self._state(hx, rows.shape[0], unbatched)
        gx = self.w_ih.matmul(rows.float(), self.bits, self.b_ih)
        gh = self.w_hh.matmul(state[0], self.bits, self.b_hh)
        new = self._step(gx, gh, state)
        if unbatched:
            new = [s.reshape(-1) for s in new]
        return tuple(new) if self.states == 2 else new[0]

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, W int{self.bits} per gate row, A int{self.bits} per row"


class DynamicLSTMCell(_DynamicCell):
    """``nn.LSTMCell`` with int8 weights and per-row dynamic int8 inputs and hidden states."""

    mode, states = "LSTM", 2
    _step = staticmethod(DynamicLSTM._step)


class DynamicGRUCell(_DynamicCell):
    """``nn.GRUCell`` with int8 weights and per-row dynamic int8 inputs and hidden states."""

    mode, states = "GRU", 1
    _step = staticmethod(DynamicGRU._step)


__all__ = ["DynamicGRUCell", "DynamicLSTMCell"]
