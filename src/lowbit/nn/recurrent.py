"""Integer LSTM and GRU layers: the simulation of the ``recurrent`` op of :mod:`lowbit.integer`.

:func:`quantize_recurrent` turns a float ``nn.LSTM`` / ``nn.GRU`` (unidirectional, no projection) and the grid
of its input into :class:`RecurrentQ`; :func:`run_recurrent` is its arithmetic on integer codes, in PyTorch
integer ops (the oracle the integer model's kernel equals); :class:`QRecurrent` is the thin module PTQ puts
in place of the layer (float while calibrating, the integer arithmetic once frozen).

Per layer ``l`` (input ``x`` of ``I`` features on the grid ``(s_x, z_x)``: the input quantizer's for layer 0,
the hidden grid ``2^-7`` after it), with ``G`` gates (LSTM 4, GRU 3) and rows ``r`` of ``G H``::

    W_ih = q_ih s_ih[r],  W_hh = q_hh s_hh[r]     int8 codes, one symmetric scale per gate row (WEIGHT_SPEC)
    acc_x = q_ih (x - z_x)   acc_h = q_hh h       int32 (|acc_x| <= 127 * 255 * I, |acc_h| <= 127^2 H)
    px = requantize(acc_x, m_ih, n_ih)            m_ih / 2^n_ih ~= s_ih s_x 2^P   (P = 8: Q.8, clamped to int16)
    ph = requantize(acc_h, m_hh, n_hh)            m_hh / 2^n_hh ~= s_hh 2^-7 2^P
    bx = round(b_ih 2^P),  bh = round(b_hh 2^P)    int32, clamped to int16

then the gates of :mod:`lowbit.functional.fixed_rnn` (tables in Q.15, ``c`` int16 in Q.11, ``h`` int8 codes on
``2^-7``). The accumulators stay in int32 for ``I`` up to 66000 and ``H`` up to 133000; requantization forms the
64-bit product of :func:`lowbit.functional.requant.requantize`, as every layer of the integer model does.
The outputs are the float values of their grids: ``output`` and ``h_n`` ``code / 2^7``, ``c_n`` ``code / 2^11``.

**A 16-bit input grid** (layer 0 only; :data:`INPUT_WIDTHS`). An input grid of at most 8 bits is stored as int8
(``x - 128`` when unsigned); a 16-bit grid (a ``LayerRule(name, act=uint_act(16))``: its input is the layer's only
activation it does not fix itself) is stored as int16 (``x - 32768`` when unsigned), and the input projection is
``acc_x = q_ih (x - z_x)`` on int16 codes times int8 weights::

    |acc_x| <= I * 127 * D,   D = max|x - z_x| over int16 x = max(z_x + 2^15, 2^15 - 1 - z_x) <= 65535

which stays in int32 (and the requantization's product ``acc_x m_ih`` in int64) when ``I * 127 * D < 2^31``:
``I <= 258`` for a grid whose zero point lies at an end (an unsigned grid of a non-negative input, ``D = 65535``),
``I <= 516`` for one centred. A wider layer is refused (:func:`max_input16_features`); nothing is blocked or widened
to int64. ``px`` is then requantized to the same Q.8 pre-activations (``m_ih / 2^n_ih ~= s_ih s_x 2^8`` with the
16-bit grid's finer ``s_x``) and the rest of the cell is unchanged. The PyTorch reference forms ``x @ q_ih.T`` as
two int8 GEMMs on the bytes of ``x``: ``x = 256 hi + lo + 128`` with ``hi = x >> 8`` and ``lo = (x & 255) - 128``
both int8, so ``x @ q_ih.T = 256 (hi @ q_ih.T) + lo @ q_ih.T + 128 sum_k q_ih`` (each GEMM exact in int32).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from lowbit.errors import ConfigError, DataError
from lowbit.formats import IntFormat
from lowbit.functional._checks import check_tensor
from lowbit.functional.fixed_rnn import (C_FRAC, H_FRAC, H_MAX, PART_MAX, PRE_FRAC, gate_tables, gru_step, lstm_step,
                                         max_input16_features, max_input_delta)
from lowbit.functional.requant import fixed_point, requantize
from lowbit.nn.qparams import QParams, offset, stored_zero_point
from lowbit.granularity import PerChannel
from lowbit.spec import QuantSpec, solve_weight, weight_codes

RECURRENT = (nn.LSTM, nn.GRU)
CELL_TYPES = (nn.LSTMCell, nn.GRUCell)  # one step, with the state as inputs: a 1-layer op of one time step
CELLS = {nn.LSTM: "lstm", nn.GRU: "gru", nn.LSTMCell: "lstm", nn.GRUCell: "gru"}
GATES = {"lstm": 4, "gru": 3}
H_QPARAMS = QParams(2.0 ** -H_FRAC, 0, IntFormat(8, signed=True, narrow=True))  # the hidden state's fixed grid
C_QPARAMS = QParams(2.0 ** -C_FRAC, 0, IntFormat(16, signed=True))  # the LSTM cell state's fixed grid (int16, Q.11)
MAX_M = (1 << 31) - 1
INPUT_WIDTHS = (8, 16)  # stored widths of layer 0's input codes: int8 (grids of <= 8 bits), int16 (16-bit grids)
WEIGHT_SPEC = QuantSpec(IntFormat(8, signed=True, narrow=True), PerChannel(0))  # symmetric int8, one scale per row


class FixedGrid:
    """The frozen quantizer-like view of a fixed grid (what the grid passes ask a tensor's producer: ``mode``,
    ``spec``, ``qparams()``); it observes nothing: the tensor lies in the grid's range by construction (the hidden
    state ``h`` in (-1, 1), an L2-normalised vector in [-1, 1])."""

    mode = "quantize"

    def __init__(self, q: QParams) -> None:
        self.q, self.spec = q, QuantSpec(q.fmt)

    def qparams(self) -> QParams:
        return self.q


H_GRID = FixedGrid(H_QPARAMS)


@dataclass(frozen=True)
class LayerQ:
    """One integer layer: int8 codes ``w_ih`` (G H, I), ``w_hh`` (G H, H); per-row int64 multipliers and shifts;
    int32 biases in Q.8."""

    w_ih: torch.Tensor
    w_hh: torch.Tensor
    m_ih: torch.Tensor
    n_ih: torch.Tensor
    m_hh: torch.Tensor
    n_hh: torch.Tensor
    b_ih: torch.Tensor
    b_hh: torch.Tensor

    def tensors(self, k: int) -> dict[str, torch.Tensor]:
        """The layer's tensors named as the integer op stores them (``w_ih_0``, ...)."""
        return {f"{name}_{k}": getattr(self, name) for name in LAYER_TENSORS}


