"""LSTM and GRU layers with int8 weights and dynamically quantized inputs and hidden states.

The input projection of a whole sequence is one integer GEMM (``T N`` rows), the recurrent
projection one per step (``N`` rows); each row is quantized on its own grid
(:mod:`lowbit.functional.dynamic`), the weights per gate row (output channel). Gates and the cell
state stay float32, as in PyTorch's ``quantize_dynamic``::

    LSTM: i, f, g, o = split(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
          c_t = sigma(f) c_{t-1} + sigma(i) tanh(g),   h_t = sigma(o) tanh(c_t)
    GRU:  r = sigma(W_ir x_t + b_ir + W_hr h + b_hr),  z = sigma(W_iz x_t + b_iz + W_hz h + b_hz)
          n = tanh(W_in x_t + b_in + r (W_hn h + b_hn)),  h_t = (1 - z) n + z h

The state is explicit: ``forward(x, hx)`` returns ``(output, h_n)`` for a GRU and
``(output, (h_n, c_n))`` for an LSTM, in ``nn.LSTM``/``nn.GRU``'s shapes and layouts
(``batch_first``, several layers, both directions).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from lowbit.dynamic.linear import DynamicWeight
from lowbit.errors import ConfigError, ShapeError
from lowbit.functional.dynamic import check_bits


class _Direction:
    """One layer and direction: its dynamic weights and float32 biases."""

    def __init__(self, rnn: nn.RNNBase, layer: int, suffix: str, bits: int) -> None:
        name = f"l{layer}{suffix}"
        self.w_ih = DynamicWeight.of(getattr(rnn, f"weight_ih_{name}"), bits)
        self.w_hh = DynamicWeight.of(getattr(rnn, f"weight_hh_{name}"), bits)
        zeros = torch.zeros(self.w_ih.codes.shape[0])
        self.b_ih = getattr(rnn, f"bias_ih_{name}").detach().float().contiguous().clone() if rnn.bias else zeros
        self.b_hh = getattr(rnn, f"bias_hh_{name}").detach().float().contiguous().clone() if rnn.bias else zeros


class _DynamicRNN(nn.Module):
    mode = ""

    def __init__(self, rnn: nn.RNNBase, bits: int = 8) -> None:
        super().__init__()
        if getattr(rnn, "proj_size", 0):
            raise ConfigError(f"{type(rnn).__name__}(proj_size={rnn.proj_size}): LSTMs with projections have no "
                              "dynamic int8 form yet; leave them float")
        self.input_size, self.hidden_size, self.num_layers = rnn.input_size, rnn.hidden_size, rnn.num_layers
        self.batch_first, self.bidirectional, self.bits = rnn.batch_first, rnn.bidirectional, bits
        suffixes = ["", "_reverse"] if rnn.bidirectional else [""]
        self.cells = [[_Direction(rnn, layer, s, bits) for s in suffixes] for layer in range(rnn.num_layers)]

    def _initial(self, hx, n: int) -> list[torch.Tensor]:
        dirs = 2 if self.bidirectional else 1
        shape = (self.num_layers * dirs, n, self.hidden_size)
        if hx is None:
            return [torch.zeros(shape)] * (2 if self.mode == "LSTM" else 1)
        states = list(hx) if self.mode == "LSTM" else [hx]
        for s in states:
            if tuple(s.shape) != shape:
                raise ShapeError(f"{type(self).__name__}: initial state of shape {tuple(s.shape)}, expected {shape}")
        return [s.float() for s in states]

    def forward(self, x: torch.Tensor, hx=None):
        if isinstance(x, PackedSequence):
            raise ConfigError(f"{type(self).__name__} takes padded tensors, not PackedSequence: pad the batch "
                              "(torch.nn.utils.rnn.pad_packed_sequence) or leave this layer float")
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(1)
            hx = None if hx is None else tuple(h.unsqueeze(1) for h in hx) if self.mode == "LSTM" else hx.unsqueeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)
        if x.shape[-1] != self.input_size:
            raise ShapeError(f"{type(self).__name__}: input of {x.shape[-1]} features, expected {self.input_size}")
        states = self._initial(hx, x.shape[1])
        out, finals = x.float(), [[] for _ in states]
        for layer, directions in enumerate(self.cells):
            outs = []
            for d, cell in enumerate(directions):
                i = layer * len(directions) + d
                seq, last = self._run(cell, out, [s[i] for s in states], reverse=d == 1)
                outs.append(seq)
                for f, v in zip(finals, last):
                    f.append(v)
            out = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]
        finals = [torch.stack(f) for f in finals]
        if unbatched:
            out, finals = out.squeeze(1), [f.squeeze(1) for f in finals]
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, (tuple(finals) if self.mode == "LSTM" else finals[0])

    def _run(self, cell: _Direction, xs: torch.Tensor, state: list[torch.Tensor], reverse: bool):
        gx = cell.w_ih.matmul(xs, self.bits, cell.b_ih)  # (T, N, G H): the whole sequence in one GEMM
        if cell.w_hh.packed is not None and xs.shape[0] > 0:
            return self._run_c(cell, gx.contiguous(), state, reverse)
        steps = range(xs.shape[0] - 1, -1, -1) if reverse else range(xs.shape[0])
        outs = [None] * xs.shape[0]
        for t in steps:
            gh = cell.w_hh.matmul(state[0], self.bits, cell.b_hh)
            state = self._step(gx[t], gh, state)
            outs[t] = state[0]
        return torch.stack(outs), state

    def _run_c(self, cell: _Direction, gx: torch.Tensor, state: list[torch.Tensor], reverse: bool):
        """The recurrence in C (``csrc/dynrnn.c``): the same integer products; the gates in C's float32."""
        from lowbit.integer.vnni import _check_rc
        from lowbit.native import cext, guard

        k, b = "lowbit_dyn_rnn_seq", guard.buf
        t, n, gh = gx.shape
        p, ws = cell.w_hh.packed, cell.w_hh.scale
        h = state[0].float().contiguous().clone()
        c = state[1].float().contiguous().clone() if self.mode == "LSTM" else None
        out = torch.empty((t, n, self.hidden_size))
        a, acc = torch.empty((n, p.kp), dtype=torch.uint8), torch.empty((n, gh), dtype=torch.int32)
        rs, pre = torch.empty(n), torch.empty(gh)
        qmax, gates = check_bits(self.bits), gh // self.hidden_size
        guard.dyn_rnn_seq(b(gx, k, "gx"), t, n, self.hidden_size, gates, b(p.panels, k, "panels"), p.kp,
                          b(p.correction, k, "corr"), b(ws, k, "ws"), b(cell.b_hh, k, "b_hh"), int(reverse), qmax,
                          b(h, k, "h"), b(c, k, "c"), b(out, k, "out"), b(a, k, "a"), b(acc, k, "acc"), b(rs, k, "rs"), b(pre, k, "pre"))
        rc = cext.library().lowbit_dyn_rnn_seq(gx.data_ptr(), t, n, self.hidden_size, gates, p.panels.data_ptr(),
                                               p.kp, p.correction.data_ptr(), ws.data_ptr(), cell.b_hh.data_ptr(),
                                               int(reverse), qmax, h.data_ptr(), cext.ptr(c), out.data_ptr(),
                                               a.data_ptr(), acc.data_ptr(), rs.data_ptr(), pre.data_ptr())
        _check_rc(rc, k, n * p.kp)
        return out, ([h, c] if c is not None else [h])

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}, W int{self.bits} per gate row, A int{self.bits} per row")


class DynamicLSTM(_DynamicRNN):
    """``nn.LSTM`` with int8 weights and per-row dynamic int8 inputs and hidden states."""

    mode = "LSTM"

    @staticmethod
    def _step(gx: torch.Tensor, gh: torch.Tensor, state: list[torch.Tensor]) -> list[torch.Tensor]:
        i, f, g, o = (gx + gh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
        return [torch.sigmoid(o) * torch.tanh(c), c]


class DynamicGRU(_DynamicRNN):
    """``nn.GRU`` with int8 weights and per-row dynamic int8 inputs and hidden states."""

    mode = "GRU"

    @staticmethod
    def _step(gx: torch.Tensor, gh: torch.Tensor, state: list[torch.Tensor]) -> list[torch.Tensor]:
        xr, xz, xn = gx.chunk(3, dim=-1)
        hr, hz, hn = gh.chunk(3, dim=-1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return [(1 - z) * n + z * state[0]]


__all__ = ["DynamicGRU", "DynamicLSTM"]
