"""Fixed-point LSTM and GRU cells: table gates in Q.15, a 16-bit cell state, integer multipliers.

The shared arithmetic of the fixed-point delta RNN (:mod:`lowbit.delta.fixed`) and of the integer LSTM/GRU
layers (:mod:`lowbit.nn.recurrent`, the ``recurrent`` op of :mod:`lowbit.integer`). Neil et al. (ICML 2017)
and Jacob et al. (CVPR 2018, sec. 2.2) for the requantization; the gate tables are those of
Chang et al., "Recurrent Neural Networks Hardware Implementation on FPGA" (2015): a gate is a lookup of
its clamped fixed-point pre-activation.

Tables (:func:`gate_tables`): ``2 L`` int32 entries, ``L = 8 2^P``, the function at ``(k - L) / 2^P`` in
Q.15, ``sigmoid`` in ``[0, 2^15]``, ``tanh`` in ``[-2^15, 2^15]``; :func:`table_at` clamps the index, so a
pre-activation beyond ``+-8`` reads the last entry (``sigmoid(8) = 1 - 3.4e-4``).

The integer layer (:func:`lstm_step`, :func:`gru_step`) works on per-row pre-activations in Q.P (``P`` =
:data:`PRE_FRAC`), each part clamped to int16 (``+-128``): ``px`` (input projection), ``ph`` (recurrent
projection), ``bx``, ``bh`` (biases, ``round(b 2^P)``). Its hidden state ``h`` is int8 on the fixed grid
``2^-7`` (:data:`H_FRAC`; ``|h| < 1``, codes clamped to ``+-127``), its LSTM cell state ``c`` int16 in Q.11
(:data:`C_FRAC`: ``|c| < 16``, step ``4.9e-4``). With ``half(s) = 2^(s-1)`` and ``>>`` an arithmetic shift
(a rounding half up)::

    LSTM   i, f, o = S[p_i], S[p_f], S[p_o],   g = T[p_g],   p = px + bx + ph + bh        (Q.15)
           c' = clamp(((f c + 2^14) >> 15) + ((i g + 2^18) >> 19), -2^15, 2^15 - 1)      (Q.11)
           h' = clamp((o T[(c' + 4) >> 3] + 2^22) >> 23, -127, 127)                      (Q.7)
    GRU    r, z = S[p_r], S[p_z]
           n  = T[px_n + bx_n + ((r clamp(ph_n + bh_n, -2^15, 2^15 - 1) + 2^14) >> 15)]  (Q.15)
           h15 = n + ((z ((h << 8) - n) + 2^14) >> 15),   h' = clamp((h15 + 2^7) >> 8, -127, 127)

(PyTorch's gate order: LSTM ``i, f, g, o``, GRU ``r, z, n``; ``h' = (1 - z) n + z h``.) Every product stays in
int32: ``f c``, ``i g``, ``o T`` are at most ``2^15 * 2^15 = 2^30``, ``r (ph_n + bh_n) <= 2^30``, and
``z ((h << 8) - n) <= 32757 * 65280 < 2^31 - 2^14``.
"""

from __future__ import annotations

import torch

PRE_FRAC = 8  # fractional bits of the gate pre-activations (the tables' index grid)
TABLE_RANGE = 8  # the gate tables cover pre-activations in [-8, 8)
C_FRAC = 11  # fractional bits of the LSTM's int16 cell state
H_FRAC = 7  # the hidden state's int8 grid: h = code / 2^7
H_MAX = 127  # |h code| (symmetric)
PART_MAX = (1 << 15) - 1  # each pre-activation part is clamped to int16
GATE_ONE = 1 << 15  # 1.0 in the tables' Q.15
ACC_MAX = (1 << 31) - 1  # the input projection's int32 accumulator
W_MAX = 127  # |int8 weight code| (narrow weights)


def max_input_delta(zero_point: int, width: int) -> int:
    """``D = max |x - zero_point|`` over all stored int``width`` codes ``x`` (``zero_point`` in that domain)."""
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    return max(zero_point - lo, hi - zero_point)