LAYER_TENSORS = ("w_ih", "w_hh", "m_ih", "n_ih", "m_hh", "n_hh", "b_ih", "b_hh")


@dataclass(frozen=True)
class RecurrentQ:
    """An integer LSTM or GRU (``cell``), its layers, the stored zero point of its input (int8, or int16 when
    ``input_bits`` is 16), its layout, and the Q.15 gate tables over ``[-8, 8)`` on the Q.8 grid."""

    cell: str
    layers: tuple[LayerQ, ...]
    input_zero_point: int
    batch_first: bool
    sigmoid: torch.Tensor
    tanh: torch.Tensor
    input_bits: int = 8  # the stored width of layer 0's input codes (INPUT_WIDTHS); the zero point is in it

    @property
    def hidden_size(self) -> int:
        return self.layers[0].w_hh.shape[1]


def unsupported(layer: nn.Module) -> str | None:
    """Why the integer layers cannot run ``layer`` (with the fix), or None."""
    kind = type(layer).__name__
    if getattr(layer, "bidirectional", False):
        return (f"bidirectional=True: the integer {kind} runs one direction (use two unidirectional {kind}s, one "
                "on the time-reversed input)")
    if getattr(layer, "proj_size", 0):
        return f"proj_size={layer.proj_size}: the integer LSTM has no projection (fold it into the next layer)"
    return None


