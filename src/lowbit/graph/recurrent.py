"""Recurrent layers in a traced graph: swap ``nn.LSTM`` / ``nn.GRU`` for :class:`~lowbit.nn.recurrent.QRecurrent`
and name what each ``getitem`` after one reads.

A recurrent call returns a tuple, so a traced model reads it through ``getitem`` nodes::

    out = lstm(x);  seq = out[0];  state = out[1];  h_n = state[0];  c_n = state[1];  h = h_n[-1]
    gru(x)[1] is h_n directly (GRU)
    h1, c1 = lstm_cell(x, (h, c));  h1 = gru_cell(x, h)      (cells: one step, the state given; layer 0)

:func:`recurrent_part` follows such a chain back to the layer and says which tensor it is (:class:`Part`), so
the grid passes (:mod:`lowbit.graph.fx_passes`) know that ``output`` and ``h`` lie on the fixed hidden grid
``2^-7`` (and ``c`` not: its grid is 16-bit), and the lowering (:mod:`lowbit.integer.lower`) emits the
``recurrent`` op that computes it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

from torch import fx
from torch.nn.utils import rnn as rnn_utils

from lowbit.graph.nodes import module_of
from lowbit.nn.recurrent import CELL_TYPES, RECURRENT, QRecurrent, stays_float, unsupported

_PACKERS = (rnn_utils.pack_padded_sequence, rnn_utils.pack_sequence)


@dataclass(frozen=True)
class Part:
    """What a node computes of a recurrent layer's result: ``what`` is ``"tuple"`` (the whole result), ``"state"``
    (the LSTM's ``(h_n, c_n)``), ``"output"`` (every step of the last layer), ``"h_n"`` / ``"c_n"`` (every
    layer's last state, (L, B, H)), ``"h"`` / ``"c"`` (layer ``layer``'s last state, (B, H))."""

    node: fx.Node  # the recurrent call
    module: QRecurrent
    what: str
    layer: int | None = None

    @property
    def on_h_grid(self) -> bool:
        """Lies on the hidden state's int8 grid ``2^-7``."""
        return self.what in ("output", "h_n", "h")


def swap_recurrent(gm: fx.GraphModule, keep_float) -> list[str]:
    """Put a :class:`QRecurrent` in place of every ``nn.LSTM`` / ``nn.GRU`` / ``nn.LSTMCell`` / ``nn.GRUCell`` call (``keep_float(name)``: leave that
    one float). A layer the integer layers cannot run (bidirectional, projected, called with an initial state or
    a PackedSequence) stays float with a warning that names it and the fix; ``to_integer`` then refuses the model
    as it refuses any float layer. Returns the names swapped."""
    swapped = []
    for node in gm.graph.nodes:
        m = module_of(gm, node)
        if not isinstance(m, (*RECURRENT, *CELL_TYPES)) or keep_float(str(node.target)):
            continue
        name = str(node.target)
        if stays_float(m, name, unsupported(m) or (None if isinstance(m, CELL_TYPES) else _call_problem(node))):
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, leaf, QRecurrent(m, name))
        swapped.append(name)
    if swapped:
        gm.recompile()
    return swapped


def _call_problem(node: fx.Node) -> str | None:
    """Why this call of a recurrent layer cannot run as the integer layer, or None."""
    if len(node.args) > 1 or node.kwargs.get("hx") is not None:
        return "it is called with an initial state (hx), and the integer layer starts from a zero state (drop hx)"
    src = node.args[0] if node.args else node.kwargs.get("input")
    if isinstance(src, fx.Node) and src.op == "call_function" and src.target in _PACKERS:
        return "its input is a PackedSequence (pass the padded batch tensor, equal lengths)"
    return None


def _index(node: fx.Node) -> object:
    return node.args[1] if len(node.args) > 1 else None


def recurrent_part(gm: fx.GraphModule, node: fx.Node) -> Part | None:
    """The :class:`Part` of a recurrent layer's result that ``node`` computes (a chain of ``getitem``), or None."""
    m = module_of(gm, node)
    if isinstance(m, QRecurrent):  # an LSTMCell returns (h', c'), a GRUCell h' itself
        return Part(node, m, "h", 0) if m.is_cell and m.cell == "gru" else Part(node, m, "tuple")
    if not (node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[0], fx.Node)):
        return None
    src = recurrent_part(gm, node.args[0])
    if src is None:
        return None
    i, m = _index(node), src.module
    if m.is_cell:
        return Part(src.node, m, "h" if i == 0 else "c", 0) if src.what == "tuple" and i in (0, 1) else None
    layers = m.layer.num_layers
    if src.what == "tuple" and i in (0, 1):
        return Part(src.node, m, "output" if i == 0 else "state" if m.cell == "lstm" else "h_n")
    if src.what == "state" and i in (0, 1):
        return Part(src.node, m, "h_n" if i == 0 else "c_n")
    if src.what in ("h_n", "c_n") and isinstance(i, int) and -layers <= i < layers:
        return Part(src.node, m, src.what[0], i % layers)
    last = layers - 1
    step = ((slice(None), -1), (slice(None), -1, slice(None))) if m.layer.batch_first else (-1, (-1, slice(None)))
    if src.what == "output" and i in step:
        return Part(src.node, m, "h", last)  # output[:, -1] (output[-1]): the last layer's last h
    return None


__all__ = ["Part", "recurrent_part", "swap_recurrent"]