def max_input16_features(zero_point: int) -> int:
    """The most input features ``I`` of an int16 input (stored ``zero_point``) whose projection on narrow int8
    weights stays exact in an int32 accumulator whatever the codes: ``I * 127 * D <= 2^31 - 1`` with ``D`` of
    :func:`max_input_delta` (258 for ``D = 65535``, 516 for ``D = 32768``; :mod:`lowbit.nn.recurrent`)."""
    return ACC_MAX // (W_MAX * max_input_delta(zero_point, 16))


def rshift_half_up(v: torch.Tensor, s: int) -> torch.Tensor:
    """``floor(v / 2^s + 1/2)``: a right shift rounding half up (``s >= 0``)."""
    return (v + (1 << (s - 1))) >> s if s else v


def gate_tables(frac_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigmoid, tanh)`` int32 Q.15 tables over ``[-8, 8)`` on the grid ``2^-frac_bits`` (``2 L`` entries,
    ``L = 8 2^frac_bits``), from the float64 functions rounded half to even."""
    half = TABLE_RANGE << frac_bits
    grid = (torch.arange(2 * half, dtype=torch.float64) - half) / 2.0 ** frac_bits
    return (torch.round(torch.sigmoid(grid) * GATE_ONE).to(torch.int32),
            torch.round(torch.tanh(grid) * GATE_ONE).to(torch.int32))


def table_at(t: torch.Tensor, p: torch.Tensor, half: int) -> torch.Tensor:
    """Gate table ``t`` (``2 half`` entries, int64 result) at fixed-point pre-activations ``p``, index clamped."""
    return t.long()[(p + half).clamp(0, 2 * half - 1)]


def lstm_step(pre: torch.Tensor, c: torch.Tensor, sigmoid: torch.Tensor, tanh: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM update from int64 pre-activations ``pre`` (..., 4 H) in Q.P (``px + bx + ph + bh``) and the cell
    ``c`` (..., H) in Q.11 -> ``(h, c)``: int64 codes of ``h`` on ``2^-7`` and of ``c`` in Q.11 (module docstring)."""
    half = TABLE_RANGE << PRE_FRAC
    pi, pf, pg, po = pre.chunk(4, dim=-1)
    i, f, o = (table_at(sigmoid, p, half) for p in (pi, pf, po))
    g = table_at(tanh, pg, half)
    c = (((f * c + (1 << 14)) >> 15) + ((i * g + (1 << 18)) >> 19)).clamp(-PART_MAX - 1, PART_MAX)
    tc = table_at(tanh, rshift_half_up(c, C_FRAC - PRE_FRAC), half)
    h = ((o * tc + (1 << 22)) >> 23).clamp(-H_MAX, H_MAX)
    return h, c


def gru_step(px: torch.Tensor, ph: torch.Tensor, h: torch.Tensor, sigmoid: torch.Tensor, tanh: torch.Tensor
             ) -> torch.Tensor:
    """One GRU update from int64 parts ``px = Rx(acc_x) + bx`` and ``ph = Rh(acc_h) + bh`` (..., 3 H) in Q.P and
    the int8-grid codes ``h`` (..., H) -> the new ``h`` codes (int64, module docstring)."""
    half = TABLE_RANGE << PRE_FRAC
    xr, xz, xn = px.chunk(3, dim=-1)
    hr, hz, hn = ph.chunk(3, dim=-1)
    r = table_at(sigmoid, xr + hr, half)
    z = table_at(sigmoid, xz + hz, half)
    n = table_at(tanh, xn + ((r * hn.clamp(-PART_MAX - 1, PART_MAX) + (1 << 14)) >> 15), half)
    h15 = n + ((z * ((h << (15 - H_FRAC)) - n) + (1 << 14)) >> 15)
    return rshift_half_up(h15, 15 - H_FRAC).clamp(-H_MAX, H_MAX)


__all__ = ["ACC_MAX", "C_FRAC", "GATE_ONE", "H_FRAC", "H_MAX", "PART_MAX", "PRE_FRAC", "TABLE_RANGE", "W_MAX",
           "gate_tables", "gru_step", "lstm_step", "max_input16_features", "max_input_delta", "rshift_half_up",
           "table_at"]