def stays_float(layer: nn.Module, name: str, why: str | None) -> bool:
    """True, with a warning naming ``name`` and ``why`` (the reason and its fix), when ``why`` says the integer
    layers cannot run ``layer``: PTQ then leaves it float, as it left every LSTM before the integer layers."""
    if why is not None:
        warnings.warn(f"lowbit: {name} ({type(layer).__name__}) stays float: {why}", stacklevel=3)
    return why is not None


def check_recurrent(layer: nn.Module, name: str) -> None:
    """Refuse (ConfigError naming ``name`` and the fix) a recurrent layer the integer layers do not run."""
    why = unsupported(layer)
    if why is not None:
        raise ConfigError(f"{name} ({type(layer).__name__}, {why}); or keep it float with "
                          f"LayerRule({name!r}, keep_float=True)")


def input_width(q: QParams, name: str, cell: str = "recurrent layer") -> int:
    """The stored width (:data:`INPUT_WIDTHS`) of layer 0's input codes on the grid ``q``: 8 for a grid of at most
    8 bits, 16 for a 16-bit one; any other width raises a ConfigError naming the layer and the widths it takes."""
    bits = q.fmt.bits
    if bits <= 8 or bits == 16:
        return 8 if bits <= 8 else 16
    raise ConfigError(f"{name}: the integer {cell} takes its input on a grid of 2..8 bits (stored int8) or of 16 "
                      f"bits (stored int16), and its input grid has {bits} bits: give it act=uint_act(8) or "
                      f"act=uint_act(16) (LayerRule({name!r}, act=...))")


