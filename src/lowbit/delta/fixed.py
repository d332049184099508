"""A fixed-point delta GRU or LSTM: int8 weights, 16-bit activations, integer accumulators, table gates.

Neil et al. (ICML 2017) run their delta networks with 16-bit fixed-point activations (Q8.8) on
hardware; this is such a model, one layer, batch 1. With ``F`` fractional bits for activations
and ``Fw`` for weights (:class:`FixedRNN`), the GRU::

    x_q  = clamp(round(x 2^F), -2^15, 2^15 - 1)                      (round half to even)
    W_q  = clamp(round(W 2^Fw), -127, 127)  int8    b_q = round(b 2^(F+Fw))  int32
    Δ    = v_q - v_hat   sent where |Δ| > θ_q = floor(θ 2^F)  (v_hat := v_q)
    acc += W_q[:, j] Δ_j  (int32: acc = b_q + W_q v_hat exactly)
    p(a) = (a + 2^(Fw-1)) >> Fw                                      (half up)
    r, z = S[p(ax + ah)],  n = T[p(ax_n) + (r p(ah_n) + 2^14) >> 15]  (tables in Q.15 over ±8)
    n_F  = (n + 2^(14-F)) >> (15 - F),   h = n_F + (z (h - n_F) + 2^14) >> 15

and the LSTM (gates i, f, g, o as ``nn.LSTM`` orders them, the same accumulators over 4H rows)::

    i, f, o = S[p(ax + ah)],  g = T[p(ax_g + ah_g)]                    (Q.15)
    c = clamp(((f c + 2^14) >> 15) + ((i g + 2^(29-F)) >> (30 - F)), -2^15, 2^15 - 1)   (Q.F, 16 bits)
    h = (o T[c] + 2^(29-F)) >> (30 - F)                               (T indexed by c: its grid is Q.F)

:func:`fixed_delta_gru` and :func:`fixed_delta_lstm` are these computations in PyTorch integer ops (the
simulations of the fixed-point models); :class:`FixedDeltaGRURuntime` and :class:`FixedDeltaLSTMRuntime` run
them in C (``lowbit_delta_gru_q``, ``lowbit_delta_lstm_q``), bit-exact with them. Both differ from the float
:class:`lowbit.delta.DeltaGRU` / :class:`~lowbit.delta.DeltaLSTM` by the quantisation (about ``2^-F`` per value).
``Fw`` defaults to the largest that keeps every weight in int8; the accumulators stay inside int32
for ``I, H <= 255`` (``127 * 2^15 * 255 < 2^30``) and ``|b_q| < 2^30``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lowbit.delta.cells import DeltaGRU, DeltaLSTM, check_threshold
from lowbit.delta.state import DeltaCounts
from lowbit.errors import ConfigError, DataError, ShapeError
from lowbit.functional.fixed_rnn import TABLE_RANGE, gate_tables, rshift_half_up, table_at
from lowbit.native import cext, guard

MAX_SIZE = 255  # I and H: keeps |b_q + W_q x_hat| < 2^31


@dataclass(frozen=True)
class FixedRNN:
    """One GRU (``gates`` 3) or LSTM (4) layer in fixed point: int8 weights ``(G H, I)``, ``(G H, H)``, int32
    biases in Q.(F+Fw), the gate tables (int32 Q.15, ``2 L`` entries, ``L = 8 * 2^F``) and the integer
    thresholds."""

    w_ih: torch.Tensor
    w_hh: torch.Tensor
    b_ih: torch.Tensor
    b_hh: torch.Tensor
    frac_bits: int
    weight_frac_bits: int
    theta_x: int
    theta_h: int
    sigmoid: torch.Tensor
    tanh: torch.Tensor
    gates: int = 3

    @property
    def half_range(self) -> int:
        return TABLE_RANGE << self.frac_bits

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """int32 ``clamp(round(x 2^F), -2^15, 2^15 - 1)`` of float features."""
        return torch.round(x.double() * 2.0 ** self.frac_bits).clamp(-32768, 32767).to(torch.int32)

    @classmethod
    def from_layer(cls, layer: nn.Module, theta_x: float | None = None, theta_h: float | None = None,
                   frac_bits: int = 8, weight_frac_bits: int | None = None) -> "FixedRNN":
        """Quantise a one-layer :class:`DeltaGRU`, :class:`DeltaLSTM`, ``nn.GRU`` or ``nn.LSTM`` (thresholds
        default to the layer's)."""
        if not isinstance(layer, (DeltaGRU, DeltaLSTM, nn.GRU, nn.LSTM)):
            raise ConfigError(f"the fixed-point runtime takes a one-layer DeltaGRU, DeltaLSTM, nn.GRU or nn.LSTM, "
                              f"got {type(layer).__name__}")
        gates = 3 if isinstance(layer, (DeltaGRU, nn.GRU)) else 4
        if getattr(layer, "proj_size", 0):
            raise ConfigError(f"{layer!r}: the fixed-point runtime runs LSTMs without projection")
        if layer.num_layers != 1 or getattr(layer, "bidirectional", False):
            raise ConfigError(f"{layer!r}: the fixed-point runtime runs one unidirectional layer")
        if isinstance(frac_bits, bool) or not isinstance(frac_bits, int) or not 1 <= frac_bits <= 14:
            raise ConfigError(f"frac_bits={frac_bits!r}: an integer in 1..14 (8 is Q8.8)")
        i, h = layer.input_size, layer.hidden_size
        if i > MAX_SIZE or h > MAX_SIZE:
            raise ConfigError(f"input_size={i}, hidden_size={h}: the int32 accumulators of the fixed-point runtime "
                              f"hold layers up to {MAX_SIZE} wide; use the float runtime (DeltaRuntime)")
        theta_x = check_threshold("theta_x", getattr(layer, "theta_x", 0.0) if theta_x is None else theta_x)
        theta_h = check_threshold("theta_h", getattr(layer, "theta_h", 0.0) if theta_h is None else theta_h)
        w_ih, w_hh = layer.weight_ih_l0.detach().double(), layer.weight_hh_l0.detach().double()
        zeros = torch.zeros(gates * h, dtype=torch.float64)
        b_ih = layer.bias_ih_l0.detach().double() if layer.bias else zeros
        b_hh = layer.bias_hh_l0.detach().double() if layer.bias else zeros
        peak = float(max(w_ih.abs().max(), w_hh.abs().max()))
        if not math.isfinite(peak) or not bool(torch.isfinite(b_ih).all() and torch.isfinite(b_hh).all()):
            raise DataError("the layer's weights hold a NaN or an infinity")
        if weight_frac_bits is None:
            weight_frac_bits = min(24, math.floor(math.log2(127 / peak))) if peak > 0 else 24
        if isinstance(weight_frac_bits, bool) or not isinstance(weight_frac_bits, int) or not 0 <= weight_frac_bits <= 24:
            raise ConfigError(f"weight_frac_bits={weight_frac_bits!r}: an integer in 0..24 (the largest weight "
                              f"|W| = {peak:.3g} needs |W| 2^Fw <= 127)")
        sw, sb = 2.0 ** weight_frac_bits, 2.0 ** (weight_frac_bits + frac_bits)
        q = {name: torch.round(t * sw).clamp(-127, 127).to(torch.int8) for name, t in (("w_ih", w_ih), ("w_hh", w_hh))}
        b = {name: torch.round(t * sb) for name, t in (("b_ih", b_ih), ("b_hh", b_hh))}
        if max(float(t.abs().max()) for t in b.values()) >= 2 ** 30:
            raise ConfigError(f"a bias of {max(b_ih.abs().max(), b_hh.abs().max()):.3g} does not fit the int32 "
                              f"accumulators at weight_frac_bits={weight_frac_bits}: pass a smaller weight_frac_bits")
        sigmoid, tanh = gate_tables(frac_bits)
        return cls(q["w_ih"], q["w_hh"], b["b_ih"].to(torch.int32), b["b_hh"].to(torch.int32), frac_bits,
                   weight_frac_bits, math.floor(theta_x * 2 ** frac_bits) if theta_x < 2 ** 16 else 2 ** 31 - 1,
                   math.floor(theta_h * 2 ** frac_bits) if theta_h < 2 ** 16 else 2 ** 31 - 1,
                   sigmoid, tanh, gates)


FixedGRU = FixedRNN  # the name it had when only the GRU was fixed point


_rshift_round = rshift_half_up  # the shared fixed-point helpers (lowbit.functional.fixed_rnn)
_table = table_at


def _send(v: torch.Tensor, memory: torch.Tensor, theta: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The deltas sent where ``|v - memory| > theta``: (the new memory, the sent deltas with zeros elsewhere,
    how many were sent)."""
    d = v - memory
    sent = d.abs() > theta
    return torch.where(sent, v, memory), torch.where(sent, d, 0), int(sent.sum())


def _gru_cell(q: FixedRNN, acc_x: torch.Tensor, acc_h: torch.Tensor, h: torch.Tensor, c: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The GRU's gates and update on the accumulators (module docstring); ``c`` is unused."""
    L, fw, f = q.half_range, q.weight_frac_bits, q.frac_bits
    xr, xz, xn = acc_x.chunk(3)
    hr, hz, hn = acc_h.chunk(3)
    r = _table(q.sigmoid, _rshift_round(xr + hr, fw), L)
    z = _table(q.sigmoid, _rshift_round(xz + hz, fw), L)
    p = _rshift_round(xn, fw) + ((r * _rshift_round(hn, fw) + (1 << 14)) >> 15)
    n = _rshift_round(_table(q.tanh, p, L), 15 - f)
    return n + ((z * (h - n) + (1 << 14)) >> 15), c


def _lstm_cell(q: FixedRNN, acc_x: torch.Tensor, acc_h: torch.Tensor, h: torch.Tensor, c: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The LSTM's gates, cell and output on the accumulators (module docstring)."""
    L, fw, f = q.half_range, q.weight_frac_bits, q.frac_bits
    half = 1 << (29 - f)
    pi, pf, pg, po = (_rshift_round(a + b, fw) for a, b in zip(acc_x.chunk(4), acc_h.chunk(4)))
    gi, gf, go = (_table(q.sigmoid, p, L) for p in (pi, pf, po))
    gg = _table(q.tanh, pg, L)
    c = (((gf * c + (1 << 14)) >> 15) + ((gi * gg + half) >> (30 - f))).clamp(-32768, 32767)
    return (go * _table(q.tanh, c, L) + half) >> (30 - f), c


def _fixed_delta(q: FixedRNN, x_q: torch.Tensor, cell) -> tuple[torch.Tensor, DeltaCounts]:
    """The fixed-point delta layer from a fresh state: per step the deltas sent, their weight columns added to
    the accumulators (``acc = b + W v_hat`` exactly), then ``cell``'s update of ``h`` (and the LSTM's ``c``)."""
    steps, i = x_q.shape
    h_size = q.w_hh.shape[1]
    wx, wh = q.w_ih.long(), q.w_hh.long()
    x_hat, h_hat = torch.zeros(i, dtype=torch.long), torch.zeros(h_size, dtype=torch.long)
    h, c = torch.zeros(h_size, dtype=torch.long), torch.zeros(h_size, dtype=torch.long)
    acc_x, acc_h = q.b_ih.long().clone(), q.b_hh.long().clone()
    ys, nx, nh = [], 0, 0
    for t in range(steps):
        x_hat, dx, kx = _send(x_q[t].long(), x_hat, q.theta_x)
        h_hat, dh, kh = _send(h, h_hat, q.theta_h)
        acc_x, acc_h, nx, nh = acc_x + wx @ dx, acc_h + wh @ dh, nx + kx, nh + kh
        h, c = cell(q, acc_x, acc_h, h, c)
        ys.append(h)
    counts = DeltaCounts(i, h_size, q.gates, steps=steps, batch_steps=steps, x_events=nx, x_columns=nx,
                         h_events=nh, h_columns=nh)
    return torch.stack(ys).to(torch.int32), counts


def fixed_delta_gru(q: FixedRNN, x_q: torch.Tensor) -> tuple[torch.Tensor, DeltaCounts]:
    """The fixed-point delta GRU in PyTorch int64 ops, from a fresh state: int32 ``x_q`` ``(T, I)`` ->
    (int32 ``h`` ``(T, H)`` in Q.F, the events). The reference the C runtime is bit-exact with."""
    if q.gates != 3:
        raise ConfigError("fixed_delta_gru takes a GRU's FixedRNN (gates 3); fixed_delta_lstm runs an LSTM's")
    return _fixed_delta(q, x_q, _gru_cell)


def fixed_delta_lstm(q: FixedRNN, x_q: torch.Tensor) -> tuple[torch.Tensor, DeltaCounts]:
    """The fixed-point delta LSTM in PyTorch int64 ops, from a fresh state: int32 ``x_q`` ``(T, I)`` ->
    (int32 ``h`` ``(T, H)`` in Q.F, the events). The reference the C runtime is bit-exact with."""
    if q.gates != 4:
        raise ConfigError("fixed_delta_lstm takes an LSTM's FixedRNN (gates 4); fixed_delta_gru runs a GRU's")
    return _fixed_delta(q, x_q, _lstm_cell)


class _FixedRuntime:
    """The fixed-point delta layer in C, batch 1, state in the object like
    :class:`lowbit.delta.runtime.DeltaRuntime`: :meth:`run` a sequence (float features, quantised here, or
    int32 codes), :meth:`reset`, :attr:`counts`. Outputs are int32 codes in Q.F (``h = code / 2^F``)."""

    gates = 3
    kernel = "lowbit_delta_gru_q"
    cell = "GRU"

    def __init__(self, q: FixedRNN) -> None:
        if cext.library() is None:
            raise RuntimeError("the fixed-point runtime needs the C kernels, and no C compiler works here (install gcc)")
        if not isinstance(q, FixedRNN) or q.gates != self.gates:
            raise ConfigError(f"{type(self).__name__} takes the FixedRNN of a {self.cell} (gates {self.gates}), got "
                              f"{getattr(q, 'gates', type(q).__name__)} gates")
        self.q = q
        self.hidden_size, self.input_size = q.w_hh.shape[1], q.w_ih.shape[1]
        self.wx = q.w_ih.t().contiguous()  # (I, G H): a column per input, contiguous
        self.wh = q.w_hh.t().contiguous()
        i, h = self.input_size, self.hidden_size
        self._acc = i + (2 if self.gates == 3 else 3) * h  # where the accumulators start in the state
        self.state = torch.zeros(self._acc + 2 * self.gates * h, dtype=torch.int32)
        self.counts_buf = torch.zeros(2, dtype=torch.int64)
        self.idx = torch.zeros(i + h + 32, dtype=torch.int32)  # + 16 slack per part (the AVX-512 stores)
        self.dv = torch.zeros(i + h + 32, dtype=torch.int32)
        self.steps = 0
        self.reset()

    @classmethod
    def from_layer(cls, layer: nn.Module, **kw):
        """Quantise ``layer`` with :meth:`FixedRNN.from_layer` (same keywords) and build the runtime."""
        q = FixedRNN.from_layer(layer, **kw)
        if q.gates != cls.gates:
            raise ConfigError(f"{cls.__name__} runs a {cls.cell}, got {type(layer).__name__}: use "
                              f"{'FixedDeltaLSTMRuntime' if q.gates == 4 else 'FixedDeltaGRURuntime'}")
        return cls(q)

    def reset(self) -> None:
        gh = self.gates * self.hidden_size
        self.state.zero_()
        self.state[self._acc:self._acc + gh] = self.q.b_ih
        self.state[self._acc + gh:] = self.q.b_hh
        self.counts_buf.zero_()
        self.steps = 0

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(T, I)`` float features (quantised with :meth:`FixedRNN.quantize_input`) or int32 codes ->
        int32 ``h`` codes ``(T, H)``; continues the stream."""
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != self.input_size or x.shape[0] == 0:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ShapeError(f"the fixed-point {self.cell} runtime takes (steps >= 1, input_size={self.input_size}), "
                             f"got {got}")
        if x.is_floating_point():
            if not bool(torch.isfinite(x).all()):
                raise DataError("the input holds a NaN or an infinity; clean the features (torch.nan_to_num)")
            x = self.q.quantize_input(x)
        elif x.dtype != torch.int32:
            raise DataError(f"integer input must be int32 codes in -32768..32767, got {x.dtype}")
        elif int(x.min()) < -32768 or int(x.max()) > 32767:
            raise DataError(f"integer input codes span {int(x.min())}..{int(x.max())}; the 16-bit activations take "
                            f"-32768..32767 (pass float features to have them quantised and clamped)")
        x = x.cpu().contiguous()
        q, steps = self.q, x.shape[0]
        y = torch.empty(steps, self.hidden_size, dtype=torch.int32)
        b = guard.buf
        args = (steps, self.input_size, self.hidden_size)
        guard.delta_gru_q(b(x, self.kernel, "x"), *args, b(self.wx), b(self.wh), b(self.state), q.theta_x, q.theta_h,
                          q.frac_bits, q.weight_frac_bits, b(q.sigmoid), b(q.tanh), q.half_range, b(y),
                          b(self.counts_buf), b(self.idx), b(self.dv), gates=self.gates)
        getattr(cext._lib(), self.kernel)(x.data_ptr(), *args, self.wx.data_ptr(), self.wh.data_ptr(),
                                          self.state.data_ptr(), q.theta_x, q.theta_h, q.frac_bits,
                                          q.weight_frac_bits, q.sigmoid.data_ptr(), q.tanh.data_ptr(), q.half_range,
                                          y.data_ptr(), self.counts_buf.data_ptr(), self.idx.data_ptr(),
                                          self.dv.data_ptr())
        self.steps += steps
        return y

    @property
    def counts(self) -> DeltaCounts:
        nx, nh = (int(v) for v in self.counts_buf)
        return DeltaCounts(self.input_size, self.hidden_size, self.gates, steps=self.steps, batch_steps=self.steps,
                           x_events=nx, x_columns=nx, h_events=nh, h_columns=nh)


class FixedDeltaGRURuntime(_FixedRuntime):
    """The fixed-point delta GRU in C (``lowbit_delta_gru_q``); see :class:`_FixedRuntime`."""


class FixedDeltaLSTMRuntime(_FixedRuntime):
    """The fixed-point delta LSTM in C (``lowbit_delta_lstm_q``); see :class:`_FixedRuntime`."""

    gates = 4
    kernel = "lowbit_delta_lstm_q"
    cell = "LSTM"


__all__ = ["FixedDeltaGRURuntime", "FixedDeltaLSTMRuntime", "FixedGRU", "FixedRNN", "fixed_delta_gru", "fixed_delta_lstm"]
