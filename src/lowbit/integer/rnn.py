"""The ``recurrent`` op's execution: its tensors as a :class:`~lowbit.nn.recurrent.RecurrentQ`, and the run of
the layers it needs on int8 codes (int16 for a 16-bit input grid), in C (``lowbit_rnn_layer``, :mod:`lowbit.native.cext`) where the library is
built, else in PyTorch integer ops (:func:`lowbit.nn.recurrent.run_layer`, the simulation's own arithmetic)."""

from __future__ import annotations

import torch

from lowbit.errors import ShapeError
from lowbit.integer import ir
from lowbit.nn.recurrent import LAYER_TENSORS, LayerQ, RecurrentQ, c_values, run_layer, run_recurrent


def recurrent_q(op: ir.Recurrent, tensors: dict[str, torch.Tensor]) -> RecurrentQ:
    """The op's layers (tensors ``w_ih_k``, ...) and tables, as the simulation holds them."""
    layers = tuple(LayerQ(*(tensors[f"{n}_{k}"] for n in LAYER_TENSORS)) for k in range(op.num_layers))
    return RecurrentQ(op.cell.value, layers, op.input_zero_point, op.batch_first, tensors["sigmoid"], tensors["tanh"],
                      op.input_bits)


def _c_layer():
    from lowbit.native import cext

    return cext.rnn_layer if cext.library() is not None and hasattr(cext, "rnn_layer") else None


def run(op: ir.Recurrent, q: RecurrentQ, x: torch.Tensor, use_c: bool) -> torch.Tensor:
    """The op's output for int8 codes ``x`` (int16 when ``op.input_bits`` is 16): int8 ``h`` codes of its last
    layer (every step, or the last one), or the float32 values of that LSTM layer's last ``c``."""
    i = q.layers[0].w_ih.shape[1]
    dtype = torch.int16 if op.input_bits == 16 else torch.int8
    if x.dtype != dtype or x.ndim != 3 or x.shape[2] != i or 0 in x.shape:
        raise ShapeError(f"the recurrent op takes {dtype} codes ({'N, T' if op.batch_first else 'T, N'}, {i}), got "
                         f"{x.dtype} {tuple(x.shape)}")
    layer = (_c_layer() if use_c else None) or run_layer
    out, h, c = run_recurrent(q, x, op.num_layers, layer)
    if op.emit is ir.Emit.OUTPUT:
        return out.to(torch.int8)
    if op.emit is ir.Emit.H:
        return h[-1].to(torch.int8)
    return c_values(c[-1])


__all__ = ["recurrent_q", "run"]