def _weight_codes(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes and float64 scales (one per gate row) of a weight matrix on :data:`WEIGHT_SPEC`."""
    grid = solve_weight(w, WEIGHT_SPEC)
    return weight_codes(w, WEIGHT_SPEC, grid).to(torch.int8), grid.scale.to(torch.float64)


def _multiplier(scale: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    m, n = fixed_point(scale * 2.0 ** PRE_FRAC)
    if bool((m > MAX_M).any() | (n < 0).any()):
        raise ConfigError(f"{name}: a weight scale of {float(scale.max()):.3g} gives a multiplier beyond int32; "
                          "the integer recurrent layer needs |w| s_x < 2^23")
    return m, n


def _bias(b: torch.Tensor | None, rows: int) -> torch.Tensor:
    if b is None:
        return torch.zeros(rows, dtype=torch.int32)
    return torch.round(b.detach().double() * 2.0 ** PRE_FRAC).clamp(-PART_MAX - 1, PART_MAX).to(torch.int32)


def _param(layer: nn.Module, base: str, k: int) -> torch.Tensor | None:
    """``weight_ih_l{k}`` of an LSTM / GRU, ``weight_ih`` of a cell (its only layer)."""
    return getattr(layer, f"{base}_l{k}", None) if isinstance(layer, RECURRENT) else getattr(layer, base, None)


def quantize_recurrent(layer: nn.Module, input_qparams: QParams, name: str = "recurrent") -> RecurrentQ:
    """The integer form of a float ``nn.LSTM`` / ``nn.GRU`` whose input lies on ``input_qparams`` (module docstring)."""
    check_recurrent(layer, name)
    cell = CELLS[type(layer)]
    params = [p for p in layer.parameters()]
    if not all(bool(torch.isfinite(p).all()) for p in params):
        raise DataError(f"{name}: the layer's weights hold a NaN or an infinity")
    width = input_width(input_qparams, name, cell.upper())
    zp = stored_zero_point(input_qparams, width)
    if width == 16 and layer.input_size > max_input16_features(zp):
        raise ConfigError(f"{name}: a 16-bit input of {layer.input_size} features could overflow the int32 "
                          f"accumulator of the input projection (I * 127 * {max_input_delta(zp, 16)} >= 2^31; at most "
                          f"{max_input16_features(zp)} features for this grid): keep this layer's input at 8 bits")
    layers, s_x = [], float(input_qparams.scale)
    for k in range(getattr(layer, "num_layers", 1)):
        q_ih, s_ih = _weight_codes(_param(layer, "weight_ih", k))
        q_hh, s_hh = _weight_codes(_param(layer, "weight_hh", k))
        m_ih, n_ih = _multiplier(s_ih * s_x, name)
        m_hh, n_hh = _multiplier(s_hh * 2.0 ** -H_FRAC, name)
        rows = q_ih.shape[0]
        b_ih = _bias(_param(layer, "bias_ih", k) if layer.bias else None, rows)
        b_hh = _bias(_param(layer, "bias_hh", k) if layer.bias else None, rows)
        layers.append(LayerQ(q_ih, q_hh, m_ih, n_ih, m_hh, n_hh, b_ih, b_hh))
        s_x = 2.0 ** -H_FRAC  # the next layer reads h
    sigmoid, tanh = gate_tables(PRE_FRAC)
    return RecurrentQ(cell, tuple(layers), zp, bool(getattr(layer, "batch_first", False)), sigmoid, tanh, width)


def _parts(acc: torch.Tensor, m: torch.Tensor, n: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``requantize(acc)`` (clamped to int16) plus the bias: a pre-activation part in Q.8 (int64)."""
    return requantize(acc, m, n, 0, -PART_MAX - 1, PART_MAX) + b.long()


def _matmul(x: torch.Tensor, zero_point: int, w: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """int64 ``(x - zero_point) @ w.T`` for int``bits`` codes ``x`` (..., K) and int8 ``w`` (O, K), as the integer
    layers compute it: one int8 GEMM with int32 accumulators, ``x @ w.T - zero_point sum_k w``; for int16 codes
    two, on the bytes ``x = 256 hi + lo + 128`` (module docstring)."""
    from lowbit.integer.kernels import int_mm  # (imported here: lowbit.integer builds on this module)

    rows, rowsum = x.reshape(-1, x.shape[-1]), w.long().sum(dim=1)
    if bits == 8:
        acc = int_mm(rows.to(torch.int8), w).long()
    else:
        rows = rows.long()
        hi, lo = (rows >> 8).to(torch.int8), ((rows & 255) - 128).to(torch.int8)
        acc = 256 * int_mm(hi, w).long() + int_mm(lo, w).long() + 128 * rowsum
    return acc.reshape(*x.shape[:-1], w.shape[0]) - zero_point * rowsum


def run_layer(q: RecurrentQ, lq: LayerQ, x: torch.Tensor, zero_point: int, bits: int = 8,
              state: tuple[torch.Tensor, torch.Tensor | None] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One layer on int``bits``-domain codes ``x`` (T, B, I) -> (h codes (T, B, H), h_T, c_T) int64, from a zero
    state or from ``state``: the codes of ``h`` (B, H) on ``2^-7`` and, for the LSTM, of ``c`` (B, H) in Q.11."""
    steps, batch = x.shape[:2]
    px = _parts(_matmul(x, zero_point, lq.w_ih, bits), lq.m_ih, lq.n_ih, lq.b_ih)  # (T, B, G H)
    hsize = lq.w_hh.shape[1]
    if state is None:
        h = torch.zeros(batch, hsize, dtype=torch.long)
        c = torch.zeros(batch, hsize, dtype=torch.long) if q.cell == "lstm" else None
    else:
        h, c = state[0].long(), state[1].long() if q.cell == "lstm" else None
    ys = []
    for t in range(steps):
        ph = _parts(_matmul(h, 0, lq.w_hh), lq.m_hh, lq.n_hh, lq.b_hh)
        if q.cell == "lstm":
            h, c = lstm_step(px[t] + ph, c, q.sigmoid, q.tanh)
        else:
            h = gru_step(px[t], ph, h, q.sigmoid, q.tanh)
        ys.append(h)
    return torch.stack(ys), h, c


def run_recurrent(q: RecurrentQ, x: torch.Tensor, layers: int | None = None, layer=run_layer,
                  state: tuple[torch.Tensor, torch.Tensor | None] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The integer layer on stored input codes ``x`` (int8-domain, int16 when ``q.input_bits`` is 16; (B, T, I) if
    ``batch_first`` else (T, B, I)) ->
    ``(output, h_n, c_n)``: int64 codes of the last layer's ``h`` at every step (``x``'s layout), of each layer's
    last ``h`` (L, B, H) on ``2^-7`` and, for the LSTM, of its last ``c`` (L, B, H) in Q.11 (else None).
    ``layers``: run the first ones only (default all); ``layer``: the function that runs one (:func:`run_layer`,
    or a kernel with its signature and results). ``state``: the initial ``(h, c)`` codes of every layer (L, B, H)
    (``c`` None for a GRU), else zero; only :func:`run_layer` takes one."""
    seq = x.transpose(0, 1) if q.batch_first else x
    hs, cs, zp, bits = [], [], q.input_zero_point, q.input_bits
    for k, lq in enumerate(q.layers[:layers]):
        if state is None:
            seq, h, c = layer(q, lq, seq, zp, bits)
        else:
            seq, h, c = run_layer(q, lq, seq, zp, bits, (state[0][k], None if state[1] is None else state[1][k]))
        hs.append(h)
        cs.append(c)
        zp, bits = 0, 8  # the next layer reads h (int8 codes on 2^-7)
    out = seq.transpose(0, 1) if q.batch_first else seq
    return out, torch.stack(hs), torch.stack(cs) if q.cell == "lstm" else None


def h_codes(values: torch.Tensor) -> torch.Tensor:
    """int64 codes of a float hidden state on ``2^-7``: ``clamp(round(v 2^7), -127, 127)`` (what the ``quantize``
    op computes on that grid; exact powers of two)."""
    return torch.round(values.to(torch.float32) * 2.0 ** H_FRAC).clamp(-H_MAX, H_MAX).long()


def c_codes(values: torch.Tensor) -> torch.Tensor:
    """int64 codes of a float LSTM cell state in Q.11: ``clamp(round(v 2^11), -2^15, 2^15 - 1)``."""
    return torch.round(values.to(torch.float32) * 2.0 ** C_FRAC).clamp(-PART_MAX - 1, PART_MAX).long()


def h_values(codes: torch.Tensor) -> torch.Tensor:
    """float32 values of hidden-state codes (exact: ``code / 2^7``)."""
    return codes.to(torch.float32) * 2.0 ** -H_FRAC


def c_values(codes: torch.Tensor) -> torch.Tensor:
    """float32 values of LSTM cell-state codes (exact: ``code / 2^11``)."""
    return codes.to(torch.float32) * 2.0 ** -C_FRAC


class QRecurrent(nn.Module):
    """An ``nn.LSTM`` / ``nn.GRU`` in a quantized model: its float layer until :meth:`freeze` gives it the input's
    grid, then :func:`run_recurrent` on the input's codes, returning what the float layer returns (``output,
    (h_n, c_n)`` or ``output, h_n``) as float values of their grids. No initial state, no PackedSequence."""

    def __init__(self, layer: nn.Module, name: str = "recurrent", input_quant: nn.Module | None = None) -> None:
        """``input_quant``: the input's quantizer, owned here where no graph pass puts one before the layer
        (a model PTQ could not trace); :meth:`freeze` then reads its grid."""
        super().__init__()
        check_recurrent(layer, name)
        self.layer, self.name, self.cell = layer, name, CELLS[type(layer)]
        self.is_cell = isinstance(layer, CELL_TYPES)
        self.input_quant = input_quant
        self.q: RecurrentQ | None = None
        self.input_qparams: QParams | None = None
        self.float_only = False  # set when a call it cannot run (hx, a PackedSequence) reaches it while calibrating

    def freeze(self, input_qparams: QParams | None) -> None:
        """Quantize the layer for inputs on ``input_qparams`` (ConfigError when the input is not on a grid)."""
        if self.float_only:  # it saw a call the integer layer cannot run: it stays the float layer
            return
        if input_qparams is None:
            raise ConfigError(f"{self.name}: the integer {self.cell.upper()} needs its input on a grid of at most 8 "
                              "bits or of 16 bits")
        self.input_qparams = input_qparams
        self.q = quantize_recurrent(self.layer, input_qparams, self.name)

    def forward(self, x: torch.Tensor, hx: object = None):
        if self.is_cell:
            return self._cell(x, hx)
        why = ("it is called with an initial state (hx), and the integer layer starts from a zero state (drop hx)"
               if hx is not None else None if isinstance(x, torch.Tensor) else
               f"its input is a {type(x).__name__} (pass the padded batch tensor, equal lengths)")
        if why is not None and self.q is None:  # seen while calibrating (a model PTQ could not trace): stay float
            if not self.float_only:
                stays_float(self.layer, self.name, why)
            self.float_only, self.input_quant = True, None  # its input quantizer goes with it (no grid to calibrate)
        if self.float_only:
            return self.layer(x, hx)
        if why is not None:
            raise ConfigError(f"{self.name}: the quantized {self.cell.upper()} was calibrated without it, and {why}")
        if self.input_quant is not None:
            x = self.input_quant(x)
        if self.q is None:
            return self.layer(x)
        if x.ndim != 3:
            raise ConfigError(f"{self.name}: the quantized {self.cell.upper()} takes a batched 3-D input, got shape "
                              f"{tuple(x.shape)}")
        codes = self.input_qparams.codes(x) - offset(self.input_qparams, self.q.input_bits)
        out, h, c = run_recurrent(self.q, codes)
        if self.cell == "lstm":
            return h_values(out), (h_values(h), c_values(c))
        return h_values(out), h_values(h)

    def _cell(self, x: torch.Tensor, hx: object):
        """An ``nn.LSTMCell`` / ``nn.GRUCell`` call: one step of the 1-layer op, from ``hx`` (``(h, c)`` / ``h``,
        float, taken onto the fixed grids ``2^-7`` and Q.11 by :func:`h_codes` / :func:`c_codes`) or from zero."""
        if self.input_quant is not None:
            x = self.input_quant(x)
        if self.q is None:
            return self.layer(x, hx)
        if x.ndim != 2:
            raise ConfigError(f"{self.name}: the quantized {type(self.layer).__name__} takes a batched 2-D input "
                              f"(N, {self.layer.input_size}), got shape {tuple(x.shape)}")
        codes = (self.input_qparams.codes(x) - offset(self.input_qparams, self.q.input_bits)).unsqueeze(0)
        state = None
        if hx is not None:
            h, c = hx if self.cell == "lstm" else (hx, None)
            check_tensor(h, f"{self.name}'s state h")  # (a NaN would become an arbitrary code, silently)
            if c is not None:
                check_tensor(c, f"{self.name}'s state c")
            state = (h_codes(h).unsqueeze(0), None if c is None else c_codes(c).unsqueeze(0))
        _, h, c = run_recurrent(self.q, codes, state=state)
        return (h_values(h[0]), c_values(c[0])) if self.cell == "lstm" else h_values(h[0])

    def extra_repr(self) -> str:
        return f"{self.cell}, frozen={self.q is not None}"


__all__ = ["CELLS", "CELL_TYPES", "C_QPARAMS", "FixedGrid", "GATES", "H_GRID", "H_QPARAMS", "INPUT_WIDTHS", "LAYER_TENSORS", "LayerQ",
           "QRecurrent", "RECURRENT", "RecurrentQ", "c_codes", "c_values", "h_codes", "check_recurrent", "h_values", "input_width",
           "quantize_recurrent", "run_layer", "run_recurrent", "stays_float",
           "unsupported"]
