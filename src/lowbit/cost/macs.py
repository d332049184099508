"""Multiply-accumulates of the layers a plain conv/linear count misses: recurrent layers, attention,
and matrix products written as functions in ``forward``.

Recurrent layers (per sample, ``T`` time steps, ``G`` gates: LSTM 4, GRU 3, Elman RNN 1; hidden size
``H``, projection ``P`` (LSTM ``proj_size``, else ``P = H``); layer ``l`` reads ``I_l`` inputs, ``I_0``
the input size and ``I_l = P * directions`` above)::

    MACs = T * sum_l directions * (G * H * (I_l + P) + [P * H if proj_size])

A cell (``LSTMCell``, ``GRUCell``, ``RNNCell``) is one step of one layer. The gates' element-wise
products and non-linearities are not MACs and are not counted.

``nn.MultiheadAttention`` (query length ``L``, key length ``S``, embedding ``E``, key/value widths
``E_k``/``E_v``)::

    MACs = L E^2 (query projection) + S E_k E + S E_v E (key, value) + 2 L S E (scores, weighted sum)
           + L E^2 (output projection)

Matrix products outside any counted module (``torch.matmul``, ``@``, ``torch.bmm``, ``einsum`` that
lowers to them, ``F.linear``, ``F.conv*``, ``F.scaled_dot_product_attention``) are seen at the ATen
level by :class:`FunctionalMacs`, a dispatch mode: ``mm``/``addmm`` ``n k m``, ``bmm``/``baddbmm``
``B n k m``, ``mv`` ``n k``, ``dot`` ``k``, ``mkldnn_rnn_layer`` (a functional ``torch.lstm``, one layer and
direction) steps x rows x ``(|W_ih| + |W_hh|)``, ``convolution`` (output elements x ``C_in/groups x kernel``;
transposed: input elements x ``C_out/groups x kernel``), attention ``B h L S (E + E_v)``.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils._python_dispatch import TorchDispatchMode

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _steps_per_sample(m: nn.RNNBase, x) -> float:
    if isinstance(x, PackedSequence):
        return x.data.shape[0] / max(int(x.batch_sizes[0]), 1)  # mean length: the MACs really done
    if x.ndim == 2:  # unbatched (T, I)
        return x.shape[0]
    return x.shape[1] if m.batch_first else x.shape[0]


def rnn_macs(m: nn.RNNBase, x) -> int:
    """Per-sample MACs of ``nn.LSTM``/``nn.GRU``/``nn.RNN`` on input ``x`` (tensor or PackedSequence)."""
    gates, hidden = _GATES[m.mode], m.hidden_size
    proj = getattr(m, "proj_size", 0) or 0
    out = proj or hidden
    dirs = 2 if m.bidirectional else 1
    per_step = 0
    for layer in range(m.num_layers):
        width = m.input_size if layer == 0 else out * dirs
        per_step += dirs * (gates * hidden * (width + out) + (proj * hidden if proj else 0))
    return round(_steps_per_sample(m, x) * per_step)


def cell_macs(m: nn.RNNCellBase) -> int:
    """Per-sample MACs of one step of ``nn.LSTMCell``/``nn.GRUCell``/``nn.RNNCell``."""
    gates = {nn.LSTMCell: 4, nn.GRUCell: 3}.get(type(m), 1)
    return gates * m.hidden_size * (m.input_size + m.hidden_size)


def attention_macs(m: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor) -> int:
    """Per-sample MACs of ``nn.MultiheadAttention`` (projections, scores, weighted sum, output)."""
    seq = 1 if m.batch_first and query.ndim == 3 else 0
    length, source, e = query.shape[seq], key.shape[seq], m.embed_dim
    return length * e * e + source * (m.kdim + m.vdim) * e + 2 * length * source * e + length * e * e


def _numel(shape) -> int:
    return math.prod(shape)


def _aten_macs(func, args, out) -> int | None:
    """MACs of one ATen call, or None when it is not a matrix product."""
    name = func.overloadpacket.__name__
    if name in ("mm", "bmm"):
        return _numel(args[0].shape) * args[1].shape[-1]
    if name in ("addmm", "baddbmm"):
        return _numel(args[1].shape) * args[2].shape[-1]
    if name in ("mv", "dot"):
        return args[0].numel()
    if name in ("convolution", "_convolution"):
        x, w, transposed = args[0], args[1], bool(args[6])
        return (x.numel() if transposed else out.numel()) * w[0].numel()
    if name == "mkldnn_rnn_layer":  # one layer and direction of an LSTM/GRU/RNN (oneDNN): every step, every row
        x, w_ih, w_hh = args[0], args[1], args[2]
        return x.numel() // x.shape[-1] * (w_ih.numel() + w_hh.numel())
    if name.startswith("_scaled_dot_product") and "backward" not in name:
        q, k, v = args[0], args[1], args[2]
        return _numel(q.shape[:-1]) * k.shape[-2] * (q.shape[-1] + v.shape[-1])
    return None


class FunctionalMacs(TorchDispatchMode):
    """Counts the MACs of matrix products run while no counted module is active (``depth == 0``),
    per ``(enclosing module path, ATen op)``; the caller keeps ``depth`` and ``where`` up to date."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.where: list[str] = []
        self.macs: dict[tuple[str, str], int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.depth == 0:
            first = out[0] if isinstance(out, (tuple, list)) else out
            macs = _aten_macs(func, args, first)
            if macs:
                self.macs[(self.where[-1] if self.where else "", func.overloadpacket.__name__)] += macs
        return out


__all__ = ["FunctionalMacs", "attention_macs", "cell_macs", "rnn_macs"]
